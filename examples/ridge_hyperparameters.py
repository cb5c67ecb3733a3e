"""Per-feature ridge penalties tuned by implicit differentiation.

A linear model is fitted to few, noisy training examples of which only some features
matter.  Its ridge penalty has one strength per feature, ``exp(log_lam)``; the best
strengths minimise the loss on held-out validation data, a function of ``log_lam``
through the fitted weights ``w(log_lam) = argmin_w train_objective``.  dplang gives its
gradient by implicit differentiation of that minimisation (``@argmin`` in
``ridge_hyperparameters.dp``): one conjugate-gradient solve with the training
objective's Hessian per gradient, whatever solver computed the weights.  Gradient
descent on ``log_lam``, started from the best single strength of a grid search, lowers
the validation loss well below it (0.196 -> 0.141 with the defaults) and leaves the
features that matter with the weakest penalties.

Run it::

    python examples/ridge_hyperparameters.py
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

import dplang as dp

HERE = os.path.dirname(os.path.abspath(__file__))
_module = None


def program():
    """The compiled ``ridge_hyperparameters.dp`` (loaded once)."""
    global _module
    if _module is None:
        _module = dp.load(os.path.join(HERE, "ridge_hyperparameters.dp"))
    return _module


def make_data(n_train=40, n_valid=200, d=12, relevant=4, noise=0.5, seed=0):
    """Training and validation data of a linear model with ``relevant`` nonzero weights."""
    rng = np.random.default_rng(seed)
    w = np.zeros(d)
    w[:relevant] = rng.normal(size=relevant) * 2.0
    X, Xv = rng.normal(size=(n_train, d)), rng.normal(size=(n_valid, d))
    y = X @ w + noise * rng.normal(size=n_train)
    yv = Xv @ w + noise * rng.normal(size=n_valid)
    return X, y, Xv, yv, w


class Result(NamedTuple):
    log_lam: np.ndarray         # the tuned per-feature strengths (log)
    history: list               # validation loss at each step
    best_single: float          # validation loss of the best single strength of a grid
    weights: np.ndarray         # the fitted weights at the tuned strengths
    true_weights: np.ndarray


def main(steps=60, seed=0, verbose=False) -> Result:
    X, y, Xv, yv, w_true = make_data(seed=seed)
    m = program()
    vg = dp.value_and_grad(m.validation_loss, wrt="log_lam")
    d = X.shape[1]
    grid = np.linspace(-6.0, 3.0, 37)
    losses = [m.validation_loss(np.full(d, g), X, y, Xv, yv) for g in grid]
    log_lam = np.full(d, grid[int(np.argmin(losses))])       # start from the grid's best
    # gradient descent with steps of length `size` along the gradient's direction: longer
    # after a step that lowered the loss, shorter (and undone) after one that did not
    value, grad = vg(log_lam, X, y, Xv, yv)
    history, size = [value], 1.0
    for step in range(steps):
        trial = log_lam - size * grad / max(np.linalg.norm(grad), 1e-300)
        v, g = vg(trial, X, y, Xv, yv)
        if v < value:
            log_lam, value, grad, size = trial, v, g, size * 1.5
            history.append(value)
        else:
            size *= 0.5
        if verbose and step % 10 == 0:
            print(f"step {step:3d}  validation loss {value:.5f}  step size {size:.3g}")
    return Result(log_lam, history, float(min(losses)), m.fit(X, y, log_lam), w_true)


if __name__ == "__main__":
    r = main(verbose=True)
    print(f"best single strength (grid): validation loss {r.best_single:.5f}")
    print(f"per-feature strengths (tuned): validation loss {r.history[-1]:.5f}")
    print("log strengths:", np.round(r.log_lam, 2))
    print("fitted weights:", np.round(r.weights, 2))
    print("true weights:  ", np.round(r.true_weights, 2))
