"""The tunnel-vision experiment: why a convolutional network? Measured on MNIST.

The story (Geitgey, "Machine Learning is Fun! Part 3"): a dense network that learned to spot
an "8" in the middle of its input misses it once it moves ("tunnel vision"); two brute-force
fixes work at a price (a sliding window: run the network everywhere; more data: train on
shifted digits, with a bigger network); a convolutional network with pooling shares one small
detector over every position instead.

Setup: 28x28 MNIST digits pasted on a 56x56 black canvas, either in its centre ("centred") or
at a uniformly random place ("shifted"). Every network reads the whole canvas and answers
"8 or not 8". About 10% of digits are 8s, so answering "never 8" already scores 90% plain
accuracy: the table also gives balanced accuracy (the mean of the recall on 8s and on the
other digits) and the recall on 8s, and training weights the 8s so both errors count equally.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import save_figure, write_text
from ..errors import BirdcnnError
from ..metrics import binary_report, roc_curve
from .mnist import load_mnist

DIGIT = 28     # MNIST digit size
TARGET = 8     # the digit to recognise


@dataclass
class Settings:
    canvas: int = 56
    train_size: int = 10_000            # digits used for training (at most; the shared subset has 4,000)
    test_size: int = 2_000
    hidden: tuple[int, ...] = (32,)     # the small dense network
    big_hidden: tuple[int, ...] = (512, 256)
    conv_widths: tuple[int, ...] = (8, 16, 32, 32)
    epochs: int = 10                    # passes over the digits, centred training
    shifted_epochs: int = 30            # passes when each pass brings new random positions ("more data")
    conv_epochs: int = 8
    window_stride: int = 2              # sliding window step in pixels (the dense net misses 8s 2 px off)
    calibration_size: int = 1_000       # training digits scanned to pick the sliding window's threshold
    batch_size: int = 64
    lr: float = 1e-3
    threads: int = 1                    # CPU threads: 1 keeps the timings comparable and steady under load
    seed: int = 0


QUICK = Settings(train_size=800, test_size=200, big_hidden=(128, 64), conv_widths=(8, 16, 16, 16), epochs=4,
                 shifted_epochs=4, conv_epochs=2, batch_size=32, calibration_size=100)


# ---------------------------------------------------------------- canvases

def paste(digits: torch.Tensor, offsets: torch.Tensor, canvas: int) -> torch.Tensor:
    """(N, 28, 28) uint8 digits placed at (row, col) `offsets` on black canvases: (N, 1, C, C) in [0, 1]."""
    n = len(digits)
    out = torch.zeros(n, canvas, canvas)
    ar = torch.arange(DIGIT)
    rows = (offsets[:, 0, None] + ar)[:, :, None]
    cols = (offsets[:, 1, None] + ar)[:, None, :]
    out[torch.arange(n)[:, None, None], rows, cols] = digits.float() / 255
    return out[:, None]


def centred_offsets(n: int, canvas: int) -> torch.Tensor:
    return torch.full((n, 2), (canvas - DIGIT) // 2, dtype=torch.long)


def random_offsets(n: int, canvas: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, canvas - DIGIT + 1, (n, 2), generator=gen)


# ---------------------------------------------------------------- the networks

def dense_net(canvas: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = canvas * canvas
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 1))


def conv_net(widths: tuple[int, ...]) -> nn.Sequential:
    """conv-pool-conv-pool-conv-conv, then a global max-pool: "is there an 8 anywhere?".

    The receptive field of the last layer is 26 px, about one digit; the global pool throws the
    position away, so the answer cannot depend on where the digit is (up to the 4-px pooling grid).
    """
    layers: list[nn.Module] = []
    cin = 1
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU()]
        if i < 2:
            layers.append(nn.MaxPool2d(2))
        cin = w
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, 1))


def macs_per_image(net: nn.Module, canvas: int) -> int:
    """Multiply-accumulates of one forward pass (Conv2d and Linear layers), counted with hooks."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(1, 1, canvas, canvas))
    for h in handles:
        h.remove()
    return total


# ---------------------------------------------------------------- training and measuring

