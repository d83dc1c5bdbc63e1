"""`--device`: the user's choice of processor, checked up front so that a missing GPU is one
clear line rather than a torch traceback halfway through a run."""
from __future__ import annotations

import argparse

import torch

from .errors import BirdcnnError

DEVICE_HELP = ("auto (default: CUDA, then Apple MPS, then the CPU), cpu, cuda, cuda:N or mps; "
               "bf16 on CPU and CUDA, float32 on MPS")


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
