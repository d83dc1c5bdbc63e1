"""Model files made to hurt: JSON nested past the recursion limit (model metadata, an export's
sidecar, an export's embedded metadata), arch_kwargs far larger than the weights, an altered .onnx
with no sidecar beside it, and names that are not models (missing, TorchScript, a FIFO). Each is
one line naming the file, exit code 2, no traceback, and quickly."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import onnx
import pytest

from birdcnn.backends import METADATA_KEY, sidecar
from birdcnn.cli import main
from birdcnn.modelfile import default_model_path, load_model, save_model
from birdcnn.models import build

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError, not JSONDecodeError


def refused(capsys, *args) -> str:
    """Run a command that must fail as a user error: exit 2, one line on stderr (returned)."""
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@contextmanager
def deadline(seconds: int):
    """Fail (rather than hang the suite) when the body blocks, as a FIFO read would."""
    def fail(*_):
        raise AssertionError(f"blocked for over {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def shipped_copy(dest: Path, **changes) -> Path:
    """The shipped model copied to dest/model.json + .safetensors, its metadata changed."""
    dest.mkdir(parents=True, exist_ok=True)
    src = default_model_path()
    shutil.copy(src.with_suffix(".safetensors"), dest / "model.safetensors")
    meta = json.loads(src.read_text()) | changes
    (dest / "model.json").write_text(json.dumps(meta))
    return dest / "model.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A small untrained network saved as a model (a real file pair: seconds to export)."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    return save_model(build("tiny", 2), {"arch": "tiny", "classes": ["not_bird", "bird"], "positive": "bird",
                                         "input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}, path)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_export") / "tiny.onnx"
    assert main(["export", str(tiny), "--out", str(out)]) == 0
    return out


def onnx_copy(src: Path, dest: Path, with_sidecar: bool) -> Path:
    shutil.copy(src, dest)
    if with_sidecar:
        shutil.copy(sidecar(src), sidecar(dest))
    return dest


# ---------------------------------------------------------------- 1. JSON nested too deeply

def test_deeply_nested_model_metadata_is_one_line(tmp_path, capsys):
    model = shipped_copy(tmp_path / "deep")
    model.write_text(DEEP)
    err = refused(capsys, "predict", "--samples", "--model", model)
    assert f"{model}: not a birdcnn model file" in err and "nested too deeply" in err
    # Deep inside an otherwise valid object: the same.
    model.write_text('{"format": "birdcnn-model", "arch_kwargs": ' + DEEP + "}")
    assert "nested too deeply" in refused(capsys, "predict", "--samples", "--model", model)


def test_deeply_nested_sidecar_or_embedded_metadata_is_one_line(tiny_onnx, tmp_path, capsys):
    copy = onnx_copy(tiny_onnx, tmp_path / "deepside.onnx", with_sidecar=True)
    sidecar(copy).write_text(DEEP)
    err = refused(capsys, "predict", "--samples", "--model", copy)
    assert "deepside.onnx.json" in err and "nested too deeply" in err
    sidecar(copy).unlink()
    model = onnx.load(tiny_onnx)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            p.value = DEEP
    onnx.save(model, copy)
    err = refused(capsys, "predict", "--samples", "--model", copy)
    assert f"{copy}: not a birdcnn export" in err and "nested too deeply" in err


# ---------------------------------------------------------------- 2. arch_kwargs the weights contradict

def test_huge_widths_are_refused_before_anything_is_allocated(tmp_path, capsys):
    model = shipped_copy(tmp_path / "huge", arch_kwargs={"widths": [64, 256, 2_000_000]})
    start = time.monotonic()
    err = refused(capsys, "predict", "--samples", "--model", model)
    assert time.monotonic() - start < 10  # building it for real: 18 GB and minutes
    assert "model.safetensors: weights do not fit architecture 'fast'" in err and "2000000" in err
    # The class check still names the metadata.
    model = shipped_copy(tmp_path / "classes", classes=["bird", "other"], positive="bird")
    assert "'classes' names 2 classes but the weights have" in refused(capsys, "predict", "--samples",
                                                                        "--model", model)


# ---------------------------------------------------------------- 3. an altered .onnx, no sidecar

def altered(data: bytes, model: onnx.ModelProto) -> bytes:
    """`data` with one byte of the largest initializer's weights changed: still valid protobuf."""
    raw = max((t.raw_data for t in model.graph.initializer), key=len)
    at = data.index(raw) + len(raw) // 2
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def test_altered_onnx_without_sidecar_is_refused(tiny_onnx, tmp_path, capsys):
    data = tiny_onnx.read_bytes()
    meta = json.loads({p.key: p.value for p in onnx.load(tiny_onnx).metadata_props}[METADATA_KEY])
    assert len(meta["export"]["graph_sha256"]) == 64
    alone = onnx_copy(tiny_onnx, tmp_path / "alone.onnx", with_sidecar=False)
    assert load_model(alone).classes == ["not_bird", "bird"]  # unaltered: loads without its sidecar
    alone.write_bytes(altered(data, onnx.load(tiny_onnx)))
    err = refused(capsys, "predict", "--samples", "--model", alone)
    assert f"{alone}: " in err and "graph sha256 differs" in err
    # With the sidecar the file's own sha256 refuses it first, as before.
    shutil.copy(sidecar(tiny_onnx), sidecar(alone))
    assert "sha256 differs" in refused(capsys, "predict", "--samples", "--model", alone)


def test_exports_from_before_the_graph_hash_still_load(tiny_onnx, tmp_path):
    model = onnx.load(tiny_onnx)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            meta = json.loads(p.value)
            del meta["export"]["graph_sha256"]
            p.value = json.dumps(meta)
    old = tmp_path / "old.onnx"
    onnx.save(model, old)
    assert load_model(old).classes == ["not_bird", "bird"]


# ---------------------------------------------------------------- 4. names that are not models

def test_a_missing_name_says_so(tmp_path, capsys):
    err = refused(capsys, "predict", "--samples", "--model", tmp_path / "nonexist")
    assert f"{tmp_path / 'nonexist'}: no such file or folder" in err


def test_a_torchscript_export_is_named_as_such(tiny, tmp_path, capsys):
    pt = tmp_path / "b.pt"
    assert main(["export", str(tiny), "--format", "torchscript", "--out", str(pt)]) == 0
    capsys.readouterr()
    for given in (pt, sidecar(pt)):
        err = refused(capsys, "predict", "--samples", "--model", given)
        assert f"{given}: " in err and "TorchScript" in err and "b.json" not in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_not_waited_on(tmp_path, tiny_onnx, capsys):
    model = shipped_copy(tmp_path / "m")
    fifos = {"model.json": model, "model.safetensors": model.with_suffix(".safetensors"),
             "x.onnx": tmp_path / "x.onnx", "fifo": tmp_path / "fifo"}
    for name, path in fifos.items():
        saved = path.read_bytes() if path.exists() else None
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        with deadline(20):
            err = refused(capsys, "predict", "--samples", "--model", path)
        assert f"{path}: not a regular file (a FIFO)" in err, name
        path.unlink()
        if saved is not None:
            path.write_bytes(saved)
    # An export's sidecar as a FIFO is not waited on either (it is not a file: the export is used alone).
    copy = onnx_copy(tiny_onnx, tmp_path / "y.onnx", with_sidecar=False)
    os.mkfifo(sidecar(copy))
    with deadline(20):
        assert load_model(copy).classes == ["not_bird", "bird"]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
