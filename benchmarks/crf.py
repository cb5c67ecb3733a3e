"""Linear-chain CRF: log-partition + marginals (T = 256 steps, S = 32 tags), float64 on
the CPU, side by side in one process on the same potentials:

* dplang: ``std.sequence.crf_log_partition`` (Viterbi under entropy smoothing),
  ``dp.value_and_grad`` (the gradient is the edge marginals) on the "cpu" backend;
* torch-struct's ``LinearChainCRF`` (``partition`` + autograd for the marginals);
* JAX: the forward algorithm with ``lax.scan`` and ``logsumexp``, ``jax.value_and_grad``.

Target (issue 5): dplang at least 2x faster than both.

Run:  python benchmarks/crf.py [--T 256] [--S 32]
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
from std.sequence import crf_log_partition
'''


def to_edges(theta):
    """Our theta[t, i, j] (tag j at t after tag i; theta[0, 0, :] the start scores) ->
    torch-struct's log_potentials[t - 1, j, i] with the start scores folded into t = 1."""
    lp = np.transpose(theta[1:], (0, 2, 1)).copy()
    lp[0] += theta[0, 0, :][None, :]
    return lp


def from_edges(g):
    """The gradient w.r.t. torch-struct's potentials -> the gradient w.r.t. our theta."""
    T, S = g.shape[0] + 1, g.shape[1]
    G = np.zeros((T, S, S))
    G[1:] = np.transpose(g, (0, 2, 1))
    G[0, 0, :] = g[0].sum(axis=0)
    return G


def torch_struct_version():
    import warnings

    import torch
    import torch_struct
    warnings.filterwarnings("ignore", category=UserWarning)

    def value(theta):
        with torch.no_grad():
            lp = torch.from_numpy(to_edges(theta))[None]
            return torch_struct.LinearChainCRF(lp).partition.item()

    def value_and_grad(theta):
        lp = torch.from_numpy(to_edges(theta))[None].requires_grad_(True)
        z = torch_struct.LinearChainCRF(lp).partition
        z.sum().backward()
        return z.item(), from_edges(lp.grad[0].numpy())
    return value, value_and_grad


def jax_version():
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp
    jax.config.update("jax_enable_x64", True)

    def logz(theta):
        def step(alpha, th):              # alpha[i]: log-sum of paths ending in tag i
            return logsumexp(alpha[:, None] + th, axis=0), None
        alpha, _ = jax.lax.scan(step, theta[0, 0, :], theta[1:])
        return logsumexp(alpha)
    v = jax.jit(logz)
    vg = jax.jit(jax.value_and_grad(logz))

    def value_and_grad(theta):
        z, g = jax.block_until_ready(vg(theta))
        return float(z), np.asarray(g)
    return lambda th: jax.block_until_ready(v(th)), value_and_grad


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--S", type=int, default=32)
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args(argv)
    mod = dp.compile(SRC, filename="crf_bench.dp", backend=args.backend)
    vg = dp.value_and_grad(mod.crf_log_partition)
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((args.T, args.S, args.S))
    z, G = vg(theta)
    t_v = best(mod.crf_log_partition, theta, repeat=5)
    t_vg = best(vg, theta, repeat=5)
    rows = [["dplang", fmt(t_v), fmt(t_vg), f"{t_vg / t_v:.2f}", "1.00", "-"]]
    for name, make in (("torch-struct", torch_struct_version), ("JAX", jax_version)):
        try:
            pv, pvg = make()
        except ImportError as e:
            print(f"({name} unavailable: {e}; pip install -e '.[bench]')")
            continue
        pz, pg = pvg(theta)
        err = max(abs(pz - z) / abs(z), np.abs(pg - G).max())
        tp_v, tp_vg = best(pv, theta, repeat=5), best(pvg, theta, repeat=5)
        rows.append([name, fmt(tp_v), fmt(tp_vg), f"{tp_vg / tp_v:.2f}",
                     f"{t_vg / tp_vg:.3f}", f"{err:.1e}"])
    print(f"machine: {machine()}; T = {args.T}, S = {args.S}, float64")
    table(rows, ["implementation", "log Z", "log Z + marginals", "ratio",
                 "dplang / this", "max diff to dplang"])


if __name__ == "__main__":
    main()
