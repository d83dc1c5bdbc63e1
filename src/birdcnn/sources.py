"""Several `--data` sources trained as one model: how their classes meet, and what each is.

Class names meet by a normalised name (lower case, spaces and hyphens as ``_``) and the small
`SYNONYMS` table (``car`` and ``automobile`` are one class; Tiny ImageNet's cat and dog breeds
are ``cat`` and ``dog``); a class found in one source only is a class of its own. Every class
is a word `birdcnn search --for` understands.

A source is a *thumbnail* source when its images are no larger than the model's input (CIFAR-10
at 32 px, 30 px natural images) and a *photo* source otherwise. Training stores every image at
`STORE_SCALE` x the input size (thumbnails by exact pixel repetition) so it can cut photo-like
random crops from photos; validation and test images are decoded exactly as `predict` sees them.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import data as D
from .errors import DataError
from .images import PHOTO_SCALE, is_image_path

if TYPE_CHECKING:
    from .modelfile import Zoomed

STORE_SCALE = 2  # training copies of photos at 2x the input: crops down to ~1/4 of the side stay sharp-ish
# Names that mean the same thing across the shared sources (and commonly elsewhere).
SYNONYMS = {
    "car": "automobile", "airplanes": "airplane", "motorbikes": "motorbike", "faces": "person",
    "face": "person", "people": "person", "birds": "bird",
    "egyptian_cat": "cat", "persian_cat": "cat", "tabby": "cat", "tabby_cat": "cat",
    "chihuahua": "dog", "german_shepherd": "dog", "golden_retriever": "dog", "labrador_retriever": "dog",
    "standard_poodle": "dog", "yorkshire_terrier": "dog",
}


def canonical_class(name: str) -> str:
    """The merged name of a data class: normalised, then through `SYNONYMS`."""
    n = "_".join(name.strip().lower().replace("-", " ").split())
    return SYNONYMS.get(n, n)


@dataclass
class SourceInfo:
    """One training source, as recorded in the model's metadata."""

    name: str
    fingerprint: str
    photo: bool
    weight: float
    counts: dict[str, int]          # training images per (merged) class
    validation: int = 0

    def as_dict(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "kind": "photos" if self.photo else "thumbnails",
                "weight": self.weight, "train": sum(self.counts.values()), "validation": self.validation,
                "classes": self.counts}


def is_photo_source(r: D.ResolvedSource, size: int) -> bool:
    """Photos are larger than the model's input; judged from the headers of a few files."""
    if r.kind != "class-folders":
        return False  # CIFAR-10 batches: 32 px
    root, classes = r.class_folder("train")
    sides = []
    for c in classes:
        try:
            first = sorted((root / c).iterdir())[:3]
        except OSError:
            continue
        for p in first:
            try:  # a broken link or a name too long is judged later, as an unreadable image
                if p.is_file() and is_image_path(p):
                    with Image.open(p) as im:
                        sides.append(min(im.size))
            except Exception:  # noqa: BLE001 - judged later, with its reason, as an unreadable image
                continue
        if len(sides) >= 12:
            break
    return bool(sides) and float(np.median(sides)) > PHOTO_SCALE * size


def upsample_exact(images: np.ndarray, factor: int) -> np.ndarray:
    """Repeat every pixel `factor` x `factor` times: a 2x2 average gives the original back exactly."""
    return np.ascontiguousarray(images.repeat(factor, 1).repeat(factor, 2))


def _remap(ds: D.Dataset, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[canonical_class(c)] for c in ds.classes], np.int64)[ds.labels]


@dataclass
class Mixed:
    """Training (store-size) and validation (model-view) images of several sources, merged."""

    train: D.Dataset
    val: D.Dataset
    train_source: np.ndarray      # source index per training image
    val_source: np.ndarray
    photo: list[bool]             # per source
    infos: list[SourceInfo]
    tests: list[tuple[str, D.Dataset | None]]  # each source's test split at the model's view (None: none)
    store_scale: int = 1          # training images are stored at store_scale x the input size
    val_zoomed: Zoomed | None = None  # photo sources' validation images at a model's zoom_size (`add_zoom_views`)
    test_zoomed: list[Zoomed | None] = field(default_factory=list)  # and their test splits, per source

    @property
    def photo_views(self) -> bool:
        """Whether training cuts photo views (`augment.PhotoViews`) from stored images."""
        return self.store_scale > 1


