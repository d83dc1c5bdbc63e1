"""Calibration and measurement of a trained network, on data it never trained on.

The temperature (softmax(logits / T)) and the decision threshold are chosen on the validation
split held out of every training source, the window threshold on validation photos (see
`locate.calibrate_windows`); the test splits are only measured. `birdcnn train` calls this when
a run ends and `birdcnn train --recalibrate` calls it again on a finished run.
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import sources as S
from .heap import reuse_freed_memory
from .metrics import binary_report, expected_calibration_error, fit_temperature, threshold_for_precision
from .modelfile import TTA_MODES, Classifier

if TYPE_CHECKING:
    from .train import TrainConfig


def restricted_argmax(probs: np.ndarray, classes: list[str], allowed: list[str] | None) -> np.ndarray:
    """Predicted class indices, chosen among `allowed` only (a source's own classes: CIFAR-10's
    10-class accuracy from a model that knows more classes)."""
    if not allowed or len(allowed) == len(classes):
        return probs.argmax(1)
    idx = np.array([classes.index(c) for c in allowed])
    return idx[probs[:, idx].argmax(1)]


def choose_threshold(
    y: np.ndarray, scores: np.ndarray, groups: dict[str, np.ndarray], target: float
) -> tuple[float, str]:
    """The lowest threshold reaching precision `target` on every group of the validation split
    that holds positives (thumbnails and photos apart: one threshold must serve both)."""
    found, unreachable = {}, []
    for name, m in groups.items():
        if y[m].sum() == 0:
            continue
        t = threshold_for_precision(y[m], scores[m], target)
        (unreachable.append(name) if t is None else found.__setitem__(name, t))
    if not found:
        return 0.5, f"0.5 (precision {target} unreachable on validation)"
    where = " and ".join(f"{k} ({v:.3f})" for k, v in found.items())
    rule = f"lowest threshold with precision >= {target} on the validation split: {where}"
    if unreachable:
        rule += f"; unreachable on {', '.join(unreachable)}"
    return max(found.values()), rule


# Locating the validation photos allocates large window batches, as training does (`heap`).
@reuse_freed_memory()
def calibrate_and_measure(
    clf: Classifier, cfg: "TrainConfig", mixed: S.Mixed, history: list, command: str
) -> tuple[dict, dict]:
    """Calibrate on validation, pick the threshold on validation, measure on test, per source."""
    pos, classes, val = clf.positive_index, clf.classes, mixed.val
    if clf.zoom_size and mixed.val_zoomed is None:
        S.add_zoom_views(mixed, clf.zoom_size, cfg.seed, cfg.val_size)
    photo_val = np.asarray(mixed.photo)[mixed.val_source]
    groups = {"all": np.ones(len(val), bool)}
    if photo_val.any() and not photo_val.all():
        groups = {"thumbnails": ~photo_val, "photos": photo_val}
    # Every set of test-time views gets its own temperature and threshold: averaging 6 views
    # sharpens the probabilities, so search's 2 views (or locate's 1) need their own.
    calibration = {}
    # The zoom view is part of every multi-view set (search's flip pair too), the single view aside.
    clf.zoom_tta = [m for m in TTA_MODES if m != "none" or clf.tta == "none"] if clf.zoom_size else []
    for mode in TTA_MODES:
        logits = clf.logits(val.images, tta=mode, zoomed=mixed.val_zoomed).numpy()
        t = fit_temperature(logits, val.labels)
        probs = torch.softmax(torch.from_numpy(logits) / t, 1).numpy()
        threshold, rule = choose_threshold(val.labels == pos, probs[:, pos], groups, cfg.target_precision)
        calibration[mode] = {"temperature": t, "threshold": threshold, "threshold_rule": rule}
        if mode == clf.tta:
            val_probs = probs
    temperature, threshold, rule = (calibration[clf.tta][k] for k in ("temperature", "threshold", "threshold_rule"))
    clf.temperature, clf.threshold = temperature, threshold
    clf.calibration = {m: {k: c[k] for k in ("temperature", "threshold")} for m, c in calibration.items()}

    def measure(labels: np.ndarray, probs: np.ndarray, pred: np.ndarray) -> dict:
        y = labels == pos
        return {"n": len(labels), "accuracy": float((pred == labels).mean()),
                "ece": expected_calibration_error(probs, labels),
                "bird": {**binary_report(y, probs[:, pos], threshold),
                         "ece": expected_calibration_error(probs[:, pos], y)}}

    metrics: dict = {"validation": measure(val.labels, val_probs, val_probs.argmax(1))}
    if len(groups) > 1:
        metrics["validation_groups"] = {g: measure(val.labels[m], val_probs[m], val_probs[m].argmax(1))
                                        for g, m in groups.items()}
    per_source, test_parts = {}, []
    for k, (name, test) in enumerate(mixed.tests):
        m = mixed.val_source == k
        entry = {"validation": measure(val.labels[m], val_probs[m], val_probs[m].argmax(1))}
        if test is not None:
            probs = clf.probabilities(test.images, zoomed=mixed.test_zoomed[k] if mixed.test_zoomed else None)
            pred = restricted_argmax(probs, classes, test.source_classes)
            entry["test"] = measure(test.labels, probs, pred)
            test_parts.append((test.labels, probs, pred))
        per_source[name] = entry
    if test_parts:
        metrics["test"] = measure(*(np.concatenate(a) for a in zip(*test_parts)))
    if len(mixed.tests) > 1:
        metrics["sources"] = per_source
    metrics["train_seconds"] = sum(h["seconds"] for h in history)
    metrics["temperature"] = temperature
    metrics["threshold"] = threshold
    window = {}
    if photo_val.any():
        from .locate import CALIBRATED_SCORING, calibrate_windows

        idx, k = np.nonzero(photo_val)[0], CALIBRATED_SCORING.neighbourhood
        t, info = calibrate_windows(clf, [val.paths[i] for i in idx], val.labels[idx] == pos, cfg.target_precision)
        window = {"window_threshold": t if t is not None else max(threshold, 0.5),
                  "window_scoring": asdict(CALIBRATED_SCORING),
                  "window_threshold_rule": (
                      (f"lowest score at which a photo's best locate window ({k}x{k} neighbours' mean plus "
                       f"{CALIBRATED_SCORING.whole_frame:g} x the whole frame) means "
                       f"{cfg.positive} with precision >= {cfg.target_precision} on "
                       f"{info['photos']} validation photos ({info['positives']} {cfg.positive})")
                      if t is not None else "unreachable on validation photos: the decision threshold")}
        metrics["window_threshold"] = window["window_threshold"]
    meta = {**{k: v for k, v in clf.meta.items() if k != "zoom_tta"}, "temperature": temperature,
            "threshold": threshold, "threshold_rule": rule, "calibration": clf.calibration, **window,
            **({"zoom_tta": clf.zoom_tta} if clf.zoom_size else {}),
            "resize": "central square crop, bicubic (birdcnn.images.fit_square)",
            "training": {"command": command, "data": cfg.data, "data_fingerprint": mixed.train.fingerprint,
                         "sources": [i.as_dict() for i in mixed.infos],
                         "config": asdict(cfg), "epochs_run": len(history),
                         "train_seconds": round(metrics["train_seconds"], 1), "torch": torch.__version__,
                         "date": datetime.now().isoformat(timespec="seconds")},
            "metrics": metrics}
    rows = [(split, m) for split, m in metrics.items() if isinstance(m, dict) and "accuracy" in m]
    rows += [(f"{g} (validation)", m) for g, m in metrics.get("validation_groups", {}).items()]
    rows += [(f"{S.folder_name(n)} ({split})", m)
             for n, e in metrics.get("sources", {}).items() for split, m in e.items()]
    for split, m in rows:
        b = m["bird"]
        # None is "undefined" (e.g. precision when nothing was predicted positive), not 0.
        prec, rec, ap = (f"{b[k]:.4f}" if b[k] is not None else "n/a"
                         for k in ("precision", "recall", "average_precision"))
        print(f"{split}: accuracy {m['accuracy']:.4f}  {clf.positive}: precision {prec} "
              f"recall {rec} AP {ap}  ECE {m['ece']:.4f}", file=sys.stderr)
    return meta, metrics
