"""`heap.reuse_freed_memory`: inside it the large tensors of a training-like step, freed and
allocated again in the next step, cost no new page faults once the heap has grown to hold them
(glibc would otherwise unmap them and the kernel zero every page again)."""
from __future__ import annotations

import resource
import sys

import pytest
import torch

from birdcnn.heap import _glibc, reuse_freed_memory

pytestmark = pytest.mark.skipif(sys.platform != "linux" or _glibc() is None, reason="glibc's malloc only")


def faults_of_a_step() -> int:
    """Page faults of one step-like pattern: 100 MB in four tensors alive together, all freed at its end."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(6_250_000) for _ in range(4)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_inside_and_given_back_outside():
    faults_of_a_step()
    assert faults_of_a_step() > 10_000, "glibc maps and zeroes the 25,000 pages each time"
    with reuse_freed_memory() as applied:
        assert applied
        # The heap grows for the first steps: torch's 64-byte-aligned allocations ask for a little
        # more than a freed block of their own size, so a step's blocks are reused once freed
        # blocks have merged, which takes a few steps (how many varies from run to run).
        faults = [faults_of_a_step() for _ in range(12)]
        assert sum(faults[4:]) < 25_000, f"8 steps after 4 fault less than one step outside: {faults}"
    assert faults_of_a_step() > 10_000, "the defaults are back after it"
