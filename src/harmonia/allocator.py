"""Keep freed CPU memory in the process for the next step instead of handing it to the kernel.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc gives the top of its heap back
to the kernel once more than 64 MiB of it is free, and maps every block above 32 MiB afresh, so
a training step whose temporaries outgrow what the previous step left in the heap pays a page
fault for every 4 KiB page it touches, every step. An exact ``parameters``-space step holds the
per-loss gradients at the encoder's layer outputs until the Gram rules use them: on the tiny
VATT at B = 128 its heap grows by about 220 MiB and shrinks again each step, about 90k page
faults. Raising both thresholds keeps that memory for the next step, as PyTorch's caching
allocator does on CUDA: the same step then takes no page faults and about 17% less CPU time
(`benchmarks/bench_allocator.py`; docs/harmonizer.md, *Speed*).

The cost is memory: the process keeps its high-water mark between steps instead of returning
it, and the peak itself can grow, because a freed block is not always reused exactly (PyTorch
asks for 64-byte aligned blocks, which do not fit the hole a block of the same size left, until
neighbouring holes merge). On that VATT step the peak resident set grew by about 4%.
`harmonia train` applies this on CPU (``train.keep_freed_memory``); in your own loop call
`keep_freed_memory` once before training.
"""

from __future__ import annotations

import ctypes
import os
import sys

DEFAULT_LIMIT = 1 << 30
"""Bytes: blocks up to this size come from the heap, and this much free heap is kept."""
_INT_MAX = 2**31 - 1
"""``mallopt`` takes a C int."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
_USER_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold")


def keep_freed_memory(limit: int = DEFAULT_LIMIT) -> bool:
    """Set glibc's trim and mmap thresholds to ``limit`` bytes for this process.

    True where they were set. False, changing nothing, where the C library is not glibc (macOS,
    Windows, musl) or the environment already sets either threshold (``MALLOC_*_THRESHOLD_``,
    ``GLIBC_TUNABLES``): a choice made there wins.
    """
    if not 0 < limit <= _INT_MAX:
        raise ValueError(f"limit must be between 1 and {_INT_MAX} bytes, got {limit}")
    if user_has_chosen():
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mmap first: a kept heap with large blocks still mapped afresh faults more than the default
    if not libc.mallopt(_M_MMAP_THRESHOLD, limit):
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))


def user_has_chosen() -> bool:
    """Whether the environment sets glibc's trim or mmap threshold itself."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in _USER_SETTINGS) or any(
        name in tunables for name in _USER_TUNABLES
    )


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
