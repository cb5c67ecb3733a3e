"""Loop interchange (passes/interchange.py): tables filled column by column are filled
row by row when no result can change, and only then.  The reference for "no result can
change" is the same program with the pass turned off (DPLANG_INTERCHANGE=0), run by the
interpreter: the same values to the bit there (gradients to rounding: reverse mode adds
the terms of an entry in the other order), 1e-12 on the CPU backend."""
import numpy as np
import pytest

import dplang as dp

rng = np.random.default_rng(11)

SRC = '''
# soft-DTW written column by column
@smooth(entropy, gamma=gamma)
def by_columns(D: f64[n, m], gamma: f64) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

# the same backwards, with two tables
def backwards(D: f64[n, m], a: f64) -> f64:
    R = zeros((n + 1, m + 1))
    S = zeros((n + 1, m + 1))
    for j in range(m - 1, -1, -1):
        for i in range(n - 1, -1, -1):
            S[i, j] = tanh(a * D[i, j]) + 0.5 * S[i, j + 1]
            R[i, j] = S[i, j] + 0.5 * R[i + 1, j] + 0.25 * R[i + 1, j + 1] * a
    return R[0, 0] + 0.1 * sum(S)

# a row's value hoisted by the program: moved into the inner loop, the nest is perfect
@smooth(entropy, gamma=gamma)
def hoisted_row(x: f64[n], y: f64[m], gamma: f64) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        xi = x[i - 1] * 2.0
        for j in range(1, m + 1):
            R[i, j] = (xi - y[j - 1]) ** 2 + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

# by columns with a column's value hoisted: moved in, then interchanged
@smooth(entropy, gamma=gamma)
def hoisted_col(x: f64[n], y: f64[m], gamma: f64) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for j in range(1, m + 1):
        yj = y[j - 1]
        for i in range(1, n + 1):
            R[i, j] = (2.0 * x[i - 1] - yj) ** 2 + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

# hard DTW with the row's value hoisted: moved in, and computed once a row again by the
# row-order code (no kernel for min and a square)
def hoisted_hard(x: f64[n], y: f64[m]) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        xi = x[i - 1]
        for j in range(1, m + 1):
            R[i, j] = (xi - y[j - 1]) ** 2 + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

# a read of the table before the row (the version the loops carry): stays where it is
def row_start(D: f64[n, m]) -> f64:
    R = ones((n + 1, m + 1))
    for i in range(1, n + 1):
        first = R[i - 1, m] * 0.5
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] * first + R[i, j - 1] * 0.25
    return sum(R)

# cell (i, j) reads (i + 1, j - 1), which rows would compute after it: kept
def reads_below_left(D: f64[n, m]) -> f64:
    R = ones((n + 2, m + 1))
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            R[i, j] = exp(-D[i - 1, j - 1]) + 0.5 * R[i + 1, j - 1] + 0.25 * R[i - 1, j]
    return sum(R)

# a running sum carried through the nest: another order, other bits: kept
def running(D: f64[n, m]) -> f64:
    s = 0.0
    for j in range(m):
        for i in range(n):
            s = s * 0.5 + D[i, j]
    return s

# entry (p, q) is added to by cells (p, q) and (p + 1, q - 1), which columns and rows
# visit in opposite orders (the same sum, other bits): kept.  (`+=` into the cell's own
# entry alone is a read and a write of that cell: `own_entry` is interchanged.)
def accumulates(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 2))
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            R[i, j] += exp(D[i - 1, j - 1])
            R[i - 1, j + 1] += 0.5 * D[i - 1, j - 1]
    return sum(R * R)

def own_entry(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 1))
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            R[i, j] += D[i - 1, j - 1] * R[i - 1, j - 1] + 0.1
    return sum(R)

# from 0: R[i - 1, j] at i = 0 is the last row (a negative index): kept
def wraps(D: f64[n, m]) -> f64:
    R = ones((n, m))
    for j in range(m):
        for i in range(n):
            R[i, j] = D[i, j] + 0.5 * R[i - 1, j]
    return sum(R)

# an assert on the cell: the first cell to fail must stay the first: kept
def checks(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 1))
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            assert D[i - 1, j - 1] >= 0.0, "negative cost"
            R[i, j] = D[i - 1, j - 1] + R[i - 1, j - 1]
    return R[n, m]
'''

ARGS = {"by_columns": (0.7,), "backwards": (0.8,)}
SWAPPED = {"by_columns": True, "backwards": True, "own_entry": True,
           "reads_below_left": False, "running": False, "accumulates": False, "wraps": False,
           "checks": False}


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="interchange.dp", backend="cpu"),
            dp.compile(SRC, filename="interchange.dp", backend="interp"))


def _written_order(monkeypatch, backend, name, call):
    """``call(f)`` for function ``name`` compiled with the pass off (the environment
    variable is set only while the reference is staged and run)."""
    with monkeypatch.context() as m:
        m.setenv("DPLANG_INTERCHANGE", "0")
        ref = dp.compile(SRC, filename="interchange_off.dp", backend=backend)
        return call(getattr(ref, name))


