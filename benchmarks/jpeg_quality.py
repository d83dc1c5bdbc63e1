"""How the JPEG CIFAR-10 images were encoded: chroma subsampling and IJG quality, per file.

Accuracy on JPEG-re-encoded CIFAR-10 depends on how hard the images were compressed: at
32x32 px, 4:2:0 subsampling keeps colour at 16x16 only. The quality is recovered exactly by
matching each file's quantisation tables against libjpeg's standard tables scaled for every
quality from 1 to 100.

    python benchmarks/jpeg_quality.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--limit N]
"""
from __future__ import annotations

import argparse
import io
import tarfile
from collections import Counter

import numpy as np
from PIL import Image, JpegImagePlugin

from common import SHARED, print_summary

# libjpeg's base tables (ITU T.81 Annex K), in natural order like Pillow's `quantization`.
LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
SAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0", -1: "unknown"}


def ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((LUMA * scale + 50) // 100, 1, 255)


def ijg_quality(im: Image.Image) -> int | None:
    """The libjpeg quality whose luminance table this file uses, or None for a custom table."""
    table = np.array(im.quantization[0])
    zigzag_free = sorted(table.tolist())  # Pillow's order varies by version: compare as multisets
    for q in range(1, 101):
        if sorted(ijg_table(q).tolist()) == zigzag_free:
            return q
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--limit", type=int, default=0, help="inspect only the first N files (default: all)")
    args = ap.parse_args()
    qualities, sampling, sizes, seen = Counter(), Counter(), [], 0
    with tarfile.open(args.data) as tar:
        for m in tar:
            if not (m.isfile() and m.name.lower().endswith((".jpg", ".jpeg"))):
                continue
            data = tar.extractfile(m).read()
            im = Image.open(io.BytesIO(data))
            qualities[ijg_quality(im)] += 1
            sampling[SAMPLING.get(JpegImagePlugin.get_sampling(im), "unknown")] += 1
            sizes.append(len(data))
            seen += 1
            if seen == args.limit:
                break
    print(f"{seen} JPEG files from {args.data}")
    print("IJG quality: " + ", ".join(f"{q}: {n}" for q, n in qualities.most_common()))
    print("chroma subsampling: " + ", ".join(f"{s}: {n}" for s, n in sampling.most_common()))
    print(f"file size: median {int(np.median(sizes))} bytes (raw pixels: 3072)")
    print_summary({"benchmark": "jpeg_quality", "files": seen, "quality": dict(qualities.most_common()),
                   "subsampling": dict(sampling), "median_bytes": int(np.median(sizes))})


if __name__ == "__main__":
    main()