def add_extra_positive(mixed: Mixed, spec: str, positive: str) -> None:
    """The article's way to balance the classes: every image of `spec` joins the positive class.

    `spec` is a folder of images (searched recursively), or a class-folder source (folder or
    archive) whose training split has a `positive` folder (e.g. realphotos.tar.gz: its birds)."""
    size = mixed.val.images.shape[1]
    folder = Path(spec)
    r = D.resolve_source(spec) if folder.is_file() else None
    if r is None and folder.is_dir() and (folder / positive).is_dir():
        r = D.resolve_source(folder)
    if r is not None and r.kind == "class-folders":
        root, _ = r.class_folder("train")
        if not (root / positive).is_dir():
            raise DataError(f"{spec}: no {positive!r} folder in its training split (--extra-positive)")
        folder = root / positive
    ds = D.add_extra_positive(D.Dataset(np.empty((0, size, size, 3), np.uint8), np.empty(0, np.int64),
                                        mixed.train.classes, ""), folder, positive)
    images = upsample_exact(ds.images, mixed.store_scale)
    t = mixed.train
    mixed.train = D.Dataset(np.concatenate([t.images, images]), np.concatenate([t.labels, ds.labels]), t.classes,
                            t.fingerprint + ds.fingerprint)
    mixed.train_source = np.concatenate([mixed.train_source, np.full(len(ds), len(mixed.infos))])
    mixed.photo.append(False)
    mixed.infos.append(SourceInfo(f"{spec} (--extra-positive)", ds.fingerprint.lstrip("+"), False, 1.0,
                                  {positive: len(ds)}))


def add_zoom_views(mixed: Mixed, zoom_size: int, seed: int, val_size: int | None = None) -> None:
    """Photo sources' validation and test images at `zoom_size` px too (`val_zoomed`, `test_zoomed`):
    the second views `predict` gives photos, so that calibration and the measured test splits see
    what `predict` sees. Thumbnail sources get none, as thumbnails get none in `predict`."""
    vals, tests = [], []
    for k, (spec, test) in enumerate(mixed.tests):
        test_zoomed = None
        if mixed.photo[k]:
            r = D.resolve_source(spec)
            view = D.load_split(r, "train", zoom_size)
            _, va = D.split_validation(len(view), validation_count(len(view), val_size), seed + k)
            where = np.nonzero(mixed.val_source == k)[0]
            if [view.paths[i] for i in va] != [mixed.val.paths[i] for i in where]:
                raise DataError(f"{spec}: files changed since the run was loaded; run again")
            vals.append((where, view.images[va]))
            if test is not None:
                zoomed = D.load_split(r, "test", zoom_size)
                if zoomed.paths != test.paths:
                    raise DataError(f"{spec}: test files changed since the run was loaded; run again")
                test_zoomed = (np.arange(len(zoomed)), zoomed.images)
        tests.append(test_zoomed)
    mixed.val_zoomed = (np.concatenate([w for w, _ in vals]), np.concatenate([v for _, v in vals])) if vals else None
    mixed.test_zoomed = tests


