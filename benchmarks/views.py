"""What a trained model's view is worth: bird AP at other view sizes and other test-time views.

The network takes any input size, so a model can be tested at a larger view than it was trained
at (training's random-resized crops make objects look larger than the whole-frame view does:
Touvron et al. 2019, "FixRes"); and with one view, the flip pair or all six. A model's zoom view
(`zoom_size`) is averaged in only at its own view size and views, as `predict` does; every other
row is the view alone. Test splits only; every folder not named `bird` is "not bird" (as
`birdcnn evaluate`).

    python benchmarks/views.py --model ../runs/real18 --sizes 32 40 48
    python benchmarks/views.py --model ../runs/real40 --tta none flip
"""
from __future__ import annotations

import argparse

from birdcnn.evaluate import evaluate
from birdcnn.modelfile import load_model

from common import SHARED, print_machine_facts, print_summary

SETS = {"tinyimagenet": SHARED / "tinyimagenet-64px.tar.gz", "caltech101": SHARED / "caltech101.tar.gz",
        "photos": SHARED / "photos", "realphotos": SHARED / "realphotos.tar.gz"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="the model (default: the shipped model)")
    ap.add_argument("--sizes", type=int, nargs="+", help="view sizes in px (default: the model's)")
    ap.add_argument("--tta", nargs="+", choices=["none", "flip", "flip-translate"],
                    help="sets of test-time views (default: the model's)")
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    args = ap.parse_args()
    facts = print_machine_facts()
    rows = []
    base = load_model(args.model)
    for size in args.sizes or [base.input_size]:
        for tta in args.tta or [base.tta]:
            clf = load_model(args.model)
            clf.input_size, clf.tta = size, tta
            if (size, tta) != (base.input_size, base.tta):
                clf.zoom_size = None
            aps = {s: evaluate(clf, str(SETS[s]), model_name="views", gallery_size=0,
                               any_classes=True).bird["average_precision"] for s in args.sets}
            rows.append({"size": size, "tta": tta, "zoom_size": clf.zoom_size, **aps})
            zoom = f" + {clf.zoom_size}-px flip pair" if clf.zoom_size else ""
            figures = " | ".join(f"{s} AP {ap:.3f}" for s, ap in aps.items())
            print(f"{size} px, views {tta}{zoom}: {figures}", flush=True)
    print_summary({"benchmark": "views", "model": args.model or "shipped", "rows": rows, **facts})


if __name__ == "__main__":
    main()
