"""`birdcnn search --shard K/N` and `--merge`: N machines split one search and join the parts,
and the joined result is the one a single run gives (real photos, real failures)."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter

import pytest

from birdcnn.cli import main
from birdcnn.search_log import read_log
from birdcnn.shards import Shard, shard_of

CLASSES = ("bird", "cat", "dog", "frog", "ship", "truck")


@pytest.fixture(scope="module")
def library(tmp_path_factory, cifar_small, photos):
    """30 real photos in nested folders, a truncated JPEG and a text file named .jpg."""
    root = tmp_path_factory.mktemp("shards")
    for cls in CLASSES:
        folder = root / ("birds" if cls == "bird" else "others") / cls
        folder.mkdir(parents=True)
        for p in sorted((cifar_small / "train" / cls).glob("*.jpg"))[:5]:
            shutil.copy(p, folder / p.name)
    data = (photos / "bird" / "crane.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    (root / "others" / "notes.jpg").write_text("shopping list\n")
    return root


def search(capsys, *args) -> tuple[int, str, str]:
    code = main(["search", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def same_rows(a: list[dict], b: list[dict]) -> None:
    """Equal CSV rows; scores to 1e-5 (a photo scored in another batch may differ in the last digit)."""
    numbers = ("probability", "top_probability")
    assert [{k: v for k, v in r.items() if k not in numbers} for r in a] == \
           [{k: v for k, v in r.items() if k not in numbers} for r in b]
    for k in numbers:
        assert [float(r[k] or -1) for r in a] == pytest.approx([float(r[k] or -1) for r in b], abs=1e-5)


def test_shard_is_sha1_of_the_relative_path_and_splits_evenly():
    # The documented rule, so that other tools can compute the split too.
    rel = "2023/garden/bird_01.jpg"
    assert shard_of(rel, 7) == int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big") % 7 + 1
    counts = Counter(shard_of(f"roll{i // 100}/IMG_{i:04d}.JPG", 4) for i in range(4000))
    assert set(counts) == {1, 2, 3, 4} and all(850 < n < 1150 for n in counts.values())
    assert Shard.parse(" 3 / 8 ") == Shard(3, 8) and str(Shard(3, 8)) == "3/8" and Shard(1, 1).holds(rel)


@pytest.mark.parametrize("value, words", [("0/3", "K must be from 1 to N=3"), ("4/3", "K must be from 1 to N=3"),
                                          ("1/0", "N must be 1 or more"), ("3", "must be K/N"), ("a/b", "must be K/N")])
def test_bad_shard_is_a_one_line_error(library, value, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", str(library), "--shard", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"argument --shard: {words}" in err


def test_three_shards_merged_equal_one_run(library, tiny_model, tmp_path, capsys):
    common = ["--model", tiny_model, "--workers", "0", "--min-probability", "0.3"]
    whole = tmp_path / "whole.csv"
    code, out, _ = search(capsys, library, *common, "--output", whole, "--json")
    assert code == 1  # two unreadable photos
    one_run = json.loads(out)
    assert search(capsys, "--merge", tmp_path / "whole.json", tmp_path / "whole.csv.jsonl")[0] == 0  # a conversion

    logs = [tmp_path / f"part{k}.jsonl" for k in (1, 2, 3)]
    for k, log in enumerate(logs, 1):
        search(capsys, library, *common, "--shard", f"{k}/3", "--output", log)
    # Shard 2 is killed mid-write and resumed on its own.
    lines = logs[1].read_text().splitlines()
    logs[1].write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    code, _, err = search(capsys, library, *common, "--shard", "2/3", "--output", logs[1], "--resume")
    assert "shard 2/3" in err and "incomplete line" in err

    parts = [set(read_log(log).records) for log in logs]
    assert all(parts) and sum(map(len, parts)) == len(set.union(*parts)) == one_run["summary"]["scanned"]
    for k, part in enumerate(parts, 1):
        assert all(shard_of(rel, 3) == k for rel in part)

    code, out, err = search(capsys, "--merge", tmp_path / "all.csv", *logs, "--json")
    assert code == 0 and "merged 3 logs" in err
    merged = json.loads(out)
    assert dict((m["path"], m["probability"]) for m in merged["matches"]) == pytest.approx(
        dict((m["path"], m["probability"]) for m in one_run["matches"]), abs=1e-5)
    assert merged["summary"]["failures"] == sorted(one_run["summary"]["failures"], key=lambda f: f["path"])
    same_rows(rows(tmp_path / "all.csv"), rows(whole))

    assert search(capsys, "--merge", tmp_path / "all.json", *logs)[0] == 0
    a, b = json.loads((tmp_path / "all.json").read_text()), json.loads((tmp_path / "whole.json").read_text())
    untimed = [{k: v for k, v in doc["info"].items() if "time" not in k} for doc in (a, b)]
    assert untimed[0] == untimed[1]
    assert a["detection_categories"] == b["detection_categories"] and len(a["images"]) == len(b["images"])
    for x, y in zip(a["images"], b["images"]):
        assert x["file"] == y["file"] and x.get("failure") == y.get("failure")
        assert x.get("max_detection_conf", -1) == pytest.approx(y.get("max_detection_conf", -1), abs=1.01e-3)

    # The merged log is the unsharded search's: it resumes as one, with nothing left to score.
    assert search(capsys, "--merge", tmp_path / "all.jsonl", *logs, "--format", "jsonl")[0] == 0
    merged_log, whole_log = read_log(tmp_path / "all.jsonl"), read_log(tmp_path / "whole.csv.jsonl")
    assert merged_log.records.keys() == whole_log.records.keys() and merged_log.header["shard"] is None
    code, _, err = search(capsys, library, *common, "--output", tmp_path / "all.jsonl", "--resume")
    assert code == 1 and "(0 now" in err


def test_a_shard_without_photos_is_not_an_error(library, tiny_model, tmp_path, capsys):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(next((library / "birds" / "bird").iterdir()), folder / "a.jpg")
    other = 1 if shard_of("a.jpg", 2) == 2 else 2
    code, out, err = search(capsys, folder, "--model", tiny_model, "--workers", "0", "--shard", f"{other}/2")
    assert code == 0 and out == "" and "1 photos in the other shards" in err


def test_merge_refuses_logs_of_other_searches(library, tiny_model, tmp_path, capsys):
    folder = library / "birds"

    def part(name: str, shard: str | None, *extra, model=tiny_model, where=folder) -> str:
        """The log of a search of `where` (`model` None: the shipped one)."""
        out = tmp_path / name
        options = (["--shard", shard] if shard else []) + (["--model", model] if model else [])
        search(capsys, where, "--workers", "0", "--output", out, *options, *extra)
        return str(out)

    a1, a2 = part("a1.jsonl", "1/2"), part("a2.jsonl", "2/2")
    copy = str(tmp_path / "copy.jsonl")
    shutil.copy(a2, copy)
    csv_file = tmp_path / "a.csv"
    search(capsys, "--merge", csv_file, a1, a2)
    cases = [
        ([a1, part("shipped.jsonl", "2/2", model=None)], "shipped.jsonl: made with another model"),
        ([a1, part("cat.jsonl", "2/2", "--for", "cat")], "cat.jsonl: made with another class"),
        ([a1, part("crops.jsonl", "2/2", "--crops")], "crops.jsonl: made with another --crops setting"),
        ([a1, part("notta.jsonl", "2/2", "--no-tta")], "notta.jsonl: made with another --no-tta setting"),
        ([a1, part("strict.jsonl", "2/2", "--min-probability", "0.9")],
         "strict.jsonl: made with another --min-probability"),
        ([a1, part("other.jsonl", "2/2", where=library / "others")], "other.jsonl: made with another folder"),
        ([a1, a2, copy], "copy.jsonl: shard 2/2 again"),
        ([a1, part("third.jsonl", "2/3")], "third.jsonl: shard 2/3, but"),
        ([part("t1.jsonl", "1/3"), part("t2.jsonl", "2/3")], "shard 3/3 missing"),
        ([a1], "shard 2/2 missing"),  # e.g. a `part*.jsonl` that matched one file
        ([part("whole.jsonl", None), a1], "whole.jsonl: a whole search"),
        ([a1, str(csv_file)], "a.csv: not a birdcnn search results file"),
        ([a1, str(tmp_path / "nowhere.jsonl")], "nowhere.jsonl: cannot read"),
    ]
    for logs, words in cases:
        code, _, err = search(capsys, "--merge", tmp_path / "out.csv", *logs)
        assert code == 2 and words in err and err.count("\n") == 1, (words, err)
    assert not (tmp_path / "out.csv").exists()
    code, _, err = search(capsys, "--merge", a1, a1, a2)
    assert code == 2 and "is one of the logs to merge" in err
    code, _, err = search(capsys, "--merge", tmp_path / "out.csv", a1, a2, "--for", "cat")
    assert code == 2 and "not --for" in err
