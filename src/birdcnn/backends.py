"""Running a model with another engine than torch: `OnnxClassifier`, whose logits come from onnxruntime.

An export made by `birdcnn export --format onnx` is one ``NAME.onnx`` file carrying the model's
metadata (ONNX metadata_props, key ``birdcnn``: JSON), with ``NAME.onnx.json`` beside it holding
the same metadata plus the .onnx file's sha256 and the export check. The network inside takes
float32 NCHW images already normalised and gives logits; everything around it (decoding,
normalisation, test-time views, temperature, thresholds, class words) is `Classifier`'s, shared
with the torch backend, so both give the same records. Nothing is ever unpickled: ONNX is protobuf.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import BirdcnnError, ModelFileError
from .modelfile import Classifier, check_metadata, parse_json, read_regular

if TYPE_CHECKING:
    import onnxruntime

BACKENDS = ("torch", "onnxruntime")
EXPORT_FORMAT = "birdcnn-export"
METADATA_KEY = "birdcnn"  # the ONNX metadata_props entry (and TorchScript extra file "birdcnn.json")


def sidecar(path: str | Path) -> Path:
    """The metadata file written beside an export: NAME.onnx -> NAME.onnx.json. Not NAME.json,
    which would overwrite the metadata of a torch model NAME.json/NAME.safetensors in the same folder."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def onnx_export(path: str | Path, asked: bool = False) -> Path | None:
    """The .onnx file that `path` names (NAME.onnx, its NAME.onnx.json, or a folder holding one
    .onnx file and, unless the onnxruntime backend was `asked` for, no torch model.json), or None
    when `path` names a torch model."""
    p = Path(path).expanduser()
    if p.name.endswith(".onnx.json"):
        return p.with_name(p.name[: -len(".json")])
    if p.suffix == ".onnx":
        return p
    try:
        found = sorted(p.glob("*.onnx")) if p.is_dir() and (asked or not (p / "model.json").exists()) else []
    except (OSError, ValueError):  # a name the system refuses: the torch loader says why
        return None
    return found[0] if len(found) == 1 else None


def _first_line(e: Exception) -> str:
    """onnxruntime's message without its "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : " prefix, on one line."""
    text = " ".join(str(e).split())
    return text.rsplit(" : ", 1)[-1][:200]


