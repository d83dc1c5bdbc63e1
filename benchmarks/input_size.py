"""What a larger input or a wider network would cost: the fast network's time per photo at 32, 48 and 64 px.

Search gives the network one thread (the other core decodes JPEGs), so that is measured, with
the flip pair search averages, batch 256; and the training step (forward + backward, batch 1024,
2 threads), which sets how many images an hour of training sees. Both in bf16 where the processor
computes it natively, float32 elsewhere (as birdcnn runs).

    python benchmarks/input_size.py [--sizes 32 48 64]
    python benchmarks/input_size.py --sizes 32 40 --widths 64,256,256 80,320,320 96,384,384
    python benchmarks/input_size.py --sizes 64 80 --stem-stride 2
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from birdcnn.devices import fast_bf16
from birdcnn.models import build

from common import print_machine_facts, print_summary


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    ap.add_argument("--widths", nargs="+", default=["64,256,256"], help="channel widths to compare (train --widths)")
    ap.add_argument("--stem-stride", type=int, choices=(1, 2), default=1, help="train --stem-stride")
    args = ap.parse_args()
    facts = print_machine_facts()
    bf16 = fast_bf16(torch.device("cpu"))
    print(f"precision: {'bf16 autocast' if bf16 else 'float32 (no native bf16 here)'}")
    summary = {"benchmark": "input_size", "bf16": bf16, "stem_stride": args.stem_stride, **facts}
    threads = torch.get_num_threads()
    for widths, size in ((w, s) for w in args.widths for s in args.sizes):
        net = build("fast", 283, widths=[int(c) for c in widths.split(",")], stem_stride=args.stem_stride)
        net = net.to(memory_format=torch.channels_last)
        x = torch.randn(256, 3, size, size).contiguous(memory_format=torch.channels_last)
        net.eval()
        torch.set_num_threads(1)

        @torch.no_grad()
        def infer():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(x), net(x.flip(-1))

        infer_ms = timed(infer) / len(x) * 1000
        torch.set_num_threads(threads)
        net.train()
        xb = torch.randn(1024, 3, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 283, (1024,))

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(xb).float(), y)
            loss.backward()

        train_ips = len(xb) / timed(step, repeats=2)
        print(f"{size} px, widths {widths}, stem stride {args.stem_stride}: "
              f"network {infer_ms:.2f} ms per photo in search (1 thread, flip pair) "
              f"-> at most {1000 / infer_ms:.0f} photos/s from the network alone; "
              f"training {train_ips:.0f} images/s (forward + backward, {threads} threads)")
        key = f"{size}px" if widths == "64,256,256" else f"{size}px_{widths}"
        key += f"_stride{args.stem_stride}" if args.stem_stride != 1 else ""
        summary[key] = {"search_network_ms": round(infer_ms, 2), "train_images_per_s": round(train_ips)}
    print_summary(summary)


if __name__ == "__main__":
    main()
