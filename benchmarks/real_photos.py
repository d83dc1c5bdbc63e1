"""Birds in real photos: several models on several test sets, in one table.

For each model (the shipped one, the previous CIFAR-only model kept in benchmarks/models/, and
the article's network trained the article's way when given with --article) and each test set
(CIFAR-10 test JPEGs, the realphotos test split, the natural-images test split, Tiny ImageNet's
and Caltech-101's test splits, the 40 shared photos): bird AP, precision and recall at the
model's stored threshold, precision at 90% recall, ECE of p(bird), the 10-class accuracy where
the model knows the data's classes, and the false-alarm rate per non-bird class (worst first).
Every folder not named like the positive class counts as "not bird" (birdcnn evaluate's rule).

    python benchmarks/real_photos.py [--article runs/article-cub] [--model PATH] [--sets realphotos photos]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from birdcnn import metrics as M
from birdcnn.evaluate import evaluate
from birdcnn.modelfile import load_model

from common import SHARED, print_machine_facts, print_summary

HERE = Path(__file__).resolve().parent
SETS = {"cifar10": SHARED / "cifar10-jpeg.tar.gz", "realphotos": SHARED / "realphotos.tar.gz",
        "natural": SHARED / "natural-images-30px.tar.gz", "tinyimagenet": SHARED / "tinyimagenet-64px.tar.gz",
        "caltech101": SHARED / "caltech101.tar.gz", "photos": SHARED / "photos"}


def precision_at_recall(y: np.ndarray, scores: np.ndarray, recall: float) -> float | None:
    t = M.threshold_for_recall(y, scores, recall)
    return None if t is None else M.binary_report(y, scores, t)["precision"]


def fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="the model to measure first (default: the shipped model)")
    ap.add_argument("--cifar-only", default=str(HERE / "models" / "cifar_only.json"),
                    help="the previous CIFAR-only model ('none': leave it out, e.g. to measure a new model alone)")
    ap.add_argument("--article", help="the article's network trained the article's way (a run folder)")
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    ap.add_argument("--json", metavar="OUT", help="also write every figure, with the per-class false alarms, here")
    args = ap.parse_args()
    facts = print_machine_facts()
    models = {"shipped": args.model}
    if args.cifar_only != "none":
        models["cifar-only"] = args.cifar_only
    if args.article:
        models["article"] = args.article
    table, summary = [], {"benchmark": "real_photos", **facts}
    for name, path in models.items():
        clf = load_model(path)
        for s in args.sets:
            ev = evaluate(clf, str(SETS[s]), model_name=name, gallery_size=0, any_classes=True)
            b = ev.bird
            row = {"model": name, "set": s, "n": ev.n, "birds": b["positives"], "ap": b["average_precision"],
                   "precision": b["precision"], "recall": b["recall"], "threshold": ev.threshold,
                   "precision_at_90_recall": precision_at_recall(ev.is_positive, ev.scores, 0.9),
                   "ece": b["ece"], "accuracy": ev.classes["accuracy"] if ev.classes else None,
                   "flagged": b["fp"], "negatives": ev.n - b["positives"], "false_alarms": ev.false_alarms,
                   "seconds": round(ev.seconds, 1)}
            table.append(row)
            print(f"{name:<11}{s:<13}n {ev.n:>6}  AP {fmt(row['ap'])}  P {fmt(row['precision'])}"
                  f"  R {fmt(row['recall'])}  P@90%R {fmt(row['precision_at_90_recall'])}"
                  f"  ECE {fmt(row['ece'])}  acc {fmt(row['accuracy'])}  ({row['seconds']} s)", flush=True)
    print("\n| model | test set | images (birds) | bird AP | precision | recall | precision at 90% recall "
          "| ECE | class accuracy | false alarms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['set']} | {r['n']} ({r['birds']}) | {fmt(r['ap'])} | {fmt(r['precision'])} | "
              f"{fmt(r['recall'])} | {fmt(r['precision_at_90_recall'])} | {fmt(r['ece'])} | {fmt(r['accuracy'])} | "
              f"{r['flagged']} of {r['negatives']} |")
    print("\nFalse-alarm rate per non-bird class at the stored threshold (worst 6 with any):")
    for r in table:
        worst = [f"{c} {100 * f['rate']:.1f}% ({f['flagged']}/{f['n']})"
                 for c, f in r["false_alarms"].items() if f["flagged"]][:6]
        print(f"  {r['model']:<11}{r['set']:<13}{', '.join(worst) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    summary["rows"] = [{k: v for k, v in r.items() if k != "false_alarms"} for r in table]
    print_summary(summary)


if __name__ == "__main__":
    main()
