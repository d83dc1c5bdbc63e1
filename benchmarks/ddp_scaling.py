"""Data-parallel training throughput and accuracy at 1 and 2 processes (torchrun), same global batch.

Each run is `torchrun --standalone --nproc-per-node N -m birdcnn train ...` from scratch on the
same data, seed and recipe; images/s is training images per second of training time (all
ranks together, from the run's history), accuracy is the 10-class test accuracy it reports.
With N processes on one machine torchrun gives each one thread: on 2 cores, 1 process x 2
threads against 2 processes x 1 thread.

    python benchmarks/ddp_scaling.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--epochs 2] [--procs 1 2]
    python benchmarks/ddp_scaling.py --preset quick     # full length: does 2 processes' accuracy match 1's?
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from common import SHARED, print_machine_facts, print_summary, torchrun


def run(n: int, data: str, epochs: float | None, preset: str | None, out: Path) -> dict:
    cmd, env = torchrun(n, "-m", "birdcnn", "train", "--data", data, "--out", str(out))
    cmd += ["--epochs", str(epochs)] if epochs is not None else []
    cmd += ["--preset", preset] if preset else []
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    seconds = sum(h["seconds"] for h in history)
    images = sum(h["images_per_second"] * h["seconds"] for h in history)
    return {"processes": n, "threads_each": int(env["OMP_NUM_THREADS"]), "train_seconds": round(seconds, 1),
            "images_per_second": round(images / seconds, 1), "test_accuracy": metrics["test"]["accuracy"],
            "bird_ap": metrics["test"]["bird"]["average_precision"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--epochs", type=float, help="training length (default: the recipe's or the preset's)")
    ap.add_argument("--preset", help="a birdcnn.train.PRESETS entry (e.g. quick: a full-length run in ~10 min)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    facts = print_machine_facts()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            rows.append(run(n, args.data, args.epochs, args.preset, Path(tmp) / f"p{n}"))
            r = rows[-1]
            print(f"{n} process(es) x {r['threads_each']} thread(s): {r['images_per_second']:7.1f} img/s  "
                  f"{r['train_seconds']:7.1f} s  test accuracy {r['test_accuracy']:.4f}  bird AP {r['bird_ap']:.4f}",
                  flush=True)
    base = rows[0]["images_per_second"]
    for r in rows[1:]:
        print(f"scaling {rows[0]['processes']} -> {r['processes']} processes: x{r['images_per_second'] / base:.2f} "
              f"throughput, accuracy {100 * (r['test_accuracy'] - rows[0]['test_accuracy']):+.2f} points")
    print_summary({"benchmark": "ddp_scaling", "epochs": args.epochs, "preset": args.preset, **facts, "runs": rows})


if __name__ == "__main__":
    main()
