"""How should `locate` score a window? Rules compared as "is there a bird somewhere in this photo?"
detectors (a photo's best window score) and by where their best box lands.

Each photo is located once; its windows' own bird log-odds are then scored by every rule
(`locate.WindowScoring`: the mean over k x k neighbouring windows, plus w x the whole photo's
log-odds). Rules are judged on the model's own validation photos (rebuilt exactly as training held
them out, sampled per photo source, weighted back to the source's share of birds): average
precision, and the threshold and recall at precision >= 0.97 (what `birdcnn train` chooses the window
threshold by). Then, at that threshold, on the 40 shared photos: photos with a box, and whether the
best box is on the bird (`common.SHARED_BIRD_BOXES`, drawn by looking).

    python benchmarks/locate_scoring.py [--model PATH] [--neighbourhoods 1 3 5] [--whole 0 0.5 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from birdcnn.locate import WindowScoring, locate_file, score_windows
from birdcnn.metrics import average_precision
from birdcnn.modelfile import load_model
from birdcnn.sources import canonical_class

from common import SHARED, on_the_bird, print_machine_facts, print_summary, validation_split

# Validation photos located per source (birds, others): with the 40 shared photos, ~10 minutes on 2 cores.
SAMPLE = {"realphotos": (40, 80), "tinyimagenet-64px": (60, 180), "caltech101": (30, 90)}


def validation_photos(clf, seed: int = 1) -> list[tuple[str, str, bool, float]]:
    """(source, path, is bird, weight) for a sample of each photo source's validation split; the
    weights make each source count as its whole validation split would, birds and others apart."""
    cfg, rng, out = clf.meta["training"]["config"], np.random.default_rng(seed), []
    for k, spec in enumerate(cfg["data"]):
        name = Path(spec).name.split(".")[0]
        if name not in SAMPLE:
            continue
        view, val = validation_split(cfg, k, clf.input_size)
        y = np.array([canonical_class(view.classes[c]) == clf.positive for c in view.labels[val]])
        for want, idx in zip(SAMPLE[name], (np.nonzero(y)[0], np.nonzero(~y)[0])):
            pick = rng.choice(idx, min(want, len(idx)), replace=False)
            out += [(name, view.paths[val[i]], bool(y[i]), len(idx) / len(pick)) for i in pick]
    return out


def best(res, scoring: WindowScoring) -> tuple[float, list[float]]:
    """The photo's best window score under `scoring` (log-odds) and that window's box."""
    top, box = -np.inf, None
    for boxes, lo in res.grids:
        s = score_windows(lo, res.whole_frame_log_odds, scoring).flatten()
        i = int(s.argmax())
        if float(s[i]) > top:
            top, box = float(s[i]), boxes[i].tolist()
    return top, box


def threshold_at(scores: np.ndarray, y: np.ndarray, w: np.ndarray, target: float) -> tuple[float, float, float]:
    """Weighted AP, and the lowest score with weighted precision >= target and the recall there."""
    o = np.argsort(-scores, kind="stable")
    s, yy, ww = scores[o], y[o], w[o]
    tp, fp = np.cumsum(ww * yy), np.cumsum(ww * ~yy)
    precision = tp / (tp + fp)
    ap = float((precision * ww * yy).sum() / (ww * yy).sum())
    cuts = [i for i in range(len(s)) if (i + 1 == len(s) or s[i + 1] < s[i]) and precision[i] >= target]
    if not cuts:
        return ap, np.inf, 0.0
    t = s[max(cuts)]
    return ap, float(t), float((ww * yy)[s >= t].sum() / (ww * yy).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model trained by `birdcnn train` on photo sources (default: the shipped model)")
    ap.add_argument("--neighbourhoods", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--whole", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--target-precision", type=float, default=0.97)
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(args.model)
    t0 = time.perf_counter()
    val = [(n, y, w, locate_file(p, clf, min_probability=1.0)) for n, p, y, w in validation_photos(clf)]
    photos = [(p, p.parent.name == "bird", locate_file(p, clf, min_probability=1.0))
              for p in sorted((SHARED / "photos").glob("*/*.jpg"))]
    print(f"located {len(val)} validation photos ({sum(v[1] for v in val)} birds) and {len(photos)} shared photos "
          f"in {time.perf_counter() - t0:.0f} s")
    y, w = np.array([v[1] for v in val]), np.array([v[2] for v in val])
    names = np.array([v[0] for v in val])
    print(f"{'k':>2} {'whole':>5} | {'val AP':>6} {'thr':>6} {'recall':>6} | "
          + " ".join(f"{n[:10]:>10}" for n in SAMPLE)
          + " | 40 photos: AP  birds w/ box  others w/ box  best box on bird  both")
    rows = []
    for k in args.neighbourhoods:
        for a in args.whole:
            rule = WindowScoring(k, a)
            s = np.array([best(r, rule)[0] for *_, r in val])
            vap, t, rec = threshold_at(s, y, w, args.target_precision)
            per = {n: average_precision(y[names == n], s[names == n]) for n in SAMPLE}
            b40 = [(best(r, rule), bird, p) for p, bird, r in photos]
            on = [on_the_bird(box, p.stem, r.size) for ((_, box), bird, p), (_, _, r) in zip(b40, photos) if bird]
            boxed = [sc >= t for (sc, _), bird, _ in b40 if bird]
            others = sum(sc >= t for (sc, _), bird, _ in b40 if not bird)
            ap40 = average_precision(np.array([b for _, b, _ in b40]), np.array([sc for (sc, _), _, _ in b40]))
            row = {"neighbourhood": k, "whole_frame": a, "val_ap": vap, "threshold_log_odds": t, "val_recall": rec,
                   "val_ap_per_source": per, "photos_ap": ap40, "birds_with_box": int(sum(boxed)),
                   "others_with_box": int(others), "best_on_bird": int(sum(on)),
                   "boxed_and_on_bird": int(sum(b and o for b, o in zip(boxed, on)))}
            rows.append(row)
            print(f"{k:>2} {a:>5.2f} | {vap:6.3f} {t:6.2f} {rec:6.3f} | "
                  + " ".join(f"{per[n]:10.3f}" for n in SAMPLE)
                  + f" | {ap40:.3f}  {row['birds_with_box']:>2}/10  {others:>2}/30  {row['best_on_bird']:>2}/10"
                  f"  {row['boxed_and_on_bird']:>2}/10")
    print_summary({"benchmark": "locate_scoring", "rules": rows, **facts})


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
