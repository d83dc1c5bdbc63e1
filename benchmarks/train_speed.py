"""Training throughput and how far it is from this machine's limit, in ONE run.

1. Speed: a typical PyTorch pipeline vs birdcnn's, same network, same steps.
   (a) typical: torchvision ImageFolder over the JPEG files, per-image transforms (RandomCrop with
       2 px reflect padding, RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader with 2
       workers, float32, default memory format, as most tutorials write it.
   (b) birdcnn: decoded uint8 arrays in memory, batched tensor augmentation (same flip + 2 px
       shift), channels_last, using birdcnn.train's own training_step, in the precision birdcnn
       trains with here: bf16 autocast where the CPU computes bf16 natively (`devices.fast_bf16`),
       else float32; on such a CPU also (b) with bf16 forced (emulated), to show what it would cost.
       Freed memory is reused as in birdcnn's training loop (`birdcnn.heap`); (b) is also timed
       with glibc's default malloc, which unmaps large freed blocks and faults them in again.
   (c) fp32 in memory: (b)'s data path with plain float32 and the default memory format, which
       separates what bf16 gains from what the data path gains.
2. The limit: the peak matrix-multiply throughput of this machine (torch.matmul on large square
   matrices, bf16 and fp32, the training's thread count, 2*n^3 FLOPs per matmul, best repeat).
3. FLOPs: the training step's model FLOPs (forward + backward) counted by FlopCounterMode on one
   real batch, and each pipeline's achieved FLOP/s as a fraction of the peak of its precision.
4. Where the time goes: torch.profiler over a few steps of (b), grouped by kind of work.
5. Each 3x3 convolution alone: forward and both halves of its backward, bf16 and fp32, against the peak.

    python benchmarks/train_speed.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--steps 20] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets, transforms

from birdcnn.augment import Augment
from birdcnn.data import load_split
from birdcnn.devices import fast_bf16
from birdcnn.heap import reuse_freed_memory
from birdcnn.models import build
from birdcnn.train import TrainConfig, make_optimizer, training_step

from common import SHARED, print_machine_facts, print_summary

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cpu_seconds() -> tuple[float, float]:
    """(CPU-seconds the whole machine has been busy, CPU-seconds of this process and its reaped children):
    their difference over a run is what other processes took from it."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    own = sum(getattr(resource.getrusage(who), k) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for k in ("ru_utime", "ru_stime"))
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own


class Phases:
    """Wall seconds of each phase of the run and the share of the cores other processes took meanwhile."""

    def __init__(self):
        self.rows, self.t, self.cpu = [], time.perf_counter(), cpu_seconds()
        self.t0, self.cpu0 = self.t, self.cpu

    @staticmethod
    def _others(cpu0, cpu1, seconds) -> float:
        return max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / max(seconds, 1e-9)

    def done(self, name: str) -> None:
        t, cpu = time.perf_counter(), cpu_seconds()
        self.rows.append([name, f"{t - self.t:.0f}", f"{self._others(self.cpu, cpu, t - self.t):.2f}"])
        self.t, self.cpu = t, cpu

    def total(self) -> tuple[float, float]:
        """(wall seconds, other processes' cores) of the whole run so far."""
        t = time.perf_counter() - self.t0
        return t, self._others(self.cpu0, cpu_seconds(), t)


def table(headers: list[str], rows: list[list], title: str = "") -> None:
    """Print a plain text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    if title:
        print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))


# ---------------------------------------------------------------- the limit: GEMM peak

def gemm_tflops(n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best-of-`repeats` TFLOP/s of one n x n @ n x n torch.matmul (2*n^3 FLOPs)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up: oneDNN/MKL pick and cache their kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def conv_shapes(net: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, tuple, tuple]]:
    """(name, input shape, weight shape) of every 3x3 convolution of `net` on input `x`."""
    found, hooks = [], []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
            hooks.append(m.register_forward_hook(
                lambda m, inp, out, name=name: found.append((name, tuple(inp[0].shape), tuple(m.weight.shape)))))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return found


def conv_parts_ms(x_shape: tuple, w_shape: tuple, dtype: torch.dtype, fmt, repeats: int) -> list[float]:
    """Best-of-`repeats` milliseconds of one 3x3 'same' convolution's forward, gradient w.r.t. its
    input and gradient w.r.t. its weight (the two halves of convolution_backward)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g).to(dtype).contiguous(memory_format=fmt)
    w = (torch.randn(w_shape, generator=g) * 0.05).to(dtype).contiguous(memory_format=fmt)
    go = F.conv2d(x, w, padding=1)
    ops = [lambda: F.conv2d(x, w, padding=1)] + [
        lambda mask=mask: torch.ops.aten.convolution_backward(go, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0],
                                                              1, mask)
        for mask in ([True, False, False], [False, True, False])]
    out = []
    for op in ops:
        op()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            op()
            best = min(best, time.perf_counter() - t0)
        out.append(best * 1e3)
    return out


