"""`birdcnn export`: the network as an ONNX or TorchScript file, for other runtimes.

What is exported is the plain network in float32: NCHW images already normalised
((pixel / 255 - mean) / std, RGB) to logits, with a dynamic batch axis. Decoding, normalisation,
the test-time views and the temperature stay in Python (`Classifier`), so every backend shares
them. The model's metadata (classes, normalisation, input size, temperature, thresholds, views,
resize rule, source weights' sha256) rides inside the file (ONNX metadata_props / TorchScript
extra file, key "birdcnn") and in NAME.onnx.json / NAME.pt.json beside it, so the export is
usable alone. `--int8` quantises the ONNX network statically (onnxruntime, QDQ, per-channel
weights), calibrated on real training images.

Every export is checked before it replaces anything: real images go through the written file
and through the torch model in float32, and an export that disagrees beyond `FP32_TOLERANCE`
(int8: `INT8_MIN_AGREEMENT`, `INT8_MAX_MEAN_DIFFERENCE`) is refused.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from . import data as D
from .argtypes import positive_int
from .atomic import write_atomic, write_text
from .backends import EXPORT_FORMAT, METADATA_KEY, graph_sha256, load_onnx, onnx_export, sidecar
from .errors import BirdcnnError, DataError, display_path
from .images import PHOTO_SCALE, is_image_path, load_for_model
from .locate import WindowScoring
from .modelfile import Classifier, load_model

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
RESIZE_RULE = "central square crop, bicubic (birdcnn.images.fit_square)"
VIEWS = {  # what each `tta` mode averages, for runtimes other than ours
    "none": "the image alone",
    "flip": "mean logits of the image and its left-right mirror",
    "flip-translate": "1/2 x flip's mean on the image + 1/4 x flip's mean on the image moved one pixel up-left "
                      "and 1/4 x on it moved one pixel down-right (reflect padding)",
}
# A float32 export computes what torch does, in another order: probabilities within 1e-3
# (measured: ~1e-6 for the shipped model in onnxruntime).
FP32_TOLERANCE = 1e-3
# An int8 export rounds every layer but the first: its bird decisions must match torch float32's
# on >= 95% of the check images, and p(bird) differ by <= 0.05 on average (measured on the shipped
# model: 99.6% agreement on CIFAR-10 test images). A broken quantisation misses both by far.
INT8_MIN_AGREEMENT = 0.95
INT8_MAX_MEAN_DIFFERENCE = 0.05
CALIBRATION_IMAGES = 512
CHECK_IMAGES = 256  # images drawn beside the calibration ones to check an int8 export (never calibrated on)
# Quantised: the ops with int8 kernels in onnxruntime's CPU provider (MaxPool moves int8 values
# exactly). BatchNormalization and GELU stay float32 between them: they have no int8 kernel.
INT8_OPS = ["Conv", "Gemm", "MaxPool"]


# ---------------------------------------------------------------- metadata

def export_metadata(clf: Classifier, source: str, fmt: str, precision: str) -> dict:
    """The metadata written into and beside the export: the model's own (training, metrics...)
    plus every value the Classifier would otherwise default, and how the file was made."""
    from . import __version__

    own = {k: v for k, v in clf.meta.items() if k not in ("format", "format_version", "weights_sha256")}
    size, n = clf.input_size, len(clf.classes)
    views = VIEWS[clf.tta] + (f"; a photo whose short side is above {PHOTO_SCALE} x {size} px is also cut and resized "
                              f"to {clf.zoom_size} px, and 1/2 x its flip mean there is averaged with 1/2 x the "
                              f"above" if clf.zoom_size else "")
    spatial = ("height", "width") if clf.zoom_size else (size, size)
    return {
        "format": EXPORT_FORMAT, "format_version": 1, **own,
        "temperature": clf.temperature, "threshold": clf.threshold, "tta": clf.tta,
        "window_threshold": clf.window_threshold([clf.positive_index]),
        "window_scoring": asdict(WindowScoring.of(clf)), "resize": clf.meta.get("resize", RESIZE_RULE),
        "export": {
            "format": fmt, "precision": precision, "birdcnn": __version__, "torch": torch.__version__,
            "source_model": source, "source_weights_sha256": clf.meta.get("weights_sha256"),
            "input": {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, *spatial],
                      "values": "RGB pixels as (pixel / 255 - mean) / std, the image cut and resized by 'resize'"},
            "output": {"name": "logits", "dtype": "float32", "shape": ["batch", n],
                       "probabilities": "softmax(the views' mean logits / temperature); 'positive' when its "
                                        "probability >= threshold"},
            "views": views,
        },
    }


# ---------------------------------------------------------------- the network as a file

def to_onnx(net: torch.nn.Module, size: int, any_size: bool = False) -> onnx.ModelProto:
    """The network as an ONNX ModelProto (torch.onnx's default, dynamo-based exporter), float32,
    batch axis dynamic, and height and width too with `any_size` (a model with a zoom view runs
    at two sizes). FastNet's float32-under-autocast first layer exports as a plain Conv: no
    autocast is active here, so the whole graph is float32."""
    example = torch.zeros(2, 3, size, size)  # 2, not 1: torch.export specialises a batch of 1
    axes = {0: torch.export.Dim("batch")}
    if any_size:
        axes |= {2: torch.export.Dim("height", min=8, max=1024), 3: torch.export.Dim("width", min=8, max=1024)}
    program = torch.onnx.export(net, (example,), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes=(axes,), verbose=False)
    return program.model_proto


def set_metadata(proto: onnx.ModelProto, meta: dict) -> None:
    """Store `meta` in the ONNX model's metadata_props (JSON), replacing any earlier copy."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.doc_string = (f"birdcnn {meta['positive']} classifier: float32 NCHW normalised input -> logits "
                        f"(metadata_props '{METADATA_KEY}' says how to use it)")


