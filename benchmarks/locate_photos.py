"""`birdcnn locate` on the 40 shared photos: does a bird-free photo get no box, and is the best
box on the bird? Counts the photos with boxes per folder, and the bird photos whose best box lies
mostly on a bird (`common.SHARED_BIRD_BOXES`, drawn by looking); writes every heat map (with its
boxes) into --out, to be checked by looking too.

    python benchmarks/locate_photos.py [--photos ../shared/data/photos] [--model PATH] [--out DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from birdcnn.locate import locate_file, save_heatmap
from birdcnn.modelfile import load_model

from common import SHARED, on_the_bird, print_machine_facts, print_summary


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
        with_box = on_bird = 0
        photos = sorted(folder.glob("*.jpg"))
        for photo in photos:
            res = locate_file(photo, model)
            with_box += bool(res.boxes)
            best = ""
            if res.boxes:
                best = f", best {res.boxes[0]['box']}"
                if folder.name == "bird":
                    on = on_the_bird(res.boxes[0]["box"], photo.stem, res.size)
                    on_bird += on
                    best += " (on the bird)" if on else " (NOT on the bird)"
            print(f"{folder.name}/{photo.name}: best window {100 * res.max_probability:.2f}%, "
                  f"{len(res.boxes)} boxes{best}")
            save_heatmap(res, out / f"{folder.name}__{photo.stem}.png", title=photo.name)
        print(f"== {folder.name}: {with_box} of {len(photos)} photos have a box"
              + (f"; the best box is on the bird in {on_bird}" if folder.name == "bird" else ""))
        summary[folder.name] = {"photos": len(photos), "with_box": with_box}
        if folder.name == "bird":
            summary[folder.name]["best_box_on_bird"] = on_bird
    print(f"heat maps: {out}")
    print_summary(summary)


if __name__ == "__main__":
    main()
