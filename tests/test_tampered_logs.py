"""A search log edited by hand (or damaged) is refused when read, as one line naming the file and
the line: by `--merge` (to each format) and by `--resume`, never a traceback, and nothing written
is touched."""
from __future__ import annotations

import json
import shutil

import pytest

from birdcnn.cli import main

DEEP = "[" * 100_000 + "]" * 100_000  # json's decoder raises RecursionError, not a ValueError


@pytest.fixture(scope="module")
def real_log(tmp_path_factory, cifar_small, photos, tiny_model) -> dict:
    """The log of a real search (real photos, and a truncated JPEG: an error record)."""
    root = tmp_path_factory.mktemp("tampered") / "photos"
    for cls in ("bird", "cat"):
        (root / cls).mkdir(parents=True)
        for p in sorted((cifar_small / "train" / cls).glob("*.jpg"))[:3]:
            shutil.copy(p, root / cls / p.name)
    data = (photos / "bird" / "crane.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    log = root.parent / "log.jsonl"
    args = ["--model", str(tiny_model), "--workers", "0", "--min-probability", "0.3"]
    assert main(["search", str(root), *args, "--output", str(log)]) == 1  # the truncated JPEG
    lines = log.read_text().splitlines()
    assert any("error" in json.loads(x) for x in lines[1:])
    return {"root": root, "args": args, "lines": lines}


def search(capsys, *args) -> tuple[int, str, str]:
    code = main(["search", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def scored(lines: list[str]) -> int:
    """The line index of the first photo that was scored (not an error)."""
    return next(i for i, x in enumerate(lines) if i and "probability" in json.loads(x))


def edit(lines: list[str], i: int, **changes) -> list[str]:
    """`lines` with line i's JSON object changed (a value of None: that key removed)."""
    obj = json.loads(lines[i])
    obj.update(changes)
    obj = {k: v for k, v in obj.items() if v is not None}
    return lines[:i] + [json.dumps(obj)] + lines[i + 1:]


def deep_header(lines):
    header = json.loads(lines[0])
    return [json.dumps({"format": header["format"], "folder": header["folder"]})[:-1] + ', "x": ' + DEEP + "}"] \
        + lines[1:]


TAMPERED = {  # name: (the edit, the line it is reported on (None: the whole file), words of the message)
    "header without class": (lambda ls: edit(ls, 0, **{"class": None}), 1, 'no "class"'),
    "class a number": (lambda ls: edit(ls, 0, **{"class": 5}), 1, '"class" must be'),
    "min_probability text": (lambda ls: edit(ls, 0, min_probability="abc"), 1, '"min_probability" must be'),
    "min_probability 2": (lambda ls: edit(ls, 0, min_probability=2), 1, '"min_probability" must be'),
    "deep header": (deep_header, None, "not a birdcnn search results file"),
    "top a list": (lambda ls: edit(ls, scored(ls), top=[1]), "scored", '"top" must be'),
    "top a number": (lambda ls: edit(ls, scored(ls), top=5), "scored", '"top" must be'),
    "size zero": (lambda ls: edit(ls, scored(ls), probability=1.0, size=[0, 0],
                                  boxes=[{"box": [0, 0, 1, 1], "probability": 1}]), "scored", '"size" must be'),
    "boxes text": (lambda ls: edit(ls, scored(ls), probability=1.0, size=[32, 32], boxes="x"),
                   "scored", '"boxes" must be'),
    "box without corners": (lambda ls: edit(ls, scored(ls), probability=1.0, size=[32, 32],
                                            boxes=[{"box": [0, 1], "probability": 1}]), "scored", '"boxes" must be'),
    "probability text": (lambda ls: edit(ls, scored(ls), probability="high"), "scored", '"probability" must be'),
    "probability above 1": (lambda ls: edit(ls, scored(ls), probability=2), "scored", '"probability" must be'),
    "error a number": (lambda ls: edit(ls, scored(ls), error=5), "scored", '"error" must be text'),
    "path outside the folder": (lambda ls: edit(ls, scored(ls), path="/etc/passwd"), "scored",
                                "not in the folder searched"),
    "a list for a record": (lambda ls: ls[:2] + ["[1]"] + ls[2:], 3, "not a photo's record"),
    "deep record": (lambda ls: ls + [DEEP], "last", "nested too deeply"),
}


@pytest.mark.parametrize("name", TAMPERED)
def test_tampered_log_is_a_one_line_error(real_log, name, tmp_path, capsys):
    tamper, line, words = TAMPERED[name]
    lines = tamper(real_log["lines"])
    line = {"scored": scored(real_log["lines"]) + 1, "last": len(lines)}.get(line, line)
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    before = log.read_bytes()
    where = f"{log}: line {line}: " if line else f"{log}: "
    runs = [("--merge", tmp_path / out, log) for out in ("out.csv", "out.json", "out.jsonl")]
    runs.append((real_log["root"], *real_log["args"], "--output", log, "--resume"))
    for args in runs:
        code, out, err = search(capsys, *args)
        assert code == 2 and out == "" and err.count("\n") == 1, (args, err)
        assert where in err and words in err and "Traceback" not in err, (args, err)
        assert log.read_bytes() == before  # nothing written is lost
    assert not any((tmp_path / out).exists() for out in ("out.csv", "out.json", "out.jsonl"))


def test_the_untouched_log_still_merges_and_resumes(real_log, tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(real_log["lines"]) + "\n")
    for out in ("out.csv", "out.json", "out.jsonl"):
        assert search(capsys, "--merge", tmp_path / out, log)[0] == 0
    code, _, err = search(capsys, real_log["root"], *real_log["args"], "--output", log, "--resume")
    assert code == 1 and "from" in err  # the truncated JPEG is retried, and still fails


def test_a_line_that_is_not_json_is_left_out_as_before(real_log, tmp_path, capsys):
    # What a crash can leave (a line of zeros after a power cut) is skipped and counted, not refused.
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(real_log["lines"][:2] + ["\0\0\0\0"] + real_log["lines"][2:]) + "\n")
    code, _, err = search(capsys, "--merge", tmp_path / "out.csv", log)
    assert code == 0 and "ignored 1 incomplete line" in err