def train_net(net: nn.Module, digits: torch.Tensor, is8: torch.Tensor, s: Settings, epochs: int, shifted: bool,
              seed: int) -> tuple[float, int]:
    """Adam on weighted binary cross-entropy; `shifted`: new random positions every epoch.

    Returns (seconds, canvases seen). Placing digits is counted in the time: it is the price of
    synthetic data.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    n, n8 = len(digits), int(is8.sum())
    pos_weight = torch.tensor((n - n8) / max(1, n8))
    y = is8.float()
    net.train()
    t0 = time.perf_counter()
    fixed = None if shifted else paste(digits, centred_offsets(n, s.canvas), s.canvas)
    for _ in range(epochs):
        x_all = paste(digits, random_offsets(n, s.canvas, gen), s.canvas) if shifted else fixed
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, s.batch_size):
            idx = order[i:i + s.batch_size]
            loss = F.binary_cross_entropy_with_logits(net(x_all[idx])[:, 0], y[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    return time.perf_counter() - t0, n * epochs


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([torch.sigmoid(net(x[i:i + batch])[:, 0]) for i in range(0, len(x), batch)])


@torch.no_grad()
def sliding_window(net: nn.Module, x: torch.Tensor, stride: int, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan each canvas with a network that only knows centred digits.

    Every candidate digit position (on a `stride` grid) is moved to the centre of a canvas
    (one window each; all windows of a chunk of images run as one batch) and the highest
    P(8) wins. Returns (P(8) per image, (N, k, k) map of P(8) per window position).
    """
    n, _, c, _ = x.shape
    pad = (c - DIGIT) // 2
    best, maps = [], []
    for i in range(0, n, chunk):
        xp = F.pad(x[i:i + chunk], (pad, pad, pad, pad))
        win = xp.unfold(2, c, stride).unfold(3, c, stride)          # (b, 1, k, k, c, c)
        b, _, k, _, _, _ = win.shape
        p = torch.sigmoid(net(win.reshape(b * k * k, 1, c, c))[:, 0]).view(b, k, k)
        maps.append(p)
        best.append(p.flatten(1).amax(1))
    return torch.cat(best), torch.cat(maps)


