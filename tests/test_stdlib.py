"""The standard library (stdlib/std/*.dp) against independent NumPy references written
here: Cuturi & Blondel's soft-DTW forward and backward recursions, the forward-backward
algorithm of linear-chain CRFs, brute-force enumeration for Viterbi, knapsack and top-k.

Derivatives are taken with dp.jvp (forward mode), one basis direction per call.
"""
from __future__ import annotations

import itertools
import re
import os

import numpy as np
import pytest

import dplang as dp

inf = np.inf
rng = np.random.default_rng(5)
GAMMAS = (10.0, 1.0, 0.1, 0.01)


def std_module(name):
    """Every function of std.NAME, imported into one module."""
    import dplang.stdlib as s
    path = os.path.join(os.path.dirname(s.__file__), "std", f"{name}.dp")
    names = re.findall(r"^def (\w+)", open(path).read(), re.M)
    return dp.compile(f"from std.{name} import {', '.join(names)}\n", filename=f"use_{name}.dp")


@pytest.fixture(scope="module")
def align():
    return std_module("align")


@pytest.fixture(scope="module")
def seq():
    return std_module("sequence")


@pytest.fixture(scope="module")
def sel():
    return std_module("select")


def grad_by_jvp(f, args, k=0):
    """The gradient of a scalar f in argument k, one basis direction per jvp call."""
    J = dp.jvp(f, wrt=k)
    x = np.asarray(args[k], float)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = 1.0
        out[idx] = J(*args, e)[1]
    return out


def fd_grad(f, args, k=0, h=1e-6):
    """Central differences of the values of f in argument k."""
    x = np.asarray(args[k], float)
    if isinstance(f, dp.Function):
        # the values, through one derived function (built once, so the many calls
        # below do not each run the compilation pipeline)
        J, zero = dp.jvp(f, wrt=k), np.zeros_like(x)
        f = lambda *a: J(*a, zero)[0]  # noqa: E731
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        a1, a2 = list(args), list(args)
        a1[k], a2[k] = x + e, x - e
        out[idx] = (f(*a1) - f(*a2)) / (2 * h)
    return out


