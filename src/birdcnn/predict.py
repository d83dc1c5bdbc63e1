"""`birdcnn predict`: classify photos of any size and format."""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .backends import BACKENDS
from .devices import add_device_argument, chosen_device
from .errors import BirdcnnError, FileProblem, ImageError, display_path
from .images import is_image_path, load_views
from .modelfile import Classifier, load_model, stack_zoomed


def sample_images() -> list[Path]:
    """The small sample images shipped inside the package (CIFAR-10 test images)."""
    folder = Path(str(resources.files("birdcnn") / "assets" / "samples"))
    return sorted(folder.glob("*.png"))


def classify(
    paths: list[str | Path] | str | Path, model: Classifier | None = None, batch_size: int = 256
) -> list[dict]:
    """Classify image files (a list of paths, or one path). Returns one record per path, in order:
    the prediction, or `{"path", "error"}` for a file that could not be read."""
    return list(iter_classify(paths, model, batch_size))


def iter_classify(
    paths: Iterable[str | Path] | str | Path, model: Classifier | None = None, batch_size: int = 256
) -> Iterator[dict]:
    """`classify`, record by record as each batch of `batch_size` images is scored: a folder of
    thousands of photos is answered as it goes, not all at the end."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]  # not one record per character
    model = model or load_model()
    records: list[dict] = []
    good: list[tuple[int, np.ndarray, np.ndarray | None]] = []  # (record, view, zoom view)
    for p in paths:
        try:
            good.append((len(records), *load_views(p, model.input_size, model.zoom_size)))
            records.append({"path": str(p)})
        except ImageError as e:
            records.append({"path": str(p), "error": e.problem})
        if len(good) >= batch_size:
            _fill(model, good, records)
            yield from records
            records, good = [], []
    _fill(model, good, records)
    yield from records


def _fill(model: Classifier, good: list[tuple[int, np.ndarray, np.ndarray | None]], records: list[dict]) -> None:
    if good:
        probs = model.probabilities(np.stack([a for _, a, _ in good]), zoomed=stack_zoomed([z for *_, z in good]))
        for (i, *_), p in zip(good, probs):
            records[i].update(model.record(p))


def expand_inputs(items: list[str]) -> list[Path | FileProblem]:
    """Files as given; a folder contributes the images directly inside it (sorted), or, when it
    holds none or cannot be listed, a `FileProblem` in its place (that item fails, not the run)."""
    paths: list[Path | FileProblem] = []
    for item in items:
        p = Path(item)
        if not os.path.isdir(p):  # False, not an error, for a name the system refuses: open_image says why
            paths.append(p)
            continue
        try:
            inside = sorted(q for q in p.iterdir() if q.is_file() and is_image_path(q))
        except OSError as e:
            paths.append(FileProblem(str(p), f"cannot list folder ({e.strerror or e})"))
            continue
        empty = FileProblem(str(p), "folder holds no images (use 'birdcnn search' for nested folders)")
        paths.extend(inside or [empty])
    return paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="photos (JPEG, PNG, WebP, GIF, BMP, TIFF) or folders of them")
    p.add_argument("--samples", action="store_true", help="classify the sample images shipped with birdcnn")
    p.add_argument("--model", help="model file (.json/.safetensors or a run folder, "
                                   "or an .onnx made by 'birdcnn export'; default: the shipped model)")
    p.add_argument("--backend", choices=BACKENDS, help="what runs the network: torch, or onnxruntime for an .onnx "
                                                       "export (default: by the model file)")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of lines")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    items = list(args.images) + ([str(s) for s in sample_images()] if args.samples else [])
    if not items:
        raise BirdcnnError("no images given (pass IMAGE paths, or --samples)")
    model = load_model(args.model, chosen_device(args.device), backend=args.backend)
    inputs = expand_inputs(items)
    found = iter_classify([p for p in inputs if isinstance(p, Path)], model)
    records, failed = [], 0
    for p in inputs:
        r = next(found) if isinstance(p, Path) else {"path": p.path, "error": p.problem}
        r["path"] = display_path(r["path"])  # one line of valid text (JSON cannot hold undecodable bytes)
        if "error" in r:
            failed += 1
            print(f"birdcnn predict: error: {r['path']}: {r['error']}", file=sys.stderr, flush=True)
        if args.json:
            records.append(r)  # one JSON array, written at the end
        elif "error" not in r:
            print(_line(r, model), flush=True)
    if args.json:
        json.dump(records, sys.stdout, indent=2)
        print()
    return 1 if failed else 0


def _line(r: dict, model: Classifier) -> str:
    """One photo's answer: `photo.jpg: bird (97.3%)`, with why a likely bird is not called one."""
    line = (f"{r['path']}: {r['label']} ({100 * r['bird_probability']:.1f}%"
            f"{'' if r['is_bird'] else ' ' + model.positive})")
    if not r["is_bird"] and r["bird_probability"] >= 0.5:
        line += f"  below the {100 * model.threshold:.1f}% decision threshold"
    top = r.get("top_classes", [{}])[0]
    if not r["is_bird"] and top.get("class") not in (None, model.positive):
        line += f"  most like {top['class']} ({100 * top['probability']:.1f}%)"
    return line
