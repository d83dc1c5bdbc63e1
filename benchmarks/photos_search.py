"""`birdcnn search` on labelled photos: how well the whole frame, `--no-tta` and `--crops` rank the birds.

A photo is a bird when its folder is named after the model's positive class (`bird/`); every
photo is scored with min-probability 0, so the full ranking gives the average precision, and
search's own default threshold (the model's, for the views it scored) gives the matches. Default
folder: the 40 shared real photos; any class-folder tree works, e.g. the extracted CIFAR-10 test JPEGs.

    python benchmarks/photos_search.py [--photos ../shared/data/photos] [--model PATH] [--workers N]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from birdcnn.metrics import average_precision
from birdcnn.modelfile import load_model
from birdcnn.search import search

from common import SHARED, print_machine_facts, print_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(SHARED / "photos"))
    ap.add_argument("--model", help="model file (default: the shipped model)")
    ap.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: in this process)")
    args = ap.parse_args()
    facts = print_machine_facts()
    model = load_model(args.model)
    summary = {"benchmark": "photos_search", **facts}
    modes = {"whole frame": dict(crops=False, tta=True), "whole frame, --no-tta": dict(crops=False, tta=False),
             "whole frame + 2x2 grid + centre (--crops)": dict(crops=True, tta=True)}
    for name, mode in modes.items():
        r = search(args.photos, model, min_probability=0.0, workers=args.workers, progress=False, **mode)
        paths = [p for p, _ in r.matches]
        scores = np.array([p for _, p in r.matches])
        is_bird = np.array([Path(p).parent.name == model.positive for p in paths])
        # What search matches by default: the threshold calibrated for the views it scored.
        views = "flip" if mode["tta"] and model.tta != "none" else "none"
        threshold = model.default_min_probability([model.positive_index], views)
        matched = scores >= threshold
        row = {"photos": len(paths), "birds": int(is_bird.sum()), "threshold": round(threshold, 4),
               "average_precision": round(average_precision(is_bird, scores), 3),
               "matches": int(matched.sum()), "matched_birds": int((matched & is_bird).sum()),
               "birds_in_top10": int(is_bird[:10].sum()), "seconds": round(r.seconds, 2)}
        print(f"{name}: AP {row['average_precision']:.3f}, {row['matches']} matches at {threshold:.3f} "
              f"({row['matched_birds']} birds, "
              f"{row['matches'] - row['matched_birds']} others), {row['birds_in_top10']} birds in the top 10, "
              f"{row['seconds']:.2f} s for {row['photos']} photos")
        found = sorted(os.path.basename(p) for p, m, b in zip(paths, matched, is_bird) if m and b)
        if len(found) <= 12:
            print(f"  birds matched: {', '.join(found) or 'none'}")
        summary[name] = row
    print_summary(summary)


if __name__ == "__main__":
    main()
