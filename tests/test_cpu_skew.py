"""Skewed row blocks (backends/cpu/skew.py): reverse sweeps that read wavefront-order
tapes run skew.ROWS rows at once, each a column behind the row below.  Which nests get the
schedule, and that values, gradients and Hessian-vector products are the same bits as
the row order's (``skew.ROWS = 0``) and the interpreter's to 1e-12."""
import os
import sys

import numpy as np
import pytest

import dplang as dp
from dplang.backends.cpu import skew

sys.path.insert(0, os.path.dirname(__file__))
from test_cpu_ranges import GAPS  # noqa: E402  (the affine-gap recursion's body)
from test_cpu_window import FILL  # noqa: E402  (soft-DTW's table fill)

rng = np.random.default_rng(11)

SRC = '''
from std.align import soft_dtw, soft_dtw_divergence

# seeds in the sweep's first row and the row above it (both in the ring)
@smooth(entropy, gamma=gamma)
def two_seeds(D: f64[n, m], gamma: f64) -> f64:''' + FILL + '''    return R[n, m] + 0.5 * R[n - 1, m]

# a seed two rows above the first: no window, the sweep works on the whole table
@smooth(entropy, gamma=gamma)
def far_seed(D: f64[n, m], gamma: f64) -> f64:''' + FILL + '''    return R[n, m] + 0.5 * R[n - 2, m]

# three coupled tables (affine gaps, Gotoh), made alike: the forward sweep gets a
# wavefront kernel and the reverse sweep skewed blocks only since session 15 (CSE merged
# the three `full` tables into one value before, and each was copied before its loop);
# one carry (d_Y's: d_M gets its add before its read, so it stays in memory)
@smooth(entropy, gamma=gamma)
def gaps(D: f64[n, m], gamma: f64) -> f64:''' + GAPS + '''
# soft-DTW with loops from 0: the reverse loops end at -1, so the sweep's first column
# is the expression (-1) + 1; the strip height of 1023 and 1024 columns was computed
# for m + 2 columns (an unparenthesised subtraction) and the tapes read at the wrong
# slots, before session 15
@smooth(entropy, gamma=gamma)
def zero_based(D: f64[n, m], gamma: f64) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(n):
        for j in range(m):
            R[i + 1, j + 1] = D[i, j] + min(R[i, j], R[i, j + 1], R[i + 1, j])
    return R[n, m]

'''

NAMES = ("soft_dtw", "two_seeds", "far_seed", "gaps")

# fewer rows than a block (4 rows), rows not a multiple of 4 or 8, fewer columns than
# a block (no steady steps), strips of 64 rows with a short last one, 4 KB row pitches
SHAPES = [(1, 1), (1, 9), (9, 1), (3, 5), (3, 2), (4, 4), (5, 3), (8, 8), (9, 7), (8, 20),
          (17, 8), (23, 41), (66, 5),
          (64, 64), (65, 9), (130, 70), (70, 512)]


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="skew.dp", backend="cpu"),
            dp.compile(SRC, filename="skew.dp", backend="interp"))


@pytest.fixture(scope="module")
def rows():
    """The same program, for the row-order sweeps: use it through ``_row_order`` only
    (code is generated at a function's first call, with the ROWS of that moment)."""
    return dp.compile(SRC + "\n# row order\n", filename="skew_rows.dp", backend="cpu")


def _row_order(monkeypatch, fn):
    with monkeypatch.context() as mp:
        mp.setattr(skew, "ROWS", 0)
        return fn()


def _costs(shape, infs: bool):
    D = rng.random(shape) * 2.0 + 0.1
    if infs and min(shape) > 2:        # forbidden cells off the diagonal band
        i, j = np.indices(shape)
        D[(rng.random(shape) < 0.2) & (abs(i * shape[1] - j * shape[0]) > max(shape))] = np.inf
    return D


def test_the_reverse_sweeps_that_read_wavefront_tapes_run_skewed(mods, rows, monkeypatch):
    cpu, _ = mods
    src = dp.value_and_grad(cpu.soft_dtw).source()
    assert "skewed rows (backends/cpu/skew.py)" in src
    # ROWS copies of the cell with their own carries, the tapes read at consecutive
    # slots of one diagonal and prefetched AHEAD steps on, the adjoint table a ring
    K = skew.ROWS
    assert K >= 2
    assert " = ".join(f"carry_{k}" for k in range(K)) + " = -0.0" in src
    for t in ("tape", "tape_1", "tape_2"):
        assert f"rt_at1({t}, {t}_n + base - {K - 1})" in src
        assert f"rt_prefetch({t}, {t}_n + base - {skew.AHEAD} * strip_h" in src
    assert f"_ring = np.zeros(({K + 1}, rt_pitch(" in src
    assert "slot = rt_wave_rank(i_1, j_1, " not in src
    # the row order when turned off
    off = _row_order(monkeypatch, lambda: dp.value_and_grad(rows.soft_dtw).source())
    assert "skewed rows" not in off and "slot = rt_wave_rank(i_1, j_1, " in off
    # nests without wavefront tapes keep the row order (hard DTW's reverse sweep)
    hard = dp.compile("from std.align import dtw\n", filename="skew_hard.dp", backend="cpu")
    assert "skewed rows" not in dp.grad(hard.dtw).source()


