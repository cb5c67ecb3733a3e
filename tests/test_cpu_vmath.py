"""The CPU runtime's vectorisable exp, expm1, tanh and log (backends/cpu/runtime.py, "vector-
friendly math") against a long-double NumPy reference, and their special values against
NumPy's float64 functions."""
import numba
import numpy as np
import pytest

import dplang as dp
from dplang.backends.cpu import runtime as rt

pytestmark = pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60,
                                reason="needs an extended-precision long double")

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 709.78, 709.79, 710.0, 800.0,
                    -708.4, -744.4, -745.13, -745.14, -746.0, -1e4, 1e-300, -1e-300,
                    5e-324, -5e-324, 19.0, 20.0, 21.0, 40.0, -40.0, 1e-8, -1e-8,
                    0.34657, -0.34657, 0.34658, 37.0, 38.0, -37.5, 1.0, -1.0])

@numba.njit
def _log_a(x):
    """rt_log over an array (generated code calls it in wavefront kernels only)."""
    out = np.empty_like(x)
    for k in range(x.size):
        out[k] = rt.rt_log(x[k])
    return out


CASES = [("exp", rt.rt_exp_a, np.exp, 1.0),
         ("expm1", rt.rt_expm1_a, np.expm1, 2.0),
         ("tanh", rt.rt_tanh_a, np.tanh, 3.0),
         ("log", _log_a, np.log, 1.0)]


def sample(rng, name="exp"):
    if name == "log":       # positive numbers over the whole range, near 1, subnormals
        return np.concatenate([np.exp(rng.uniform(-744, 709, 200_000)),
                               rng.uniform(0.5, 2.0, 200_000), 1.0 + rng.standard_normal(
                                   50_000) * 1e-9, rng.uniform(1.0, 3.0, 100_000),
                               rng.uniform(0, 1, 10_000) * 2.2250738585072014e-308])
    return np.concatenate([rng.uniform(-750, 715, 200_000), rng.uniform(-2, 2, 200_000),
                           rng.uniform(-25, 25, 200_000), rng.standard_normal(50_000) * 1e-6,
                           rng.standard_normal(50_000) * 1e-12])


@pytest.mark.parametrize("name,ours,ref,bound", CASES, ids=[c[0] for c in CASES])
def test_ulp_error_against_long_double(name, ours, ref, bound):
    x = sample(np.random.default_rng(7), name)
    got = ours(x)
    exact = ref(x.astype(np.longdouble))
    big, tiny = np.finfo(np.float64).max, np.finfo(np.float64).tiny
    normal = (np.abs(exact) <= big) & (np.abs(exact) >= tiny)
    assert np.isfinite(got[normal]).all()
    ulp = np.spacing(np.abs(exact[normal].astype(np.float64))).astype(np.longdouble)
    err = np.abs(got[normal] - exact[normal]) / ulp
    assert float(err.max()) <= bound, (name, float(err.max()), x[normal][np.argmax(err)])
    # results below the normal range (exp's gradual underflow) are within one subnormal
    below = np.abs(exact) < tiny
    assert (np.abs(got[below] - exact[below].astype(np.float64)) <= 5e-324).all()
    # and beyond float64's range they overflow to inf
    assert np.isinf(got[np.abs(exact) > big]).all()


@pytest.mark.parametrize("name,ours,ref,bound", CASES, ids=[c[0] for c in CASES])
def test_special_values(name, ours, ref, bound):
    got = ours(SPECIAL)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        want = ref(SPECIAL)
    same_class = (np.isnan(got) == np.isnan(want)) & (np.isinf(got) == np.isinf(want))
    assert same_class.all(), SPECIAL[~same_class]
    fin = np.isfinite(want)
    assert (np.signbit(got[fin]) == np.signbit(want[fin])).all()
    assert (got[np.isinf(want)] == want[np.isinf(want)]).all()
    close = np.abs(got[fin] - want[fin]) <= bound * np.spacing(np.abs(want[fin])) + 5e-324
    assert close.all(), SPECIAL[fin][~close]