def to_torchscript(net: torch.nn.Module, size: int, meta: dict) -> bytes:
    """The network traced to TorchScript (batch axis free: no shape-dependent Python in the
    networks), with the metadata as the archive's extra file "birdcnn.json"."""
    with torch.no_grad(), quiet_jit():
        module = torch.jit.trace(net, torch.zeros(2, 3, size, size))
        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
    return buf.getvalue()


@contextmanager
def quiet_jit() -> Iterator[None]:
    """torch 2.14 warns on every torch.jit call that TorchScript is deprecated (FutureWarning):
    --format torchscript asks for it knowingly, and its --help says so once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


# ---------------------------------------------------------------- int8

def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))


def _draw(source: str, k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `k` random images of `source`'s training side (never its test split), as the model
    sees them (`images.load_for_model`)."""
    r = D.resolve_source(source)
    if r.kind != "class-folders":  # CIFAR-10 batches: the five training batches, not test_batch
        images = D.load_split(r, "train", size).images
        return images[np.sort(rng.choice(len(images), min(k, len(images)), replace=False))]
    root, classes = r.class_folder("train")  # train/ when split (a DataError when there is only test/)
    files = [p for p, _ in D.scan_class_folder(root, classes).files] or _images_under(root)  # or a plain photo folder
    if not files:
        raise DataError(f"{display_path(r.name)}: no images found (--calibrate)")
    pick = np.sort(rng.choice(len(files), min(k, len(files)), replace=False))
    images, _, problems = D.decode_files([files[i] for i in pick], size, desc="decoding calibration images")
    if not len(images):
        raise DataError(f"{display_path(r.name)}: none of the images could be read (first: {problems[0]})")
    return images


