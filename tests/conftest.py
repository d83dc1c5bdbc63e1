"""Shared fixtures: small real data cut from ../shared, and a tiny model trained on it.

Tests read data from ../shared (beside the checkout; override with BIRDCNN_SHARED) and skip,
saying why, only where it is absent.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("BIRDCNN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CIFAR_TAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
PHOTOS = SHARED / "data" / "photos"
MNIST = SHARED / "data" / "mnist-5k"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (expected ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep decoded-data caches out of the user's ~/.cache."""
    os.environ["BIRDCNN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory) -> Path:
    """A real CIFAR-10 subset in class-folder layout: train/ 60 per class, test/ 20 per class."""
    _need(CIFAR_TAR)
    root = tmp_path_factory.mktemp("cifar_small")
    keep = {"train": 60, "test": 20}
    with tarfile.open(CIFAR_TAR) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] in keep and int(Path(parts[-1]).stem) < keep[parts[-3]]:
                dest = root / parts[-3] / parts[-2] / parts[-1]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
    return root


@pytest.fixture(scope="session")
def photos() -> Path:
    return _need(PHOTOS)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return _need(MNIST)


@pytest.fixture(scope="session")
def tiny_model(cifar_small, tmp_path_factory) -> Path:
    """A real (tiny, briefly trained) 10-class model: path to its model.json."""
    from birdcnn.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainConfig(data=str(cifar_small), arch="tiny", epochs=3, batch_size=100, val_size=100, out=str(out)))
    return out / "model.json"


@pytest.fixture(scope="session")
def article_model(cifar_small, tmp_path_factory) -> Path:
    """A real (briefly trained) article-network bird-vs-not-bird model: path to its model.json."""
    from birdcnn.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "article"
    train(TrainConfig(data=str(cifar_small), arch="article", epochs=1, val_size=100, out=str(out)))
    return out / "model.json"
