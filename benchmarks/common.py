"""Shared by the benchmark scripts: machine facts and the one-line JSON summary."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

# The shared data beside the checkout (../shared/data), which every benchmark reads.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpu_isa(flags: set[str]) -> str:
    """The matrix-multiply instruction sets the CPU offers, e.g. 'AVX-512 + AVX512-BF16 (no AMX)'."""
    if not flags:
        return "unknown"
    parts = ["AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"]
    if "avx512_bf16" in flags:
        parts.append("AVX512-BF16")
    amx = [name for name in ("amx_bf16", "amx_fp16", "amx_int8") if name in flags]
    return " + ".join(parts) + (" + AMX (" + "/".join(amx) + ")" if amx else " (no AMX)")


def machine_facts() -> dict:
    cpu, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not flags:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    facts = {"cpu": cpu, "cores": os.cpu_count(), "isa": cpu_isa(flags),
             "torch_kernels": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
             "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def print_machine_facts() -> dict:
    facts = machine_facts()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()))
    return facts


def print_summary(summary: dict) -> None:
    """The last line of every benchmark: one JSON object, for scripts and docs."""
    print("SUMMARY " + json.dumps(summary, sort_keys=True))


def torchrun(procs: int, *args: str) -> tuple[list[str], dict]:
    """The command and environment that run `args` as `procs` torchrun processes on this machine,
    each with an equal share of the cores (as torchrun's OMP_NUM_THREADS=1 does on 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *args], env


def recorded_source(spec: str) -> str:
    """A run's recorded --data source as found from here: the recorded path (relative to where it
    was trained, usually the repository root) or, where that does not exist, the shared data's copy."""
    return spec if Path(spec).exists() else str(SHARED / Path(spec).name)


def validation_split(cfg: dict, k: int, size: int):
    """The run's k-th training source (`cfg`: its recorded training config) decoded at `size` px,
    and the indices of its validation split, held out exactly as training held them out."""
    from birdcnn import data as D
    from birdcnn.sources import validation_count

    view = D.load_split(recorded_source(cfg["data"][k]), "train", size)
    _, val = D.split_validation(len(view), validation_count(len(view), cfg.get("val_size")), cfg["seed"] + k)
    return view, val


def model_logits(clf, cache: str | None = None) -> dict[str, np.ndarray]:
    """A trained model's logits with its own views (its zoom view included) on the run's validation
    split and every source's test split, rebuilt exactly as training made them (its recorded config,
    as `birdcnn train --recalibrate` does), and on the 40 shared photos:
    {"<split> <source>": logits, "<split> <source> labels": class indices (-1: none of the model's)}
    for split "val" or "test", plus "photo sources": the sources that are photos.

    With `cache`, kept in that .npz file and read from it when it exists (~20 minutes to compute);
    a cache written for other weights is refused, not silently used."""
    if cache and Path(cache).exists():
        out = dict(np.load(cache))
        if str(out.get("weights sha256")) != clf.meta["weights_sha256"]:
            sys.exit(f"{cache}: logits of another model (weights sha256 differs): delete it or name another file")
        return out
    from birdcnn.images import load_views
    from birdcnn.modelfile import stack_zoomed
    from birdcnn.sources import add_zoom_views, folder_name
    from birdcnn.train import TrainConfig, prepare_data

    cfg = TrainConfig(**clf.meta["training"]["config"])
    cfg.data = [recorded_source(d) for d in ([cfg.data] if isinstance(cfg.data, str) else cfg.data)]
    cfg.zoom_size = clf.zoom_size
    mixed = prepare_data(cfg)
    if clf.zoom_size:
        add_zoom_views(mixed, clf.zoom_size, cfg.seed, cfg.val_size)
    val = clf.logits(mixed.val.images, zoomed=mixed.val_zoomed).numpy()
    out = {"weights sha256": np.array(clf.meta["weights_sha256"]),
           "photo sources": np.array([folder_name(n) for (n, _), p in zip(mixed.tests, mixed.photo) if p])}
    for k, (name, test) in enumerate(mixed.tests):
        name, m = folder_name(name), mixed.val_source == k
        out[f"val {name}"], out[f"val {name} labels"] = val[m], mixed.val.labels[m]
        if test is not None:
            zoomed = mixed.test_zoomed[k] if mixed.test_zoomed else None
            out[f"test {name}"] = clf.logits(test.images, zoomed=zoomed).numpy()
            out[f"test {name} labels"] = test.labels
        print(f"{name}: {int(m.sum())} validation, {0 if test is None else len(test)} test images", flush=True)
    paths = sorted((SHARED / "photos").glob("*/*"))
    views = [load_views(p, clf.input_size, clf.zoom_size) for p in paths]
    out["test photos"] = clf.logits(np.stack([v for v, _ in views]), zoomed=stack_zoomed([z for _, z in views])).numpy()
    out["test photos labels"] = np.array([clf.positive_index if p.parent.name == clf.positive else -1 for p in paths])
    if cache:
        np.savez(cache, **out)
    return out


# Where the birds are in ../shared/data/photos/bird: (x0, y0, x1, y1) in photo pixels, drawn by
# looking at each photo over a 50-px grid (a box per bird; the vulture photo's two on the chimney,
# the magpie photo's two on the lawn, the king penguin's two half-seen neighbours at the top).
SHARED_BIRD_BOXES = {
    "african_grey": [(10, 0, 390, 355)], "cock": [(190, 50, 500, 349)], "crane": [(135, 60, 230, 430)],
    "king_penguin": [(140, 75, 335, 335), (255, 0, 335, 50), (460, 0, 500, 50)],
    "little_blue_heron": [(180, 50, 475, 320)], "magpie": [(90, 175, 155, 300), (232, 135, 315, 195)],
    "partridge": [(80, 40, 395, 300)], "ruffed_grouse": [(240, 118, 385, 245)],
    "vulture": [(105, 65, 145, 140), (150, 90, 200, 155)], "white_stork": [(55, 75, 480, 720)],
}


def on_the_bird(box, photo: str, size: tuple[int, int]) -> bool:
    """Whether most (>= half) of `box` lies on the birds of shared photo `photo` (its stem)."""
    W, H = size
    mask = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in SHARED_BIRD_BOXES[photo]:
        mask[y0:y1, x0:x1] = True
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    inside = mask[max(0, y0):min(H, y1), max(0, x0):min(W, x1)]
    return bool(inside.size > 0 and inside.mean() >= 0.5)
