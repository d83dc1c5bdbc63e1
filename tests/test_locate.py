"""`birdcnn locate`: sliding windows on real photos, from 64 px to 24 MP."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou, nms

from birdcnn.cli import main
from birdcnn.images import model_view
from birdcnn.locate import (
    CALIBRATED_SCORING, MAX_WINDOWS, MIN_WINDOW_PX, WindowScoring, _load_nms, locate, locate_file, plan_scales,
)
from birdcnn.modelfile import default_model_path, load_model


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory, photos) -> Path:
    """A real 24 MP JPEG (a shared photo enlarged to 6000x4000)."""
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    (Image.open(photos / "bird" / "magpie.jpg").convert("RGB")
     .resize((6000, 4000), Image.Resampling.BILINEAR).save(path, quality=85))
    return path


def test_nms_is_torchvisions():
    """locate loads torchvision's nms op without the package import: same kept boxes, same order."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 900
    boxes = torch.cat([xy, xy + 20 + torch.rand(500, 2, generator=g) * 200], 1)
    scores = torch.rand(500, generator=g)
    kept = _load_nms()(boxes, scores, 0.3)
    assert 0 < len(kept) < 500
    assert torch.equal(kept, nms(boxes, scores, 0.3))


@pytest.mark.parametrize("w,h", [(64, 64), (100, 64), (6000, 4000), (8000, 600), (8000, 300), (32, 32)])
def test_window_count_is_bounded(w, h):
    plan = plan_scales(min(w, h), max(w, h), [0.8, 0.5, 0.33, 0.22, 0.15], 0.25)
    total = 0
    for s, st in plan:
        f = 32 / (s * min(w, h))
        nx = (max(32, round(w * f)) - 32) // st + 1
        ny = (max(32, round(h * f)) - 32) // st + 1
        total += nx * ny
        assert s * min(w, h) >= MIN_WINDOW_PX or len(plan) == 1
    assert 1 <= total <= MAX_WINDOWS


def test_small_and_huge_photos(model, cifar_small, big_photo):
    small = Image.open(sorted((cifar_small / "test" / "bird").glob("*.jpg"))[0]).convert("RGB").resize((64, 64))
    r = locate(small, model, min_probability=0)
    assert r.size == (64, 64) and 0 < r.windows <= MAX_WINDOWS
    assert all(s["window_px"] >= MIN_WINDOW_PX for s in r.scales) and len(r.scales) < 5  # tiny windows dropped

    r = locate_file(big_photo, model, min_probability=0)
    assert r.size == (6000, 4000) and 0 < r.windows <= MAX_WINDOWS and len(r.scales) == 5
    assert max(r.display.size) <= 1024 and r.heat.shape == r.display.size[::-1]
    assert 0 <= r.heat.min() and r.heat.max() <= 1
    for b in r.boxes:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= 6000 and 0 <= y0 < y1 <= 4000
    # Window sides are fractions of the photo's shorter side, in photo pixels.
    assert [s["window_px"] for s in r.scales] == pytest.approx(
        [0.8 * 4000, 0.5 * 4000, 0.33 * 4000, 0.22 * 4000, 0.15 * 4000], rel=0.02)


def test_boxes_are_in_photo_coordinates(model, photos):
    """A reduced decode reports boxes in the real photo's pixels: exactly scaled up."""
    im = Image.open(photos / "bird" / "crane.jpg").convert("RGB")
    a = locate(im, model, scales=[0.5, 0.3], min_probability=0, top=20)
    b = locate(im, model, scales=[0.5, 0.3], min_probability=0, top=20, photo_size=(im.width * 4, im.height * 4))
    assert len(a.boxes) == len(b.boxes) > 1
    for p, q in zip(a.boxes, b.boxes):
        assert q["probability"] == p["probability"]
        assert np.allclose(q["box"], np.array(p["box"]) * 4, atol=4)


