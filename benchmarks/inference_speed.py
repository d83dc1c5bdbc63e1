"""Inference: model load time, one-photo latency, and batch throughput and accuracy in fp32 vs bf16.

Also which of the two the model uses by default on this machine (`devices.fast_bf16`: bf16 only
where the processor computes it natively). Accuracy is the choice among the data's own classes
(CIFAR-10's 10), as `birdcnn evaluate` reports it for a model that knows more classes.

    python benchmarks/inference_speed.py [--model PATH] [--data CIFAR-10] [--photo IMG] [--limit N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import SHARED, print_machine_facts, print_summary



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="default: the shipped model")
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--photo", default=str(SHARED / "photos" / "bird" / "magpie.jpg"))
    ap.add_argument("--limit", type=int, help="only the first N test images (emulated bf16 is slow)")
    args = ap.parse_args()
    facts = print_machine_facts()

    t0 = time.perf_counter()
    import birdcnn  # noqa: F401 - import time is part of what a user waits for
    from birdcnn.modelfile import load_model
    from birdcnn.predict import classify
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf = load_model(args.model)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = classify([args.photo], clf)[0]
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    classify([args.photo], clf)
    t_second = time.perf_counter() - t0
    print(f"import birdcnn (torch already loaded) {t_import:.2f} s, load model {t_load * 1000:.0f} ms, "
          f"first photo {t_first * 1000:.0f} ms, next photo {t_second * 1000:.0f} ms  "
          f"({Path(args.photo).name}: {rec.get('label')})")

    from birdcnn.data import load_split
    from birdcnn.sources import canonical_class
    test = load_split(args.data, "test", clf.input_size)
    if args.limit:
        # every class in a random sample, not the first classes' folders
        keep = np.sort(np.random.default_rng(0).permutation(len(test))[:args.limit])
        test.images, test.labels = test.images[keep], test.labels[keep]
    own = [clf.classes.index(canonical_class(c)) for c in test.classes]
    default = "bf16" if clf.bf16 else "fp32"
    print(f"default precision here: {default} (bf16 only where the processor computes it natively)")
    results = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        clf.bf16 = bf16
        clf.probabilities(test.images[:500])  # warm-up
        t0 = time.perf_counter()
        probs = clf.probabilities(test.images)
        dt = time.perf_counter() - t0
        acc = float((probs[:, own].argmax(1) == test.labels).mean())
        results[name] = {"images_per_s": len(test) / dt, "accuracy": acc, "probs": probs}
        print(f"{name}: {len(test)} test images in {dt:.1f} s ({len(test) / dt:.0f} images/s, tta={clf.tta}), "
              f"accuracy {acc:.4f}")
    diff = np.abs(results["fp32"]["probs"] - results["bf16"]["probs"]).max()
    agree = float((results["fp32"]["probs"].argmax(1) == results["bf16"]["probs"].argmax(1)).mean())
    print(f"bf16 vs fp32: max probability difference {diff:.4f}, same top class on {agree:.2%} of images")
    print_summary({"benchmark": "inference_speed", "import_s": round(t_import, 2), "load_ms": round(t_load * 1000),
                   "first_photo_ms": round(t_first * 1000), "next_photo_ms": round(t_second * 1000),
                   **{f"{k}_images_per_s": round(v["images_per_s"]) for k, v in results.items()},
                   **{f"{k}_accuracy": v["accuracy"] for k, v in results.items()},
                   "bf16_max_prob_diff": round(float(diff), 4), "bf16_top1_agreement": agree,
                   "default_precision": default, **facts})


if __name__ == "__main__":
    main()
