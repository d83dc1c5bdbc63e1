"""Wall-clock training time until 10-class CIFAR-10 test accuracy first reaches 90% and 91% (and 85, 93, 94%).

Trains the default recipe from scratch with `birdcnn.train.train` (the same code as
`birdcnn train`). Test accuracy (with the model's test-time augmentation) is checked once per
epoch outside the timed part: the times printed are training time only.

    python benchmarks/time_to_accuracy.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--epochs N]
    python benchmarks/time_to_accuracy.py --preset quick     # the "fast to a good model" preset
    python benchmarks/time_to_accuracy.py --preset quick --procs 2

--procs N runs the same training as N data-parallel processes on this machine (the script
restarts itself under torchrun, as `torchrun --nproc-per-node N -m birdcnn train` would run, each
process with an equal share of the cores; same global batch and steps). Rank 0 times and tests.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from birdcnn.data import load_split
from birdcnn.errors import BirdcnnError
from birdcnn.train import OPTIMIZERS, TrainConfig, train

from common import SHARED, print_machine_facts, print_summary, torchrun

TARGETS = (0.85, 0.90, 0.91, 0.93, 0.94)  # issue 15: 90% in 8 min, 91% in 15; 93-94%: airbench on clean data


def config(args: argparse.Namespace, out: str) -> TrainConfig:
    return TrainConfig(data=args.data, arch=args.arch, epochs=args.epochs, seed=args.seed, out=out,
                       preset=args.preset, batch_size=args.batch_size, start_size=args.start_size,
                       start_epochs=args.start_epochs, val_size=args.val_size, widths=args.widths,
                       optimizer=args.optimizer, lr=args.lr, lookahead=args.lookahead)


def relaunch(procs: int) -> int:
    """Run this script again as `procs` torchrun processes sharing one run folder; their exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd, env = torchrun(procs, str(Path(__file__).resolve()), *sys.argv[1:], "--run-dir", str(Path(tmp) / "run"))
        return subprocess.run(cmd, env=env).returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--arch", default="fast")
    ap.add_argument("--epochs", type=float, help="training length (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", help="a birdcnn.train.PRESETS entry (e.g. quick)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--optimizer", choices=OPTIMIZERS, help="default: the recipe's (or the preset's)")
    ap.add_argument("--lr", type=float, help="default: the recipe's")
    ap.add_argument("--lookahead", action=argparse.BooleanOptionalAction, help="default: the recipe's")
    ap.add_argument("--start-size", type=int, nargs="+", help="progressive resizing: the first epochs at these sizes")
    ap.add_argument("--start-epochs", type=float, nargs="+", help="epochs at each --start-size")
    ap.add_argument("--val-size", type=int, help="images held out for validation (default: the recipe's)")
    ap.add_argument("--widths", type=int, nargs=3, help="the fast network's channel widths (default 64 256 256)")
    ap.add_argument("--procs", type=int, default=1, help="data-parallel processes on this machine (torchrun)")
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)  # the run folder every torchrun process shares
    args = ap.parse_args()
    try:
        config(args, "").resolved()  # a bad setting is one line here, not a traceback from every rank
    except BirdcnnError as e:
        ap.error(str(e))
    if args.procs > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(relaunch(args.procs))
    if int(os.environ.get("RANK", "0")) != 0:  # the other ranks train; rank 0 reports
        train(config(args, args.run_dir))
        return
    facts = {**print_machine_facts(), "processes": args.procs}
    test = load_split(args.data, "test")
    reached: dict[float, float] = {}
    curve = []

    def on_epoch(epoch: int, clf, seconds: float) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # the other ranks wait meanwhile: test on every core
        acc = float((clf.probabilities(test.images).argmax(1) == test.labels).mean())
        torch.set_num_threads(threads)
        curve.append({"epoch": epoch, "train_seconds": round(seconds, 1), "test_accuracy": acc})
        print(f"  epoch {epoch}: test accuracy {acc:.4f} after {seconds:.0f} s of training", flush=True)
        for t in TARGETS:
            if acc >= t and t not in reached:
                reached[t] = seconds

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(args, args.run_dir or tmp)
        print("config:", {k: v for k, v in vars(cfg.resolved()).items() if k not in ("recipe", "data", "out")},
              flush=True)
        train(cfg, on_epoch=on_epoch)
    for t in TARGETS:
        when = f"{reached[t]:.0f} s ({reached[t] / 60:.1f} min)" if t in reached else "not reached"
        print(f"time to {t:.0%} test accuracy: {when}")
    print_summary({"benchmark": "time_to_accuracy", "arch": args.arch, "epochs": args.epochs, "preset": args.preset,
                   "final_test_accuracy": curve[-1]["test_accuracy"] if curve else None,
                   **{f"seconds_to_{int(t * 100)}": (round(reached[t], 1) if t in reached else None) for t in TARGETS},
                   "curve": curve, **facts})


if __name__ == "__main__":
    main()
