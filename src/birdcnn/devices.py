"""`--device`: the user's choice of processor, checked up front so that a missing GPU is one
clear line rather than a torch traceback halfway through a run."""
from __future__ import annotations

import argparse
import functools
import platform

import torch

from .errors import BirdcnnError

DEVICE_HELP = ("auto (default: CUDA, then Apple MPS, then the CPU), cpu, cuda, cuda:N or mps; "
               "bf16 where the processor computes it natively (CUDA from Ampere on; CPUs with AVX512-BF16, "
               "AMX or Arm's BF16), float32 otherwise")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """Every command's `--device`, with the same choices and default."""
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def available_devices() -> list[str]:
    """The device names that work here, e.g. ["cpu", "cuda", "cuda:0", "cuda:1"]."""
    names = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names += ["cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def chosen_device(name: str | None) -> torch.device | None:
    """`--device NAME` checked now; None for auto, so that the loader picks (an ONNX export: the CPU)."""
    return None if name in (None, "auto") else check_device(name)


def check_device(name: str | None = "auto") -> torch.device:
    """The torch device for `--device NAME`, or `BirdcnnError` saying why it cannot be used.

    "auto" (or None) picks CUDA, then Apple's MPS, then the CPU.
    """
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    available = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BirdcnnError(f"--device {name}: unknown device (available: {', '.join(available)}, or auto)") from None
    kind = {"cuda": "CUDA", "mps": "MPS"}.get(device.type, device.type)
    if device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) >= torch.cuda.device_count():
        raise BirdcnnError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                           f"(available: {', '.join(available)})")
    if device.type != "cpu" and device.type not in available:
        raise BirdcnnError(f"--device {name}: {kind} is not available on this machine "
                           f"(available: {', '.join(available)})")
    return device


@functools.cache  # asked once per parameter per optimizer step (muon.orthogonalise)
def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds `device` up: only where its matrix units compute bf16 natively.

    Elsewhere bf16 is emulated and slower than float32: on a 2-core AVX2-only AMD EPYC the shipped
    model classified 11 images/s under bf16 autocast against 43 in float32
    (benchmarks/inference_speed.py, docs/RESULTS.md). MPS keeps float32 (its bf16 support varies
    by macOS version).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:  # private probes of torch's cpuinfo: absent in some builds, so fall back to float32
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True
        # Arm CPUs with the BF16 extension (Graviton 3, Apple M2+ under Linux): oneDNN's own check.
        return platform.machine().lower() in ("aarch64", "arm64") and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False
