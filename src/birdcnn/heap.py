"""Reuse freed memory instead of handing it back to the kernel (glibc's malloc, on Linux).

A training step allocates and frees the same large tensors every time (a batch's activations and
their gradients: 10-130 MB each). glibc serves every block above 32 MB (and, by default, every
block above a threshold that starts at 128 KB) with a fresh mmap() and unmaps it on free, so each
step page-faults all of it in again and the kernel zeroes every page: measured on the 2-core EPYC
(benchmarks/heap_reuse.py, batch 1,024 at 40 px), 3.0 million page faults and 7.6 s in the kernel
for four steps, against 2 and none with the settings below: 211 -> 294 images/s (docs/RESULTS.md,
"Memory the kernel keeps zeroing"). PyTorch
keeps no CPU cache of its own, and a replacement allocator (jemalloc, tcmalloc) would have to be
preloaded before Python starts; glibc's own switches, set at run time, do the same for this loop.
"""
from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4                  # mallopt() parameters (malloc.h)
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
    except OSError:  # e.g. Windows
        return None


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """While inside, freed blocks stay in the process's heap for the next allocation (no mmap, no
    trimming); on leaving, glibc's default limits are set again and the heap is trimmed. Yields
    whether it applied (glibc only; elsewhere nothing changes). Setting a limit switches off
    glibc's adaptive mmap threshold for the rest of the process, so afterwards blocks above
    128 KB are mmap()ed as at start-up rather than at a threshold grown from earlier frees: a
    little slower for later large allocations in the same process, never more memory.
    The heap grows for the first few steps before it is reused: torch's 64-byte-aligned blocks ask
    glibc for a little more than a freed block of the same size, so reuse begins once freed
    neighbours have merged (a lone tensor freed and allocated again is never reused)."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    try:
        yield applied
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