def read_export_metadata(text: str, where: Path) -> dict:
    """The birdcnn metadata of an export (its JSON text), checked like a model file's."""
    try:
        meta = parse_json(text)
    except ValueError as e:  # JSONDecodeError, nested too deeply, too long an integer
        first = " ".join(str(e).split())[:120]
        raise ModelFileError(where, f"not a birdcnn export (its birdcnn metadata is not valid JSON: {first})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ModelFileError(where, f"not a birdcnn export (no 'format: {EXPORT_FORMAT}' in its metadata)")
    return check_metadata(meta, where)


def _check_sidecar(path: Path, data: bytes) -> None:
    """When NAME.onnx.json is beside the file, the file must be the one it describes (sha256)."""
    side = sidecar(path)
    if not side.is_file():
        return  # the export is usable alone: its metadata is inside it
    try:
        side_meta = parse_json(read_regular(side).decode("utf-8"))
    except OSError as e:
        raise ModelFileError(side, f"cannot read the export's metadata ({e.strerror or e})") from None
    except ValueError as e:  # invalid UTF-8 or JSON, nested too deeply, too long an integer
        first = " ".join(str(e).split())[:120]
        raise ModelFileError(side, f"not a birdcnn export's metadata (invalid JSON: {first})") from None
    if not isinstance(side_meta, dict):
        raise ModelFileError(side, "not a birdcnn export's metadata (not a JSON object)")
    recorded = side_meta.get("file_sha256")
    if recorded and hashlib.sha256(data).hexdigest() != recorded:
        raise ModelFileError(path, f"does not match {side.name} (sha256 differs): "
                                   "tampered, truncated or mismatched file")


# ModelProto's fields (onnx.proto) that describe no computation, left out of `graph_sha256`:
# doc_string (6) and metadata_props (14), where the birdcnn metadata and the hash itself are kept.
_UNHASHED_FIELDS = (6, 14)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or malformed protobuf")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def graph_sha256(data: bytes) -> str:
    """sha256 of an ONNX file's bytes but its doc string and metadata: of every top-level field of
    the ModelProto (graph with its nodes and initialisers, opsets, functions...) as written, in
    order, read from the wire format without parsing them (a few fields: well under a millisecond
    beside the hashing of the bytes themselves). ValueError: not protobuf."""
    h, view, i = hashlib.sha256(), memoryview(data), 0
    while i < len(data):
        start = i
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            size, i = _varint(data, i)
            i += size
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        if i > len(data):
            raise ValueError("truncated protobuf")
        if field not in _UNHASHED_FIELDS:
            h.update(view[start:i])
    return h.hexdigest()


def _check_graph(data: bytes, meta: dict, path: Path) -> None:
    """Refuse an export whose network is not the one it was written with: the hash `birdcnn export`
    records in the embedded metadata ("graph_sha256"), recomputed, catches an altered or corrupted
    .onnx when no NAME.onnx.json is beside it. Exports made before the hash existed carry none and
    still load: refusing them would break every earlier export, and the sidecar's file_sha256, when
    present, still checks them. (A hash inside the file guards against accidents, not against
    someone who rewrites the metadata too: that needs a signature.)"""
    recorded = meta.get("export", {}).get("graph_sha256") if isinstance(meta.get("export"), dict) else None
    if recorded is None:
        return
    try:
        actual = graph_sha256(data)
    except ValueError as e:
        raise ModelFileError(path, f"not a valid ONNX model ({e})") from None
    if actual != recorded:
        raise ModelFileError(path, "the network differs from the one it was exported with (graph sha256 "
                                   "differs): tampered, corrupted or mismatched file")


def onnx_session(data: bytes, where: Path) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session for ONNX bytes, or `ModelFileError` naming `where`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings (e.g. unused initialisers) are not the user's business
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base class
        raise ModelFileError(where, f"not a valid ONNX model ({_first_line(e)})") from None


class OnnxClassifier(Classifier):
    """A `Classifier` whose network runs in onnxruntime (CPUExecutionProvider). Only `_forward`
    differs: the test-time views, temperature and decisions are the torch backend's own code."""

    def __init__(self, session: onnxruntime.InferenceSession, meta: dict):
        self._use_metadata(meta, "cpu")
        self.session = session
        self.input_name: str = session.get_inputs()[0].name
        self.bf16 = False  # nothing to autocast: the export's precision is fixed in the file

    @property
    def net(self) -> torch.nn.Module:
        raise BirdcnnError("an ONNX export holds no torch network: this needs the model's .json/.safetensors")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # prepare() gives channels_last; onnxruntime reads C-contiguous NCHW.
        out = self.session.run(None, {self.input_name: x.contiguous().numpy()})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _check_io(clf: OnnxClassifier, path: Path) -> None:
    """Refuse an export whose network does not take this input size or give one score per class."""
    n = len(clf.classes)
    for size in filter(None, (clf.zoom_size, clf.input_size)):  # the view, and the photos' zoom view
        try:
            out = clf._forward(torch.zeros(1, 3, size, size))
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors share no base class
            raise ModelFileError(path, f"the network does not take {size} x {size} images ({_first_line(e)})") from None
    if tuple(out.shape) != (1, n):
        raise ModelFileError(path, f"the network gives outputs of shape {tuple(out.shape)} for one image, "
                                   f"not {n} class scores")


def load_onnx(path: str | Path, device: str | torch.device | None = None) -> OnnxClassifier:
    """Load an ONNX export (NAME.onnx, NAME.onnx.json or a folder holding one) as a `Classifier`."""
    if device is not None and torch.device(device).type != "cpu":
        raise BirdcnnError(f"the onnxruntime backend runs on the CPU only, not {device}")
    onnx_path = onnx_export(path, asked=True)
    if onnx_path is None:
        raise ModelFileError(path, "not an ONNX export; the onnxruntime backend runs an .onnx file made by "
                                   "'birdcnn export MODEL --format onnx'")
    try:
        data = read_regular(onnx_path)
    except (FileNotFoundError, NotADirectoryError):
        raise ModelFileError(onnx_path, "no such file") from None
    except OSError as e:
        raise ModelFileError(onnx_path, f"cannot read ({e.strerror or e})") from None
    _check_sidecar(onnx_path, data)
    session = onnx_session(data, onnx_path)
    embedded = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if embedded is None:
        raise ModelFileError(onnx_path, "an ONNX model without birdcnn metadata (not made by 'birdcnn export')")
    meta = read_export_metadata(embedded, onnx_path)
    _check_graph(data, meta, onnx_path)
    # The file's own hash names what runs (float32 and int8 exports of one model differ): search
    # logs record it, so a search is resumed or merged only with the same file.
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    clf = OnnxClassifier(session, meta)
    _check_io(clf, onnx_path)
    return clf
