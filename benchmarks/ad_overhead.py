"""AD overhead on the CPU backend, side by side with JAX (float64, jax.jit, jax.grad).

For four programs -- an MLP loss, a hard-DTW recursion, a loop that overwrites one cell
many times, and a matrix program -- time the value and the gradient with dplang
(backend "cpu") and with JAX on the same data in the same process, and print:

* grad/value: the cost of the gradient relative to the value (target <= 3, the cheap
  gradient bound) for dplang and for JAX;
* dplang/JAX: dplang's time over JAX's, for the value and the gradient (target < 1).

Run:  python benchmarks/ad_overhead.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import best, fmt, machine, table  # noqa: E402

import dplang as dp  # noqa: E402

SRC = '''
def mlp_loss(W1: f64[h, d], b1: f64[h], W2: f64[o, h], b2: f64[o],
             X: f64[N, d], Y: f64[N, o]) -> f64:
    Z = tanh(X @ W1.T + b1)
    R = Z @ W2.T + b2 - Y
    return mean(sum(R ** 2, axis=1))


def dtw(D: f64[n, m]) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]


def overwrite(x: f64[n]) -> f64:
    a = zeros(2)
    for i in range(n):
        a[0] = a[0] * 0.99 + sin(x[i]) * a[1]
        a[1] = 0.5 * a[0] + x[i]
    return a[0] * a[1]


def matrix(A: f64[n, n], b: f64[n]) -> f64:
    M = A @ A.T + eye(n)
    x = solve(M, b)
    return logsumexp(x) + dot(x, M @ x) / 2.0
'''


def jax_versions():
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)

    def mlp_loss(W1, b1, W2, b2, X, Y):
        Z = jnp.tanh(X @ W1.T + b1)
        R = Z @ W2.T + b2 - Y
        return jnp.mean(jnp.sum(R ** 2, axis=1))

    def dtw(D):
        n, m = D.shape
        inf = jnp.inf

        def row(prev, d):            # prev: R[i-1, :], d: D[i-1, :]
            def cell(left, k):
                v = d[k] + jnp.minimum(jnp.minimum(prev[k], prev[k + 1]), left)
                return v, v
            _, vals = jax.lax.scan(cell, inf, jnp.arange(m))
            cur = jnp.concatenate([jnp.array([inf]), vals])
            return cur, None
        first = jnp.concatenate([jnp.array([0.0]), jnp.full(m, inf)])
        last, _ = jax.lax.scan(row, first, D)
        return last[m]

    def overwrite(x):
        def step(a, xi):
            a0 = a[0] * 0.99 + jnp.sin(xi) * a[1]
            a = a.at[0].set(a0)
            a = a.at[1].set(0.5 * a[0] + xi)
            return a, None
        a, _ = jax.lax.scan(step, jnp.zeros(2), x)
        return a[0] * a[1]

    def matrix(A, b):
        n = A.shape[0]
        M = A @ A.T + jnp.eye(n)
        x = jnp.linalg.solve(M, b)
        return jax.nn.logsumexp(x) + jnp.dot(x, M @ x) / 2.0

    out = {}
    for name, f in (("mlp_loss", mlp_loss), ("dtw", dtw), ("overwrite", overwrite),
                    ("matrix", matrix)):
        nargs = f.__code__.co_argcount
        out[name] = (jax.jit(f), jax.jit(jax.grad(f, argnums=tuple(range(min(nargs, 4))))
                                         if name == "mlp_loss" else jax.grad(f)))
    return out


def data(quick):
    rng = np.random.default_rng(0)
    N, d, h, o = (256, 16, 32, 4) if quick else (2048, 32, 64, 8)
    n = 128 if quick else 512
    return {
        "mlp_loss": [rng.standard_normal((h, d)) * 0.3, rng.standard_normal(h),
                     rng.standard_normal((o, h)) * 0.3, rng.standard_normal(o),
                     rng.standard_normal((N, d)), rng.standard_normal((N, o))],
        "dtw": [rng.random((n, n))],
        # 20k steps: the adjoint decays like 0.99^k, and much longer runs end in
        # subnormal numbers (slow on every CPU; XLA flushes them to zero, we do not)
        "overwrite": [rng.standard_normal(5_000 if quick else 20_000) * 0.1],
        "matrix": [rng.standard_normal((64, 64)) / 8, rng.standard_normal(64)],
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args(argv)
    mod = dp.compile(SRC, filename="ad_overhead.dp", backend=args.backend)
    inputs = data(args.quick)
    try:
        jx = jax_versions()
    except ImportError:
        jx = {}
        print("(JAX is not installed: pip install -e '.[bench]')")
    rows = []
    for name, xs in inputs.items():
        f = getattr(mod, name)
        wrt = (0, 1, 2, 3) if name == "mlp_loss" else 0
        g = dp.grad(f, wrt=wrt)
        v_dp, g_dp = best(f, *xs), best(g, *xs)
        # the gradients agree with JAX's
        v_jx = g_jx = None
        if name in jx:
            fj, gj = jx[name]
            ref = gj(*xs)
            got = g(*xs)
            for a, b in zip(got if isinstance(got, tuple) else (got,),
                            ref if isinstance(ref, tuple) else (ref,)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-10)
            import jax
            v_jx = best(lambda *a: jax.block_until_ready(fj(*a)), *xs)
            g_jx = best(lambda *a: jax.block_until_ready(gj(*a)), *xs)
        rows.append([name, fmt(v_dp), fmt(g_dp), f"{g_dp / v_dp:.2f}",
                     fmt(v_jx), fmt(g_jx),
                     f"{g_jx / v_jx:.2f}" if v_jx else "-",
                     f"{v_dp / v_jx:.2f}" if v_jx else "-",
                     f"{g_dp / g_jx:.2f}" if g_jx else "-"])
    print(f"machine: {machine()}")
    table(rows, ["program", "dplang value", "dplang grad", "grad/value", "JAX value",
                 "JAX grad", "JAX grad/value", "value dp/JAX", "grad dp/JAX"])


if __name__ == "__main__":
    main()
