"""`birdcnn evaluate`: how good is the model, honestly?

Accuracy alone lies: on CIFAR-10 a network that never says "bird" is 90% accurate. So this
measures bird vs not-bird at the model's decision threshold with the numbers that do not lie
(precision, recall, F1, balanced accuracy, average precision, ROC AUC, the four counts),
calibration, and, for multi-class models, per-class accuracy and the confusion matrix. The
table, the JSON and the pictures (curves, galleries, report.html) are made by `birdcnn.report`;
the command line is `birdcnn.evaluate_cli`.

Images are streamed in chunks (decode, classify, keep only the few each gallery shows), so
memory stays flat on large folders: only the probabilities of every image are kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from . import data as D
from . import metrics as M
from .errors import DataError, FileProblem
from .images import OtherFiles
from .modelfile import Classifier, Zoomed
from .sources import canonical_class

CHUNK = 2000  # images decoded and classified at a time
GROUPS = ("tp", "tn", "fp", "fn")  # the four galleries: true/false positives/negatives


# ---------------------------------------------------------------- data, streamed

@dataclass
class Source:
    """A labelled data source opened for streaming: iterate for (images, labels, paths, zoomed)
    chunks (`zoomed`: the photos' views at `zoom_size`, as `predict` decodes them)."""

    name: str
    split: str                      # "test" (the source's test split) or "all" (no split: every image)
    classes: list[str]
    count: int                      # images listed (before unreadable ones are skipped)
    skipped: list[FileProblem] = field(default_factory=list)  # unreadable images, filled while iterating
    _dataset: D.Dataset | None = None
    _files: list[tuple[Path, int]] | None = None
    size: int = 32
    zoom_size: int | None = None
    other: OtherFiles = field(default_factory=OtherFiles)  # files passed over as not images, by suffix

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, list[str] | None, Zoomed | None]]:
        if self._dataset is not None:  # CIFAR-10 batches: already one 30 MB array of thumbnails
            ds = self._dataset
            for i in range(0, len(ds), CHUNK):
                yield ds.images[i:i + CHUNK], ds.labels[i:i + CHUNK], None, None
            return
        for i in range(0, len(self._files), CHUNK):
            part = self._files[i:i + CHUNK]
            images, ok, problems, zoomed = D.decode_views([p for p, _ in part], self.size, self.zoom_size)
            self.skipped += problems
            yield images, np.array([part[j][1] for j in ok], np.int64), [str(part[j][0]) for j in ok], zoomed


def open_source(source: str, size: int = 32, zoom_size: int | None = None) -> Source:
    """Open a data source as in training; its test split when it has one, else all of it
    (`zoom_size`: a model's, for its photos' second views).

    CIFAR-10 batches are loaded whole (10,000 images, 30 MB); folders of class folders (or a
    tar of them) are listed now and decoded chunk by chunk while iterating.
    """
    r = D.resolve_source(source)
    if r.kind != "class-folders":
        ds = D.load_split(r, "test", size)
        return Source(str(source), "test", list(ds.classes), len(ds), _dataset=ds, size=size)
    root, classes = r.class_folder("test")
    classes, files, other, unreadable = D.scan_class_folder(root, classes)
    # Folders that could not be read and archive members that could not be extracted: reported
    # with the unreadable images.
    skipped = unreadable + r.unextracted_under(root)
    if not files:
        raise DataError(f"{root}: no images found (expected class sub-folders such as {root}/bird/*.jpg)")
    return Source(str(source), "test" if r.split_folders else "all", classes, len(files) + len(skipped),
                  skipped=skipped, _files=files, size=size, zoom_size=zoom_size, other=other)


# ---------------------------------------------------------------- gallery candidates

class Extremes:
    """The k images with the highest (or lowest) scores seen so far, ties to the earliest: O(k) memory."""

    def __init__(self, k: int, highest: bool, size: int):
        self.k, self.highest = k, highest
        self.scores = np.zeros(0, np.float64)
        self.images = np.zeros((0, size, size, 3), np.uint8)
        self.labels = np.zeros(0, np.int64)
        self.paths: list[str | None] = []

    def add(self, scores: np.ndarray, images: np.ndarray, labels: np.ndarray, paths: list[str] | None) -> None:
        if self.k == 0 or len(scores) == 0:
            return
        pre = np.argsort(-scores if self.highest else scores, kind="stable")[: self.k]  # this chunk's best
        s = np.r_[self.scores, scores[pre]]
        keep = np.argsort(-s if self.highest else s, kind="stable")[: self.k]
        self.scores = s[keep]
        self.images = np.concatenate([self.images, images[pre]])[keep]
        self.labels = np.r_[self.labels, labels[pre]][keep]
        every = self.paths + [paths[i] if paths else None for i in pre]
        self.paths = [every[i] for i in keep]

    def where(self, mask: np.ndarray) -> "Extremes":
        out = Extremes(self.k, self.highest, self.images.shape[1])
        out.scores, out.images, out.labels = self.scores[mask], self.images[mask], self.labels[mask]
        out.paths = [p for p, m in zip(self.paths, mask) if m]
        return out


