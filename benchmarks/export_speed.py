"""Backends side by side: torch (the Classifier as shipped; bf16 where the CPU has it natively), onnxruntime fp32, int8.

Exports the model to ONNX float32 and int8 (`birdcnn export`, int8 calibrated on the training
side of --calibrate), then, on the same images for every backend: images/s at batch 256 from
decoded uint8 images (normalisation + network + test-time views; decoding excluded), with the
model's views and with none; bird AP and 10-class accuracy on the CIFAR-10 test split; bird AP
on the realphotos test split; and how often each backend's bird decision equals torch's. Speeds
are given per wall-clock second and per CPU second of this process (see `timed`).

    python benchmarks/export_speed.py [--model PATH] [--limit N] [--keep DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from birdcnn import data as D
from birdcnn import metrics as M
from birdcnn.export import export
from birdcnn.modelfile import Classifier, load_model
from birdcnn.sources import canonical_class

from common import SHARED, print_machine_facts, print_summary

BATCH = 256


def test_split(source: Path, size: int, limit: int | None) -> D.Dataset:
    """The source's test split at the model's view (decoded once into ~/.cache/birdcnn), or a
    fixed random `limit` images of it."""
    ds = D.load_split(source, "test", size)
    if limit is not None and limit < len(ds):
        ds = ds.subset(np.sort(np.random.default_rng(0).choice(len(ds), limit, replace=False)))
    return ds


def timed(clf: Classifier, images: np.ndarray, tta: str) -> tuple[np.ndarray, float, float]:
    """(probabilities, images per wall-clock second, images per CPU second of this process) at
    batch 256, after one warm-up batch. The CPU figure holds when other jobs share the machine
    (the wall-clock one then measures our share of it); unshared, wall ~ 2 x CPU on 2 cores."""
    clf.probabilities(images[:BATCH], BATCH, tta)
    t0, c0 = time.perf_counter(), time.process_time()
    probs = clf.probabilities(images, BATCH, tta)
    return probs, len(images) / (time.perf_counter() - t0), len(images) / (time.process_time() - c0)


def scores(clf: Classifier, ds: D.Dataset, probs: np.ndarray) -> dict:
    """Bird AP, and the accuracy among the data's own classes (as `birdcnn evaluate` measures it)
    when the model knows them all."""
    names = [canonical_class(c) for c in ds.classes]
    y = np.array([names[i] == clf.positive for i in ds.labels])
    out = {"ap": M.binary_report(y, probs[:, clf.positive_index].astype(np.float64),
                                 clf.threshold)["average_precision"]}
    if all(n in clf.classes for n in names):
        own = probs[:, [clf.classes.index(n) for n in names]]
        out["accuracy"] = float((own.argmax(1) == ds.labels).mean())
    return out


def decisions(clf: Classifier, probs: np.ndarray) -> np.ndarray:
    return probs[:, clf.positive_index] >= clf.threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="default: the shipped model")
    ap.add_argument("--cifar", default=str(SHARED / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--realphotos", default=str(SHARED / "realphotos.tar.gz"))
    ap.add_argument("--calibrate", nargs="+",
                    help="int8 calibration sources (training side; default: --cifar and --realphotos)")
    ap.add_argument("--limit", type=int, help="use this many images of each test split (default: all)")
    ap.add_argument("--keep", metavar="DIR", help="write the exports here (default: a temporary folder)")
    args = ap.parse_args()
    facts = print_machine_facts()
    calibrate = args.calibrate or [args.cifar, args.realphotos]

    with tempfile.TemporaryDirectory(prefix="birdcnn-export-") as tmp:
        folder = Path(args.keep or tmp)
        t0 = time.perf_counter()
        fp32, _ = export(args.model, "onnx", str(folder / "model.onnx"))
        t_fp32 = time.perf_counter() - t0
        t0 = time.perf_counter()
        int8, meta = export(args.model, "onnx", str(folder / "model-int8.onnx"), int8=True, calibrate=calibrate)
        t_int8 = time.perf_counter() - t0
        print(f"exported float32 in {t_fp32:.0f} s, int8 in {t_int8:.0f} s "
              f"(calibrated on {meta['export']['quantization']['calibration_images']} images "
              f"of {', '.join(calibrate)})")
        ref = load_model(args.model)  # bf16 where the CPU has it natively (devices.fast_bf16), else float32
        backends = {f"torch {'bf16' if ref.bf16 else 'fp32'}": ref, "onnxruntime fp32": load_model(fp32),
                    "onnxruntime int8": load_model(int8)}
        cifar = test_split(Path(args.cifar), ref.input_size, args.limit)
        photos = test_split(Path(args.realphotos), ref.input_size, args.limit)
        print(f"CIFAR-10 test: {len(cifar)} images; realphotos test: {len(photos)} images "
              f"({int((photos.labels == photos.classes.index('bird')).sum())} birds); views: tta={ref.tta}", flush=True)
        rows, reference = [], {}
        for name, clf in backends.items():
            p_views, speed_views, cpu_views = timed(clf, cifar.images, clf.tta)
            p_none, speed_none, cpu_none = timed(clf, cifar.images, "none")
            p_photos = clf.probabilities(photos.images, BATCH)
            views, none = scores(clf, cifar, p_views), scores(clf, cifar, p_none)
            row = {"backend": name, "images_per_s": round(speed_views, 1), "images_per_s_no_tta": round(speed_none, 1),
                   "images_per_cpu_s": round(cpu_views, 1), "images_per_cpu_s_no_tta": round(cpu_none, 1),
                   "cifar_ap": views["ap"], "cifar_accuracy": views.get("accuracy"), "cifar_ap_no_tta": none["ap"],
                   "cifar_accuracy_no_tta": none.get("accuracy"), "realphotos_ap": scores(clf, photos, p_photos)["ap"]}
            both = np.concatenate([decisions(clf, p_views), decisions(clf, p_photos)])
            reference.setdefault("decisions", both)
            row["same_decision_as_torch"] = float((both == reference["decisions"]).mean())
            rows.append(row)
            print(f"{name}: {row}", flush=True)

    print(f"\n| backend | images/s, tta {ref.tta} (per CPU-s) | images/s, no tta (per CPU-s) | CIFAR-10 bird AP "
          f"| CIFAR-10 10-class accuracy | (no tta) | realphotos bird AP | bird decision = torch's |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['images_per_s']:.0f} ({r['images_per_cpu_s']:.0f}) | "
              f"{r['images_per_s_no_tta']:.0f} ({r['images_per_cpu_s_no_tta']:.0f}) | "
              f"{r['cifar_ap']:.4f} | {r['cifar_accuracy']:.4f} | "
              f"{r['cifar_accuracy_no_tta']:.4f} | {r['realphotos_ap']:.4f} | {r['same_decision_as_torch']:.2%} |")
    print_summary({"benchmark": "export_speed", "batch": BATCH, "tta": ref.tta, "cifar_images": len(cifar),
                   "realphotos_images": len(photos), "rows": rows, **facts})


if __name__ == "__main__":
    main()
