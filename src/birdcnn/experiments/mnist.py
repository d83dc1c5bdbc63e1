"""MNIST in its standard IDX format (``train-images-idx3-ubyte[.gz]`` and friends).

A small numpy reader (the format is a 4-byte magic, big-endian sizes, then raw bytes), so a
bad or truncated file gives a one-line `DataError` rather than an assertion; nothing is
unpickled. Without a folder, torchvision downloads the official files into the cache.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..data import cache_dir
from ..errors import DataError

_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """One IDX file of unsigned bytes (images or labels), gzipped or not, as a uint8 array."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != _UBYTE or not 1 <= raw[3] <= 3:
        raise DataError(f"{path}: not an MNIST IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path}: holds {len(raw) - header} bytes of data, the header says {int(np.prod(shape))} "
                        f"(shape {shape}): truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find(folder: Path, split: str, kind: str) -> Path:
    ndim = 3 if kind == "images" else 1
    for stem in (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"{folder}: no {split}-{kind}-idx{ndim}-ubyte[.gz] (expected the four MNIST IDX files)")


def load_mnist(folder: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images (N, 28, 28) uint8, labels (N,) uint8), "test": (...)}."""
    folder = Path(folder) if folder is not None else download()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (--mnist)")
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = read_idx(_find(folder, prefix, "images")), read_idx(_find(folder, prefix, "labels"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(images) == 0:
            raise DataError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        out[split] = (images, labels)
    return out


def download() -> Path:
    """The official MNIST files, fetched once by torchvision into the birdcnn cache."""
    root = cache_dir() / "mnist"
    raw = root / "MNIST" / "raw"
    try:
        _find(raw, "t10k", "labels")
        return raw
    except DataError:
        pass
    try:
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - offline, proxy, server down: all mean "pass --mnist"
        raise DataError(f"could not download MNIST ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}); "
                        "pass --mnist DIR with the four IDX files") from None
    return raw
