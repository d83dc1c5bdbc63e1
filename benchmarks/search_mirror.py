"""How far the mirror image moves a photo's score, and so which photos `search` must mirror.

    python benchmarks/search_mirror.py [--model PATH] [--margins 3 4 5 6 8]

`search` scores a photo's view once and, only where that score is within `search.MIRROR_MARGIN`
log-odds of the threshold, again mirrored, averaging the two (the flip pair), and for a photo
larger than the view, half and half with the flip pair of its zoom view (where the model's flip
calibration has it: `Classifier.zoom_tta`). This measures, on every shared test split as search
decodes it, the single view and that full view set, then for each margin: the share of photos
mirrored, how many decisions at the model's flip-pair threshold differ from mirroring every
photo (none may), the bird AP of the scores search then logs, and the largest rise in bird
log-odds that the full view set gave any image over its single view.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from birdcnn.evaluate import open_source
from birdcnn.metrics import average_precision
from birdcnn.modelfile import load_model
from birdcnn.search import mirror_floor
from birdcnn.sources import canonical_class

from common import SHARED, print_machine_facts, print_summary

SETS = {"cifar10": SHARED / "cifar10-jpeg.tar.gz", "realphotos": SHARED / "realphotos.tar.gz",
        "tinyimagenet": SHARED / "tinyimagenet-64px.tar.gz", "caltech101": SHARED / "caltech101.tar.gz",
        "natural": SHARED / "natural-images-30px.tar.gz", "photos": SHARED / "photos"}


def logodds(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(1e-12, 1 - 1e-12)
    return torch.log(p / (1 - p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model file (default: the shipped model)")
    ap.add_argument("--margins", type=float, nargs="+", default=[3, 4, 5, 6, 8], help="log-odds")
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(args.model)
    t1, t2, thr = clf.temperature_for("none"), clf.temperature_for("flip"), clf.threshold_for("flip")
    zoom_size = clf.zoom_size if "flip" in clf.zoom_tta else None
    print("view set: 1 view -> flip pair" + (f" + a {zoom_size}-px flip pair for photos" if zoom_size else ""))
    single, pair, birds = {}, {}, {}
    for name, path in SETS.items():
        src = open_source(str(path), clf.input_size, zoom_size)
        is_bird = np.array([canonical_class(c) == clf.positive for c in src.classes])
        a, b, y = [], [], []
        for images, labels, _, zoomed in src:
            # What search scores (Classifier.flip_pair_where_close): the view alone, and where it is
            # close, the flip pair with the zoom view's (the model's own rule, as `logits` averages it).
            a.append(clf.logits(images, tta="none"))
            b.append(clf.logits(images, tta="flip", zoomed=zoomed if zoom_size else None))
            y.append(is_bird[labels])
        a, b = torch.cat(a), torch.cat(b)
        single[name] = torch.softmax(a / t1, 1)[:, clf.positive_index]
        pair[name] = torch.softmax(b / t2, 1)[:, clf.positive_index]
        birds[name] = np.concatenate(y)
        print(f"{name}: {len(a)} images, {int(birds[name].sum())} birds", flush=True)
    rise = {n: float((logodds(pair[n]) - logodds(single[n])).max()) for n in SETS}
    print(f"largest rise of bird log-odds over the single view: {max(rise.values()):.2f} "
          f"({', '.join(f'{n} {r:.2f}' for n, r in rise.items())})")
    total = sum(len(birds[n]) for n in SETS)
    rows = []
    print(f"\nthreshold {thr:.4f} (flip pair); per margin: share mirrored, decisions changed, bird AP "
          "(every photo mirrored -> only those within the margin)")
    for m in args.margins:
        floor = mirror_floor(thr, m)
        row = {"margin": m, "floor": floor, "mirrored": 0, "changed": 0, "sets": {}}
        for n in SETS:
            close = (single[n] >= floor).numpy()
            logged = np.where(close, pair[n].numpy(), single[n].numpy())
            changed = int(((logged >= thr) != (pair[n].numpy() >= thr)).sum())
            y = birds[n]
            aps = (average_precision(y, pair[n].numpy()), average_precision(y, logged)) if y.any() else None
            row["sets"][n] = {"mirrored": round(float(close.mean()), 3), "changed": changed,
                              "ap": [round(x, 4) for x in aps] if aps else None}
            row["mirrored"] += int(close.sum())
            row["changed"] += changed
        rows.append(row)
        per = "; ".join(f"{n} {s['mirrored']:.0%}" + (f" AP {s['ap'][0]:.3f}->{s['ap'][1]:.3f}" if s["ap"] else "")
                        for n, s in row["sets"].items())
        print(f"margin {m:g} (floor {floor:.3f}): {row['mirrored'] / total:.1%} of {total} mirrored, "
              f"{row['changed']} decisions changed | {per}")
    print_summary({"benchmark": "search_mirror", "model": args.model or "shipped",
                   "zoom_size": zoom_size, "largest_rise": rise,
                   "rows": rows, **facts})


if __name__ == "__main__":
    main()
