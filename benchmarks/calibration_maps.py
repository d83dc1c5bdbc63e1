"""Can one map of p(bird) calibrate every source? ECE of p(bird) per source under maps fitted on validation.

The model's temperature is fitted to all 283 classes at once; the question here is whether a
further map of the bird's log-odds x (p(bird) = sigmoid(a x + c)), fitted on the validation split
(to all of it, or to its photos only), brings the expected calibration error of p(bird) within the
issue's 2% on every source at once. Any such map is monotone, so AP and the decisions at a
re-chosen threshold are unchanged: only what the printed probability means changes.
(`class_prior.py` tries the remedies that come from class priors instead: logit adjustment and EM.)

The validation split and the test splits are rebuilt exactly as the run made them (its recorded
config, as `birdcnn train --recalibrate` does), and scored with the model's views (its zoom view too).

    python benchmarks/calibration_maps.py [--model PATH]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from birdcnn.metrics import expected_calibration_error, fit_temperature
from birdcnn.modelfile import load_model
from birdcnn.sources import add_zoom_views, folder_name
from birdcnn.train import TrainConfig, prepare_data

from common import print_machine_facts, print_summary, recorded_source


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
    args = ap.parse_args()
    facts = print_machine_facts()
    clf = load_model(args.model)
    cfg = TrainConfig(**clf.meta["training"]["config"])
    cfg.data = [recorded_source(d) for d in ([cfg.data] if isinstance(cfg.data, str) else cfg.data)]
    cfg.zoom_size = clf.zoom_size
    mixed = prepare_data(cfg)
    if clf.zoom_size:
        add_zoom_views(mixed, clf.zoom_size, cfg.seed, cfg.val_size)
    bird, val = clf.positive_index, mixed.val
    logits = clf.logits(val.images, tta=clf.tta, zoomed=mixed.val_zoomed).numpy()
    temperature = fit_temperature(logits, val.labels)
    x, y = bird_log_odds(logits, temperature, bird), val.labels == bird
    photo = np.asarray(mixed.photo)[mixed.val_source]
    maps = {"temperature": (1.0, 0.0), "+ shift (all)": fit_map(x, y, False),
            "+ shift (photos)": fit_map(x[photo], y[photo], False),
            "+ Platt (all)": fit_map(x, y, True), "+ Platt (photos)": fit_map(x[photo], y[photo], True)}
    print(f"temperature {temperature:.3f}; maps (a, c): "
          + ", ".join(f"{k} ({a:.3f}, {c:.3f})" for k, (a, c) in maps.items()))
    print("\n| source, split | birds / images | mean p(bird) | " + " | ".join(maps) + " |")
    print("|---|---|---|" + "---|" * len(maps))
    rows = []
    for k, (name, test) in enumerate(mixed.tests):
        m = mixed.val_source == k
        splits = [("validation", x[m], y[m])]
        if test is not None:
            zoomed = mixed.test_zoomed[k] if mixed.test_zoomed else None
            splits.append(("test", bird_log_odds(clf.logits(test.images, tta=clf.tta, zoomed=zoomed).numpy(),
                                                 temperature, bird), test.labels == bird))
        for split, xs, ys in splits:
            if not ys.any():
                continue
            eces = {k: expected_calibration_error(1 / (1 + np.exp(-(a * xs + c))), ys) for k, (a, c) in maps.items()}
            mean_p = float(np.mean(1 / (1 + np.exp(-xs))))
            print(f"| {folder_name(name)}, {split} | {int(ys.sum())} / {len(ys)} | {mean_p:.3f} | "
                  + " | ".join(f"{e:.3f}" for e in eces.values()) + " |", flush=True)
            rows.append({"source": folder_name(name), "split": split, "birds": int(ys.sum()), "n": len(ys),
                         "mean_p": mean_p, "ece": eces})
    print_summary({"benchmark": "calibration_maps", **facts, "temperature": temperature, "maps": maps, "rows": rows})


if __name__ == "__main__":
    main()
