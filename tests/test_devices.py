"""bf16 only where the processor computes it natively: elsewhere it is emulated and slower than float32."""
from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from birdcnn.devices import fast_bf16
from birdcnn.modelfile import load_model


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    line = next(x for x in text.splitlines() if x.startswith("flags"))
    return set(line.split(":", 1)[1].split())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists(),
                    reason="reads the x86 CPU flags from Linux's /proc/cpuinfo")
def test_cpu_bf16_follows_the_cpu_flags():
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert fast_bf16(torch.device("cpu")) is native


def test_other_devices_keep_float32():
    assert fast_bf16(torch.device("mps")) is False
    assert fast_bf16(torch.device("meta")) is False


def test_the_classifier_autocasts_as_the_rule_says():
    clf = load_model(device="cpu")
    assert clf.bf16 is fast_bf16(torch.device("cpu"))
    x = torch.zeros(2, 32, 32, 3, dtype=torch.uint8).numpy()
    expected = torch.bfloat16 if clf.bf16 else torch.float32
    with clf._autocast():
        out = clf.net(clf.prepare(x))
    assert out.dtype == expected
