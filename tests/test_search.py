"""`birdcnn search` on a real, messy folder: nested folders, a symlink loop, bad files."""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from birdcnn.cli import main
from conftest import interrupt_search, tiff_without_dimensions
from birdcnn.modelfile import load_model
from birdcnn.decode_workers import model_views
from birdcnn.search import MIRROR_MARGIN, SearchResult, mirror_floor, search
from birdcnn.errors import FileProblem
from birdcnn.walk import walk_images

OTHERS = ["airplane", "automobile", "cat", "dog", "frog", "ship", "truck"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory, cifar_small, photos) -> dict:
    """CIFAR-10 birds and non-birds (the tiny model's own training images) in nested folders,
    two real photos, a symlink loop back to the top, and four broken "JPEGs" (one a dangling link)."""
    root = tmp_path_factory.mktemp("library")
    birds = sorted((cifar_small / "train" / "bird").glob("*.jpg"))[:20]
    others = [p for c in OTHERS for p in sorted((cifar_small / "train" / c).glob("*.jpg"))[:4]]
    for i, p in enumerate(birds):
        d = root / "2023" / ("garden" if i % 2 else "holiday/day1")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / f"bird_{i:02d}.jpg")
    for i, p in enumerate(others):
        d = root / "2024" / "misc" / "deeper"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / f"other_{i:02d}.jpg")
    shutil.copy(photos / "bird" / "magpie.jpg", root / "magpie.jpg")
    shutil.copy(photos / "not_bird" / "barn.jpg", root / "2024" / "barn.jpg")
    (root / "2024" / "misc" / "loop").symlink_to(root, target_is_directory=True)
    data = (photos / "bird" / "crane.jpg").read_bytes()
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    (bad / "notes.jpg").write_text("shopping list: seeds, more seeds\n")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "readme.txt").write_text("not an image, ignored")
    (bad / "moved.jpg").symlink_to(root / "no-longer-here.jpg")
    (bad / "pages.tiff").write_bytes(tiff_without_dimensions(photos / "bird" / "magpie.jpg"))  # once ended the search
    good = {str(p) for p in root.rglob("*.jpg") if "loop" not in p.parts and p.parent != bad}
    return {"root": root, "good": good, "birds": {str(p) for p in root.rglob("bird_*.jpg") if "loop" not in p.parts},
            "bad": {str(bad / n) for n in ("corrupt.jpg", "notes.jpg", "empty.jpg", "moved.jpg", "pages.tiff")}}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_walk_reports_loop_and_finds_every_image_once(collection):
    items = list(walk_images(collection["root"]))
    paths = [i for i in items if isinstance(i, str)]
    skipped = [i for i in items if isinstance(i, FileProblem)]
    assert len(paths) == len(set(paths)) == len(collection["good"]) + len(collection["bad"])
    assert set(paths) == collection["good"] | collection["bad"]
    assert [s.path for s in skipped] == [str(collection["root"] / "2024" / "misc" / "loop")]
    assert "loop" in skipped[0].problem and not skipped[0].serious


def test_search_json_finds_birds_and_reports_bad_files(collection, tiny_model, capsys):
    code, out, err = run_cli(["search", str(collection["root"]), "--model", str(tiny_model), "--json",
                              "--min-probability", "0", "--workers", "2"], capsys)
    assert code == 1  # some photos failed
    res = json.loads(out)
    s = res["summary"]
    assert s["scanned"] == len(collection["good"]) + len(collection["bad"])
    assert s["scored"] == s["matched"] == len(collection["good"])
    assert s["failed"] == len(collection["bad"])
    assert {f["path"] for f in s["failures"]} == collection["bad"]
    assert s["failure_reasons"] == {"empty file": 1, "not an image": 1, "corrupt image": 2, "broken symbolic link": 1}
    assert "loop" in s["skipped"][0]["problem"]
    probs = [m["probability"] for m in res["matches"]]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    # The tiny fixture model is weak (~22% accuracy), but on the CIFAR images it was trained on
    # it ranks birds above non-birds on average (test_default_model_finds_birds: a real model).
    ranked = [m["path"] for m in res["matches"]]
    ranks = {p: i for i, p in enumerate(ranked)}
    assert (np.mean([ranks[p] for p in collection["birds"]])
            < np.mean([ranks[p] for p in ranked if p not in collection["birds"]]))
    for bad in collection["bad"]:
        assert f"birdcnn search: error: {bad}: " in err
    assert "Traceback" not in err


def test_default_threshold_and_text_output(collection, tiny_model, capsys):
    model = load_model(tiny_model)
    code, out, err = run_cli(["search", str(collection["root"]), "--model", str(tiny_model), "--workers", "0"], capsys)
    lines = out.splitlines()
    assert all(float(line.split("%")[0]) / 100 >= model.threshold_for("flip") - 1e-3 for line in lines)
    assert f"{len(lines)} show a bird (p >= {model.threshold_for('flip'):.3g})" in err


