"""The smoothing pass (passes/smooth.py, SPEC 2.2) and the exactness of the smoothed
primitives it targets (entropy and l2): values, first and second derivatives, infinite
entries, tiny temperatures and the limit gamma -> 0.

Derivatives are taken with dp.jvp (forward mode), one direction per call.
"""
from __future__ import annotations

import contextlib
import re
import warnings

import numpy as np
import pytest

import dplang as dp
from dplang.ir.printer import print_func, print_program
from dplang.ir.verify import verify_func, verify_program
from dplang.passes import smooth as S
from dplang.passes.pipeline import run_pipeline

inf = np.inf
REGS = ("entropy", "l2")
rng = np.random.default_rng(20240605)


# ------------------------------------------------------------------ NumPy references
def sparsemax_ref(z):
    """Euclidean projection of the finite vector z onto the simplex (sort based)."""
    zs = np.sort(z)[::-1]
    k = np.arange(1, z.size + 1)
    cs = np.cumsum(zs)
    kz = k[1 + k * zs > cs][-1]
    tau = (cs[kz - 1] - 1) / kz
    return np.maximum(z - tau, 0.0)


def q_ref(x, g, reg):
    """argmax_Omega(x): the maximiser over the simplex, 0 on -inf entries; uniform over
    the entries equal to an infinite maximum."""
    x = np.asarray(x, float)
    m = x.max()
    if not np.isfinite(m):
        t = (x == m).astype(float)
        return t / t.sum()
    fin = np.isfinite(x)
    q = np.zeros_like(x)
    d = x[fin] - m
    if reg == "entropy":
        e = np.exp(d / g)
        q[fin] = e / e.sum()
    else:
        q[fin] = sparsemax_ref(d / g)
    return q


def smax_ref(x, g, reg):
    x = np.asarray(x, float)
    m = x.max()
    if not np.isfinite(m):
        return m
    fin = np.isfinite(x)
    d = x[fin] - m
    if reg == "entropy":
        return m + g * np.log(np.sum(np.exp(d / g)))
    q = sparsemax_ref(d / g)
    return m + q @ d - g / 2 * q @ q


def smin_ref(x, g, reg):
    return -smax_ref(-np.asarray(x, float), g, reg)


def hess_ref(x, g, reg):
    """Hessian of smax_Omega in x: J(argmax_Omega) / gamma (zero rows/cols at -inf)."""
    q = q_ref(x, g, reg)
    if reg == "entropy":
        return (np.diag(q) - np.outer(q, q)) / g
    s = (q > 0).astype(float)
    return (np.diag(s) - np.outer(s, s) / s.sum()) / g


def dgamma_ref(x, g, reg):
    """d smax / d gamma and d^2 smax / d gamma^2 (shifted: exact for tiny gamma)."""
    x = np.asarray(x, float)
    q = q_ref(x, g, reg)
    fin = q > 0
    d = np.where(fin, x - x.max(), 0.0)
    if reg == "entropy":
        h = -np.sum(q[fin] * np.log(q[fin]))
        var = q @ d ** 2 - (q @ d) ** 2
        return h, var / g ** 3
    mean = d[fin].mean()
    return -(q @ q) / 2, np.sum(q[fin] * (d[fin] - mean)) / g ** 2


# ------------------------------------------------------------------ programs
PRIMS = '''
def vmax(x: f64[k]) -> f64:
    return max(x)

def vmin(x: f64[k]) -> f64:
    return min(x)

def nmax(x: f64[4]) -> f64:
    return max(x[0], x[1], x[2], x[3])

def nmin(x: f64[4]) -> f64:
    return min([x[0], x[1], x[2], x[3]])

def pmax(x: f64[k], y: f64[k]) -> f64[k]:
    return maximum(x, y)

def pmin(x: f64[k], y: f64[k]) -> f64[k]:
    return minimum(x, y)

def amax(x: f64[k]) -> f64[k]:
    return onehot_argmax(x)

def amin(x: f64[k]) -> f64[k]:
    return onehot_argmin(x)

def rowmax(A: f64[r, k]) -> f64[r]:
    return max(A, axis=1)

def colmin(A: f64[r, k]) -> f64[k]:
    return min(A, axis=0)
'''