def measure(p8: torch.Tensor, is8: torch.Tensor, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy and the recall/precision on 8s of "P(8) >= threshold"."""
    r = binary_report(is8.numpy(), p8.numpy(), threshold)
    specificity = r["tn"] / max(1, r["tn"] + r["fp"])
    balanced = None if r["recall"] is None else (r["recall"] + specificity) / 2
    return {"accuracy": r["accuracy"], "balanced_accuracy": balanced, "recall_8": r["recall"],
            "precision_8": r["precision"], "n": len(is8), "n_8": int(is8.sum())}


@dataclass
class Row:
    method: str
    trained_on: str
    params: int
    train_images: int
    train_seconds: float
    mmac_per_image: float
    infer_ms_per_image: float = 0.0
    threshold: float = 0.5
    centred: dict = field(default_factory=dict)
    shifted: dict = field(default_factory=dict)
    note: str = ""


# ---------------------------------------------------------------- the experiment

@dataclass
class Result:
    settings: Settings
    data: dict
    rows: list[Row]
    pictures: dict            # arrays for the figure


def run_experiment(mnist: str | Path | None, s: Settings, log=print) -> Result:
    """Train and measure every approach; returns the rows of the table and the figure's pictures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        return _run(mnist, s, log)
    finally:
        torch.set_num_threads(threads)


def _run(mnist: str | Path | None, s: Settings, log) -> Result:
    data = load_mnist(mnist)
    g = np.random.default_rng(s.seed)
    tr_x, tr_y = data["train"]
    te_x, te_y = data["test"]
    tr = g.permutation(len(tr_x))[: s.train_size]
    te = g.permutation(len(te_x))[: s.test_size]
    digits, is8 = torch.from_numpy(tr_x[tr].copy()), torch.from_numpy(tr_y[tr] == TARGET)
    t_digits, t_is8 = torch.from_numpy(te_x[te].copy()), torch.from_numpy(te_y[te] == TARGET)
    if int(is8.sum()) == 0 or int(t_is8.sum()) == 0:
        raise BirdcnnError(f"{mnist}: the sample holds no {TARGET}s; use more digits")
    gen = torch.Generator().manual_seed(s.seed + 1)
    test_centred = paste(t_digits, centred_offsets(len(t_digits), s.canvas), s.canvas)
    test_shifted = paste(t_digits, random_offsets(len(t_digits), s.canvas, gen), s.canvas)
    info = {"source": str(mnist) if mnist else "torchvision download", "train_digits": len(digits),
            "test_digits": len(t_digits), "train_8s": int(is8.sum()), "test_8s": int(t_is8.sum()),
            "canvas": s.canvas, "torch_threads": torch.get_num_threads()}
    log(f"data: {len(digits)} training digits ({int(is8.sum())} 8s), {len(t_digits)} test digits "
        f"({int(t_is8.sum())} 8s), on {s.canvas}x{s.canvas} canvases")

    rows: list[Row] = []
    nets: dict[str, nn.Module] = {}

    def evaluate(row: Row, centred_fn, shifted_fn) -> Row:
        row.centred = measure(centred_fn(test_centred), t_is8, row.threshold)
        t0 = time.perf_counter()
        p = shifted_fn(test_shifted)
        row.infer_ms_per_image = 1000 * (time.perf_counter() - t0) / len(test_shifted)
        row.shifted = measure(p, t_is8, row.threshold)
        log(f"  {row.method:<34} centred bal.acc {row.centred['balanced_accuracy']:.3f}   "
            f"shifted bal.acc {row.shifted['balanced_accuracy']:.3f}   train {row.train_seconds:.1f}s")
        rows.append(row)
        return row

    def fit(key: str, method: str, net: nn.Module, shifted: bool, epochs: int) -> Row:
        log(f"training {method} on {'shifted' if shifted else 'centred'} digits ({epochs} epochs)...")
        seconds, seen = train_net(net, digits, is8, s, epochs, shifted, s.seed + len(rows))
        nets[key] = net
        row = Row(method, "shifted (synthetic)" if shifted else "centred", sum(p.numel() for p in net.parameters()),
                  seen, seconds, macs_per_image(net, s.canvas) / 1e6)
        return evaluate(row, lambda x: predict(net, x), lambda x: predict(net, x))

    torch.manual_seed(s.seed)
    # 1-2. a small dense network, centred digits: fine in the middle, lost elsewhere.
    dense = fit("dense", "dense", dense_net(s.canvas, s.hidden), False, s.epochs)
    # 3. brute force 1: slide it over every position. The best of k*k windows scores higher than one
    # centred look, so the scan gets its own threshold, picked on (shifted) training digits; that
    # scan is counted as training time.
    k = len(range(0, s.canvas - DIGIT + 1, s.window_stride))

    def scan(x: torch.Tensor) -> torch.Tensor:
        return sliding_window(nets["dense"], x, s.window_stride)[0]

    t0 = time.perf_counter()
    cal = torch.randperm(len(digits), generator=gen)[: s.calibration_size]
    cal_scores = scan(paste(digits[cal], random_offsets(len(cal), s.canvas, gen), s.canvas))
    threshold = balanced_threshold(cal_scores, is8[cal])
    evaluate(Row("dense + sliding window", "centred", dense.params, dense.train_images,
                 dense.train_seconds + time.perf_counter() - t0, dense.mmac_per_image * k * k, threshold=threshold,
                 note=f"the dense network above: {k}x{k} windows per image (stride {s.window_stride}), "
                      f"threshold {threshold:.3f} picked on {len(cal)} shifted training digits"), scan, scan)
    # 4. brute force 2: more (synthetic) data, the same network, then a bigger one.
    fit("dense_shifted", "dense", dense_net(s.canvas, s.hidden), True, s.shifted_epochs)
    fit("big_shifted", "bigger dense", dense_net(s.canvas, s.big_hidden), True, s.shifted_epochs)
    # 5. a convolutional network with pooling, trained each way.
    fit("conv", "conv + pooling", conv_net(s.conv_widths), False, s.conv_epochs)
    fit("conv_shifted", "conv + pooling", conv_net(s.conv_widths), True, s.conv_epochs)

    # Pictures for the figure: a shifted 8 and what each approach makes of it.
    eights = torch.nonzero(t_is8).flatten()
    example = int(eights[0])
    _, win_map = sliding_window(nets["dense"], test_shifted[example:example + 1], s.window_stride)
    pictures = {"centred": test_centred[example, 0].numpy(), "shifted": test_shifted[example, 0].numpy(),
                "window_map": win_map[0].numpy(), "window_stride": s.window_stride,
                "looks_dense": _where_it_looks(nets["dense"], s.canvas),
                "looks_big": _where_it_looks(nets["big_shifted"], s.canvas)}
    return Result(s, info, rows, pictures)


def balanced_threshold(scores: torch.Tensor, is8: torch.Tensor) -> float:
    """The threshold with the best balanced accuracy on (scores, labels); 0.5 if there is no choice."""
    fpr, tpr, thresholds = roc_curve(is8.numpy(), scores.numpy())
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else 0.5


def _where_it_looks(net: nn.Sequential, canvas: int) -> np.ndarray:
    """Mean |weight| of the first dense layer per input pixel: the pixels the network can see."""
    w = next(m for m in net.modules() if isinstance(m, nn.Linear)).weight.detach().abs().mean(0)
    return w.view(canvas, canvas).numpy()


# ---------------------------------------------------------------- reporting

def _f(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def format_table(rows: list[Row]) -> str:
    head = (f"{'method':<24} {'trained on':<20} {'params':>8} {'train imgs':>10} {'train s':>8} {'infer ms/img':>12} "
            f"{'MMAC/img':>9} | {'centred acc':>11} {'bal.acc':>7} | "
            f"{'shifted acc':>11} {'bal.acc':>7} {'8-recall':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.method:<24} {r.trained_on:<20} {r.params:>8,} {r.train_images:>10,} {r.train_seconds:>8.1f} "
                     f"{r.infer_ms_per_image:>12.3f} {r.mmac_per_image:>9.2f} | {_f(r.centred['accuracy']):>11} "
                     f"{_f(r.centred['balanced_accuracy']):>7} | {_f(r.shifted['accuracy']):>11} "
                     f"{_f(r.shifted['balanced_accuracy']):>7} {_f(r.shifted['recall_8']):>8}")
    return "\n".join(lines)


def _label(r: Row) -> str:
    return f"{r.method.replace(' + ', ' +' + chr(10))}\n({r.trained_on.split(' ')[0]})"


def figure(res: Result):
    import matplotlib.pyplot as plt

    pic, rows, c = res.pictures, res.rows, res.settings.canvas
    fig = plt.figure(figsize=(17, 9))
    gs = fig.add_gridspec(2, 4, height_ratios=[1, 1.15], hspace=0.45, wspace=0.3)

    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(np.concatenate([pic["centred"], np.ones((c, 2)), pic["shifted"]], 1), cmap="gray")
    ax.set_title("an 8: centred (training) | moved (test)", fontsize=10)
    ax.axis("off")

    for j, (key, title) in enumerate((("looks_dense", "dense net trained on centred digits:\nthe pixels it looks at"),
                                       ("looks_big", "bigger dense net trained on shifted\ndigits: looks everywhere"))):
        ax = fig.add_subplot(gs[0, 1 + j])
        ax.imshow(pic[key], cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.axis("off")

    from matplotlib.patches import Rectangle

    left, right = gs[0, 3].subgridspec(1, 2, wspace=0.1)
    wm, stride = pic["window_map"], pic["window_stride"]
    r, q = np.unravel_index(int(wm.argmax()), wm.shape)
    ax = fig.add_subplot(left)
    ax.imshow(pic["shifted"], cmap="gray")
    ax.add_patch(Rectangle((q * stride - 0.5, r * stride - 0.5), DIGIT, DIGIT, fill=False, ec="lime", lw=1.5))
    ax.set_title(f"sliding window:\nbest of {wm.size} windows", fontsize=10)
    ax.axis("off")
    ax = fig.add_subplot(right)
    ax.imshow(wm, cmap="viridis", vmin=0, vmax=1)
    ax.set_title(f"P(8) per window\n(max {wm.max():.2f})", fontsize=10)
    ax.axis("off")

    ax = fig.add_subplot(gs[1, :2])
    x = np.arange(len(rows))
    cen = [r.centred["balanced_accuracy"] or 0 for r in rows]
    sh = [r.shifted["balanced_accuracy"] or 0 for r in rows]
    ax.bar(x - 0.2, cen, 0.4, label="centred test digits")
    ax.bar(x + 0.2, sh, 0.4, label="moved test digits")
    for xi, (a, b) in enumerate(zip(cen, sh)):
        ax.text(xi - 0.2, a + 0.01, f"{a:.2f}", ha="center", fontsize=8)
        ax.text(xi + 0.2, b + 0.01, f"{b:.2f}", ha="center", fontsize=8)
    ax.axhline(0.5, color="k", ls=":", lw=1)
    ax.text(len(rows) - 0.5, 0.51, "chance", fontsize=8, ha="right")
    ax.set_xticks(x, [_label(r) for r in rows], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("balanced accuracy, 8 vs not 8")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("does it still find the 8 when the 8 moves?", fontsize=10)

    ax = fig.add_subplot(gs[1, 2:])
    ax.bar(x - 0.2, [r.train_seconds for r in rows], 0.4, label="training (s)", color="tab:green")
    ax.bar(x + 0.2, [r.infer_ms_per_image for r in rows], 0.4, label="inference (ms per image)", color="tab:purple")
    ax.set_yscale("log")
    ax.set_xticks(x, [_label(r) for r in rows], fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("the price: time (measured, log scale)", fontsize=10)
    fig.suptitle(f"Tunnel vision on MNIST: {res.data['train_digits']} training and "
                 f"{res.data['test_digits']} test digits on {c}x{c} canvases", fontsize=12)
    return fig


def write_results(res: Result, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(res.rows)
    payload = {"experiment": "tunnel-vision", "settings": asdict(res.settings), "data": res.data,
               "rows": [asdict(r) for r in res.rows], "table": table}
    files = {"json": out / "results.json", "table": out / "table.txt", "figure": out / "tunnel_vision.png"}
    write_text(files["json"], json.dumps(payload, indent=2) + "\n")
    write_text(files["table"], table + "\n")
    save_figure(figure(res), files["figure"], dpi=100, bbox_inches="tight")
    return files


# ---------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mnist", metavar="DIR",
                   help="folder with the four MNIST IDX files (.gz or not); default: download")
    p.add_argument("--out", metavar="DIR", help="results folder (default: runs/tunnel-vision-DATE)")
    p.add_argument("--quick", action="store_true", help="tiny settings that run in seconds (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: steadier, comparable timings)")
    p.add_argument("--train-size", type=int,
                   help=f"training digits (default {Settings.train_size:,}, or all there are)")
    p.add_argument("--test-size", type=int, help=f"test digits (default {Settings.test_size:,}, or all there are)")


def run(args: argparse.Namespace) -> int:
    from ..runs import default_run_dir

    if args.threads < 1:
        raise BirdcnnError("--threads must be at least 1")
    s = replace(QUICK if args.quick else Settings(), seed=args.seed, threads=args.threads)
    for name in ("train_size", "test_size"):
        value = getattr(args, name)
        if value is not None:
            if value < 10:
                raise BirdcnnError(f"--{name.replace('_', '-')} must be at least 10")
            s = replace(s, **{name: value})
    out = Path(args.out) if args.out else default_run_dir("tunnel-vision")
    if out.exists() and not out.is_dir():
        raise BirdcnnError(f"{out}: exists and is not a folder (--out)")
    res = run_experiment(args.mnist, s, log=lambda m: print(m, file=sys.stderr))
    files = write_results(res, out)
    print(format_table(res.rows))
    print(f"\nwrote {files['figure']}, {files['json'].name} and {files['table'].name}")
    return 0
