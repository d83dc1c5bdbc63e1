"""`birdcnn evaluate` end to end on real data with real (tiny) models: the JSON, the table, the
pictures, the bad inputs, and the streamed numbers against a plain whole-array computation."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from birdcnn import evaluate as E
from birdcnn import metrics as M
from birdcnn.cli import main
from birdcnn.data import load_split
from birdcnn.modelfile import load_model

BIRD_KEYS = {"accuracy", "balanced_accuracy", "precision", "recall", "f1", "average_precision", "roc_auc",
             "tp", "tn", "fp", "fn", "ece"}
PICTURES = ["pr_curve", "roc_curve", "confusion_bird", "reliability",
            "gallery_tp", "gallery_tn", "gallery_fp", "gallery_fn"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def check_pictures(out: Path, multi_class: bool) -> None:
    """Every picture is a real PNG of a size a person can look at."""
    names = PICTURES + (["confusion_classes"] if multi_class else [])
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(names)
    for name in names:
        with Image.open(out / f"{name}.png") as im:
            im.verify()
        with Image.open(out / f"{name}.png") as im:
            assert im.format == "PNG"
            assert 300 <= im.width <= 4000 and 100 <= im.height <= 4000, (name, im.size)
            assert np.asarray(im.convert("L")).std() > 5, f"{name} is blank"


def class_folder(root: Path, cifar_small: Path, classes: dict[str, str], per_class: int = 5) -> Path:
    """A small class-folder dataset: {folder name: CIFAR class to copy images from}."""
    for name, src in classes.items():
        (root / name).mkdir(parents=True)
        for p in sorted((cifar_small / "test" / src).glob("*.jpg"))[:per_class]:
            shutil.copy(p, root / name / p.name)
    return root


@pytest.fixture(scope="module")
def cifar_run(cifar_small, tiny_model, tmp_path_factory):
    """One --json run on the cifar_small test split (200 images, 20 birds), shared by the tests below."""
    out = tmp_path_factory.mktemp("evaluate") / "report"
    code = main(["evaluate", "--data", str(cifar_small), "--model", str(tiny_model), "--out", str(out), "--json"])
    return code, out


def test_json_shape_and_numbers_match_a_direct_computation(cifar_run, cifar_small, tiny_model):
    code, out = cifar_run
    res = json.loads((out / "metrics.json").read_text())
    assert code == 0
    assert BIRD_KEYS <= set(res["bird"]) and {"n", "threshold", "bird", "classes"} <= set(res)
    assert set(res["classes"]) >= {"accuracy", "per_class", "confusion"}
    assert res["n"] == 200 and res["split"] == "test" and res["n_skipped"] == 0
    b = res["bird"]
    assert b["tp"] + b["tn"] + b["fp"] + b["fn"] == 200 and b["tp"] + b["fn"] == 20

    # The streamed evaluation gives what a plain computation on the whole test array gives.
    model = load_model(tiny_model)
    test = load_split(cifar_small, "test")
    probs = model.probabilities(test.images)
    is_bird = test.labels == test.classes.index("bird")
    p = probs[:, model.positive_index]
    assert res["threshold"] == pytest.approx(model.threshold)
    direct = M.binary_report(is_bird, p, model.threshold)
    for key in ("tp", "tn", "fp", "fn"):
        assert b[key] == direct[key]
    for key in ("accuracy", "precision", "recall", "f1", "average_precision"):
        assert b[key] == (None if direct[key] is None else pytest.approx(direct[key], abs=1e-6))
    assert b["roc_auc"] == pytest.approx(M.roc_auc(is_bird, p), abs=1e-6)
    assert b["ece"] == pytest.approx(M.expected_calibration_error(p, is_bird), abs=1e-6)
    cm = np.array(res["classes"]["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == 200 and (cm.sum(1) == 20).all()
    assert res["classes"]["accuracy"] == pytest.approx(float((probs.argmax(1) == test.labels).mean()), abs=1e-6)
    for i, name in enumerate(res["classes"]["names"]):
        assert res["classes"]["per_class"][name] == pytest.approx(cm[i, i] / 20, abs=1e-6)


def test_pictures_and_self_contained_html(cifar_run):
    _, out = cifar_run
    check_pictures(out, multi_class=True)
    page = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(list(out.glob("*.png")))
    assert all(base64.b64decode(e)[:8] == b"\x89PNG\r\n\x1a\n" for e in embedded)
    assert "<script" not in page and not re.search(r'src="(?!data:)', page)  # nothing to fetch
    res = json.loads((out / "metrics.json").read_text())
    assert f"{res['bird']['tp']} TP" in page and "False positives" in page


def test_galleries_hold_the_most_confident_of_each_group(cifar_small, tiny_model):
    model = load_model(tiny_model)
    ev = E.evaluate(model, str(cifar_small), threshold=0.3, gallery_size=6)
    s, y, t = ev.scores, ev.is_positive, 0.3
    expected = {"tp": -np.sort(-s[y & (s >= t)]), "fp": -np.sort(-s[~y & (s >= t)]),  # highest p(bird) first
                "fn": np.sort(s[y & (s < t)]), "tn": np.sort(s[~y & (s < t)])}         # lowest first
    for group, scores in expected.items():
        assert len(scores) == ev.bird[group]
        assert ev.galleries[group].scores == pytest.approx(scores[:6])
    from birdcnn.report import TILE, render_gallery
    g = ev.galleries["tn"]
    sheet = render_gallery(g, "True negatives", "", ev.data_classes, "bird", mistakes=False)
    assert sheet.width >= len(g.scores) * TILE and sheet.height >= TILE  # big enough to see


def test_human_table(cifar_small, tiny_model, tmp_path, capsys):
    from birdcnn.report import fmt

    code, out, err = cli(capsys, "--data", cifar_small, "--model", tiny_model, "--out", tmp_path / "r")
    assert code == 0 and "Traceback" not in err
    res = json.loads((tmp_path / "r" / "metrics.json").read_text())
    for label, key in (("precision", "precision"), ("recall", "recall"), ("ROC AUC", "roc_auc")):
        line = next(line for line in out.splitlines() if line.strip().startswith(label))
        assert fmt(res["bird"][key]) in line
    assert f"{res['bird']['tp']} TP" in out and "10 classes: accuracy" in out
    assert "always saying 'not bird' would score 0.9000" in out
    assert str(tmp_path / "r" / "report.html") in out


def test_threshold_and_targets(cifar_small, tiny_model, tmp_path, capsys):
    code, out, _ = cli(capsys, "--data", cifar_small, "--model", tiny_model, "--out", tmp_path / "a", "--json",
                       "--threshold", "0.3")
    res = json.loads(out)
    assert code == 0 and res["threshold"] == 0.3 and "--threshold" in res["threshold_rule"]
    assert {k: v for k, v in res.items() if k != "out"} == json.loads((tmp_path / "a" / "metrics.json").read_text())
    model = load_model(tiny_model)
    test = load_split(cifar_small, "test")
    p = model.probabilities(test.images)[:, model.positive_index]
    assert res["bird"]["tp"] + res["bird"]["fp"] == int((p >= 0.3).sum())

    code, out, _ = cli(capsys, "--data", cifar_small, "--model", tiny_model, "--out", tmp_path / "b", "--json",
                       "--target-recall", "0.5")
    res = json.loads(out)
    assert code == 0 and res["bird"]["recall"] >= 0.5
    assert res["target"] == {"recall": 0.5, "threshold": res["threshold"]}
    is_bird = test.labels == test.classes.index("bird")
    assert res["threshold"] == pytest.approx(M.threshold_for_recall(is_bird, p, 0.5), abs=1e-6)

    with pytest.raises(SystemExit) as e:  # argparse: one or the other
        main(["evaluate", "--data", str(cifar_small), "--threshold", "0.5", "--target-precision", "0.9"])
    assert e.value.code == 2
    capsys.readouterr()


def test_unreadable_images_are_listed_skipped_and_counted(cifar_small, tiny_model, tmp_path, capsys):
    data = class_folder(tmp_path / "data", cifar_small, {"bird": "bird", "not_bird": "cat"})
    (data / "bird" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "not_bird" / "empty.png").write_bytes(b"")
    code, out, err = cli(capsys, "--data", data, "--model", tiny_model, "--out", tmp_path / "r", "--json")
    res = json.loads(out)
    assert code == 1  # some inputs failed
    assert res["n"] == 10 and res["n_skipped"] == 2
    assert any("broken.jpg" in s for s in res["skipped"]) and any("empty.png" in s for s in res["skipped"])
    assert "broken.jpg" in err and "empty.png" in err and "Traceback" not in err
    assert res["bird"]["tp"] + res["bird"]["fn"] == 5
    assert "classes" not in res  # 'not_bird' is not one of the model's classes
    check_pictures(tmp_path / "r", multi_class=False)


@pytest.mark.parametrize("only", ["bird", "not_bird"])
def test_degenerate_data_reports_undefined_not_zero(only, cifar_small, tiny_model, tmp_path, capsys):
    data = class_folder(tmp_path / "data", cifar_small, {only: "bird" if only == "bird" else "ship"}, per_class=6)
    code, out, err = cli(capsys, "--data", data, "--model", tiny_model, "--out", tmp_path / "r")
    assert code == 0, err
    assert re.search(r"ROC AUC\s+n/a", out) and re.search(r"balanced accuracy\s+n/a", out)
    b = json.loads((tmp_path / "r" / "metrics.json").read_text())["bird"]
    assert b["roc_auc"] is None and b["balanced_accuracy"] is None
    if only == "bird":
        assert b["tp"] + b["fn"] == 6 and b["recall"] is not None and b["average_precision"] == 1.0
    else:
        assert b["tp"] + b["fn"] == 0 and re.search(r"recall\s+n/a", out)
        assert b["recall"] is None and b["f1"] is None and b["average_precision"] is None
    check_pictures(tmp_path / "r", multi_class=only == "bird")  # 'bird' is one of the model's classes


def test_data_without_the_positive_class_is_a_clear_error(cifar_small, tiny_model, tmp_path, capsys):
    data = class_folder(tmp_path / "data", cifar_small, {"cats": "cat", "dogs": "dog"}, per_class=2)
    code, out, err = cli(capsys, "--data", data, "--model", tiny_model, "--out", tmp_path / "r")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "positive class 'bird'" in err and "cats, dogs" in err
    assert not (tmp_path / "r").exists()


def test_binary_model_has_no_class_section(cifar_small, article_model, tmp_path, capsys):
    code, out, err = cli(capsys, "--data", cifar_small, "--model", article_model, "--out", tmp_path / "r", "--json")
    res = json.loads(out)
    assert code == 0 and "classes" not in res and res["n"] == 200
    assert res["bird"]["tp"] + res["bird"]["fn"] == 20
    check_pictures(tmp_path / "r", multi_class=False)


def test_large_photos_are_shown_at_gallery_resolution(photos, tiny_model, tmp_path):
    """Real photos (150 to 900 px): the gallery tiles are re-read from the files, so they show detail
    the 32 px model input does not have (not blocks of 4x4 equal pixels)."""
    model = load_model(tiny_model)
    ev = E.evaluate(model, str(photos), gallery_size=4)
    assert (ev.n == len(list(photos.rglob("*.jpg")))
            and ev.bird["positives"] == len(list((photos / "bird").glob("*.jpg"))))
    from birdcnn.report import TILE, _tile, write_report
    g = next(g for g in ev.galleries.values() if len(g.scores) and min(Image.open(g.paths[0]).size) >= TILE)
    t = np.asarray(_tile(g.images[0], g.paths[0], TILE), np.int16)
    assert t.shape == (TILE, TILE, 3) and (t[0::4] != t[1::4]).any()
    write_report(ev, tmp_path / "r")
    check_pictures(tmp_path / "r", multi_class=False)


def test_streaming_in_small_chunks_gives_the_same_result(cifar_small, tiny_model, monkeypatch):
    model = load_model(tiny_model)
    whole = E.evaluate(model, str(cifar_small), gallery_size=5)
    monkeypatch.setattr(E, "CHUNK", 64)  # 64 + 64 + 64 + 8: galleries merged across chunks
    chunked = E.evaluate(model, str(cifar_small), gallery_size=5)
    assert chunked.summary()["bird"] == whole.summary()["bird"]
    assert chunked.classes == whole.classes
    for group in E.GROUPS:
        a, b = whole.galleries[group], chunked.galleries[group]
        assert a.paths == b.paths and np.array_equal(a.images, b.images)


def test_extremes_keeps_the_top_k_of_a_stream():
    rng = np.random.default_rng(1)
    scores = rng.random(500).round(2)  # with ties: the earliest wins
    images = np.arange(500, dtype=np.uint8).repeat(12).reshape(500, 2, 2, 3)
    for highest in (True, False):
        top = E.Extremes(10, highest, 2)
        for i in range(0, 500, 37):
            top.add(scores[i:i + 37], images[i:i + 37], np.zeros(len(scores[i:i + 37]), np.int64),
                    [str(j) for j in range(i, min(i + 37, 500))])
        expected = np.argsort(-scores if highest else scores, kind="stable")[:10]
        assert top.paths == [str(j) for j in expected]
        assert np.array_equal(top.scores, scores[expected]) and np.array_equal(top.images, images[expected])


def test_cifar_python_archive_uses_its_test_batch(cifar_small, tiny_model, tmp_path, capsys):
    """The official CIFAR-10 archive layout (pickled batches), built from real images: the test batch
    is evaluated, not the training batches."""
    import io
    import pickle
    import tarfile

    test, train = load_split(cifar_small, "test"), load_split(cifar_small, "train")

    def batch(ds) -> bytes:
        data = ds.images.transpose(0, 3, 1, 2).reshape(len(ds), -1)
        return pickle.dumps({b"data": data, b"labels": ds.labels.tolist()}, protocol=2)

    members = {"test_batch": batch(test), "data_batch_1": batch(train),
               "batches.meta": pickle.dumps({b"label_names": [c.encode() for c in test.classes]}, protocol=2)}
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    code, out, err = cli(capsys, "--data", archive, "--model", tiny_model, "--out", tmp_path / "r", "--json")
    res = json.loads(out)
    assert code == 0, err
    assert res["n"] == len(test) == 200 and res["split"] == "test" and res["bird"]["tp"] + res["bird"]["fn"] == 20
    assert np.array(res["classes"]["confusion"]).sum(1).tolist() == [20] * 10


def test_gallery_probabilities_keep_the_digits_that_differ():
    from birdcnn.report import _probability

    assert [_probability(p) for p in (3.1e-5, 0.0027, 0.5, 0.99997, 1.0)] == \
        ["0.0031%", "0.27%", "50.0%", "99.9970%", ">99.9999%"]