def test_other_class_and_unknown_class(collection, tiny_model, capsys):
    model = load_model(tiny_model)
    r = search(collection["root"] / "2024" / "misc" / "deeper", model, target="airplane", min_probability=0.0,
               workers=0)
    assert r.target == "airplane" and len(r.matches) == len(OTHERS) * 4
    # search averages only the mirror pair, for speed, with that pair's own temperature
    assert model.tta == "flip-translate" and model.temperature_for("flip") != model.temperature
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in r.matches])
    probs = torch.softmax(model.logits(x, tta="flip") / model.temperature_for("flip"), 1).numpy()
    assert [p for _, p in r.matches] == pytest.approx(probs[:, model.classes.index("airplane")], abs=1e-5)
    once = search(collection["root"] / "2024" / "misc" / "deeper", model, min_probability=0.0, workers=0, tta=False)
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in once.matches])
    expected = torch.softmax(model.logits(x, tta="none") / model.temperature_for("none"), 1)[:, model.positive_index]
    assert [p for _, p in once.matches] == pytest.approx(expected.tolist(), abs=1e-5)
    code, out, err = run_cli(["search", str(collection["root"]), "--model", str(tiny_model), "--for", "pelican"],
                             capsys)
    assert code == 2 and err.count("\n") == 1 and "no class 'pelican'" in err and "airplane" in err


def test_mirror_only_where_it_can_matter(collection, tiny_model, tmp_path):
    """Views far below the threshold keep their single score; every other view, and so every
    decision, is the flip pair's."""
    model = load_model(tiny_model)
    # float32: the mirror pass runs on a subset, and bf16 kernels may round a batch of another size differently.
    model.bf16 = False
    folder = collection["root"] / "2023"
    pair = dict(search(folder, model, min_probability=0.0, workers=0).matches)  # floor 0: all mirrored
    single = dict(search(folder, model, min_probability=0.0, workers=0, tta=False).matches)
    # The threshold whose floor (MIRROR_MARGIN log-odds lower) splits the photos in half.
    floor = float(np.median(list(single.values())))
    odds = floor / (1 - floor) * np.exp(MIRROR_MARGIN)
    threshold = odds / (1 + odds)
    assert mirror_floor(threshold) == pytest.approx(floor, rel=1e-9)
    r = search(folder, model, min_probability=threshold, workers=0, output=tmp_path / "log.jsonl")
    close = {p for p, s in single.items() if s >= floor}
    assert 0 < r.mirrored == len(close) < len(single) and r.summary()["mirrored"] == r.mirrored
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()[1:]]
    logged = {x["path"]: x["probability"] for x in lines}
    assert logged == pytest.approx({p: pair[p] if p in close else single[p] for p in single}, abs=1e-5)
    assert dict(r.matches) == pytest.approx({p: q for p, q in pair.items() if q >= threshold}, abs=1e-5)


def test_crops_score_is_max_over_views(collection, tiny_model):
    model = load_model(tiny_model)
    folder = collection["root"] / "2023"
    whole = dict(search(folder, model, min_probability=0, workers=0).matches)
    crops = dict(search(folder, model, min_probability=0, workers=0, crops=True).matches)
    assert whole.keys() == crops.keys()
    assert all(crops[p] >= whole[p] - 1e-4 for p in whole)  # the whole frame is one of the views
    im = Image.open(collection["root"] / "magpie.jpg").convert("RGB")
    views = model_views(im, 32, crops=True)
    assert views.shape == (6, 32, 32, 3) and views.dtype == np.uint8
    assert not np.array_equal(views[1], views[4])  # top-left and bottom-right quadrants differ


