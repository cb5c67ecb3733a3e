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
