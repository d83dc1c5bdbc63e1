"""`birdcnn locate`: where in the photo is the bird? A sliding window, scored in batches.

For each scale (a window side as a fraction of the photo's shorter side) the photo is resized
so that the window becomes exactly the network's input (e.g. 40x40); `Tensor.unfold` then cuts every
window at once and the network scores them as one batch. Window scores are painted back into a
heat map, and the best windows, after non-maximum suppression, are the boxes.

A window's score is not its probability alone (`WindowScoring`): the best of ~1,200 single windows
is an extreme value that some crop of almost any photo reaches, while a bird lifts a whole patch of
overlapping windows, and the whole photo's own evidence counts too. So a window's bird log-odds are
averaged with its neighbours' (3x3, same scale), and the whole frame's log-odds are added.
Measured on validation photos: as a "bird somewhere?" detector, the best window's average precision
rose from 0.71 to 0.91 (docs/RESULTS.md, `benchmarks/locate_scoring.py`).

Cost is bounded whatever the photo: windows are sized relative to the photo, so their number
does not grow with the megapixels; it is capped at `max_windows` (photos that would need more,
such as wide panoramas, get a coarser stride, then lose their smallest scales); the photo is
decoded only as large as the smallest window needs (JPEG draft mode: a 24 MP JPEG decodes at
1/4 or 1/8 scale); and windows under 16 photo pixels are not used (a 64 px photo keeps only its
larger scales).
"""
from __future__ import annotations

import argparse
import functools
import glob
import importlib.util
import json
import math
import os
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .atomic import check_not_input, save_figure
from .devices import add_device_argument, chosen_device
from .errors import BirdcnnError
from .images import FIGURE_SUFFIXES, display_path, model_view, open_image
from .modelfile import Classifier, load_model


@functools.cache
def _load_nms():
    """torchvision's `nms`, without importing the torchvision package.

    `import torchvision` loads its datasets, models and transforms too: ~1.4 s, a quarter of a
    `birdcnn locate` run on 2 cores. The op itself is in torchvision's compiled extension, which
    registers `torch.ops.torchvision.nms` (what `torchvision.ops.nms` calls) when loaded. If that
    file cannot be found or loaded, import the package after all.
    """
    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for lib in sorted(glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(os.path.join(folder, "_C*.pyd"))):
            try:
                torch.ops.load_library(lib)
                return torch.ops.torchvision.nms
            except (OSError, RuntimeError, AttributeError):
                pass
    from torchvision.ops import nms
    return nms


DEFAULT_SCALES = (0.8, 0.5, 0.33, 0.22, 0.15)  # window side / photo's shorter side
DEFAULT_STRIDE = 0.25                          # step between windows / window side
MAX_WINDOWS = 1500          # ~1-2 s of network time on 2 idle CPU cores for the default network
MIN_WINDOW_PX = 16          # smaller windows hold too few real pixels to mean anything
MIN_SCALE = 0.05            # --scales: 20 windows across the shorter side before any overlap
DISPLAY = 1024              # longest side of the heat-map picture
NMS_IOU = 0.3


@dataclass(frozen=True)
class WindowScoring:
    """How window scores are made: `neighbourhood` x `neighbourhood` windows of one scale averaged
    (bird log-odds), plus `whole_frame` x the whole photo's log-odds. The model file records the
    scoring its window threshold was chosen with; files without it used single windows (1, 0.0)."""

    neighbourhood: int = 1
    whole_frame: float = 0.0

    @classmethod
    def of(cls, model: Classifier, indices: list[int] | None = None) -> "WindowScoring":
        """The scoring the model's window threshold for `indices` (default: its positive class) was
        chosen with. Other classes have no window threshold of their own (0.5 by default), so they
        keep single windows, as that 0.5 has always meant."""
        v = model.meta.get("window_scoring")
        if not v or (indices is not None and indices != [model.positive_index]):
            return cls()
        return cls(int(v["neighbourhood"]), float(v["whole_frame"]))


CALIBRATED_SCORING = WindowScoring(neighbourhood=3, whole_frame=1.0)  # what new calibrations choose a threshold for


