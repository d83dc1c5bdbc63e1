"""`birdcnn locate` on the 40 shared photos: does a bird-free photo get no box, and is the best
box on the bird? Counts the photos with boxes per folder, and writes every heat map (with its
boxes) into --out, to be checked by looking.

    python benchmarks/locate_photos.py [--photos ../shared/data/photos] [--model PATH] [--out DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from birdcnn.locate import locate_file, save_heatmap
from birdcnn.modelfile import load_model

from common import SHARED, print_machine_facts, print_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(SHARED / "photos"))
    ap.add_argument("--model", help="model file (default: the shipped model)")
    ap.add_argument("--out", help="folder for the heat maps (default: a new temporary folder)")
    args = ap.parse_args()
    facts = print_machine_facts()
    model = load_model(args.model)
    out = Path(args.out or tempfile.mkdtemp(prefix="locate_photos-"))
    out.mkdir(parents=True, exist_ok=True)
    ci = model.class_indices(None)
    print(f"window threshold {model.window_threshold(ci):.4f} "
          f"({model.meta.get('window_threshold_rule', 'decision threshold')})")
    summary = {"benchmark": "locate_photos", "window_threshold": model.window_threshold(ci), **facts}
    for folder in sorted(p for p in Path(args.photos).iterdir() if p.is_dir()):
        with_box = 0
        photos = sorted(folder.glob("*.jpg"))
        for photo in photos:
            res = locate_file(photo, model)
            with_box += bool(res.boxes)
            best = f", best {res.boxes[0]['box']}" if res.boxes else ""
            print(f"{folder.name}/{photo.name}: best window {100 * res.max_probability:.1f}%, "
                  f"{len(res.boxes)} boxes{best}")
            save_heatmap(res, out / f"{folder.name}__{photo.stem}.png", title=photo.name)
        print(f"== {folder.name}: {with_box} of {len(photos)} photos have a box")
        summary[folder.name] = {"photos": len(photos), "with_box": with_box}
    print(f"heat maps: {out}")
    print_summary(summary)


if __name__ == "__main__":
    main()