DTW = '''
def dtw(D: f64[n, m]) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

@smooth(entropy, gamma=gamma)
def soft_dtw(D: f64[n, m], gamma: f64) -> f64:
    return dtw(D)

@smooth("l2", gamma=g)
def sparse_dtw(g: f64, D: f64[n, m]) -> f64:
    return dtw(D)
'''


@pytest.fixture(scope="module")
def prims():
    return dp.compile(PRIMS, filename="prims.dp")


@pytest.fixture(scope="module")
def dtwmod():
    return dp.compile(DTW, filename="dtw.dp")


def smoothed(mod, name, reg):
    return dp.smooth(getattr(mod, name), reg)


@contextlib.contextmanager
def no_warnings():
    """Any NumPy floating-point warning (inf - inf, 0 * inf, overflow) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ================================================================== the rewrite
def test_ir_shows_the_rewrite(dtwmod):
    text = dtwmod.soft_dtw.ir("smoothed")
    assert "@smooth(reg=\"entropy\", gamma=\"gamma\")" in text
    assert "call smooth.entropy.dtw(D, gamma)" in text
    prog = dtwmod._stage_program("smoothed")
    clone = print_func(prog.funcs["smooth.entropy.dtw"])
    assert re.search(r"= sminn\(gamma, \S+, \S+, \S+, reg=\"entropy\"\)", clone)
    assert "minn(" not in clone.replace("sminn(", "")
    assert clone.splitlines()[1].startswith("func smooth.entropy.dtw(D: f64[n, m], gamma: f64)")
    # the l2 function has its temperature first: passed to the clone as the last argument
    assert "call smooth.l2.dtw(D, g)" in dtwmod.sparse_dtw.ir("smoothed")
    # the hard function is untouched
    assert "minn(" in dtwmod.dtw.ir("smoothed") and "sminn" not in dtwmod.dtw.ir("smoothed")
    # the module printout shows it too
    assert "func smooth.l2.dtw" in dtwmod.ir("smoothed")


def test_the_pass_does_not_modify_its_input(dtwmod):
    ssa = dtwmod._program
    before = print_program(ssa)
    keys = list(ssa.funcs)
    out = S.run(ssa)
    assert out is not ssa and print_program(ssa) == before and list(ssa.funcs) == keys
    assert "sminn" not in before and "sminn" in print_program(out)
    # untouched functions are shared, smoothed ones are copies
    assert out.funcs["dtw"] is ssa.funcs["dtw"]
    assert out.funcs["soft_dtw"] is not ssa.funcs["soft_dtw"]


def test_the_pass_is_idempotent_and_verifies(dtwmod):
    out = S.run(dtwmod._program)
    assert S.run(out) is out
    verify_program(out, pass_name="smooth")
    run_pipeline(dtwmod._program, verify=True)
    # a program without @smooth is returned as is
    plain = dp.compile(PRIMS, filename="p.dp")._program
    assert S.run(plain) is plain


def test_every_hard_operator_is_rewritten(prims):
    prog = prims._program
    # (min of a list literal lowers to a reduction of array(...): smin)
    targets = {"vmax": "smax", "vmin": "smin", "nmax": "smaxn", "nmin": "smin",
               "pmax": "smaximum", "pmin": "sminimum", "amax": "sargmax", "amin": "sargmin",
               "rowmax": "smax", "colmin": "smin"}
    for name, soft in targets.items():
        for reg in REGS:
            p2, key = S.smooth_program(prog, name, reg)
            text = print_func(p2.funcs[key])
            assert f"{soft}(" in text and f'reg="{reg}"' in text, (name, text)
            hard = {o.name for o in prog.funcs[name].walk()} & set(S.HARD)
            assert not ({o.name for o in p2.funcs[key].walk()} & hard), text
            verify_program(p2)
    # the reductions' axis is copied explicitly (max's default is None, smax's -1)
    p2, key = S.smooth_program(prog, "vmax", "entropy")
    (op,) = [o for o in p2.funcs[key].walk() if o.name == "smax"]
    assert op.attrs["axis"] is None
    p2, key = S.smooth_program(prog, "colmin", "entropy")
    (op,) = [o for o in p2.funcs[key].walk() if o.name == "smin"]
    assert op.attrs["axis"] == 0


@pytest.mark.parametrize("reg", REGS)
def test_smoothed_values(prims, reg):
    x = np.array([0.3, -1.2, 0.25, 2.0])
    y = np.array([0.5, -1.0, -3.0, 2.0])
    A = rng.standard_normal((3, 4))
    for g in (2.0, 0.5, 0.01):
        assert smoothed(prims, "vmax", reg)(x, g) == pytest.approx(smax_ref(x, g, reg), rel=1e-14)
        assert smoothed(prims, "vmin", reg)(x, g) == pytest.approx(smin_ref(x, g, reg), rel=1e-14)
        assert smoothed(prims, "nmax", reg)(x, g) == pytest.approx(smax_ref(x, g, reg), rel=1e-14)
        assert smoothed(prims, "nmin", reg)(x, g) == pytest.approx(smin_ref(x, g, reg), rel=1e-14)
        np.testing.assert_allclose(smoothed(prims, "pmax", reg)(x, y, g),
                                   [smax_ref([a, b], g, reg) for a, b in zip(x, y)], rtol=1e-14)
        np.testing.assert_allclose(smoothed(prims, "pmin", reg)(x, y, g),
                                   [smin_ref([a, b], g, reg) for a, b in zip(x, y)], rtol=1e-14)
        np.testing.assert_allclose(smoothed(prims, "amax", reg)(x, g), q_ref(x, g, reg),
                                   rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(smoothed(prims, "amin", reg)(x, g), q_ref(-x, g, reg),
                                   rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(smoothed(prims, "rowmax", reg)(A, g),
                                   [smax_ref(a, g, reg) for a in A], rtol=1e-14)
        np.testing.assert_allclose(smoothed(prims, "colmin", reg)(A, g),
                                   [smin_ref(a, g, reg) for a in A.T], rtol=1e-14)


def test_integer_max_and_min_stay_hard():
    src = '''
def band(D: f64[n, m], w: i64) -> f64:
    s = 0.0
    for i in range(n):
        for j in range(max(0, i - w), min(m, i + w + 1)):
            s = max(s, D[i, j])
    return s + maximum(w, 2)
'''
    mod = dp.compile(src, filename="band.dp")
    f = dp.smooth(mod.band, "entropy")
    text = f.ir()
    assert "smaxn(gamma, " in text and "maxn(0, " in text and "minn(m, " in text
    assert "maximum(w, 2)" in text
    D = rng.random((4, 5))
    # at a tiny temperature the smoothed function is the hard one
    assert f(D, 1, 1e-9) == pytest.approx(mod.band(D, 1), rel=1e-12)


def test_callees_are_cloned_once_and_shared():
    src = '''
def inner(x: f64[k]) -> f64:
    return max(x)

def mid(x: f64[k]) -> f64:
    return inner(x) + inner(-x) + min(x[0], x[1])

@smooth(entropy, gamma=g)
def top(x: f64[k], g: f64) -> f64:
    return mid(x) + inner(x)

@smooth(entropy, gamma=t)
def top2(t: f64, x: f64[k]) -> f64:
    return inner(x)

def hard(x: f64[k]) -> f64:
    return mid(x)
'''
    mod = dp.compile(src, filename="calls.dp")
    prog = mod._stage_program("smoothed")
    clones = sorted(k for k in prog.funcs if k.startswith("smooth."))
    assert clones == ["smooth.entropy.inner", "smooth.entropy.mid"]
    assert "call smooth.entropy.inner(x, gamma)" in print_func(prog.funcs["smooth.entropy.mid"])
    assert "call smooth.entropy.inner(x, t)" in mod.top2.ir("smoothed")
    x, g = np.array([0.5, -0.25, 1.5]), 0.3
    ref = smax_ref(x, g, "entropy") + smax_ref(-x, g, "entropy") + smin_ref(x[:2], g, "entropy")
    assert mod.top(x, g) == pytest.approx(ref + smax_ref(x, g, "entropy"), rel=1e-14)
    assert mod.top2(g, x) == pytest.approx(smax_ref(x, g, "entropy"), rel=1e-14)
    # the callee called by a hard function stays hard
    assert mod.hard(x) == pytest.approx(x.max() + (-x).max() + x[:2].min(), rel=1e-15)


def test_a_smooth_callee_keeps_its_own_temperature():
    src = '''
@smooth(entropy, gamma=g)
def inner(x: f64[k], g: f64) -> f64:
    return max(x)

@smooth(l2, gamma=h)
def outer(x: f64[k], h: f64) -> f64:
    return inner(x, 0.5) + min(x)
'''
    mod = dp.compile(src, filename="nested.dp")
    x = np.array([0.1, 0.7, -0.4])
    assert mod.outer(x, 2.0) == pytest.approx(
        smax_ref(x, 0.5, "entropy") + smin_ref(x, 2.0, "l2"), rel=1e-14)


def test_f32_values_get_an_f32_temperature():
    src = '''
@smooth(entropy, gamma=g)
def f(x: f32[k], g: f64) -> f32:
    return max(x) + min(x[0], x[1])
'''
    mod = dp.compile(src, filename="f32.dp")
    text = mod.f.ir("smoothed")
    assert "cast(g, dtype=\"f32\")" in text
    x = np.array([0.5, 1.0, -1.0], np.float32)
    v = mod.f(x, 0.5)
    assert isinstance(v, np.float32)
    ref = smax_ref(x.astype(float), 0.5, "entropy") + smin_ref(x[:2].astype(float), 0.5, "entropy")
    assert v == pytest.approx(ref, rel=1e-6)


def test_transformed_calls_get_the_temperature_after_the_primals():
    src = '''
def g(x: f64[k]) -> f64:
    return max(x)

@smooth(entropy, gamma=t)
def f(x: f64[k], u: f64[k], t: f64) -> f64:
    a, da = jvp(g)(x, u)
    return sum(grad(g)(x)) + da
'''
    mod = dp.compile(src, filename="tr.dp")
    prog = mod._stage_program("smoothed")
    calls = [o for o in prog.funcs["f"].walk() if o.name == "call"]
    assert len(calls) == 2 and {c.attrs["callee"] for c in calls} == {"smooth.entropy.g"}
    t = prog.funcs["f"].params[2]
    for c in calls:
        kinds = [k for k, _ in c.attrs["transform"]]
        x = prog.funcs["f"].params[0]
        if kinds == ["jvp"]:
            assert c.operands[:3] == [x, t, prog.funcs["f"].params[1]]
        else:
            assert c.operands == [x, t]
    # (the verifier does not check calls through transformations yet: verify the clone)
    verify_func(prog.funcs["smooth.entropy.g"], prog)


# ------------------------------------------------------------------ dp.smooth
def test_dp_smooth_adds_gamma_last(dtwmod):
    f = dp.smooth(dtwmod.dtw, "entropy")
    assert f.func.param_names == ["D", "gamma"]
    assert "func smooth.entropy.dtw(D: f64[n, m], gamma: f64)" in f.ir()
    D = rng.random((4, 5))
    assert f(D, 0.7) == pytest.approx(dtwmod.soft_dtw(D, 0.7), rel=1e-15)
    assert f(D, gamma=0.7) == f(D, 0.7)
    assert dp.smooth(dtwmod.dtw, "l2")(D, 0.3) == pytest.approx(dtwmod.sparse_dtw(0.3, D),
                                                                rel=1e-15)
    # a parameter already named gamma keeps its name: the temperature is gamma_1
    mod = dp.compile("def f(gamma: f64[k]) -> f64:\n    return max(gamma)\n", "g.dp")
    assert dp.smooth(mod.f, "entropy").func.param_names == ["gamma", "gamma_1"]


def test_dp_smooth_with_a_named_temperature():
    src = '''
def f(x: f64[k], temp: f64, s: f64) -> f64:
    return s * max(x) + 0.0 * temp
'''
    mod = dp.compile(src, filename="t.dp")
    x = np.array([0.2, 0.9, -0.3])
    for gamma in ("temp", 1, -2):
        f = dp.smooth(mod.f, "entropy", gamma=gamma)
        assert f.func.param_names == ["x", "temp", "s"]
        assert f(x, 0.4, 2.0) == pytest.approx(2.0 * smax_ref(x, 0.4, "entropy"), rel=1e-15)
    f = dp.smooth(mod.f, "l2", gamma="s")
    assert f(x, 0.4, 2.0) == pytest.approx(2.0 * smax_ref(x, 2.0, "l2"), rel=1e-15)


def test_dp_smooth_errors(dtwmod):
    with pytest.raises(dp.DPTypeError, match="unknown regulariser 'l1'"):
        dp.smooth(dtwmod.dtw, "l1")
    with pytest.raises(dp.DPTypeError, match="unknown regulariser"):
        dp.smooth(dtwmod.dtw, None)
    with pytest.raises(dp.DPTypeError, match="no parameter 'nope'"):
        dp.smooth(dtwmod.dtw, "entropy", gamma="nope")
    with pytest.raises(dp.DPTypeError, match="has 1 parameter"):
        dp.smooth(dtwmod.dtw, "entropy", gamma=3)
    with pytest.raises(dp.DPTypeError, match="must be a float scalar"):
        dp.smooth(dtwmod.dtw, "entropy", gamma="D")
    with pytest.raises(dp.DPTypeError, match="already smoothed"):
        dp.smooth(dtwmod.soft_dtw, "l2")
    with pytest.raises(TypeError):
        dp.smooth(len, "entropy")


def test_integer_argmax_under_dp_smooth_is_located():
    src = '''def helper(x: f64[k]) -> f64:
    return x[argmin(x)]

def f(x: f64[k]) -> f64:
    return x[argmax(x)]

def g(x: f64[k]) -> f64:
    return max(x) + helper(x)
'''
    mod = dp.compile(src, filename="am.dp")
    with pytest.raises(dp.DPTypeError) as info:
        dp.smooth(mod.f, "entropy")
    err = info.value
    assert "onehot_argmax" in err.message and "integer" in err.message
    assert (err.loc.file, err.loc.line, err.loc.col) == ("am.dp", 5, 14)
    assert str(err).startswith("am.dp:5:14: ")
    with pytest.raises(dp.DPTypeError) as info:
        dp.smooth(mod.g, "l2")
    assert "onehot_argmin" in info.value.message and info.value.loc.line == 2
    # the hard functions still work
    assert mod.g(np.array([1.0, 3.0])) == 4.0


def test_dp_smooth_composes_with_jvp(dtwmod):
    f = dp.smooth(dtwmod.dtw, "entropy")
    D, U, V = rng.random((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    v, dv = dp.jvp(f)(D, 0.5, U)
    assert v == f(D, 0.5)
    h = 1e-6
    assert dv == pytest.approx((f(D + h * U, 0.5) - f(D - h * U, 0.5)) / (2 * h), rel=1e-7)
    _, (_, d2) = dp.jvp(dp.jvp(f))(D, 0.5, U, V)
    fd2 = (dp.jvp(f)(D + h * V, 0.5, U)[1] - dp.jvp(f)(D - h * V, 0.5, U)[1]) / (2 * h)
    assert d2 == pytest.approx(fd2, rel=1e-6)


# ================================================================== exactness
def grad_by_jvp(f, args, k=0):
    """The gradient of scalar f in argument k, one basis direction per jvp call."""
    J = dp.jvp(f, wrt=k)
    x = np.asarray(args[k], float)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = 1.0
        out[idx] = J(*args, e)[1]
    return out


def hess_by_jvp(f, args, k=0):
    H = dp.jvp(dp.jvp(f, wrt=k), wrt=k)
    x = np.asarray(args[k], float)
    n = x.size
    out = np.zeros((n, n))
    eye = np.eye(n)
    for a in range(n):
        for b in range(n):
            out[a, b] = H(*args, eye[a], eye[b])[1][1]
    return out


CASES = [
    np.array([0.3, -1.2, 0.25, 2.0]),
    np.array([0.3, -inf, 0.25, -inf]),          # -inf entries (DP borders)
    np.array([-inf, 1.5, -inf, -inf]),          # one finite entry
    np.array([100.0, 100.5, 37.0, -inf]),
    np.array([-inf, -inf, -inf, -inf]),         # all -inf: value -inf, no NaN
    np.array([inf, 2.0, inf, -inf]),            # +inf maximum
]


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("g", [1.0, 0.05, 1e-8])
def test_smax_values_and_derivatives(prims, reg, case, g):
    x = CASES[case]
    with no_warnings():
        for name, sign in (("vmax", 1), ("nmax", 1), ("vmin", -1), ("nmin", -1)):
            f = smoothed(prims, name, reg)
            xs = x if sign > 0 else -x
            v = f(xs, g)
            ref = smax_ref(x, g, reg) * sign
            if np.isfinite(ref):
                assert v == pytest.approx(ref, rel=1e-14, abs=1e-14)
            else:
                assert v == ref
            # the gradient is argmax_Omega: exactly 0 on the -inf (for min: +inf) entries
            gr = grad_by_jvp(f, [xs, g])
            assert np.all(np.isfinite(gr))
            np.testing.assert_allclose(gr, q_ref(x, g, reg), rtol=1e-12, atol=1e-300)
            if np.isfinite(x.max()):
                assert np.all(gr[~np.isfinite(x)] == 0.0)
            # d/d gamma
            _, dg = dp.jvp(f, wrt=1)(xs, g, 1.0)
            assert np.isfinite(dg)
            # second order in x and in gamma: finite everywhere, exact where finite
            H = hess_by_jvp(f, [xs, g])
            assert np.all(np.isfinite(H))
            _, (_, d2g) = dp.jvp(dp.jvp(f, wrt=1), wrt=1)(xs, g, 1.0, 1.0)
            assert np.isfinite(d2g)
            if np.isfinite(x.max()):
                np.testing.assert_allclose(H, sign * hess_ref(x, g, reg), rtol=1e-11,
                                           atol=1e-11 / g)
                d1, d2 = dgamma_ref(x, g, reg)
                assert dg == pytest.approx(sign * d1, rel=1e-10, abs=1e-300)
                assert d2g == pytest.approx(sign * d2, rel=1e-9, abs=1e-300)
                assert np.all(H[~np.isfinite(x)] == 0.0)


@pytest.mark.parametrize("reg", REGS)
def test_pairwise_and_onehot_with_infinities(prims, reg):
    x = np.array([1.0, -inf, -inf, inf, 3.0])
    y = np.array([-inf, 2.0, -inf, 0.0, 3.0 + 1e-9])
    with no_warnings():
        for g in (1.0, 1e-8):
            v = smoothed(prims, "pmax", reg)(x, y, g)
            # (l2 of one finite entry a: a - gamma / 2)
            np.testing.assert_allclose(v, [smax_ref([a, b], g, reg) for a, b in zip(x, y)],
                                       rtol=1e-15)
            assert v[2] == -inf and v[3] == inf
            J = dp.jvp(smoothed(prims, "pmax", reg), wrt=(0, 1))
            for u, w in ((np.ones(5), np.zeros(5)), (np.zeros(5), np.ones(5))):
                _, t = J(x, y, g, u, w)
                assert np.all(np.isfinite(t))
            _, t = J(x, y, g, np.ones(5), np.zeros(5))
            assert t[0] == 1.0 and t[1] == 0.0 and t[3] == 1.0
            q = smoothed(prims, "amax", reg)(x[:3], g)
            np.testing.assert_array_equal(q, [1.0, 0.0, 0.0])
            # the Jacobian of argmax_Omega: finite, zero on the infinite entries
            Jq = dp.jvp(smoothed(prims, "amax", reg))
            for k in range(5):
                e = np.eye(5)[k]
                _, t = Jq(x, g, e)
                assert np.all(np.isfinite(t))
                if not np.isfinite(x[k]):
                    assert np.all(t == 0.0)
            H = dp.jvp(dp.jvp(smoothed(prims, "amin", reg)))
            _, (_, t2) = H(y, g, np.ones(5), np.arange(5.0))
            assert np.all(np.isfinite(t2))


def test_tiny_gamma_near_ties_is_exact(prims):
    """gamma = 1e-8 with values ~1e2 that differ by ~gamma: exact value, gradient and
    second derivatives (the computations are shifted; nothing cancels)."""
    x = np.array([100.0, 100.0 - 1e-8, 37.0, -inf])
    g = 1e-8
    d = x[1] - x[0]                       # the difference as represented
    with no_warnings():
        for reg in REGS:
            f = smoothed(prims, "vmax", reg)
            if reg == "entropy":
                ref = x[0] + g * np.log1p(np.exp(d / g))
            else:
                ref = smax_ref(x, g, reg)
            assert f(x, g) == pytest.approx(ref, rel=1e-15)
            np.testing.assert_allclose(grad_by_jvp(f, [x, g]), q_ref(x, g, reg), rtol=1e-12)
            np.testing.assert_allclose(hess_by_jvp(f, [x, g]), hess_ref(x, g, reg), rtol=1e-9,
                                       atol=1e-3)
            d1, d2 = dgamma_ref(x, g, reg)
            _, (_, d2g) = dp.jvp(dp.jvp(f, wrt=1), wrt=1)(x, g, 1.0, 1.0)
            assert d2g == pytest.approx(d2, rel=1e-9)


@pytest.mark.parametrize("reg", REGS)
def test_first_and_second_derivatives_against_finite_differences(prims, reg):
    """Away from the kinks of sparsemax the l2 forms are twice differentiable too."""
    x = np.array([0.3, -0.4, 0.25, 0.1])
    y = np.array([0.2, 0.1, 0.5, -0.3])
    g, h = 0.7, 1e-6
    for name in ("vmax", "nmin"):
        f = smoothed(prims, name, reg)
        for u in np.eye(4):
            fd = (f(x + h * u, g) - f(x - h * u, g)) / (2 * h)
            assert dp.jvp(f)(x, g, u)[1] == pytest.approx(fd, rel=1e-7, abs=1e-9)
            fd2 = (dp.jvp(f)(x + h * y, g, u)[1] - dp.jvp(f)(x - h * y, g, u)[1]) / (2 * h)
            assert dp.jvp(dp.jvp(f))(x, g, u, y)[1][1] == pytest.approx(fd2, rel=1e-6, abs=1e-8)
        fdg = (f(x, g + h) - f(x, g - h)) / (2 * h)
        assert dp.jvp(f, wrt=1)(x, g, 1.0)[1] == pytest.approx(fdg, rel=1e-7)
        Jg = dp.jvp(f, wrt=1)
        fdgg = (Jg(x, g + h, 1.0)[1] - Jg(x, g - h, 1.0)[1]) / (2 * h)
        assert dp.jvp(Jg, wrt=1)(x, g, 1.0, 1.0)[1][1] == pytest.approx(fdgg, rel=1e-6)
        # mixed: d/dgamma of the x-gradient
        for u in np.eye(4):
            fdm = (dp.jvp(f)(x, g + h, u)[1] - dp.jvp(f)(x, g - h, u)[1]) / (2 * h)
            assert dp.jvp(dp.jvp(f), wrt=1)(x, g, u, 1.0)[1][1] == pytest.approx(
                fdm, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("reg", REGS)
def test_gamma_to_zero_tends_to_the_hard_operators(prims, reg):
    x = np.array([0.3, -1.2, 0.25, 2.0, -inf])
    prev = None
    for g in (1.0, 1e-1, 1e-2, 1e-4, 1e-8):
        v = smoothed(prims, "vmax", reg)(x, g)
        err = abs(v - x.max())
        assert err <= g * np.log(4) + 1e-15
        if prev is not None:
            assert err <= prev
        prev = err
    assert smoothed(prims, "vmax", reg)(x, 1e-12) == pytest.approx(2.0, rel=1e-15)
    np.testing.assert_array_equal(smoothed(prims, "amax", reg)(x, 1e-8), [0, 0, 0, 1.0, 0])
    np.testing.assert_array_equal(smoothed(prims, "amin", reg)(x, 1e-8), [0, 0, 0, 0, 1.0])


# ------------------------------------------------------------------ whole programs
def sdtw_ref(D, g):
    """Cuturi & Blondel's forward recursion (stable softmin)."""
    n, m = D.shape
    R = np.full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            r = -np.array([R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]]) / g
            rmax = r.max()
            R[i, j] = D[i - 1, j - 1] - g * (np.log(np.sum(np.exp(r - rmax))) + rmax)
    return R[n, m]


