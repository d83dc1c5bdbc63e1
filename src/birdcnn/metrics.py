"""Honest numbers for an imbalanced problem: precision, recall, AP, calibration, thresholds.

Written with numpy by hand (no scikit-learn dependency): each is a few lines, and the
undefined cases (no positives, no predictions) return None instead of a silent 0.
"""
from __future__ import annotations

import numpy as np


def _div(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, int]:
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    return {"tp": int((y_true & y_pred).sum()), "tn": int((~y_true & ~y_pred).sum()),
            "fp": int((~y_true & y_pred).sum()), "fn": int((y_true & ~y_pred).sum())}


def precision_recall_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) for every distinct score used as threshold (predict >= t),
    ordered by decreasing threshold."""
    y_true = np.asarray(y_true, bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, y = np.asarray(scores)[order], y_true[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / max(int(y_true.sum()), 1)
    return precision, recall, s[last]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as a step sum (scikit-learn's definition)."""
    if not np.any(y_true):
        return None
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_for_precision(y_true: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The lowest threshold (highest recall) whose precision is >= target; None if unreachable."""
    if not np.any(y_true):
        return None
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    ok = np.nonzero(precision >= target)[0]
    if len(ok) == 0:
        return None
    return float(thresholds[ok[np.argmax(recall[ok])]])


def threshold_for_recall(y_true: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The highest threshold whose recall is >= target; None if there are no positives."""
    if not np.any(y_true):
        return None
    _, recall, thresholds = precision_recall_curve(y_true, scores)
    return float(thresholds[np.nonzero(recall >= target)[0][0]])


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width confidence bins: per bin the count, mean confidence and observed frequency of
    `correct` (NaN for empty bins). Bin b holds confidences in (edges[b], edges[b+1]]; 0 goes in bin 0."""
    conf, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, minlength=bins) / count
        frequency = np.bincount(idx, correct, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "frequency": frequency}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float | None:
    """ECE of the top-class confidence (N, C probs) or of a binary probability (N,) vs 0/1 labels:
    the count-weighted mean gap between confidence and observed frequency over `reliability_bins`."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return None
    if probs.ndim == 2:
        conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    else:  # binary: reliability of p(positive) itself
        conf, correct = probs, np.asarray(labels, bool)
    r = reliability_bins(conf, correct, bins)
    m = r["count"] > 0
    return float(np.sum(r["count"][m] * np.abs(r["confidence"][m] - r["frequency"][m])) / len(conf))


def binary_report(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1, accuracy, AP and counts for 'score >= threshold' predictions."""
    y_true = np.asarray(y_true, bool)
    c = confusion_counts(y_true, np.asarray(scores) >= threshold)
    precision = _div(c["tp"], c["tp"] + c["fp"])
    recall = _div(c["tp"], c["tp"] + c["fn"])
    # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall, and also right (0) when
    # the model finds none of the positives; without positives recall, hence F1, is undefined.
    f1 = _div(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]) if recall is not None else None
    return {"accuracy": _div(c["tp"] + c["tn"], len(y_true)), "precision": precision, "recall": recall, "f1": f1,
            "average_precision": average_precision(y_true, scores), **c}


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), starting at (0, 0) with threshold +inf,
    one point per distinct score (predict >= t) by decreasing threshold. Rates are 0 for an absent class."""
    y_true = np.asarray(y_true, bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, y = np.asarray(scores, np.float64)[order], y_true[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.zeros(0, int)
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / max(int(y_true.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y_true).sum()), 1)]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (trapezoids, so tied scores count half): the chance that a random
    positive scores above a random negative. None unless both classes are present."""
    y_true = np.asarray(y_true, bool)
    if y_true.all() or not y_true.any():
        return None
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def balanced_accuracy(counts: dict[str, int]) -> float | None:
    """Mean of the recall of positives and of negatives (from `confusion_counts`): a model that
    always answers "not bird" scores 0.5, however rare birds are. None unless both classes are present."""
    tpr = _div(counts["tp"], counts["tp"] + counts["fn"])
    tnr = _div(counts["tn"], counts["tn"] + counts["fp"])
    return None if tpr is None or tnr is None else (tpr + tnr) / 2


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    idx = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (a 1-D convex search on log T)."""
    import torch

    z, y = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / np.exp(log_t), y))

    lo, hi = np.log(0.05), np.log(20.0)
    for _ in range(60):  # golden-section search
        a, b = hi - 0.618 * (hi - lo), lo + 0.618 * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))
