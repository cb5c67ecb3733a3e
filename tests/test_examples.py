"""The shipped examples (examples/softdtw_barycenter.py, examples/crf_tagging.py,
examples/ridge_hyperparameters.py) run on small sizes: they make progress, beat simple baselines, and the gradients they use
agree with central finite differences of the compiled values."""
from __future__ import annotations

import importlib.util
import itertools
import os

import numpy as np
import pytest

import dplang as dp

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bary():
    return load_example("softdtw_barycenter")


@pytest.fixture(scope="module")
def crf():
    return load_example("crf_tagging")


def fd_grad(f, x, h=1e-6):
    """Central differences of the scalar function f at the array x."""
    x = np.asarray(x, float)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        out[idx] = (f(x + e) - f(x - e)) / (2 * h)
    return out


def assert_close(a, b, rtol):
    scale = max(np.max(np.abs(b)), 1e-300)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------------
# soft-DTW barycenter

def test_barycenter_gradient_matches_finite_differences(bary):
    X = bary.make_series(3, 12, seed=0)
    gamma = 0.05
    z0 = X.mean(axis=0)                                   # main()'s start point
    value, grad = bary.objective(X, gamma)(z0)           # what the optimiser uses
    loss = bary.program().barycenter_loss
    assert value == pytest.approx(loss(z0, X, gamma), rel=1e-12)
    assert grad.shape == z0.shape and np.all(np.isfinite(grad))
    assert np.max(np.abs(grad)) > 1e-3                   # not trivially zero
    assert_close(grad, fd_grad(lambda z: loss(z, X, gamma), z0), rtol=1e-6)


def test_barycenter_objective_decreases(bary):
    r = bary.main(n_series=3, length=12, iters=10, gamma=0.05, seed=0)
    h = np.asarray(r.history)
    assert len(h) >= 6 and np.all(np.isfinite(h)) and np.all(np.isfinite(r.barycenter))
    assert h[0] == pytest.approx(bary.program().barycenter_loss(r.euclidean_mean, r.series,
                                                                r.gamma), rel=1e-12)
    assert np.all(np.diff(h) <= 1e-12)                   # line search: never goes up
    assert h[0] - h[-1] > 0.1                            # ~0.24 with these settings
    # without smoothing too: the barycenter is much closer to the series than the
    # Euclidean mean (in average hard DTW), and keeps the bump's height
    assert r.mean_dtw_end < 0.5 * r.mean_dtw_start
    assert r.barycenter.max() > r.euclidean_mean.max() + 0.15


# ----------------------------------------------------------------------------------
# linear-chain CRF

def brute_force_nll(W, A, b, X, Y):
    """Mean negative log-likelihood per tag, by enumerating every tag sequence."""
    N, T, _ = X.shape
    S = len(b)

    def score(x, y):
        E = x @ W.T
        return b[y[0]] + sum(E[t, y[t]] for t in range(T)) + sum(
            A[y[t - 1], y[t]] for t in range(1, T))

    total = 0.0
    for x, y in zip(X, Y):
        scores = np.array([score(x, ys) for ys in itertools.product(range(S), repeat=T)])
        log_z = scores.max() + np.log(np.sum(np.exp(scores - scores.max())))
        total += log_z - score(x, y)
    return total / (N * T)


def random_crf_problem(crf, seed=1, n_seq=3, length=4, n_tags=3):
    rng = np.random.default_rng(seed)
    X, Y = crf.sample(crf.make_hmm(n_tags), n_seq, length, rng)
    params = (rng.normal(size=(n_tags, n_tags)), rng.normal(size=(n_tags, n_tags)),
              rng.normal(size=n_tags))
    return params, X, Y


def test_crf_loss_is_the_negative_log_likelihood(crf):
    (W, A, b), X, Y = random_crf_problem(crf)
    nll = crf.program().nll(W, A, b, X, Y)
    assert nll == pytest.approx(brute_force_nll(W, A, b, X, Y), rel=1e-10)


def test_crf_gradient_matches_finite_differences(crf):
    params, X, Y = random_crf_problem(crf)
    value, grads = crf.loss_and_grad()(*params, X, Y)    # what train() uses
    nll = crf.program().nll
    assert value == pytest.approx(nll(*params, X, Y), rel=1e-12)
    assert len(grads) == 3
    for k, (p, g) in enumerate(zip(params, grads)):
        def f(q, k=k):
            args = list(params)
            args[k] = q
            return nll(*args, X, Y)
        assert g.shape == p.shape and np.max(np.abs(g)) > 1e-3
        assert_close(g, fd_grad(f, p), rtol=1e-6)


def test_crf_training_learns_the_tagging(crf):
    r = crf.main(n_train=20, n_test=100, length=10, n_tags=3, iters=25, seed=0)
    h = np.asarray(r.history)
    assert len(h) == 26 and np.all(np.isfinite(h))
    assert h[0] == pytest.approx(np.log(3), rel=1e-12)  # the uniform model W = A = b = 0
    assert np.all(np.diff(h) < 0)                        # every step helps
    assert h[-1] < 0.6 * h[0]                            # ~0.39 / 1.10 with these settings
    # hard Viterbi with the learned model, on held-out sentences
    assert r.accuracy > 1 / 3 + 0.3                      # chance is 1/3
    assert r.accuracy > r.baseline_accuracy + 0.03       # context helps (~0.785 vs ~0.685)
    assert r.accuracy > r.oracle_accuracy - 0.05         # close to the true HMM (~0.80)
    # the learned transitions prefer staying, as the data do
    W, A, b = r.params
    assert np.all(np.diag(A) > A.max(axis=1) - 1e-12)


# ----------------------------------------------------------------------------------
# ridge penalties tuned by implicit differentiation

@pytest.fixture(scope="module")
def ridge():
    return load_example("ridge_hyperparameters")


def test_ridge_validation_gradient_matches_finite_differences(ridge):
    """The gradient through @argmin (implicit differentiation) against central
    differences of the compiled validation loss, and against the closed form
    dL/dlog_lam = -lam * w * (H^-1 dL/dw) with H the training objective's Hessian."""
    X, y, Xv, yv, _ = ridge.make_data(seed=3)
    m = ridge.program()
    log_lam = np.random.default_rng(3).normal(size=X.shape[1]) - 1.0
    value, grad = dp.value_and_grad(m.validation_loss, wrt="log_lam")(log_lam, X, y, Xv, yv)
    assert value == pytest.approx(m.validation_loss(log_lam, X, y, Xv, yv), rel=1e-12)
    assert_close(grad, fd_grad(lambda a: m.validation_loss(a, X, y, Xv, yv), log_lam),
                 rtol=1e-6)
    lam = np.exp(log_lam)
    H = X.T @ X / len(y) + np.diag(lam)
    w = np.linalg.solve(H, X.T @ y / len(y))
    dw = Xv.T @ (Xv @ w - yv) / len(yv)
    assert_close(grad, -lam * w * np.linalg.solve(H, dw), rtol=1e-9)


def test_ridge_tuning_beats_the_best_single_strength(ridge):
    r = ridge.main(steps=40, seed=0)
    h = np.asarray(r.history)
    assert np.all(np.diff(h) < 0) and len(h) >= 10
    assert h[0] == pytest.approx(r.best_single, rel=1e-12)   # starts at the grid's best
    assert h[-1] < 0.8 * r.best_single
    relevant = r.true_weights != 0
    assert r.log_lam[relevant].mean() < r.log_lam[~relevant].mean() - 1.0