def close(a, b, rtol):
    """``a`` equals ``b`` to ``rtol`` relative to the size of ``b``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.max(np.abs(b)) if b.size else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


# ============================================================ NumPy references
def sparsemax_ref(z):
    zs = np.sort(z)[::-1]
    k = np.arange(1, z.size + 1)
    cs = np.cumsum(zs)
    kz = k[1 + k * zs > cs][-1]
    return np.maximum(z - (cs[kz - 1] - 1) / kz, 0.0)


def softmin_ref(a, g, reg):
    """min_Omega of the vector a (+inf entries weigh 0): value and weights."""
    a = np.asarray(a, float)
    fin = np.isfinite(a)
    q = np.zeros_like(a)
    if reg == "entropy":
        r = -a[fin] / g
        rmax = r.max()
        e = np.exp(r - rmax)
        q[fin] = e / e.sum()
        return -g * (np.log(e.sum()) + rmax), q
    m = a[fin].min()
    p = sparsemax_ref(-(a[fin] - m) / g)
    q[fin] = p
    return m - (p @ -(a[fin] - m) - g / 2 * p @ p), q


def sdtw_forward(D, g, band=None):
    """Cuturi & Blondel (2017), Algorithm 1 (stable softmin); band: Sakoe-Chiba width."""
    n, m = D.shape
    R = np.full((n + 2, m + 2), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if band is not None and abs(i - j) > band:
                continue
            r0, r1, r2 = -R[i - 1, j - 1] / g, -R[i - 1, j] / g, -R[i, j - 1] / g
            rmax = max(r0, r1, r2)
            rsum = np.exp(r0 - rmax) + np.exp(r1 - rmax) + np.exp(r2 - rmax)
            R[i, j] = D[i - 1, j - 1] - g * (np.log(rsum) + rmax)
    return R


def sdtw_backward(D, R, g):
    """Cuturi & Blondel (2017), Algorithm 2: E = d sdtw / d D."""
    n, m = D.shape
    Dp = np.zeros((n + 2, m + 2))
    Dp[1:n + 1, 1:m + 1] = D
    R = R.copy()
    R[:, m + 1] = -inf
    R[n + 1, :] = -inf
    R[n + 1, m + 1] = R[n, m]
    E = np.zeros((n + 2, m + 2))
    E[n + 1, m + 1] = 1.0
    for j in range(m, 0, -1):
        for i in range(n, 0, -1):
            a = np.exp((R[i + 1, j] - R[i, j] - Dp[i + 1, j]) / g)
            b = np.exp((R[i, j + 1] - R[i, j] - Dp[i, j + 1]) / g)
            c = np.exp((R[i + 1, j + 1] - R[i, j] - Dp[i + 1, j + 1]) / g)
            E[i, j] = E[i + 1, j] * a + E[i, j + 1] * b + E[i + 1, j + 1] * c
    return E[1:n + 1, 1:m + 1]


def sdtw_ref(D, g):
    return sdtw_forward(D, g)[D.shape[0], D.shape[1]]


def dtw_np(D, band=None, reg=None, g=None):
    """Hard DTW (reg None) or its min_Omega smoothing, by a NumPy DP."""
    n, m = D.shape
    R = np.full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if band is not None and abs(i - j) > band:
                continue
            a = [R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]]
            R[i, j] = D[i - 1, j - 1] + (min(a) if reg is None else softmin_ref(a, g, reg)[0])
    return R[n, m]


def sqdist(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


# ============================================================ std.align
def test_sqeuclidean_and_dtw(align):
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((7, 3))
    C = align.sqeuclidean(x, y)
    np.testing.assert_allclose(C, sqdist(x, y), rtol=1e-14)
    for D in (C, rng.random((1, 4)), rng.random((6, 1)), rng.random((4, 4))):
        assert align.dtw(D) == pytest.approx(dtw_np(D), rel=1e-15)
    # the hard alignment is 0/1, monotone, and <A, D> is the DTW cost
    A = align.dtw_alignment(C)
    assert set(np.unique(A)) <= {0.0, 1.0} and A[0, 0] == 1 and A[-1, -1] == 1
    assert np.sum(A * C) == pytest.approx(align.dtw(C), rel=1e-14)
    # it is the (sub)gradient of dtw
    np.testing.assert_array_equal(grad_by_jvp(align.dtw, [C]), A)


@pytest.mark.parametrize("g", GAMMAS)
def test_soft_dtw_value_and_gradient(align, g):
    D = sqdist(rng.standard_normal((4, 2)), rng.standard_normal((5, 2)))
    R = sdtw_forward(D, g)
    assert align.soft_dtw(D, g) == pytest.approx(R[4, 5], rel=1e-10)
    E = sdtw_backward(D, R, g)
    close(grad_by_jvp(align.soft_dtw, [D, g]), E, 1e-10)
    # the expected alignment by backtracking the smoothed choices is that gradient
    close(align.soft_dtw_alignment(D, g), E, 1e-10)
    # sharp soft-DTW is <E, D>
    assert align.sharp_soft_dtw(D, g) == pytest.approx(np.sum(E * D), rel=1e-10)


def test_soft_dtw_hessian_vector_product(align):
    D = sqdist(rng.standard_normal((4, 2)), rng.standard_normal((5, 2)))
    H = dp.jvp(dp.jvp(align.soft_dtw))
    J = dp.jvp(align.soft_dtw)
    h = 1e-5
    for g in (1.0, 0.1):
        U, V = rng.standard_normal((2, 4, 5))
        _, (_, hvp) = H(D, g, U, V)
        fd = (J(D + h * V, g, U)[1] - J(D - h * V, g, U)[1]) / (2 * h)
        assert hvp == pytest.approx(fd, rel=1e-6)
        # against the Cuturi-Blondel gradient differenced
        E1 = sdtw_backward(D + h * V, sdtw_forward(D + h * V, g), g)
        E2 = sdtw_backward(D - h * V, sdtw_forward(D - h * V, g), g)
        assert hvp == pytest.approx(np.sum((E1 - E2) / (2 * h) * U), rel=1e-6)
        # symmetric
        assert hvp == pytest.approx(H(D, g, V, U)[1][1], rel=1e-12)


def test_soft_dtw_gamma_derivative(align):
    D = rng.random((3, 4))
    for g in (1.0, 0.1):
        _, dg = dp.jvp(align.soft_dtw, wrt=1)(D, g, 1.0)
        h = 1e-6 * g
        assert dg == pytest.approx((sdtw_ref(D, g + h) - sdtw_ref(D, g - h)) / (2 * h), rel=1e-6)


def test_soft_dtw_tends_to_dtw(align):
    D = rng.random((5, 6))
    hard = align.dtw(D)
    errs = [abs(align.soft_dtw(D, g) - hard) for g in (1.0, 0.1, 1e-2, 1e-4, 1e-8)]
    assert all(a >= b for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-7
    np.testing.assert_allclose(align.soft_dtw_alignment(D, 1e-8), align.dtw_alignment(D),
                               atol=1e-12)
    assert align.sparse_dtw(D, 1e-9) == pytest.approx(hard, rel=1e-7)


@pytest.mark.parametrize("g", (1.0, 0.1))
def test_sparse_dtw(align, g):
    D = sqdist(rng.standard_normal((4, 2)), rng.standard_normal((4, 2)))
    assert align.sparse_dtw(D, g) == pytest.approx(dtw_np(D, reg="l2", g=g), rel=1e-12)
    gr = grad_by_jvp(align.sparse_dtw, [D, g])
    # l2 values and gradients agree by finite differences
    close(gr, fd_grad(align.sparse_dtw, [D, g]), 1e-6)
    close(gr, fd_grad(lambda D, g: dtw_np(D, reg="l2", g=g), [D, g]), 1e-6)
    # the sparse expected alignment is that gradient (and is sparse)
    close(align.sparse_dtw_alignment(D, g), gr, 1e-12)
    h = 1e-6
    _, dg = dp.jvp(align.sparse_dtw, wrt=1)(D, g, 1.0)
    assert dg == pytest.approx((dtw_np(D, reg="l2", g=g + h) - dtw_np(D, reg="l2", g=g - h))
                               / (2 * h), rel=1e-6)


SPARSE_CELLS = """
from std.align import sparse_dtw

