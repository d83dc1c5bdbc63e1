"""`birdcnn augment-preview`: what "more data" means, before training.

Shows N synthetic versions of one photo made by the very `Augment` that `birdcnn train` uses,
at the size training sees (`--input-size`, as `birdcnn train`'s), with the same switches and strengths.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from .argtypes import positive_int
from .atomic import save_figure
from .augment import Augment
from .errors import BirdcnnError
from .images import FIGURE_SUFFIXES, display_path, load_for_model
from .runs import default_run_dir
from .train import RECIPES
from .train_cli import add_augment_arguments, augment_overrides


def augmented_versions(u8: np.ndarray, augment: Augment, n: int, seed: int = 0) -> np.ndarray:
    """`n` augmented copies of one (H, W, 3) uint8 image, as (n, H, W, 3) uint8.

    Training augments normalised images; every operation here (flip, shift, rotation with
    bilinear sampling, normalised blur) is linear with weights summing to one, so it commutes
    with the per-channel normalisation and working on 0..1 pixels gives the same pictures.
    """
    x = torch.from_numpy(u8).permute(2, 0, 1).float().div(255)[None].expand(n, -1, -1, -1).contiguous()
    y = augment(x, torch.Generator().manual_seed(seed))
    return (y.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def describe(a: Augment) -> str:
    parts = ["flips" if a.flip else "no flips",
             f"shifts up to {a.shift} px" if a.shift else "no shifts",
             f"rotations up to ±{a.rotate:g}°" if a.rotate else "no rotations",
             f"blur σ up to {a.blur:g} px on {100 * a.blur_p:.0f}% of images" if a.blur and a.blur_p else "no blur"]
    return ", ".join(parts)


def preview_figure(original: np.ndarray, versions: np.ndarray, augment: Augment, title: str):
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
    fig.suptitle(f"{title}\n{describe(augment)}", fontsize=9)
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
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--input-size", type=positive_int, default=32, metavar="PX",
                   help="the view training sees, in pixels (default 32, as birdcnn train)")
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

    u8 = load_for_model(args.image, size)  # exactly what predict sees
    versions = augmented_versions(u8, augment, args.n, args.seed)
    fig = preview_figure(u8, versions, augment,
                         f"{display_path(Path(args.image).name)}: {args.n} synthetic training images "
                         f"({args.arch} recipe{' + your changes' if augment_overrides(args) else ''})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, out, dpi=110)
    except OSError as e:
        raise BirdcnnError(f"{display_path(out)}: cannot write ({e.strerror or e})") from None
    print(f"wrote {display_path(out)} ({args.n} versions: {describe(augment)})")
    return 0
