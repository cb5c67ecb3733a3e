"""Two-row adjoint tables (backends/cpu/window.py): which reverse sweeps get them, and
that the gradients are the same bits as with the whole table and agree with the
interpreter."""
import numpy as np
import pytest

import dplang as dp
from dplang.backends.cpu import skew, window

rng = np.random.default_rng(7)

FILL = '''
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
'''

SRC = '''
from std.align import soft_dtw

# seeds in the sweep's first row and the row above it
@smooth(entropy, gamma=gamma)
def two_seeds(D: f64[n, m], gamma: f64) -> f64:''' + FILL + '''    return R[n, m] + 0.5 * R[n - 1, m]

# a seed two rows above the first: outside the window, the whole table is kept
@smooth(entropy, gamma=gamma)
def far_seed(D: f64[n, m], gamma: f64) -> f64:''' + FILL + '''    return R[n, m] + 0.5 * R[n - 2, m]

# hard DTW: a reverse sweep that pops no tape (it compares the table's entries again)
def hard_dtw(D: f64[n, m], gamma: f64) -> f64:''' + FILL + '''    return gamma * R[n, m]

# the table's adjoint is the gradient: used after the sweep, the whole table is kept
# (smoothed, so that its reverse sweep pops the soft-max weights and gets a hoisted test)
@smooth(entropy, gamma=gamma)
def relax(R0: f64[n, m], gamma: f64) -> f64:
    R = R0 * 1.0
    for i in range(1, n):
        for j in range(1, m):
            R[i, j] = R[i, j] + 0.5 * max(R[i - 1, j], R[i, j - 1])
    return R[n - 1, m - 1]
'''


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="window.dp", backend="cpu"),
            dp.compile(SRC, filename="window.dp", backend="interp"))


def _grad(mod, name, *args):
    return dp.value_and_grad(getattr(mod, name))(*args)


@pytest.mark.parametrize("name, windowed", [("soft_dtw", "ring"), ("two_seeds", "ring"),
                                            ("hard_dtw", True), ("far_seed", False),
                                            ("relax", False)])
def test_which_sweeps_keep_two_rows_and_their_gradients(mods, name, windowed):
    """(A sweep run in skewed blocks of rows, backends/cpu/skew.py, keeps a ring of
    skew.ROWS + 1 rows instead of two: "ring".)"""
    cpu, interp = mods
    D = rng.random((37, 29)) * 3.0
    args = (D, 0.7)
    src = dp.value_and_grad(getattr(cpu, name)).source()
    # every one is a reverse sweep (descending loops) with a hoisted test (a
    # candidate), with or without a tape: only the conditions of window.plan decide
    assert "index checks hoisted out of the nest" in src
    assert ("keeps two rows (backends/cpu/window.py)" in src) == (windowed is True)
    ring = f"keeps {skew.ROWS + 1} rows (backends/cpu/window.py, skew.py)"
    assert (ring in src) == (windowed == "ring")
    if windowed:                    # no whole table
        assert "np.full_like(R" not in src
    if windowed is True:            # two rows of the width of the table, turned per row
        assert "_up = np.zeros(" in src and "_up[:] = 0.0" in src
    v, g = _grad(cpu, name, *args)
    vi, gi = _grad(interp, name, *args)
    assert abs(v - vi) <= 1e-12 * abs(vi)
    np.testing.assert_allclose(g, gi, rtol=1e-12, atol=1e-14)


def test_two_rows_give_the_same_bits_as_the_whole_table(monkeypatch):
    """The same program compiled with windows switched off (a new module: the source
    differs, so nothing comes from the cache) gives identical gradients."""
    shapes = [(1, 1), (1, 6), (6, 1), (2, 2), (64, 64), (65, 70), (130, 40)]
    on = dp.compile(SRC, filename="window_on.dp", backend="cpu")
    results = {}
    for D in (rng.random(s) for s in shapes):
        results[D.shape] = (D, *(_grad(on, f, D, 0.3) for f in ("soft_dtw", "two_seeds",
                                                                 "hard_dtw")))
    monkeypatch.setattr(window, "plan", lambda gen: {})
    off = dp.compile(SRC + "\n# windows off\n", filename="window_off.dp", backend="cpu")
    assert "keeps two rows" not in dp.value_and_grad(off.soft_dtw).source()
    for D, sd, ts, hd in results.values():
        for got, want in ((sd, _grad(off, "soft_dtw", D, 0.3)),
                          (ts, _grad(off, "two_seeds", D, 0.3)),
                          (hd, _grad(off, "hard_dtw", D, 0.3))):
            assert got[0] == want[0]
            np.testing.assert_array_equal(got[1], want[1])


def test_window_rows_are_proved_by_the_dimension_rule():
    """The reverse loop starts at max(n + 1, 1) - 1, which is n for a dimension n; not
    for an arbitrary integer (it could be negative)."""
    from dplang.ir.core import Op, Value
    from dplang.ir import types as T

    def val(name, *operands, **attrs):
        op = Op(name, list(operands), [Value(T.Scalar("i64"))], attrs)
        op.results[0].owner = op
        return op.results[0]
    D = Value(T.Scalar("f64"))
    n = val("dim", D, axis=0)
    k = Value(T.Scalar("i64"))
    one = val("const", value=1)
    for leaf, proved in ((n, True), (k, False)):
        start = val("sub", val("maximum", val("add", leaf, one), one), one)
        got = window._affine(start)
        assert (got == (leaf, 0)) == proved
