"""Scalar replacement of small loop-carried arrays (passes/scalarize.py): same values as
NumPy, applied only where every access is a constant index, and derivatives unchanged."""
import numpy as np
import pytest

import dplang as dp

SRC = '''
def overwrite(x: f64[n]) -> f64:
    a = zeros(2)
    for i in range(n):
        a[0] = a[0] * 0.99 + sin(x[i]) * a[1]
        a[1] = 0.5 * a[0] + x[i]
    return a[0] * a[1]

def whole(x: f64[n]) -> f64[2, 2]:
    M = eye(2)
    k = 0
    while k < n:
        M[0, 1] = M[1, 1] + x[k]
        M[-1, 0] = M[0, 1] * 0.5
        k += 1
    return M

def dynamic(x: f64[n]) -> f64[3]:
    a = ones(3)
    for k in range(n):
        a[k % 3] = a[0] + x[k]
    return a
'''


@pytest.fixture(scope="module")
def mod():
    return dp.compile(SRC, filename="scal.dp", backend="interp")


def test_values_match_numpy(mod):
    x = np.random.default_rng(0).standard_normal(9) * 0.3
    a = np.zeros(2)
    for xi in x:
        a[0] = a[0] * 0.99 + np.sin(xi) * a[1]
        a[1] = 0.5 * a[0] + xi
    assert mod.overwrite(x) == a[0] * a[1]
    M = np.eye(2)
    for xi in x:
        M[0, 1] = M[1, 1] + xi
        M[-1, 0] = M[0, 1] * 0.5
    np.testing.assert_array_equal(mod.whole(x), M)
    a = np.ones(3)
    for k, xi in enumerate(x):
        a[k % 3] = a[0] + xi
    np.testing.assert_array_equal(mod.dynamic(x), a)


def test_applied_only_to_constant_indices(mod):
    ir = mod.overwrite.ir("optimized")
    loop = ir[ir.index("for i"):ir.index("return")]
    assert "[0]" not in loop.split("{", 1)[1] and "setitem" not in loop
    assert "setitem" not in mod.whole.ir("optimized").split("do (")[1].split("}")[0]
    assert "setitem" in mod.dynamic.ir("optimized")          # a[k % 3]: left alone


def test_derivatives(mod):
    rng = np.random.default_rng(1)
    x, u = rng.standard_normal(9) * 0.3, rng.standard_normal(9)
    g = dp.grad(mod.overwrite)(x)
    fd = (mod.overwrite(x + 1e-6 * u) - mod.overwrite(x - 1e-6 * u)) / 2e-6
    assert np.sum(g * u) == pytest.approx(fd, rel=1e-6)
    _, t = dp.jvp(mod.whole)(x, u)
    fdw = (mod.whole(x + 1e-6 * u) - mod.whole(x - 1e-6 * u)) / 2e-6
    np.testing.assert_allclose(t, fdw, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------ small soft choices
CHOICES = '''
# a cell's choice among its predecessors kept as weights (a smoothed backtracking table)
def choose(D: f64[n, m]) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    W = zeros((n + 1, m + 1, 3))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            q = array([R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]])
            W[i, j, :] = onehot_argmin(q)
            R[i, j] = D[i - 1, j - 1] + min(q)
    return R[n, m] + sum(W * D[0, 0]) + W[n, m, 0]

# two entries, the max side, an entry read back
def pair(x: f64[n]) -> f64:
    s = 0.0
    for i in range(1, n):
        q = array([x[i - 1], x[i] * 0.5])
        w = onehot_argmax(q)
        s = s + w[0] * x[i] + max(q) + q[1]
    return s
'''


def _choose_ref(D, weights, least):
    """``choose`` in NumPy, with ``weights(q)`` and ``least(q)`` for the cell's choice."""
    n, m = D.shape
    R = np.full((n + 1, m + 1), np.inf)
    R[0, 0] = 0.0
    W = np.zeros((n + 1, m + 1, 3))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            q = np.array([R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]])
            W[i, j] = weights(q)
            R[i, j] = D[i - 1, j - 1] + least(q)
    return R[n, m] + np.sum(W * D[0, 0]) + W[n, m, 0]


def _choose_soft_ref(D, g, reg):
    """choose under smoothing, with the array primitives' NumPy implementations."""
    from dplang.ir.primitives import REGISTRY
    smin, sargmin = REGISTRY["smin"].impl, REGISTRY["sargmin"].impl
    return _choose_ref(D, lambda q: sargmin(q, g, reg=reg), lambda q: smin(q, g, reg=reg))