def dtw_ref(D):
    n, m = D.shape
    R = np.full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]


def test_soft_dtw_with_inf_borders_at_tiny_gamma(dtwmod):
    """Costs ~1e2, gamma = 1e-8: the right value, finite first and second derivatives."""
    D = 100.0 + rng.random((4, 5))
    with no_warnings():
        for g in (1e-8, 1e-3):
            v = dtwmod.soft_dtw(D, g)
            assert v == pytest.approx(sdtw_ref(D, g), rel=1e-14)
            assert abs(v - dtw_ref(D)) <= g * np.log(3) * D.size
            gr = grad_by_jvp(dtwmod.soft_dtw, [D, g])
            assert np.all(np.isfinite(gr))
            _, dg = dp.jvp(dtwmod.soft_dtw, wrt=1)(D, g, 1.0)
            assert np.isfinite(dg)
            U, V = rng.standard_normal((2, 4, 5))
            _, (_, hv) = dp.jvp(dp.jvp(dtwmod.soft_dtw))(D, g, U, V)
            assert np.isfinite(hv)
            _, (_, d2g) = dp.jvp(dp.jvp(dtwmod.soft_dtw, wrt=1), wrt=1)(D, g, 1.0, 1.0)
            assert np.isfinite(d2g)
            sp = dtwmod.sparse_dtw(g, D)
            assert np.isfinite(sp) and abs(sp - dtw_ref(D)) <= g * D.size
            assert np.all(np.isfinite(grad_by_jvp(dtwmod.sparse_dtw, [g, D], k=1)))
        # at gamma = 1e-8 the gradient is the hard alignment (no ties here)
        hard = grad_by_jvp(dtwmod.dtw, [D])
        np.testing.assert_allclose(grad_by_jvp(dtwmod.soft_dtw, [D, 1e-8]), hard, atol=1e-12)


