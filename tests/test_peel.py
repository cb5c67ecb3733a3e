"""Index-set splitting (passes/peel.py): loops that test for their first iteration lose
the test, and the first column of a 2-D nest is split off when no dependence changes
order.  The reference is the same program with the pass off (DPLANG_PEEL=0) run by the
interpreter: the same values to the bit there, gradients to rounding (reverse mode adds
the terms of an entry in another order), 1e-12 on the CPU backend.  Also here: the
arrays reverse mode carries but never reads (passes/simplify.py, ``drop_write_only``)
and the gradient of a table updated in an ``if`` outside every loop."""
import numpy as np
import pytest

import dplang as dp

rng = np.random.default_rng(23)

SRC = '''
# soft-DTW written the textbook way: branches on the indices for the borders
@smooth(entropy, gamma=gamma)
def textbook(D: f64[n, m], gamma: f64) -> f64:
    R = zeros((n, m))
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                R[i, j] = D[i, j]
            elif i == 0:
                R[i, j] = D[i, j] + R[i, j - 1]
            elif j == 0:
                R[i, j] = D[i, j] + R[i - 1, j]
            else:
                R[i, j] = D[i, j] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n - 1, m - 1]

# the same tests spelled otherwise: i > 0, j >= 1, 0 == i, not, or, a short-circuit and
@smooth(entropy, gamma=gamma)
def spelled(D: f64[n, m], gamma: f64) -> f64:
    R = zeros((n, m))
    for i in range(n):
        for j in range(m):
            best = inf
            if i > 0:
                best = min(best, R[i - 1, j])
            if j >= 1:
                best = min(best, R[i, j - 1])
            if not (0 == i or j == 0):
                best = min(best, R[i - 1, j - 1])
            if i == 0 and D[i, j] > -1.0 and j == 0:
                best = 0.0
            R[i, j] = D[i, j] + best
    return R[n - 1, m - 1]

# descending loops that test for the last cell, which they visit first (n - 1 is
# computed again in the test)
def from_the_end(D: f64[n, m], a: f64) -> f64:
    A = zeros((n + 1, m + 1))
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if i == n - 1 and j == m - 1:
                A[i, j] = D[i, j]
            else:
                A[i, j] = tanh(a * D[i, j]) + 0.3 * A[i + 1, j] + 0.2 * A[i, j + 1] \\
                    + 0.1 * A[i + 1, j + 1]
    return sum(A)

# the first column reads the row above one column to the right, which the rest of the
# nest writes: splitting the column off would read it before it is written
@smooth(entropy, gamma=gamma)
def reads_right(D: f64[n, m], gamma: f64) -> f64:
    R = zeros((n, m))
    for i in range(n):
        for j in range(m):
            if j == 0:
                if i == 0:
                    R[i, j] = D[i, j]
                else:
                    R[i, j] = D[i, j] + 0.5 * R[i - 1, j + 1]
            else:
                R[i, j] = D[i, j] + min(R[i, j - 1], R[i, j - 1] + D[i, j - 1])
    return R[n - 1, m - 1]

# a scalar summed over the cells (its order must stay) and a test of another iteration
def running(D: f64[n, m]) -> f64:
    R = zeros((n, m))
    s = 0.0
    for i in range(n):
        for j in range(m):
            if j == 0:
                R[i, j] = D[i, j]
            elif i == 2:
                R[i, j] = 2.0 * D[i, j] + R[i, j - 1]
            else:
                R[i, j] = D[i, j] * R[i, j - 1]
            s = s + R[i, j] * D[i, j]
    return s

# the borders filled by loops of their own, then the nest (written so by users)
@smooth(entropy, gamma=gamma)
def border_loops(D: f64[n, m], gamma: f64) -> f64:
    R = zeros((n, m))
    R[0, 0] = D[0, 0]
    for j in range(1, m):
        R[0, j] = R[0, j - 1] + D[0, j]
    for i in range(1, n):
        R[i, 0] = R[i - 1, 0] + D[i, 0]
    for i in range(1, n):
        for j in range(1, m):
            R[i, j] = D[i, j] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n - 1, m - 1]

# between two series, a row's value hoisted before the inner loop as programs do
@smooth(entropy, gamma=gamma)
def series(D: f64[n, m], gamma: f64) -> f64:
    R = zeros((n, m))
    for i in range(n):
        di = D[i, 0] * 0.5
        for j in range(m):
            c = (di - D[0, j]) ** 2
            if i == 0 and j == 0:
                R[i, j] = c
            elif i == 0:
                R[i, j] = c + R[i, j - 1]
            elif j == 0:
                R[i, j] = c + R[i - 1, j]
            else:
                R[i, j] = c + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n - 1, m - 1]

# a table updated in branches outside every loop
def outside_loops(D: f64[n, m]) -> f64:
    R = zeros((n, m))
    if n > 0:
        if m > 0:
            R[0, 0] = D[0, 0]
        for j in range(1, m):
            R[0, j] = D[0, j] * R[0, j - 1] + 1.0
    return sum(R)

@smooth(entropy, gamma=gamma)
def padded(D: f64[n, m], gamma: f64) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]
'''

ARGS = {"textbook": (0.7,), "spelled": (0.4,), "from_the_end": (0.8,), "reads_right": (0.5,),
        "border_loops": (0.6,), "series": (0.3,)}
NAMES = ["textbook", "spelled", "from_the_end", "reads_right", "running", "border_loops",
         "series", "outside_loops"]


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="peel.dp", backend="cpu"),
            dp.compile(SRC, filename="peel.dp", backend="interp"))


