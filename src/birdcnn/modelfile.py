"""Model files: safetensors weights + a JSON metadata file, and the `Classifier` that uses them.

A model is two files side by side, ``NAME.safetensors`` and ``NAME.json``. The JSON says how to
rebuild and use the network (architecture, classes, positive class, normalisation, temperature,
decision threshold) and records the sha256 of the weights, so a tampered or mismatched pair is
refused. Nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, save

from .atomic import write_bytes, write_text
from .devices import fast_bf16
from .errors import BirdcnnError, ModelFileError
from .models import ARCHITECTURES, build, head_name

FORMAT = "birdcnn-model"
FORMAT_VERSION = 1

TTA_MODES = ("none", "flip", "flip-translate")
# Photos' second views, at the model's `zoom_size`: (indices of the photos in a batch, their views).
Zoomed = tuple[np.ndarray, np.ndarray]


def stack_zoomed(views: list[np.ndarray | None]) -> Zoomed | None:
    """`Zoomed` from one entry per image: its zoom view (`images.zoom_view`), or None (a thumbnail)."""
    idx = [i for i, v in enumerate(views) if v is not None]
    return (np.array(idx, np.int64), np.stack([views[i] for i in idx])) if idx else None


def default_model_path() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("birdcnn") / "assets" / "model" / "default.json"))


def _pair(path: str | Path) -> tuple[Path, Path]:
    """Accept the .json, the .safetensors, a run folder, or a stem; return (json, safetensors)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.json"
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_suffix(".json"), p.with_suffix(".safetensors")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_regular(path: Path) -> bytes:
    """The bytes of `path`, refusing anything but a regular file in one line (`ModelFileError`): a
    FIFO would block for ever, a device never end. Opened without blocking and checked on the open
    file (no race between a check and the read). A folder raises IsADirectoryError, and a missing
    file FileNotFoundError, as reading it would."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
            raise ModelFileError(path, f"not a regular file ({kind})")
        return f.read()


def parse_json(text: str | bytes):
    """`json.loads`, with the ways untrusted text can fail beyond JSONDecodeError as ValueError: nesting
    deeper than the interpreter's recursion limit (json raises RecursionError) and integers of more
    digits than Python converts."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def save_model(net: torch.nn.Module, meta: dict, path: str | Path) -> Path:
    """Write NAME.safetensors then NAME.json (each via a temporary file and rename)."""
    json_path, st_path = _pair(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    # Bytes written by Python, not save_file: that creates the file private (0600) whatever the umask.
    write_bytes(st_path, save(state))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "weights_sha256": _sha256(st_path)}
    write_text(json_path, json.dumps(meta, indent=2) + "\n")
    return json_path


def _model_paths(path: str | Path) -> tuple[Path, Path]:
    """`_pair`, with a path the system refuses (a name too long, a loop of links) as a ModelFileError."""
    try:
        return _pair(path)
    except (OSError, ValueError) as e:
        raise ModelFileError(path, f"cannot read ({getattr(e, 'strerror', None) or e})") from None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Metadata fields the code reads: name -> (test, what it must be). A wrong type or an impossible
