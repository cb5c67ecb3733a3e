"""Allocator settings for compiled code (glibc only).

Compiled DP code allocates its tables, adjoint tables and tapes on every call: a few
megabytes for a 512 x 512 DTW.  By default glibc serves blocks above a (dynamic) size
threshold with a fresh ``mmap`` and gives freed space at the top of the heap back to the
system, so every call of a compiled function page-faults its tables in again and zeroes
them: for a 512 x 512 hard-DTW gradient that was more than half of the time (3.7 ms
against 2.1 ms with the settings below).  XLA and PyTorch avoid the same cost with
caching allocators.

``tune()`` (called once, when the first compiled function is loaded) raises the mmap
threshold to glibc's maximum (32 MiB) and the trim threshold to 1/16 of the machine's
memory (256 MiB to 1 GiB: ``trim_threshold``), so freed blocks are reused by the next
call, and (since session 14) turns ``mmap`` off for the main
heap's large blocks (``M_MMAP_MAX = 0``): blocks of 32 MiB and more, a 2048 x 2048
table, came from a fresh ``mmap`` on every call whatever the threshold, and their page
faults (about 2.5 us each on the development VM, 49,000 a call) made a 2048 x 2048
soft-DTW gradient 260 ms instead of 135.  glibc still maps memory where the heap cannot
grow (threads' arenas, a failed ``brk``).  The cost: the process keeps up to that much
freed memory at the top of its heap instead of returning it, and freed blocks below
live ones until they are reused, as caching allocators (XLA's, PyTorch's) do.
``DPLANG_MALLOPT=0`` leaves the allocator alone.  On other C libraries (no ``mallopt``)
nothing changes.  Decision recorded in docs/backend_cpu.md.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20       # at least, and up to 1 GiB on machines with 16 GiB or more


def trim_threshold() -> int:
    """Freed memory the heap keeps at its top: 1/16 of the machine's memory, between
    256 MiB and 1 GiB (a 4096 x 4096 soft-DTW gradient frees about 700 MB a call)."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return TRIM_THRESHOLD
    return int(min(max(ram // 16, TRIM_THRESHOLD), 1 << 30))

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
        bool(mallopt(M_TRIM_THRESHOLD, trim_threshold())) and bool(mallopt(M_MMAP_MAX, 0))
    return applied
