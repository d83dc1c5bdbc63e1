"""Shared by the benchmark scripts: machine facts and the one-line JSON summary."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

# The shared data beside the checkout (../shared/data), which every benchmark reads.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine_facts() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    facts = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
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