@pytest.mark.parametrize("scoring", [WindowScoring(), CALIBRATED_SCORING, WindowScoring(5, 0.5)])
def test_window_scores_by_hand(model, photos, scoring):
    """A window's score is the mean bird log-odds of its k x k neighbours (edges repeated) plus
    `whole_frame` x the whole photo's log-odds: computed here from the model's logits directly."""
    size = model.input_size
    # A photo whose one scale needs no resize: the windows are plain slices of its pixels.
    im = Image.open(photos / "bird" / "crane.jpg").convert("RGB").resize((4 * size, 3 * size), Image.Resampling.BICUBIC)
    res = locate(im, model, scales=[1 / 3], min_probability=0, top=1, scoring=scoring)
    a, st = np.array(im), round(size * 0.25)
    ny, nx = (a.shape[0] - size) // st + 1, (a.shape[1] - size) // st + 1
    windows = np.stack([a[y * st:y * st + size, x * st:x * st + size] for y in range(ny) for x in range(nx)])
    pos, t = model.positive_index, model.temperature_for("none")

    def log_odds(x: np.ndarray) -> np.ndarray:
        z = model.logits(x, tta="none").double().numpy() / t
        rest = np.delete(z, pos, 1)
        return z[:, pos] - (rest.max(1) + np.log(np.exp(rest - rest.max(1, keepdims=True)).sum(1)))

    lo, k = log_odds(windows).reshape(ny, nx), scoring.neighbourhood
    padded = np.pad(lo, k // 2, mode="edge")
    mean = np.array([[padded[y:y + k, x:x + k].mean() for x in range(nx)] for y in range(ny)])
    whole = log_odds(model_view(im, size)[None])[0]
    score = mean + scoring.whole_frame * whole
    assert res.windows == nx * ny and res.whole_frame_probability == pytest.approx(1 / (1 + np.exp(-whole)), abs=1e-6)
    assert res.max_probability == pytest.approx(1 / (1 + np.exp(-score.max())), abs=1e-6)
    y, x = np.unravel_index(score.argmax(), score.shape)
    assert res.boxes[0]["box"] == [x * st, y * st, x * st + size, y * st + size]


def test_the_window_threshold_keeps_its_scoring(model, bird_model, photos):
    """A model file records how its window threshold was chosen; files from before score single windows."""
    assert "window_scoring" not in model.meta and WindowScoring.of(model) == WindowScoring(1, 0.0)
    assert WindowScoring.of(bird_model) == CALIBRATED_SCORING == WindowScoring(3, 1.0)
    # Other classes have no window threshold chosen for them: single windows, against the default 0.5.
    assert WindowScoring.of(bird_model, bird_model.class_indices("cat,dog")) == WindowScoring()
    dingo = locate_file(photos / "not_bird" / "dingo.jpg", bird_model, target="dog", scales=[0.5])
    assert dingo.scoring == WindowScoring() and dingo.min_probability == 0.5


def test_cli_json_and_heatmap(tiny_model, photos, tmp_path, capsys):
    out = tmp_path / "heat" / "magpie.png"
    photo = photos / "bird" / "magpie.jpg"
    code = main(["locate", str(photo), "--model", str(tiny_model), "--json", "--out", str(out),
                 "--min-probability", "0", "--top", "3", "--scales", "0.5", "0.3", "--stride", "0.5"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["heatmap"] == str(out) and res["size"] == list(Image.open(photo).size)
    assert len(res["boxes"]) == 3 and [s["scale"] for s in res["scales"]] == [0.5, 0.3]
    assert res["windows"] == sum(s["windows"] for s in res["scales"])
    assert res["window_scoring"] == {"neighbourhood": 1, "whole_frame": 0.0}  # the tiny model's file has none
    probs = [b["probability"] for b in res["boxes"]]
    assert probs == sorted(probs, reverse=True) and probs[0] == pytest.approx(res["max_probability"], abs=1e-6)
    png = Image.open(out)
    assert png.format == "PNG" and min(png.size) > 300


def test_cli_errors(tiny_model, tmp_path, capsys):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    for args, msg in [([str(text)], "not an image"), ([str(tmp_path / "gone.jpg")], "no such file"),
                      ([str(text), "--stride", "0"], "--stride"), ([str(text), "--scales", "2"], "--scales"),
                      ([str(text), "--scales", "0.01"], "from 0.05 to 1"),  # once 60,000 windows, unbounded
                      ([str(text), "--for", "pelican"], None)]:
        code = main(["locate", *args, "--model", str(tiny_model), "--out", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert msg is None or msg in err
    assert not (tmp_path / "x.png").exists()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(text.read_bytes())
    code = main(["locate", str(photo), "--model", str(tiny_model), "--out", str(photo)])
    err = capsys.readouterr().err
    assert code == 2 and "is the input" in err and photo.read_text() == "not a photo"  # never over the photo


@pytest.fixture(scope="module")
def bird_model():
    """The shipped model (the fixture's tiny model does not really recognise birds: its
    background windows score as high as birds). It ships in the package, so it must be there."""
    assert default_model_path().exists(), "the shipped default model is missing from the package"
    return load_model()


def test_finds_a_pasted_bird(bird_model, cifar_small, photos, scene="television"):
    # The CIFAR-10 test bird this model is surest of on its own: the test is about finding it.
    birds = sorted((cifar_small / "test" / "bird").glob("*.jpg"))
    alone = bird_model.probabilities(np.stack([np.array(Image.open(p).convert("RGB")) for p in birds]))
    bird = Image.open(birds[int(alone[:, bird_model.positive_index].argmax())]).convert("RGB")

    base = Image.open(photos / "not_bird" / f"{scene}.jpg").convert("RGB").resize((720, 480), Image.Resampling.BICUBIC)
    pasted = base.copy()
    x, y, s = 430, 90, 96  # a bird a fifth of the photo's height, off-centre
    pasted.paste(bird.resize((s, s), Image.Resampling.BICUBIC), (x, y))
    scales = [0.5, 0.3, 0.2]  # around the bird's size: keeps the test fast
    found = locate(pasted, bird_model, scales=scales, min_probability=0)
    empty = locate(base, bird_model, scales=scales, min_probability=0)
    iou = box_iou(torch.tensor([found.boxes[0]["box"]], dtype=torch.float),
                  torch.tensor([[x, y, x + s, y + s]], dtype=torch.float))
    assert float(iou) >= 0.3, (found.boxes[0], (x, y, s))
    assert empty.max_probability < found.max_probability
    # The heat map is hottest around the bird.
    hx, hy = (x + s // 2) * found.heat.shape[1] // 720, (y + s // 2) * found.heat.shape[0] // 480
    assert found.heat[hy, hx] > np.percentile(found.heat, 90)