# ---------------------------------------------------------------- the evaluation

@dataclass
class Evaluation:
    """Everything `birdcnn evaluate` measured; `summary()` is the JSON, `birdcnn.report` draws the rest."""

    model: str
    data: str
    split: str
    positive: str
    threshold: float
    threshold_rule: str
    target: dict | None              # {"precision" or "recall": goal, "threshold": t or None}
    bird: dict                       # bird-vs-not-bird metrics at `threshold`
    classes: dict | None             # multi-class metrics, when the model and data allow them
    classes_note: str | None         # why `classes` is absent, for people
    skipped: list[str]               # the unreadable images as reported: "path: problem" (str of FileProblem)
    seconds: float
    is_positive: np.ndarray          # (N,) bool: the image shows the positive class
    scores: np.ndarray               # (N,) float: the model's calibrated p(positive)
    class_confidence: np.ndarray | None = None  # (N,) top-class probability (multi-class only)
    class_correct: np.ndarray | None = None     # (N,) bool: top class is the true class
    galleries: dict[str, Extremes] = field(default_factory=dict)  # "tp", "tn", "fp", "fn"
    data_classes: list[str] = field(default_factory=list)
    false_alarms: dict[str, dict] = field(default_factory=dict)  # per non-positive folder, highest rate first
    other: OtherFiles = field(default_factory=OtherFiles)  # files passed over as not images, by suffix

    @property
    def n(self) -> int:
        return len(self.scores)

    def summary(self) -> dict:
        # Metrics are rounded for reading; thresholds are not (rounding could move an image across).
        out = {"n": self.n, "threshold": self.threshold, "bird": {k: _r(v) for k, v in self.bird.items()}}
        if self.classes is not None:
            out["classes"] = self.classes
        if self.false_alarms:
            out["false_alarms"] = self.false_alarms
        out.update({"positive": self.positive, "threshold_rule": self.threshold_rule, "target": self.target,
                    "model": self.model, "data": self.data, "split": self.split,
                    "skipped": list(self.skipped), "n_skipped": len(self.skipped), "seconds": round(self.seconds, 2)})
        return out


def _r(v):
    return round(v, 6) if isinstance(v, float) else v


def _label_maps(source: Source, model: Classifier,
                any_classes: bool = False) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """(data label -> is positive, data label -> model class index or None, note when there is none).

    Class names meet as in training (`sources.canonical_class`: 'car' is 'automobile'). Every
    folder not named like the positive class counts as "not positive"; a source with no positive
    folder must say so by naming one ``not_<positive>`` (else a typo such as 'brids' would
    silently mean "no birds"), unless `any_classes` (data known to hold none, e.g. for false alarms)."""
    pos, classes = model.positive, source.classes
    names = [canonical_class(c) for c in classes]
    if pos not in names and f"not_{pos}" not in classes and not any_classes:
        raise DataError(f"{source.name}: the model's positive class {pos!r} is not among the data's classes "
                        f"({', '.join(classes)}); name its folder {pos!r} (or 'not_{pos}' for data with none)")
    is_pos = np.array([n == pos for n in names])
    if len(model.classes) <= 2:
        return is_pos, None, None
    missing = [c for c, n in zip(classes, names) if n not in model.classes]
    if missing:
        return is_pos, None, f"per-class accuracy: n/a (data classes not known to the model: {', '.join(missing[:5])})"
    return is_pos, np.array([model.classes.index(n) for n in names]), None


def false_alarms(labels: np.ndarray, scores: np.ndarray, threshold: float, is_pos_of: np.ndarray,
                 classes: list[str]) -> dict[str, dict]:
    """Per non-positive data folder: how many images, how many called positive, the rate;
    highest rate first (which kinds of things are mistaken for birds)."""
    out = {}
    for i, name in enumerate(classes):
        m = labels == i
        if is_pos_of[i] or not m.any():
            continue
        k = int((scores[m] >= threshold).sum())
        out[name] = {"n": int(m.sum()), "flagged": k, "rate": _r(k / int(m.sum()))}
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["rate"], kv[0])))


