"""`birdcnn evaluate` on real photo folders whose classes are not the model's: every folder not
named like the positive class is "not bird", and the report says which kinds are mistaken."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from birdcnn.cli import main
from birdcnn.evaluate import evaluate
from birdcnn.modelfile import load_model

KINDS = {"dog": ["bull_mastiff", "dingo", "entlebucher"], "car": [], "kitchen": ["cup", "goblet", "water_jug"],
         "farm": ["barn", "lawn_mower", "pick"]}


@pytest.fixture(scope="module")
def real_folders(photos, tmp_path_factory) -> Path:
    """The shared photos sorted into folders that are partly the model's classes (dog), partly
    merged names (car -> automobile, empty here) and partly kinds it has never heard of."""
    root = tmp_path_factory.mktemp("real_folders")
    for p in sorted((photos / "bird").glob("*.jpg"))[:6]:
        (root / "bird").mkdir(exist_ok=True)
        shutil.copy(p, root / "bird")
    for kind, names in KINDS.items():
        for n in names:
            (root / kind).mkdir(exist_ok=True)
            shutil.copy(photos / "not_bird" / f"{n}.jpg", root / kind)
    return root


def test_every_other_folder_is_not_bird_with_per_folder_false_alarms(tiny_model, real_folders):
    clf = load_model(tiny_model)
    ev = evaluate(clf, str(real_folders), gallery_size=4)
    assert ev.n == 15 and ev.bird["positives"] == 6
    assert set(ev.false_alarms) == {"dog", "kitchen", "farm"}
    for kind, f in ev.false_alarms.items():
        assert f["n"] == 3 and 0 <= f["flagged"] <= 3 and f["rate"] == pytest.approx(f["flagged"] / 3)
    flagged = sum(f["flagged"] for f in ev.false_alarms.values())
    assert flagged == ev.bird["fp"]
    rates = [f["rate"] for f in ev.false_alarms.values()]
    assert rates == sorted(rates, reverse=True)  # worst first
    assert ev.classes is None and "kitchen" in ev.classes_note  # kinds the model does not know


def test_evaluate_command_reports_false_alarms(tiny_model, real_folders, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "--data", str(real_folders), "--model", str(tiny_model), "--out", str(out),
                 "--threshold", "0.0", "--gallery-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "false alarms per folder (3 of 3 kinds of not-bird have some)" in text
    assert "kitchen" in text and "3 of 3" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["false_alarms"]["farm"] == {"n": 3, "flagged": 3, "rate": 1.0}
    assert "mistaken for bird" in (out / "report.html").read_text()


def test_class_accuracy_is_the_choice_among_the_datas_own_classes(tiny_model, cifar_small, tmp_path):
    """Three of CIFAR-10's classes: the 10-class model's accuracy there is its choice among those
    three (as CIFAR-10's 10-class accuracy is for a model that knows 283 classes)."""
    from birdcnn.data import load_split
    for c in ("bird", "cat", "dog"):
        shutil.copytree(cifar_small / "test" / c, tmp_path / c)
    clf = load_model(tiny_model)
    ev = evaluate(clf, str(tmp_path), gallery_size=0)
    assert ev.classes["names"] == ["bird", "cat", "dog"]
    ds = load_split(tmp_path, "test")
    own = clf.probabilities(ds.images)[:, [clf.classes.index(c) for c in ("bird", "cat", "dog")]]
    assert ev.classes["accuracy"] == pytest.approx(float((own.argmax(1) == ds.labels).mean()), abs=1e-6)


def test_the_evaluate_command_scores_photos_as_predict_does(photos, tmp_path, capsys):
    """The shipped model sees a photo twice, at 40 px and at its 48-px zoom size: `birdcnn evaluate`
    feeds it both views, as `predict` does (it once fed only the first: AP 0.680 on these 40
    photos, where `predict`'s probabilities give 0.774)."""
    from birdcnn import classify
    from birdcnn.metrics import binary_report

    clf = load_model(None)
    assert clf.zoom_size is not None  # else this would check nothing
    files = sorted(photos.glob("*/*.jpg"))
    scores = np.array([r["bird_probability"] for r in classify(files, clf)])
    expected = binary_report(np.array([f.parent.name == "bird" for f in files]), scores, clf.threshold)
    out = str(tmp_path / "ev")
    assert main(["evaluate", "--data", str(photos), "--json", "--out", out, "--gallery-size", "0"]) == 0
    got = json.loads(capsys.readouterr().out)["bird"]
    assert got["average_precision"] == pytest.approx(expected["average_precision"], abs=1e-4)
    assert {k: got[k] for k in ("tp", "fp", "fn", "tn")} == {k: expected[k] for k in ("tp", "fp", "fn", "tn")}
