"""`birdcnn evaluate` arguments -> `evaluate.evaluate` and `report.write_report`; prints the table or the JSON."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .devices import add_device_argument, chosen_device
from .errors import BirdcnnError


def _fraction(text: str) -> float:
    """An argparse `type`: a number from 0 to 1."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {v}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_device_argument(p)
    p.add_argument("--data", required=True, help="'cifar10', the CIFAR-10 archive or folder, or a folder/tar of class "
                                                 "folders; its test/ split is used when present")
    p.add_argument("--model", help="model file (.json/.safetensors or a run folder; default: the shipped model)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for report.html, metrics.json and the pictures (default: runs/evaluate-DATE)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object instead of a table")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=_fraction, metavar="T",
                   help="call 'bird' when p(bird) >= T (default: the model's threshold)")
    g.add_argument("--target-precision", type=_fraction, metavar="P",
                   help="use the lowest threshold reaching precision P on this data")
    g.add_argument("--target-recall", type=_fraction, metavar="R",
                   help="use the highest threshold reaching recall R on this data")
    p.add_argument("--gallery-size", type=int, default=48, metavar="N", help="images per gallery (default 48)")


def run(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .modelfile import load_model
    from .report import format_table, to_json, write_report
    from .runs import default_run_dir

    if args.gallery_size < 0:
        raise BirdcnnError("--gallery-size must be >= 0")
    if (args.target_precision == 0.0) or (args.target_recall == 0.0):
        raise BirdcnnError("--target-precision and --target-recall must be above 0")
    out = Path(args.out) if args.out else default_run_dir("evaluate")
    if out.exists() and not out.is_dir():
        raise BirdcnnError(f"{out}: exists and is not a folder (--out)")
    model = load_model(args.model, chosen_device(args.device))
    ev = evaluate(model, args.data, model_name=str(args.model or "the shipped model"), threshold=args.threshold,
                  target_precision=args.target_precision, target_recall=args.target_recall,
                  gallery_size=args.gallery_size, progress=sys.stderr.isatty())
    t0 = time.perf_counter()
    write_report(ev, out)
    report_seconds = time.perf_counter() - t0
    if args.json:
        print(to_json({**ev.summary(), "out": str(out)}))
    else:
        print(format_table(ev))
        print(f"\n{ev.n} images evaluated in {ev.seconds:.1f} s; "
              f"report written in {report_seconds:.1f} s: {out / 'report.html'}")
    if ev.other:  # as search says it: a folder of HEIC photos must not look small without a word
        print(f"birdcnn evaluate: passed over {len(ev.other)} files that are not images: {ev.other}", file=sys.stderr)
    for i, problem in enumerate(ev.skipped):
        if i == 20:
            print(f"birdcnn evaluate: ... and {len(ev.skipped) - 20} more (all in {out / 'metrics.json'})",
                  file=sys.stderr)
            break
        print(f"birdcnn evaluate: skipped unreadable image {problem}", file=sys.stderr)
    return 1 if ev.skipped else 0
