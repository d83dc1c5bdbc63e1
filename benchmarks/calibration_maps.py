"""Can one map of p(bird) calibrate every source? ECE of p(bird) per source under maps fitted on validation.

The model's temperature is fitted to all 283 classes at once; the question here is whether a
further map of the bird's log-odds x (p(bird) = sigmoid(a x + c)), fitted on the validation split
(to all of it, or to its photos only), brings the expected calibration error of p(bird) within the
issue's 2% on every source at once. Any such map is monotone, so AP and the decisions at a
re-chosen threshold are unchanged: only what the printed probability means changes.
(`class_prior.py` tries the remedies that come from class priors instead: logit adjustment and EM.)

The validation split and the test splits are rebuilt exactly as the run made them (its recorded
config, as `birdcnn train --recalibrate` does), and scored with the model's views (its zoom view too).

    python benchmarks/calibration_maps.py [--model PATH] [--cache logits.npz]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from birdcnn.metrics import expected_calibration_error, fit_temperature
from birdcnn.modelfile import load_model

from common import model_logits, print_machine_facts, print_summary


def bird_log_odds(logits: np.ndarray, temperature: float, bird: int) -> np.ndarray:
    """log(p / (1 - p)) of p(bird) = softmax(logits / T)[bird], computed stably."""
    lp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, 1)
    others = torch.logsumexp(torch.cat([lp[:, :bird], lp[:, bird + 1:]], 1), 1)
    return (lp[:, bird] - others).numpy()


def fit_map(x: np.ndarray, y: np.ndarray, slope: bool) -> tuple[float, float]:
    """(a, c) minimising the binary NLL of sigmoid(a x + c) (a = 1 without `slope`): Platt scaling."""
    a = torch.ones(1, dtype=torch.float64, requires_grad=slope)
    c = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    xs, ys = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float64)
    opt = torch.optim.LBFGS([c, a] if slope else [c], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * xs + c, ys)
        loss.backward()
        return loss

    opt.step(closure)
    return float(a.detach()), float(c.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model trained by `birdcnn train` (default: the shipped model)")
    ap.add_argument("--cache", help="keep the logits in this .npz file, and read them from it when it exists "
                                    "(the same file as class_prior.py's --cache)")
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(args.model)
    logits, bird = model_logits(clf, args.cache), clf.positive_index
    sources = [k[len("val "):] for k in logits if k.startswith("val ") and not k.endswith(" labels")]
    val = np.concatenate([logits[f"val {s}"] for s in sources])
    labels = np.concatenate([logits[f"val {s} labels"] for s in sources])
    photo = np.concatenate([np.full(len(logits[f"val {s}"]), s in logits["photo sources"]) for s in sources])
    temperature = fit_temperature(val, labels)
    x, y = bird_log_odds(val, temperature, bird), labels == bird
    maps = {"temperature": (1.0, 0.0), "+ shift (all)": fit_map(x, y, False),
            "+ shift (photos)": fit_map(x[photo], y[photo], False),
            "+ Platt (all)": fit_map(x, y, True), "+ Platt (photos)": fit_map(x[photo], y[photo], True)}
    print(f"temperature {temperature:.3f}; maps (a, c): "
          + ", ".join(f"{k} ({a:.3f}, {c:.3f})" for k, (a, c) in maps.items()))
    print("\n| source, split | birds / images | mean p(bird) | " + " | ".join(maps) + " |")
    print("|---|---|---|" + "---|" * len(maps))
    rows = []
    for source in sources:
        for split in ("val", "test"):
            if f"{split} {source}" not in logits:
                continue
            xs = bird_log_odds(logits[f"{split} {source}"], temperature, bird)
            ys = logits[f"{split} {source} labels"] == bird
            if not ys.any():
                continue
            eces = {k: expected_calibration_error(1 / (1 + np.exp(-(a * xs + c))), ys) for k, (a, c) in maps.items()}
            mean_p = float(np.mean(1 / (1 + np.exp(-xs))))
            split = "validation" if split == "val" else split
            print(f"| {source}, {split} | {int(ys.sum())} / {len(ys)} | {mean_p:.3f} | "
                  + " | ".join(f"{e:.3f}" for e in eces.values()) + " |", flush=True)
            rows.append({"source": source, "split": split, "birds": int(ys.sum()), "n": len(ys),
                         "mean_p": mean_p, "ece": eces})
    print_summary({"benchmark": "calibration_maps", **facts, "temperature": temperature, "maps": maps, "rows": rows})


if __name__ == "__main__":
    main()
