"""The metrics against values worked out by hand on small fixed cases, degenerate ones included."""
from __future__ import annotations

import numpy as np
import pytest

from birdcnn import metrics as M

# Six images, three birds. Sorted by score: 0.9 bird, 0.7 not, 0.6 bird, 0.4 bird, 0.2 not, 0.1 not.
Y = np.array([1, 1, 0, 0, 1, 0], bool)
S = np.array([0.9, 0.6, 0.7, 0.2, 0.4, 0.1])


def test_binary_report_by_hand():
    r = M.binary_report(Y, S, 0.5)  # called bird: 0.9 (bird), 0.7 (not), 0.6 (bird)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 1, 1, 2)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    # AP = sum over recall steps of precision: 1/3 * 1 (t=.9) + 1/3 * 2/3 (t=.6) + 1/3 * 3/4 (t=.4)
    assert r["average_precision"] == pytest.approx(1 / 3 + 2 / 9 + 1 / 4)
    assert M.balanced_accuracy(M.confusion_counts(Y, S >= 0.5)) == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_precision_recall_curve_by_hand():
    precision, recall, thresholds = M.precision_recall_curve(Y, S)
    assert thresholds.tolist() == [0.9, 0.7, 0.6, 0.4, 0.2, 0.1]
    assert precision == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 3 / 6])
    assert recall == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1, 1, 1])


def test_roc_auc_by_hand():
    # Bird scores 0.9, 0.6, 0.4 against not-bird 0.7, 0.2, 0.1: 3 + 2 + 2 of the 9 pairs ordered right.
    assert M.roc_auc(Y, S) == pytest.approx(7 / 9)
    fpr, tpr, thresholds = M.roc_curve(Y, S)
    assert fpr == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    assert tpr == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    assert thresholds[0] == np.inf
    # A tie between a bird and a not-bird counts half; a perfect ranking scores 1.
    assert M.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.roc_auc([1, 1, 0], [0.8, 0.9, 0.1]) == pytest.approx(1.0)


def test_thresholds_by_hand():
    # Precision >= 0.7 holds at t=0.9 (recall 1/3) and t=0.4 (precision 3/4, recall 1): the lower wins.
    assert M.threshold_for_precision(Y, S, 0.7) == pytest.approx(0.4)
    assert M.threshold_for_precision(Y, S, 1.0) == pytest.approx(0.9)
    assert M.threshold_for_recall(Y, S, 0.6) == pytest.approx(0.6)
    assert M.threshold_for_recall(Y, S, 1.0) == pytest.approx(0.4)
    # The top-scored image is not a bird, and the only other is: precision 0.9 is out of reach.
    assert M.threshold_for_precision([0, 1], [0.9, 0.5], 0.9) is None


def test_reliability_and_ece_by_hand():
    p, y = np.array([0.85, 0.85, 0.15, 0.15]), np.array([1, 0, 0, 0])
    r = M.reliability_bins(p, y, bins=10)
    assert r["count"].tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 2, 0]
    filled = r["count"] > 0
    assert r["confidence"][filled] == pytest.approx([0.15, 0.85])
    assert r["frequency"][filled].tolist() == [0.0, 0.5]
    assert np.isnan(r["frequency"][~filled]).all()  # empty bins: no frequency, not 0
    # ECE: half the images say 0.85 and half of them are birds, half say 0.15 and none are: 0.5*0.35 + 0.5*0.15.
    assert M.expected_calibration_error(p, y) == pytest.approx(0.25)
    # Multi-class: top-class confidences 0.8 (right) and 0.6 (wrong): 0.5*0.2 + 0.5*0.6.
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert M.expected_calibration_error(probs, np.array([0, 0])) == pytest.approx(0.4)


def test_confusion_matrix_by_hand():
    cm = M.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_only_positives():
    y, s = np.ones(3, bool), np.array([0.9, 0.2, 0.6])
    r = M.binary_report(y, s, 0.5)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (2, 1, 0, 0)
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(2 / 3) and r["f1"] == pytest.approx(0.8)
    assert r["average_precision"] == pytest.approx(1.0)
    # Undefined without negatives: None, never a made-up 0 or 1.
    assert M.roc_auc(y, s) is None
    assert M.balanced_accuracy(M.confusion_counts(y, s >= 0.5)) is None


def test_no_positives():
    y, s = np.zeros(3, bool), np.array([0.9, 0.2, 0.6])
    r = M.binary_report(y, s, 0.5)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (0, 0, 2, 1)
    assert r["accuracy"] == pytest.approx(1 / 3)
    assert r["precision"] == 0.0  # two bird calls, both wrong: a real 0
    assert r["recall"] is None and r["f1"] is None and r["average_precision"] is None
    assert M.roc_auc(y, s) is None
    assert M.balanced_accuracy(M.confusion_counts(y, s >= 0.5)) is None
    assert M.threshold_for_precision(y, s, 0.9) is None and M.threshold_for_recall(y, s, 0.9) is None
    # No bird calls at all: precision is undefined too.
    assert M.binary_report(y, s, 0.95)["precision"] is None


def test_f1_is_zero_when_every_bird_is_missed():
    r = M.binary_report([1, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert r["precision"] is None and r["recall"] == 0.0 and r["f1"] == 0.0


def test_roc_auc_matches_pairwise_count_on_random_ties():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    s = np.round(rng.random(300), 1) + 0.2 * y  # many ties
    pos, neg = s[y][:, None], s[~y][None]
    expected = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    assert M.roc_auc(y, s) == pytest.approx(expected)


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    """Labels drawn from softmax(z / 2.5): the fitted temperature is 2.5 (within sampling error),
    and dividing by it lowers the NLL compared with T = 1."""
    import torch

    from birdcnn.metrics import fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, size=(20000, 10))
    p = np.exp(z / 2.5 - (z / 2.5).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(10, p=row) for row in p])
    t = fit_temperature(z, y)
    assert abs(t - 2.5) < 0.1, t
    nll = [float(torch.nn.functional.cross_entropy(torch.tensor(z / s), torch.tensor(y))) for s in (1.0, t)]
    assert nll[1] < nll[0]
