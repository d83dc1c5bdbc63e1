"""Small birds: what whole-frame 32x32 classification misses, and what `search --crops` buys.

    python benchmarks/search_crops.py [--model PATH] [--n 150]

Photos: real CIFAR-10 test images pasted at a random place into the 30 shared non-bird photos
(resized to 640x480), at 60%, 40% and 25% of the photo's height. Positives carry a bird,
negatives a CIFAR-10 non-bird of the same size (so "something was pasted" gives nothing away).
The 40 shared photos themselves are scored too. For each set: average precision, and recall
and false-positive rate at the model's threshold, for the whole frame and for --crops (whole
frame + 2x2 grid + centre, maximum), and the photos/s of each.
"""
from __future__ import annotations

import argparse
import io
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import SHARED, print_machine_facts, print_summary

FRACTIONS = (0.6, 0.4, 0.25)


def build(root: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    scenes = [Image.open(p).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC)
              for p in sorted((SHARED / "photos" / "not_bird").glob("*.jpg"))]
    with tarfile.open(SHARED / "cifar10-jpeg.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("test/") and m.name.endswith(".jpg")]
        birds = [m for m in members if m.name.split("/")[1] == "bird"]
        others = [m for m in members if m.name.split("/")[1] != "bird"]
        picks = {"pos": rng.sample(birds, n), "neg": rng.sample(others, n)}
        # Read in archive order (a gzip stream only reads forwards quickly), keep the sampled order.
        data = {m.name: tar.extractfile(m).read() for m in sorted(picks["pos"] + picks["neg"], key=lambda m: m.offset)}
        images = {k: [Image.open(io.BytesIO(data[m.name])).convert("RGB") for m in v] for k, v in picks.items()}
    for frac in FRACTIONS:
        s = round(480 * frac)
        for kind, objs in images.items():
            d = root / f"{frac}" / kind
            d.mkdir(parents=True)
            for i, obj in enumerate(objs):
                im = rng.choice(scenes).copy()
                im.paste(obj.resize((s, s), Image.Resampling.BICUBIC),
                         (rng.randrange(0, 641 - s), rng.randrange(0, 481 - s)))
                im.save(d / f"{i:04d}.jpg", quality=90)


def measure(folder: Path, model, crops: bool) -> dict:
    from birdcnn.metrics import average_precision
    from birdcnn.search import search

    r = search(folder, model, min_probability=0, workers=None, crops=crops, progress=False)
    y = np.array([("/pos/" in p) or ("/bird/" in p) for p, _ in r.matches])
    p = np.array([q for _, q in r.matches])
    hit = p >= model.threshold
    return {"ap": average_precision(y, p), "recall": hit[y].mean(), "fpr": hit[~y].mean(),
            "photos_per_s": r.photos_per_second, "n": len(p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model file (default: the shipped model)")
    ap.add_argument("--n", type=int, default=150, help="positives (and negatives) per bird size (default 150)")
    args = ap.parse_args()
    facts = print_machine_facts()
    from birdcnn.modelfile import load_model

    model = load_model(args.model)
    print(f"model: {model.meta['arch']}, threshold {model.threshold:.3f}")
    root = Path(tempfile.mkdtemp(prefix="birdcnn-crops-bench-"))
    summary = {"benchmark": "search_crops", "arch": model.meta["arch"], **facts}
    try:
        build(root, args.n)
        sets = [(f"bird {int(f * 100)}% of height", root / f"{f}") for f in FRACTIONS]
        sets.append(("shared photos (10 birds, 30 not)", SHARED / "photos"))
        print(f"{'set':34s} {'':6s} {'AP':>6s} {'recall':>7s} {'FPR':>6s} {'photos/s':>9s}")
        for name, folder in sets:
            for crops in (False, True):
                m = measure(folder, model, crops)
                label = "crops" if crops else "whole"
                print(f"{name:34s} {label:6s} {m['ap']:6.3f} {m['recall']:7.3f} {m['fpr']:6.3f} "
                      f"{m['photos_per_s']:9.1f}")
                key = name.split(" (")[0].replace(" ", "_").replace("%", "pct")
                summary[f"{key}_{label}_ap"] = round(m["ap"], 4)
                summary[f"{key}_{label}_recall"] = round(float(m["recall"]), 4)
                summary[f"{key}_{label}_fpr"] = round(float(m["fpr"]), 4)
                summary[f"{key}_{label}_photos_per_s"] = round(m["photos_per_s"], 1)
        print("AP: average precision over the set; recall and FPR (false-positive rate) at the model's threshold.")
        print_summary(summary)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
