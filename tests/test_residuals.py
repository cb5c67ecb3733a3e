"""Reverse mode tapes the maximiser of an array smax/smin inside a loop (``smax_arg``,
``Primitive.residuals``), and the CPU backend keeps tapes of equal-shape arrays in one
buffer: gradients and Hessian-vector products against the interpreter, finite
differences and a NumPy forward-backward written here."""
from __future__ import annotations

import re

import numpy as np
import pytest

import dplang as dp
from test_stdlib import forward_backward as crf_reference  # log Z, edge marginals

rng = np.random.default_rng(7)

SRC = '''
def chain(theta: f64[T, S, S], g: f64) -> f64:
    # the CRF's forward recursion, with a temperature
    V = zeros((T, S))
    V[0, :] = theta[0, 0, :]
    for t in range(1, T):
        V[t, :] = smax(theta[t, :, :].T + V[t - 1, :], g)
    return smax(V[T - 1, :], g)


@smooth(l2, gamma=g)
def chain_min(theta: f64[T, S, S], g: f64) -> f64:
    # smin along axis 0 (smoothed min), l2, and a scale after it
    V = zeros((T, S))
    V[0, :] = theta[0, 0, :]
    for t in range(1, T):
        V[t, :] = 0.9 * min(theta[t, :, :] + outer(V[t - 1, :], ones(S)), axis=0)
    return sum(V[T - 1, :] * V[T - 1, :])


def grows(x: f64[N]) -> f64:
    # a tape of arrays whose length changes with the loop: the typed-list tape
    s = 0.0
    for t in range(1, N):
        y = x[:t] * x[:t]
        s += sum(exp(y))
    return s


def nested(x: f64[n, m], k: i64) -> f64:
    # array tapes inside two loops
    s = 0.0
    for i in range(k):
        for j in range(n):
            s += smax(x[j, :] * (s * 0.1 + 1.0), 0.5)
    return s


def steps(x: f64[T, n, m], v: f64[m]) -> f64:
    # each step's row weights, and a fused loop's result, go on tapes of one shape
    s = 0.0
    for t in range(T):
        e = exp(x[t, :, :] * 0.5) * v
        s += sum(smax(e, 0.7) * x[t, :, 0]) + sum(log(e * e + 1.0))
    return s


def rows(x: f64[n, m]) -> f64:
    # a table row read by a nonlinear op, then overwritten: its old value is taped
    V = x * 1.0
    s = 0.0
    for i in range(1, n):
        s += sum(sin(V[i - 1, :]) * V[i, :])
        V[i, :] = V[i - 1, :] * 0.5
    return s

def until(x: f64[n], limit: f64) -> f64:
    # a while loop (no trip count for reverse mode) taping an array of one shape
    v = x * 1.0
    k = 0
    while sum(v * v) < limit and k < 50:
        v = sin(v) * 1.5 + x
        k = k + 1
    return sum(v * v)
'''


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="residuals.dp", backend="cpu"),
            dp.compile(SRC, filename="residuals.dp", backend="interp"))


def test_the_reverse_sweep_multiplies_by_taped_weights(mods):
    cpu, _ = mods
    g = dp.grad(cpu.chain)
    theta = rng.standard_normal((6, 4, 4))
    g(theta, 1.0)
    ir = str(g.ir())
    # the forward sweep computes value and weights together and tapes the weights; the
    # reverse sweep does not recompute them
    loops = ir.split("for t_1 in")
    assert "smax_arg(" in loops[0] and "tape_push" in loops[0]
    assert "sargmax" not in loops[1] and "smax" not in loops[1]
    # the transposed sum is reduced along columns (passes/layout.py): neither sweep
    # transposes, and the column kernel gives value and weights
    assert "transpose" not in ir
    src = g.source()
    assert "rt_cols_smax_arg_into(" in src and "np.transpose" not in src
    # nothing writes the weights after the push: the kernel writes them into their
    # tape entry, and the push copies nothing
    assert "tape.append(" not in src and ".copy())" not in src


@pytest.mark.parametrize("gamma", [1.0, 0.3, 1e-8])
def test_crf_gradient_is_the_marginals(mods, gamma):
    cpu, interp = mods
    theta = rng.standard_normal((7, 5, 5)) * (100.0 if gamma == 1e-8 else 1.0)
    for mod in (cpu, interp):
        v, G = dp.value_and_grad(mod.chain)(theta, gamma)
        if gamma == 1.0:
            z, M = crf_reference(theta)
            assert v == pytest.approx(z, rel=1e-13)
            np.testing.assert_allclose(G, M, rtol=1e-11, atol=1e-14)
        assert np.all(np.isfinite(G))
        # marginals of each step sum to one
        np.testing.assert_allclose(G[1:].sum(axis=(1, 2)), 1.0, rtol=1e-10)
    vi, Gi = dp.value_and_grad(interp.chain)(theta, gamma)
    vc, Gc = dp.value_and_grad(cpu.chain)(theta, gamma)
    assert vc == pytest.approx(vi, rel=1e-12)
    np.testing.assert_allclose(Gc, Gi, rtol=1e-12, atol=1e-13)


