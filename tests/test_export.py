"""`birdcnn export` and the onnxruntime backend, on real images: ONNX (float32 and int8) and
TorchScript exports of the shipped model and of freshly built networks of every architecture,
the metadata they carry, `predict --backend onnxruntime`, and tampered or missing files."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from birdcnn.backends import OnnxClassifier, sidecar
from birdcnn.cli import main
from birdcnn.errors import BirdcnnError, ModelFileError
from birdcnn.export import check, quiet_jit, write_checked
from birdcnn.images import load_for_model
from birdcnn.modelfile import default_model_path, load_model, read_metadata, save_model
from birdcnn.models import build
from birdcnn.predict import sample_images
from birdcnn.search import search

# float32 exports: every class probability within 1e-4 of torch float32's (measured: ~1e-6).
FP32_TOLERANCE = 1e-4
# int8: the bird decision (p(bird) >= the model's threshold) equals torch float32's on >= 90% of
# the real images, and p(bird) differs by <= 0.05 on average (measured: all agree, 0.004).
INT8_MIN_AGREEMENT, INT8_MAX_MEAN_DIFFERENCE = 0.90, 0.05


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args) -> str:
    """Run a command that must fail as a user error: exit 2, one line on stderr (returned)."""
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def views(photos: Path, size: int) -> np.ndarray:
    """The package's sample images (CIFAR-10 test thumbnails) and the shared photos, as a model
    with a `size`-px view sees them."""
    paths = sample_images() + sorted(photos.rglob("*.jpg"))
    return np.stack([load_for_model(p, size) for p in paths])


@pytest.fixture(scope="module")
def torch_fp32():
    clf = load_model(device="cpu")
    clf.bf16 = False
    return clf


@pytest.fixture(scope="module")
def real_images(photos, torch_fp32) -> np.ndarray:
    """Real images at the shipped model's view."""
    return views(photos, torch_fp32.input_size)


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory) -> Path:
    """The shipped model exported through the command line (float32 ONNX)."""
    out = tmp_path_factory.mktemp("export") / "shipped.onnx"
    assert main(["export", "--out", str(out)]) == 0
    return out


def test_onnx_export_matches_torch_float32(shipped_onnx, torch_fp32, real_images):
    clf = load_model(shipped_onnx)
    assert isinstance(clf, OnnxClassifier) and clf.tta == torch_fp32.tta == "flip-translate"
    got, want = clf.probabilities(real_images), torch_fp32.probabilities(real_images)
    assert np.abs(got - want).max() < FP32_TOLERANCE
    # The shared Classifier code around the network: the same records, words and thresholds.
    assert [clf.record(p)["label"] for p in got] == [torch_fp32.record(p)["label"] for p in want]
    assert clf.class_indices("cat,car") == torch_fp32.class_indices("cat,car")
    assert clf.window_threshold([clf.positive_index]) == torch_fp32.window_threshold([clf.positive_index])
    # The batch axis is dynamic: one image or seven through the session directly.
    for n in (1, 7):
        x = torch_fp32.prepare(real_images[:n]).contiguous().numpy()
        assert clf.session.run(None, {"input": x})[0].shape == (n, len(clf.classes))


def test_search_with_onnx_mirrors_what_torch_mirrors(shipped_onnx, torch_fp32, photos):
    # search's mirror image only for photos near the threshold: the export's scores pick the same ones.
    got, want = (search(photos, clf, min_probability=0.5, workers=0) for clf in (load_model(shipped_onnx), torch_fp32))
    assert 0 < got.mirrored == want.mirrored < got.scored == want.scored == len(list(photos.rglob("*.jpg")))
    assert dict(got.matches) == pytest.approx(dict(want.matches), abs=FP32_TOLERANCE) and got.matches


