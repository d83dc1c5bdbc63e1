"""`birdcnn augment-preview`: what "more data" means, before training.

Shows N synthetic versions of one photo made by the very `Augment` that `birdcnn train` uses,
at the size training sees (`--input-size`, as `birdcnn train`'s), with the same switches and strengths;
with `--photo-crops`, first the random crops and colour changes (`PhotoViews`) that training cuts
from a photo's stored copy, as the shipped model was trained on real photos.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from .argtypes import positive_int, seed_int
from .atomic import check_not_input, save_figure
from .augment import Augment, PhotoViews
from .errors import BirdcnnError
from .images import FIGURE_SUFFIXES, PHOTO_SCALE, display_path, is_photo, load_for_model, model_view, open_for_model
from .runs import default_run_dir
from .sources import STORE_SCALE
from .train import RECIPES
from .train_cli import add_augment_arguments, augment_overrides


def augmented_versions(u8: np.ndarray, augment: Augment, n: int, seed: int = 0,
                       crops: PhotoViews | None = None, positive: bool = True) -> np.ndarray:
    """`n` augmented copies of one (H, W, 3) uint8 image, as (n, H, W, 3) uint8.

    With `crops`, `u8` is a photo's stored training copy (`STORE_SCALE` x the view) and each copy
    is first cut and recoloured as training does it (`PhotoViews`; `positive`: a photo of the
    positive class, whose crops keep most of the view). Training augments normalised images;
    every operation of `augment` (flip, shift, rotation with bilinear sampling, normalised blur)
    is linear with weights summing to one, so it commutes with the per-channel normalisation and
    working on 0..1 pixels gives the same pictures.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(u8).permute(2, 0, 1).float()[None].expand(n, -1, -1, -1).contiguous()
    if crops is not None:
        x = crops(x, torch.ones(n, dtype=torch.bool), torch.full((n,), positive), gen)
    y = augment(x.div(255), gen)
    return (y.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def describe(a: Augment, crops: PhotoViews | None = None, positive: bool = True) -> str:
    parts = ["flips" if a.flip else "no flips",
             f"shifts up to {a.shift} px" if a.shift else "no shifts",
             f"rotations up to ±{a.rotate:g}°" if a.rotate else "no rotations",
             f"blur σ up to {a.blur:g} px on {100 * a.blur_p:.0f}% of images" if a.blur and a.blur_p else "no blur"]
    if crops is not None:  # the crop replaces the shift, as in training
        area = crops.min_area if positive else crops.negative_min_area
        parts[1] = (f"crops of {100 * area:.0f}-100% of the view, colour ±{100 * crops.colour:.0f}%, "
                    f"{100 * crops.grey_p:.0f}% grey")
    return ", ".join(parts)


def preview_figure(original: np.ndarray, versions: np.ndarray, title: str, description: str):
    """The original (framed) followed by every synthetic version, in a near-square grid."""
    import matplotlib.pyplot as plt

    n = len(versions) + 1
    cols = min(n, max(4, math.ceil(math.sqrt(n * 1.5))))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate([original, *versions]):
        ax = axes.flat[i]
        ax.imshow(img, interpolation="nearest")  # the real 32x32 pixels, not a smoothed enlargement
        ax.set_title("original" if i == 0 else f"#{i}", fontsize=8, color="tab:blue" if i == 0 else "black")
    fig.suptitle(f"{title}\n{description}", fontsize=9)
    fig.tight_layout()
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="a photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    p.add_argument("--n", type=int, default=23, help="number of synthetic versions (default 23; 1-400)")
    p.add_argument("--out", metavar="PNG",
                   help="picture to write (.png/.jpg/.pdf/.svg; default: runs/augment-preview-DATE.png)")
    p.add_argument("--arch", default="article", choices=sorted(RECIPES),
                   help="start from this network's training recipe (default: article, the richest: flips, "
                        "±25° rotations, blur; train's default 'fast' uses flips and 2 px shifts)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed, 0 to 2**32-1 (default 0)")
    p.add_argument("--input-size", type=positive_int, default=32, metavar="PX",
                   help="the view training sees, in pixels (default 32, as birdcnn train)")
    p.add_argument("--photo-crops", choices=("bird", "other"),
                   help="first cut random crops and colour changes from the photo, as training does for a photo of "
                        "a bird (crops of 35-100%% of the view) or of anything else (down to 3%%: locate's windows); "
                        "the shipped model's training: --arch fast --input-size 40 --photo-crops bird")
    add_augment_arguments(p)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.n <= 400:
        raise BirdcnnError(f"--n must be between 1 and 400, not {args.n}")
    settings = {**RECIPES[args.arch]["augment"], **augment_overrides(args)}
    if (settings["shift"] < 0 or settings["rotate"] < 0 or settings["blur"] < 0
            or not 0 <= settings.get("blur_p", Augment.blur_p) <= 1):
        raise BirdcnnError("--shift, --rotate and --blur must be >= 0, and --blur-p between 0 and 1")
    size = args.input_size
    if settings["shift"] >= size // 2:
        raise BirdcnnError(f"--shift must be below {size // 2} pixels (images are {size}x{size})")
    augment = Augment(**settings)
    out = Path(args.out) if args.out else default_run_dir("augment-preview").with_suffix(".png")
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise BirdcnnError(f"{display_path(out)}: --out must end in one of {', '.join(sorted(FIGURE_SUFFIXES))}")
    check_not_input(out, args.image)

    u8 = load_for_model(args.image, size)  # exactly what predict sees
    crops, positive = None, args.photo_crops == "bird"
    if args.photo_crops:
        settings["shift"] = 0  # the crop's place moves the picture instead, as in training
        augment = Augment(**settings)
        crops = PhotoViews(size=size, shift=0)
        im = open_for_model(args.image, STORE_SCALE * size)
        if not is_photo(im, size):  # training keeps thumbnails whole (CIFAR-10): no crops to show
            raise BirdcnnError(f"{display_path(args.image)}: {im.width}x{im.height} is a thumbnail for the {size}-px "
                               f"view; training cuts crops only from photos larger than {PHOTO_SCALE:g}x the view")
        stored = model_view(im, STORE_SCALE * size)  # the copy training keeps of a photo, as sources stores it
        versions = augmented_versions(stored, augment, args.n, args.seed, crops, positive)
    else:
        versions = augmented_versions(u8, augment, args.n, args.seed)
    description = describe(augment, crops, positive)
    recipe = f"{args.arch} recipe" + (f" + crops as of a photo of {'a bird' if positive else 'anything else'}"
                                      if crops else "")
    fig = preview_figure(u8, versions, f"{display_path(Path(args.image).name)}: {args.n} synthetic training images "
                                       f"({recipe}{' + your changes' if augment_overrides(args) else ''})", description)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, out, dpi=110)
    except OSError as e:
        raise BirdcnnError(f"{display_path(out)}: cannot write ({e.strerror or e})") from None
    print(f"wrote {display_path(out)} ({args.n} versions: {description})")
    return 0
