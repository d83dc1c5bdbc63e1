"""`birdcnn experiment tunnel-vision` on the shared MNIST subset, in --quick mode."""
from __future__ import annotations

import contextlib
import gzip
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from birdcnn.cli import main
from birdcnn.errors import DataError

METHODS = [("dense", "centred"), ("dense + sliding window", "centred"), ("dense", "shifted (synthetic)"),
           ("bigger dense", "shifted (synthetic)"), ("conv + pooling", "centred"),
           ("conv + pooling", "shifted (synthetic)")]


@pytest.fixture(scope="module")
def quick_run(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tunnel")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["experiment", "tunnel-vision", "--mnist", str(mnist_dir), "--out", str(out), "--quick"])
    return code, out, stdout.getvalue()


def test_table_rows_and_files(quick_run):
    code, out, printed = quick_run
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert [(r["method"], r["trained_on"]) for r in rows] == METHODS
    assert res["data"]["train_digits"] == 800 and res["data"]["test_digits"] == 200
    for r in rows:
        for split in ("centred", "shifted"):
            m = r[split]
            assert 0 <= m["accuracy"] <= 1 and 0 <= m["balanced_accuracy"] <= 1 and m["n"] == 200
            assert m["n_8"] == res["data"]["test_8s"] > 0
        assert r["train_seconds"] > 0 and r["infer_ms_per_image"] > 0 and r["params"] > 0
    # The table is printed, one line per row, and saved as text.
    for method, trained_on in METHODS:
        assert any(line.startswith(method) and trained_on in line for line in printed.splitlines())
    assert (out / "table.txt").read_text().strip() == res["table"].strip()
    with Image.open(out / "tunnel_vision.png") as im:
        im.load()
        assert im.format == "PNG" and im.width >= 1000 and im.height >= 500


def test_the_story_it_measures(quick_run):
    rows = json.loads((quick_run[1] / "results.json").read_text())["rows"]
    dense, window = rows[0], rows[1]
    # Even a few seconds of training recognise centred 8s, and lose them once they move.
    assert dense["centred"]["balanced_accuracy"] > 0.75
    assert dense["shifted"]["balanced_accuracy"] < dense["centred"]["balanced_accuracy"] - 0.2
    # The sliding window reuses that network, at many times its compute per image.
    assert window["params"] == dense["params"]
    assert window["mmac_per_image"] == pytest.approx(dense["mmac_per_image"] * 15 * 15)
    # More synthetic data: every pass over the digits shows them at new places.
    assert rows[2]["train_images"] == 800 * 4


def test_sliding_window_finds_a_moved_digit():
    """A 'network' that answers how much ink is in the centre: only the window on the digit scores 1."""
    from birdcnn.experiments.tunnel_vision import DIGIT, paste, sliding_window

    class CentreInk(torch.nn.Module):
        def forward(self, x):
            c = x.shape[-1]
            lo = (c - DIGIT) // 2
            return torch.logit(x[:, 0, lo:lo + DIGIT, lo:lo + DIGIT].mean((1, 2)).clamp(1e-4, 1 - 1e-4))[:, None]

    digit = torch.full((1, DIGIT, DIGIT), 255, dtype=torch.uint8)
    canvas = paste(digit, torch.tensor([[6, 20]]), 56)
    assert canvas.sum() == DIGIT * DIGIT and canvas[0, 0, 6, 20] == 1
    best, maps = sliding_window(CentreInk(), canvas, stride=2)
    assert maps.shape == (1, 15, 15)
    assert best[0] == pytest.approx(1, abs=1e-3) and tuple(np.unravel_index(int(maps[0].argmax()), (15, 15))) == (3, 10)


def test_idx_reader_errors(mnist_dir, tmp_path):
    from birdcnn.experiments.mnist import load_mnist, read_idx

    data = load_mnist(mnist_dir)
    assert data["train"][0].shape == (4000, 28, 28) and data["test"][1].shape == (1000,)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\0\0\x08\x01" + (1000).to_bytes(4, "big") + b"\x01" * 10))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(bad)


def test_bad_mnist_folder_is_one_clean_line(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte.gz").write_text("not gzip")
    code = main(["experiment", "tunnel-vision", "--mnist", str(tmp_path), "--out", str(tmp_path / "out"), "--quick"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(tmp_path) in err
    assert not (tmp_path / "out").exists()
    assert main(["experiment", "tunnel-vision", "--mnist", str(tmp_path / "nowhere"), "--quick"]) == 2
    assert "no such folder" in capsys.readouterr().err