# value (a zero std or temperature divides by zero; a threshold of 5 calls nothing a bird) is
# refused when the file is read, naming the field, not met later as a traceback or a "nan%".
_FIELDS = {
    "format_version": (lambda v: _is_whole(v) and v >= 1, "a whole number >= 1"),
    "arch": (lambda v: isinstance(v, str) and v in ARCHITECTURES,
             f"one of the known architectures ({', '.join(ARCHITECTURES)})"),
    "arch_kwargs": (lambda v: isinstance(v, dict), "an object of architecture settings"),
    "classes": (lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) and c for c in v)
                and len(set(v)) == len(v), "a list of two or more different class names"),
    "positive": (lambda v: isinstance(v, str), "a class name"),
    # Up to 1024: load_model runs the network once on a blank image of this size.
    "input_size": (lambda v: _is_whole(v) and 1 <= v <= 1024, "a whole number of pixels from 1 to 1024"),
    "zoom_size": (lambda v: v is None or (_is_whole(v) and 1 <= v <= 1024), "a whole number of pixels from 1 to 1024"),
    "mean": (lambda v: isinstance(v, list) and len(v) == 3 and all(map(_is_number, v)), "three numbers (R, G, B)"),
    "std": (lambda v: isinstance(v, list) and len(v) == 3 and all(_is_number(x) and x > 0 for x in v),
            "three numbers above 0 (R, G, B)"),
    "temperature": (lambda v: _is_number(v) and v > 0, "a number above 0"),
    "threshold": (lambda v: _is_number(v) and 0 <= v <= 1, "a probability from 0 to 1"),
    "window_threshold": (lambda v: _is_number(v) and 0 <= v <= 1, "a probability from 0 to 1"),
    "window_scoring": (lambda v: isinstance(v, dict) and set(v) == {"neighbourhood", "whole_frame"}
                       and _is_whole(v["neighbourhood"]) and v["neighbourhood"] in (1, 3, 5, 7)
                       and _is_number(v["whole_frame"]) and 0 <= v["whole_frame"] <= 10,
                       "{neighbourhood: 1, 3, 5 or 7, whole_frame: a number from 0 to 10}"),
    "weights_sha256": (lambda v: isinstance(v, str), "a sha256 hex string"),
    "calibration": (lambda v: isinstance(v, dict) and all(
        m in TTA_MODES and isinstance(c, dict) and _is_number(c.get("temperature")) and c["temperature"] > 0
        and _is_number(c.get("threshold")) and 0 <= c["threshold"] <= 1 for m, c in v.items()),
        "{view set: {temperature > 0, threshold 0-1}} for view sets none, flip, flip-translate"),
    "zoom_tta": (lambda v: isinstance(v, list) and all(m in TTA_MODES for m in v),
                 "a list of view sets among none, flip, flip-translate"),
}
_REQUIRED = ("arch", "classes", "positive", "mean", "std", "input_size")


TORCHSCRIPT_REFUSED = ("a TorchScript file cannot be used by birdcnn's commands; use the model's "
                       ".json/.safetensors or an .onnx export")


def _check_named(path: str | Path, json_path: Path) -> None:
    """Refuse, naming the file as given, what `_pair` would otherwise turn into a misleading
    "NAME.json: model metadata not found": a name that does not exist, a TorchScript or other file
    that is not a model (b.pt), something that is not a regular file (a FIFO)."""
    p = Path(path).expanduser()
    try:
        mode = os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if p != json_path and not json_path.exists():
            raise ModelFileError(p, "no such file or folder "
                                    f"({json_path.name}: model metadata not found either)") from None
        return  # NAME.json itself: read_metadata says it is missing; a stem whose NAME.json exists: fine
    except (OSError, ValueError):
        return  # a name the system refuses: read_metadata says why
    if json_path.exists() or stat.S_ISDIR(mode):
        return
    if p.name.endswith(".pt.json"):  # what `birdcnn export --format torchscript` writes beside NAME.pt
        raise ModelFileError(p, f"the metadata of a TorchScript export: {TORCHSCRIPT_REFUSED}")
    if p.suffix in (".json", ".safetensors"):
        return  # read_metadata says what is missing
    if not stat.S_ISREG(mode):
        read_regular(p)  # raises, naming what it is
    # Not read further: a .pt may be a pickle, and birdcnn never unpickles.
    raise ModelFileError(p, "not a birdcnn model (give NAME.json beside NAME.safetensors, a run folder, or an "
                            ".onnx export; a TorchScript export is for other programs)")