def test_onnx_file_carries_the_metadata(shipped_onnx):
    model = onnx.load(shipped_onnx)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["birdcnn"])
    source = read_metadata(default_model_path())
    for key in ("classes", "positive", "mean", "std", "input_size", "zoom_size", "temperature", "threshold",
                "window_threshold", "window_scoring", "tta", "resize"):
        assert meta[key] == source[key], key
    assert meta["export"]["source_weights_sha256"] == source["weights_sha256"]
    assert meta["export"]["precision"] == "float32" and meta["export"]["opset"] >= 17
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free batch axis
    # The same metadata beside it, plus the file's sha256 and the export check's figures.
    side = json.loads(sidecar(shipped_onnx).read_text())
    assert side.pop("file_sha256") == hashlib.sha256(shipped_onnx.read_bytes()).hexdigest()
    assert side["export"].pop("check")["max_probability_difference"] < 1e-3
    assert side == meta


def test_onnx_export_works_without_its_json(shipped_onnx, tmp_path, real_images):
    alone = tmp_path / "alone.onnx"
    shutil.copy(shipped_onnx, alone)
    clf = load_model(alone, backend="onnxruntime")
    assert clf.classes == load_model(shipped_onnx).classes
    assert clf.probabilities(real_images[:4]).shape == (4, len(clf.classes))
    # Named by its .json, or by the folder holding it (runs/export-DATE), it is the same export.
    for other in (sidecar(shipped_onnx), shipped_onnx.parent):
        assert load_model(other).meta == clf.meta
    # In a run folder beside the torch model: the folder is the torch model, unless onnxruntime is asked for.
    save_model(build("tiny", 2), {"arch": "tiny", "classes": ["not_bird", "bird"], "positive": "bird",
                                  "input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}, tmp_path / "model")
    assert not isinstance(load_model(tmp_path), OnnxClassifier)
    assert load_model(tmp_path, backend="onnxruntime").meta == clf.meta


@pytest.mark.parametrize("arch", ["tiny", "article"])
def test_fresh_networks_of_every_architecture_export(arch, tmp_path, photos, capsys):
    real_images = views(photos, 32)
    torch.manual_seed(0)
    meta = {"arch": arch, "classes": ["not_bird", "bird"], "positive": "bird", "input_size": 32,
            "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "tta": "flip"}
    model = save_model(build(arch, 2), meta, tmp_path / "fresh")
    code, out, _ = run(capsys, "export", model, "--out", tmp_path / "fresh.onnx")
    assert code == 0 and "checked on 12 real images" in out
    reference = load_model(model, "cpu")
    reference.bf16 = False
    got = load_model(tmp_path / "fresh.onnx").probabilities(real_images)
    assert np.abs(got - reference.probabilities(real_images)).max() < FP32_TOLERANCE


def test_torchscript_export_loads_and_matches(tmp_path, torch_fp32, real_images, capsys):
    out = tmp_path / "shipped.pt"
    code, printed, _ = run(capsys, "export", "--format", "torchscript", "--out", out)
    assert code == 0 and "TorchScript" in printed
    extra = {"birdcnn.json": ""}
    with quiet_jit():
        module = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["birdcnn.json"])["classes"] == torch_fp32.classes
    assert json.loads(sidecar(out).read_text())["export"]["format"] == "torchscript"
    x = torch_fp32.prepare(real_images).contiguous()
    with torch.no_grad():
        assert torch.allclose(module(x), torch_fp32.net(x).float(), atol=1e-4)
        assert module(x[:3]).shape == (3, len(torch_fp32.classes))  # any batch size, not the traced one


def test_int8_export_mostly_agrees(tmp_path, photos, torch_fp32, real_images, capsys):
    out = tmp_path / "int8.onnx"
    code, printed, err = run(capsys, "export", "--int8", "--calibrate", photos,
                             "--calibration-images", 32, "--out", out)
    assert code == 0, err
    assert "int8" in printed and "calibrating int8 ranges on 32 images" in err
    meta = json.loads(sidecar(out).read_text())["export"]
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_images"] == 32
    assert meta["calibration_sources"] == [str(photos)]
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    clf = load_model(out)
    p8, p32 = clf.probabilities(real_images), torch_fp32.probabilities(real_images)
    i, t = clf.positive_index, clf.threshold
    assert ((p8[:, i] >= t) == (p32[:, i] >= t)).mean() >= INT8_MIN_AGREEMENT
    assert np.abs(p8[:, i] - p32[:, i]).mean() <= INT8_MAX_MEAN_DIFFERENCE


def test_predict_with_onnxruntime_gives_the_same_labels(shipped_onnx, photos, capsys):
    images = [*sample_images(), photos / "bird", photos / "not_bird"]
    code, out, err = run(capsys, "predict", *images, "--json", "--backend", "onnxruntime", "--model", shipped_onnx)
    assert code == 0 and err == ""
    onnx_records = json.loads(out)
    code, out, _ = run(capsys, "predict", *images, "--json")
    torch_records = json.loads(out)
    threshold = load_model().threshold
    assert [r["path"] for r in onnx_records] == [r["path"] for r in torch_records]
    assert len(onnx_records) == len(sample_images()) + len(list(photos.rglob("*.jpg"))) and "error" not in out
    for a, b in zip(onnx_records, torch_records):
        # torch runs in bf16 by default: p(bird) within 0.02, and so the same label unless that close to the threshold.
        assert a["bird_probability"] == pytest.approx(b["bird_probability"], abs=0.02)
        if abs(b["bird_probability"] - threshold) > 0.02:
            assert a["label"] == b["label"], a["path"]


def test_tampered_truncated_or_missing_onnx_is_one_line_error(shipped_onnx, tmp_path, capsys):
    data = shipped_onnx.read_bytes()
    copy = tmp_path / "copy.onnx"
    shutil.copy(sidecar(shipped_onnx), sidecar(copy))
    # One bit changed in the weights: still valid protobuf, but not the file its .json describes.
    middle = len(data) // 2
    copy.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    err = refused(capsys, "predict", "--samples", "--model", copy)
    assert "copy.onnx" in err and "sha256 differs" in err
    # Truncated, with no .json beside it: onnxruntime cannot parse it.
    sidecar(copy).unlink()
    copy.write_bytes(data[:middle])
    err = refused(capsys, "predict", "--samples", "--backend", "onnxruntime", "--model", copy)
    assert "copy.onnx" in err and "not a valid ONNX model" in err
    assert "no such file" in refused(capsys, "predict", "--samples", "--model", tmp_path / "missing.onnx")
    # A valid ONNX model that birdcnn did not make (its metadata removed).
    model = onnx.load(shipped_onnx)
    del model.metadata_props[:]
    onnx.save(model, copy)
    assert "without birdcnn metadata" in refused(capsys, "predict", "--samples", "--model", copy)


def test_backend_and_model_file_must_fit(shipped_onnx, capsys):
    with pytest.raises(ModelFileError, match="not an ONNX export"):
        load_model(backend="onnxruntime")  # the shipped torch model
    with pytest.raises(ModelFileError, match="onnxruntime backend"):
        load_model(shipped_onnx, backend="torch")
    with pytest.raises(BirdcnnError, match="no torch network"):
        load_model(shipped_onnx).net  # e.g. `birdcnn explain --model x.onnx`: one line, not a traceback
    assert "--calibrate" in refused(capsys, "export", "--int8")
    assert "NAME.onnx" in refused(capsys, "export", "--out", "model.bin")


def test_calibration_never_reads_a_test_split(tmp_path, photos, capsys):
    test_only = tmp_path / "data" / "test" / "bird"
    test_only.mkdir(parents=True)
    shutil.copy(photos / "bird" / "magpie.jpg", test_only)
    assert "no training split" in refused(capsys, "export", "--int8", "--calibrate", tmp_path / "data",
                                          "--out", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_failed_check_writes_nothing(tmp_path):
    with pytest.raises(BirdcnnError, match="export check failed"):
        check({"images": 12, "max_probability_difference": 0.2}, "float32")
    with pytest.raises(BirdcnnError, match="export check failed"):
        check({"images": 268, "bird_decisions_agree": 0.7, "mean_bird_probability_difference": 0.01}, "int8")
    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(b"the earlier export")

    def refuse(tmp: Path) -> dict:
        assert tmp.read_bytes() == b"new bytes" and tmp != earlier
        return check({"images": 12, "max_probability_difference": 0.2}, "float32")

    with pytest.raises(BirdcnnError):
        write_checked(earlier, b"new bytes", refuse)
    assert earlier.read_bytes() == b"the earlier export" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
