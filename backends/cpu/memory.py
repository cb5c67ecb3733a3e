"""Allocator settings for compiled code (glibc only).

Compiled DP code allocates its tables, adjoint tables and tapes on every call: a few
megabytes for a 512 x 512 DTW.  By default glibc serves blocks above a (dynamic) size
threshold with a fresh ``mmap`` and gives freed space at the top of the heap back to the
system, so every call of a compiled function page-faults its tables in again and zeroes
them: for a 512 x 512 hard-DTW gradient that was more than half of the time (3.7 ms
against 2.1 ms with the settings below).  XLA and PyTorch avoid the same cost with
caching allocators.

``tune()`` (called once, when the first compiled function is loaded) raises the mmap
threshold to glibc's maximum (32 MiB: larger blocks keep coming from ``mmap``) and the
trim threshold to 256 MiB, so freed blocks are reused by the next call.  The cost: the
process keeps up to 256 MiB of freed heap memory instead of returning it.
``DPLANG_MALLOPT=0`` leaves the allocator alone.  On other C libraries (no ``mallopt``)
nothing changes.  Decision recorded in docs/backend_cpu.md.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20

_done = False
applied = False


def tune() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    global _done, applied
    if _done:
        return applied
    _done = True
    if os.environ.get("DPLANG_MALLOPT", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return applied