def test_inf_potentials_get_zero_marginals(mods):
    cpu, interp = mods
    theta = rng.standard_normal((5, 4, 4))
    theta[2, 1, :] = -np.inf            # no move out of tag 1 at step 2
    theta[3, :, 2] = -np.inf            # nor into tag 2 at step 3
    for mod in (cpu, interp):
        G = dp.grad(mod.chain)(theta, 1.0)
        assert np.all(np.isfinite(G))
        assert np.all(G[2, 1, :] == 0) and np.all(G[3, :, 2] == 0)
        v = np.array(rng.standard_normal(theta.shape))
        v[~np.isfinite(theta)] = 0.0
        assert np.all(np.isfinite(dp.hvp(mod.chain)(theta, 1.0, v)))


@pytest.mark.parametrize("name", ["chain", "chain_min"])
def test_hvp_against_finite_differences(mods, name):
    theta = rng.standard_normal((5, 3, 3))
    v = rng.standard_normal(theta.shape)
    h = 1e-5
    for mod in mods:
        f = getattr(mod, name)
        hv = dp.hvp(f)(theta, 0.7, v)
        g = dp.grad(f)
        fd = (g(theta + h * v, 0.7) - g(theta - h * v, 0.7)) / (2 * h)
        np.testing.assert_allclose(hv, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["chain_min", "grows", "nested", "rows", "steps", "until"])
def test_gradients_agree_and_pass_the_dot_product_test(mods, name):
    cpu, interp = mods
    args = {"chain_min": lambda: [rng.standard_normal((6, 3, 3)), 0.4],
            "steps": lambda: [rng.standard_normal((4, 3, 5)), rng.standard_normal(5)],
            "grows": lambda: [rng.standard_normal(7) * 0.5],
            "nested": lambda: [rng.standard_normal((3, 4)), 3],
            "rows": lambda: [rng.standard_normal((5, 4))],
            "until": lambda: [rng.standard_normal(4) * 0.3, 40.0]}[name]()
    gc = dp.grad(getattr(cpu, name))(*args)
    gi = dp.grad(getattr(interp, name))(*args)
    np.testing.assert_allclose(gc, gi, rtol=1e-12, atol=1e-13)
    u = rng.standard_normal(np.shape(args[0]))
    f = getattr(cpu, name)
    _, dv = dp.jvp(f)(*args, u)
    assert np.sum(gc * u) == pytest.approx(dv, rel=1e-10)
    # and against the central difference along u
    h = 1e-6
    fd = (f(*([args[0] + h * u] + args[1:])) - f(*([args[0] - h * u] + args[1:]))) / (2 * h)
    assert np.sum(gc * u) == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_tape_kinds_in_the_generated_source(mods):
    cpu, interp = mods
    # x[:t] changes length, and exp(y) is not written after the push: a list, no copies
    g = dp.grad(cpu.grows)
    g(rng.standard_normal(5))
    assert "typed.List" in g.source() and ".copy())" not in g.source()
    # the overwritten rows keep one shape: one buffer for their old values
    g = dp.grad(cpu.rows)
    g(rng.standard_normal((3, 4)))
    src = g.source()
    assert "np.empty((tape_cap,) + old.shape, np.float64)" in src
    assert "rt_set_into1(tape[tape_n], old)" in src
    # the same without a capacity (a while loop): a buffer that doubles when full
    g = dp.grad(cpu.until, wrt=0)
    x = rng.standard_normal(4) * 0.3
    gc = g(x, 40.0)
    src = g.source()
    assert "typed.List" not in src and "= rt_grow_rows(tape" in src
    np.testing.assert_allclose(gc, dp.grad(interp.until, wrt=0)(x, 40.0), rtol=1e-12)

    # arrays of one shape computed by code that can write into a given array (a fused
    # loop, a soft operator's weights along rows) are computed in their tape entry,
    # and their push only counts
    g = dp.grad(cpu.steps, wrt=0)
    g(rng.standard_normal((3, 2, 4)), rng.standard_normal(4))
    src = g.source()
    w = re.search(r"rt_rows_smax_arg_into\(\w+, 0\.7, (\w+)\)", src)
    assert w and re.search(rf"{w.group(1)} = (tape\w*)\[\1_n\]", src)
    assert re.search(r"(\w+) = (tape\w*)\[\2_n\].*\n(.*\n)+?\s+rt_put2\(\1, i0, i1, ", src)
    # exp(x[t] * 0.5) * v is one loop although reverse mode tapes both results between
    # the two ops: the pushes follow the loop
    fwd = src.split("for t_1 in")[0]
    assert re.search(r"(\w+) = rt_exp\(\w+\)(.*\n)+?.*rt_put2\(e\w*, i0, i1, \1 \* ", fwd)
    # the arrays whose sums are taken only give their shapes to the reverse sweep: their
    # tape keeps the shapes
    shapes = re.search(r"(tape\w*) = np.empty\(\(max\(\w+, 1\), 1\), np.int64\)", src)
    assert shapes and re.search(rf"= np.empty\(\({shapes.group(1)}\[", src)
