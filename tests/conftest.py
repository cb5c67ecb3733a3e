"""The suite checks semantics on the reference interpreter (no Numba compilation per
small program); tests/test_cpu_*.py run the same programs on the "cpu" backend and
compare.  Set DPLANG_BACKEND=cpu to run everything on the CPU backend instead."""
import os

os.environ.setdefault("DPLANG_BACKEND", "interp")
