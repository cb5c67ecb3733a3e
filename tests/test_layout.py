"""Transpose sinking (passes/layout.py): a reduction of a transposed matrix reduces the
matrix over the other axis, so neither the forward nor the reverse sweep transposes;
and the column kernels of the soft operators (rt_cols_*) that reductions over axis 0
then use.  Values against NumPy written here, gradients against finite differences,
the interpreter, and the JVP/VJP dot product."""
from __future__ import annotations

import numpy as np
import pytest

import dplang as dp

rng = np.random.default_rng(11)

SRC = '''
@smooth(entropy, gamma=g)
def soft(A: f64[n, m], v: f64[m], g: f64) -> f64[m]:
    # down the columns, no transpose at all
    return max(A + v, axis=0)

def colsoft(A: f64[n, m], v: f64[n], g: f64) -> f64[m]:
    # the CRF's step: arrive in j from i (smax reduces the last axis)
    return smax(A.T + v, g)

def both(A: f64[n, m], B: f64[n, m]) -> f64[m]:
    return sum(exp(A.T) * B.T - 0.5, axis=1)

def cancel(A: f64[n, m], v: f64[n]) -> f64[n, m]:
    return (A.T * 2.0 + v).T

def weights(A: f64[n, m], v: f64[n]) -> f64[n, m]:
    return softmax(A.T + v).T

def hard(A: f64[n, m], v: f64[n]) -> f64[m]:
    return max(A.T - v, axis=1) + min(-A.T, axis=-1)

def keeps(A: f64[n, m], B: f64[m, n]) -> f64[m]:
    return sum(A.T + B, axis=1)

def escapes(A: f64[n, m], v: f64[n]) -> f64:
    M = A.T + v
    return sum(max(M, axis=1)) + M[0, 1]

def loss(A: f64[n, m], v: f64[n], w: f64[m]) -> f64:
    return sum(smax(A.T + v, 0.7) * w) + sum(logsumexp(A.T * v, axis=1))

# B is written between the sum and the soft operator: the kernel cannot read B later
def between(A: f64[n, m], v: f64[n], g: f64) -> f64[m]:
    B = A * 2.0
    M = B.T + v
    B[0, 0] = 100.0
    return smax(M, g) + B[0, :]

@smooth(entropy, gamma=g)
def chain(theta: f64[T, S, S], g: f64) -> f64:
    V = zeros((T, S))
    V[0, :] = theta[0, 0, :]
    for t in range(1, T):
        V[t, :] = max(theta[t, :, :].T + V[t - 1, :], axis=1)
    return max(V[T - 1, :])
'''


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="layout.dp", backend="cpu"),
            dp.compile(SRC, filename="layout.dp", backend="interp"))


def lse(x, axis, g=1.0):
    m = np.max(x, axis=axis, keepdims=True)
    return g * np.log(np.sum(np.exp((x - m) / g), axis=axis)) + np.squeeze(m, axis)


def test_transposes_sink_into_the_reductions(mods):
    cpu, _ = mods
    for name in ("soft", "colsoft", "both", "cancel", "weights", "hard", "loss"):
        ir = str(getattr(cpu, name).ir("ad"))
        assert "transpose" not in ir, name
    ir = str(cpu.colsoft.ir("ad"))
    assert "broadcast_to(v, A, axis=(1,))" in ir and "axis=0)" in ir
    # a transposed matrix that is used otherwise (added to a matrix in its own layout,
    # indexed) stays
    assert "transpose" in str(cpu.keeps.ir("ad"))
    assert "transpose" in str(cpu.escapes.ir("ad"))
    # entropy soft operators over axis 0 run down the columns
    assert "rt_cols_smax(" in cpu.colsoft.source() and "rt_cols_smax(" in cpu.soft.source()
    assert "rt_cols_softmax(" in cpu.weights.source()
    assert "np.transpose" not in cpu.colsoft.source()


