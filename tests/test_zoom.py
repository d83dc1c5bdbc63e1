"""Photos' second view at the model's zoom_size: decoded once with the first, averaged into the
model's views by every command that classifies whole photos, calibrated, and exported."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from birdcnn.cli import main
from birdcnn.errors import BirdcnnError
from birdcnn.evaluate import evaluate
from birdcnn.images import PHOTO_SCALE, is_photo, load_views, open_image
from birdcnn.modelfile import load_model
from birdcnn.predict import classify


@pytest.fixture(scope="module")
def zoom_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a 48-px zoom view (a metadata field: the weights are the same)."""
    folder = tmp_path_factory.mktemp("zoom")
    for suffix in (".json", ".safetensors"):
        shutil.copy(tiny_model.with_suffix(suffix), folder / f"model{suffix}")
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "zoom_size": 48}))
    return folder / "model.json"


@pytest.fixture(scope="module")
def zoom_all_model(zoom_model, tmp_path_factory) -> Path:
    """The zoom model as calibrated since search's zoom view: every multi-view set has it."""
    folder = tmp_path_factory.mktemp("zoom_all")
    shutil.copy(zoom_model.with_suffix(".safetensors"), folder / "model.safetensors")
    meta = json.loads(zoom_model.read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "zoom_tta": ["flip", "flip-translate"]}))
    return folder / "model.json"


def test_photos_get_a_zoom_view_and_thumbnails_none(photos, cifar_small):
    photo = sorted((photos / "bird").glob("*.jpg"))[0]
    view, zoom = load_views(photo, 32, 48)
    assert view.shape == (32, 32, 3) and zoom.shape == (48, 48, 3)
    im = open_image(photo)
    assert is_photo(im, 32) and min(im.size) > PHOTO_SCALE * 32
    # The zoom view is the same central square, at 48 px: shrunk back to 32 it is close to the view.
    back = torch.nn.functional.interpolate(torch.from_numpy(zoom).permute(2, 0, 1)[None].float(), size=32,
                                           mode="area")[0].permute(1, 2, 0).numpy()
    assert np.abs(back - view).mean() < 8
    thumb = next((cifar_small / "test" / "bird").iterdir())  # a 32-px CIFAR-10 image
    view, zoom = load_views(thumb, 32, 48)
    assert view.shape == (32, 32, 3) and zoom is None
    assert load_views(photo, 32)[1] is None  # no zoom_size: no second view


def test_predict_averages_the_zoom_view_into_the_models_views(zoom_model, photos, cifar_small):
    clf = load_model(zoom_model)
    assert clf.zoom_size == 48
    files = [*sorted((photos / "bird").glob("*.jpg"))[:3], next((cifar_small / "test" / "cat").iterdir())]
    got = [r["bird_probability"] for r in classify(files, clf)]
    pos = clf.positive_index
    for path, p in zip(files, got):
        view, zoom = load_views(path, 32, 48)
        logits = clf.logits(view[None], tta="flip-translate")
        if zoom is not None:  # photos: half the 6 views at 32 px, half the flip pair at 48 px
            logits = 0.5 * (logits + clf.logits(zoom[None], tta="flip"))
        want = torch.softmax(logits / clf.temperature, 1)[0, pos].item()
        assert p == pytest.approx(want, abs=2e-6)


def test_only_photos_change_and_evaluate_scores_as_predict(zoom_model, tiny_model, photos, cifar_small):
    thumbs = sorted((cifar_small / "test" / "cat").iterdir())[:2]
    birds = sorted((photos / "bird").glob("*.jpg"))[:3]
    zoomed = classify([*thumbs, *birds], load_model(zoom_model))
    plain = classify([*thumbs, *birds], load_model(tiny_model))
    assert [r["bird_probability"] for r in zoomed[:2]] == [r["bird_probability"] for r in plain[:2]]
    assert all(a["bird_probability"] != b["bird_probability"] for a, b in zip(zoomed[2:], plain[2:]))
    # evaluate decodes folders in chunks through the same views: the same score per photo.
    ev = evaluate(load_model(zoom_model), str(photos), any_classes=True, gallery_size=0)
    files = sorted((photos / "bird").glob("*.jpg")) + sorted((photos / "not_bird").glob("*.jpg"))
    want = [r["bird_probability"] for r in classify(files, load_model(zoom_model))]
    assert ev.scores == pytest.approx(want, abs=2e-6)