def draw_images(sources: list[str], n: int, size: int, seed: int = 0) -> np.ndarray:
    """`n` images (fewer when the sources hold fewer) drawn evenly from the sources' training
    sides, shuffled: real pictures of what the model will see, as calibration needs."""
    rng = np.random.default_rng(seed)
    per_source = -(-n // len(sources))
    images = np.concatenate([_draw(s, per_source, size, rng) for s in sources])
    return images[rng.permutation(len(images))[:n]]


def _reader(batches: list[np.ndarray], name: str) -> CalibrationDataReader:
    """An onnxruntime CalibrationDataReader over prepared float32 batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self.left, None)
            return None if x is None else {name: x}

    return Batches()


def quantize_int8(proto: onnx.ModelProto, clf: Classifier, images: np.ndarray) -> tuple[onnx.ModelProto, dict]:
    """Static int8 quantisation (onnxruntime, QDQ, per-channel weights, MinMax ranges) calibrated
    on `images` (uint8, as the model sees them). The first layer stays float32: for FastNet it
    is the whitening layer, which also stays float32 under bf16 (models.FastNet.forward), and
    measured on 3,000 CIFAR-10 test images, int8 there cost 0.3% accuracy and 0.001 bird AP."""
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = proto.graph.input[0].name
    first = [n.name for n in proto.graph.node if n.op_type in INT8_OPS and name in n.input]
    batches = [clf.prepare(images[i:i + 64]).contiguous().numpy() for i in range(0, len(images), 64)]
    with tempfile.TemporaryDirectory(prefix="birdcnn-int8-") as tmp:
        exported, pre, out = (Path(tmp) / f"{stem}.onnx" for stem in ("float32", "prepared", "int8"))
        onnx.save(proto, exported)  # a file: quant_pre_process mishandles a ModelProto given directly
        # onnxruntime's recommended clean-up before quantising (constant folding, shapes). Its symbolic
        # shape inference fails on the exporter's opset-20 ReduceMax; ONNX's own shape inference suffices.
        quant_pre_process(exported, pre, skip_symbolic_shape=True)
        quantize_static(pre, out, _reader(batches, name), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPS,
                        nodes_to_exclude=first, calibrate_method=CalibrationMethod.MinMax)
        quantized = onnx.load(out)
    info = {"method": "onnxruntime quantize_static", "onnxruntime": ort_version, "format": "QDQ",
            "weights": "int8, per output channel", "activations": "int8, per tensor", "ranges": "MinMax",
            "quantized_ops": INT8_OPS, "float32_nodes": first, "calibration_images": len(images)}
    return quantized, info


# ---------------------------------------------------------------- checking what was written

def compare(reference: Classifier, exported: Classifier, images: np.ndarray) -> dict:
    """How far `exported` is from `reference` on `images`, both with the model's test-time views
    (with a zoom view: `images` resized to it as well, so the file is checked at both sizes)."""
    zoomed = None
    if reference.zoom_size:
        z = reference.zoom_size
        zoomed = (np.arange(len(images)),
                  np.stack([np.array(Image.fromarray(a).resize((z, z), Image.Resampling.BICUBIC)) for a in images]))
    p_ref, p_exp = reference.probabilities(images, zoomed=zoomed), exported.probabilities(images, zoomed=zoomed)
    pos, t = reference.positive_index, reference.threshold
    diff = np.abs(p_ref - p_exp)
    return {"images": len(images), "max_probability_difference": float(diff.max()),
            "mean_bird_probability_difference": float(diff[:, pos].mean()),
            "bird_decisions_agree": float(((p_ref[:, pos] >= t) == (p_exp[:, pos] >= t)).mean())}


def check(result: dict, precision: str) -> dict:
    """`result` (from `compare`), or a one-line error when the export disagrees beyond tolerance."""
    n = result["images"]
    if precision == "float32" and result["max_probability_difference"] > FP32_TOLERANCE:
        raise BirdcnnError(f"export check failed: on {n} real images its probabilities differ from torch float32's "
                           f"by up to {result['max_probability_difference']:.2g} (allowed {FP32_TOLERANCE:g}); "
                           f"nothing written")
    if precision == "int8" and (result["bird_decisions_agree"] < INT8_MIN_AGREEMENT
                                or result["mean_bird_probability_difference"] > INT8_MAX_MEAN_DIFFERENCE):
        raise BirdcnnError(f"export check failed: on {n} real images the int8 model's bird decisions agree with "
                           f"torch float32's on {result['bird_decisions_agree']:.1%} "
                           f"(needed {INT8_MIN_AGREEMENT:.0%}), "
                           f"p(bird) differs by {result['mean_bird_probability_difference']:.3f} on average "
                           f"(allowed {INT8_MAX_MEAN_DIFFERENCE}); nothing written")
    return result


def load_torchscript(path: Path, meta: dict) -> Classifier:
    """A TorchScript export as a float32 `Classifier` (to check it; birdcnn itself runs .onnx or torch models)."""
    with quiet_jit():
        clf = Classifier(torch.jit.load(str(path), map_location="cpu"), meta, "cpu")
    clf.bf16 = False
    return clf


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """A file that cannot be written (no permission, disk full) as a one-line error naming it."""
    try:
        yield
    except OSError as e:
        raise BirdcnnError(f"{display_path(path)}: cannot write ({e.strerror or e})") from None


def write_checked(out: Path, data: bytes, measure: Callable[[Path], dict]) -> dict:
    """Write `data` to a temporary file beside `out`, `measure(tmp)` it (raising refuses it), then
    rename it to `out`: a failed check leaves any earlier file at `out` as it was."""
    result: dict = {}

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        result.update(measure(tmp))

    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, write)
    return result


# ---------------------------------------------------------------- the whole export

def output_path(out: str | None, fmt: str, int8: bool) -> Path:
    """--out as given (a folder: NAME inside it), else runs/export-DATE/model[-int8].onnx or model.pt."""
    from .runs import default_run_dir

    name = ("model-int8" if int8 else "model") + FORMATS[fmt]
    path = Path(out).expanduser() if out else default_run_dir("export") / name
    if path.is_dir():
        path = path / name
    if path.suffix != FORMATS[fmt] or path.name.endswith(".json"):
        raise BirdcnnError(f"--out {display_path(path)}: a {fmt} export is named NAME{FORMATS[fmt]}")
    return path


def sample_check_images(size: int) -> np.ndarray:
    """The package's sample images (real CIFAR-10 test photos), as the model sees them."""
    from .predict import sample_images

    return np.stack([load_for_model(p, size) for p in sample_images()])


def onnx_bytes(clf: Classifier, meta: dict, calibration: np.ndarray | None = None) -> bytes:
    """The ONNX file with `meta` inside: float32, or int8 calibrated on `calibration` images."""
    proto = to_onnx(clf.net, clf.input_size, any_size=bool(clf.zoom_size))
    meta["export"]["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if calibration is not None:
        proto, meta["export"]["quantization"] = quantize_int8(proto, clf, calibration)
    # The hash of the network as written (all but doc string and metadata, `backends.graph_sha256`),
    # which loading checks: an altered .onnx is refused even without NAME.onnx.json beside it. The
    # metadata do not change the other fields' bytes, so it is taken before they are set, and checked
    # on the final bytes.
    meta["export"]["graph_sha256"] = graph_sha256(proto.SerializeToString())
    set_metadata(proto, meta)
    data = proto.SerializeToString()
    if graph_sha256(data) != meta["export"]["graph_sha256"]:
        raise BirdcnnError("export failed: the ONNX network serialised differently twice; nothing written")
    return data


def export(model: str | None = None, fmt: str = "onnx", out: str | None = None, int8: bool = False,
           calibrate: list[str] | None = None, calibration_images: int = CALIBRATION_IMAGES) -> tuple[Path, dict]:
    """Export `model` (default: the shipped one) and check the file written; returns (its path,
    its metadata with the check's figures)."""
    if model is not None and onnx_export(model):
        raise BirdcnnError(f"{display_path(model)}: already an ONNX export; export from the model's .json/.safetensors")
    if int8 and (fmt != "onnx" or not calibrate):
        raise BirdcnnError("--int8 needs --format onnx and --calibrate DATA (training images to set the int8 ranges)")
    if calibrate and not int8:
        raise BirdcnnError("--calibrate is for --int8 exports")
    path = output_path(out, fmt, int8)
    clf = load_model(model, "cpu", backend="torch")
    clf.bf16 = False  # the reference every export is checked against: torch in float32
    precision = "int8" if int8 else "float32"
    meta = export_metadata(clf, str(model or "the shipped model"), fmt, precision)
    images = sample_check_images(clf.input_size)
    if fmt == "torchscript":
        data, load = to_torchscript(clf.net, clf.input_size, meta), partial(load_torchscript, meta=meta)
    elif int8:  # images first: bad calibration data fails before the export's seconds are spent
        drawn = draw_images(calibrate, calibration_images + CHECK_IMAGES, clf.input_size)
        calibration, held_out = drawn[:calibration_images], drawn[calibration_images:]
        print(f"calibrating int8 ranges on {len(calibration)} images from {', '.join(calibrate)}", file=sys.stderr)
        meta["export"]["calibration_sources"] = list(calibrate)
        data, load = onnx_bytes(clf, meta, calibration), load_onnx
        images = np.concatenate([images, held_out])
    else:
        data, load = onnx_bytes(clf, meta), load_onnx
    meta["export"]["check"] = write_checked(path, data, lambda tmp: check(compare(clf, load(tmp), images), precision))
    with writing(sidecar(path)):
        write_text(sidecar(path),
                   json.dumps({**meta, "file_sha256": hashlib.sha256(data).hexdigest()}, indent=2) + "\n")
    return path, meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="model to export (.json/.safetensors or a run folder; default: the shipped model)")
    p.add_argument("--format", choices=list(FORMATS), default="onnx",
                   help="onnx (default; run it with 'birdcnn predict --backend onnxruntime') or torchscript (for "
                        "LibTorch; PyTorch 2.14 deprecates TorchScript in favour of torch.export)")
    p.add_argument("--out", metavar="PATH", help="file to write (NAME.onnx or NAME.pt; metadata beside it as "
                                                 "NAME.onnx.json); default: runs/export-DATE/model.onnx")
    p.add_argument("--int8", action="store_true", help="quantise to int8 (ONNX, static, calibrated with --calibrate)")
    p.add_argument("--calibrate", action="append", metavar="DATA",
                   help="training images for --int8: a folder (of class folders, or of photos), a .tar.gz of one "
                        "or 'cifar10'; its train/ side only, never test/. Repeat to mix sources")
    p.add_argument("--calibration-images", type=positive_int, default=CALIBRATION_IMAGES, metavar="N",
                   help=f"images to calibrate on, drawn evenly from the --calibrate sources "
                        f"(default {CALIBRATION_IMAGES})")


def run(args: argparse.Namespace) -> int:
    path, meta = export(args.model, args.format, args.out, args.int8, args.calibrate, args.calibration_images)
    e, c = meta["export"], meta["export"]["check"]
    size = path.stat().st_size / 1e6
    kind = f"ONNX opset {e['opset']}" if args.format == "onnx" else "TorchScript"
    print(f"wrote {display_path(path)} ({size:.1f} MB, {kind}, {e['precision']}, dynamic batch) "
          f"and {sidecar(path).name} beside it")
    if e["precision"] == "int8":
        print(f"checked on {c['images']} real images against torch float32: bird decision the same on "
              f"{c['bird_decisions_agree']:.1%}, p(bird) off by {c['mean_bird_probability_difference']:.4f} on average")
    else:
        print(f"checked on {c['images']} real images against torch float32: probabilities within "
              f"{c['max_probability_difference']:.1g}")
    return 0
