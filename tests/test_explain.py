"""`birdcnn explain` and `birdcnn augment-preview` on real photos with real trained models."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from birdcnn.cli import main

BIRD = "bird/magpie.jpg"
GREY = "not_bird/airship.jpg"   # a grayscale (mode L), very wide photo


def _png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes every pixel: a truncated file fails here
        return im.size


@pytest.mark.parametrize("model_fixture,first_shape", [("tiny_model", [24, 31, 31]), ("article_model", [32, 32, 32])])
def test_explain_writes_every_step(model_fixture, first_shape, request, photos, tmp_path, capsys):
    from birdcnn import classify, load_model

    model = request.getfixturevalue(model_fixture)
    out = tmp_path / "explain"
    assert main(["explain", str(photos / BIRD), "--model", str(model), "--out", str(out)]) == 0
    summary = json.loads((out / "explain.json").read_text())

    assert set(summary["files"]) == {"input", "tiles", "filters", "feature_maps", "pooling", "deeper_layers",
                                     "probabilities", "saliency", "combined"}
    for key, name in summary["files"].items():
        w, h = _png(out / name)
        assert w >= 200 and h >= 200, (key, w, h)
    w, h = _png(out / "explain.png")
    assert w > 4 * h and w >= 2000  # one strip that reads left to right

    # The layers were found by type, in the order the network runs them.
    kinds = [layer["kind"] for layer in summary["layers"]]
    assert kinds[0] == "conv" and summary["layers"][0]["output_shape"] == first_shape
    assert any(layer["type"].startswith("MaxPool") for layer in summary["layers"]) and kinds.count("conv") >= 3
    assert summary["gradcam_layer"] in {layer["name"] for layer in summary["layers"]}

    # The bar chart shows the real prediction: the same numbers `predict` gives.
    probs = summary["probabilities"]
    assert sum(probs.values()) == pytest.approx(1, abs=1e-4)
    expected = classify([photos / BIRD], load_model(model))[0]
    assert summary["bird_probability"] == pytest.approx(expected["bird_probability"], abs=1e-5)
    assert summary["label"] == expected["label"]
    assert expected["label"] in capsys.readouterr().out


def test_trace_explains_and_leaves_no_hooks(article_model, photos):
    from birdcnn.explain import explain
    from birdcnn.modelfile import load_model

    clf = load_model(article_model)
    e = explain(photos / GREY, clf)
    assert e.u8.shape == (32, 32, 3) and e.photo.mode == "RGB"
    # The crop box is the central square of the (downsized) photo.
    left, top, right, bottom = e.box
    assert right - left == bottom - top == min(e.photo.size)
    cam = e.trace.gradcam
    assert cam.shape == tuple(e.trace.cam_step.output.shape[1:]) and 0 <= cam.min() and cam.max() <= 1
    assert e.trace.saliency.shape == (32, 32) and e.trace.saliency.max() == pytest.approx(1)
    # Pooling halves the maps, keeping each 2x2 block's maximum.
    pool = e.first_pool
    assert pool.output.shape[1] == pool.input.shape[1] // 2
    assert float(pool.output[0, 0, 0]) == pytest.approx(float(pool.input[0, :2, :2].max()))
    assert not any(m._forward_hooks for m in clf.net.modules())
    # The model still predicts exactly as before tracing.
    assert clf.probabilities(e.u8[None])[0] == pytest.approx(e.probs, abs=1e-6)


def test_the_answer_shows_the_likeliest_classes_the_positive_and_the_rest(tiny_model, photos):
    """283 bars would be a smear: the shipped model's answer shows its likeliest classes, the bird
    always among them, and the rest as one bar; a model of few classes shows them all, in its order."""
    from birdcnn.explain import BARS_SHOWN, answer_bars, explain
    from birdcnn.modelfile import load_model

    clf = load_model(None)
    e = explain(photos / GREY, clf)
    assert int((e.probs > e.probs[clf.positive_index]).sum()) >= BARS_SHOWN  # bird is not among the airship's likeliest
    labels, probs, pos = answer_bars(e)
    assert len(labels) == BARS_SHOWN and labels[-1] == f"{len(clf.classes) - BARS_SHOWN + 1} other classes"
    likeliest = [clf.classes[i] for i in np.argsort(-e.probs)[:BARS_SHOWN - 2]]
    assert labels[pos] == "bird" and set(labels[:-1]) == {*likeliest, "bird"}
    assert list(probs[:-1]) == sorted(probs[:-1], reverse=True)
    assert probs[pos] == pytest.approx(e.probs[clf.positive_index]) and probs.sum() == pytest.approx(1, abs=1e-5)

    few = load_model(tiny_model)
    labels, probs, pos = answer_bars(explain(photos / BIRD, few))
    assert labels == few.classes and labels[pos] == few.positive and probs.sum() == pytest.approx(1, abs=1e-5)


def test_explain_bad_input_is_one_clean_line(tiny_model, tmp_path, capsys):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a picture")
    out = tmp_path / "never"
    assert main(["explain", str(fake), "--model", str(tiny_model), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(fake) in err and "not an image" in err
    assert not out.exists()
    assert main(["explain", str(fake), "--model", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_augment_preview_grid(photos, tmp_path, capsys):
    out = tmp_path / "aug.png"
    assert main(["augment-preview", str(photos / BIRD), "--n", "7", "--out", str(out)]) == 0
    w, h = _png(out)
    assert w >= 400 and h >= 200
    assert "rotations up to ±25°" in capsys.readouterr().out  # the article recipe by default
    # --input-size: the view of a model trained at another size; shifts are checked against it.
    assert main(["augment-preview", str(photos / BIRD), "--n", "2", "--input-size", "40", "--out", str(out)]) == 0
    assert main(["augment-preview", str(photos / BIRD), "--input-size", "8", "--shift", "4", "--out", str(out)]) == 2
    assert "--shift must be below 4 pixels (images are 8x8)" in capsys.readouterr().err
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((photos / BIRD).read_bytes())
    assert main(["augment-preview", str(photo), "--out", str(photo)]) == 2  # never over the photo
    assert "is the input" in capsys.readouterr().err and photo.read_bytes() == (photos / BIRD).read_bytes()


def test_augment_preview_uses_the_training_switches(photos):
    from birdcnn.augment import Augment
    from birdcnn.augment_preview import augmented_versions
    from birdcnn.images import load_for_model

    u8 = load_for_model(photos / BIRD, 32)
    # Everything off: every "synthetic" image is the original.
    same = augmented_versions(u8, Augment(flip=False, shift=0, rotate=0, blur=0), 5)
    assert (same == u8).all()
    # Flips only: each version is the original or its mirror, and both occur.
    flips = augmented_versions(u8, Augment(flip=True, shift=0, rotate=0, blur=0), 12)
    kinds = {"orig" if (v == u8).all() else "mirror" if (v == u8[:, ::-1]).all() else "other" for v in flips}
    assert kinds == {"orig", "mirror"}
    # Rotations change pixels but keep the picture's overall brightness.
    rot = augmented_versions(u8, Augment(flip=False, shift=0, rotate=25, blur=0), 4, seed=1)
    assert (rot != u8).any(axis=(1, 2, 3)).all()
    assert np.abs(rot.mean((1, 2, 3)) - u8.mean()) .max() < 20


def test_augment_preview_shows_the_crops_training_cuts_from_photos(photos, tmp_path, capsys):
    from birdcnn.augment import Augment, PhotoViews
    from birdcnn.augment_preview import augmented_versions
    from birdcnn.images import load_for_model

    stored = load_for_model(photos / BIRD, 80)  # the copy training stores of a photo for a 40-px view
    off = Augment(flip=False, shift=0, rotate=0, blur=0)
    crops = augmented_versions(stored, off, 6, seed=3, crops=PhotoViews(size=40, shift=0))
    assert crops.shape == (6, 40, 40, 3) and len({v.tobytes() for v in crops}) == 6  # each its own crop
    again = augmented_versions(stored, off, 6, seed=3, crops=PhotoViews(size=40, shift=0))
    assert (again == crops).all()  # the seed decides

    out = tmp_path / "crops.png"
    args = ["augment-preview", str(photos / BIRD), "--arch", "fast", "--input-size", "40", "--out", str(out)]
    assert main([*args, "--photo-crops", "bird"]) == 0
    assert _png(out)[0] >= 400 and "crops of 35-100% of the view, colour ±30%" in capsys.readouterr().out
    assert main([*args, "--photo-crops", "other"]) == 0
    assert "crops of 3-100% of the view" in capsys.readouterr().out
    # A thumbnail is never cropped in training: nothing to show.
    Image.fromarray(load_for_model(photos / BIRD, 32)).save(tmp_path / "thumb.png")
    assert main(["augment-preview", str(tmp_path / "thumb.png"), "--input-size", "32", "--photo-crops", "bird",
                 "--out", str(tmp_path / "t.png")]) == 2
    assert "32x32 is a thumbnail for the 32-px view" in capsys.readouterr().err and not (tmp_path / "t.png").exists()


def test_augment_preview_bad_input(photos, tmp_path, capsys):
    fake = tmp_path / "x.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["augment-preview", str(fake), "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert str(fake) in err and "Traceback" not in err
    assert main(["augment-preview", str(photos / BIRD), "--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err
    assert main(["augment-preview", str(photos / BIRD), "--out", str(tmp_path / "a.txt")]) == 2
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "a.txt").exists()