def evaluate(model: Classifier, source: str | Source, model_name: str = "", threshold: float | None = None,
             target_precision: float | None = None, target_recall: float | None = None,
             gallery_size: int = 48, progress: bool = False, any_classes: bool = False) -> Evaluation:
    """Classify every image of `source` with `model` and measure the results.

    The operating threshold is `threshold`, else the one reaching `target_precision` or
    `target_recall` on this data (when reachable), else the model's own. `any_classes`: accept
    data with no folder of the positive class (to measure false alarms only).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    src = source if isinstance(source, Source) else open_source(source, model.input_size, model.zoom_size)
    is_pos_of, model_index_of, note = _label_maps(src, model, any_classes)
    k, size = gallery_size, model.input_size
    # Each gallery shows its most confident members; which images those are does not depend on
    # the threshold (e.g. false positives = the highest-scored negatives that reach it), so the
    # threshold may be chosen after the pass.
    cand = {"pos_high": Extremes(k, True, size), "pos_low": Extremes(k, False, size),
            "neg_high": Extremes(k, True, size), "neg_low": Extremes(k, False, size)}
    probs, labels = [], []
    with tqdm(total=src.count, unit="img", desc="evaluating", disable=not progress) as bar:
        seen_skipped = 0
        for images, lab, paths, zoomed in src:
            bar.update(len(lab) + len(src.skipped) - seen_skipped)
            seen_skipped = len(src.skipped)
            if len(lab) == 0:
                continue
            pr = model.probabilities(images, zoomed=zoomed)
            p = pr[:, model.positive_index].astype(np.float64)
            pos = is_pos_of[lab]
            for name, m in (("pos", pos), ("neg", ~pos)):
                sub = [paths[i] for i in np.nonzero(m)[0]] if paths else None
                for side in ("high", "low"):
                    cand[f"{name}_{side}"].add(p[m], images[m], lab[m], sub)
            probs.append(pr)
            labels.append(lab)
    if not labels:
        raise DataError(f"{src.name}: none of the {src.count} images could be read (first: {src.skipped[0]})")
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    scores, y = probs[:, model.positive_index].astype(np.float64), is_pos_of[labels]

    threshold, rule, target = _choose_threshold(model, y, scores, threshold, target_precision, target_recall)
    r = M.binary_report(y, scores, threshold)
    bird = {"accuracy": r["accuracy"], "balanced_accuracy": M.balanced_accuracy(r),
            **{key: r[key] for key in ("precision", "recall", "f1", "average_precision")},
            "roc_auc": M.roc_auc(y, scores), **{key: r[key] for key in ("tp", "tn", "fp", "fn")},
            "ece": M.expected_calibration_error(scores, y), "positives": int(y.sum())}

    classes = conf = correct = None
    if model_index_of is not None:
        # The choice among the data's own classes: CIFAR-10's 10-class accuracy from a model
        # that knows more classes (for a model of exactly these classes, the plain argmax).
        own = probs[:, model_index_of]
        own = own / own.sum(1, keepdims=True)
        classes = _class_metrics(own, labels, list(src.classes))
        conf, correct = own.max(1).astype(np.float64), own.argmax(1) == labels

    galleries = {"tp": cand["pos_high"].where(cand["pos_high"].scores >= threshold),
                 "fn": cand["pos_low"].where(cand["pos_low"].scores < threshold),
                 "fp": cand["neg_high"].where(cand["neg_high"].scores >= threshold),
                 "tn": cand["neg_low"].where(cand["neg_low"].scores < threshold)}
    return Evaluation(model=model_name, data=src.name, split=src.split, positive=model.positive,
                      threshold=float(threshold), threshold_rule=rule, target=target, bird=bird, classes=classes,
                      classes_note=note, skipped=[str(f) for f in src.skipped], seconds=time.perf_counter() - t0,
                      is_positive=y, scores=scores, class_confidence=conf, class_correct=correct,
                      galleries=galleries, data_classes=list(src.classes),
                      false_alarms=false_alarms(labels, scores, threshold, is_pos_of, src.classes), other=src.other)


def _choose_threshold(model: Classifier, y: np.ndarray, scores: np.ndarray, threshold: float | None,
                      target_precision: float | None, target_recall: float | None) -> tuple[float, str, dict | None]:
    """(threshold, how it was chosen, {goal: value, "threshold": t or None} for a target)."""
    if threshold is not None:
        return threshold, "given with --threshold", None
    threshold, rule = model.threshold, f"the model's ({model.meta.get('threshold_rule', 'stored threshold')})"
    if target_precision is None and target_recall is None:
        return threshold, rule, None
    if target_precision is not None:
        kind, goal, t = "precision", target_precision, M.threshold_for_precision(y, scores, target_precision)
        how = f"the lowest threshold reaching precision {goal} on this data"
    else:
        kind, goal, t = "recall", target_recall, M.threshold_for_recall(y, scores, target_recall)
        how = f"the highest threshold reaching recall {goal} on this data"
    if t is None:
        why = "no positive images" if not y.any() else "not reached at any threshold"
        return threshold, f"{rule}; {kind} {goal} is unreachable on this data ({why})", {kind: goal, "threshold": None}
    return t, how, {kind: goal, "threshold": t}


def _class_metrics(probs: np.ndarray, true: np.ndarray, names: list[str]) -> dict:
    """Overall and per-class accuracy (None for a class with no images), confusion matrix, top-class ECE."""
    cm = M.confusion_matrix(true, probs.argmax(1), len(names))
    rows = cm.sum(1)
    return {"accuracy": _r(float(np.trace(cm) / cm.sum())),
            "per_class": {name: (_r(float(cm[i, i] / rows[i])) if rows[i] else None) for i, name in enumerate(names)},
            "confusion": cm.tolist(), "names": list(names), "ece": _r(M.expected_calibration_error(probs, true))}
