"""Fine-tuning (`birdcnn train --init default`) against training from scratch, on a task the shipped
model never saw: MNIST's handwritten digits (../shared/data/mnist-5k), with few labelled images.

For each number of training digits per class, two runs with the same settings (the shipped model's
network and 40-px view, batch 100, the recipe's learning rate, seed 0; 10% of the digits held out
for validation): from scratch, and from the shipped model's weights (no digit is a class it knows,
so its last layer starts afresh; every other layer is the shipped model's). Prints the test
accuracy on MNIST-5k's 1,000 test digits and the seconds of training.

    cd benchmarks && python fine_tune.py [--per-class 10 40 400] [--epochs 10]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from PIL import Image

from birdcnn.cli import main as birdcnn
from birdcnn.experiments.mnist import load_mnist

from common import SHARED, print_machine_facts, print_summary


def write_digits(mnist: dict, root: Path, per_class: int) -> Path:
    """MNIST-5k as class folders: train/<digit>/ (the first `per_class` of each digit), test/<digit>/ (all)."""
    for split, n in (("train", per_class), ("test", None)):
        images, labels = mnist[split]
        for digit in range(10):
            (root / split / str(digit)).mkdir(parents=True, exist_ok=True)
            for i, k in enumerate((labels == digit).nonzero()[0][:n]):
                Image.fromarray(images[k]).save(root / split / str(digit) / f"{i}.png")
    return root


def run(data: Path, out: Path, epochs: float, init: bool) -> dict:
    args = ["train", "--data", str(data), "--positive", "0", "--epochs", str(epochs), "--batch-size", "100",
            "--out", str(out)] + (["--init", "default"] if init else ["--input-size", "40"])
    if birdcnn(args) != 0:
        raise SystemExit(f"birdcnn {' '.join(args)} failed")
    meta = json.loads((out / "model.json").read_text())
    return {"test_accuracy": meta["metrics"]["test"]["accuracy"], "seconds": meta["training"]["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, nargs="+", default=[10, 40, 400], help="training digits per class")
    ap.add_argument("--epochs", type=float, default=10)
    args = ap.parse_args()
    summary = {"benchmark": "fine_tune", "epochs": args.epochs, **print_machine_facts(), "rows": []}
    mnist = load_mnist(SHARED / "mnist-5k")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.per_class:
            data = write_digits(mnist, Path(tmp) / f"digits{n}", n)
            scratch = run(data, Path(tmp) / f"scratch{n}", args.epochs, init=False)
            tuned = run(data, Path(tmp) / f"init{n}", args.epochs, init=True)
            row = {"per_class": n, "scratch": scratch, "init": tuned}
            summary["rows"].append(row)
            print(f"{n:>4} digits per class: test accuracy from scratch {scratch['test_accuracy']:.4f} "
                  f"({scratch['seconds']:.0f} s), from the shipped model {tuned['test_accuracy']:.4f} "
                  f"({tuned['seconds']:.0f} s)", flush=True)
    print_summary(summary)


if __name__ == "__main__":
    main()