def validation_count(n: int, val_size: int | None = None) -> int:
    """Images held out of a source's training split: `val_size`, else 5,000 of a large source, else 10%."""
    if val_size is not None:
        return val_size
    return 5000 if n >= 20000 else max(1, n // 10)


def load_sources(specs: list[str], size: int, seed: int, weights: list[float] | None = None,
                 val_size: int | None = None) -> Mixed:
    """Load every source's train split (validation held out of each, `validation_count`) and
    test split, so the threshold and temperature are chosen on every kind of data trained on."""
    weights = weights or [1.0] * len(specs)
    if len(weights) != len(specs):
        raise DataError(f"{len(weights)} source weights for {len(specs)} --data sources")
    resolved = [D.resolve_source(s) for s in specs]
    photo = [is_photo_source(r, size) for r in resolved]
    scale = STORE_SCALE if any(photo) else 1  # thumbnails only: stored as they are, no crops
    view_sets, tests = [], []
    for spec, r in zip(specs, resolved):
        view = D.load_split(r, "train", size)
        if view.skipped:
            print(f"warning: {spec}: skipped {len(view.skipped)} unreadable files (first: {view.skipped[0]})",
                  file=sys.stderr)
        view_sets.append(view)
        test = None
        if r.has_test_split:
            try:
                test = D.load_split(r, "test", size)
            except DataError as e:
                print(f"warning: {spec}: no test split ({e})", file=sys.stderr)
        tests.append((spec, test))
    classes: list[str] = []
    for ds in view_sets:
        for c in ds.classes:
            if canonical_class(c) not in classes:
                classes.append(canonical_class(c))

    if len(classes) < 2:
        raise DataError(f"{', '.join(map(str, specs))}: only one class ({classes[0]!r}): "
                        f"a classifier needs at least two (e.g. bird/ and not_bird/ folders)")
    splits = []
    for k, (spec, view) in enumerate(zip(specs, view_sets)):
        n_val = validation_count(len(view), val_size)
        if not 0 < n_val < len(view):
            raise DataError(f"{spec}: {len(view)} images are too few to hold out {n_val} for validation")
        splits.append(D.split_validation(len(view), n_val, seed + k))
    # The training images at the store size go straight into one array, a source (or a chunk of
    # thumbnails) at a time: holding every source's full-size copy, their training rows and the
    # concatenation at once took three times the memory (more than 24 GB at an 80-px view).
    store = size * scale
    train_images = np.empty((sum(len(tr) for tr, _ in splits), store, store, 3), np.uint8)
    tr_lab, tr_src, va_img, va_lab, va_src, va_paths, infos = [], [], [], [], [], [], []
    at = 0
    for k, (spec, r, view, (tr, va)) in enumerate(zip(specs, resolved, view_sets, splits)):
        rows = train_images[at:at + len(tr)]
        if photo[k]:
            stored = D.load_split(r, "train", store)
            if stored.paths != view.paths:
                raise DataError(f"{spec}: files changed while loading; run again")
            np.take(stored.images, tr, axis=0, out=rows)
            del stored
        else:
            for i in range(0, len(tr), 4096):
                rows[i:i + 4096] = upsample_exact(view.images[tr[i:i + 4096]], scale)
        at += len(tr)
        labels = _remap(view, classes)
        tr_lab.append(labels[tr]), tr_src.append(np.full(len(tr), k))
        va_img.append(view.images[va]), va_lab.append(labels[va]), va_src.append(np.full(len(va), k))
        va_paths += [view.paths[i] for i in va] if view.paths else [f"{spec}#{i}" for i in va]
        counts = np.bincount(labels[tr], minlength=len(classes))
        infos.append(SourceInfo(str(spec), view.fingerprint, photo[k], float(weights[k]),
                                {c: int(counts[i]) for i, c in enumerate(classes) if counts[i]}, len(va)))
        view_sets[k] = None  # its validation rows are copied out; the rest is not needed again
    fingerprint = "+".join(i.fingerprint for i in infos)
    train = D.Dataset(train_images, np.concatenate(tr_lab), classes, fingerprint)
    val = D.Dataset(np.concatenate(va_img), np.concatenate(va_lab), classes, fingerprint, va_paths)
    tests = [(spec, _to_classes(t, classes) if t is not None else None) for spec, t in tests]
    return Mixed(train, val, np.concatenate(tr_src), np.concatenate(va_src), photo, infos, tests, scale)


def _to_classes(ds: D.Dataset, classes: list[str]) -> D.Dataset:
    """A source's test split relabelled into the merged class list (its own class names kept as
    `source_classes` so evaluation can restrict the choice to them)."""
    own = sorted({canonical_class(c) for c in ds.classes}, key=classes.index)
    return D.Dataset(ds.images, _remap(ds, classes), classes, ds.fingerprint, ds.paths, ds.skipped, own)


def folder_name(spec: str) -> str:
    """A short name for a source in tables: the file or folder name without archive suffixes."""
    name = Path(str(spec)).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def known_words() -> str:
    """For --help: the words (classes) the shipped model knows. Reads its JSON only: no torch."""
    import json
    from importlib import resources

    try:
        meta = json.loads((resources.files("birdcnn") / "assets" / "model" / "default.json").read_text())
        classes = sorted(meta["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"The shipped model knows {len(classes)} words: {', '.join(classes)}."
