"""`birdcnn evaluate` speed: the whole evaluation of the CIFAR-10 test split, then where the time goes
(listing, decoding, classifying, drawing the report), and the memory it took.

    python benchmarks/evaluate_speed.py [--model PATH] [--data ../shared/data/cifar10-jpeg.tar.gz]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

from common import SHARED, print_machine_facts, print_summary



def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="default: the shipped model")
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg.tar.gz"))
    args = ap.parse_args()
    print_machine_facts()

    from birdcnn.evaluate import evaluate, open_source
    from birdcnn.modelfile import load_model
    from birdcnn.report import write_report

    clf = load_model(args.model)
    clf.probabilities(np.zeros((8, clf.input_size, clf.input_size, 3), np.uint8))  # warm-up
    before = peak_mb()
    t0 = time.perf_counter()
    ev = evaluate(clf, args.data)
    t_eval = time.perf_counter() - t0
    grew = peak_mb() - before
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        write_report(ev, out)
        t_report = time.perf_counter() - t0
    print(f"evaluate: {ev.n} images in {t_eval:.1f} s ({ev.n / t_eval:.0f} images/s), report {t_report:.1f} s; "
          f"peak memory grew {grew:.0f} MB (arch {clf.meta['arch']}, tta={clf.tta})")

    # The parts, one by one.
    t0 = time.perf_counter()
    src = open_source(args.data, clf.input_size, clf.zoom_size)  # as evaluate() opens it
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunks = [(images, zoomed) for images, _, _, zoomed in src]
    images = np.concatenate([chunk for chunk, _ in chunks])
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for chunk, zoomed in chunks:
        clf.probabilities(chunk, zoomed=zoomed)
    t_classify = time.perf_counter() - t0
    print(f"  open/list {t_open:.1f} s, decode {t_decode:.1f} s ({len(images) / t_decode:.0f} images/s), "
          f"classify {t_classify:.1f} s ({len(images) / t_classify:.0f} images/s)")
    print(f"bird: precision {ev.bird['precision']}, recall {ev.bird['recall']}, AP {ev.bird['average_precision']}")
    print_summary({"benchmark": "evaluate_speed", "images": ev.n,
                   "evaluate_s": round(t_eval, 2), "report_s": round(t_report, 2),
                   "open_s": round(t_open, 2), "decode_s": round(t_decode, 2), "classify_s": round(t_classify, 2),
                   "peak_memory_growth_mb": round(grew), "arch": clf.meta["arch"], "tta": clf.tta})


if __name__ == "__main__":
    main()
