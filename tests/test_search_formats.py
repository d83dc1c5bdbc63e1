"""`birdcnn search --format csv|megadetector`: files for spreadsheets and camera-trap tools,
rendered from the resumable JSON-lines log, on real photos with real failures."""
from __future__ import annotations

import csv
import json
import shutil
import sys
import time

import pytest

from birdcnn.cli import main
from conftest import interrupt_search
from birdcnn.search_formats import CSV_COLUMNS
from birdcnn.search_log import read_log


@pytest.fixture(scope="module")
def library(tmp_path_factory, cifar_small, photos) -> dict:
    """Real photos in nested folders: CIFAR-10 birds and others, a real crane photo, a truncated
    JPEG and a text file named .jpg."""
    root = tmp_path_factory.mktemp("library")
    for cls in ("bird", "cat", "ship"):
        (root / "cifar" / cls).mkdir(parents=True)
        for p in sorted((cifar_small / "train" / cls).glob("*.jpg"))[:4]:
            shutil.copy(p, root / "cifar" / cls / p.name)
    shutil.copy(photos / "bird" / "crane.jpg", root / "crane.jpg")
    (root / "bad").mkdir()
    data = (photos / "bird" / "magpie.jpg").read_bytes()
    (root / "bad" / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    (root / "bad" / "notes.jpg").write_text("not a photo\n")
    good = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg") if p.parent.name != "bad")
    return {"root": root, "good": good, "bad": ["bad/corrupt.jpg", "bad/notes.jpg"]}


def search(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["search", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def check_megadetector(doc: dict) -> None:
    """The MegaDetector batch output format's rules (lila.science/megadetector-output-format and
    its validate_batch_results.py): the fields, their types, and boxes as fractions of the photo."""
    assert set(doc) <= {"info", "detection_categories", "classification_categories", "images"}
    info = doc["info"]
    assert isinstance(info["format_version"], str) and float(info["format_version"]) >= 1.3
    assert isinstance(info["detector"], str) and info["detector"]
    time.strptime(info["detection_completion_time"], "%Y-%m-%d %H:%M:%S")
    assert 0 <= info["detector_metadata"]["typical_detection_threshold"] <= 1
    for key in ("detection_categories", "classification_categories"):
        for k, name in doc.get(key, {}).items():
            assert isinstance(k, str) and int(k) >= 0 and isinstance(name, str) and name
    assert "0" not in doc["detection_categories"]  # informally reserved for "empty"
    for im in doc["images"]:
        assert isinstance(im["file"], str) and not im["file"].startswith("/") and "\\" not in im["file"]
        if im.get("failure") is not None:
            assert isinstance(im["failure"], str) and im["failure"] and im["detections"] is None
            continue
        assert isinstance(im["detections"], list)
        for det in im["detections"]:
            assert det["category"] in doc["detection_categories"]
            assert isinstance(det["conf"], float) and 0 < det["conf"] <= 1
            x, y, w, h = det["bbox"]
            assert all(isinstance(v, float) and 0 <= v <= 1 for v in det["bbox"])
            assert x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9 and w > 0 and h > 0
            for cid, conf in det.get("classifications", []):
                assert cid in doc["classification_categories"] and 0 <= conf <= 1
        assert im["max_detection_conf"] == max((d["conf"] for d in im["detections"]), default=0.0)


def test_csv_has_a_header_and_one_row_per_photo(library, tiny_model, tmp_path, capsys):
    out = tmp_path / "birds.csv"
    code, stdout, err = search(capsys, library["root"], "--model", tiny_model, "--workers", "0", "--output", out,
                               "--min-probability", "0.3")
    assert code == 1 and "Traceback" not in err  # two photos failed, the rest were scored
    rows = read_csv(out)
    assert [r["file"] for r in rows] == sorted(library["good"] + library["bad"])  # every photo once, in path order
    log = read_log(str(out) + ".jsonl")  # the resumable record, kept beside
    for r in rows:
        rec = log.records[r["file"]]
        assert r["path"] == rec["path"] == str(library["root"] / r["file"])
        if r["file"] in library["bad"]:
            assert r["error"] and r["error"] == rec["error"] and r["probability"] == r["match"] == r["label"] == ""
            continue
        p = float(r["probability"])
        assert p == rec["probability"] and r["error"] == "" and r["top_class"] and 0 < float(r["top_probability"]) <= 1
        assert r["match"] == ("true" if p >= 0.3 else "false") and r["label"] == ("bird" if p >= 0.3 else "not bird")
    assert {r["file"] for r in rows if "corrupt" in r["error"]} == {"bad/corrupt.jpg"}
    listed = {line.split("%  ")[1] for line in stdout.splitlines()}
    assert listed == {r["path"] for r in rows if r["match"] == "true"}  # the list on screen agrees


def test_megadetector_whole_frame(library, tiny_model, tmp_path, capsys):
    out = tmp_path / "md.json"
    code, _, err = search(capsys, library["root"], "--model", tiny_model, "--workers", "0", "--output", out,
                          "--for", "cat,dog")
    doc = json.loads(out.read_text())
    check_megadetector(doc)
    assert doc["detection_categories"] == {"1": "cat or dog"}
    assert doc["info"]["detector_metadata"]["typical_detection_threshold"] == 0.5  # the min probability
    assert [im["file"] for im in doc["images"]] == sorted(library["good"] + library["bad"])
    log = read_log(str(out) + ".jsonl")
    for im in doc["images"]:
        rec = log.records[im["file"]]
        if "error" in rec:
            assert im["failure"] == rec["error"]
            continue
        # Every photo, matched or not, is one whole-frame detection with its probability as conf
        # (none when that rounds to 0, as MegaDetector writes "nothing here").
        if round(rec["probability"], 3) == 0:
            assert im["detections"] == []
            continue
        (det,) = im["detections"]
        assert det["bbox"] == [0.0, 0.0, 1.0, 1.0] and det["conf"] == round(rec["probability"], 3)
        ((cid, conf),) = det["classifications"]
        assert doc["classification_categories"][cid] == rec["top"] and conf == round(rec["top_probability"], 3)


def test_megadetector_boxes(photos, tmp_path, capsys):
    """The shipped model with --boxes on real photos: each match gets `locate`'s boxes, as
    fractions of the photo; a match without a box, and the rest, keep the whole frame."""
    root = tmp_path / "camera"
    root.mkdir()
    for name in ("bird/crane.jpg", "not_bird/barn.jpg", "not_bird/cup.jpg"):
        shutil.copy(photos / name, root / name.split("/")[1])
    (root / "empty.jpg").write_bytes(b"")
    out = tmp_path / "md.json"
    code, _, err = search(capsys, root, "--workers", "0", "--output", out, "--boxes", "--min-probability", "0.5")
    assert code == 1 and "empty.jpg: empty file" in err
    doc = json.loads(out.read_text())
    check_megadetector(doc)
    assert doc["detection_categories"] == {"1": "bird"}
    log = read_log(str(out) + ".jsonl")
    assert log.header["boxes"] is True
    boxed = 0
    for im in doc["images"]:
        rec = log.records[im["file"]]
        if "error" in rec:
            assert im["failure"] == "empty file" and im["detections"] is None
        elif rec.get("boxes"):
            assert rec["probability"] >= 0.5 and len(im["detections"]) == len(rec["boxes"])
            w, h = rec["size"]
            for det, b in zip(im["detections"], rec["boxes"]):
                x, y, bw, bh = det["bbox"]
                assert [x * w, y * h, (x + bw) * w, (y + bh) * h] == pytest.approx(b["box"], abs=1)
                assert det["conf"] == round(b["probability"], 3) and det["bbox"] != [0.0, 0.0, 1.0, 1.0]
            boxed += 1
        else:
            assert [d["bbox"] for d in im["detections"]] == [[0.0, 0.0, 1.0, 1.0]]
            assert "boxes" in rec or rec["probability"] < 0.5  # located and nothing found, or not a match
    assert boxed >= 1  # the crane: `birdcnn locate` finds it with the shipped model


@pytest.mark.parametrize("name", ["r.csv", "r.json"])
def test_resume_after_kill(library, tiny_model, tmp_path, capsys, name):
    """A run killed mid-write (its log cut mid-line, no CSV or JSON written) resumes: the output
    then holds every photo once, with the scores the first full run gave."""
    out, args = tmp_path / name, ["--model", tiny_model, "--workers", "0", "--min-probability", "0"]
    search(capsys, library["root"], *args, "--output", tmp_path / "full" / name)
    full = (tmp_path / "full" / name).read_text()
    search(capsys, library["root"], *args, "--output", out)
    log = tmp_path / (name + ".jsonl")
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:6]) + "\n" + lines[6][:20])
    out.unlink()
    code, _, err = search(capsys, library["root"], *args, "--output", out, "--resume")
    assert code == 1 and "incomplete line" in err
    if name.endswith(".csv"):
        got, want = read_csv(out), read_csv(tmp_path / "full" / name)
        assert [r["file"] for r in got] == [r["file"] for r in want]
        assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in want], abs=1e-5)
    else:
        got, want = json.loads(out.read_text()), json.loads(full)
        check_megadetector(got)
        assert [im["file"] for im in got["images"]] == [im["file"] for im in want["images"]]
        assert [im.get("max_detection_conf") for im in got["images"]] == pytest.approx(
            [im.get("max_detection_conf") for im in want["images"]], abs=1e-3)
    # Resuming a finished search scores nothing and writes the same file again.
    code, _, err = search(capsys, library["root"], *args, "--output", out, "--resume")
    assert "(0 now" in err
    # Never overwritten without --resume, never resumed without its log.
    for extra, words in (([], "already exists"), (["--resume", "--log", tmp_path / "elsewhere.jsonl"], "not found")):
        code, _, err = search(capsys, library["root"], *args, "--output", out, *extra)
        assert code == 2 and words in err and err.count("\n") == 1


