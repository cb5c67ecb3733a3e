"""Differential tests on random programs (tests/fuzz_programs.py): each program runs on
the "cpu" backend and on the reference interpreter, and must agree on the value (1e-12
relative) and the gradient with respect to every parameter; the JVP must agree with the
gradient (dot-product test) and the gradient with central differences.  Some programs
also check Hessian-vector products (cpu against the interpreter and against differences
of the gradient).

The seeds are not hand-picked: for each feature below the test takes the first seed
whose program has it (small sizes first, so that the suite stays fast), which keeps the
coverage when the generator changes.  Longer campaigns:
``python tests/fuzz_programs.py --seeds 0 500 [--hvp]``."""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fuzz_programs as F  # noqa: E402

FEATURES = {
    "smoothed DP (entropy)": lambda p: "@smooth(entropy" in p.source and "def dp" in p.source,
    "smoothed DP (l2)": lambda p: "@smooth(l2" in p.source and "def dp" in p.source,
    "hard DP inline": lambda p: "    T" in p.source and "def dp" not in p.source
    and "min(T" in p.source,
    "descending nest": lambda p: "range(m - 1, -1, -1)" in p.source
    and "range(n - 1, -1, -1)" in p.source,
    "column order": lambda p: "for j in range(1, m + 1):\n        for i" in p.source
    or "    for j in range(1, m + 1):\n        for i" in p.source,
    "band": lambda p: "abs(i - j) <=" in p.source,
    "loops from 0": lambda p: "[i + 1, j + 1] = " in p.source and "@smooth(entropy" in p.source,
    "alignment (backtracking)": lambda p: "def align" in p.source,
    "smoothed alignment": lambda p: "def align" in p.source and "@smooth" in p.source
    .split("def align")[0].splitlines()[-1],
    "affine gaps (three tables)": lambda p: "def gotoh" in p.source,
    "knapsack (row-dependent offsets)": lambda p: "def knap" in p.source,
    "two rows up": lambda p: "def knight" in p.source,
    "chain (Viterbi-like)": lambda p: "outer(y, y)" in p.source,
    "while loop": lambda p: "while " in p.source,
    "small-array recurrence": lambda p: "cells" in p.source,
    "matrix products": lambda p: "@ " in p.source,
    "inf costs": lambda p: p.inf_costs,
    "break and continue": lambda p: "break" in p.source,
    "return from a loop": lambda p: "def first" in p.source,
    "table rows (V[t, :] = ...)": lambda p: "[t, :] = D[t, :]" in p.source,
    "soft operators on arrays": lambda p: "smax(D" in p.source or "smin(D" in p.source,
    "in-place updates": lambda p: "*= tanh" in p.source,
    "irregular nests": lambda p: "def irr" in p.source,
    "grad inside the program": lambda p: "= grad(hq" in p.source,
    "indices that wrap around": lambda p: re.search(
        r"for [ij] in range\([nm]\):\n\s+for [ij] in range\([nm]\):\n[^\n]*\[i - 1", p.source),
    "table stored transposed": lambda p: re.search(r"T\d* = (full|zeros)\(\(m \+ 1, n \+ 1\)",
                                                   p.source),
    "a row's value hoisted": lambda p: re.search(r"\n\s+xT\d* = x\[i - 1\]\n", p.source),
    "step patterns (two back)": lambda p: "def steps" in p.source and "@smooth(entropy"
    in p.source.split("def steps")[0].splitlines()[-1],
}


def _pick():
    chosen: dict = {}
    small = [F.make(s) for s in range(400)]
    for label, has in FEATURES.items():
        for p in small:
            if max(p.n, p.m) <= 12 and has(p):
                chosen.setdefault(p.seed, []).append(label)
                break
        else:
            raise AssertionError(f"no seed below 400 has feature {label!r}")
    # one program past the 64-row strips of the wavefront schedule
    for p in small:
        if p.n >= 65 and ("def dp" in p.source or "    T" in p.source):
            chosen.setdefault(p.seed, []).append("more than 64 rows")
            break
    # one with rows near a multiple of 4 KB apart (strip buffers), the smallest such
    wide = [p for p in small if p.m in F.WIDE and ("def dp" in p.source or "    T" in p.source)]
    if wide:
        p = min(wide, key=lambda p: (p.n * p.m, p.seed))
        chosen.setdefault(p.seed, []).append("rows 4 KB apart")
    return sorted(chosen.items())


CASES = _pick()


@pytest.mark.parametrize("seed,features", CASES, ids=[f"{s}:{'+'.join(f)}" for s, f in CASES])
def test_random_program(seed, features):
    prog = F.make(seed)
    second = "smoothed DP (entropy)" in features or "smoothed alignment" in features
    problems = F.check(prog, second_order=second)
    assert not problems, "\n".join([prog.source] + problems)
