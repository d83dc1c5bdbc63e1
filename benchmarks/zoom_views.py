"""Views at a second, larger scale: bird AP of a trained model on its own validation split, per source.

For each photo the model's views (its input size, e.g. 40 px) are averaged with views of the same
photo decoded at larger sizes (e.g. 48, 56 px; objects look larger, as in training's random-resized
crops: Touvron et al. 2019, "FixRes"). Also the larger views made by resizing the 40-px view in
the network's input space (bilinear), which needs no second decode. Logits are averaged over
the view sets, then the model's temperature applies; AP does not depend on the threshold.

The validation split is rebuilt exactly as training held it out (`sources.validation_count`,
`data.split_validation` with the run's seed), so nothing here has been trained on or tested on:
a view set chosen from this table is chosen on validation.

    python benchmarks/zoom_views.py [--model PATH] [--sizes 40 48 56]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from birdcnn.metrics import average_precision
from birdcnn.modelfile import Classifier, load_model
from birdcnn.sources import canonical_class

from common import print_machine_facts, print_summary, validation_split


def resized_logits(clf: Classifier, images: np.ndarray, size: int, tta: str) -> torch.Tensor:
    """Logits of `images` (the model's view) resized to `size` after normalisation (no new decode)."""
    prepare = clf.prepare
    clf.prepare = lambda x: F.interpolate(prepare(x), size=(size, size), mode="bilinear",
                                          align_corners=False).contiguous(memory_format=torch.channels_last)
    try:
        return clf.logits(images, tta=tta)
    finally:
        clf.prepare = prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model trained by `birdcnn train` (default: the shipped model)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 56], help="larger view sizes to add")
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(args.model)
    cfg = clf.meta["training"]["config"]
    base, temperature, bird = clf.input_size, clf.temperature, clf.positive_index
    rows = {}
    for k, spec in enumerate(cfg["data"]):
        name, logits = Path(spec).name.split(".")[0], {}
        for size in [base, *args.sizes]:
            view, val = validation_split(cfg, k, size)
            images = view.images[val]
            is_bird = np.array([canonical_class(view.classes[c]) == clf.positive for c in view.labels[val]])
            if not is_bird.any():
                break  # no birds in this source: no AP to measure
            for tta in ("flip-translate", "flip"):
                logits[f"{size} {tta}"] = clf.logits(images, tta=tta)
            if size == base:
                base_images = images
            else:
                logits[f"{size} resized {base}"] = resized_logits(clf, base_images, size, "flip-translate")
        if not logits:
            continue
        combos = {f"{base} flip-translate + {s} {v}": [f"{base} flip-translate", f"{s} {v}"]
                  for s in args.sizes for v in ("flip", "flip-translate", f"resized {base}")}
        if len(args.sizes) > 1:  # with one size this is "base flip-translate + size flip-translate" again
            combos[f"{base} + " + " + ".join(map(str, args.sizes)) + " flip-translate"] = [
                f"{s} flip-translate" for s in [base, *args.sizes]]
        # search's views (the flip pair at the model's size) with a larger flip pair added
        combos.update({f"{base} flip + {s} flip": [f"{base} flip", f"{s} flip"] for s in args.sizes})
        for c, parts in combos.items():
            logits[c] = sum(logits[p] for p in parts) / len(parts)
        rows[name] = {v: average_precision(is_bird, torch.softmax(lg / temperature, 1)[:, bird].numpy())
                      for v, lg in logits.items()}
        print(f"{name}: {len(is_bird)} validation images, {int(is_bird.sum())} birds", flush=True)
    views = list(next(iter(rows.values())))
    print("\n| views (bird AP, validation) | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for v in views:
        print(f"| {v} | " + " | ".join(f"{r.get(v, float('nan')):.4f}" for r in rows.values()) + " |")
    print_summary({"benchmark": "zoom_views", "model": args.model or "shipped", "rows": rows, **facts})


if __name__ == "__main__":
    main()
