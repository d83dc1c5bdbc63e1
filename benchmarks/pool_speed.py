"""Inference max-pooling: PyTorch's CPU kernel against `birdcnn.models.MaxPool`'s strided slices.

    python benchmarks/pool_speed.py [--batch 256] [--size 40] [--repeats 20]

On the pooled maps of the fast network at a `--size`-px view (bf16 and fp32, channels_last,
no gradient), it checks that both give the same values and times them; then times the shipped
network's forward pass with each (its `MaxPool` modules switched to the kernel for the second).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from birdcnn.modelfile import load_model
from birdcnn.models import MaxPool

from common import print_machine_facts, print_summary


def best_ms(fn, x: torch.Tensor, repeats: int) -> float:
    """Fastest of `repeats` calls, in ms (the least disturbed by other work on the machine)."""
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


class KernelPool(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="images per batch (search scores 256)")
    ap.add_argument("--size", type=int, default=40, help="the view in px (the shipped model's: 40)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(None)
    net = clf.net
    # The maps the network pools: each group's first convolution's output (the whitening conv takes 1 px off).
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    maps, hooks = [], [m.register_forward_pre_hook(lambda m, a: maps.append(a[0].clone()))
                       for m in net.modules() if isinstance(m, MaxPool)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    for h in hooks:
        h.remove()
    rows, pool = [], MaxPool()
    print(f"{'map (batch, channels, h, w)':<30} {'dtype':<9} {'kernel ms':>9} {'slices ms':>9} {'speed-up':>8}")
    with torch.no_grad():
        for m in maps:
            for dtype in (torch.bfloat16, torch.float32):
                y = m.to(dtype).contiguous(memory_format=torch.channels_last)
                same = torch.equal(F.max_pool2d(y, 2), pool(y))
                k, s = best_ms(lambda t: F.max_pool2d(t, 2), y, args.repeats), best_ms(pool, y, args.repeats)
                name, flag = str(tuple(y.shape)), "" if same else "  DIFFERENT"
                print(f"{name:<30} {str(dtype)[6:]:<9} {k:9.2f} {s:9.2f} {k / s:7.2f}x{flag}")
                rows.append({"shape": list(y.shape), "dtype": str(dtype)[6:], "kernel_ms": round(k, 3),
                             "slices_ms": round(s, 3), "same": same})

    def forward(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(t)

    with_slices = best_ms(forward, x, args.repeats)
    out = forward(x)
    for name, m in list(net.named_modules()):
        if isinstance(m, MaxPool):
            parent, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent), attr, KernelPool())
    with_kernel = best_ms(forward, x, args.repeats)
    same_logits = torch.equal(out, forward(x))
    print(f"shipped network, {args.batch} x {args.size} px, bf16, {torch.get_num_threads()} threads: "
          f"{with_kernel / args.batch:.3f} ms/image with the kernel, {with_slices / args.batch:.3f} with the slices "
          f"({with_kernel / with_slices:.2f}x); logits identical: {same_logits}")
    print_summary({"benchmark": "pool_speed", "batch": args.batch, "size": args.size, "maps": rows,
                   "network_ms_per_image_kernel": round(with_kernel / args.batch, 4),
                   "network_ms_per_image_slices": round(with_slices / args.batch, 4),
                   "same_logits": same_logits, **facts})


if __name__ == "__main__":
    main()
