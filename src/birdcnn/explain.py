"""`birdcnn explain`: what the network sees, step by step, for one photo.

One forward pass of the real trained network with forward hooks on every convolution and
pooling layer (found by type, so any architecture built from `nn.Conv2d`/pooling modules
works), then one backward pass for Grad-CAM and a gradient saliency map. Writes one PNG per
step and a combined figure that reads left to right:

  photo -> the model's input (e.g. 40x40) -> overlapping tiles -> first-layer filters and feature maps
  -> max-pooling -> deeper layers -> class probabilities -> Grad-CAM on the photo.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .atomic import save_figure, write_text
from .devices import add_device_argument, chosen_device
from .errors import BirdcnnError
from .images import display_path, model_view, open_for_model, zoom_view
from .modelfile import Classifier, load_model, stack_zoomed

POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
TRACED_TYPES = (nn.Conv2d, *POOL_TYPES)
MAPS_SHOWN = 16        # feature maps per layer in the figures, the strongest ones
DEEPER_SHOWN = 3       # deeper layers in the combined figure (every one gets its own row in deeper_layers.png)
SMOOTHGRAD_SAMPLES = 16
BARS_SHOWN = 12        # the answer's bars: a model with more classes shows its likeliest, the positive and "the rest"


# ---------------------------------------------------------------- tracing the network

@dataclass
class Step:
    """One convolution or pooling layer's call: what went in and what came out, for one image."""

    name: str               # module path in the network, e.g. "2.conv1"
    module: nn.Module
    input: torch.Tensor     # (C, H, W), detached, on the CPU
    output: torch.Tensor    # (C, H, W)

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    def describe(self) -> str:
        m = self.module
        c, h, w = self.output.shape
        if isinstance(m, nn.Conv2d):
            k = "x".join(map(str, m.kernel_size))
            return f"conv {k}, {m.in_channels}->{m.out_channels} ch, {h}x{w}"
        kind = "max" if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) else "avg"
        return f"{kind}-pool {self.input.shape[1]}x{self.input.shape[2]} -> {h}x{w}, {c} ch"


@dataclass
class Trace:
    steps: list[Step]
    cam_step: Step | None        # the layer Grad-CAM was computed on
    gradcam: np.ndarray | None   # (h, w) in [0, 1] on that layer's grid
    saliency: np.ndarray         # (H, W) in [0, 1] on the input grid


def trace(clf: Classifier, u8: np.ndarray, target: int) -> Trace:
    """Run `u8` (H, W, 3) through the network recording every conv/pool layer, then explain `target`.

    Float32 and no test-time flip: the maps and gradients are those of exactly one forward pass.
    """
    net = clf.net
    names = {m: n for n, m in net.named_modules()}
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(module, inputs, output):
        calls.append((module, inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, TRACED_TYPES)]
    try:
        x = clf.prepare(u8).float().requires_grad_(True)
        with torch.enable_grad():
            score = net(x)[0, target]
            cam_i = _gradcam_layer(calls, x.shape[-1])
            wanted = [x] + ([calls[cam_i][2]] if cam_i is not None else [])
            grads = torch.autograd.grad(score, wanted)
    finally:
        for h in handles:
            h.remove()

    steps, seen = [], {}
    for module, inp, out in calls:
        name = names.get(module, type(module).__name__)
        seen[name] = seen.get(name, 0) + 1
        name = name if seen[name] == 1 else f"{name}#{seen[name]}"  # a module called twice
        steps.append(Step(name, module, inp[0].detach().float().cpu().clone(), out[0].detach().float().cpu().clone()))

    cam = None
    if cam_i is not None:
        act, grad = calls[cam_i][2][0].detach().float(), grads[1][0].float()
        cam = F.relu((grad.mean((1, 2))[:, None, None] * act).sum(0)).cpu().numpy()
        cam = cam / cam.max() if cam.max() > 0 else cam
    return Trace(steps, steps[cam_i] if cam_i is not None else None, cam, smoothgrad(clf, u8, target))


