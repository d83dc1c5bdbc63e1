"""`birdcnn train` arguments -> `train.TrainConfig`."""
from __future__ import annotations

import argparse
import shlex
import sys

from .models import ARCHITECTURES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="'cifar10' (download), the CIFAR-10 archive or folder, or a folder/tar of class folders")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), help="network (default: fast)")
    p.add_argument("--classes", choices=["all", "binary"], help="learn every class, or positive-vs-rest (default: per arch)")
    p.add_argument("--positive", default="bird", help="the positive class (default: bird)")
    p.add_argument("--extra-positive", metavar="DIR", help="folder of extra positive images to merge into training")
    p.add_argument("--balance", action="store_true", help="draw every class equally often (sampling weights)")
    p.add_argument("--epochs", type=float, help="epochs (default: per arch; fractions allowed)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default: per arch)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--val-size", type=int, help="training images held out to pick threshold and temperature (default 5000, or 10%%)")
    p.add_argument("--target-precision", type=float, default=0.97, help="decision threshold target on validation (default 0.97)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/train-DATE)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32")
    add_augment_arguments(p)


def add_augment_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("synthetic data (defaults: per arch)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    g.add_argument("--shift", type=int, metavar="PX", help="random shifts of up to PX pixels (0: off)")
    g.add_argument("--rotate", type=float, metavar="DEG", help="random rotations within +-DEG degrees (0: off)")
    g.add_argument("--blur", type=float, metavar="SIGMA", help="random Gaussian blur up to SIGMA pixels (0: off)")
    g.add_argument("--blur-p", type=float, metavar="P", help="fraction of images blurred (default 0.5)")


def augment_overrides(args: argparse.Namespace) -> dict:
    keys = {"flip": "flip", "shift": "shift", "rotate": "rotate", "blur": "blur", "blur_p": "blur_p"}
    return {k: getattr(args, a) for k, a in keys.items() if getattr(args, a, None) is not None}


def run(args: argparse.Namespace) -> int:
    from .errors import BirdcnnError
    from .train import TrainConfig, train

    if not args.data and not args.resume:
        raise BirdcnnError("--data is required (e.g. --data cifar10, or a folder of class folders)")
    if args.resume and not args.out:
        raise BirdcnnError("--resume needs --out RUN_DIR (the run to continue)")
    if args.resume:
        ignored = [f"--{k.replace('_', '-')}" for k in ("data", "arch", "classes", "epochs", "batch_size", "lr", "extra_positive")
                   if getattr(args, k) is not None]
        if ignored:
            print(f"note: --resume continues the run as first configured; ignoring {', '.join(ignored)}", file=sys.stderr)
    cfg = TrainConfig(data=args.data or "", arch=args.arch or "fast", classes=args.classes, positive=args.positive,
                      extra_positive=args.extra_positive, balance=args.balance, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, label_smoothing=args.label_smoothing,
                      augment=augment_overrides(args), val_size=args.val_size, target_precision=args.target_precision,
                      seed=args.seed, out=args.out, device=args.device, bf16=args.bf16)
    train(cfg, resume=args.resume, command="birdcnn " + shlex.join(args._argv))
    return 0
