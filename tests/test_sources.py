"""Several --data sources as one training set: class names meeting, thumbnails vs photos, the
photo views training cuts, and a real multi-source run with its metadata."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birdcnn import sources as S
from birdcnn.augment import GREY_WEIGHTS, PhotoViews, colour_jitter
from birdcnn.cli import main
from birdcnn.data import load_split, split_validation
from birdcnn.modelfile import load_model
from birdcnn.calibrate import choose_threshold, restricted_argmax

DOGS = ["american_staffordshire_terrier", "brittany_spaniel", "bull_mastiff", "entlebucher", "norwegian_elkhound"]


@pytest.fixture(scope="module")
def photo_source(photos, tmp_path_factory) -> Path:
    """Real full-size photos in class folders: bird/, dog/, and a Tiny-ImageNet-style breed
    folder (yorkshire_terrier/) that must merge into dog."""
    root = tmp_path_factory.mktemp("photo_source")
    for p in sorted((photos / "bird").glob("*.jpg")):
        (root / "bird").mkdir(exist_ok=True)
        shutil.copy(p, root / "bird" / p.name)
    for name in DOGS:
        (root / "dog").mkdir(exist_ok=True)
        shutil.copy(photos / "not_bird" / f"{name}.jpg", root / "dog")
    (root / "yorkshire_terrier").mkdir()
    shutil.copy(photos / "not_bird" / "yorkshire_terrier.jpg", root / "yorkshire_terrier")
    return root


def test_canonical_class_names():
    assert S.canonical_class("car") == "automobile"
    assert S.canonical_class(" Golden Retriever ") == "dog"
    assert S.canonical_class("lawn-mower") == "lawn_mower"
    assert S.canonical_class("bird") == "bird"


def test_thumbnails_and_photos_are_told_apart(cifar_small, photo_source):
    from birdcnn.data import resolve_source
    assert not S.is_photo_source(resolve_source(cifar_small), 32)
    assert S.is_photo_source(resolve_source(photo_source), 32)


def test_load_sources_merges_classes_and_keeps_each_split(cifar_small, photo_source):
    mixed = S.load_sources([str(cifar_small), str(photo_source)], 32, seed=0)
    classes = mixed.train.classes
    assert classes[:10] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(classes) == 10  # photo_source's bird, dog and yorkshire_terrier all merge into CIFAR's classes
    assert mixed.photo == [False, True] and mixed.store_scale == 2
    assert mixed.train.images.shape[1:] == (64, 64, 3) and mixed.val.images.shape[1:] == (32, 32, 3)
    # 10% of each source is held out: 60 of CIFAR's 600, 1 of the 16 photos.
    assert np.bincount(mixed.val_source).tolist() == [60, 1]
    assert np.bincount(mixed.train_source).tolist() == [540, 15]
    info = mixed.infos[1].as_dict()
    assert info["kind"] == "photos" and info["train"] == 15 and set(info["classes"]) <= {"bird", "dog"}
    assert sum(info["classes"].values()) == 15
    # Thumbnails are stored by repeating pixels: a 2x2 mean gives the model's view back exactly.
    view = load_split(cifar_small, "train").images
    stored = torch.from_numpy(mixed.train.images[mixed.train_source == 0][:50]).permute(0, 3, 1, 2).float()
    tr, _ = split_validation(600, 60, 0)
    assert torch.equal(F.avg_pool2d(stored, 2), torch.from_numpy(view[tr[:50]]).permute(0, 3, 1, 2).float())
    # Photos are stored decoded at twice the view; their training rows follow the source's own split.
    photo_tr, _ = split_validation(16, 1, 0 + 1)
    assert np.array_equal(mixed.train.images[mixed.train_source == 1],
                          load_split(photo_source, "train", 64).images[photo_tr])
    # Every source's test split, relabelled into the merged classes, knowing its own classes.
    (name, test), (_, photo_test) = mixed.tests
    assert test.source_classes == classes[:10] and len(test) == 200
    assert photo_test is None  # a folder without a test/ split gives no test figures


def test_single_thumbnail_source_stores_images_as_they_are(cifar_small):
    mixed = S.load_sources([str(cifar_small)], 32, seed=0, val_size=100)
    assert mixed.store_scale == 1 and not mixed.photo_views
    assert mixed.train.images.shape[1:] == (32, 32, 3) and len(mixed.val) == 100


def test_photo_views_keep_thumbnails_exact_and_crop_photos():
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (6, 3, 32, 32)).float()
    stored = small.repeat_interleave(2, 2).repeat_interleave(2, 3)
    photo = torch.tensor([False, False, False, True, True, True])
    positive = torch.tensor([True, False, True, False, True, False])
    views = PhotoViews(size=32, shift=0, colour=0, grey_p=0)
    out = views(stored, photo, positive, g)
    assert out.shape == (6, 3, 32, 32)
    assert torch.equal(out[:3], small[:3])             # thumbnails: the image itself
    assert not torch.equal(out[3:], small[3:])         # photos: random crops, resized back to 32
    assert out.min() >= 0 and out.max() <= 255
    shifted = PhotoViews(size=32, shift=2, colour=0, grey_p=0)(stored, photo, positive, g)
    assert not torch.equal(shifted[:3], small[:3])     # the recipe's shift


def test_colour_jitter_is_brightness_then_contrast_then_saturation():
    x = torch.rand(8, 3, 16, 16) * 255
    got = colour_jitter(x, 0.3, 0.25, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, applied one step at a time
    b, c, s = ((1 + (torch.rand(8, generator=g) * 2 - 1) * 0.3).view(-1, 1, 1, 1) for _ in range(3))
    s = torch.where((torch.rand(8, generator=g) < 0.25).view(-1, 1, 1, 1), torch.zeros_like(s), s)
    w = torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1)
    y = x * b
    mean = (y * w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    y = (y - mean) * c + mean
    grey = (y * w).sum(1, keepdim=True)
    want = (grey + (y - grey) * s).clamp(0, 255)
    assert torch.allclose(got, want, atol=1e-3)


def test_restricted_argmax_and_per_group_threshold():
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    assert restricted_argmax(probs, ["a", "b", "c"], ["a", "b"]).tolist() == [1, 0]
    assert restricted_argmax(probs, ["a", "b", "c"], None).tolist() == [2, 0]
    y = np.array([1, 0, 1, 0, 1, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.5])
    groups = {"thumbnails": np.array([1, 1, 1, 0, 0, 0], bool), "photos": np.array([0, 0, 0, 1, 1, 1], bool)}
    t, rule = choose_threshold(y, scores, groups, 1.0)
    assert t == 0.9 and "thumbnails (0.900)" in rule and "photos (0.600)" in rule  # the stricter group wins


def test_train_on_two_sources_records_each(cifar_small, photo_source, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_small), "--data", str(photo_source), "--source-weights", "1", "3",
                 "--arch", "tiny", "--epochs", "1", "--batch-size", "100", "--device", "cpu", "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"][:10] == load_model(out).classes[:10] and len(meta["classes"]) == 10
    sources = meta["training"]["sources"]
    assert [s["kind"] for s in sources] == ["thumbnails", "photos"] and [s["weight"] for s in sources] == [1.0, 3.0]
    assert sources[0]["train"] == 540 and sources[0]["fingerprint"].startswith("folder:")
    assert meta["training"]["data"] == [str(cifar_small), str(photo_source)]
    assert (0 <= meta["window_threshold"] <= 1 and "window" in meta["window_threshold_rule"]
            or "unreachable" in meta["window_threshold_rule"])
    assert meta["window_scoring"] == {"neighbourhood": 3, "whole_frame": 1.0}  # what the threshold was chosen for
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sources"]) == {str(cifar_small), str(photo_source)}
    assert metrics["sources"][str(cifar_small)]["test"]["n"] == 200

    # --recalibrate: thresholds chosen again on the same validation split; the weights stay.
    weights = (out / "model.safetensors").read_bytes()
    assert main(["train", "--out", str(out), "--recalibrate", "--target-precision", "0.5"]) == 0
    again = json.loads((out / "model.json").read_text())
    assert (out / "model.safetensors").read_bytes() == weights and again["weights_sha256"] == meta["weights_sha256"]
    assert again["training"]["config"]["target_precision"] == 0.5 and "0.5" in again["threshold_rule"]
    assert again["temperature"] == pytest.approx(meta["temperature"], rel=1e-4)  # same data, same fit
    assert again["training"]["recalibrated"]["command"].endswith("--target-precision 0.5")
    assert main(["train", "--out", str(tmp_path / "nothing"), "--recalibrate"]) == 2

    # --zoom-size on a finished run: photos' second view, calibrated with the validation photos'.
    assert main(["train", "--out", str(out), "--recalibrate", "--zoom-size", "48"]) == 0
    zoomed = json.loads((out / "model.json").read_text())
    assert zoomed["zoom_size"] == 48 and zoomed["training"]["config"]["zoom_size"] == 48
    assert zoomed["zoom_tta"] == ["flip", "flip-translate"]  # search's flip pair is calibrated with the zoom view
    assert load_model(out).zoom_size == 48 and (out / "model.safetensors").read_bytes() == weights
    assert main(["train", "--out", str(out), "--recalibrate", "--zoom-size", "16"]) == 2  # not above the view
    assert json.loads((out / "model.json").read_text()) == zoomed  # a refused change leaves the run as it was
    assert main(["train", "--out", str(out), "--recalibrate", "--zoom-size", "0"]) == 0
    assert not {"zoom_size", "zoom_tta"} & set(json.loads((out / "model.json").read_text()))


def test_search_for_several_words_adds_their_probabilities(tiny_model, photos):
    from birdcnn.search import search
    clf = load_model(tiny_model)
    both = search(photos / "bird", clf, "cat,dog", min_probability=0.0, workers=0, tta=False)
    cat = search(photos / "bird", clf, "cat", min_probability=0.0, workers=0, tta=False)
    dog = search(photos / "bird", clf, "dog", min_probability=0.0, workers=0, tta=False)
    p = {path: q for path, q in both.matches}
    for (path, q), (path2, r) in zip(sorted(cat.matches), sorted(dog.matches)):
        assert path == path2 and p[path] == pytest.approx(q + r, abs=1e-4)
    assert both.target == "cat,dog"


def test_unknown_word_is_one_line(tiny_model, photos, capsys):
    assert main(["search", str(photos / "bird"), "--for", "cat,unicorn",
                 "--model", str(tiny_model), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'unicorn'" in err[0]


def test_search_help_lists_the_words_the_shipped_model_knows(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "words:" in out and "bird" in out
