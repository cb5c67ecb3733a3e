"""Forward mode (passes/ad_forward.py) through control flow, against central finite
differences."""
import os

import numpy as np
import pytest

import dplang as dp

HERE = os.path.dirname(__file__)
EX = os.path.join(HERE, "..", "examples")
rng = np.random.default_rng(7)
EPS = 1e-6

SRC = open(os.path.join(EX, "dtw.dp")).read() + '''
def newton(a: f64) -> f64:
    x = a
    while abs(x * x - a) > 1e-13:
        x = x - (x * x - a) / (2.0 * x)
    return x

def branchy(x: f64, k: i64) -> f64:
    y = 0.0
    for i in range(k):
        if x > 1.0:
            y = y + x * x
        else:
            y = y - exp(x)
            continue
        y = y * 0.5
    return y

def early(x: f64[n]) -> f64:
    s = 0.0
    for i in range(n):
        if x[i] < 0.0:
            return s * x[i]
        s += x[i] * x[i]
    return s

def overwrite(x: f64[n]) -> f64:
    a = zeros(1)
    for i in range(n):
        a[0] = a[0] * 0.9 + x[i]
    return a[0]
'''


@pytest.fixture(scope="module")
def mod():
    return dp.compile(SRC, filename="fwd.dp")


def fd(f, args, k, u):
    a1, a2 = list(args), list(args)
    a1[k] = args[k] + EPS * u
    a2[k] = args[k] - EPS * u
    return (f(*a1) - f(*a2)) / (2 * EPS)


def test_dtw_jvp(mod):
    D, U = rng.random((5, 6)), rng.standard_normal((5, 6))
    v, dv = dp.jvp(mod.dtw)(D, U)
    assert v == mod.dtw(D)
    assert dv == pytest.approx(fd(mod.dtw, [D], 0, U), rel=1e-6)


def test_two_parameters_through_a_call(mod):
    x, y = rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    u, w = rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    v, dv = dp.jvp(mod.dtw_series, wrt=("x", "y"))(x, y, u, w)
    ref = (mod.dtw_series(x + EPS * u, y + EPS * w) -
           mod.dtw_series(x - EPS * u, y - EPS * w)) / (2 * EPS)
    assert dv == pytest.approx(ref, rel=1e-6)


def test_newton_while_matches_analytic(mod):
    for a in (2.0, 5.0):
        v, dv = dp.jvp(mod.newton)(a, 1.0)
        assert v == pytest.approx(np.sqrt(a), rel=1e-14)
        assert dv == pytest.approx(0.5 / np.sqrt(a), rel=1e-10)


@pytest.mark.parametrize("x", [0.5, 1.5])
def test_if_continue(mod, x):
    v, dv = dp.jvp(mod.branchy)(x, 4, 1.0)
    assert dv == pytest.approx(fd(mod.branchy, [x, 4], 0, 1.0), rel=1e-6)


def test_early_return_in_loop(mod):
    for x in (np.array([0.5, 1.0, -2.0, 3.0]), np.array([0.5, 1.0, 2.0])):
        u = rng.standard_normal(len(x))
        v, dv = dp.jvp(mod.early)(x, u)
        assert dv == pytest.approx(fd(mod.early, [x], 0, u), rel=1e-6)


def test_overwritten_cell(mod):
    x, u = rng.standard_normal(20), rng.standard_normal(20)
    v, dv = dp.jvp(mod.overwrite)(x, u)
    assert dv == pytest.approx(fd(mod.overwrite, [x], 0, u), rel=1e-6)


def test_jvp_of_integer_parameter_is_an_error(mod):
    with pytest.raises(dp.DPTypeError, match="not a float"):
        dp.jvp(mod.branchy, wrt=1)