def _outer_loop_var(f) -> str:
    text = f.ir("ad")
    first = next(ln for ln in text.splitlines() if " for " in ln)
    return first.split(" for ")[1].split()[0]


@pytest.mark.parametrize("name", sorted(SWAPPED))
def test_which_nests_are_interchanged(mods, name):
    cpu, _ = mods
    f = getattr(cpu, name)
    assert (_outer_loop_var(f) == "i") == SWAPPED[name]


@pytest.mark.parametrize("name", sorted(SWAPPED))
@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (5, 7), (70, 9), (9, 70)])
def test_results_are_those_of_the_written_order(mods, monkeypatch, name, shape):
    cpu, interp = mods
    D = rng.random(shape) + 0.1
    args = (D,) + ARGS.get(name, ())
    grads = name != "checks"
    want, g_want = _written_order(monkeypatch, "interp", name, lambda f: (
        f(*args), dp.grad(f)(*args) if grads else None))
    # the interpreter runs the same cells in the other order: the same bits
    assert getattr(interp, name)(*args) == want
    got = getattr(cpu, name)(*args)
    assert abs(got - want) <= 1e-12 * max(1.0, abs(want))
    if grads:
        # (reverse mode adds each entry's terms in the other order: equal to rounding)
        np.testing.assert_allclose(dp.grad(getattr(interp, name))(*args), g_want,
                                   rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(dp.grad(getattr(cpu, name))(*args), g_want, rtol=1e-11,
                                   atol=1e-14)


def test_interchanged_nests_get_the_row_schedules(mods, monkeypatch):
    """by_columns runs as fast as soft-DTW written row by row: its forward nest gets the
    wavefront kernel and its reverse sweep the skewed row blocks."""
    cpu, _ = mods
    assert "# wavefront" in cpu.by_columns.source()
    vg = dp.value_and_grad(cpu.by_columns)
    assert "skewed rows" in vg.source()
    D = rng.random((80, 60))
    V = rng.standard_normal(D.shape)
    src0, v0, g0, h0 = _written_order(monkeypatch, "cpu", "by_columns", lambda f: (
        f.source(), *dp.value_and_grad(f)(D, 0.5), dp.hvp(f)(D, 0.5, V)))
    assert "# wavefront" not in src0
    v1, g1 = vg(D, 0.5)
    assert abs(v1 - v0) <= 1e-12 * abs(v0)
    np.testing.assert_allclose(g1, g0, rtol=1e-11, atol=1e-15)
    # and Hessian-vector products
    h1 = dp.hvp(cpu.by_columns)(D, 0.5, V)
    np.testing.assert_allclose(h1, h0, rtol=1e-10, atol=1e-12)


def test_hoisted_row_values_move_into_the_inner_loop(mods, monkeypatch):
    """A value of the row (or column) computed before the inner loop, as programs hoist
    it, made the nest imperfect: no schedule (10.8 against 2.8 ms at 512 x 512).  It is
    now computed in the inner loop; a read of a table the loops carry is not moved."""
    cpu, interp = mods
    for name in ("hoisted_row", "hoisted_col"):
        f = getattr(cpu, name)
        assert "# wavefront" in f.source()
        assert _outer_loop_var(f) == "i"
    src = cpu.hoisted_hard.source()
    assert "# wavefront" not in src
    assert src.index("xi = ") < src.index("for j in range(")   # once a row
    ad = cpu.row_start.ir("ad").splitlines()
    read = next(k for k, ln in enumerate(ad) if ", m]" in ln and "= R_" in ln)
    inner = next(k for k, ln in enumerate(ad) if " for j " in ln)
    assert read < inner                             # (the read stays before the row)
    for shape in [(1, 1), (5, 7), (70, 40)]:
        x, y = rng.standard_normal(shape[0]), rng.standard_normal(shape[1])
        D = rng.random(shape)
        for name, args in (("hoisted_row", (x, y, 0.6)), ("hoisted_col", (x, y, 0.6)),
                           ("hoisted_hard", (x, y)), ("row_start", (D,))):
            wrt = (0, 1) if len(args) >= 2 else 0
            want, g_want = _written_order(monkeypatch, "interp", name, lambda f: (
                f(*args), dp.grad(f, wrt=wrt)(*args)))
            assert getattr(interp, name)(*args) == want
            got = getattr(cpu, name)(*args)
            assert abs(got - want) <= 1e-12 * max(1.0, abs(want))
            g = dp.grad(getattr(cpu, name), wrt=wrt)(*args)
            for a, b in zip(g if wrt != 0 else (g,), g_want if wrt != 0 else (g_want,)):
                np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_a_failing_assert_is_still_the_located_error(mods):
    cpu, _ = mods
    D = rng.random((4, 5))
    D[2, 1] = -1.0
    with pytest.raises(dp.DPError) as e:
        cpu.checks(D)
    assert "interchange.dp:" in str(e.value) and "negative cost" in str(e.value)
