"""Why one p(bird) cannot be calibrated on every source: the class priors differ between collections.

In the shipped model's training mix bird is one of the largest classes (7% of the images, against
0.05-0.2% for a Caltech-101 category or a Tiny ImageNet kind), so ambiguous photos lean to it; the
test sets hold 2% (Tiny ImageNet) to 55% (realphotos) birds. A probability calibrated on one
collection's mix is off on another. This measures it, and the one post-hoc remedy that needs no
retraining: dividing each class's probability by its training share to a power tau (logit
adjustment, Menon et al. 2021, "Long-tail learning via logit adjustment"), p'(c) ~ p(c) / prior(c)^tau,
at the model's temperature. For each tau: bird AP and ECE of p(bird) on each source's validation split (rebuilt as
training held it out) and test split, and on the 40 shared photos. Every image gets predict's
views (the model's 6 views, and for photos the zoom view's flip pair).

Last, the remedy that reads the collection's mix from the collection itself: the class priors
re-estimated by EM on each unlabelled split (Saerens et al. 2002, "Adjusting the outputs of a
classifier to new a priori probabilities"), p'(c) ~ p(c) x prior'(c) / prior(c).

    python benchmarks/class_prior.py [--model PATH] [--cache logits.npz] [--taus 0 0.5 1]

Computing the logits takes ~20 minutes on 2 cores; --cache keeps them for a rerun (and for
`calibration_maps.py --cache`, which reads the same file).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from birdcnn.metrics import average_precision, expected_calibration_error
from birdcnn.modelfile import load_model
from birdcnn.sources import canonical_class

from common import model_logits, print_machine_facts, print_summary


def em_priors(p: np.ndarray, prior: np.ndarray, steps: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Saerens et al.'s EM: the class priors of an unlabelled collection whose probabilities `p`
    (N, C) a model with training priors `prior` gave; returns (adjusted probabilities, priors)."""
    new = prior
    for _ in range(steps):
        q = p * (new / prior)
        q /= q.sum(1, keepdims=True)
        new = q.mean(0)
    return q, new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model trained by `birdcnn train` (default: the shipped model)")
    ap.add_argument("--cache", help="keep the logits in this .npz file, and read them from it when it exists")
    ap.add_argument("--taus", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1.0])
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(args.model)
    if "sources" not in clf.meta["training"]:
        sys.exit(f"{args.model or 'the shipped model'}: no per-source class counts in its metadata "
                 "(trained before multi-source training): its training prior is unknown")
    logits = model_logits(clf, args.cache)
    counts = np.zeros(len(clf.classes))
    for s in clf.meta["training"]["sources"]:
        for c, n in s["classes"].items():
            counts[clf.classes.index(canonical_class(c))] += n
    log_prior = torch.from_numpy(np.log(counts / counts.sum()))
    sets = [k for k in logits if k.startswith(("val ", "test ")) and not k.endswith(" labels")]
    base_rates = {s: float((logits[f"{s} labels"] == clf.positive_index).mean()) for s in sets}
    print(f"bird share: training {counts[clf.positive_index] / counts.sum():.3f}; "
          + ", ".join(f"{s} {r:.3f}" for s, r in base_rates.items() if r > 0))
    rows = {}
    for tau in args.taus:
        for s in sets:
            y = logits[f"{s} labels"] == clf.positive_index
            if not y.any():
                continue
            z = torch.from_numpy(logits[s]).double() / clf.temperature - tau * log_prior
            p = torch.softmax(z, 1)[:, clf.positive_index].numpy()
            rows.setdefault(s, {})[tau] = (average_precision(y, p), expected_calibration_error(p, y))
    em = {}
    for s in rows:
        y = logits[f"{s} labels"] == clf.positive_index
        p = torch.softmax(torch.from_numpy(logits[s]).double() / clf.temperature, 1).numpy()
        q, priors = em_priors(p, np.exp(log_prior.numpy()))
        pb = q[:, clf.positive_index]
        em[s] = (float(priors[clf.positive_index]), average_precision(y, pb), expected_calibration_error(pb, y))
    print("\n| bird AP / ECE of p(bird) | bird share | " + " | ".join(f"tau {t:g}" for t in args.taus)
          + " | EM: bird share found | EM: AP / ECE |")
    print("|---|---|" + "---|" * (len(args.taus) + 2))
    for s, r in rows.items():
        print(f"| {s} | {base_rates[s]:.3f} | " + " | ".join(f"{a:.3f} / {e:.3f}" for a, e in r.values())
              + f" | {em[s][0]:.3f} | {em[s][1]:.3f} / {em[s][2]:.3f} |")
    print_summary({"benchmark": "class_prior", "model": args.model or "shipped", "base_rates": base_rates,
                   "rows": {s: {str(t): {"ap": round(a, 4), "ece": round(e, 4)} for t, (a, e) in r.items()}
                            for s, r in rows.items()},
                   "em": {s: {"bird_share": round(b, 4), "ap": round(a, 4), "ece": round(e, 4)}
                          for s, (b, a, e) in em.items()},
                   **facts})


if __name__ == "__main__":
    main()