def test_every_program_here_gets_the_schedule(mods):
    cpu, _ = mods
    D = rng.random((5, 6))
    for name in NAMES:
        g = dp.grad(getattr(cpu, name))
        g(D, 0.5)
        assert "skewed rows" in g.source(), name


@pytest.mark.parametrize("name", NAMES)
def test_same_bits_as_the_row_order(mods, rows, monkeypatch, name):
    cpu, _ = mods
    cases = [(shape, gamma, _costs(shape, infs)) for shape in SHAPES
             for gamma, infs in ((1.0, False), (0.01, True))]
    f1 = dp.value_and_grad(getattr(cpu, name))
    got = [f1(D, gamma) for _, gamma, D in cases]
    assert "skewed rows" in f1.source()

    def row_order():
        f0 = dp.value_and_grad(getattr(rows, name))
        out = [f0(D, gamma) for _, gamma, D in cases]
        assert "skewed rows" not in f0.source()
        return out
    want = _row_order(monkeypatch, row_order)
    for (shape, gamma, _), (v1, g1), (v0, g0) in zip(cases, got, want):
        assert v1 == v0 and np.array_equal(g1, g0), (shape, gamma)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_the_interpreter(mods, name):
    cpu, interp = mods
    for shape in [(1, 1), (9, 7), (17, 8), (23, 41)]:
        D = _costs(shape, False)
        gc = dp.grad(getattr(cpu, name))(D, 0.7)
        gi = dp.grad(getattr(interp, name))(D, 0.7)
        np.testing.assert_allclose(gc, gi, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["soft_dtw", "gaps"])
def test_hessian_vector_products_are_the_same_bits(mods, rows, monkeypatch, name):
    """The HVP (forward over reverse) runs the reverse sweep's tangent through the same
    skewed blocks."""
    cpu, interp = mods
    cases = [(_costs(shape, False), rng.standard_normal(shape))
             for shape in [(9, 7), (17, 8), (70, 33)]]
    h1 = dp.hvp(getattr(cpu, name))
    got = [h1(D, 0.5, V) for D, V in cases]
    assert "skewed rows" in h1.source()

    def row_order():
        h0 = dp.hvp(getattr(rows, name))
        out = [h0(D, 0.5, V) for D, V in cases]
        assert "skewed rows" not in h0.source()
        return out
    for a, b in zip(got, _row_order(monkeypatch, row_order)):
        assert np.array_equal(a, b)
    D, V = cases[0]
    np.testing.assert_allclose(got[0], dp.hvp(getattr(interp, name))(D, 0.5, V),
                               rtol=1e-11, atol=1e-14)


def test_divergence_gradient_with_two_skewed_sweeps(mods, rows, monkeypatch):
    cpu, _ = mods
    x, y = rng.standard_normal((40, 3)), rng.standard_normal((33, 3))
    g = dp.grad(cpu.soft_dtw_divergence, wrt=0)
    a = g(x, y, 0.3)
    assert g.source().count("skewed rows") >= 2
    b = _row_order(monkeypatch, lambda: dp.grad(rows.soft_dtw_divergence, wrt=0)(x, y, 0.3))
    assert np.array_equal(a, b)


def test_loops_from_zero_at_the_strip_height_thresholds(mods, rows, monkeypatch):
    """zero_based is soft_dtw with shifted indices: the same arithmetic, so the same bits,
    skewed or in row order; at 1023 and 1024 columns the forward strips are 64 rows and
    the reverse sweep must read the tapes with the same height (both sweeps)."""
    cpu, _ = mods
    cases = [rng.random((70, m)) * 2.0 for m in (1023, 1024)]
    want = [dp.value_and_grad(cpu.soft_dtw)(D, 0.5) for D in cases]
    got = [dp.value_and_grad(cpu.zero_based)(D, 0.5) for D in cases]
    got0 = _row_order(monkeypatch, lambda: [dp.value_and_grad(rows.zero_based)(D, 0.5)
                                            for D in cases])
    for (v, g), (v1, g1), (v0, g0) in zip(want, got, got0):
        assert v1 == v and np.array_equal(g1, g)
        assert v0 == v and np.array_equal(g0, g)


def test_tables_made_alike_stay_apart(mods):
    """CSE does not merge constructors of fresh arrays (passes/simplify.py, FRESH): the
    three tables of gaps are three `full` ops, and no table is copied before its nest."""
    cpu, _ = mods
    assert cpu.gaps.ir("optimized").count(" = full(") == 3
    src = dp.value_and_grad(cpu.gaps).source()
    assert "wavefront (backends/cpu/wavefront.py)" in src and ".copy()" not in src
