"""A linear-chain CRF trained on a small synthetic tagging task.

The data come from a hidden Markov model: tags follow a "sticky" Markov chain (a tag
repeats with probability 0.8, moves on to the next tag with 0.15, back with 0.05), and
every step shows a noisy one-hot of its tag, ``x[t] = onehot(y[t]) + noise``.  Looking
at one step alone (the largest feature) is often wrong; the tags around it help, which a
CRF learns through its transition scores.

The model and its loss are written in dplang (``crf_tagging.dp``): the log-partition
function log Z is ``std.sequence.crf_log_partition``, the Viterbi recursion smoothed with
entropy (the forward algorithm), and ``dp.value_and_grad`` gives the gradient of the
negative log-likelihood with respect to all parameters in one reverse pass.  Training
is plain gradient descent; decoding is hard Viterbi (``std.sequence.viterbi_tags``).

Run it::

    python examples/crf_tagging.py

or from Python, with ``examples/`` on ``sys.path``::

    from crf_tagging import main
    result = main(n_train=30, iters=40)
    result.history, result.accuracy
"""
from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np

import dplang as dp

HERE = os.path.dirname(os.path.abspath(__file__))
_module = None


def program():
    """The compiled ``crf_tagging.dp`` (loaded once)."""
    global _module
    if _module is None:
        _module = dp.load(os.path.join(HERE, "crf_tagging.dp"))
    return _module


class HMM(NamedTuple):
    start: np.ndarray        # (S,)    P(y0 = j)
    transition: np.ndarray   # (S, S)  P(y_t = j | y_{t-1} = i)
    noise: float             # x[t] = onehot(y[t]) + noise * N(0, I)


def make_hmm(n_tags: int = 3, noise: float = 0.8) -> HMM:
    S = n_tags
    P = np.zeros((S, S))
    for i in range(S):
        P[i, i] += 0.8                 # stay
        P[i, (i + 1) % S] += 0.15      # move on to the next tag
        P[i, (i - 1) % S] += 0.05      # go back to the previous one
    return HMM(np.full(S, 1.0 / S), P, noise)


def sample(hmm: HMM, n_seq: int, length: int, rng: np.random.Generator):
    """``n_seq`` sentences: features X (n_seq, length, S) and tags Y (n_seq, length)."""
    S = len(hmm.start)
    Y = np.zeros((n_seq, length), dtype=np.int64)
    for k in range(n_seq):
        Y[k, 0] = rng.choice(S, p=hmm.start)
        for t in range(1, length):
            Y[k, t] = rng.choice(S, p=hmm.transition[Y[k, t - 1]])
    X = np.eye(S)[Y] + hmm.noise * rng.normal(size=(n_seq, length, S))
    return X, Y


def true_parameters(hmm: HMM):
    """The HMM written as CRF parameters (W, A, b): log P(y, x) = score(y) + a term
    that does not depend on y, so these decode as well as anything can."""
    S = len(hmm.start)
    return np.eye(S) / hmm.noise ** 2, np.log(hmm.transition), np.log(hmm.start)


def accuracy(params, X, Y) -> float:
    """Fraction of tags that hard Viterbi decoding with ``params`` gets right."""
    decode = program().decode
    return float(np.mean([np.mean(decode(*params, X[k]) == Y[k]) for k in range(len(X))]))


def loss_and_grad():
    """``(W, A, b, X, Y) -> (nll, (dW, dA, db))``."""
    return dp.value_and_grad(program().nll, wrt=("W", "A", "b"))


def train(X, Y, n_tags: int, iters: int, lr: float):
    """Gradient descent on the negative log-likelihood from W = A = b = 0."""
    value_and_grad = loss_and_grad()
    params = [np.zeros((n_tags, X.shape[2])), np.zeros((n_tags, n_tags)), np.zeros(n_tags)]
    history = []
    for _ in range(iters):
        loss, grads = value_and_grad(*params, X, Y)
        history.append(loss)
        params = [p - lr * g for p, g in zip(params, grads)]
    history.append(program().nll(*params, X, Y))
    return tuple(params), history


class CRFResult(NamedTuple):
    history: list                # mean NLL per tag before every step, and at the end
    accuracy: float              # the trained CRF, hard Viterbi, on held-out sentences
    baseline_accuracy: float     # per-step argmax of the features, same sentences
    oracle_accuracy: float       # hard Viterbi with the true HMM's parameters
    params: tuple                # (W, A, b)
    seconds: float               # training time


def main(n_train: int = 30, n_test: int = 200, length: int = 12, n_tags: int = 3,
         noise: float = 0.8, iters: int = 40, lr: float = 3.0, seed: int = 0,
         verbose: bool = False) -> CRFResult:
    """Train a CRF on ``n_train`` sentences and test it on ``n_test`` others."""
    rng = np.random.default_rng(seed)
    hmm = make_hmm(n_tags, noise)
    X_train, Y_train = sample(hmm, n_train, length, rng)
    X_test, Y_test = sample(hmm, n_test, length, rng)

    start = time.perf_counter()
    params, history = train(X_train, Y_train, n_tags, iters, lr)
    seconds = time.perf_counter() - start

    result = CRFResult(
        history=history,
        accuracy=accuracy(params, X_test, Y_test),
        baseline_accuracy=float(np.mean(X_test.argmax(axis=2) == Y_test)),
        oracle_accuracy=accuracy(true_parameters(hmm), X_test, Y_test),
        params=params,
        seconds=seconds)
    if verbose:
        report(result, n_train, n_test, length, n_tags)
    return result


def report(r: CRFResult, n_train, n_test, length, n_tags) -> None:
    W, A, b = r.params
    print(f"linear-chain CRF, {n_tags} tags, {n_train} training / {n_test} test "
          f"sentences of length {length}")
    print(f"  gradient descent: {len(r.history) - 1} steps in {r.seconds:.2f} s; "
          f"NLL per tag {r.history[0]:.4f} -> {r.history[-1]:.4f}")
    print(f"  test accuracy: CRF {r.accuracy:.3f}, "
          f"per-step argmax {r.baseline_accuracy:.3f}, "
          f"true HMM {r.oracle_accuracy:.3f}, chance {1 / n_tags:.3f}")
    print("  learned transition scores A[i, j] (tag i -> tag j):")
    for row in A:
        print("    " + " ".join(f"{a:6.2f}" for a in row))


if __name__ == "__main__":
    main(verbose=True)