def _written(monkeypatch, backend, name, call):
    """``call(f)`` for function ``name`` compiled with the pass off."""
    with monkeypatch.context() as m:
        m.setenv("DPLANG_PEEL", "0")
        ref = dp.compile(SRC, filename="peel_off.dp", backend=backend)
        return call(getattr(ref, name))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (2, 2), (5, 7), (40, 9)])
def test_results_are_those_of_the_written_form(mods, monkeypatch, name, shape):
    if name == "reads_right" and shape[1] < 2:
        shape = (shape[0], 2)            # (it reads column j + 1 at j = 0)
    cpu, interp = mods
    D = rng.random(shape) + 0.1
    args = (D,) + ARGS.get(name, ())
    want, g_want = _written(monkeypatch, "interp", name, lambda f: (
        f(*args), dp.grad(f)(*args)))
    assert getattr(interp, name)(*args) == want          # the same bits
    got = getattr(cpu, name)(*args)
    assert abs(got - want) <= 1e-12 * max(1.0, abs(want))
    np.testing.assert_allclose(dp.grad(getattr(interp, name))(*args), g_want,
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dp.grad(getattr(cpu, name))(*args), g_want, rtol=1e-11,
                               atol=1e-14)


@pytest.mark.parametrize("name", ["textbook", "spelled", "from_the_end", "reads_right",
                                  "running"])
def test_the_tests_are_gone(mods, name):
    """Every test of a first iteration is decided: no branch is left in the loops."""
    cpu, _ = mods
    text = getattr(cpu, name).ir("optimized")
    # (running: i == 2 is no first iteration; spelled: the first cell tests D)
    kept = {"running": 1, "spelled": 1}.get(name, 0)
    assert sum(" if " in ln for ln in text.splitlines()) == kept


def _top_loops(f) -> int:
    return sum(ln.startswith("  ") and not ln.startswith("   ") and " for " in ln
               for ln in f.ir("ad").splitlines())


def test_which_columns_are_split(mods):
    """textbook: the first row, the first column, then the nest from (1, 1); reads_right
    keeps its first column in each row (peeled there, so its nest is not perfect)."""
    cpu, _ = mods
    assert _top_loops(cpu.textbook) == 3
    assert _top_loops(cpu.reads_right) == 2
    assert "# wavefront" not in cpu.reads_right.source()


def test_textbook_dtw_gets_the_schedules_of_the_padded_form(mods, monkeypatch):
    """8.8 / 10.8 ms (value / value + gradient at 512 x 512) before, with a branch per
    cell; now the nest of the padded form: a wavefront kernel, skewed reverse rows, no
    copy of the table; the same values as soft-DTW written with an inf border."""
    cpu, _ = mods
    for name in ("textbook", "spelled", "border_loops", "series"):
        f = getattr(cpu, name)
        assert "# wavefront" in f.source(), name
        vg = dp.value_and_grad(f)
        # (series adds every row's d_D[i, 0] into one entry: its reverse keeps rows)
        assert ("skewed rows" in vg.source()) == (name != "series"), name
        assert ".copy()" not in vg.source(), name
    D = rng.random((60, 45))
    V = rng.standard_normal(D.shape)
    for name in ("textbook", "border_loops"):
        f = getattr(cpu, name)
        want = cpu.padded(D, 0.3)
        assert abs(f(D, 0.3) - want) <= 1e-12 * abs(want)
        np.testing.assert_allclose(dp.grad(f)(D, 0.3), dp.grad(cpu.padded)(D, 0.3),
                                   rtol=1e-11, atol=1e-14)
    # Hessian-vector products against the written form's
    h0 = _written(monkeypatch, "cpu", "textbook", lambda f: dp.hvp(f)(D, 0.3, V))
    np.testing.assert_allclose(dp.hvp(cpu.textbook)(D, 0.3, V), h0, rtol=1e-10, atol=1e-12)


def test_gradient_through_branches_outside_loops(mods):
    """A table updated in an ``if`` outside every loop, then by a loop in that branch:
    reverse mode failed with an internal KeyError.  Finite differences."""
    cpu, interp = mods
    D = rng.random((3, 5)) + 0.2
    for mod in (cpu, interp):
        g = dp.grad(mod.outside_loops)(D)
        fd = np.zeros_like(D)
        for k in np.ndindex(*D.shape):
            e = np.zeros_like(D)
            e[k] = 1e-6
            fd[k] = (mod.outside_loops(D + e) - mod.outside_loops(D - e)) / 2e-6
        np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-8)


def test_arrays_only_written_are_dropped():
    """An array that is updated but never read goes, with its writes (value
    semantics: nothing can observe it); one that is read stays.  A loop whose results
    nobody uses goes too, and one that passes a value through unchanged returns it."""
    m = dp.compile('''
def f(x: f64[n]) -> f64:
    A = zeros(n)
    B = zeros(n)
    s = 0.0
    for i in range(n):
        A[i] = x[i] * 2.0
        B[i] = x[i] + 1.0
        s = s + B[i]
    t = 0.0
    for i in range(n):
        t = t + exp(x[i])
    C = zeros(n)
    for i in range(n):
        C = C
    return s + C[0]
''', filename="write_only.dp", backend="cpu")
    text = m.f.ir("optimized")
    assert sum("setitem" in ln for ln in text.splitlines()) == 1
    assert sum(" for " in ln for ln in text.splitlines()) == 1
    assert "exp" not in text
    x = rng.random(7)
    assert m.f(x) == pytest.approx(np.sum(x + 1.0), rel=1e-15)