def test_resume_after_truncated_jsonl(collection, tiny_model, tmp_path, capsys):
    root, log = str(collection["root"]), tmp_path / "results.jsonl"
    args = ["search", root, "--model", str(tiny_model), "--json", "--min-probability", "0", "--workers", "0",
            "--output", str(log)]
    code, out, _ = run_cli(args, capsys)
    first = {m["path"]: m["probability"] for m in json.loads(out)["matches"]}
    lines = log.read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["format"] == "birdcnn-search" and header["class"] == "bird"
    assert len(records) == len(collection["good"]) + len(collection["bad"])
    # Simulate kill -9 mid-write: 10 complete photo lines, then half a line.
    keep = lines[:11]
    log.write_text("\n".join(keep) + "\n" + lines[11][: len(lines[11]) // 2])
    done_before = {json.loads(x)["path"] for x in keep[1:] if "probability" in json.loads(x)}

    code, out, err = run_cli(args + ["--resume"], capsys)
    res = json.loads(out)
    assert code == 1 and "incomplete line" in err
    assert res["summary"]["resumed"] == len(done_before)
    assert res["summary"]["scored_now"] == len(collection["good"]) - len(done_before)
    after = [json.loads(x) for x in log.read_text().splitlines()[1:]]  # every line parses
    scored = [r["path"] for r in after if "probability" in r]
    assert sorted(scored) == sorted(collection["good"])  # each photo scored exactly once
    assert {m["path"]: m["probability"] for m in res["matches"]} == pytest.approx(first, abs=1e-5)

    # The file is never overwritten or mixed with another search.
    size = log.stat().st_size
    code, _, err = run_cli(["search", root, "--model", str(tiny_model), "--output", str(log)], capsys)
    assert code == 2 and "--resume" in err
    code, _, err = run_cli(["search", root, "--model", str(tiny_model), "--output", str(log), "--resume",
                            "--for", "cat"], capsys)
    assert code == 2 and "another class" in err and log.stat().st_size == size


def test_ctrl_c_stops_cleanly_and_resume_finishes(cifar_small, tiny_model, tmp_path, capsys):
    """A real SIGINT to a real `birdcnn search` process: it stops, says so, and loses nothing."""
    log = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "birdcnn", "search", str(cifar_small), "--model", str(tiny_model),
           "--workers", "1", "--output", str(log), "--min-probability", "0"]
    total = sum(1 for _ in cifar_small.rglob("*.jpg"))
    code, out, err = interrupt_search(cmd, log)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    done = [json.loads(x) for x in log.read_text().splitlines()[1:]]
    assert 0 < len(done) < total and len(out.splitlines()) == len(done)

    assert main(cmd[3:] + ["--resume", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert s["resumed"] == len(done) and s["scanned"] == total


def test_contact_sheet(collection, tiny_model, tmp_path, capsys):
    page = tmp_path / "sheet" / "birds.html"
    code, out, err = run_cli(["search", str(collection["root"] / "2023"), "--model", str(tiny_model),
                              "--min-probability", "0.2", "--html", str(page), "--workers", "0"], capsys)
    assert code == 0
    text = page.read_text()
    n = len(out.splitlines())
    assert n > 0 and text.count('<img src="data:image/jpeg;base64,') == n
    assert text.count('class="card"') == n and "garden" in text


def test_bad_arguments(collection, tiny_model, tmp_path, capsys):
    for args, msg in [(["search", str(tmp_path / "nope")], "no such folder"),
                      (["search", str(collection["root"] / "magpie.jpg")], "not a folder"),
                      (["search", str(collection["root"]), "--resume"], "--resume needs --output"),
                      (["search", str(collection["root"]), "--min-probability", "2"], "between 0 and 1")]:
        code, _, err = run_cli(args + ["--model", str(tiny_model)], capsys)
        assert code == 2 and msg in err and err.count("\n") == 1, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_is_reported(collection, tiny_model, tmp_path):
    root = tmp_path / "lib"
    (root / "locked").mkdir(parents=True)
    shutil.copy(collection["root"] / "magpie.jpg", root / "magpie.jpg")
    os.chmod(root / "locked", 0)
    try:
        r = search(root, load_model(tiny_model), min_probability=0, workers=0)
    finally:
        os.chmod(root / "locked", 0o755)
    assert r.scored == 1 and r.skipped[0].serious and "permission denied" in r.skipped[0].problem.lower()


def test_summary_counts_folders_that_could_not_be_read():
    # Each was reported on its own line: the summary must not say "0 unreadable" alone.
    r = SearchResult("lib", "bird", 0.5, failed=[FileProblem("lib/a.jpg", "empty file")],
                     skipped=[FileProblem("lib/locked", "cannot read folder (Permission denied)"),
                              FileProblem("lib/loop", "symbolic link loop (back to lib): not followed", serious=False)])
    assert r.unreadable() == "1 unreadable, 1 unreadable folder"
    assert SearchResult("lib", "bird", 0.5).unreadable() == "0 unreadable"


def test_default_model_finds_birds(cifar_small):
    """With the shipped (real) model, on CIFAR-10 test images it never saw: birds come first."""
    from birdcnn.metrics import average_precision
    from birdcnn.modelfile import default_model_path

    assert default_model_path().exists(), "the shipped default model is missing from the package"
    model = load_model()
    r = search(cifar_small / "test", model, min_probability=0, workers=2)
    is_bird = np.array(["/bird/" in p for p, _ in r.matches])
    probs = np.array([p for _, p in r.matches])
    assert r.scored == 200 and is_bird.sum() == 20
    assert average_precision(is_bird, probs) > 0.5  # chance: 0.1
    assert is_bird[:10].sum() >= 5  # the ten most confident: mostly birds (chance: 1)


def test_folder_without_photos_is_an_error(tiny_model, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no photos here")
    assert main(["search", str(tmp_path), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no photos found" in err and str(tmp_path) in err
