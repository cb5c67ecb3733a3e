"""Soft-DTW barycenter of a few time series (Cuturi & Blondel, ICML 2017).

Every series below is the same bump, shifted in time by a random amount, plus a little
noise.  Their Euclidean (pointwise) mean is a low, wide smear: it averages values at
equal times, although the bumps happen at different times.  A soft-DTW barycenter
averages *after* aligning: it minimises

    L(z) = 1/K sum_k soft_dtw(sqeuclidean(z, x_k), gamma)

and keeps the bump's shape.  The objective is written in dplang
(``softdtw_barycenter.dp``, on top of ``std.align``); ``dp.value_and_grad`` gives its
value and gradient in one reverse pass, and a small L-BFGS written in NumPy below
minimises it, starting from the Euclidean mean.

Run it::

    python examples/softdtw_barycenter.py

or from Python, with ``examples/`` on ``sys.path``::

    from softdtw_barycenter import main
    result = main(n_series=4, length=20, iters=20)
    result.barycenter, result.history
"""
from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

import numpy as np

import dplang as dp

HERE = os.path.dirname(os.path.abspath(__file__))
_module = None


def program():
    """The compiled ``softdtw_barycenter.dp`` (loaded once)."""
    global _module
    if _module is None:
        _module = dp.load(os.path.join(HERE, "softdtw_barycenter.dp"))
    return _module


def make_series(n_series: int, length: int, seed: int = 0, noise: float = 0.03):
    """``n_series`` series of shape ``(length, 1)``: one Gaussian bump at a random time."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, length)
    centers = rng.uniform(0.3, 0.7, size=n_series)
    X = np.exp(-(((t[None, :] - centers[:, None]) / 0.1) ** 2))
    X = X + noise * rng.normal(size=X.shape)
    return X[:, :, None]                       # (K, n, d) with d = 1


def objective(X: np.ndarray, gamma: float) -> Callable:
    """``z -> (L(z), dL/dz)``, the function the optimiser minimises."""
    value_and_grad = dp.value_and_grad(program().barycenter_loss, wrt="z")
    return lambda z: value_and_grad(z, X, gamma)


def lbfgs(fun: Callable, x0: np.ndarray, iters: int, memory: int = 5):
    """Minimise ``fun(x) -> (value, gradient)`` with L-BFGS and a backtracking (Armijo)
    line search.  Returns the last iterate and the value at every iterate."""
    x = np.array(x0, dtype=float)
    value, grad = fun(x)
    history = [value]
    steps, changes = [], []                    # s = x_new - x, y = g_new - g (flattened)
    for _ in range(iters):
        # two-loop recursion: d = -H g, H the inverse-Hessian estimate from (s, y) pairs
        q = grad.ravel().copy()
        alphas = []
        for s, y in reversed(list(zip(steps, changes))):
            alpha = (s @ q) / (y @ s)
            alphas.append(alpha)
            q -= alpha * y
        if steps:
            q *= (steps[-1] @ changes[-1]) / (changes[-1] @ changes[-1])
        for (s, y), alpha in zip(zip(steps, changes), reversed(alphas)):
            q += (alpha - (y @ q) / (y @ s)) * s
        direction = -q.reshape(x.shape)
        slope = np.sum(direction * grad)
        if slope >= 0:                         # not a descent direction: restart
            steps, changes = [], []
            direction, slope = -grad, -np.sum(grad * grad)
        if slope == 0:
            break                              # stationary point
        # backtracking: halve the step until the value decreases enough
        step = 1.0
        while True:
            x_new = x + step * direction
            value_new, grad_new = fun(x_new)
            if value_new <= value + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        if value_new > value:
            break                              # no progress possible (round-off level)
        s, y = (x_new - x).ravel(), (grad_new - grad).ravel()
        if s @ y > 1e-12:                      # keep the pair only if curvature is positive
            steps.append(s)
            changes.append(y)
            if len(steps) > memory:
                steps.pop(0)
                changes.pop(0)
        x, value, grad = x_new, value_new, grad_new
        history.append(value)
    return x, history


class BarycenterResult(NamedTuple):
    barycenter: np.ndarray        # (length, 1)
    history: list                 # L at the start point and after every iteration
    series: np.ndarray            # (n_series, length, 1), the data
    euclidean_mean: np.ndarray    # the start point
    gamma: float
    mean_dtw_start: float         # average hard DTW to the series, from the start point
    mean_dtw_end: float           # ... and from the barycenter
    seconds: float


def main(n_series: int = 4, length: int = 20, iters: int = 20, gamma: float = 0.05,
         seed: int = 0, verbose: bool = False) -> BarycenterResult:
    """Compute the soft-DTW barycenter of ``n_series`` random shifted bumps."""
    X = make_series(n_series, length, seed)
    z0 = X.mean(axis=0)                        # the Euclidean mean: where we start
    start = time.perf_counter()
    z, history = lbfgs(objective(X, gamma), z0, iters)
    seconds = time.perf_counter() - start
    mean_dtw = program().mean_dtw
    result = BarycenterResult(z, history, X, z0, gamma, mean_dtw(z0, X), mean_dtw(z, X),
                              seconds)
    if verbose:
        report(result)
    return result


def sparkline(v: np.ndarray) -> str:
    """A series as a line of characters, low to high (values clipped to [0, 1])."""
    levels = " .:-=+*#%@"
    idx = np.clip(np.round(np.asarray(v).ravel() * (len(levels) - 1)), 0, len(levels) - 1)
    return "".join(levels[int(i)] for i in idx)


def report(r: BarycenterResult) -> None:
    K, n, _ = r.series.shape
    print(f"soft-DTW barycenter of {K} series of length {n}, gamma = {r.gamma}")
    print(f"  L-BFGS: {len(r.history) - 1} iterations in {r.seconds:.2f} s; "
          f"objective {r.history[0]:.4f} -> {r.history[-1]:.4f}")
    print(f"  average hard DTW to the series: Euclidean mean {r.mean_dtw_start:.4f}, "
          f"barycenter {r.mean_dtw_end:.4f}")
    print(f"  peak height: series {np.mean(r.series.max(axis=1)):.2f} (average), "
          f"Euclidean mean {r.euclidean_mean.max():.2f}, "
          f"barycenter {r.barycenter.max():.2f}")
    for k in range(K):
        print(f"  series {k}        |{sparkline(r.series[k])}|")
    print(f"  Euclidean mean  |{sparkline(r.euclidean_mean)}|")
    print(f"  barycenter      |{sparkline(r.barycenter)}|")


if __name__ == "__main__":
    main(verbose=True)
