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