def test_values_against_numpy(mods):
    cpu, interp = mods
    n, m = 5, 7
    A, B = rng.standard_normal((n, m)), rng.standard_normal((n, m))
    vn, vm = rng.standard_normal(n), rng.standard_normal(m)
    for mod in (cpu, interp):
        np.testing.assert_allclose(mod.soft(A, vm, 0.3), lse(A + vm, 0, 0.3), rtol=1e-13)
        np.testing.assert_allclose(mod.colsoft(A, vn, 2.0), lse(A.T + vn, 1, 2.0),
                                   rtol=1e-13)
        np.testing.assert_allclose(mod.both(A, B), np.sum(np.exp(A.T) * B.T - 0.5, axis=1),
                                   rtol=1e-13)
        np.testing.assert_allclose(mod.cancel(A, vn), (A.T * 2.0 + vn).T, rtol=1e-15)
        e = np.exp(A.T + vn - np.max(A.T + vn, axis=1, keepdims=True))
        np.testing.assert_allclose(mod.weights(A, vn), (e / e.sum(axis=1, keepdims=True)).T,
                                   rtol=1e-13)
        np.testing.assert_array_equal(mod.hard(A, vn), np.max(A.T - vn, axis=1)
                                      + np.min(-A.T, axis=1))
        Bt = rng.standard_normal((m, n))
        np.testing.assert_allclose(mod.keeps(A, Bt), np.sum(A.T + Bt, axis=1), rtol=1e-13)
        M = A.T + vn
        assert mod.escapes(A, vn) == pytest.approx(np.max(M, axis=1).sum() + M[0, 1],
                                                   rel=1e-14)


def test_column_kernels_at_inf_and_nan(mods):
    """Columns of -inf, +inf and NaN get what the row kernel gives such a row (the
    interpreter's NumPy code is the reference)."""
    cpu, interp = mods
    A = rng.standard_normal((4, 6))
    A[:, 1] = -np.inf                       # a whole column of -inf: -inf, uniform ties
    A[2, 2] = np.inf                        # +inf: inf, all weight on it
    A[0, 3] = np.nan                        # NaN first
    A[3, 4] = np.nan                        # NaN later
    A[1:, 5] = -np.inf                      # one finite entry: weight 1 there
    v = rng.standard_normal(4)
    for f, args in (("soft", (A, np.zeros(6), 0.5)), ("weights", (A, np.zeros(4))),
                    ("weights", (A, v)), ("colsoft", (A, v, 0.5)),
                    ("colsoft", (A, v, 3.0))):
        c, i = getattr(cpu, f)(*args), getattr(interp, f)(*args)
        np.testing.assert_array_equal(np.isnan(c), np.isnan(i))
        np.testing.assert_allclose(c, i, rtol=1e-14)
    # a NaN after an infinite entry: NaN, as a row with a NaN (with v, also from inf - inf)
    B = A.copy()
    B[0, 0], B[2, 0] = np.inf, np.nan
    vb = v.copy()
    vb[1] = np.inf                          # + inf in row 1: inf or NaN in every column
    for f, args in (("colsoft", (B, v, 0.5)), ("weights", (B, v)), ("colsoft", (A, vb, 2.0)),
                    ("weights", (A, vb))):
        c, i = getattr(cpu, f)(*args), getattr(interp, f)(*args)
        np.testing.assert_array_equal(np.isnan(c), np.isnan(i))
        np.testing.assert_allclose(c, i, rtol=1e-14)
    assert np.isnan(cpu.colsoft(B, v, 0.5)[0]) and np.all(np.isnan(cpu.weights(B, v)[:, 0]))
    s = cpu.soft(A, np.zeros(6), 0.5)
    assert s[1] == -np.inf and s[2] == np.inf and np.isnan(s[3]) and np.isnan(s[4])
    assert s[5] == pytest.approx(A[0, 5], rel=1e-15)
    w = cpu.weights(A, np.zeros(4))         # softmax of A down the columns
    np.testing.assert_array_equal(w[:, 1], 0.25)
    np.testing.assert_array_equal(w[:, 2], [0, 0, 1, 0])
    np.testing.assert_array_equal(w[:, 5], [1, 0, 0, 0])
    assert np.all(np.isnan(w[:, 3])) and np.all(np.isnan(w[:, 4]))


