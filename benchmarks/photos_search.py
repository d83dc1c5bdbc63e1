"""`birdcnn search` on the shared real photos: how well the whole frame and `--crops` rank the birds.

The photos are `bird/` (positive) and `not_bird/`; each is scored with min-probability 0, so the
full ranking gives the average precision, and the model's stored threshold gives the matches.

    python benchmarks/photos_search.py [--photos ../shared/data/photos] [--model PATH]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from birdcnn.metrics import average_precision
from birdcnn.modelfile import load_model
from birdcnn.search import search

from common import print_machine_facts, print_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"))
    ap.add_argument("--model", help="model file (default: the shipped model)")
    args = ap.parse_args()
    facts = print_machine_facts()
    model = load_model(args.model)
    summary = {"benchmark": "photos_search", "threshold": round(model.threshold, 4), **facts}
    print(f"model threshold {model.threshold:.3f}")
    for crops in (False, True):
        r = search(args.photos, model, min_probability=0.0, workers=0, crops=crops, progress=False)
        paths = [p for p, _ in r.matches]
        scores = np.array([p for _, p in r.matches])
        is_bird = np.array([Path(p).parent.name == "bird" for p in paths])
        matched = scores >= model.threshold
        row = {"photos": len(paths), "birds": int(is_bird.sum()), "average_precision": round(average_precision(is_bird, scores), 3),
               "matches": int(matched.sum()), "matched_birds": int((matched & is_bird).sum()),
               "birds_in_top10": int(is_bird[:10].sum()), "seconds": round(r.seconds, 2)}
        name = "whole frame + 2x2 grid + centre (--crops)" if crops else "whole frame"
        print(f"{name}: AP {row['average_precision']:.3f}, {row['matches']} matches ({row['matched_birds']} birds, "
              f"{row['matches'] - row['matched_birds']} others), {row['birds_in_top10']} birds in the top 10, "
              f"{row['seconds']:.2f} s for {row['photos']} photos")
        found = sorted(os.path.basename(p) for p, m, b in zip(paths, matched, is_bird) if m and b)
        print(f"  birds matched: {', '.join(found) or 'none'}")
        summary["crops" if crops else "whole_frame"] = row
    print_summary(summary)


if __name__ == "__main__":
    main()
