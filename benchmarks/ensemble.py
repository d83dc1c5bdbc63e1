"""Several models averaged: do they rank birds in photos better together than apart?

Each model scores every test set as `birdcnn evaluate` does (its own views, temperature and
zoom view); the ensemble's score of an image is the mean of the models' bird log-odds. Prints
bird AP per set for each model and for the ensemble. Test splits only: they are held out of
every model trained on the shared data, whatever its seed, so the comparison is fair even where
the models' validation splits differ (an ensemble to ship would also need a calibration on a
validation split none of its members trained on).

    python benchmarks/ensemble.py --model a.json --model b.json [--sets tinyimagenet caltech101]

The shipped model and the one shipped before it (rebuilt from git), from benchmarks/:
    git show 7f89391^:src/birdcnn/assets/model/default.json > /tmp/prev.json
    git show 7f89391^:src/birdcnn/assets/model/default.safetensors > /tmp/prev.safetensors
    python ensemble.py --model ../src/birdcnn/assets/model/default.json --model /tmp/prev.json
"""
from __future__ import annotations

import argparse

import numpy as np

from birdcnn import metrics as M
from birdcnn.evaluate import evaluate
from birdcnn.modelfile import load_model

from common import print_machine_facts, print_summary
from real_photos import SETS, fmt

PHOTO_SETS = ["tinyimagenet", "caltech101", "realphotos", "photos"]


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)  # a saturated probability must not become an infinite score
    return np.log(p / (1 - p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="a model file (give two or more)")
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=PHOTO_SETS)
    args = ap.parse_args()
    if len(args.model) < 2:
        ap.error("give two or more --model")
    summary = {"benchmark": "ensemble", "models": args.model, **print_machine_facts(), "rows": []}
    models = [load_model(path) for path in args.model]
    for s in args.sets:
        scores, truth = [], None
        for clf in models:
            ev = evaluate(clf, str(SETS[s]), gallery_size=0, any_classes=True)
            scores.append(log_odds(ev.scores))
            if truth is not None and not np.array_equal(truth, ev.is_positive):
                raise SystemExit(f"{s}: the models read the set in different orders")
            truth = ev.is_positive
        aps = [M.average_precision(truth, x) for x in scores]
        row = {"set": s, "n": len(truth), "birds": int(truth.sum()), "ap": aps,
               "ensemble_ap": M.average_precision(truth, np.mean(scores, axis=0))}
        summary["rows"].append(row)
        print(f"{s:<13}n {row['n']:>6} ({row['birds']} birds)  bird AP "
              + "  ".join(f"model {k + 1} {fmt(a, 4)}" for k, a in enumerate(aps))
              + f"  ensemble {fmt(row['ensemble_ap'], 4)}", flush=True)
    print_summary(summary)


if __name__ == "__main__":
    main()