def test_ctrl_c_writes_what_was_scored_and_resume_completes(cifar_small, tiny_model, tmp_path, capsys):
    """A real SIGINT: the CSV holds exactly the photos in the log so far; --resume completes it."""
    out = tmp_path / "r.csv"
    cmd = [sys.executable, "-m", "birdcnn", "search", str(cifar_small), "--model", str(tiny_model),
           "--workers", "1", "--output", str(out), "--min-probability", "0"]
    total = sum(1 for _ in cifar_small.rglob("*.jpg"))
    log = tmp_path / "r.csv.jsonl"
    code, _, err = interrupt_search(cmd, log)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    scored = len(log.read_text().splitlines()) - 1
    assert 0 < scored < total and len(read_csv(out)) == scored
    assert main(cmd[3:] + ["--resume"]) == 0
    assert len(read_csv(out)) == total


def test_old_logs_still_resume(library, tiny_model, tmp_path, capsys):
    """A log written before formats and shards (its header without the new fields), even one named
    .json, continues as JSON lines; --merge converts it when told the min probability."""
    folder = library["root"] / "cifar"
    old = tmp_path / "old.json"
    search(capsys, folder, "--model", tiny_model, "--workers", "0", "--format", "jsonl", "--output", old)
    lines = old.read_text().splitlines()
    new_fields = ("boxes", "shard", "min_probability", "version")
    header = {k: v for k, v in json.loads(lines[0]).items() if k not in new_fields}
    old.write_text("\n".join([json.dumps(header)] + lines[1:6]) + "\n")
    code, _, err = search(capsys, folder, "--model", tiny_model, "--workers", "0", "--output", old, "--resume")
    assert code == 0 and "5 from" in err
    assert len(old.read_text().splitlines()) == 13 and not (tmp_path / "old.json.jsonl").exists()
    code, _, err = search(capsys, "--merge", tmp_path / "old.csv", old)
    assert code == 2 and "--min-probability" in err
    code, _, err = search(capsys, "--merge", tmp_path / "old.csv", old, "--min-probability", "0.5")
    assert code == 0 and len(read_csv(tmp_path / "old.csv")) == 12


def test_option_errors_are_one_line(library, tiny_model, tmp_path, capsys):
    root = library["root"]
    photo = (root / "crane.jpg").read_bytes()
    for args, words in [(["--format", "csv"], "--format needs --output"),
                        (["--boxes"], "--boxes needs --output"),
                        (["--output", tmp_path / "a.jsonl", "--log", tmp_path / "b.jsonl"], "--log is for"),
                        (["--output", tmp_path / "a.csv", "--log", tmp_path / "a.csv"], "different files"),
                        # Results never go over a photo (a slip for the folder, or the page's name).
                        (["--output", root / "crane.jpg"], "names an image"),
                        (["--html", root / "crane.jpg"], "name it .html")]:
        code, _, err = search(capsys, root, "--model", tiny_model, *args)
        assert code == 2 and words in err and err.count("\n") == 1, err
    code, _, err = search(capsys, "--merge", root / "crane.jpg", tmp_path / "any.jsonl")
    assert code == 2 and "names an image" in err
    assert (root / "crane.jpg").read_bytes() == photo
    with pytest.raises(SystemExit) as e:  # argparse's own refusal: one line too
        main(["search", str(root), "--format", "xml", "--output", str(tmp_path / "a.xml")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'xml'" in err and err.count("\n") == 1
