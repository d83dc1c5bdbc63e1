"""Reading real photos in every common format, and refusing bad files with a clear reason."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from birdcnn.errors import ImageError
from birdcnn.images import MAX_PIXELS, fit_square, is_image_path, load_for_model, open_image
from conftest import PALETTE, png_header

FORMAT_NAMES = ["photo.jpg", "photo.png", "photo.bmp", "photo.tiff", "photo.webp", "lossless.webp", "cmyk.jpg",
                "gray.jpg", "gray.png", "palette.png", "photo.gif", "gray16.png", "rgba.png", "animated.gif",
                "exif6.jpg"]


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_format_opens_as_upright_rgb(image_formats, name):
    path, expected, tol = image_formats[name]
    im = open_image(path)
    assert im.mode == "RGB"
    got = np.asarray(im)
    assert got.shape == expected.shape
    assert np.abs(got.astype(float) - expected).mean() <= tol + 0.5, name
    # And the model's view: exactly size x size x 3 uint8, same as from the source pixels.
    arr = load_for_model(path, 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    ref = np.asarray(fit_square(Image.fromarray(expected), 32)).astype(float)
    assert np.abs(arr - ref).mean() <= tol + 2.0, name


def test_exif_rotation_is_honoured(image_formats, photo):
    rotated = np.asarray(open_image(image_formats["exif6.jpg"][0])).astype(float)
    clockwise = np.asarray(photo.transpose(Image.Transpose.ROTATE_270)).astype(float)
    anticlockwise = np.asarray(photo.transpose(Image.Transpose.ROTATE_90)).astype(float)
    assert rotated.shape == (256, 192, 3)  # portrait now
    assert np.abs(rotated - clockwise).mean() < 4
    assert np.abs(rotated - anticlockwise).mean() > 20  # the direction matters, and is right


def test_animated_gif_uses_the_first_frame(image_formats, photo):
    got = np.asarray(open_image(image_formats["animated.gif"][0])).astype(float)
    first, second = np.asarray(photo).astype(float), 255 - np.asarray(photo).astype(float)
    assert np.abs(got - first).mean() < PALETTE < np.abs(got - second).mean()


def test_transparency_is_composited_onto_white(photo, tmp_path):
    rgba = photo.convert("RGBA")
    alpha = np.full((192, 256), 255, np.uint8)
    alpha[:, :128] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "half.png")
    got = np.asarray(open_image(tmp_path / "half.png"))
    assert (got[:, :128] == 255).all()
    assert np.array_equal(got[:, 128:], np.asarray(photo)[:, 128:])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    got = np.asarray(open_image(tmp_path / "ramp16.png"))[..., 0]
    assert got.min() == 0 and got.max() == 255
    assert len(np.unique(got)) > 200  # the range is spread, not saturated


def test_grayscale_photo_from_shared_data(photos):
    # Real grayscale JPEGs among the shared photos (with and without an EXIF orientation tag).
    for name in ("acoustic_guitar.jpg", "airship.jpg"):
        path = photos / "not_bird" / name
        with Image.open(path) as raw:
            assert raw.mode == "L"
        arr = load_for_model(path, 32)
        assert arr.shape == (32, 32, 3)
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_every_shared_photo_loads(photos):
    paths = sorted(photos.glob("*/*.jpg"))
    assert len(paths) == 40
    for p in paths:
        assert load_for_model(p, 32).shape == (32, 32, 3)


def test_fit_square_takes_the_central_square():
    # A wide image: red left third, green centre, blue right third.
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, :100, 0] = a[:, 100:200, 1] = a[:, 200:, 2] = 255
    out = np.asarray(fit_square(Image.fromarray(a), 32)).astype(int)
    assert out.shape == (32, 32, 3)
    assert (out[..., 1] > 250).all() and (out[..., [0, 2]] < 5).all()
    tall = np.asarray(fit_square(Image.fromarray(a.transpose(1, 0, 2).copy()), 20))
    assert tall.shape == (20, 20, 3) and (tall[..., 1] > 250).all()


def test_draft_decoding_matches_full_decoding(photos):
    # load_for_model decodes big JPEGs at reduced scale: what the model sees must barely change.
    path = photos / "not_bird" / "brittany_spaniel.jpg"  # 910 x 637
    fast = load_for_model(path, 32).astype(float)
    full = np.asarray(fit_square(open_image(path), 32)).astype(float)
    assert np.abs(fast - full).mean() < 3


def test_image_suffixes():
    for name in ("a.jpg", "b.JPEG", "c.png", "d.webp", "e.gif", "f.bmp", "g.tif", "h.TIFF"):
        assert is_image_path(Path(name))
    for name in ("model.json", "notes.txt", "x.safetensors", "archive.tar.gz"):
        assert not is_image_path(Path(name))


# ---------------------------------------------------------------- bad files

BAD_NAMES = ["truncated.jpg", "corrupt.jpg", "empty.jpg", "text.jpg", "bomb.png", "bomb_over_limit.png",
             "no_dimensions.tiff", "missing.jpg", "a_folder.jpg"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_files_raise_one_line_error_naming_the_file(bad_images, name):
    path, words = bad_images[name]
    with pytest.raises(ImageError) as info:
        load_for_model(path, 32)
    err = info.value
    assert err.path == str(path)
    assert words in err.problem
    assert str(path) in str(err) and "\n" not in str(err)


def test_bomb_files_are_tiny_but_declare_more_than_the_limit(bad_images):
    for name in ("bomb.png", "bomb_over_limit.png"):
        path = bad_images[name][0]
        assert path.stat().st_size < 200
        width, height = struct.unpack(">II", path.read_bytes()[16:24])  # from the IHDR chunk
        assert width * height > MAX_PIXELS


def test_a_real_bomb_is_refused_before_decoding(tmp_path):
    # A genuine, decodable 1-bit PNG of 121 megapixels (a few kB on disk).
    Image.new("1", (11_000, 11_000)).save(tmp_path / "real_bomb.png")
    assert (tmp_path / "real_bomb.png").stat().st_size < 100_000
    with pytest.raises(ImageError, match=r"too large \(11000x11000 pixels"):
        open_image(tmp_path / "real_bomb.png")


def test_large_legitimate_sizes_are_not_called_bombs(tmp_path):
    # 100 megapixels (a medium-format camera) is above Pillow's own 89 MP warning but below our
    # limit: this header-only file must fail as corrupt data, not as a decompression bomb.
    (tmp_path / "big.png").write_bytes(png_header(10_000, 10_000))
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "big.png")
    assert "bomb" not in info.value.problem and "corrupt" in info.value.problem


def test_a_fifo_is_refused_not_read(tmp_path):
    """A named pipe would block the read forever (a FIFO called pipe.jpg once read as an empty file)."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError) as info:
        open_image(fifo)
    assert info.value.problem == "not a regular file"