@pytest.mark.parametrize("reg", REGS)
def test_soft_dtw_tends_to_dtw(dtwmod, reg):
    D = rng.random((5, 4))
    f = dp.smooth(dtwmod.dtw, reg)
    hard = dtwmod.dtw(D)
    errs = [abs(f(D, g) - hard) for g in (1.0, 0.1, 0.01, 1e-4, 1e-8)]
    assert all(a >= b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-7


def test_all_infinite_cells_give_no_nan():
    """Top-k as a DP: cells with more picks than items are -inf on both options."""
    src = '''
def topk(s: f64[n], k: i64) -> f64:
    F = full((n + 1, k + 1), -inf)
    F[0, 0] = 0.0
    for i in range(1, n + 1):
        F[i, 0] = 0.0
        for c in range(1, k + 1):
            F[i, c] = max(F[i - 1, c], F[i - 1, c - 1] + s[i - 1])
    return F[n, k]
'''
    mod = dp.compile(src, filename="topk.dp")
    s = np.array([0.5, -0.2, 1.0, 0.3])
    with no_warnings():
        for reg in REGS:
            f = dp.smooth(mod.topk, reg)
            for k in (2, 4):
                for g in (1.0, 1e-8):
                    v = f(s, k, g)
                    assert np.isfinite(v)
                    gr = grad_by_jvp(f, [s, k, g])
                    assert np.all(np.isfinite(gr))
                    assert gr.sum() == pytest.approx(k, rel=1e-12)
                    H = hess_by_jvp(f, [s, k, g])
                    assert np.all(np.isfinite(H))
            # k > n: -inf value, finite derivatives
            assert f(s, 5, 1.0) == -inf
            assert np.all(np.isfinite(grad_by_jvp(f, [s, 5, 1.0])))


def test_reverse_mode_through_smoothed_programs(dtwmod, prims):
    """dp.grad of smoothed programs: finite with inf borders and tiny gamma, and equal to
    the forward-mode gradient."""
    D = 100.0 + rng.random((4, 5))
    with no_warnings():
        for g in (1.0, 1e-8):
            gr = dp.grad(dtwmod.soft_dtw)(D, g)
            np.testing.assert_allclose(gr, grad_by_jvp(dtwmod.soft_dtw, [D, g]), rtol=1e-12,
                                       atol=1e-15)
            assert np.isfinite(dp.grad(dtwmod.soft_dtw, wrt=1)(D, g))
            assert np.all(np.isfinite(dp.hvp(dtwmod.soft_dtw)(D, g, D)))
        for reg in REGS:
            f = smoothed(prims, "vmax", reg)
            for x in CASES:
                gr = dp.grad(f)(x, 0.5)
                assert np.all(np.isfinite(gr))
                np.testing.assert_allclose(gr, q_ref(x, 0.5, reg), rtol=1e-12, atol=1e-300)
                assert np.all(np.isfinite(dp.hvp(f)(x, 0.5, np.ones(4))))
