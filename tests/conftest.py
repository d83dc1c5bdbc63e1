"""Shared fixtures: small real data cut from ../shared, and a tiny model trained on it.

Tests read data from ../shared (beside the checkout; override with BIRDCNN_SHARED) and skip,
saying why, only where it is absent.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def interrupt_search(cmd: list[str], log: Path) -> tuple[int, str, str]:
    """Run a real `birdcnn search` process and send it Ctrl-C once `log` holds a scored photo;
    returns (exit code, stdout, stderr). Skips the test when the search finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") > 1:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the search finished before the interrupt arrived")
    return proc.returncode, out, err


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


# ---------------------------------------------------------------- image files in every format, good and bad

# How far (mean absolute difference, 0..255) each format may be from the source pixels.
LOSSLESS, LOSSY, PALETTE = 0.0, 6.0, 12.0


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


@pytest.fixture(scope="session")
def photo(photos) -> Image.Image:
    """A real colour photo, reduced to keep the tests fast: 256 x 192 (whole JPEG blocks, not square)."""
    with Image.open(photos / "bird" / "magpie.jpg") as im:
        return im.convert("RGB").resize((256, 192), Image.Resampling.BICUBIC)


def make_formats(photo: Image.Image, folder: Path) -> dict[str, tuple[Path, np.ndarray, float]]:
    """Write `photo` in every supported format: name -> (file, expected RGB pixels, tolerance)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(photo)
    gray = photo.convert("L")
    gray_rgb = np.asarray(gray.convert("RGB"))
    out: dict[str, tuple[Path, np.ndarray, float]] = {}

    def add(name: str, expected: np.ndarray, tol: float, save) -> None:
        path = folder / name
        save(path)
        out[name] = (path, expected, tol)

    add("photo.jpg", rgb, LOSSY, lambda p: photo.save(p, quality=95))
    add("photo.png", rgb, LOSSLESS, lambda p: photo.save(p))
    add("photo.bmp", rgb, LOSSLESS, lambda p: photo.save(p))
    add("photo.tiff", rgb, LOSSLESS, lambda p: photo.save(p, compression="tiff_lzw"))
    add("photo.webp", rgb, LOSSY, lambda p: photo.save(p, quality=95))
    add("lossless.webp", rgb, LOSSLESS, lambda p: photo.save(p, lossless=True))
    add("cmyk.jpg", rgb, LOSSY, lambda p: photo.convert("CMYK").save(p, quality=95))
    add("gray.jpg", gray_rgb, LOSSY, lambda p: gray.save(p, quality=95))
    add("gray.png", gray_rgb, LOSSLESS, lambda p: gray.save(p))
    add("palette.png", rgb, PALETTE, lambda p: photo.quantize(256).save(p))
    add("photo.gif", rgb, PALETTE, lambda p: photo.save(p))
    # 16-bit grayscale PNG spanning the full 0..65535 range (x 257 maps 255 -> 65535 exactly).
    add("gray16.png", gray_rgb, LOSSLESS,
        lambda p: Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(p))
    # RGBA, fully opaque: the colours must come through unchanged.
    add("rgba.png", rgb, LOSSLESS, lambda p: photo.convert("RGBA").save(p))
    # Animated GIF: the first frame is used, not the (inverted) second one.
    add("animated.gif", rgb, PALETTE, lambda p: photo.save(
        p, save_all=True, append_images=[Image.fromarray(255 - rgb)], duration=100, loop=0))
    # EXIF orientation 6: stored sideways, shown rotated 90 degrees clockwise.
    upright = photo.transpose(Image.Transpose.ROTATE_270)
    add("exif6.jpg", np.asarray(upright), LOSSY,
        lambda p: photo.save(p, quality=95, exif=exif_orientation(6)))
    return out


@pytest.fixture(scope="session")
def image_formats(photo, tmp_path_factory) -> dict[str, tuple[Path, np.ndarray, float]]:
    """One real photo saved in every supported format: name -> (file, expected RGB pixels, tolerance)."""
    return make_formats(photo, tmp_path_factory.mktemp("formats"))


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG (a few dozen bytes) whose header declares width x height 1-bit pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def tiff_without_dimensions(photo: Path) -> bytes:
    """A two-page TIFF of `photo` whose second page lacks its width tag: Pillow opens it, then raises
    TypeError ("Missing dimensions") when counting the pages, outside its usual OSError family."""
    import io
    buf = io.BytesIO()
    im = Image.open(photo).convert("RGB").resize((64, 48))
    im.save(buf, "TIFF", save_all=True, append_images=[im])
    data = bytearray(buf.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for i in range(struct.unpack_from("<H", data, second)[0]):
        if struct.unpack_from("<H", data, second + 2 + 12 * i)[0] == 256:  # ImageWidth
            struct.pack_into("<H", data, second + 2 + 12 * i, 0xFFF0)  # -> a private tag
    return bytes(data)


def make_bad_files(photos: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Every kind of bad image file: name -> (path, words the error must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = (photos / "bird" / "magpie.jpg").read_bytes()
    bad = {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "corrupt.jpg": (jpeg[:400] + bytes(range(256)) * 40, "corrupt"),
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"this is a text file, not a JPEG\n" * 4, "not an image"),
        "bomb.png": (png_header(50_000, 50_000), "decompression bomb"),
        "bomb_over_limit.png": (png_header(11_000, 11_000), "decompression bomb"),
        "no_dimensions.tiff": (tiff_without_dimensions(photos / "bird" / "magpie.jpg"), "corrupt image"),
    }
    out = {}
    for name, (data, words) in bad.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, words)
    out["missing.jpg"] = (folder / "missing.jpg", "no such file")
    (folder / "a_folder.jpg").mkdir()
    out["a_folder.jpg"] = (folder / "a_folder.jpg", "folder")
    return out


@pytest.fixture(scope="session")
def bad_images(photos, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Every kind of bad image file: name -> (path, words its error must contain)."""
    return make_bad_files(photos, tmp_path_factory.mktemp("bad"))
