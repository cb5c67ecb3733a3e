"""Soft-DTW value + gradient (with respect to the cost matrix D) on one pair of series,
side by side in one process on the same data:

* dplang: ``std.align.soft_dtw`` (the hard DTW recursion under ``@smooth(entropy)``),
  ``dp.value_and_grad`` on the "cpu" backend;
* tslearn's Numba kernels (``SoftDTW(D, gamma).compute()`` and ``.grad()``);
* JAX (``lax.scan`` over rows and columns, float64, ``jax.value_and_grad``);
* the PyTorch version tslearn ships (``_SoftDTWLossPyTorch``, autograd).

Targets (issue 5): dplang at most 0.35x tslearn's time, at least 20x faster than JAX and
PyTorch, gradient/value ratio at most 2.

Run:  python benchmarks/softdtw.py [--sizes 512 1024] [--gamma 1.0]
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
from std.align import soft_dtw
'''


def tslearn_version(gamma):
    from tslearn.metrics.softdtw_variants import SoftDTW

    def value(D):
        return SoftDTW(D, gamma=gamma).compute()

    def value_and_grad(D):
        s = SoftDTW(D, gamma=gamma)
        v = s.compute()
        return v, s.grad()
    return value, value_and_grad


def jax_version(gamma):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)

    def softmin3(a, b, c):
        m = jnp.minimum(jnp.minimum(a, b), c)
        m = jnp.where(jnp.isfinite(m), m, 0.0)
        return m - gamma * jnp.log(jnp.exp(-(a - m) / gamma) + jnp.exp(-(b - m) / gamma)
                                   + jnp.exp(-(c - m) / gamma))

    def sdtw(D):
        n, m = D.shape

        def row(prev, d):               # prev: R[i-1, :] (m + 1 entries), d: D[i-1, :]
            def cell(left, k):
                v = d[k] + softmin3(prev[k], prev[k + 1], left)
                return v, v
            _, vals = jax.lax.scan(cell, jnp.inf, jnp.arange(m))
            return jnp.concatenate([jnp.array([jnp.inf]), vals]), None
        first = jnp.concatenate([jnp.array([0.0]), jnp.full(m, jnp.inf)])
        last, _ = jax.lax.scan(row, first, D)
        return last[m]
    v = jax.jit(sdtw)
    vg = jax.jit(jax.value_and_grad(sdtw))
    return (lambda D: jax.block_until_ready(v(D)),
            lambda D: jax.block_until_ready(vg(D)))


def torch_version(gamma):
    import torch
    from tslearn.metrics.soft_dtw_loss_pytorch import _SoftDTWLossPyTorch

    def value(D):
        with torch.no_grad():
            return _SoftDTWLossPyTorch.apply(torch.from_numpy(D)[None], gamma).item()

    def value_and_grad(D):
        t = torch.from_numpy(D)[None].requires_grad_(True)
        v = _SoftDTWLossPyTorch.apply(t, gamma)
        v.sum().backward()
        return v.item(), t.grad[0].numpy()
    return value, value_and_grad


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--skip", nargs="*", default=[], help="peers to skip: tslearn jax torch")
    args = ap.parse_args(argv)
    gamma = args.gamma
    mod = dp.compile(SRC, filename="softdtw_bench.dp", backend=args.backend)
    vg = dp.value_and_grad(mod.soft_dtw)
    peers = {}
    for key, name, make in (("tslearn", "tslearn", tslearn_version),
                            ("jax", "JAX", jax_version),
                            ("torch", "PyTorch (tslearn)", torch_version)):
        if key in args.skip:
            continue
        try:
            peers[name] = make(gamma)
        except ImportError as e:
            print(f"({name} unavailable: {e}; pip install -e '.[bench]')")
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        x, y = rng.standard_normal((n, 2)), rng.standard_normal((n, 2))
        D = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        v, G = vg(D, gamma)
        t_v = best(mod.soft_dtw, D, gamma, repeat=5)
        t_vg = best(vg, D, gamma, repeat=5)
        rows.append([n, "dplang", fmt(t_v), fmt(t_vg), f"{t_vg / t_v:.2f}", "1.00", "-"])
        for name, (pv, pvg) in peers.items():
            pv_val, pg = pvg(D)
            err = max(abs(float(pv_val) - v) / abs(v), np.abs(np.asarray(pg) - G).max())
            tp_v = best(pv, D, repeat=3)
            tp_vg = best(pvg, D, repeat=3)
            rows.append([n, name, fmt(tp_v), fmt(tp_vg), f"{tp_vg / tp_v:.2f}",
                         f"{t_vg / tp_vg:.3f}", f"{err:.1e}"])
    print(f"machine: {machine()}; gamma = {gamma}; value+grad w.r.t. D (n x n)")
    table(rows, ["n", "implementation", "value", "value+grad", "vg/value",
                 "dplang vg / this vg", "max diff to dplang"])


if __name__ == "__main__":
    main()