def read_metadata(path: str | Path) -> dict:
    """The model's metadata, every field the code uses checked (type and range), or `ModelFileError`."""
    json_path, _ = _model_paths(path)
    _check_named(path, json_path)
    try:
        meta = parse_json(read_regular(json_path).decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise ModelFileError(json_path,
                             "model metadata not found (expected NAME.json beside NAME.safetensors)") from None
    except OSError as e:
        raise ModelFileError(json_path, f"cannot read ({e.strerror or e})") from None
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, too deep, too long an integer
        first = " ".join(str(e).split())[:120]
        raise ModelFileError(json_path, f"not a birdcnn model file (invalid JSON: {first})") from None
    if isinstance(meta, dict) and meta.get("format") == "birdcnn-export":  # backends.EXPORT_FORMAT: NAME.pt.json
        fmt = meta.get("export", {}).get("format") if isinstance(meta.get("export"), dict) else None
        if fmt == "torchscript":
            raise ModelFileError(json_path, f"the metadata of a TorchScript export: {TORCHSCRIPT_REFUSED}")
        raise ModelFileError(json_path, "the metadata of an export, not a model: give the export itself "
                                        "(NAME.onnx) or the model's .json/.safetensors")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(json_path, "not a birdcnn model file (no 'format: birdcnn-model')")
    return check_metadata(meta, json_path)


def check_metadata(meta: dict, where: str | Path) -> dict:
    """`meta` with every field the code uses checked (type and range), or `ModelFileError` naming
    `where`: shared by model files and exports (`backends`), whose metadata say the same things."""
    for key in _REQUIRED:
        if key not in meta:
            raise ModelFileError(where, f"metadata lacks {key!r}")
    for key, (ok, expected) in _FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise ModelFileError(where, f"metadata {key!r} must be {expected}, not {_short(meta[key])}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(where, f"made by a newer birdcnn (format {meta['format_version']})")
    if meta["positive"] not in meta["classes"]:
        raise ModelFileError(where, f"positive class {meta['positive']!r} is not among the model's classes")
    if meta.get("tta", "none") not in TTA_MODES:
        raise ModelFileError(where, f"unknown test-time augmentation {_short(meta['tta'])} "
                                    f"(known: {', '.join(TTA_MODES)})")
    return meta


def _load_weights(net: torch.nn.Module, state: dict, meta: dict, json_path: Path) -> None:
    """Load `state` into `net` (shapes already checked by `_check_shapes`), refusing metadata the
    weights contradict: an input size the network cannot take (a dry forward pass on a blank image)."""
    n = len(meta["classes"])
    net.load_state_dict(state, strict=True)
    for key in ("input_size", "zoom_size"):
        size = meta.get(key)
        if size is None:
            continue
        try:
            with torch.no_grad():
                out = net.eval()(torch.zeros(1, 3, size, size))
        except (RuntimeError, ValueError) as e:
            first = " ".join(str(e).split())[:120]
            raise ModelFileError(json_path, f"metadata {key!r} {size} does not fit the network ({first})") from None
    if tuple(out.shape) != (1, n):
        raise ModelFileError(json_path, f"the network gives outputs of shape {tuple(out.shape)} for one image, "
                                        f"not {n} class scores")


def _build(meta: dict, kwargs: dict, json_path: Path, device: str) -> torch.nn.Module:
    """The metadata's network on `device` ("meta": shapes only), or `ModelFileError`."""
    try:
        # torch warns about zero-element tensors (widths of 0), which _check_shapes refuses in one line
        with torch.device(device), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return build(meta["arch"], len(meta["classes"]), **kwargs)
    except (TypeError, ValueError, IndexError, RuntimeError, OverflowError) as e:
        first = " ".join(str(e).split())[:120]
        raise ModelFileError(json_path, f"metadata 'arch_kwargs' {_short(kwargs)} do not describe "
                                        f"a {meta['arch']!r} network ({first})") from None


def _check_shapes(skeleton: torch.nn.Module, state: dict, meta: dict, json_path: Path, st_path: Path) -> None:
    """Refuse weights whose names or shapes are not those of `skeleton` (the metadata's network,
    built on the meta device), before the real network is built: a class count other than the
    network's outputs names the metadata, any other difference the weights."""
    head = head_name(skeleton)
    weight = state.get(f"{head}.weight") if head else None
    n = len(meta["classes"])
    if weight is not None and weight.ndim == 2 and weight.shape[0] != n:
        raise ModelFileError(json_path, f"metadata 'classes' names {n} classes "
                                        f"but the weights have {weight.shape[0]} outputs")
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"size of {k}: weights {list(have[k])}, network {list(want[k])}"
                for k in want if k in have and have[k] != want[k]]
    if missing := [k for k in want if k not in have]:
        problems.insert(0, f"missing: {', '.join(missing)}")
    if unexpected := [k for k in have if k not in want]:
        problems.insert(0, f"unexpected: {', '.join(unexpected)}")
    if problems:
        first = " ".join("; ".join(problems).split())[:200]
        raise ModelFileError(st_path, f"weights do not fit architecture {meta['arch']!r} ({first})")


def load_model(path: str | Path | None = None, device: str | torch.device | None = None,
               backend: str | None = None) -> "Classifier":
    """Load a model (default: the one shipped in the package) as a ready-to-use `Classifier`.

    `backend` runs the network: "torch" (a .json/.safetensors pair or a run folder) or
    "onnxruntime" (an .onnx file made by `birdcnn export`, see `backends`); None: by the file.
    Either way the same `Classifier` methods give the probabilities and decisions.
    """
    from .backends import BACKENDS, load_onnx, onnx_export

    if backend not in (None, *BACKENDS):
        raise BirdcnnError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    exported = onnx_export(path) if path is not None else None
    if backend == "onnxruntime" or (backend is None and exported):
        return load_onnx(path or default_model_path(), device)
    if exported:
        raise ModelFileError(exported, "an ONNX export runs with the onnxruntime backend "
                                       "(--backend onnxruntime), not torch")
    path = path or default_model_path()
    json_path, st_path = _model_paths(path)
    meta = read_metadata(path)
    try:
        data = read_regular(st_path)
        if meta.get("weights_sha256") and hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
            raise ModelFileError(st_path, "weights do not match their metadata (sha256 differs): "
                                          "tampered or mismatched file")
        state = load(data)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise ModelFileError(st_path, "weights file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        problem = (f"cannot read ({e.strerror})" if isinstance(e, OSError) and e.strerror
                   else f"not a valid safetensors file ({e})")
        raise ModelFileError(st_path, problem) from None
    kwargs = meta.get("arch_kwargs", {})
    # The network is first built on the meta device (no memory, no initialisation) and its tensor
    # shapes compared with the weights': arch_kwargs that contradict them (widths of 2,000,000) are
    # refused in one line before anything of their size is allocated.
    skeleton = _build(meta, kwargs, json_path, "meta")
    _check_shapes(skeleton, state, meta, json_path, st_path)
    net = _build(meta, kwargs, json_path, "cpu")
    try:
        _load_weights(net, state, meta, json_path)
    except (KeyError, RuntimeError, TypeError) as e:
        first = " ".join(str(e).split())[:200]  # one line: the header and the first mismatches
        raise ModelFileError(st_path, f"weights do not fit architecture {meta['arch']!r} ({first})") from None
    return Classifier(net, meta, device)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """A torch device from a name ("auto"/None: CUDA, then MPS, then the CPU); see `devices.check_device`."""
    from .devices import check_device

    return device if isinstance(device, torch.device) else check_device(device)


class Classifier:
    """A trained network plus everything needed to turn uint8 images into calibrated probabilities."""

    def __init__(self, net: torch.nn.Module, meta: dict, device: str | torch.device | None = None):
        self._use_metadata(meta, device)
        self.net = net.to(self.device).to(memory_format=torch.channels_last).eval()

    def _use_metadata(self, meta: dict, device: str | torch.device | None) -> None:
        """Everything but the network: classes, normalisation, views, temperature, thresholds.
        A subclass that computes logits another way (`backends.OnnxClassifier`) calls this alone."""
        self.meta = meta
        self.device = pick_device(device)
        self.classes: list[str] = list(meta["classes"])
        self.positive: str = meta["positive"]
        self.positive_index: int = self.classes.index(self.positive)
        self.input_size: int = int(meta["input_size"])
        # Photos larger than the view are also seen at zoom_size px (decoded again, not resized):
        # objects then look as large as in training's random-resized crops (see `logits`).
        self.zoom_size: int | None = meta.get("zoom_size")
        self.threshold: float = float(meta.get("threshold", 0.5))
        self.temperature: float = float(meta.get("temperature", 1.0))
        self.tta: str = meta.get("tta", "none")
        # The view sets whose calibration averages in the zoom view: every multi-view set since
        # search scores a 48-px flip pair too; files calibrated before then, the model's own alone.
        self.zoom_tta: list[str] = list(meta.get("zoom_tta", [self.tta])) if self.zoom_size else []
        # Temperature and threshold per set of test-time views (see `calibrate`): search's 2 views
        # and locate's 1 are less sharp than 6. The top-level values are those of `tta`.
        self.calibration: dict[str, dict] = dict(meta.get("calibration", {}))
        self.bf16 = fast_bf16(self.device)  # bf16 autocast where the processor has it natively
        self._mean = torch.tensor(meta["mean"], device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(meta["std"], device=self.device).view(1, 3, 1, 1) * 255

    def prepare(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> normalised (N, 3, H, W) float, channels_last, on the device."""
        x = torch.as_tensor(images).to(self.device)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) uint8 images, got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float()
        return ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        # bf16 on a CPU with AVX512-BF16: ~2x faster; measured to change test accuracy by < 0.05%
        # (docs/RESULTS.md). `fast_bf16` leaves it off where it would be slower.
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.bf16 and self.device.type in ("cpu", "cuda"))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's float32 logits for a batch from `prepare`: the one step a backend replaces."""
        with self._autocast():
            return self.net(x).float()

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self._forward(x) + self._forward(x.flip(-1)))

    @torch.no_grad()
    def logits(self, images: np.ndarray | torch.Tensor, batch_size: int = 500, tta: str | None = None,
               zoomed: Zoomed | None = None) -> torch.Tensor:
        """Raw (uncalibrated) float32 logits, averaged over the model's test-time views (`tta`:
        "none", "flip" or "flip-translate").

        `zoomed`: the photos' views at the model's `zoom_size` (`images.load_views`). With the view
        sets in `zoom_tta` their flip pair is averaged in, half and half: part of those views, and
        calibrated so; the single view (locate's) leaves it out."""
        tta = self.tta if tta is None else tta
        y = self._logits(images, batch_size, tta)
        if zoomed is not None and tta in self.zoom_tta and len(zoomed[0]):
            self._average_zoom(y, *zoomed, batch_size, tta)
        return y

    def _average_zoom(self, y: torch.Tensor, idx: np.ndarray, views: np.ndarray, batch_size: int, tta: str) -> None:
        """Average the zoom `views`' logits (their flip pair; one view with `tta` "none") into rows
        `idx` of `y`, half and half, in place."""
        if views.shape[1:3] != (self.zoom_size, self.zoom_size):
            raise ValueError(f"zoom views must be {self.zoom_size} px, not {views.shape[1]}")
        rows = torch.as_tensor(idx)
        y[rows] = 0.5 * (y[rows] + self._logits(views, batch_size, "none" if tta == "none" else "flip"))

    def _logits(self, images: np.ndarray | torch.Tensor, batch_size: int, tta: str) -> torch.Tensor:
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
        out = []
        for i in range(0, len(images), batch_size):
            x = self.prepare(images[i:i + batch_size])
            y = self._forward(x) if tta == "none" else self._mirrored(x)
            if tta == "flip-translate":
                # airbench's 6-view TTA: also the image moved one pixel up-left and down-right.
                p = F.pad(x, (1, 1, 1, 1), mode="reflect")
                h, w = x.shape[-2:]
                y = 0.5 * y + 0.25 * (self._mirrored(p[..., :h, :w]) + self._mirrored(p[..., 2:, 2:]))
            out.append(y)
        if not out:
            return torch.empty(0, len(self.classes))
        return torch.cat(out).cpu()

    def probabilities(
        self, images: np.ndarray | torch.Tensor, batch_size: int = 500, tta: str | None = None,
        zoomed: Zoomed | None = None,
    ) -> np.ndarray:
        """Calibrated class probabilities, (N, num_classes) float32 (`tta`, `zoomed`: as in `logits`)."""
        logits = self.logits(images, batch_size, tta, zoomed)
        return torch.softmax(logits / self.temperature_for(tta), 1).numpy()

    @torch.no_grad()
    def flip_pair_where_close(self, images: np.ndarray, indices: list[int], floor: float,
                              zoomed: Zoomed | None = None, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """The flip pair's calibrated probabilities for the images whose single view gives classes
        `indices` together at least `floor`; the others keep the single view's own calibrated
        probabilities. Returns (probabilities (N, num_classes), which images were mirrored (N,)).
        `zoomed`: the images' zoom views, whose flip pair is averaged in as `logits` does.

        A search mostly meets photos far from its class, and for those the mirror image (and the
        zoom view) is network work that changes no decision (search.MIRROR_MARGIN says how far)."""
        single = self._logits(images, batch_size, "none")
        probs = torch.softmax(single / self.temperature_for("none"), 1)
        close = (probs[:, indices].sum(1) >= floor).numpy()
        if close.any():
            mirror = self._logits(np.ascontiguousarray(images[close][:, :, ::-1]), batch_size, "none")
            pair = 0.5 * (single[torch.as_tensor(close)] + mirror)
            if zoomed is not None and "flip" in self.zoom_tta:
                idx, views = zoomed
                near = close[idx]
                if near.any():  # their rows in `pair`: a running count of the close images
                    self._average_zoom(pair, np.cumsum(close)[idx[near]] - 1, views[near], batch_size, "flip")
            probs[torch.as_tensor(close)] = torch.softmax(pair / self.temperature_for("flip"), 1)
        return probs.numpy(), close

    def temperature_for(self, tta: str | None = None) -> float:
        """The temperature fitted on validation for these test-time views (default: the model's)."""
        if tta in (None, self.tta):
            return self.temperature
        return float(self.calibration.get(tta, {}).get("temperature", self.temperature))

    def threshold_for(self, tta: str | None = None) -> float:
        """The decision threshold chosen on validation for these test-time views (default: the model's)."""
        if tta in (None, self.tta):
            return self.threshold
        return float(self.calibration.get(tta, {}).get("threshold", self.threshold))

    def class_indices(self, words: str | None) -> list[int]:
        """The classes named by `words` ("cat,dog"; default: the positive class), matched as
        training merged names ('car' is 'automobile'); an unknown word is a one-line error."""
        from .sources import canonical_class

        names = [w for w in (words or self.positive).split(",") if w.strip()]
        out = []
        for w in names:
            c = canonical_class(w)
            if c not in self.classes:
                near = [k for k in self.classes if c in k or k in c][:8]
                if near:
                    hint = f"; did you mean {', '.join(near)}?"
                elif len(self.classes) <= 20:
                    hint = f"; its classes: {', '.join(self.classes)}"
                else:
                    hint = f"; it knows {len(self.classes)} words: see --help"
                raise BirdcnnError(f"the model knows no class {w.strip()!r}{hint}")
            out.append(self.classes.index(c))
        if not out:
            raise BirdcnnError("no class named (e.g. --for bird, or --for cat,dog)")
        return sorted(set(out))

    def default_min_probability(self, indices: list[int], tta: str | None = None) -> float:
        """The calibrated decision threshold (for the views `tta`) when looking for the positive
        class alone, else 0.5."""
        return self.threshold_for(tta) if indices == [self.positive_index] else 0.5

    def window_threshold(self, indices: list[int]) -> float:
        """The least probability a `locate` window needs to be a box: the model's `window_threshold`
        (chosen on windows of validation photos) for the positive class, else as for whole photos."""
        if indices == [self.positive_index] and "window_threshold" in self.meta:
            return float(self.meta["window_threshold"])
        return self.default_min_probability(indices)

    def record(self, probs: np.ndarray, top: int = 3) -> dict:
        """One image's probabilities as a result record.

        `bird_probability` and `is_bird` always refer to the model's positive class (bird by
        default), so scripts read the same keys whatever the positive class is.
        """
        p_pos = float(probs[self.positive_index])
        is_pos = p_pos >= self.threshold
        rec = {"label": self.positive if is_pos else f"not {self.positive}",
               "bird_probability": round(p_pos, 6), "is_bird": bool(is_pos)}
        if self.positive != "bird":
            rec["positive_class"] = self.positive
        if len(self.classes) > 2:
            order = np.argsort(-probs)[:top]
            rec["top_classes"] = [{"class": self.classes[i], "probability": round(float(probs[i]), 6)} for i in order]
        return rec