def score_windows(log_odds: torch.Tensor, whole: float, scoring: WindowScoring) -> torch.Tensor:
    """Scores (log-odds) of one scale's (ny, nx) grid of windows from their own log-odds and the
    whole photo's: the mean over each window's k x k neighbours (edges repeated), plus whole_frame x whole."""
    k, lo = scoring.neighbourhood, log_odds[None, None]
    if k > 1:
        lo = F.avg_pool2d(F.pad(lo, (k // 2,) * 4, mode="replicate"), k, 1)
    return lo[0, 0] + scoring.whole_frame * whole


@dataclass
class Located:
    """Result of `locate`: boxes in the photo's own pixel coordinates, most probable first."""

    size: tuple[int, int]                      # photo (width, height)
    target: str
    boxes: list[dict] = field(default_factory=list)      # {"box": [x0, y0, x1, y1], "probability"}
    max_probability: float = 0.0               # best window, before any threshold
    whole_frame_probability: float = 0.0
    whole_frame_log_odds: float = 0.0
    scoring: WindowScoring = WindowScoring()
    min_probability: float = 0.5               # a window needs this much to be a box
    windows: int = 0
    scales: list[dict] = field(default_factory=list)     # {"scale", "window_px", "stride_px", "windows"}
    heat: np.ndarray | None = None             # (h, w) window probabilities (neighbourhood means) at `display` size
    display: Image.Image | None = None         # the photo at heat-map size
    grids: list = field(default_factory=list)  # per scale: (boxes (n, 4), each window's own log-odds (ny, nx))
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"size": list(self.size), "class": self.target, "boxes": self.boxes,
                "min_probability": self.min_probability,
                "max_probability": round(self.max_probability, 6),
                "whole_frame_probability": round(self.whole_frame_probability, 6),
                "window_scoring": asdict(self.scoring), "windows": self.windows, "scales": self.scales,
                "seconds": round(self.seconds, 3)}


def _window_grid(length: int, stride: int, size: int) -> tuple[int, int]:
    """(number of windows, offset) along one side, the grid centred so both margins are equal."""
    n = (length - size) // stride + 1
    return n, (length - size - (n - 1) * stride) // 2


def plan_scales(short_side: int, long_side: int, scales: list[float], stride: float, size: int = 32,
                max_windows: int = MAX_WINDOWS) -> list[tuple[float, int]]:
    """(scale, stride in model pixels) for each usable scale. Over `max_windows` in all, the
    strides widen evenly up to the window size, then the smallest scales go (extreme panoramas)."""
    usable = sorted((s for s in scales if s * short_side >= MIN_WINDOW_PX), reverse=True) or [max(scales)]
    while True:
        widen = 1.0
        while True:
            plan = [(s, min(size, max(1, round(size * stride * widen)))) for s in usable]
            total = 0
            for s, st in plan:
                f = size / (s * short_side)
                total += (_window_grid(max(size, round(short_side * f)), st, size)[0]
                          * _window_grid(max(size, round(long_side * f)), st, size)[0])
            if total <= max_windows:
                return plan
            if all(st >= size for _, st in plan):
                break
            widen *= 1.15
        if len(usable) == 1:
            return plan
        usable = usable[:-1]


@torch.no_grad()
def locate(im: Image.Image, model: Classifier, target: str | None = None,
           scales: list[float] = DEFAULT_SCALES, stride: float = DEFAULT_STRIDE,
           photo_size: tuple[int, int] | None = None, top: int = 5, min_probability: float | None = None,
           max_windows: int = MAX_WINDOWS, scoring: WindowScoring | None = None) -> Located:
    """Score sliding windows over `im` and return the heat map and the best boxes.

    `photo_size`: the photo's real (width, height) when `im` is a reduced decode of it; boxes
    are given in those coordinates. Boxes are the windows left after non-maximum suppression
    (IoU 0.3) with probability >= `min_probability` (default: the model's window threshold, see
    `Classifier.window_threshold`), at most `top` of them. `target`: one class or several, comma-separated.
    `scoring`: how windows are scored (default: as the model's window threshold for `target` was chosen).
    """
    t0 = time.perf_counter()
    ci = model.class_indices(target)
    target = ",".join(model.classes[i] for i in ci)
    if min_probability is None:
        min_probability = model.window_threshold(ci)
    size = model.input_size
    W, H = photo_size or im.size
    w, h = im.size
    disp_scale = min(1.0, DISPLAY / max(w, h))
    dw, dh = max(1, round(w * disp_scale)), max(1, round(h * disp_scale))
    display = im.resize((dw, dh), Image.Resampling.BICUBIC, reducing_gap=3.0) if (dw, dh) != (w, h) else im
    scoring = scoring or WindowScoring.of(model, ci)
    res = Located((W, H), target, display=display, min_probability=float(min_probability), scoring=scoring)
    others = [i for i in range(len(model.classes)) if i not in ci]
    t = model.temperature_for("none")

    def log_odds(windows: torch.Tensor) -> torch.Tensor:
        # Log-odds from the logits (float64), not from probabilities, which saturate at 1.0. No flip
        # averaging: it would double the cost, and the neighbourhood averages out noise.
        z = model.logits(windows, tta="none").double() / t
        return torch.logsumexp(z[:, ci], 1) - torch.logsumexp(z[:, others], 1)

    whole = float(log_odds(torch.from_numpy(model_view(im, size))[None])[0])
    res.whole_frame_log_odds, res.whole_frame_probability = whole, 1 / (1 + math.exp(-whole))

    heat = torch.zeros(dh, dw)
    all_boxes, all_scores = [], []
    short, long_ = (min(W, H), max(W, H))
    for s, st in plan_scales(short, long_, list(scales), stride, size, max_windows):
        # Resize so the window (s x the shorter side) becomes exactly size x size pixels.
        f = size / (s * min(w, h))
        rw, rh = max(size, round(w * f)), max(size, round(h * f))
        small = torch.from_numpy(np.array(im.resize((rw, rh), Image.Resampling.BICUBIC, reducing_gap=3.0)))
        nx, ox = _window_grid(rw, st, size)
        ny, oy = _window_grid(rh, st, size)
        covered = small[oy:oy + (ny - 1) * st + size, ox:ox + (nx - 1) * st + size]
        # (ny, nx, 3, size, size) -> (ny*nx, size, size, 3): every window, no Python loop.
        windows = covered.unfold(0, size, st).unfold(1, size, st).permute(0, 1, 3, 4, 2).reshape(-1, size, size, 3)
        lo = log_odds(windows).view(ny, nx)
        score = score_windows(lo, whole, scoring).flatten()  # log-odds: ranks where probabilities reach 1.0

        # Heat: each window's probability (its neighbourhood's, without the whole photo's evidence,
        # which would lift every window alike) painted on the stride x stride cell at its centre (so
        # a small bird stays a small hot spot), edges extended; the hottest scale wins per pixel.
        local = torch.sigmoid(score_windows(lo, 0.0, scoring)).float()
        cells = F.interpolate(local.view(1, 1, ny, nx), size=(ny * st, nx * st), mode="bilinear",
                              align_corners=False)
        cy, cx = oy + (size - st) // 2, ox + (size - st) // 2
        cells = F.pad(cells, (cx, rw - cx - nx * st, cy, rh - cy - ny * st), mode="replicate")
        heat = torch.maximum(heat, F.interpolate(cells, size=(dh, dw), mode="bilinear", align_corners=False)[0, 0])

        # Window boxes in photo pixels.
        gy, gx = torch.meshgrid(torch.arange(ny) * st + oy, torch.arange(nx) * st + ox, indexing="ij")
        kx, ky = W / rw, H / rh
        b = torch.stack([gx * kx, gy * ky, (gx + size) * kx, (gy + size) * ky], -1).reshape(-1, 4).float()
        all_boxes.append(b)
        all_scores.append(score.float())
        res.grids.append((b, lo))
        res.scales.append({"scale": s, "window_px": round(size * kx), "stride_px": round(st * kx), "windows": nx * ny})
        res.windows += nx * ny

    boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
    res.max_probability = float(torch.sigmoid(scores.max().double()))
    for i in _load_nms()(boxes, scores, NMS_IOU)[:top].tolist():
        p = float(torch.sigmoid(scores[i].double()))
        if p >= min_probability:
            x0, y0, x1, y1 = boxes[i].tolist()
            res.boxes.append({"box": [max(0, round(x0)), max(0, round(y0)), min(W, round(x1)), min(H, round(y1))],
                              "probability": round(p, 6)})
    res.heat = heat.numpy()
    res.seconds = time.perf_counter() - t0
    return res


def photo_size(path: str | Path) -> tuple[int, int]:
    """The photo's upright (width, height) from its header, without decoding it."""
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def locate_file(path: str | Path, model: Classifier, scales: list[float] = DEFAULT_SCALES, **kwargs) -> Located:
    """`locate` on a photo file, decoding only as many pixels as the smallest window needs."""
    t0 = time.perf_counter()
    # Smallest window -> the input size (e.g. 40 px): the shorter side needs 40 / min(scale) pixels; at least
    # 512 so the heat-map picture stays sharp.
    need = max(512, math.ceil(model.input_size / min(scales)))
    im = open_image(path, min_size=need)
    try:
        size = photo_size(path)
    except Exception:  # noqa: BLE001 - open_image succeeded: only an odd header ends here
        size = im.size
    res = locate(im, model, scales=scales, photo_size=size, **kwargs)
    res.seconds = time.perf_counter() - t0
    return res


def save_heatmap(res: Located, out: str | Path, title: str = "") -> Path:
    """The photo with the heat map over it and the boxes drawn, as a PNG. `title`: a prefix."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(out)
    W, H = res.size
    dw, dh = res.display.size
    width = max(4.0, 8 * dw / max(dw, dh)) + 1.2
    fig, ax = plt.subplots(figsize=(width, max(3.0, 8 * dh / max(dw, dh)) + 0.6), dpi=110)
    ax.imshow(res.display, extent=(0, W, H, 0))
    # Colour and opacity both follow the heat, so cold regions keep the photo visible.
    rgba = plt.get_cmap("inferno")(res.heat)
    rgba[..., 3] = 0.75 * res.heat
    ax.imshow(rgba, extent=(0, W, H, 0))
    shown = plt.cm.ScalarMappable(plt.Normalize(0, 1), "inferno")
    for rank, b in enumerate(res.boxes):
        x0, y0, x1, y1 = b["box"]
        colour = "cyan" if rank == 0 else "lime"
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                               linewidth=2.5 if rank == 0 else 1.5))
        ax.text(x0, y0, f"{res.target} {100 * b['probability']:.0f}%", color="black", fontsize=9, va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.5})
    ax.set_axis_off()
    # Wrapped to the figure's width (~11 characters an inch at 10 pt): a tall photo's title was cut off.
    ax.set_title(textwrap.fill(f"{title + ': ' if title else ''}{res.target} in the best window "
                               f"{100 * res.max_probability:.1f}%, whole frame in one view "
                               f"{100 * res.whole_frame_probability:.1f}% ({res.windows} windows)", int(width * 11)),
                 fontsize=10)
    fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02,
                 label=f"{res.target} probability of the window centred here (mean with its neighbours)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_device_argument(p)
    p.add_argument("image", metavar="IMAGE", help="a photo (JPEG, PNG, WebP, GIF, BMP, TIFF), 64 px to 24 MP or more")
    p.add_argument("--out", metavar="PNG",
                   help="heat-map picture to write (.png/.jpg/.pdf/.svg; default: runs/locate-DATE/NAME.png)")
    p.add_argument("--json", action="store_true",
                   help='print {"boxes": [{"box": [x0, y0, x1, y1], "probability"}...], ...} in photo pixels')
    p.add_argument("--stride", type=float, default=DEFAULT_STRIDE, metavar="S",
                   help=f"step between windows as a fraction of the window (default {DEFAULT_STRIDE})")
    p.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), metavar="F",
                   help=f"window sides as fractions of the photo's shorter side, {MIN_SCALE} to 1 (default "
                        f"{' '.join(map(str, DEFAULT_SCALES))})")
    p.add_argument("--for", dest="target", metavar="WORDS",
                   help="class(es) to locate, comma-separated (default: the model's positive class)")
    p.add_argument("--min-probability", type=float, metavar="P",
                   help="smallest box probability (default: the model's window threshold for its positive class, "
                        "chosen on validation photos; 0.5 for other classes)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="at most this many boxes (default 5)")
    p.add_argument("--model", help="model file (.json/.safetensors or a run folder; default: the shipped model)")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.stride <= 1:
        raise BirdcnnError(f"--stride must be in (0, 1] (a fraction of the window), not {args.stride}")
    if any(not MIN_SCALE <= s <= 1 for s in args.scales):  # smaller ones would take thousands of windows
        raise BirdcnnError(f"--scales must be fractions of the photo's shorter side, from {MIN_SCALE} to 1")
    if args.min_probability is not None and not 0 <= args.min_probability <= 1:
        raise BirdcnnError(f"--min-probability must be between 0 and 1, not {args.min_probability}")
    if args.top < 1:
        raise BirdcnnError("--top must be at least 1")
    # The picture's format comes from its suffix: refuse one matplotlib cannot write (or none)
    # before the work, rather than guess a name the user did not give.
    if args.out and Path(args.out).suffix.lower() not in FIGURE_SUFFIXES:
        raise BirdcnnError(f"{display_path(args.out)}: --out must end in one of {', '.join(sorted(FIGURE_SUFFIXES))}")
    if args.out:
        check_not_input(args.out, args.image)
    model = load_model(args.model, chosen_device(args.device))
    res = locate_file(args.image, model, scales=args.scales, target=args.target, stride=args.stride,
                      top=args.top, min_probability=args.min_probability)
    from .runs import default_run_dir

    # The default name is the photo's, shortened: the temporary file beside it must fit the name limit too.
    out = Path(args.out) if args.out else default_run_dir("locate") / f"{Path(args.image).stem[:100]}.png"
    try:
        save_heatmap(res, out, title=display_path(Path(args.image).name))
    except OSError as e:
        raise BirdcnnError(f"{display_path(out)}: cannot write ({e.strerror or e})") from None
    image, heatmap = display_path(args.image), display_path(out)
    if args.json:
        json.dump({"image": image, **res.as_dict(), "heatmap": heatmap}, sys.stdout, indent=2)
        print()
    else:
        W, H = res.size
        print(f"{image} ({W}x{H}): best {res.target} window {100 * res.max_probability:.1f}%, "
              f"whole frame in one view {100 * res.whole_frame_probability:.1f}% "
              f"({res.windows} windows, {res.seconds:.1f} s)")
        for b in res.boxes:
            print(f"  {100 * b['probability']:5.1f}%  box {b['box']}")
        if not res.boxes:
            print(f"  no region reaches {100 * res.min_probability:.2f}% (the window threshold)")
        print(f"heat map: {heatmap}")
    return 0


def calibrate_windows(model: Classifier, paths: list[str], positive: np.ndarray, target_precision: float,
                      limit: int = 480, seed: int = 0) -> tuple[float | None, dict]:
    """The window threshold: the lowest probability at which "some window reaches it" means
    "this photo shows the positive class" with `target_precision` on held-out photos, windows
    scored as `CALIBRATED_SCORING` says (the model file then records that scoring).

    A window is a crop the whole-photo threshold was never chosen for, and a photo offers
    hundreds of them, so its best window needs a threshold of its own. `paths`/`positive`: held-out
    (validation) photos. At most `limit` are scored (each costs a full `locate`, ~0.3 s on 2 cores): up to
    a third positives, the rest negatives, and the negatives are weighted back to their share of `paths`,
    so that the precision is the one on all of them (480, not 240: two samples of ~240 and ~480
    photos put the cut 0.6 log-odds apart). Returns (threshold or None, facts).
    """
    rng = np.random.default_rng(seed)
    pos_all, neg_all = np.nonzero(positive)[0], np.nonzero(~np.asarray(positive, bool))[0]
    n_pos = min(len(pos_all), limit // 3)
    n_neg = min(len(neg_all), limit - n_pos)
    pick = np.r_[rng.choice(pos_all, n_pos, replace=False), rng.choice(neg_all, n_neg, replace=False)]
    best, y = [], []
    for i in pick:
        try:
            res = locate_file(paths[i], model, min_probability=1.0, scoring=CALIBRATED_SCORING)
        except (BirdcnnError, OSError):
            continue
        best.append(res.max_probability)
        y.append(bool(positive[i]))
    best_a, y_a = np.array(best), np.array(y, bool)
    facts = {"photos": len(y_a), "positives": int(y_a.sum()), "target_precision": target_precision}
    if not y_a.any() or y_a.all():
        return None, facts
    neg_weight = (len(neg_all) / (~y_a).sum()) / (len(pos_all) / y_a.sum())
    order = np.argsort(-best_a, kind="stable")
    s, yy = best_a[order], y_a[order]
    tp, fp = np.cumsum(yy), np.cumsum(~yy) * neg_weight
    precision = tp / (tp + fp)
    # A cut after index i keeps every score >= s[i]: only the last of a run of equal scores is a cut.
    cuts = [i for i in range(len(s)) if (i + 1 == len(s) or s[i + 1] < s[i]) and precision[i] >= target_precision]
    return (float(s[max(cuts)]) if cuts else None), facts
