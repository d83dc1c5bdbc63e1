"""BatchNorm statistics re-estimated at the zoom size: would the 48-px view gain (FixRes, no training)?

Touvron et al. 2019 ("FixRes") find that a network tested at a larger view than it was trained at
gains more when its BatchNorm statistics are re-estimated at that view. `predict` averages a 48-px
flip pair into a 40-px model's views; this measures whether that pair would score better through
statistics re-estimated on whole-frame training photos at 48 px (B48), against the same photos at
the model's own size (B40: the control, which changes the data behind the statistics but not the
size) and the statistics as trained (A). Nothing is trained; bird AP on the run's own validation
split of each photo source (held out exactly as training held it out), "pooled" ranking Tiny
ImageNet's and Caltech-101's images together.

    python benchmarks/bn_stats.py [--model PATH] [--per-source 1000] [--zoom 48]
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch

from birdcnn.metrics import average_precision
from birdcnn.modelfile import Classifier, load_model
from birdcnn.sources import canonical_class

from common import print_machine_facts, print_summary, validation_split

PHOTO_SOURCES = ("tinyimagenet-64px", "caltech101", "realphotos")
POOL = ("tinyimagenet-64px", "caltech101")


def reestimated(clf: Classifier, images: np.ndarray) -> torch.nn.Module:
    """A copy of the network whose BatchNorm statistics are the plain average over `images` and
    their mirror images (the flip pair's inputs), in shuffled batches of 250."""
    net = copy.deepcopy(clf.net)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average, not training's running one
    both = np.concatenate([images, images[:, :, ::-1]])
    order = np.random.default_rng(0).permutation(len(both))
    net.train()
    with torch.no_grad():
        for i in range(0, len(order), 250):
            net(clf.prepare(np.ascontiguousarray(both[order[i:i + 250]])))
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model trained by `birdcnn train` (default: the shipped model)")
    ap.add_argument("--per-source", type=int, default=1000, help="training photos per source for the statistics")
    ap.add_argument("--zoom", type=int, default=48, help="the larger view size")
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(args.model)
    cfg = clf.meta["training"]["config"]
    base, zoom = clf.input_size, args.zoom
    rng = np.random.default_rng(0)
    fit: dict[int, list[np.ndarray]] = {base: [], zoom: []}
    val: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # source -> (is bird, base view, zoom view)
    for k, spec in enumerate(cfg["data"]):
        name = Path(spec).name.split(".")[0]
        if name not in PHOTO_SOURCES:
            continue
        small, held = validation_split(cfg, k, base)
        large, _ = validation_split(cfg, k, zoom)
        train = np.setdiff1d(np.arange(len(small)), held)
        pick = rng.choice(train, size=min(args.per_source, len(train)), replace=False)
        fit[base].append(small.images[pick])
        fit[zoom].append(large.images[pick])
        is_bird = np.array([canonical_class(small.classes[c]) == clf.positive for c in small.labels[held]])
        val[name] = (is_bird, small.images[held], large.images[held])
        print(f"{name}: {len(pick)} training photos for the statistics; "
              f"validation {len(held)} ({int(is_bird.sum())} birds)")
    if not val:
        raise SystemExit(f"the model was trained on none of {', '.join(PHOTO_SOURCES)}")
    nets = {"A": clf.net, f"B{base}": reestimated(clf, np.concatenate(fit[base])),
            f"B{zoom}": reestimated(clf, np.concatenate(fit[zoom]))}
    logits: dict[tuple[str, str, str], torch.Tensor] = {}
    trained = clf.net
    try:
        for tag, net in nets.items():
            clf.net = net
            for name, (_, small, large) in val.items():
                logits[tag, name, f"{base} flip-translate"] = clf.logits(small, tta="flip-translate")
                logits[tag, name, f"{base} flip"] = clf.logits(small, tta="flip")
                logits[tag, name, f"{zoom} flip"] = clf.logits(large, tta="flip")
            print(f"scored with statistics {tag}", flush=True)
    finally:
        clf.net = trained
    predict_base = f"{base} flip-translate"
    rows: dict[str, dict[str, torch.Tensor]] = {f"{predict_base}, A": {n: logits["A", n, predict_base] for n in val}}
    for tag in nets:
        for v in (f"{base} flip", f"{zoom} flip"):
            rows[f"{v}, {tag}"] = {n: logits[tag, n, v] for n in val}
        # predict's views: the 6 views at the model's size (as trained) + the zoom pair through `tag`
        rows[f"{predict_base}, A + {zoom} flip, {tag}"] = {
            n: .5 * logits["A", n, predict_base] + .5 * logits[tag, n, f"{zoom} flip"] for n in val}
    pool = [n for n in POOL if n in val]

    def bird_ap(is_bird: np.ndarray, lg: torch.Tensor) -> float:
        return average_precision(is_bird, torch.softmax(lg / clf.temperature, 1)[:, clf.positive_index].numpy())

    table = {}
    for r, by_source in rows.items():
        table[r] = {n: bird_ap(val[n][0], lg) for n, lg in by_source.items()}
        if len(pool) > 1:
            table[r]["pooled"] = bird_ap(np.concatenate([val[n][0] for n in pool]),
                                         torch.cat([by_source[n] for n in pool]))
    cols = list(next(iter(table.values())))
    print("\n| views, BatchNorm statistics (bird AP, validation) | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r, aps in table.items():
        print(f"| {r} | " + " | ".join(f"{aps[c]:.4f}" for c in cols) + " |")
    print_summary({"benchmark": "bn_stats", "model": args.model or "shipped", "per_source": args.per_source,
                   "zoom": zoom, "rows": table, **facts})


if __name__ == "__main__":
    main()