def _gradcam_layer(calls: list, input_size: int) -> int | None:
    """The deepest convolution whose map is still at least 1/8 of the input's side.

    Grad-CAM on the very last layer of the fast network would be a 3x3 blur; one stage earlier
    keeps enough resolution to point at a bird while still being "what the network decided on".
    """
    convs = [i for i, (m, _, out) in enumerate(calls) if isinstance(m, nn.Conv2d) and out.ndim == 4]
    good = [i for i in convs if min(calls[i][2].shape[-2:]) >= max(2, input_size // 8)]
    return (good or convs or [None])[-1]


def smoothgrad(clf: Classifier, u8: np.ndarray, target: int, n: int = SMOOTHGRAD_SAMPLES,
               noise: float = 0.15) -> np.ndarray:
    """|d score / d pixel|, averaged over `n` noisy copies (SmoothGrad, Smilkov et al. 2017), in [0, 1]."""
    x = clf.prepare(u8).float()
    gen = torch.Generator().manual_seed(0)
    sigma = noise * float(x.max() - x.min())
    xs = (x + sigma * torch.randn((n, *x.shape[1:]), generator=gen).to(x.device)).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(clf.net(xs)[:, target].sum(), [xs])
    sal = grad.abs().amax(1).mean(0).float().cpu().numpy()
    return sal / sal.max() if sal.max() > 0 else sal


def strongest(maps: torch.Tensor, k: int) -> list[int]:
    """Indices of the k channels with the strongest peak response, strongest first."""
    peak = maps.flatten(1).amax(1)
    return peak.argsort(descending=True)[:k].tolist()


def first_conv(steps: list[Step]) -> Step:
    convs = [s for s in steps if s.is_conv]
    if not convs:
        raise BirdcnnError("this network has no Conv2d layer to explain")
    return convs[0]


def conv_geometry(conv: nn.Conv2d, size: int) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, tiles per side) of a square conv over a size x size input."""
    k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    if conv.padding == "same":
        p = d * (k - 1) // 2
    elif conv.padding == "valid":
        p = 0
    else:
        p = conv.padding[0]
    span = d * (k - 1) + 1
    return span, s, p, (size + 2 * p - span) // s + 1


# ---------------------------------------------------------------- turning arrays into pictures

def show_normalised(x: np.ndarray, span: float = 3.0) -> np.ndarray:
    """Normalised (3, H, W) input -> RGB in [0, 1]: 0 (the training set's mean colour) is mid-grey,
    +-`span` standard deviations are full brightness/darkness, on one fixed scale for every photo."""
    return np.clip(x / (2 * span) + 0.5, 0, 1).transpose(1, 2, 0)


def mosaic(tiles: list[np.ndarray], cols: int, gap: int = 1, fill: float = 1.0) -> np.ndarray:
    """Lay out equal-size (h, w, 3) tiles in a grid with `gap`-pixel white lines between them."""
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), fill, dtype=np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = t
    return out


def colour_maps(maps: torch.Tensor, idx: list[int],
                ranges: dict[int, tuple[float, float]] | None = None) -> list[np.ndarray]:
    """Channels `idx` of (C, H, W) maps as viridis RGB tiles, each stretched to its own range
    (or to `ranges[c]`, so a map and its pooled version share one colour scale)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    out = []
    for c in idx:
        m = maps[c].numpy()
        lo, hi = ranges[c] if ranges else (float(m.min()), float(m.max()))
        out.append(cmap(np.clip((m - lo) / (hi - lo if hi > lo else 1.0), 0, 1))[..., :3].astype(np.float32))
    return out


def filter_tiles(conv: nn.Conv2d) -> list[np.ndarray]:
    """A conv's filters as little images: RGB when it reads 3 channels, grey (channel mean) otherwise."""
    w = conv.weight.detach().float().cpu()
    if w.shape[1] == 3:
        t = w.permute(0, 2, 3, 1)
    else:
        t = w.mean(1)[..., None].expand(-1, -1, -1, 3)
    scale = t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return list((t / (2 * scale) + 0.5).numpy())


def overlay(photo: Image.Image, heat: np.ndarray, box: tuple[int, int, int, int], alpha: float = 0.5) -> np.ndarray:
    """`heat` (h, w) in [0, 1] upsampled onto the `box` the network saw; the rest of the photo dimmed."""
    import matplotlib

    rgb = np.asarray(photo, dtype=np.float32) / 255
    left, top, right, bottom = box
    hm = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    hm = F.interpolate(hm, size=(bottom - top, right - left), mode="bilinear",
                       align_corners=False)[0, 0].clamp(0, 1).numpy()
    out = rgb * 0.35
    region = rgb[top:bottom, left:right]
    out[top:bottom, left:right] = (1 - alpha) * region + alpha * matplotlib.colormaps["jet"](hm)[..., :3]
    return out


def crop_box(w: int, h: int) -> tuple[int, int, int, int]:
    """The central square `fit_square` keeps, as (left, top, right, bottom)."""
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return left, top, left + s, top + s


# ---------------------------------------------------------------- the explanation

@dataclass
class Explanation:
    """Everything the figures show, computed once."""

    path: str
    photo: Image.Image              # the original (downsized for display)
    box: tuple[int, int, int, int]  # the central square the network saw, in `photo` pixels
    u8: np.ndarray                  # (S, S, 3) the model input before normalisation
    x: np.ndarray                   # (3, S, S) the normalised input
    trace: Trace
    probs: np.ndarray
    classes: list[str]
    positive: str
    threshold: float
    record: dict
    arch: str

    @property
    def name(self) -> str:
        """The photo's file name, printable (figure titles)."""
        return display_path(Path(self.path).name)

    @property
    def first(self) -> Step:
        return first_conv(self.trace.steps)

    @property
    def first_pool(self) -> Step | None:
        pools = [s for s in self.trace.steps if isinstance(s.module, POOL_TYPES) and min(s.output.shape[1:]) > 1]
        return pools[0] if pools else None

    def deeper(self) -> list[Step]:
        """Every spatial layer after the first pooling (or after the first conv if none pools)."""
        steps = self.trace.steps
        start = steps.index(self.first_pool) + 1 if self.first_pool else steps.index(self.first) + 1
        return [s for s in steps[start:] if min(s.output.shape[1:]) > 1]


def explain(path: str | Path, clf: Classifier, display_size: int = 480) -> Explanation:
    """Open the photo (raising `ImageError`), run the traced forward/backward pass, collect the prediction."""
    im = open_for_model(path, max(clf.input_size, clf.zoom_size or 0))  # exactly what predict decodes and sees
    u8, zoom = model_view(im, clf.input_size), zoom_view(im, clf.input_size, clf.zoom_size)
    scale = min(1.0, display_size / max(im.size))
    photo = (im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
             if scale < 1 else im)
    box = crop_box(*photo.size)
    probs = clf.probabilities(u8[None], zoomed=stack_zoomed([zoom]))[0]
    tr = trace(clf, u8, clf.positive_index)
    x = clf.prepare(u8)[0].float().cpu().numpy()
    return Explanation(str(path), photo, box, u8, x, tr, probs, clf.classes, clf.positive, clf.threshold,
                       clf.record(probs), clf.meta.get("arch", type(clf.net).__name__))


# ---------------------------------------------------------------- panels (each draws into one figure cell)

def _image(ax, img, title: str = "", **kw) -> None:
    ax.imshow(img, interpolation="nearest", **kw)
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def panel_photo(fig, spec, e: Explanation) -> None:
    from matplotlib.patches import Rectangle

    ax = fig.add_subplot(spec)
    _image(ax, e.photo, f"1 · your photo ({e.name})")
    l, t, r, b = e.box
    ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, ec="yellow", lw=1.5, ls="--"))
    ax.set_xlabel("dashed: the central square it sees", fontsize=8)