def test_onnx_export_runs_both_views(zoom_model, photos, tmp_path):
    from birdcnn.export import export

    path, meta = export(str(zoom_model), out=str(tmp_path / "m.onnx"))
    assert meta["export"]["input"]["shape"] == ["batch", 3, "height", "width"] and "48 px" in meta["export"]["views"]
    files = sorted((photos / "bird").glob("*.jpg"))[:4]
    torch_side = classify(files, load_model(zoom_model, device="cpu"))
    exported = load_model(path)
    assert exported.zoom_size == 48
    onnx_side = classify(files, exported)
    # bf16 torch against float32 onnxruntime: close, not equal
    assert [r["bird_probability"] for r in onnx_side] == pytest.approx([r["bird_probability"] for r in torch_side],
                                                                      abs=0.03)


def test_bad_zoom_metadata_is_one_line_error(zoom_model, article_model, tmp_path, capsys):
    meta = json.loads(zoom_model.read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(zoom_model.with_suffix(".safetensors"), bad / "model.safetensors")
    (bad / "model.json").write_text(json.dumps({**meta, "zoom_size": "big"}))
    assert main(["predict", "--model", str(bad), "--samples"]) == 2
    assert "'zoom_size' must be a whole number" in capsys.readouterr().err
    # The article's network has a dense layer sized for one input: a zoom view cannot fit it.
    art = tmp_path / "art"
    art.mkdir()
    shutil.copy(article_model.with_suffix(".safetensors"), art / "model.safetensors")
    (art / "model.json").write_text(json.dumps({**json.loads(article_model.read_text()), "zoom_size": 48}))
    assert main(["predict", "--model", str(art), "--samples"]) == 2
    err = capsys.readouterr().err
    assert "metadata 'zoom_size' 48 does not fit the network" in err and len(err.strip().splitlines()) == 1


def test_search_scores_the_zoom_flip_pair_where_calibrated(zoom_model, zoom_all_model, tiny_model, photos,
                                                           cifar_small, tmp_path):
    from birdcnn.search import search

    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in [*sorted((photos / "bird").glob("*.jpg"))[:3], *sorted((cifar_small / "test" / "cat").iterdir())[:2]]:
        shutil.copy(f, folder / f.name)
    clf = load_model(zoom_all_model)
    assert clf.zoom_tta == ["flip", "flip-translate"] and load_model(zoom_model).zoom_tta == ["flip-translate"]
    # --min-probability 0: every photo gets the full view set (no single-view shortcut).
    got = dict(search(folder, clf, min_probability=0.0, workers=0, output=tmp_path / "log.jsonl").matches)
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["zoom"] == 48
    pos, t = clf.positive_index, clf.temperature_for("flip")
    for path, p in got.items():
        view, zoom = load_views(path, 32, 48)
        logits = clf.logits(view[None], tta="flip")
        if zoom is not None:  # photos: half the flip pair at 32 px, half the flip pair at 48 px
            logits = 0.5 * (logits + clf.logits(zoom[None], tta="flip"))
        assert p == pytest.approx(torch.softmax(logits / t, 1)[0, pos].item(), abs=2e-6)
    # A model calibrated before (zoom in its own views only) searches without it, as the plain model,
    # and a log of its search is not resumed with the zoom view.
    old_log = tmp_path / "old.jsonl"
    old = dict(search(folder, load_model(zoom_model), min_probability=0.0, workers=0, output=old_log).matches)
    with pytest.raises(BirdcnnError, match="another zoom view size"):
        search(folder, clf, min_probability=0.0, workers=0, output=old_log, resume=True)
    plain = dict(search(folder, load_model(tiny_model), min_probability=0.0, workers=0).matches)
    assert old == pytest.approx(plain, abs=1e-6)
    photo = str(folder / sorted((photos / "bird").glob("*.jpg"))[0].name)
    thumb = str(folder / sorted((cifar_small / "test" / "cat").iterdir())[0].name)
    assert got[thumb] == pytest.approx(plain[thumb], abs=1e-6) and got[photo] != pytest.approx(plain[photo], abs=1e-6)
