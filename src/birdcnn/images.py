"""Reading real-world photos safely: any common format, any size, any colour mode.

Every image the package touches (training folders, predict, search, locate, explain) goes
through `open_image`, so that EXIF orientation, odd colour modes, truncated files and
decompression bombs are handled the same way everywhere.
"""
from __future__ import annotations

import errno
import functools
import os
import stat
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError, display_path  # noqa: F401 (display_path: public here too)

try:  # HEIC/HEIF (iPhone photos) only with the optional plugin: pip install birdcnn[heif]
    from pillow_heif import register_heif_opener
except ImportError:
    HEIF_PLUGIN = False
else:
    register_heif_opener()
    HEIF_PLUGIN = True
HEIF_SUFFIXES = frozenset({".heic", ".heics", ".heif", ".heifs", ".hif"})
# Formats Pillow opens that are not photos to read here: video (MPEG) and PostScript (needs Ghostscript).
_NOT_PHOTOS = {"MPEG", "EPS"}
FIGURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pdf", ".svg"}  # what the commands' pictures (matplotlib) can be saved as
# JPEGs are draft-decoded to at least this many times the model's input size. Measured on the
# 40 shared photos against a full decode: drafting at 1x changed the top class of 6 photos
# (bird probability off by up to 0.25), at 3x of 2 (up to 0.04); 4x still decodes a 12 MP
# photo at 1/8 scale, so large photos lose none of the speed.
DRAFT_SCALE = 4
# Refuse images above this many pixels: a 24 MP photo is fine, a 50,000 x 50,000 "bomb" is not.
MAX_PIXELS = 120_000_000


@functools.cache
def readable_suffixes() -> frozenset[str]:
    """The suffixes (".jpg", ".ppm", ...) of every image format Pillow can open here, HEIC too
    with pillow-heif. Stubs that have no decoder (BUFR, GRIB, HDF5, WMF) and save-only formats
    (PDF) are left out: their files could only fail."""
    def opens(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
        return factory is not None and not stub and fmt not in _NOT_PHOTOS

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if opens(fmt))


def __getattr__(name: str):
    # IMAGE_SUFFIXES is worked out on first use: Image.init() imports every Pillow plugin
    # (~35 ms), which a command given only JPEG and PNG files never needs.
    if name == "IMAGE_SUFFIXES":
        return readable_suffixes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_image_path(path: str | os.PathLike) -> bool:
    return os.path.splitext(path)[1].lower() in readable_suffixes()


class OtherFiles:
    """Files a folder walk passed over as not images, counted by suffix, for one line such as
    "3 .txt, 1 .heic (install birdcnn[heif] to read HEIC)": a folder of iPhone photos, or of
    images with a suffix Pillow does not know, must not look empty without a word."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, name: str | os.PathLike) -> None:
        self.counts[os.path.splitext(name)[1].lower() or "(no suffix)"] += 1

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        items, hint = [], not HEIF_PLUGIN
        for suffix, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            items.append(f"{n} {suffix}")
            if hint and suffix in HEIF_SUFFIXES:  # once, beside the first HEIC count
                items[-1] += " (install birdcnn[heif] to read HEIC)"
                hint = False
        return ", ".join(items)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale the actual range to 0..255 rather than clipping.
        a = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def open_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Open a photo as an upright 8-bit RGB image, or raise `ImageError` naming the problem.

    `min_size`: when set, JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps
    both sides >= min_size (Pillow's draft mode: nearly free, and much faster than full decode).
    """
    path = Path(path)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        # A listed name that leads nowhere is a link to nothing (checked only on failure).
        raise ImageError(path, "broken symbolic link" if path.is_symlink() else "no such file") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except (OSError, ValueError) as e:  # a name too long, a loop of links, a NUL in the name...
        if getattr(e, "errno", None) == errno.ELOOP:
            raise ImageError(path, "symbolic link loop") from None
        raise ImageError(path, f"cannot read ({getattr(e, 'strerror', None) or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "is a folder, not an image")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a device never end
        raise ImageError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageError(path, "empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own ~89 MP limit (MAX_PIXELS below is the limit that applies) and
            # about oddities of files it reads anyway (bad EXIF tags, NaN pixels): noise to the user.
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(path, f"too large ({im.width}x{im.height} pixels; "
                                           f"limit {MAX_PIXELS // 1_000_000} MP): possible decompression bomb")
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # animated GIF/WebP/TIFF: the first frame
                if min_size and im.format == "JPEG":
                    # Draft picks the largest reduction keeping the size >= requested; orientation
                    # may swap the sides, so ask for a square of min_size.
                    im.draft("RGB", (min_size, min_size))
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return _to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise ImageError(path, "too large: possible decompression bomb") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except Exception as e:  # noqa: BLE001 - Pillow's format plugins raise anything on a malformed file
        # (TypeError from a TIFF without dimensions, NotImplementedError from a DDS pixel format...)
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = "truncated or corrupt image data"
        raise ImageError(path, f"corrupt image ({msg})") from None


def fit_square(im: Image.Image, size: int) -> Image.Image:
    """The model's view of a photo: the central square crop, resized to size x size.

    CIFAR-10 images are whole, roughly centred scenes; cropping the central square keeps
    proportions (squashing a 3:2 photo would distort the bird). Training on folders of
    non-32 px images uses this same function, so predict sees what training saw.
    """
    w, h = im.size
    s = min(w, h)
    if (w, h) != (s, s):
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    if s != size:
        # reducing_gap: a fast box pre-reduction then antialiased bicubic; same quality.
        im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return im


# The model's view of a photo, in one place (predict, search, explain, augment-preview and training
# on photo folders all use these): decode with open_for_model, then model_view.

def open_for_model(path: str | Path, size: int, zoom: int = 1) -> Image.Image:
    """Decode `path` as the model's views need it: JPEGs draft-decoded to at least DRAFT_SCALE x
    `size` pixels, `zoom` x more for views that are a part of the frame (search --crops)."""
    return open_image(path, min_size=size * DRAFT_SCALE * zoom)


def model_view(im: Image.Image, size: int) -> np.ndarray:
    """The network's input for a decoded photo: its central square at size x size, as a writable
    uint8 array (torch warns on read-only ones)."""
    return np.array(fit_square(im, size), dtype=np.uint8)


def load_for_model(path: str | Path, size: int) -> np.ndarray:
    """Decode `path` into the model's input: a size x size x 3 uint8 array."""
    return model_view(open_for_model(path, size), size)


# A photo is larger than the model's view: short side above this many times it (CIFAR-10's 32 px
# and 30-px thumbnails are not; Tiny ImageNet's 64 px and camera photos are). `sources` judges a
# whole training source by the same rule.
PHOTO_SCALE = 1.25


def is_photo(im: Image.Image, size: int) -> bool:
    """Whether the decoded image is a photo larger than the model's `size`-px view."""
    return min(im.size) > PHOTO_SCALE * size


def zoom_view(im: Image.Image, size: int, zoom_size: int | None) -> np.ndarray | None:
    """The photo's second view at `zoom_size` px (the model's `zoom_size`), or None for an image
    no larger than the `size`-px view (a thumbnail: a larger view of it adds no detail)."""
    return model_view(im, zoom_size) if zoom_size and is_photo(im, size) else None


def load_views(path: str | Path, size: int, zoom_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode `path` once into the model's views: the size-px input and, for a photo of a model
    with a `zoom_size`, the zoom_size-px one (`zoom_view`). Decoded for the larger of the two."""
    im = open_for_model(path, max(size, zoom_size or 0))
    return model_view(im, size), zoom_view(im, size, zoom_size)