def panel_input(fig, spec, e: Explanation, number: str) -> None:
    s = e.u8.shape[0]
    top, bottom = spec.subgridspec(2, 1, hspace=0.35)
    _image(fig.add_subplot(top), e.u8, f"{number} · shrunk to {s}x{s} pixels")
    ax = fig.add_subplot(bottom)
    _image(ax, show_normalised(e.x), "normalised (what it reads)")
    ax.set_xlabel("grey = average training colour", fontsize=8)


def panel_tiles(fig, spec, e: Explanation, number: str, all_tiles: bool = False) -> None:
    """The input cut into the (overlapping) tiles the first conv slides over: a zoomed patch of
    them pulled apart (and, with `all_tiles`, every tile of the image)."""
    from matplotlib.patches import Rectangle

    k, stride, pad, n = conv_geometry(e.first.module, e.u8.shape[0])
    shown = np.pad(show_normalised(e.x), ((pad, pad), (pad, pad), (0, 0)), constant_values=0.5)
    tiles = [[shown[r * stride: r * stride + k, c * stride: c * stride + k] for c in range(n)] for r in range(n)]
    z = min(n, 6)                      # the zoomed patch: z x z tiles from the middle of the image
    r0 = (n - z) // 2
    span = (z - 1) * stride + k
    cells = spec.subgridspec(3 if all_tiles else 2, 1, hspace=0.35)
    ax = fig.add_subplot(cells[0])
    overlap = stride < k  # a stride-2 stem (`--stem-stride 2`) cuts 2x2 tiles side by side
    _image(ax, shown, f"{number} · {'overlapping' if overlap else 'side-by-side'} {k}x{k} tiles")
    ax.add_patch(Rectangle((r0 * stride - 0.5, r0 * stride - 0.5), span, span, fill=False, ec="white", lw=1.2, ls="--"))
    ax.set_xlabel(f"stride {stride}, padding {pad}: {n}x{n} tiles", fontsize=8)
    ax = fig.add_subplot(cells[1])
    _image(ax, mosaic([t for row in tiles[r0:r0 + z] for t in row[r0:r0 + z]], z, gap=1), "dashed patch, pulled apart")
    # Three neighbours in a row: each repeats k - stride columns of the one before (the overlap).
    for j, colour in enumerate(("red", "yellow", "cyan")[:z]):
        ax.add_patch(Rectangle((j * (k + 1) - 0.5, (z // 2) * (k + 1) - 0.5), k, k, fill=False, ec=colour, lw=1.5))
    ax.set_xlabel("neighbouring tiles share pixels" if overlap else "each pixel in one tile", fontsize=8)
    if all_tiles:
        _image(fig.add_subplot(cells[2]), mosaic([t for row in tiles for t in row], n, gap=1), f"all {n * n} tiles")


def panel_filters(fig, spec, e: Explanation, number: str) -> None:
    conv = e.first.module
    tiles = filter_tiles(conv)
    ax = fig.add_subplot(spec)
    _image(ax, mosaic(tiles, math.ceil(math.sqrt(len(tiles))), gap=1, fill=0.2),
           f"{number} · first layer: {len(tiles)} filters")
    k = "x".join(map(str, conv.kernel_size))
    ax.set_xlabel(f"each a small {k} pattern detector,\nslid over every tile", fontsize=8)


def panel_maps(fig, spec, step: Step, title: str, k: int = MAPS_SHOWN) -> None:
    idx = strongest(step.output, k)
    ax = fig.add_subplot(spec)
    _image(ax, mosaic(colour_maps(step.output, idx), math.ceil(math.sqrt(len(idx)))), title)
    c, h, w = step.output.shape
    ax.set_xlabel(f"{step.describe()}\n{len(idx)} of {c} maps, strongest first", fontsize=8)


def panel_pooling(fig, spec, e: Explanation, number: str, k: int = 8) -> None:
    pool = e.first_pool
    if pool is None:
        fig.add_subplot(spec).axis("off")
        return
    idx = strongest(pool.input, k)
    ranges = {c: (float(pool.input[c].min()), float(pool.input[c].max())) for c in idx}
    cols = math.ceil(len(idx) / 2)
    before = mosaic(colour_maps(pool.input, idx, ranges), cols)
    after = mosaic(colour_maps(pool.output, idx, ranges), cols)
    # Drawn at the same pixel scale as "before" (on a white canvas of its size), so the maps visibly shrink.
    canvas = np.ones_like(before)
    dy, dx = (before.shape[0] - after.shape[0]) // 2, (before.shape[1] - after.shape[1]) // 2
    canvas[dy:dy + after.shape[0], dx:dx + after.shape[1]] = after
    top, bottom = spec.subgridspec(2, 1, hspace=0.35)
    _image(fig.add_subplot(top), before, f"{number} · max-pooling: before")
    ax = fig.add_subplot(bottom)
    _image(ax, canvas, f"after: {pool.input.shape[1]}x{pool.input.shape[2]} "
                       f"-> {pool.output.shape[1]}x{pool.output.shape[2]}")
    ax.spines[:].set_visible(False)
    m = pool.module
    if isinstance(m, nn.MaxPool2d):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        ax.set_xlabel(f"each {k}x{k} block keeps its strongest value", fontsize=8)


def answer_bars(e: Explanation, k: int = BARS_SHOWN) -> tuple[list[str], np.ndarray, int]:
    """The answer panel's bars: every class when there are at most `k`, in the model's order; else
    the k - 1 likeliest, most likely first, with the positive class always among them, then one bar
    for the rest ("280 other classes"; 283 bars would be an unreadable smear). Returns the labels,
    their probabilities and the positive class's bar."""
    probs = np.asarray(e.probs, dtype=float)
    pos = e.classes.index(e.positive)
    if len(e.classes) <= k:
        return list(e.classes), probs, pos
    order = [int(i) for i in np.argsort(-probs, kind="stable")[:k - 1]]
    if pos not in order:
        order[-1] = pos
        order.sort(key=lambda i: -probs[i])
    shown = probs[order]
    labels = [e.classes[i] for i in order] + [f"{len(e.classes) - len(order)} other classes"]
    return labels, np.append(shown, max(0.0, 1.0 - shown.sum())), order.index(pos)


def panel_probabilities(fig, spec, e: Explanation, number: str) -> None:
    ax = fig.add_subplot(spec)
    labels, probs, pos = answer_bars(e)
    y = np.arange(len(labels))
    colours = ["tab:gray"] * len(labels)
    colours[pos] = "tab:orange"
    if len(labels) < len(e.classes):
        colours[-1] = "lightgray"
    ax.barh(y, probs, color=colours)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=8)
    ax.plot([e.threshold] * 2, [pos - 0.45, pos + 0.45], "k--", lw=1)
    p = e.record["bird_probability"]
    ax.set_title(f"{number} · answer: {e.record['label']}", fontsize=9, fontweight="bold")
    ax.set_xlabel(f"probability ({e.positive} {100 * p:.1f}%; dashed: threshold {e.threshold:.2f})", fontsize=8)


def panel_gradcam(fig, spec, e: Explanation, number: str) -> None:
    ax = fig.add_subplot(spec)
    if e.trace.gradcam is None:
        ax.axis("off")
        return
    _image(ax, overlay(e.photo, e.trace.gradcam, e.box), f"{number} · where it sees \"{e.positive}\"")
    ax.set_xlabel(f"Grad-CAM on layer {e.trace.cam_step.name} "
                  f"({e.trace.gradcam.shape[0]}x{e.trace.gradcam.shape[1]})", fontsize=8)


# ---------------------------------------------------------------- figures and files

def _save(fig, path: Path, dpi: int = 110) -> Path:
    return save_figure(fig, path, dpi=dpi, bbox_inches="tight")


def _one(draw, size=(3.2, 3.4)):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size)
    draw(fig, fig.add_gridspec(1, 1)[0])
    return fig


def combined_figure(e: Explanation):
    """The whole story on one strip, read left to right."""
    import matplotlib.pyplot as plt

    deeper = _pick(e.deeper(), DEEPER_SHOWN)
    panels = [lambda f, s: panel_photo(f, s, e),
              lambda f, s: panel_input(f, s, e, "2"),
              lambda f, s: panel_tiles(f, s, e, "3"),
              lambda f, s: panel_filters(f, s, e, "4"),
              lambda f, s: panel_maps(f, s, e.first, "5 · first layer: feature maps"),
              lambda f, s: panel_pooling(f, s, e, "6")]
    for j, step in enumerate(deeper):
        panels.append(lambda f, s, st=step, j=j: panel_maps(f, s, st, f"{7 + j} · deeper: layer {st.name}"))
    n = 7 + len(deeper)
    # None: an empty column, room for the answer's class names
    panels += [None, lambda f, s: panel_probabilities(f, s, e, str(n)), lambda f, s: panel_gradcam(f, s, e, str(n + 1))]
    widths = [1.6] + [1.0] * (len(panels) - 4) + [0.4, 1.3, 1.6]
    fig = plt.figure(figsize=(2.5 * sum(widths), 4.4))
    gs = fig.add_gridspec(1, len(panels), width_ratios=widths, wspace=0.28)
    for i, draw in enumerate(panels):
        if draw is not None:
            draw(fig, gs[i])
    fig.suptitle(f"How the {e.arch} network reads {e.name}: left to right, photo -> answer "
                 f"({e.record['label']}, {e.positive} probability {100 * e.record['bird_probability']:.1f}%)",
                 fontsize=12, x=0.5, y=1.02)
    return fig


def _pick(items: list, k: int) -> list:
    """k items evenly spread over `items`, always including the last."""
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else items[-1:]


def deeper_figure(e: Explanation, k: int = 8):
    """Every deeper layer, one row each: its k strongest maps."""
    import matplotlib.pyplot as plt

    layers = e.deeper()
    fig, axes = plt.subplots(max(1, len(layers)), 1, figsize=(1.1 * k, 1.5 * max(1, len(layers))), squeeze=False)
    for ax, step in zip(axes[:, 0], layers):
        idx = strongest(step.output, k)
        _image(ax, mosaic(colour_maps(step.output, idx), k))
        ax.set_title(f"{step.name}: {step.describe()} ({len(idx)} strongest of {step.output.shape[0]})",
                     fontsize=9, loc="left")
    if not layers:
        axes[0, 0].axis("off")
    fig.tight_layout()
    return fig


def saliency_figure(e: Explanation):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    _image(axes[0], e.photo, e.name)
    if e.trace.gradcam is not None:
        _image(axes[1], overlay(e.photo, e.trace.gradcam, e.box),
               f"Grad-CAM for \"{e.positive}\" (layer {e.trace.cam_step.name})")
    else:
        axes[1].axis("off")
    _image(axes[2], overlay(e.photo, e.trace.saliency, e.box),
           f"pixel saliency (SmoothGrad, {SMOOTHGRAD_SAMPLES} samples)")
    fig.tight_layout()
    return fig


def write_explanation(e: Explanation, out: Path) -> dict[str, Path]:
    """Write every step's PNG, the combined figure and explain.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "input": _save(_one(lambda f, s: panel_input(f, s, e, "1"), (3.2, 6.4)), out / "01_input.png"),
        "tiles": _save(_one(lambda f, s: panel_tiles(f, s, e, "2", all_tiles=True), (4, 11)), out / "02_tiles.png"),
        "filters": _save(_one(lambda f, s: panel_filters(f, s, e, "3")), out / "03_filters.png"),
        "feature_maps": _save(_one(lambda f, s: panel_maps(f, s, e.first, "4 · first layer: feature maps"), (4, 4.4)),
                              out / "04_feature_maps.png"),
        "pooling": _save(_one(lambda f, s: panel_pooling(f, s, e, "5"), (4, 6.4)), out / "05_pooling.png"),
        "deeper_layers": _save(deeper_figure(e), out / "06_deeper_layers.png"),
        "probabilities": _save(_one(lambda f, s: panel_probabilities(f, s, e, "7"),
                                    (4.4, 0.8 + 0.3 * len(answer_bars(e)[0]))), out / "07_probabilities.png"),
        "saliency": _save(saliency_figure(e), out / "08_saliency.png"),
        "combined": _save(combined_figure(e), out / "explain.png"),
    }
    summary = {"image": display_path(e.path), "arch": e.arch, **e.record,
               "probabilities": {c: round(float(p), 6) for c, p in zip(e.classes, e.probs)},
               "layers": [{"name": s.name, "kind": "conv" if s.is_conv else "pool", "type": type(s.module).__name__,
                           "output_shape": list(s.output.shape)}
                          for s in e.trace.steps],
               "gradcam_layer": e.trace.cam_step.name if e.trace.cam_step else None,
               "files": {k: p.name for k, p in files.items()}}
    write_text(out / "explain.json", json.dumps(summary, indent=2) + "\n")
    files["json"] = out / "explain.json"
    return files


# ---------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    add_device_argument(p)
    p.add_argument("image", metavar="IMAGE", help="a photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    p.add_argument("--model", help="model file (.json/.safetensors or a run folder; default: the shipped model)")
    p.add_argument("--out", metavar="DIR", help="folder for the pictures (default: runs/explain-DATE)")


def run(args: argparse.Namespace) -> int:
    from .runs import default_run_dir

    clf = load_model(args.model, chosen_device(args.device))
    e = explain(args.image, clf)  # everything is computed (and every error raised) before anything is written
    out = Path(args.out) if args.out else default_run_dir("explain")
    try:
        if out.exists() and not out.is_dir():
            raise BirdcnnError(f"{display_path(out)}: exists and is not a folder (--out)")
        files = write_explanation(e, out)
    except OSError as err:
        raise BirdcnnError(f"{display_path(out)}: cannot write ({err.strerror or err})") from None
    r = e.record
    print(f"{display_path(args.image)}: {r['label']} ({100 * r['bird_probability']:.1f}% {e.positive})")
    print(f"wrote {len(files)} files to {display_path(out)}/ (the whole story: {display_path(files['combined'])})")
    return 0
