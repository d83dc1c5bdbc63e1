"""`heap.reuse_freed_memory`: inside it a large tensor freed and allocated again costs no new
page faults (glibc would otherwise unmap it and the kernel zero it again)."""
from __future__ import annotations

import resource
import sys

import pytest
import torch

from birdcnn.heap import _glibc, reuse_freed_memory

pytestmark = pytest.mark.skipif(sys.platform != "linux" or _glibc() is None, reason="glibc's malloc only")


def faults_of_a_fresh_100mb_tensor() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(25_000_000)  # 100 MB, written once, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_inside_and_given_back_outside():
    faults_of_a_fresh_100mb_tensor()
    assert faults_of_a_fresh_100mb_tensor() > 10_000, "glibc maps and zeroes the 25,000 pages each time"
    with reuse_freed_memory() as applied:
        assert applied
        faults_of_a_fresh_100mb_tensor()  # the first time the heap grows
        assert faults_of_a_fresh_100mb_tensor() < 1_000
    assert faults_of_a_fresh_100mb_tensor() > 10_000, "the defaults are back after it"