def _pair_ref(x, g, reg):
    from dplang.ir.primitives import REGISTRY
    smax, sargmax = REGISTRY["smax"].impl, REGISTRY["sargmax"].impl
    s = 0.0
    for i in range(1, len(x)):
        q = np.array([x[i - 1], x[i] * 0.5])
        s += sargmax(q, g, reg=reg)[0] * x[i] + smax(q, g, reg=reg) + q[1]
    return s


@pytest.fixture(scope="module")
def choices():
    return {b: dp.compile(CHOICES, filename="choices.dp", backend=b) for b in ("cpu", "interp")}


@pytest.mark.parametrize("reg", ["entropy", "l2"])
@pytest.mark.parametrize("backend", ["cpu", "interp"])
def test_small_soft_choices_are_scalar_code(choices, reg, backend):
    """A smoothed choice among a few scalars written as an array (``q = array([...])``,
    ``onehot_argmin(q)``, ``min(q)``) runs as scalar code, without an array a cell:
    the same values as the array primitives, derivatives by finite differences, also
    with inf entries (the table's border) and a tiny gamma."""
    mod = choices[backend]
    rng = np.random.default_rng(5)
    choose = dp.smooth(mod.choose, reg)
    pair = dp.smooth(mod.pair, reg)
    text = choose.ir("optimized")
    assert "sargmin" not in text and "array(" not in text
    assert "array(" not in pair.ir("optimized")
    D = rng.random((6, 5)) + 0.1
    x = rng.standard_normal(7)
    for g in (1.0, 0.1, 1e-8):
        want = _choose_soft_ref(D, g, reg)
        assert abs(choose(D, g) - want) <= 1e-12 * abs(want)
        want = _pair_ref(x, g, reg)
        assert abs(pair(x, g) - want) <= 1e-12 * max(1.0, abs(want))
    for f, a in ((choose, D), (pair, x)):
        g = dp.grad(f)(a, 0.5)
        fd = np.zeros_like(a)
        for k in np.ndindex(*a.shape):
            e = np.zeros_like(a)
            e[k] = 1e-6
            fd[k] = (f(a + e, 0.5) - f(a - e, 0.5)) / 2e-6
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)
        assert np.all(np.isfinite(dp.grad(f)(a, 1e-8)))
    # second order: the Hessian-vector product against differences of gradients
    V = rng.standard_normal(D.shape)
    h = dp.hvp(choose)(D, 0.5, V)
    gp, gm = dp.grad(choose)(D + 1e-6 * V, 0.5), dp.grad(choose)(D - 1e-6 * V, 0.5)
    np.testing.assert_allclose(h, (gp - gm) / 2e-6, rtol=1e-5, atol=1e-6)


def _choose_hard_ref(D):
    return _choose_ref(D, lambda q: np.eye(3)[np.argmin(q)], np.min)


@pytest.mark.parametrize("backend", ["cpu", "interp"])
def test_small_hard_choices_are_scalar_code(choices, backend):
    """The hard choice (``onehot_argmin``, ``min`` of a few scalars written as an array)
    too, with NumPy's picks: the first of tied entries, the first NaN, -0.0 == 0.0."""
    mod = choices[backend]
    text = mod.choose.ir("optimized")
    assert "onehot_argmin" not in text and "array(" not in text
    rng = np.random.default_rng(8)
    D = np.round(rng.random((6, 7)) * 4) / 4          # many ties
    for case in range(4):
        E = D.copy()
        if case == 1:
            E[2, 3] = np.nan
        elif case == 2:
            E[:, 0] = -0.0
            E[0, :] = 0.0
        elif case == 3:
            E[1, 1] = np.inf
        want, got = _choose_hard_ref(E), mod.choose(E)
        assert (np.isnan(want) and np.isnan(got)) or got == want, case
    x = np.array([0.5, 1.0, 1.0, -2.0, np.nan, 3.0, 3.0])
    s = 0.0
    for i in range(1, len(x)):
        q = np.array([x[i - 1], x[i] * 0.5])
        w = np.zeros(2)
        w[np.argmax(q)] = 1.0
        s += w[0] * x[i] + np.max(q) + q[1]
    got = mod.pair(x)
    assert (np.isnan(s) and np.isnan(got)) or got == s
    # the hard choice's gradient: the derivative of min to the first minimiser
    Dp = rng.random((6, 7)) + 0.1                      # (no ties: differentiable)
    g = dp.grad(mod.choose)(Dp)
    fd = np.zeros_like(Dp)
    for k in np.ndindex(*Dp.shape):
        e = np.zeros_like(Dp)
        e[k] = 1e-7
        fd[k] = (mod.choose(Dp + e) - mod.choose(Dp - e)) / 2e-7
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)