# ---------------------------------------------------------------- the pipelines

def typical(folder: Path, cfg: TrainConfig, steps: int, warmup: int) -> float:
    """(a): seconds per step."""
    tf = transforms.Compose([transforms.RandomCrop(32, padding=2, padding_mode="reflect"),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = DataLoader(datasets.ImageFolder(folder, tf), batch_size=cfg.batch_size, shuffle=True,
                        num_workers=2, drop_last=True, persistent_workers=True)
    net = build(cfg.arch, 10)
    opt = make_optimizer(net, cfg)
    cfg32 = TrainConfig(**{**cfg.__dict__, "bf16": False})
    off = torch.autocast("cpu", enabled=False)
    it = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = next(it)
        training_step(net, opt, x, y, cfg32, lambda: off)
    return (time.perf_counter() - t0) / steps


class InMemory:
    """(b) (channels_last, bf16 autocast or float32) or (c) (bf16=False, channels_last=False: fp32, default format):
    uint8 images in memory, indexed and normalised per batch, batched augmentation, birdcnn's training_step.
    Each part of a step runs in a record_function range, so the profiler can tell them apart."""

    def __init__(self, ds, cfg: TrainConfig, bf16: bool, num_classes: int = 10, compile: bool = False,
                 channels_last: bool = True, reuse_heap: bool = True):
        self.images, self.labels = torch.from_numpy(ds.images), torch.from_numpy(ds.labels)
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD).view(1, 3, 1, 1) * 255
        self.cfg = TrainConfig(**{**cfg.__dict__, "bf16": bf16})
        self.bf16, self.num_classes = bf16, num_classes
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.aug = Augment(**cfg.augment)
        self.net = build(cfg.arch, num_classes).to(memory_format=self.format)
        self.opt = make_optimizer(self.net, cfg)
        self.model = torch.compile(self.net) if compile else self.net
        self.g = torch.Generator().manual_seed(0)
        self.reuse_heap = reuse_heap

    def heap(self):
        """As birdcnn's training loop, freed memory is reused (`birdcnn.heap`); reuse_heap=False: glibc's defaults."""
        return reuse_freed_memory() if self.reuse_heap else contextlib.nullcontext()

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        with record_function("bench: data indexing + normalisation"):
            idx = torch.randint(0, len(self.labels), (self.cfg.batch_size,), generator=self.g)
            x = ((self.images[idx].permute(0, 3, 1, 2).float() - self.mean) / self.std).contiguous(
                memory_format=self.format)
            y = self.labels[idx] % self.num_classes
        with record_function("bench: augmentation"):
            x = self.aug(x, self.g)
        return x, y

    def step(self) -> float:
        """One whole step; returns the seconds spent in training_step (network + optimizer)."""
        x, y = self.batch()
        t0 = time.perf_counter()
        with record_function("bench: training_step"):
            training_step(self.model, self.opt, x, y, self.cfg, self.autocast)
        return time.perf_counter() - t0

    def time(self, steps: int, warmup: int) -> tuple[float, float]:
        """Seconds per whole step and per training_step."""
        with self.heap():
            for _ in range(warmup):
                self.step()
            t0, inner = time.perf_counter(), 0.0
            for _ in range(steps):
                inner += self.step()
            return (time.perf_counter() - t0) / steps, inner / steps

    def count_flops(self) -> tuple[int, dict[str, int]]:
        """Model FLOPs of one training step on one real batch (forward + backward; the optimizer's
        element-wise work is not counted), in total and per aten op."""
        x, y = self.batch()
        with FlopCounterMode(display=False) as fc:
            training_step(self.model, self.opt, x, y, self.cfg, self.autocast)
        return fc.get_total_flops(), {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}


# ---------------------------------------------------------------- where the time goes

REGIONS = {"bench: data indexing + normalisation": "data indexing + normalisation",
           "bench: augmentation": "augmentation (birdcnn.augment)"}
CATEGORIES = ["convolution forward", "convolution backward", "BatchNorm (fwd + bwd)", "GELU (fwd + bwd)",
              "pooling (fwd + bwd)", "bf16 casts (autocast)", "optimizer step + zero_grad",
              "augmentation (birdcnn.augment)", "data indexing + normalisation",
              "other ops (loss, linear, grad accumulation, ...)", "Python between ops (untraced)"]


def op_category(name: str) -> str | None:
    low = name.lower()
    if "convolution" in low or low == "aten::conv2d":
        return "convolution backward" if "backward" in low else "convolution forward"
    if "batch_norm" in low or "batchnorm" in low:
        return "BatchNorm (fwd + bwd)"
    if "gelu" in low:
        return "GELU (fwd + bwd)"
    if "pool" in low:
        return "pooling (fwd + bwd)"
    if low in ("aten::to", "aten::_to_copy") or "tocopybackward" in low:
        return "bf16 casts (autocast)"
    return None


def classify(ev) -> str:
    """The kind of work of one profiled op: the region it runs in (data, augmentation, optimizer),
    else the first recognised op name on its way up the call tree (itself first), else 'other'."""
    chain, e = [], ev
    while e is not None:
        chain.append(e.name)
        e = e.cpu_parent
    for name in chain:
        if name in REGIONS:
            return REGIONS[name]
        if name.startswith("Optimizer.step") or name.startswith("Optimizer.zero_grad"):
            return "optimizer step + zero_grad"
    for name in chain:
        cat = op_category(name)
        if cat:
            return cat
    return "other ops (loss, linear, grad accumulation, ...)"


def breakdown(pipe: InMemory, steps: int, warmup: int) -> tuple[dict[str, float], float, dict[str, float]]:
    """Profile `steps` whole steps: milliseconds per step by category, the profiled wall time per
    step, and the biggest op names that fell into 'other'."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:  # kineto prints start/stop lines (and a CUDA probe error) on stderr: not ours to show
        os.dup2(devnull, 2)
        with pipe.heap():
            for _ in range(warmup):
                pipe.step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                for _ in range(steps):
                    pipe.step()
                wall = (time.perf_counter() - t0) / steps * 1e3
        events = prof.events()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    ms, other = defaultdict(float), defaultdict(float)
    for ev in events:
        if ev.name.startswith("bench: ") or ev.name.startswith("Optimizer."):
            # a range, not an op: its own time is Python between ops, which belongs to its region
            if ev.name in REGIONS or ev.name.startswith("Optimizer."):
                ms[classify(ev)] += ev.self_cpu_time_total / 1e3 / steps
            continue
        cat = classify(ev)
        ms[cat] += ev.self_cpu_time_total / 1e3 / steps
        if cat.startswith("other"):
            other[ev.name] += ev.self_cpu_time_total / 1e3 / steps
    ms["Python between ops (untraced)"] = max(0.0, wall - sum(ms.values()))
    return dict(ms), wall, dict(sorted(other.items(), key=lambda kv: -kv[1])[:6])


# ---------------------------------------------------------------- the run

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--arch", default="fast")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per pipeline")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--gemm-sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--gemm-repeats", type=int, default=5)
    ap.add_argument("--conv-repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time (b) with torch.compile (inductor)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 timed steps, 1 warm-up, 2 profiled, 1024-2048 GEMMs, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.warmup, args.profile_steps = 3, 1, 2
        args.gemm_sizes, args.gemm_repeats, args.conv_repeats = [1024, 2048], 2, 1
    facts = print_machine_facts()
    threads = torch.get_num_threads()
    load_start, phases = os.getloadavg()[0], Phases()
    cfg = TrainConfig(data=args.data, arch=args.arch, batch_size=args.batch_size).resolved()
    bs = cfg.batch_size
    print(f"{args.arch} network, batch {bs}, 32 px, {args.steps} timed steps after {args.warmup} warm-up steps "
          f"per pipeline, {threads} torch threads{' (quick smoke run)' if args.quick else ''}; "
          f"1-min load average at start {load_start:.2f} on {os.cpu_count()} cores", flush=True)

    # The limit, measured at the start and again at the end of the run (the best counts), so that
    # a moment of contention from another process cannot make the peak look low.
    gemm: dict[tuple[str, int], list[float]] = defaultdict(list)

    def measure_gemm(when: str) -> None:
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            for n in args.gemm_sizes:
                gemm[(name, n)].append(gemm_tflops(n, dtype, args.gemm_repeats))
        phases.done(f"GEMM peak ({when})")
    measure_gemm("start")

    # FLOPs per step (bf16 and fp32 steps do the same arithmetic)
    ds = load_split(args.data, "train")
    native = fast_bf16(torch.device("cpu"))
    b_prec = "bf16" if native else "fp32"
    print(f"birdcnn trains in {b_prec} here (bf16 only where the CPU computes it natively)", flush=True)
    b_pipe = InMemory(ds, cfg, bf16=native)
    flops, by_op = b_pipe.count_flops()
    flops_283, _ = InMemory(ds, cfg, bf16=native, num_classes=283).count_flops()
    phases.done("load data, count FLOPs")

    # speed
    b_step, b_inner = b_pipe.time(args.steps, args.warmup)
    print(f"(b) birdcnn (uint8 in memory, batched augmentation, {b_prec}, channels_last):  {bs / b_step:8.0f} images/s",
          flush=True)
    phases.done("(b) birdcnn")
    d_step, _ = InMemory(ds, cfg, bf16=native, reuse_heap=False).time(args.steps, args.warmup)
    print(f"(b) with glibc's default malloc (freed blocks unmapped, faulted in again): {bs / d_step:5.0f} images/s",
          flush=True)
    phases.done("(b) with glibc's default malloc")
    e_step = None
    if not native:
        e_step, _ = InMemory(ds, cfg, bf16=True).time(args.steps, args.warmup)
        print(f"(b) with bf16 forced (emulated on this CPU):                             {bs / e_step:8.0f} images/s",
              flush=True)
        phases.done("(b) with bf16 forced")
    c_step = None
    if args.compile:
        c_step, _ = InMemory(ds, cfg, bf16=native, compile=True).time(args.steps, args.warmup)
        print(f"(b) with torch.compile:                                                 {bs / c_step:8.0f} images/s",
              flush=True)
        phases.done("(b) with torch.compile")
    f_step, f_inner = InMemory(ds, cfg, bf16=False, channels_last=False).time(args.steps, args.warmup)
    print(f"(c) fp32 in memory (as (b), fp32, default memory format):                {bs / f_step:8.0f} images/s",
          flush=True)
    phases.done("(c) fp32 in memory")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.data) as tar:
            tar.extractall(tmp, filter="data")
        a_step = typical(Path(tmp) / "train", cfg, args.steps, args.warmup)
    print(f"(a) typical (ImageFolder + per-image transforms, DataLoader x2, fp32):    {bs / a_step:8.0f} images/s",
          flush=True)
    print(f"speed-up (b)/(a): {a_step / b_step:.2f}x", flush=True)
    phases.done("(a) typical (with extracting the JPEGs)")

    # where the time goes; each convolution alone
    ms, wall, other = breakdown(b_pipe, args.profile_steps, 1)
    phases.done("profile (b)")
    x, _ = b_pipe.batch()
    convs = []
    for name, xs, ws in conv_shapes(b_pipe.net, x):
        convs.append((name, xs, ws, conv_parts_ms(xs, ws, torch.bfloat16, torch.channels_last, args.conv_repeats),
                      conv_parts_ms(xs, ws, torch.float32, torch.contiguous_format, args.conv_repeats)))
    phases.done("each convolution alone")
    measure_gemm("end")
    run_seconds, others = phases.total()

    # ---- the tables
    peak = {name: max(max(v) for (nm, _), v in gemm.items() if nm == name) for name in ("bf16", "fp32")}
    table(["dtype", "n", "GFLOP per matmul", "GFLOP/s at start", "GFLOP/s at end"],
          [[name, n, f"{2 * n ** 3 / 1e9:.1f}", *(f"{v * 1e3:.0f}" for v in vals)] for (name, n), vals in gemm.items()],
          f"Peak matrix multiply: torch.matmul n x n @ n x n, {threads} threads, best of {args.gemm_repeats}, "
          "at the start and at the end of the run")
    print(f"peak: bf16 {peak['bf16'] * 1e3:.0f} GFLOP/s, fp32 {peak['fp32'] * 1e3:.0f} GFLOP/s "
          f"(bf16/fp32 = {peak['bf16'] / peak['fp32']:.2f}x)")

    flop_rows = [[op, f"{v / bs / 1e6:.1f}", f"{100 * v / flops:.1f}%"]
                 for op, v in sorted(by_op.items(), key=lambda kv: -kv[1])]
    flop_rows.append(["total, 10 classes", f"{flops / bs / 1e6:.1f}", "100.0%"])
    flop_rows.append(["total, 283 classes", f"{flops_283 / bs / 1e6:.1f}", ""])
    table(["op (forward + backward)", "MFLOP per image", "share"], flop_rows,
          "Model FLOPs of one training step (FlopCounterMode, one real batch, forward + backward)")
    # A 3x3 'same' convolution over s px has 3s - 2 of its 3s taps per row inside the image: the
    # rest multiply the zero padding, counted above but skippable by the convolution kernels.
    conv_gflop = [2 * xs[0] * ws[0] * ws[1] * 9 * xs[2] * xs[3] / 1e9 for _, xs, ws, _, _ in convs]
    inside = [((3 * xs[2] - 2) / (3 * xs[2])) * ((3 * xs[3] - 2) / (3 * xs[3])) for _, xs, _, _, _ in convs]
    padding_share = 1 - sum(g * f for g, f in zip(conv_gflop, inside)) / sum(conv_gflop)
    print(f"of the 3x3 convolutions' FLOPs, {100 * padding_share:.0f}% multiply zero padding "
          f"(3 px layer: {100 * (1 - inside[-1]):.0f}%, 7 px: {100 * (1 - inside[-2]):.0f}%)")

    def row(label, s, prec):
        achieved = flops / s / 1e12
        return [label, f"{s * 1e3:.0f}", f"{bs / s:.0f}", f"{achieved * 1e3:.0f}", prec,
                f"{peak[prec] * 1e3:.0f}", f"{100 * achieved / peak[prec]:.0f}%"]
    rows = [row("(b) birdcnn, whole step", b_step, b_prec),
            row("(b) birdcnn, training_step only", b_inner, b_prec),
            row("(b) with glibc's default malloc, whole step", d_step, b_prec),
            row("(c) fp32 in memory, whole step", f_step, "fp32"),
            row("(c) fp32 in memory, training_step only", f_inner, "fp32"),
            row("(a) typical, whole step", a_step, "fp32")]
    if c_step:
        rows.insert(2, row("(b) with torch.compile, whole step", c_step, b_prec))
    if e_step:
        rows.insert(2, row("(b) with bf16 forced (emulated), whole step", e_step, "bf16"))
    table(["pipeline", "ms/step", "images/s", "achieved GFLOP/s", "vs", "peak GFLOP/s", "of peak"], rows,
          f"Achieved model FLOP/s = {flops / 1e9:.0f} GFLOP per step / seconds per step")

    prow = [[cat, f"{ms.get(cat, 0.0):.0f}", f"{100 * ms.get(cat, 0.0) / wall:.1f}%"] for cat in CATEGORIES]
    prow.append(["whole step (profiled)", f"{wall:.0f}", "100.0%"])
    table(["(b) birdcnn step, by kind of work", "ms/step", "of step"], prow,
          f"Where the time goes: torch.profiler, {args.profile_steps} steps of (b) "
          f"(unprofiled: {b_step * 1e3:.0f} ms/step)")
    print("largest 'other' ops, ms/step: " + ", ".join(f"{k} {v:.1f}" for k, v in other.items()))

    crow, totals = [], defaultdict(lambda: [0.0, 0.0])
    for name, xs, ws, t_bf16, t_fp32 in convs:
        gflop = 2 * xs[0] * ws[0] * ws[1] * 9 * xs[2] * xs[3] / 1e9  # per part: forward = each gradient
        cells = [f"{name} {ws[1]}->{ws[0]} @{xs[2]}px", f"{gflop:.1f}"]
        for prec, times in (("bf16", t_bf16), ("fp32", t_fp32)):
            for part, t in zip(("fwd", "dx", "dw"), times):
                cells.append(f"{t:.0f} ({100 * gflop / t / peak[prec]:.0f}%)")
                totals[(prec, part)][0] += t
                totals[(prec, part)][1] += gflop
        crow.append(cells)
    crow.append(["all 3x3 convolutions", f"{totals[('bf16', 'fwd')][1]:.1f}"]
                + [f"{t:.0f} ({100 * g / t / peak[prec]:.0f}%)" for (prec, _), (t, g) in totals.items()])
    table([f"layer (batch {bs})", "GFLOP/part"] + [f"{p} {part} ms" for p in ("bf16", "fp32")
                                                   for part in ("fwd", "dx", "dw")], crow,
          "Each convolution alone: ms (share of its precision's GEMM peak); bf16 channels_last as (b), fp32 as (c);"
          "\nfwd = forward, dx = gradient w.r.t. input, dw = gradient w.r.t. weight (backward = dx + dw);"
          "\nover 100%: the counted FLOPs include the zero padding, and oneDNN's kernels beat torch.matmul")

    fractions = [flops / b_step / 1e12 / peak[b_prec], flops / f_step / 1e12 / peak["fp32"]]
    table(["phase", "seconds", f"other processes' cores (of {os.cpu_count()})"],
          phases.rows + [["whole run", f"{run_seconds:.0f}", f"{others:.2f}"]],
          f"Contention: CPU other processes took during each phase (1-min load average before: {load_start:.2f})")
    if (native and peak["bf16"] < 1.2 * peak["fp32"]) or max(fractions) > 1 or others > 0.1 * os.cpu_count():
        print("WARNING: the machine was busy (other processes) or a measurement was disturbed: "
              "bf16 peak should be ~2x fp32 where bf16 is native, and no fraction of peak above 100%; "
              "treat these figures as contended.")

    print_summary({"benchmark": "train_speed", "arch": args.arch, "batch_size": bs, "steps": args.steps,
                   "quick": args.quick, "typical_images_per_s": round(bs / a_step, 1),
                   "birdcnn_images_per_s": round(bs / b_step, 1), "fp32_in_memory_images_per_s": round(bs / f_step, 1),
                   "speedup": round(a_step / b_step, 2),
                   **({"compiled_images_per_s": round(bs / c_step, 1)} if c_step else {}),
                   "peak_gflops_bf16": round(peak["bf16"] * 1e3, 1), "peak_gflops_fp32": round(peak["fp32"] * 1e3, 1),
                   "mflop_per_image": round(flops / bs / 1e6, 1), "mflop_per_image_283": round(flops_283 / bs / 1e6, 1),
                   "conv_padding_flop_share": round(padding_share, 3),
                   "birdcnn_precision": b_prec, "birdcnn_fraction_of_peak": round(fractions[0], 3),
                   **({"bf16_forced_images_per_s": round(bs / e_step, 1)} if e_step else {}),
                   "fp32_fraction_of_fp32_peak": round(fractions[1], 3),
                   "typical_fraction_of_fp32_peak": round(flops / a_step / 1e12 / peak["fp32"], 3),
                   "profile_ms_per_step": {k: round(v, 1) for k, v in ms.items()},
                   "seconds": round(run_seconds), "other_processes_cores": round(others, 2),
                   "load_average_before": round(load_start, 2), **facts})


if __name__ == "__main__":
    main()
