"""`birdcnn search` against the obvious loop, on a folder of real JPEGs of camera-like sizes.

    python benchmarks/search_speed.py [--photos 2000] [--naive 200] [--model PATH] [--workers N] [--rounds 3]

Builds, in a temporary folder outside the repository, a collection of real JPEG photos from the
shared data (the 40 shared photos and CIFAR-10 images, tiled at their own resolution into
photos of 0.08 to 12 megapixels and re-encoded at quality 90). Then, in one run, it times:

  (a) the naive loop: open each photo with Pillow at full size, resize to 32x32, classify it
      alone (on an evenly spread sample of --naive photos; a rate, so a sample is enough);
  (b) the real `birdcnn search` command (a subprocess), with --output:
      - memory: on half of the collection and on all of it, sampling the whole process tree's
        memory (proportional set size, so pages shared by the worker processes count once).
        Peak memory that does not grow from N/2 to N photos is what "streaming" means.
      - speed: on all of it, default (the model's threshold: the mirror image only for photos
        within search.MIRROR_MARGIN of it), every photo mirrored (--min-probability 0) and
        --no-tta, with no sampler running: reading
        /proc/PID/smaps_rollup costs ~25 ms of CPU per sample, and sampling every 0.1 s took
        ~8% of the 2 cores from the search it measured (earlier figures were ~10% low).
      Its rate once running compares with (a); the end-to-end rate adds ~2 s of start-up.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from common import SHARED, print_machine_facts, print_summary

# (width, height, share of the collection): phone thumbnails to 12 MP camera photos.
SIZES = [(320, 240, 0.20), (640, 480, 0.20), (1280, 960, 0.25), (2048, 1536, 0.20), (4000, 3000, 0.15)]
TILE = 500  # the shared photos' own resolution: tiles keep real detail, as in a camera photo


def _sources(n_cifar: int, seed: int) -> tuple[list[Path], list[bytes]]:
    photos = sorted((SHARED / "photos").rglob("*.jpg"))
    rng = random.Random(seed)
    with tarfile.open(SHARED / "cifar10-jpeg.tar.gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.endswith(".jpg") and m.name.split("/")[-3:-2] == ["test"]]
        # In archive order: a gzip stream only reads forwards quickly.
        cifar = [tar.extractfile(m).read() for m in sorted(rng.sample(members, n_cifar), key=lambda m: m.offset)]
    return photos, cifar


_SRC: dict = {}


def _init_sources(photos: list[Path], cifar: list[bytes]) -> None:
    # Decoded once per worker: composing a 12 MP photo then costs resizes, not 48 decodes.
    _SRC.update(photos=[Image.open(p).convert("RGB") for p in photos],
                cifar=[Image.open(io.BytesIO(b)).convert("RGB") for b in cifar])


def _make_photo(job: tuple) -> int:
    """One photo: a grid of real source images, each at about its own resolution."""
    path, w, h, seed = job
    photos, cifar = _SRC["photos"], _SRC["cifar"]
    rng = random.Random(seed)
    canvas = Image.new("RGB", (w, h))
    cols, rows = max(1, round(w / TILE)), max(1, round(h / TILE))
    for r in range(rows):
        for c in range(cols):
            box = (c * w // cols, r * h // rows, (c + 1) * w // cols, (r + 1) * h // rows)
            src = rng.choice(photos) if rng.random() < 0.75 else rng.choice(cifar)
            canvas.paste(src.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BICUBIC), box[:2])
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, "JPEG", quality=90)
    return path.stat().st_size


def build_collection(root: Path, n: int, workers: int, seed: int = 0) -> list[tuple[Path, tuple[int, int]]]:
    """n photos in root/part1 and root/part2 (n/2 each), 100 per sub-folder."""
    photos, cifar = _sources(200, seed)
    rng = random.Random(seed)
    sizes = rng.choices([(w, h) for w, h, _ in SIZES], weights=[s for *_, s in SIZES], k=n)
    jobs = []
    for i, (w, h) in enumerate(sizes):
        if rng.random() < 0.3:
            w, h = h, w  # some portrait photos
        path = root / f"part{1 + (i >= n // 2)}" / f"{i // 100:03d}" / f"IMG_{i:05d}.jpg"
        jobs.append((path, w, h, seed * 100_000 + i))
    with ProcessPoolExecutor(workers, initializer=_init_sources, initargs=(photos, cifar)) as ex:
        nbytes = sum(ex.map(_make_photo, jobs, chunksize=8))
    print(f"collection: {n} JPEGs, {nbytes / 1e9:.2f} GB, in {root}")
    return [(j[0], (j[1], j[2])) for j in jobs]


def naive_loop(paths: list[Path], model) -> float:
    """Photos/s of the obvious code: full-size decode, resize, one photo per network call."""
    from birdcnn.images import fit_square

    t0 = time.perf_counter()
    for p in paths:
        im = Image.open(p).convert("RGB")
        model.probabilities(np.array(fit_square(im, model.input_size))[None])
    return len(paths) / (time.perf_counter() - t0)


def _tree_pss_kb(pid: int) -> int:
    """Proportional set size of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def run_search(folder: Path, model: str | None, workers: int | None, out: Path, extra: tuple = (),
               sample_memory: bool = False) -> dict:
    cmd = [sys.executable, "-m", "birdcnn", "search", str(folder), "--json", "--output", str(out), *extra]
    cmd += ["--model", model] if model else []
    cmd += ["--workers", str(workers)] if workers is not None else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_pss_kb(proc.pid))
            stop.wait(0.1)

    if sample_memory:
        threading.Thread(target=sample, daemon=True).start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    if proc.returncode not in (0, 1):
        sys.exit(f"birdcnn search failed:\n{stderr}")
    summary = json.loads(stdout)["summary"]
    return {"photos": summary["scanned"], "failed": summary["failed"], "wall_s": wall,
            "photos_per_s": summary["scanned"] / wall, "steady_photos_per_s": summary["photos_per_second"],
            "peak_pss_mb": peak[0] / 1024 if sample_memory else None,
            "mirrored": summary["mirrored"] / max(1, summary["scored"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=2000, help="collection size (default 2000)")
    ap.add_argument("--naive", type=int, default=200, help="photos timed with the naive loop (default 200)")
    ap.add_argument("--model", help="model file (default: the shipped model)")
    ap.add_argument("--workers", type=int, help="search --workers (default: one per core)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time each kind of search this many times, in turn, and report the medians (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the collection (prints where)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    facts = print_machine_facts()
    print(f"load average before start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(other work on the machine slows every figure)")
    mix = ", ".join(f"{w}x{h} {int(s * 100)}%" for w, h, s in SIZES)
    print(f"photo sizes: {mix}")

    from birdcnn.modelfile import load_model
    model = load_model(args.model)
    root = Path(tempfile.mkdtemp(prefix="birdcnn-search-bench-"))
    try:
        t0 = time.perf_counter()
        photos = build_collection(root, args.photos, os.cpu_count() or 1)
        print(f"built in {time.perf_counter() - t0:.0f} s")

        sample = [p for p, _ in photos[:: max(1, len(photos) // args.naive)]][: args.naive]
        naive_loop(sample[:3], model)  # warm-up
        naive = naive_loop(sample, model)
        print(f"(a) naive loop (full decode, one photo per call): {naive:.1f} photos/s on {len(sample)} photos")

        runs = {}
        for name, folder in (("half", root / "part1"), ("all", root)):
            r = runs[f"{name}_memory"] = run_search(folder, args.model, args.workers, root / f"{name}.jsonl",
                                                    sample_memory=True)
            print(f"(b) memory: birdcnn search on {r['photos']} photos: peak {r['peak_pss_mb']:.0f} MB "
                  "(all processes, PSS)")
        modes = {"all": (), "all_mirrored": ("--min-probability", "0"), "no_tta": ("--no-tta",)}
        timed: dict[str, list[dict]] = {name: [] for name in modes}
        # In turn, round after round: the machine's speed drifts by 10-20% over minutes, and
        # interleaving spreads the drift over every mode instead of favouring the first.
        for _ in range(args.rounds):
            for name, extra in modes.items():
                r = run_search(root, args.model, args.workers, root / f"{name}_{len(timed[name])}.jsonl", extra)
                timed[name].append(r)
                mirrored = f", {r['mirrored']:.0%} mirrored" if "--no-tta" not in extra else ""
                print(f"(b) speed: birdcnn search {' '.join(extra) + ' ' if extra else ''}on {r['photos']} photos: "
                      f"{r['steady_photos_per_s']:.1f} photos/s once running, {r['photos_per_s']:.1f} end to end "
                      f"({r['wall_s']:.1f} s with start-up{mirrored})", flush=True)
        for name, rs in timed.items():
            runs[name] = sorted(rs, key=lambda r: r["steady_photos_per_s"])[len(rs) // 2]  # the median run
        if args.rounds > 1:
            print(f"(b) medians of {args.rounds} rounds, photos/s once running: "
                  + ", ".join(f"{name} {runs[name]['steady_photos_per_s']:.1f}" for name in modes))
        # The naive loop is timed without start-up, so it compares with the running rate.
        ratio = runs["all"]["steady_photos_per_s"] / naive
        half_mb, all_mb = runs["half_memory"]["peak_pss_mb"], runs["all_memory"]["peak_pss_mb"]
        growth = all_mb / half_mb
        print(f"search / naive: {ratio:.1f}x ({runs['no_tta']['steady_photos_per_s'] / naive:.1f}x with --no-tta)   "
              f"peak memory {runs['half_memory']['photos']} -> {runs['all_memory']['photos']} photos: "
              f"{half_mb:.0f} -> {all_mb:.0f} MB ({growth:.2f}x)")
        rate = runs["all"]["steady_photos_per_s"]
        print(f"targets: >= 200 photos/s {'met' if rate >= 200 else 'NOT met'}, "
              f">= 5x naive {'met' if ratio >= 5 else 'NOT met'}, "
              f"memory flat {'yes' if growth < 1.15 else 'NO'}; load average now {os.getloadavg()[0]:.2f}")
        print_summary({"benchmark": "search_speed", "photos": runs["all"]["photos"],
                       "naive_photos_per_s": round(naive, 1), "search_photos_per_s": round(rate, 1),
                       "search_end_to_end_photos_per_s": round(runs["all"]["photos_per_s"], 1),
                       "search_all_mirrored_photos_per_s": round(runs["all_mirrored"]["steady_photos_per_s"], 1),
                       "search_mirrored_share": round(runs["all"]["mirrored"], 3),
                       "search_no_tta_photos_per_s": round(runs["no_tta"]["steady_photos_per_s"], 1),
                       "speedup": round(ratio, 2), "peak_mb_half": round(half_mb), "peak_mb_all": round(all_mb),
                       "arch": model.meta["arch"], "load_average": round(os.getloadavg()[0], 2), **facts})
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
