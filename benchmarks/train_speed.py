"""Training throughput, in ONE run: a typical PyTorch pipeline vs birdcnn's, same network, same steps.

(a) typical: torchvision ImageFolder over the JPEG files, per-image transforms (RandomCrop with
    2 px reflect padding, RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader with 2
    workers, float32, default memory format, as most tutorials write it.
(b) birdcnn: decoded uint8 arrays in memory, batched tensor augmentation (same flip + 2 px
    shift), bf16 autocast and channels_last, using birdcnn.train's own training_step.

    python benchmarks/train_speed.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--steps 20]
"""
from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from birdcnn.augment import Augment
from birdcnn.data import load_split
from birdcnn.models import build
from birdcnn.train import TrainConfig, make_optimizer, training_step

from common import SHARED, print_machine_facts, print_summary

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def typical(folder: Path, cfg: TrainConfig, steps: int, warmup: int) -> float:
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
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def birdcnn_way(source: str, cfg: TrainConfig, steps: int, warmup: int, compile: bool = False) -> float:
    ds = load_split(source, "train")
    images, labels = torch.from_numpy(ds.images), torch.from_numpy(ds.labels)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    aug = Augment(**cfg.augment)
    net = build(cfg.arch, 10).to(memory_format=torch.channels_last)
    opt = make_optimizer(net, cfg)
    model = torch.compile(net) if compile else net
    g = torch.Generator().manual_seed(0)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(ds), (cfg.batch_size,), generator=g)
        x = ((images[idx].permute(0, 3, 1, 2).float() - mean) / std).contiguous(memory_format=torch.channels_last)
        training_step(model, opt, aug(x, g), labels[idx], cfg,
                      lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--arch", default="fast")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--compile", action="store_true", help="also time (b) with torch.compile (inductor)")
    args = ap.parse_args()
    facts = print_machine_facts()
    cfg = TrainConfig(data=args.data, arch=args.arch, batch_size=args.batch_size).resolved()
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.data) as tar:
            tar.extractall(tmp, filter="data")
        folder = Path(tmp) / "train"
        b = birdcnn_way(args.data, cfg, args.steps, args.warmup)
        print(f"(b) birdcnn (uint8 in memory, batched augmentation, bf16, channels_last): {b:8.0f} images/s",
              flush=True)
        c = birdcnn_way(args.data, cfg, args.steps, args.warmup, compile=True) if args.compile else None
        if c is not None:
            print(f"(b) with torch.compile:                                                 {c:8.0f} images/s",
                  flush=True)
        a = typical(folder, cfg, args.steps, args.warmup)
        print(f"(a) typical (ImageFolder + per-image transforms, DataLoader x2, fp32):    {a:8.0f} images/s",
              flush=True)
    print(f"speed-up: {b / a:.2f}x  ({args.arch} network, batch {args.batch_size}, {args.steps} timed steps each)")
    print_summary({"benchmark": "train_speed", "arch": args.arch, "batch_size": args.batch_size, "steps": args.steps,
                   "typical_images_per_s": round(a, 1), "birdcnn_images_per_s": round(b, 1),
                   "speedup": round(b / a, 2), **({"compiled_images_per_s": round(c, 1)} if c else {}), **facts})


if __name__ == "__main__":
    main()