@smooth(l2, gamma=g)
def two(x: f64[n], g: f64) -> f64:
    s = 0.0
    for i in range(1, n):
        s = s + max(x[i - 1] * x[i], x[i] + s * 0.5)
    return s
"""


def test_sparse_cells_in_scalar_ops_match_the_array_route(monkeypatch):
    """The weights of a sparse (l2) max of two or three scalars are built in scalar ops
    (ir/primitives/soft.py, _l2_cell); the same program with the array route (sargmax of
    the stacked entries) gives the same gradients, gamma derivatives and Hessian-vector
    products, also with infinite entries (the table's borders) and ties."""
    from dplang.ir.primitives import soft
    cases = [rng.random((6, 5)) * 3, np.floor(rng.random((7, 7)) * 3),   # ties
             np.where(rng.random((6, 6)) < 0.2, inf, rng.random((6, 6)))]  # inf costs
    x = rng.standard_normal(9)
    vs = [rng.standard_normal(D.shape) for D in cases]

    def results(route):
        monkeypatch.setattr(soft, "SCALAR_L2", route)
        m = dp.compile(SPARSE_CELLS + f"# scalar route: {route}\n",
                       filename=f"sparse_cells_{route}.dp", backend="cpu")
        vg, dg, hv = (dp.value_and_grad(m.sparse_dtw), dp.grad(m.sparse_dtw, wrt=1),
                      dp.hvp(m.sparse_dtw))
        out = [(vg(D, g), dg(D, g), hv(D, g, V)) for D, V in zip(cases, vs)
               for g in (1.0, 0.1, 1e-3)]
        out.append([dp.grad(m.two)(x, g) for g in (1.0, 0.05)])
        return out, vg.source()

    new, src_new = results(True)
    old, src_old = results(False)
    # the array route stacks each cell's entries; the scalar route allocates nothing
    assert "np.array((" in src_old and "np.array((" not in src_new
    for (v1, g1), d1, h1 in new[:-1]:
        assert np.isfinite(g1).all() and np.isfinite(h1).all()
    for ((v1, g1), d1, h1), ((v0, g0), d0, h0) in zip(new[:-1], old[:-1]):
        assert v1 == v0
        np.testing.assert_allclose(g1, g0, rtol=1e-12, atol=1e-15)
        assert d1 == pytest.approx(d0, rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(h1, h0, rtol=1e-10, atol=1e-12)
    for a, b in zip(new[-1], old[-1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)

def test_soft_dtw_divergence(align):
    x, y = rng.standard_normal((5, 2)), rng.standard_normal((4, 2))
    for g in (1.0, 0.1):
        ref = sdtw_ref(sqdist(x, y), g) - 0.5 * (sdtw_ref(sqdist(x, x), g) +
                                                sdtw_ref(sqdist(y, y), g))
        assert align.soft_dtw_divergence(x, y, g) == pytest.approx(ref, rel=1e-10)
        assert align.soft_dtw_divergence(x, y, g) > 0
        assert align.soft_dtw_divergence(x, x, g) == pytest.approx(0.0, abs=1e-12)
        assert align.soft_dtw_series(x, y, g) == pytest.approx(sdtw_ref(sqdist(x, y), g),
                                                               rel=1e-10)
        # gradient in x: the chain rule through the cost matrix, and finite differences
        gx = grad_by_jvp(align.soft_dtw_divergence, [x, y, g])
        Exy = sdtw_backward(sqdist(x, y), sdtw_forward(sqdist(x, y), g), g)
        Exx = sdtw_backward(sqdist(x, x), sdtw_forward(sqdist(x, x), g), g)
        # d/dx_i sum_j E_ij |x_i - y_j|^2 = 2 sum_j E_ij (x_i - y_j); the xx term counts twice
        ref = 2 * (Exy.sum(1)[:, None] * x - Exy @ y)
        ref -= 0.5 * 2 * 2 * (Exx.sum(1)[:, None] * x - Exx @ x)
        close(gx, ref, 1e-9)
        close(grad_by_jvp(align.soft_dtw_divergence, [x, y, g], k=1),
              fd_grad(align.soft_dtw_divergence, [x, y, g], k=1), 1e-6)
    assert align.sharp_soft_dtw_divergence(x, x, 0.5) == pytest.approx(0.0, abs=1e-12)


def test_sharp_soft_dtw_derivative(align):
    D = rng.random((3, 4))
    g = 0.5
    close(grad_by_jvp(align.sharp_soft_dtw, [D, g]), fd_grad(align.sharp_soft_dtw, [D, g]),
          1e-6)
    # as gamma -> 0 it tends to dtw, from above
    assert align.sharp_soft_dtw(D, 1e-8) == pytest.approx(align.dtw(D), rel=1e-10)
    assert align.sharp_soft_dtw(D, 0.5) >= align.dtw(D)


def test_sakoe_chiba_band(align):
    D = rng.random((6, 7))
    for w in (1, 2, 6):
        assert align.dtw_band(D, w) == pytest.approx(dtw_np(D, band=w), rel=1e-15)
        for g in (1.0, 0.1, 1e-8):
            R = sdtw_forward(D, g, band=w)
            assert align.soft_dtw_band(D, w, g) == pytest.approx(R[6, 7], rel=1e-10)
        gr = grad_by_jvp(align.soft_dtw_band, [D, w, 0.5])
        assert np.all(np.isfinite(gr))
        # cells outside the band get no weight
        outside = np.abs(np.subtract.outer(np.arange(6), np.arange(7))) > w
        assert np.all(gr[outside] == 0.0)
    Dsmall = rng.random((4, 5))
    close(grad_by_jvp(align.soft_dtw_band, [Dsmall, 1, 0.5]),
          fd_grad(align.soft_dtw_band, [Dsmall, 1, 0.5]), 1e-6)
    # a wide band is plain soft-DTW
    assert align.soft_dtw_band(D, 10, 0.3) == pytest.approx(align.soft_dtw(D, 0.3), rel=1e-14)
    # no alignment fits: inf, with finite derivatives
    assert align.dtw_band(rng.random((2, 6)), 1) == inf
    assert align.soft_dtw_band(rng.random((2, 6)), 1, 1.0) == inf


def test_soft_dtw_inf_costs_and_tiny_gamma(align):
    """Costs ~1e2 at gamma = 1e-8, and an infinite cost (a forbidden match)."""
    D = 100.0 + rng.random((4, 5))
    g = 1e-8
    assert align.soft_dtw(D, g) == pytest.approx(sdtw_ref(D, g), rel=1e-14)
    gr = grad_by_jvp(align.soft_dtw, [D, g])
    np.testing.assert_allclose(gr, align.dtw_alignment(D), atol=1e-12)
    D[1, 3] = inf
    for g in (1.0, 1e-8):
        assert align.soft_dtw(D, g) == pytest.approx(sdtw_ref(D, g), rel=1e-12)
        gr = grad_by_jvp(align.soft_dtw, [D, g])
        assert np.all(np.isfinite(gr)) and gr[1, 3] == 0.0
        A = align.soft_dtw_alignment(D, g)
        assert np.all(np.isfinite(A)) and A[1, 3] == 0.0


# ============================================================ std.sequence
def score(theta, y):
    return theta[0, 0, y[0]] + sum(theta[t, y[t - 1], y[t]] for t in range(1, len(y)))


def path_of(theta, y):
    Y = np.zeros_like(theta)
    Y[0, 0, y[0]] = 1.0
    for t in range(1, len(y)):
        Y[t, y[t - 1], y[t]] = 1.0
    return Y


def all_paths(theta):
    T, S, _ = theta.shape
    return list(itertools.product(range(S), repeat=T))


def logsumexp(a, axis=None):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def forward_backward(theta):
    """log Z and the edge marginals of a linear-chain CRF (log-space recursions)."""
    T, S, _ = theta.shape
    alpha = np.zeros((T, S))
    beta = np.zeros((T, S))
    alpha[0] = theta[0, 0]
    for t in range(1, T):
        alpha[t] = logsumexp(alpha[t - 1][:, None] + theta[t], axis=0)
    for t in range(T - 1, 0, -1):
        beta[t - 1] = logsumexp(theta[t] + beta[t][None, :], axis=1)
    logZ = logsumexp(alpha[T - 1])
    M = np.zeros_like(theta)
    M[0, 0] = np.exp(alpha[0] + beta[0] - logZ)
    for t in range(1, T):
        M[t] = np.exp(alpha[t - 1][:, None] + theta[t] + beta[t][None, :] - logZ)
    return logZ, M


def test_viterbi_against_brute_force(seq):
    theta = rng.standard_normal((4, 3, 3))
    paths = all_paths(theta)
    scores = [score(theta, y) for y in paths]
    best = paths[int(np.argmax(scores))]
    assert seq.viterbi(theta) == pytest.approx(max(scores), rel=1e-14)
    np.testing.assert_array_equal(seq.viterbi_path(theta), path_of(theta, best))
    np.testing.assert_array_equal(seq.viterbi_tags(theta), best)
    # the path is the gradient of the value
    np.testing.assert_array_equal(grad_by_jvp(seq.viterbi, [theta]), path_of(theta, best))
    one = rng.standard_normal((1, 3, 3))
    assert seq.viterbi(one) == pytest.approx(one[0, 0].max())


def test_crf_log_partition_and_marginals(seq):
    for shape in ((5, 3, 3), (1, 4, 4), (3, 2, 2)):
        theta = rng.standard_normal(shape)
        logZ, M = forward_backward(theta)
        assert seq.crf_log_partition(theta) == pytest.approx(logZ, rel=1e-12)
        assert seq.soft_viterbi(theta, 1.0) == pytest.approx(logZ, rel=1e-12)
        close(seq.crf_marginals(theta), M, 1e-12)
        close(seq.crf_tag_marginals(theta), M.sum(axis=1), 1e-12)
        # the gradient of log Z is the marginals
        close(grad_by_jvp(seq.crf_log_partition, [theta]), M, 1e-10)
    theta = rng.standard_normal((4, 3, 3))
    y = np.array([0, 2, 2, 1])
    logZ, _ = forward_backward(theta)
    assert seq.crf_log_likelihood(theta, y) == pytest.approx(score(theta, y) - logZ, rel=1e-12)


@pytest.mark.parametrize("g", (2.0, 0.3))
def test_soft_viterbi_is_a_gibbs_expectation(seq, g):
    theta = rng.standard_normal((4, 3, 3))
    paths = all_paths(theta)
    s = np.array([score(theta, y) for y in paths])
    assert seq.soft_viterbi(theta, g) == pytest.approx(g * logsumexp(s / g), rel=1e-12)
    p = np.exp(s / g - logsumexp(s / g))
    expected = sum(pk * path_of(theta, y) for pk, y in zip(p, paths))
    close(seq.soft_viterbi_path(theta, g), expected, 1e-12)
    close(grad_by_jvp(seq.soft_viterbi, [theta, g]), expected, 1e-10)


@pytest.mark.parametrize("g", (1.0, 0.2))
def test_sparse_viterbi(seq, g):
    theta = rng.standard_normal((4, 3, 3))
    gr = grad_by_jvp(seq.sparse_viterbi, [theta, g])
    # the smoothed path (backtracking with onehot_argmax) is the gradient of the value
    close(seq.sparse_viterbi_path(theta, g), gr, 1e-12)
    close(gr, fd_grad(seq.sparse_viterbi, [theta, g]), 1e-6)
    P = seq.sparse_viterbi_path(theta, g)
    assert np.all(P >= 0) and np.all(P.sum(axis=(1, 2)) == pytest.approx(1.0))
    # l2 smoothing lower-bounds the max (entropy upper-bounds it)
    assert seq.sparse_viterbi(theta, g) <= seq.viterbi(theta) <= seq.soft_viterbi(theta, g)


def test_viterbi_smoothings_tend_to_the_hard_ones(seq):
    theta = rng.standard_normal((5, 3, 3))
    hard = seq.viterbi(theta)
    for f in (seq.soft_viterbi, seq.sparse_viterbi):
        errs = [abs(f(theta, g) - hard) for g in (1.0, 0.1, 1e-3, 1e-8)]
        assert all(a >= b for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-7
    np.testing.assert_allclose(seq.soft_viterbi_path(theta, 1e-8), seq.viterbi_path(theta),
                               atol=1e-12)
    np.testing.assert_array_equal(seq.sparse_viterbi_path(theta, 1e-8), seq.viterbi_path(theta))


# ============================================================ std.select
def subsets(n):
    return [S for r in range(n + 1) for S in itertools.combinations(range(n), r)]


def indicator(n, S):
    x = np.zeros(n)
    x[list(S)] = 1.0
    return x


def test_knapsack_against_brute_force(sel):
    for trial in range(4):
        n = 5
        v = rng.random(n)
        w = rng.integers(0, 5, n)
        C = int(rng.integers(0, 10))
        feas = [S for S in subsets(n) if w[list(S)].sum() <= C]
        vals = [v[list(S)].sum() for S in feas]
        best = feas[int(np.argmax(vals))]
        assert sel.knapsack(v, w, C) == pytest.approx(max(vals), rel=1e-14)
        np.testing.assert_array_equal(sel.knapsack_selection(v, w, C), indicator(n, best))
        np.testing.assert_array_equal(grad_by_jvp(sel.knapsack, [v, w, C]), indicator(n, best))
        # entropy smoothing: gamma log sum over feasible sets, and the marginals
        for g in (1.0, 0.1):
            lse = g * logsumexp(np.array(vals) / g)
            assert sel.soft_knapsack(v, w, C, g) == pytest.approx(lse, rel=1e-12)
            p = np.exp(np.array(vals) / g - lse / g)
            marg = sum(pk * indicator(n, S) for pk, S in zip(p, feas))
            close(sel.soft_knapsack_selection(v, w, C, g), marg, 1e-12)
            close(grad_by_jvp(sel.soft_knapsack, [v, w, C, g]), marg, 1e-10)


def test_sparse_knapsack(sel):
    v = np.array([0.9, 0.35, 0.5, 0.6, 0.2])
    w = np.array([3, 1, 2, 2, 1])
    C = 5
    for g in (0.5, 0.1):
        gr = grad_by_jvp(sel.sparse_knapsack, [v, w, C, g])
        close(gr, fd_grad(sel.sparse_knapsack, [v, w, C, g]), 1e-6)
        close(sel.sparse_knapsack_selection(v, w, C, g), gr, 1e-12)
        assert sel.sparse_knapsack(v, w, C, g) <= sel.knapsack(v, w, C)
    assert sel.sparse_knapsack(v, w, C, 1e-9) == pytest.approx(sel.knapsack(v, w, C), rel=1e-8)
    np.testing.assert_array_equal(sel.sparse_knapsack_selection(v, w, C, 1e-6),
                                  sel.knapsack_selection(v, w, C))


def test_topk_against_brute_force(sel):
    n = 6
    s = rng.standard_normal(n)
    for k in range(0, n + 1):
        sets = list(itertools.combinations(range(n), k))
        vals = np.array([s[list(S)].sum() for S in sets])
        best = sets[int(np.argmax(vals))]
        assert sel.topk(s, k) == pytest.approx(vals.max(), rel=1e-14, abs=1e-15)
        np.testing.assert_array_equal(sel.topk_selection(s, k), indicator(n, best))
        for g in (1.0, 0.1):
            lse = g * logsumexp(vals / g)
            assert sel.soft_topk(s, k, g) == pytest.approx(lse, rel=1e-12, abs=1e-15)
            p = np.exp(vals / g - lse / g)
            marg = sum(pk * indicator(n, S) for pk, S in zip(p, sets))
            sx = sel.soft_topk_selection(s, k, g)
            close(sx, marg, 1e-12)
            assert sx.sum() == pytest.approx(k, abs=1e-12)
    g = 0.3
    close(grad_by_jvp(sel.soft_topk, [s, 3, g]), sel.soft_topk_selection(s, 3, g), 1e-10)
    # more than n: infeasible
    assert sel.topk(s, n + 1) == -inf and sel.soft_topk(s, n + 1, 1.0) == -inf


def test_sparse_topk(sel):
    s = np.array([0.8, -0.3, 0.75, 0.1, 0.5])
    for g in (1.0, 0.2):
        gr = grad_by_jvp(sel.sparse_topk, [s, 2, g])
        close(gr, fd_grad(sel.sparse_topk, [s, 2, g]), 1e-6)
        close(sel.sparse_topk_selection(s, 2, g), gr, 1e-12)
        assert gr.sum() == pytest.approx(2.0, abs=1e-12) and np.all(gr >= 0)
    # sparse: at a moderate temperature the clear winners are exactly selected
    x = sel.sparse_topk_selection(np.array([5.0, -3.0, 4.0, 0.1]), 2, 0.5)
    np.testing.assert_array_equal(x, [1.0, 0.0, 1.0, 0.0])
    for f, hard in ((sel.soft_topk_selection, sel.topk_selection),
                    (sel.sparse_topk_selection, sel.topk_selection)):
        np.testing.assert_allclose(f(s, 2, 1e-8), hard(s, 2), atol=1e-12)


# ============================================================ reverse mode
def test_reverse_mode_gradients(align, seq, sel):
    """dp.grad / dp.hvp (reverse mode) agree with the references and with forward mode."""
    D = sqdist(rng.standard_normal((4, 2)), rng.standard_normal((5, 2)))
    for g in GAMMAS:
        E = sdtw_backward(D, sdtw_forward(D, g), g)
        close(dp.grad(align.soft_dtw)(D, g), E, 1e-10)
        close(dp.grad(align.sparse_dtw)(D, g), align.sparse_dtw_alignment(D, g), 1e-12)
    U, V = rng.standard_normal((2, 4, 5))
    hv = dp.hvp(align.soft_dtw)(D, 0.5, V)
    assert np.sum(U * hv) == pytest.approx(dp.jvp(dp.jvp(align.soft_dtw))(D, 0.5, U, V)[1][1],
                                           rel=1e-10)
    theta = rng.standard_normal((4, 3, 3))
    close(dp.grad(seq.crf_log_partition)(theta), forward_backward(theta)[1], 1e-10)
    close(dp.grad(seq.sparse_viterbi)(theta, 0.5), seq.sparse_viterbi_path(theta, 0.5), 1e-12)
    v, w = rng.random(5), rng.integers(0, 4, 5)
    close(dp.grad(sel.soft_knapsack)(v, w, 6, 0.3), sel.soft_knapsack_selection(v, w, 6, 0.3),
          1e-12)
    close(dp.grad(sel.sparse_topk)(v, 2, 0.3), sel.sparse_topk_selection(v, 2, 0.3), 1e-12)


def test_sharp_soft_dtw_through_in_program_grad():
    """sharp_soft_dtw (by backtracking) is <grad(soft_dtw)(D, gamma), D>."""
    src = '''
from std.align import soft_dtw, sharp_soft_dtw

def sharp_by_grad(D: f64[n, m], gamma: f64) -> f64:
    return sum(grad(soft_dtw)(D, gamma) * D)
'''
    mod = dp.compile(src, filename="sharp.dp")
    D = rng.random((4, 5))
    for g in (1.0, 0.1):
        assert mod.sharp_by_grad(D, g) == pytest.approx(mod.sharp_soft_dtw(D, g), rel=1e-12)
        close(dp.grad(mod.sharp_by_grad)(D, g), dp.grad(mod.sharp_soft_dtw)(D, g), 1e-10)