@numba.njit
def _exp_by_product(x):
    """exp as 2^k (1 + q) with 2^k in two factors (rt_exp_join): the product rounds a
    subnormal result once, which rt_exp reproduces without a subnormal operation."""
    out = np.empty_like(x)
    for i in range(x.size):
        xc = min(max(x[i], -746.0), 710.0)
        k, q = rt.rt_expm1_core(xc)
        out[i] = rt.rt_exp_join(k, q)
    return out


def test_exp_matches_the_rounded_product_bit_for_bit():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-746, -700, 400_000), rng.uniform(700, 710, 100_000),
                        rng.uniform(-750, 715, 200_000), -np.logspace(-300, 2.87, 10_000),
                        [-708.396418532264, -708.3964185322641, -745.1332191019411,
                         -745.1332191019412, -744.4400719213812, 709.782712893384,
                         709.7827128933840 + 1e-13, -1022 * np.log(2), 1024 * np.log(2)]])
    x = np.concatenate([x, np.nextafter(x, np.inf), np.nextafter(x, -np.inf)])
    got, want = rt.rt_exp_a(x), _exp_by_product(x)
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert (got[x < -708.4] < 2.2250738585072014e-308).all()    # the range it covers


def test_shapes_and_dtypes():
    x = np.linspace(-3, 3, 24).reshape(2, 3, 4)
    np.testing.assert_allclose(rt.rt_exp_a(x), np.exp(x), rtol=3e-16)
    np.testing.assert_allclose(rt.rt_tanh_a(x[:, ::2, 1:]), np.tanh(x[:, ::2, 1:]), rtol=6e-16)
    np.testing.assert_allclose(rt.rt_expm1_a(np.arange(-3, 4)), np.expm1(np.arange(-3, 4)),
                               rtol=5e-16)
    assert rt.rt_exp_a(np.zeros((0, 3))).shape == (0, 3)


def test_generated_code_uses_them_and_agrees_with_the_interpreter():
    src = "def f(x: f64[n, m]) -> f64:\n    return sum(tanh(x) * exp(x) + expm1(x))\n"
    cpu = dp.compile(src, filename="vm.dp", backend="cpu")
    ref = dp.compile(src, filename="vm.dp", backend="interp")
    x = np.random.default_rng(0).standard_normal((17, 9)) * 4
    assert abs(cpu.f(x) - ref.f(x)) <= 1e-13 * abs(ref.f(x))
    text = cpu.f.source()
    # one fused loop (backends/cpu/fusion.py) calling the scalar versions
    assert "rt_tanh(" in text and "rt_exp(" in text and "rt_expm1(" in text
    assert "math." not in text and "np.tanh" not in text
    # an op on its own stays an array statement, with the array versions
    one = dp.compile("def g(x: f64[n, m]) -> f64[n, m]:\n    return tanh(x)\n", backend="cpu")
    assert "rt_tanh_a(x)" in one.g.source()
    np.testing.assert_allclose(one.g(x), np.tanh(x), rtol=6e-16)
    g_cpu = dp.grad(cpu.f)(x)
    g_ref = dp.grad(ref.f)(x)
    # (1 - tanh^2 cancels where |tanh| ~ 1: an absolute tolerance on the scale of g)
    np.testing.assert_allclose(g_cpu, g_ref, rtol=1e-13, atol=1e-14 * np.abs(g_ref).max())


def test_numba_scalar_view_is_a_bit_cast():
    # rt_pow2 relies on Numba lowering a scalar .view to a bit cast
    assert rt.rt_pow2(0) == 1.0 and rt.rt_pow2(-1022) == 2.0 ** -1022
    assert rt.rt_pow2(1023) == 2.0 ** 1023



def test_derivative_of_a_square_has_no_power_left():
    # d/dx x ** 2 = 2 * x ** 1: simplify drops the ** 1 (a pow call per element otherwise)
    m = dp.compile("def f(x: f64[n]) -> f64:\n    return sum(x ** 2.0)\n", filename="sq.dp",
                   backend="cpu")
    g = dp.grad(m.f)
    x = np.array([1.5, -2.0, np.inf, 0.0])
    np.testing.assert_array_equal(g(x), 2 * x)
    assert "**" not in g.source().split("def grad_f", 1)[1]
