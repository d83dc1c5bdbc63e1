"""Each set of test-time views has its own temperature and threshold, chosen on validation."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from birdcnn.errors import ModelFileError
from birdcnn.modelfile import TTA_MODES, load_model, read_metadata
from birdcnn.search import search


def test_training_calibrates_every_view_set(tiny_model):
    meta = json.loads(tiny_model.read_text())
    cal = meta["calibration"]
    assert set(cal) == set(TTA_MODES)
    # The model's own views are the top-level values.
    assert cal[meta["tta"]] == {"temperature": meta["temperature"], "threshold": meta["threshold"]}
    assert all(c["temperature"] > 0 and 0 <= c["threshold"] <= 1 for c in cal.values())


def test_probabilities_use_the_temperature_of_their_views(tiny_model, cifar_small):
    clf = load_model(tiny_model)
    clf.calibration["flip"]["temperature"] = 2.0 * clf.temperature  # make the two clearly different
    x = np.stack([np.asarray(Image.open(p).convert("RGB"))
                  for p in sorted((cifar_small / "test" / "bird").iterdir())[:8]])
    for mode in TTA_MODES:
        expected = torch.softmax(clf.logits(x, tta=mode) / clf.temperature_for(mode), 1).numpy()
        assert np.allclose(clf.probabilities(x, tta=mode), expected, atol=1e-6)
    assert clf.temperature_for("flip") == 2.0 * clf.temperature and clf.temperature_for() == clf.temperature


def test_search_applies_the_threshold_chosen_for_its_views(tiny_model, cifar_small):
    clf = load_model(tiny_model)
    folder = cifar_small / "test" / "bird"
    assert search(folder, clf, workers=0).min_probability == pytest.approx(clf.calibration["flip"]["threshold"])
    assert (search(folder, clf, workers=0, tta=False).min_probability
            == pytest.approx(clf.calibration["none"]["threshold"]))


def test_a_model_without_view_calibration_keeps_its_one_temperature(tiny_model, tmp_path):
    meta = json.loads(tiny_model.read_text())
    del meta["calibration"]
    shutil.copy(tiny_model.with_suffix(".safetensors"), tmp_path / "old.safetensors")
    (tmp_path / "old.json").write_text(json.dumps(meta))
    clf = load_model(tmp_path / "old.json")
    assert clf.temperature_for("none") == clf.temperature and clf.threshold_for("flip") == clf.threshold


@pytest.mark.parametrize("bad", [{"flip": {"temperature": -1, "threshold": 0.5}},
                                 {"six": {"temperature": 1, "threshold": 0.5}},
                                 {"flip": {"temperature": 1, "threshold": 1.5}}, ["flip"]])
def test_bad_view_calibration_is_refused(tiny_model, tmp_path, bad):
    meta = json.loads(tiny_model.read_text())
    meta["calibration"] = bad
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="metadata 'calibration' must be"):
        read_metadata(tmp_path / "m.json")
