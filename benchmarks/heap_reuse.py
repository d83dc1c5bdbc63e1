"""What glibc's malloc costs a training step, and what `birdcnn.heap.reuse_freed_memory` saves.

    python benchmarks/heap_reuse.py [--sizes 32 40] [--batch-size 1024] [--steps 4] [--rounds 2]

Each measurement is a fresh process (so memory figures are its own) running birdcnn's
training_step on the default network (283 classes, as the shipped model) for --steps timed steps
after 2 warm-up steps, once with glibc's defaults and once inside reuse_freed_memory(), the two
alternating for --rounds rounds so that a busy moment of the machine falls on both. Printed: images
per second, CPU seconds in user space and in the kernel, page faults, and peak resident memory.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time

from common import print_machine_facts, print_summary


def child(mode: str, size: int, batch: int, steps: int) -> dict:
    import torch

    from birdcnn.devices import fast_bf16
    from birdcnn.heap import reuse_freed_memory
    from birdcnn.models import build
    from birdcnn.train import TrainConfig, make_optimizer, training_step

    cfg = TrainConfig(data="", batch_size=batch).resolved()
    net = build("fast", 283).to(memory_format=torch.channels_last)
    opt = make_optimizer(net, cfg)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 283, (batch,))
    bf16 = fast_bf16(torch.device("cpu"))

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    with reuse_freed_memory() if mode == "reuse" else contextlib.nullcontext():
        for _ in range(2):
            training_step(net, opt, x, y, cfg, autocast)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            training_step(net, opt, x, y, cfg, autocast)
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "size": size, "images_per_second": steps * batch / dt,
            "user_s": r1.ru_utime - r0.ru_utime, "kernel_s": r1.ru_stime - r0.ru_stime,
            "page_faults": r1.ru_minflt - r0.ru_minflt, "peak_rss_gb": r1.ru_maxrss / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 40])
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.batch_size, args.steps)))
        return
    print_machine_facts()
    print(f"fast network, 283 classes, batch {args.batch_size}, {args.steps} timed steps per process")
    print(f"{'size':>4}  {'malloc':<24}  {'images/s':>8}  {'user s':>6}  {'kernel s':>8}  {'page faults':>11}  "
          f"{'peak GB':>7}")
    rows = []
    for size in args.sizes:
        for _ in range(args.rounds):
            for mode in ("default", "reuse"):
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(size), "--batch-size",
                                      str(args.batch_size), "--steps", str(args.steps)],
                                     capture_output=True, text=True, check=True).stdout
                r = json.loads(out.splitlines()[-1])
                rows.append(r)
                label = "glibc defaults" if mode == "default" else "reuse_freed_memory()"
                print(f"{size:>4}  {label:<24}  {r['images_per_second']:>8.0f}  {r['user_s']:>6.1f}  "
                      f"{r['kernel_s']:>8.1f}  {r['page_faults']:>11,}  {r['peak_rss_gb']:>7.2f}", flush=True)
    summary = {}
    for size in args.sizes:
        for mode in ("default", "reuse"):
            best = max(r["images_per_second"] for r in rows if r["size"] == size and r["mode"] == mode)
            summary[f"{mode}_{size}px_images_per_second"] = round(best, 1)
        gain = summary[f"reuse_{size}px_images_per_second"] / summary[f"default_{size}px_images_per_second"]
        print(f"{size} px: best of {args.rounds}, reuse / default = {gain:.2f}x")
    print_summary(summary)


if __name__ == "__main__":
    main()
