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


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float | None:
    """ECE of the top-class confidence (N, C probs) or of a binary probability (N,) vs 0/1 labels."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return None
    if probs.ndim == 2:
        conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    else:  # binary: reliability of p(positive) itself
        conf, correct = probs, np.asarray(labels, bool)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


def binary_report(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1, accuracy, AP and counts for 'score >= threshold' predictions."""
    y_true = np.asarray(y_true, bool)
    c = confusion_counts(y_true, np.asarray(scores) >= threshold)
    precision = _div(c["tp"], c["tp"] + c["fp"])
    recall = _div(c["tp"], c["tp"] + c["fn"])
    f1 = _div(2 * precision * recall, precision + recall) if precision is not None and recall is not None else None
    return {"accuracy": _div(c["tp"] + c["tn"], len(y_true)), "precision": precision, "recall": recall, "f1": f1,
            "average_precision": average_precision(y_true, scores), **c}


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
