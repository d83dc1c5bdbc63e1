"""`birdcnn locate` time from a 64 px thumbnail to a 24 MP photo (decode + windows + heat-map PNG).

    python benchmarks/locate_speed.py [--model PATH]

The photos are a shared photo enlarged to each size and saved as JPEG (quality 90) in a
temporary folder; the window count is bounded by design (see birdcnn/locate.py), so the time
should hardly grow with the megapixels.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from common import SHARED, print_machine_facts, print_summary

SIZES = [(64, 48), (640, 480), (1600, 1200), (4000, 3000), (6000, 4000), (6000, 1000)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model file (default: the shipped model)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the median is shown (default 3)")
    args = ap.parse_args()
    facts = print_machine_facts()
    print(f"load average before start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    from birdcnn.locate import locate_file, save_heatmap
    from birdcnn.modelfile import load_model

    model = load_model(args.model)
    src = Image.open(SHARED / "photos" / "bird" / "magpie.jpg").convert("RGB")
    root = Path(tempfile.mkdtemp(prefix="birdcnn-locate-bench-"))
    summary = {"benchmark": "locate_speed", "arch": model.meta["arch"], **facts}
    try:
        locate_file(SHARED / "photos" / "bird" / "magpie.jpg", model)  # warm-up
        print(f"{'photo':>11s} {'MP':>5s} {'windows':>8s} {'locate s':>9s} {'+ PNG s':>8s}")
        for w, h in SIZES:
            path = root / f"{w}x{h}.jpg"
            src.resize((w, h), Image.Resampling.BICUBIC).save(path, quality=90)
            times, png_times = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = locate_file(path, model)
                t1 = time.perf_counter()
                save_heatmap(res, root / "heat.png")
                times.append(t1 - t0)
                png_times.append(time.perf_counter() - t1)
            t, tp = sorted(times)[len(times) // 2], sorted(png_times)[len(png_times) // 2]
            print(f"{w:>5d}x{h:<5d} {w * h / 1e6:5.1f} {res.windows:8d} {t:9.2f} {tp:8.2f}")
            summary[f"{w}x{h}_s"] = round(t + tp, 3)
            summary[f"{w}x{h}_windows"] = res.windows
        summary["load_average"] = round(os.getloadavg()[0], 2)
        print_summary(summary)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
