"""Views at a second, larger scale: bird AP of a trained model on its own validation split, per source.

For each photo the model's views (its input size, e.g. 40 px) are averaged with views of the same
photo decoded at larger sizes (e.g. 48, 56 px; objects look larger, as in training's random-resized
crops: Touvron et al. 2019, "FixRes"). Also the larger views made by resizing the 40-px view in
the network's input space (bilinear), which needs no second decode. Logits are averaged over
the view sets, then the model's temperature applies; AP does not depend on the threshold.

The validation split is rebuilt exactly as training held it out (`sources.validation_count`,
`data.split_validation` with the run's seed), so nothing here has been trained on or tested on:
a view set chosen from this table is chosen on validation. `--test` adds a second table, the same
view sets on the sources' test splits and the 40 shared photos, to report a choice already made.
A pooled column (`--pool`, default Tiny ImageNet + Caltech-101: the varied photos) ranks their
images together, so that Caltech-101's few birds do not decide alone.

    python benchmarks/zoom_views.py [--model PATH] [--sizes 48 56] [--sources NAME ...] [--test] [--lean]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from birdcnn import data as D
from birdcnn.images import model_view, open_for_model
from birdcnn.metrics import average_precision
from birdcnn.modelfile import Classifier, load_model
from birdcnn.sources import canonical_class

from common import SHARED, print_machine_facts, print_summary, recorded_source, validation_split


def resized_logits(clf: Classifier, images: np.ndarray, size: int, tta: str) -> torch.Tensor:
    """Logits of `images` (the model's view) resized to `size` after normalisation (no new decode)."""
    prepare = clf.prepare
    clf.prepare = lambda x: F.interpolate(prepare(x), size=(size, size), mode="bilinear",
                                          align_corners=False).contiguous(memory_format=torch.channels_last)
    try:
        return clf.logits(images, tta=tta)
    finally:
        clf.prepare = prepare


def view_logits(clf: Classifier, images_at, sizes: list[int], lean: bool) -> dict[str, torch.Tensor]:
    """Every single-size view set's logits: `images_at(size)` gives the images decoded at size px.
    `lean`: the larger sizes' flip pair only (no 6 views, no resized views): a third of the time."""
    base, logits = clf.input_size, {}
    for size in [base, *sizes]:
        images = images_at(size)
        for tta in ("flip-translate", "flip") if size == base or not lean else ("flip",):
            logits[f"{size} {tta}"] = clf.logits(images, tta=tta)
        if size == base:
            base_images = images
        elif not lean:
            logits[f"{size} resized {base}"] = resized_logits(clf, base_images, size, "flip-translate")
    return logits


def combine(logits: dict[str, torch.Tensor], base: int, sizes: list[int]) -> None:
    """Add the view sets made of several sizes, each the weighted mean of its parts' logits."""
    combos = {f"{base} flip-translate + {s} {v}": {f"{base} flip-translate": .5, f"{s} {v}": .5}
              for s in sizes for v in ("flip", "flip-translate", f"resized {base}")}
    if len(sizes) > 1:  # with one size these are rows above again
        every = [base, *sizes]
        combos[f"{base} + " + " + ".join(map(str, sizes)) + " flip-translate"] = {
            f"{s} flip-translate": 1 / len(every) for s in every}
        # predict's views with the zoom half shared among the larger sizes' flip pairs
        name = f"{base} flip-translate 1/2 + " + " + ".join(f"{s} flip" for s in sizes) + f" 1/{2 * len(sizes)} each"
        combos[name] = {f"{base} flip-translate": .5, **{f"{s} flip": .5 / len(sizes) for s in sizes}}
    # search's views (the flip pair at the model's size) with a larger flip pair added
    combos.update({f"{base} flip + {s} flip": {f"{base} flip": .5, f"{s} flip": .5} for s in sizes})
    for c, parts in combos.items():
        if all(p in logits for p in parts):  # with --lean some parts are not computed
            logits[c] = sum(w * logits[p] for p, w in parts.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model trained by `birdcnn train` (default: the shipped model)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 56], help="larger view sizes to add")
    ap.add_argument("--sources", nargs="+", help="only these training sources (e.g. tinyimagenet-64px caltech101)")
    ap.add_argument("--pool", nargs="+", default=["tinyimagenet-64px", "caltech101"],
                    help="sources ranked together in the pooled column")
    ap.add_argument("--test", action="store_true", help="also the test splits and the 40 shared photos")
    ap.add_argument("--lean", action="store_true", help="larger sizes: the flip pair only (a third of the time)")
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(args.model)
    cfg = clf.meta["training"]["config"]
    base, bird = clf.input_size, clf.positive_index
    splits = ["val", "test"] if args.test else ["val"]

    def logits_of(images_at):
        return view_logits(clf, images_at, args.sizes, args.lean)

    # split -> source -> (is bird, logits per view set)
    found: dict[str, dict[str, tuple[np.ndarray, dict]]] = {s: {} for s in splits}
    for k, spec in enumerate(cfg["data"]):
        name = Path(spec).name.split(".")[0]
        if args.sources and name not in args.sources:
            continue
        view, val = validation_split(cfg, k, base)
        is_bird = np.array([canonical_class(view.classes[c]) == clf.positive for c in view.labels[val]])
        if not is_bird.any():
            continue  # no birds in this source: no AP to measure
        found["val"][name] = (is_bird, logits_of(
            lambda size: (view if size == base else validation_split(cfg, k, size)[0]).images[val]))
        print(f"{name}: {len(is_bird)} validation images, {int(is_bird.sum())} birds", flush=True)
        if args.test:
            test = D.load_split(recorded_source(spec), "test", base)
            is_bird = np.array([canonical_class(test.classes[c]) == clf.positive for c in test.labels])
            found["test"][name] = (is_bird, logits_of(
                lambda size: (test if size == base else D.load_split(recorded_source(spec), "test", size)).images))
    if not found["val"]:
        raise SystemExit(f"no training source with birds among {args.sources or cfg['data']}")
    if args.test:
        paths = sorted((SHARED / "photos").glob("*/*"))
        found["test"]["photos"] = (np.array([p.parent.name == clf.positive for p in paths]), logits_of(
            lambda size: np.stack([model_view(open_for_model(p, size), size) for p in paths])))
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for split, sources in found.items():
        for _, logits in sources.values():
            combine(logits, base, args.sizes)
        pooled = [n for n in args.pool if n in sources]
        if len(pooled) > 1:
            sources["pooled " + " + ".join(pooled)] = (np.concatenate([sources[n][0] for n in pooled]), {
                v: torch.cat([sources[n][1][v] for n in pooled]) for v in sources[pooled[0]][1]})
        rows[split] = {name: {v: average_precision(y, torch.softmax(lg / clf.temperature, 1)[:, bird].numpy())
                              for v, lg in logits.items()} for name, (y, logits) in sources.items()}
        views = list(next(iter(rows[split].values())))
        print(f"\n| views (bird AP, {'validation' if split == 'val' else 'test'}) | " + " | ".join(rows[split]) + " |")
        print("|---|" + "---|" * len(rows[split]))
        for v in views:
            print(f"| {v} | " + " | ".join(f"{r[v]:.4f}" for r in rows[split].values()) + " |")
    print_summary({"benchmark": "zoom_views", "model": args.model or "shipped", "rows": rows, **facts})


if __name__ == "__main__":
    main()