def _fd_grad(f, xs, k, eps=1e-6):
    x = xs[k]
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp = [a.copy() if isinstance(a, np.ndarray) else a for a in xs]
        xm = [a.copy() if isinstance(a, np.ndarray) else a for a in xs]
        xp[k][idx] += eps
        xm[k][idx] -= eps
        out[idx] = (f(*xp) - f(*xm)) / (2 * eps)
    return out


def test_gradients(mods):
    cpu, interp = mods
    n, m = 4, 6
    A, v, w = rng.standard_normal((n, m)), rng.standard_normal(n), rng.standard_normal(m)
    xs = [A, v, w]

    def ref(A, v, w):           # NumPy, independent of dplang
        return float(np.sum(lse(A.T + v, 1, 0.7) * w) + np.sum(lse(A.T * v, 1)))
    for mod in (cpu, interp):
        g = dp.grad(mod.loss, wrt=(0, 1, 2))(*xs)
        for k in range(3):
            np.testing.assert_allclose(g[k], _fd_grad(ref, xs, k), rtol=1e-6, atol=1e-8)
    # forward and reverse mode agree: <J dx, ct> = <dx, J^T ct>
    dA, dv = rng.standard_normal((n, m)), rng.standard_normal(n)
    ct = rng.standard_normal(m)
    _, jd = dp.jvp(cpu.colsoft, wrt=(0, 1))(A, v, 0.4, dA, dv)
    _, (gA, gv) = dp.vjp(cpu.colsoft, wrt=(0, 1))(A, v, 0.4, ct)
    assert np.dot(jd, ct) == pytest.approx(np.sum(gA * dA) + np.dot(gv, dv), rel=1e-12)


def test_a_smoothed_chain_hvp(mods):
    """Second order through the column kernels: hvp against finite differences of the
    gradient, both backends."""
    cpu, interp = mods
    theta = rng.standard_normal((5, 3, 3))
    d = rng.standard_normal(theta.shape)
    for mod in (cpu, interp):
        g = dp.grad(mod.chain)
        h = dp.hvp(mod.chain)(theta, 0.5, d)
        eps = 1e-5
        fd = (g(theta + eps * d, 0.5) - g(theta - eps * d, 0.5)) / (2 * eps)
        np.testing.assert_allclose(h, fd, rtol=1e-6, atol=1e-8)
        assert "transpose" not in str(g.ir())


def test_the_kernel_adds_the_vector_as_it_reads(mods):
    """``smax(A + v[:, None], axis=0)`` (a forward-algorithm step) passes A and v to the
    column kernel: the sum is never an array.  Not when the sum is read elsewhere, nor
    when a write to one of its operands comes between it and the soft operator."""
    import re
    cpu, interp = mods
    assert re.search(r"rt_cols_smax\(A, v, g\)", cpu.colsoft.source())
    assert re.search(r"rt_cols_softmax\(A, v, 1\.0\)", cpu.weights.source())
    src = cpu.between.source()
    assert "rt_cols_smax(z" in src and "rt_cols_smax(B" not in src
    n, m = 4, 5
    A, v = rng.standard_normal((n, m)), rng.standard_normal(n)
    B = 2.0 * A
    B[0, 0] = 100.0
    for mod in (cpu, interp):
        np.testing.assert_allclose(mod.between(A, v, 0.8),
                                   lse(2.0 * A.T + v, 1, 0.8) + B[0, :], rtol=1e-14)
    # the CRF's recursion: each step's weights are computed into their tape entry
    g = dp.grad(cpu.chain)
    theta = rng.standard_normal((6, 4, 4))
    np.testing.assert_allclose(g(theta, 0.3), dp.grad(interp.chain)(theta, 0.3), rtol=1e-12)
    src = g.source()
    assert re.search(r"rt_cols_smax_arg_into\(\w+, \w+, g, (\w+)\)", src)
    entry = re.search(r"rt_cols_smax_arg_into\(\w+, \w+, g, (\w+)\)", src).group(1)
    assert re.search(rf"{entry} = tape\w*\[tape\w*_n\]", src)
    assert "typed.List" not in src and "elementwise operands" not in src.split("for t_1")[0]
