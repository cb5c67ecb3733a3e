"""Whole programs through the front end and the interpreter, against NumPy/Python
references written here."""
import os

import numpy as np
import pytest

import dplang as dp

HERE = os.path.dirname(__file__)
rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def ctl():
    return dp.load(os.path.join(HERE, "programs", "control.dp"), backend="interp")


def test_early_returns(ctl):
    def ref(x):
        if x > 0:
            return 2 * x
        elif x < -1:
            return -x
        return 0.5
    for x in (2.0, -3.0, -0.5, 0.0, -1.0):
        assert ctl.early(x) == ref(x)


def test_while_break(ctl):
    v = np.array([0.1, 0.5, 2.0, 3.0])
    assert ctl.find_first(v, 1.0) == 2
    assert ctl.find_first(v, 10.0) == 4
    assert ctl.find_first(v, -1.0) == 0
    assert isinstance(ctl.find_first(v, 1.0), int)


def test_return_inside_loop(ctl):
    assert ctl.loop_ret(np.array([1.0, -2.0, -3.0])) == -2.0
    assert ctl.loop_ret(np.array([1.0, 2.0])) == 1.0
    assert ctl.loop_ret(np.zeros(0)) == 1.0


def test_continue(ctl):
    for n in (0, 1, 10, 11):
        assert ctl.skip_odd(n) == sum(i for i in range(n) if i % 2 == 0)


def test_negative_step_and_promotion(ctl):
    v = rng.standard_normal(6)
    s = 0.0
    for i in range(5, -1, -1):
        s = s * 0.5 + v[i]
    assert ctl.accum(v) == pytest.approx(s, rel=1e-15)


def test_tuples_and_calls(ctl):
    v = rng.standard_normal(4)
    w = v.copy()
    w[0] = 6.0
    a, b = ctl.pair(v)
    assert a == pytest.approx(w.sum())
    np.testing.assert_array_equal(b, w)
    np.testing.assert_array_equal(v, v.copy())           # the argument is untouched
    assert ctl.use_pair(v) == pytest.approx(w.sum() + w[1])


def test_buffer_swap(ctl):
    prev, cur = np.zeros(3), np.ones(3)
    for _ in range(5):
        prev, cur = cur, prev
        cur[0] = cur[0] + 1.0
    assert ctl.swap(5) == cur[0] + 10 * prev[0]


def test_linear_algebra(ctl):
    A = rng.standard_normal((4, 4)) + 4 * np.eye(4)
    b = rng.standard_normal(4)
    ref = (A @ np.linalg.solve(A, b) + A.T @ b)[::-1]
    np.testing.assert_allclose(ctl.mat(A, b), ref, rtol=1e-13)


def test_chained_comparison_and_ifexp(ctl):
    assert ctl.chained(0.5) is True and ctl.chained(1.0) is False and ctl.chained(-0.1) is False
    assert ctl.ifexp(2.0, 1) == 2.0 and ctl.ifexp(2.0, 0) == -2.0 and ctl.ifexp(-2.0, 1) == 2.0


def test_newton_while(ctl):
    for a in (2.0, 9.0, 0.5):
        assert ctl.newton(a) == pytest.approx(np.sqrt(a), rel=1e-14)


def test_imports_across_modules():
    m = dp.load(os.path.join(HERE, "programs", "uses_import.dp"), backend="interp")
    a, b = rng.standard_normal(3), rng.standard_normal(5)
    M = np.outer(a, b) + 1.0
    ref = 0.5 * a.sum() + M.sum() + 0.5 * M[0].sum()
    assert m.total(a, b) == pytest.approx(ref, rel=1e-14)


EXAMPLES = os.path.join(HERE, "..", "examples")


def np_dtw(D):
    n, m = D.shape
    R = np.full((n + 1, m + 1), np.inf)
    R[0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]


def test_example_dtw():
    m = dp.load(os.path.join(EXAMPLES, "dtw.dp"), backend="interp")
    D = rng.random((7, 5))
    assert m.dtw(D) == pytest.approx(np_dtw(D), rel=1e-14)
    x, y = rng.standard_normal((6, 2)), rng.standard_normal((4, 2))
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(m.sqeuclidean(x, y), C, rtol=1e-14)
    assert m.dtw_series(x, y) == pytest.approx(np_dtw(C), rel=1e-14)


def np_viterbi(theta):
    T, S, _ = theta.shape
    V = np.zeros((T, S))
    B = np.zeros((T, S), dtype=int)
    V[0] = theta[0, 0]
    for t in range(1, T):
        sc = V[t - 1][:, None] + theta[t]
        B[t] = sc.argmax(0)
        V[t] = sc.max(0)
    path = np.zeros(T, dtype=int)
    path[-1] = V[-1].argmax()
    for t in range(T - 1, 0, -1):
        path[t - 1] = B[t, path[t]]
    return V[-1].max(), path


def test_example_viterbi():
    m = dp.load(os.path.join(EXAMPLES, "viterbi.dp"), backend="interp")
    theta = rng.standard_normal((8, 4, 4))
    best, path = np_viterbi(theta)
    assert m.viterbi(theta) == pytest.approx(best, rel=1e-14)
    np.testing.assert_array_equal(m.viterbi_path(theta), path)
    # the path's score is the best score
    score = theta[0, 0, path[0]] + sum(theta[t, path[t - 1], path[t]] for t in range(1, 8))
    assert score == pytest.approx(best, rel=1e-12)


def test_example_mlp():
    m = dp.load(os.path.join(EXAMPLES, "mlp.dp"), backend="interp")
    W1, b1 = rng.standard_normal((4, 3)), rng.standard_normal(4)
    W2, b2 = rng.standard_normal((2, 4)), rng.standard_normal(2)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    R = np.tanh(X @ W1.T + b1) @ W2.T + b2 - Y
    ref = (R ** 2).sum(1).mean()
    assert m.loss(W1, b1, W2, b2, X, Y) == pytest.approx(ref, rel=1e-13)
    assert m.loss_batched(W1, b1, W2, b2, X, Y) == pytest.approx(ref, rel=1e-13)
    np.testing.assert_allclose(m.mlp(W1, b1, W2, b2, X[0]), R[0] + Y[0], rtol=1e-13)


def test_verifier_accepts_every_lowered_program():
    from dplang.dsl.program import load_program
    from dplang.ir.verify import verify_program
    paths = [os.path.join(HERE, "programs", "control.dp"),
             os.path.join(HERE, "programs", "uses_import.dp")] + \
        [os.path.join(EXAMPLES, f) for f in sorted(os.listdir(EXAMPLES)) if f.endswith(".dp")]
    for p in paths:
        with open(p) as fh:
            prog = load_program(fh.read(), p)
        verify_program(prog, pass_name="lower")


def test_every_statement_form():
    m = dp.load(os.path.join(HERE, "programs", "statements.dp"), backend="interp")
    v = rng.standard_normal(4)

    def ref(v, k):
        x = 1.0
        w = v.copy()
        a = b = 2.0
        x += a
        x -= 0.5
        x *= b
        x /= 4.0
        w[0] = x
        w[1:] += 1.0
        w[-1] *= 2.0
        if k > 0:
            pass
        elif k == 0:
            x = -x
        else:
            x = 0.0
        return x + 3.0, w
    for k in (1, 0, -1):
        s, w = m.forms(v, k)
        rs, rw = ref(v, k)
        assert s == rs
        np.testing.assert_array_equal(w, rw)
