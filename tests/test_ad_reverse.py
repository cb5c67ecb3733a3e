"""Reverse mode (passes/ad_reverse.py) and its compositions, on the interpreter:
gradients against central finite differences, the dot-product test between forward and
reverse mode, Hessian-vector products and grad(grad(f)) against finite differences of
the gradient, the tape of a DP recursion, in-program transformations and errors."""
import os

import numpy as np
import pytest

import dplang as dp
from dplang.backends import interp

HERE = os.path.dirname(__file__)
EX = os.path.join(HERE, "..", "examples")
rng = np.random.default_rng(11)
EPS = 1e-6

SRC = open(os.path.join(EX, "dtw.dp")).read() + '''
def newton(a: f64) -> f64:
    x = a
    while abs(x * x - a) > 1e-13:
        x = x - (x * x - a) / (2.0 * x)
    return x

def newton_sum(a: f64[n]) -> f64:
    return sum(a * a) * newton(a[0] * a[0] + 1.0)

def branchy(x: f64, k: i64) -> f64:
    y = 0.0
    for i in range(k):
        if x > 1.0:
            y = y + x * x
        else:
            y = y - exp(x)
            continue
        y = y * 0.5
    return y

def early(x: f64[n]) -> f64:
    s = 0.0
    for i in range(n):
        if x[i] < 0.0:
            return s * x[i]
        s += x[i] * x[i]
    return s

def overwrite(x: f64[n]) -> f64:
    a = zeros(2)
    for i in range(n):
        a[0] = a[0] * 0.9 + sin(x[i]) * a[1]
        a[1] = a[0] + x[i]
    return a[0] * a[1]

def steps(x: f64[n]) -> f64:
    s = 0.0
    for i in range(1, n, 2):
        s = s + x[i] * x[i - 1]
    for i in range(n - 1, -1, -3):
        s = s * 0.5 + cos(x[i])
    return s

def band(D: f64[n, m], w: i64) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if abs(i - j) <= w:
                R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

def rows(A: f64[n, m], v: f64[m]) -> f64:
    B = zeros((n, m))
    for i in range(n):
        B[i, :] = tanh(A[i, :] * v)
        if i > 0:
            B[i, :] = B[i, :] + B[i - 1, :] * 0.5
    return sum(B * B)

def pair(x: f64, y: f64[n]) -> (f64, f64[n]):
    return x * sum(y), exp(y) * x

def chain(x: f64[n], y: f64[n]) -> f64:
    a, b = pair(x[0], y)
    return a * a + sum(b * x)

def matrix(A: f64[n, n], b: f64[n]) -> f64:
    M = A @ A.T + eye(n)
    x = solve(M, b)
    return logsumexp(x) + dot(x, M @ x) / 2.0

def heat(u: f64[n], c: f64) -> f64:
    k = 0
    while k < 5:
        v = u * 1.0
        for i in range(1, n - 1):
            v[i] = u[i] + c * (u[i - 1] - 2.0 * u[i] + u[i + 1])
        u = v
        k += 1
    return sum(u * u)
'''

MLP = open(os.path.join(EX, "mlp.dp")).read()
VIT = open(os.path.join(EX, "viterbi.dp")).read()


@pytest.fixture(scope="module")
def mod():
    return dp.compile(SRC, filename="rev.dp")


@pytest.fixture(scope="module")
def mlp():
    return dp.compile(MLP, filename="mlp.dp")


def fd_dir(f, args, k, u):
    a1, a2 = list(args), list(args)
    a1[k] = args[k] + EPS * u
    a2[k] = args[k] - EPS * u
    return (f(*a1) - f(*a2)) / (2 * EPS)


def like(a):
    return rng.standard_normal(np.shape(a)) if np.ndim(a) else float(rng.standard_normal())


def check_grad(f, args, wrt, rel=1e-6):
    """grad against finite differences along random directions, value_and_grad, and the
    dot-product test between dp.jvp and dp.vjp."""
    g = dp.grad(f, wrt=wrt)(*args)
    val, g2 = dp.value_and_grad(f, wrt=wrt)(*args)
    assert val == f(*args)
    for k in wrt:
        np.testing.assert_allclose(g2[wrt.index(k)], g[wrt.index(k)], rtol=1e-14, atol=0)
    for k, gk in zip(wrt, g):
        u = like(args[k])
        want = fd_dir(f, args, k, u)
        assert np.sum(gk * u) == pytest.approx(want, rel=rel, abs=1e-8)
    us = [like(args[k]) for k in wrt]
    _, tan = dp.jvp(f, wrt=wrt)(*args, *us)
    w = 0.7
    _, cot = dp.vjp(f, wrt=wrt)(*args, w)
    lhs = w * tan
    rhs = sum(np.sum(c * u) for c, u in zip(cot, us))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-12)


CASES = {
    "dtw": lambda: [rng.random((5, 6))],
    "dtw_series": lambda: [rng.standard_normal((4, 2)), rng.standard_normal((5, 2))],
    "newton_sum": lambda: [rng.random(3) + 0.5],
    "early": lambda: [np.array([0.5, 1.0, -2.0, 3.0])],
    "overwrite": lambda: [rng.standard_normal(25)],
    "steps": lambda: [rng.standard_normal(9)],
    "rows": lambda: [rng.standard_normal((4, 3)), rng.standard_normal(3)],
    "chain": lambda: [rng.standard_normal(3), rng.standard_normal(3)],
    "matrix": lambda: [rng.standard_normal((4, 4)), rng.standard_normal(4)],
    "heat": lambda: [rng.standard_normal(7), 0.2],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reverse_against_fd_and_forward(mod, name):
    f = getattr(mod, name)
    args = CASES[name]()
    wrt = tuple(k for k, a in enumerate(args))
    check_grad(f, args, wrt)


def test_early_return_both_paths(mod):
    for x in (np.array([0.5, 1.0, -2.0, 3.0]), np.array([0.5, 1.0, 2.0])):
        check_grad(mod.early, [x], (0,))


@pytest.mark.parametrize("x", [0.5, 1.5])
def test_if_continue(mod, x):
    g = dp.grad(mod.branchy)(x, 4)
    assert g == pytest.approx(fd_dir(mod.branchy, [x, 4], 0, 1.0), rel=1e-6)


def test_band_with_inf_cells(mod):
    D = rng.random((6, 6))
    g = dp.grad(mod.band)(D, 1)
    U = rng.standard_normal(D.shape)
    assert np.sum(g * U) == pytest.approx(fd_dir(mod.band, [D, 1], 0, U), rel=1e-6)
    assert np.all(g[np.abs(np.subtract.outer(np.arange(6), np.arange(6))) > 1] == 0)


def test_newton_while_matches_analytic(mod):
    for a in (2.0, 5.0):
        assert dp.grad(mod.newton)(a) == pytest.approx(0.5 / np.sqrt(a), rel=1e-10)
        v, g = dp.value_and_grad(mod.newton)(a)
        assert v == pytest.approx(np.sqrt(a), rel=1e-14)
        # d2/da2 sqrt(a) = -1/4 a^-3/2
        assert dp.grad(dp.grad(mod.newton))(a) == pytest.approx(-0.25 * a ** -1.5, rel=1e-8)


def test_hard_dtw_gradient_is_the_alignment(mod):
    # the gradient of hard DTW is the 0/1 matrix of the optimal alignment path
    D = rng.random((5, 7))
    G = dp.grad(mod.dtw)(D)
    assert set(np.unique(G)) <= {0.0, 1.0}
    assert G[0, 0] == 1 and G[-1, -1] == 1
    assert np.sum(G * D) == pytest.approx(mod.dtw(D), rel=1e-14)


def test_wrt_by_name_and_tuple(mod):
    x, y = rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    gx = dp.grad(mod.dtw_series, wrt="x")(x, y)
    gy = dp.grad(mod.dtw_series, wrt=1)(x, y)
    gxy = dp.grad(mod.dtw_series, wrt=("x", "y"))(x, y)
    np.testing.assert_array_equal(gxy[0], gx)
    np.testing.assert_array_equal(gxy[1], gy)
    single = dp.grad(mod.dtw_series, wrt=("y",))(x, y)
    assert isinstance(single, tuple) and len(single) == 1


def test_vjp_of_tuple_results(mod):
    x, y = 0.7, rng.standard_normal(4)
    (a, b), (gx, gy) = dp.vjp(mod.pair, wrt=(0, 1))(x, y, 1.5, np.ones(4) * 0.5)
    assert a == pytest.approx(x * y.sum())
    assert gx == pytest.approx(1.5 * y.sum() + 0.5 * np.sum(np.exp(y)))
    np.testing.assert_allclose(gy, 1.5 * x + 0.5 * np.exp(y) * x, rtol=1e-14)


# ------------------------------------------------------------------- the MLP loss
def mlp_args(d=3, h=5, o=2, N=6):
    return [rng.standard_normal((h, d)), rng.standard_normal(h), rng.standard_normal((o, h)),
            rng.standard_normal(o), rng.standard_normal((N, d)), rng.standard_normal((N, o))]


@pytest.mark.parametrize("name", ["loss", "loss_batched"])
def test_mlp_loss(mlp, name):
    args = mlp_args()
    check_grad(getattr(mlp, name), args, (0, 1, 2, 3))


def test_mlp_loop_and_batched_gradients_agree(mlp):
    args = mlp_args()
    g1 = dp.grad(mlp.loss, wrt=(0, 1, 2, 3))(*args)
    g2 = dp.grad(mlp.loss_batched, wrt=(0, 1, 2, 3))(*args)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------- second order
def hess_fd(f, args, k, v):
    g = dp.grad(f, wrt=k)
    a1, a2 = list(args), list(args)
    a1[k] = args[k] + EPS * v
    a2[k] = args[k] - EPS * v
    return (g(*a1) - g(*a2)) / (2 * EPS)


@pytest.mark.parametrize("name", ["dtw_series", "rows", "matrix", "overwrite", "heat",
                                  "newton_sum"])
def test_hvp_against_fd_of_grad(mod, name):
    f = getattr(mod, name)
    args = CASES[name]()
    v = like(args[0])
    hv = dp.hvp(f)(*args, v)
    np.testing.assert_allclose(hv, hess_fd(f, args, 0, v), rtol=1e-5, atol=1e-6)


def test_mlp_hvp(mlp):
    args = mlp_args()
    v = like(args[0])
    np.testing.assert_allclose(dp.hvp(mlp.loss)(*args, v), hess_fd(mlp.loss, args, 0, v),
                               rtol=1e-5, atol=1e-7)


def test_grad_of_grad_reverse_over_reverse():
    m = dp.compile('''
def f(x: f64) -> f64:
    s = x
    A = zeros(4)
    for i in range(4):
        A[i] = sin(s) * x
        s = s + A[i] * 0.3
    return s * A[3]
''')
    for x in (0.3, 1.2):
        g2 = dp.grad(dp.grad(m.f))(x)
        gfd = (dp.grad(m.f)(x + EPS) - dp.grad(m.f)(x - EPS)) / (2 * EPS)
        assert g2 == pytest.approx(gfd, rel=1e-6)
        # the same second derivative forward over reverse
        _, h = dp.jvp(dp.grad(m.f))(x, 1.0)
        assert h == pytest.approx(g2, rel=1e-12)


def test_third_order():
    m = dp.compile('''
def f(x: f64) -> f64:
    y = x
    for i in range(3):
        y = y * x + sin(y)
    return y
''')
    x = 0.4
    g3 = dp.grad(dp.grad(dp.grad(m.f)))(x)
    g2 = dp.grad(dp.grad(m.f))
    assert g3 == pytest.approx((g2(x + 1e-5) - g2(x - 1e-5)) / 2e-5, rel=1e-5)


# ------------------------------------------------------------------- the tape
DTW_TAPE = '''
def dtw(D: f64[n, m]) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]
'''


def test_dtw_table_is_the_tape():
    """Reverse mode of a DTW recursion keeps nothing but the table: every cell is written
    once and read only after it was written, so the final table answers every read of
    the reverse sweep; no copy of the table per iteration, no tape at all."""
    g = dp.grad(dp.compile(DTW_TAPE, backend="interp").dtw)     # interp counts the tape
    for n, m in ((6, 7), (12, 14)):
        D = rng.random((n, m))
        G = g(D)
        assert interp.LAST_RUN.tape_pushes == 0
        U = rng.standard_normal(D.shape)
        f = dp.compile(DTW_TAPE, backend="interp").dtw
        assert np.sum(G * U) == pytest.approx(fd_dir(f, [D], 0, U), rel=1e-6)
    assert "tape" not in g.ir()


LOOKAHEAD = '''
def ahead(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 2))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = sin(D[i - 1, j - 1] + R[i - 1, j + 1]) + 0.5 * R[i, j + 1] * R[i, j - 1]
    return sum(R * R)


def diag(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 2))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = cos(D[i - 1, j - 1] * R[i - 1, j + 1]) + R[i, j - 1] * 0.3
    return sum(R)
'''


def test_read_before_write_keeps_old_values():
    """A read of a cell the nest writes later (R[i, j + 1]) is not a write-once table:
    the forward sweep keeps the old value of each cell (n*m scalars) and restores it.
    Reads that look back, even to the next column of the previous row (R[i - 1, j + 1]),
    keep the write-once table: no tape."""
    m = dp.compile(LOOKAHEAD, backend="interp")
    for name, pushes in (("ahead", lambda n, mm: n * mm), ("diag", lambda n, mm: 0)):
        f = getattr(m, name)
        D = rng.standard_normal((5, 6)) * 0.5
        G = dp.grad(f)(D)
        # everything else (sin's argument, the reads) is re-read from the restored table
        assert interp.LAST_RUN.tape_pushes == pushes(5, 6)
        U = rng.standard_normal(D.shape)
        assert np.sum(G * U) == pytest.approx(fd_dir(f, [D], 0, U), rel=1e-6)


BACKWARDS = '''
def back(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 1))
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            R[i, j] = sin(D[i, j] + R[i + 1, j + 1]) + 0.5 * R[i + 1, j] * R[i, j + 1]
    return sum(R * R)

def back_ahead(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 1))
    for i in range(n - 1, 0, -1):
        for j in range(m - 1, -1, -1):
            R[i, j] = sin(D[i, j] + R[i - 1, j]) + 0.5 * R[i, j + 1]
    return sum(R * R)

def mixed(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 2))
    for i in range(1, n + 1):
        for j in range(m, 0, -1):
            R[i, j] = cos(D[i - 1, j - 1] * R[i - 1, j - 1]) + 0.3 * R[i, j + 1]
    return sum(R)

def mixed_ahead(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 2))
    for i in range(1, n + 1):
        for j in range(m, 0, -1):
            R[i, j] = cos(D[i - 1, j - 1] * R[i - 1, j]) + 0.3 * R[i, j - 1]
    return sum(R)

@smooth(entropy, gamma=gamma)
def soft_back(D: f64[n, m], gamma: f64) -> f64:
    R = full((n + 1, m + 1), inf)
    R[n, m] = 0.0
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            R[i, j] = D[i, j] + min(R[i + 1, j + 1], R[i + 1, j], R[i, j + 1])
    return R[0, 0]
'''


def test_nests_that_run_backwards_keep_write_once_tables():
    """A descending loop's earlier iterations are its higher indices: reads of R[i + 1,
    j] and R[i, j + 1] there look back (no old values taped), reads of R[i - 1, j] or,
    with the inner loop descending, R[i, j - 1] do not (one old value per write).  The
    gradient agrees with finite differences either way."""
    m = dp.compile(BACKWARDS, backend="interp")
    for name, pushes in (("back", lambda n, mm: 0), ("back_ahead", lambda n, mm: (n - 1) * mm),
                         ("mixed", lambda n, mm: 0), ("mixed_ahead", lambda n, mm: n * mm)):
        f = getattr(m, name)
        D = rng.standard_normal((5, 6)) * 0.5
        G = dp.grad(f)(D)
        assert interp.LAST_RUN.tape_pushes == pushes(5, 6), name
        U = rng.standard_normal(D.shape)
        assert np.sum(G * U) == pytest.approx(fd_dir(f, [D], 0, U), rel=1e-6)


def test_tapes_of_backward_nests_have_their_capacity():
    """The inner loop's bound of a descending nest (m - 1) is computed in the outer
    loop's body: the tapes are still allocated once, with the product of the trip counts
    (no growable tape), three of them (the soft-min's weights; the table is write-once)."""
    m = dp.compile(BACKWARDS, backend="interp")
    ir = dp.value_and_grad(m.soft_back).ir()
    assert ir.count("tape_new(") == 3 and "tape_new()" not in ir
    D = rng.random((6, 4))
    _, g = dp.value_and_grad(m.soft_back)(D, 0.4)
    U = rng.standard_normal(D.shape)
    assert np.sum(g * U) == pytest.approx(fd_dir(lambda x: m.soft_back(x, 0.4), [D], 0, U),
                                          rel=1e-6)


def test_overwritten_cell_keeps_old_values():
    # a[0] and a[1] are overwritten every iteration: their old values are on the tape
    mod = dp.compile(SRC, filename="rev.dp", backend="interp")
    x = rng.standard_normal(40)
    g = dp.grad(mod.overwrite)(x)
    run = interp.LAST_RUN
    assert run.tape_pushes <= 4 * 40
    u = like(x)
    assert np.sum(g * u) == pytest.approx(fd_dir(mod.overwrite, [x], 0, u), rel=1e-6)


# ------------------------------------------------------------------- in-program transforms
INPROG = '''
def f(x: f64[n], c: f64) -> f64:
    return sum(sin(x) * c) + c * c

def g(x: f64[n], c: f64) -> f64[n]:
    return grad(f)(x, c)

def both(x: f64[n], c: f64) -> (f64, f64[n], f64):
    v, gx, gc = value_and_grad(f, wrt=(0, 1))(x, c)
    return v, gx, gc

def dir(x: f64[n], c: f64, u: f64[n]) -> f64:
    v, t = jvp(f)(x, c, u)
    return t

def back(x: f64[n], c: f64) -> f64[n]:
    v, gx = vjp(f)(x, c, 2.0)
    return gx

def second(c: f64) -> f64:
    return grad(grad(h))(c)

def h(c: f64) -> f64:
    return c * c * c

def descend(x: f64[n], c: f64) -> f64[n]:
    for k in range(3):
        x = x - 0.1 * grad(f)(x, c)
    return x
'''


def test_in_program_transformations():
    m = dp.compile(INPROG, filename="inprog.dp")
    x, c = rng.standard_normal(4), 0.7
    np.testing.assert_allclose(m.g(x, c), np.cos(x) * c, rtol=1e-14)
    v, gx, gc = m.both(x, c)
    assert v == pytest.approx(m.f(x, c), rel=1e-15)
    assert gc == pytest.approx(np.sum(np.sin(x)) + 2 * c, rel=1e-14)
    u = rng.standard_normal(4)
    assert m.dir(x, c, u) == pytest.approx(np.sum(np.cos(x) * c * u), rel=1e-14)
    np.testing.assert_allclose(m.back(x, c), 2 * np.cos(x) * c, rtol=1e-14)
    assert m.second(1.5) == pytest.approx(9.0, rel=1e-14)
    want = x.copy()
    for _ in range(3):
        want = want - 0.1 * np.cos(want) * c
    np.testing.assert_allclose(m.descend(x, c), want, rtol=1e-14)
    # and the derivative of a program that itself takes a gradient
    gg = dp.grad(m.second)(1.5)
    assert gg == pytest.approx(6.0, rel=1e-12)
    assert "grad_" in m.g.ir("ad") or "grad_" in m.ir("ad")


# ------------------------------------------------------------------- readability
def test_derivative_ir_points_to_primal_lines(mod):
    text = dp.grad(mod.overwrite).ir()
    assert "tape_pop" in text
    # every op line carries a comment with the primal file and line
    lines = [ln for ln in text.splitlines() if "=" in ln and "func" not in ln]
    assert lines and all("# " in ln for ln in lines)
    assert "rev.dp:" in text or "dtw.dp:" in text or ".dp:" in text


# ------------------------------------------------------------------- errors
def test_errors(mod):
    with pytest.raises(dp.DPTypeError, match="one float scalar result"):
        dp.grad(mod.pair)
    with pytest.raises(dp.DPTypeError, match="not a float"):
        dp.grad(mod.branchy, wrt=1)
    with pytest.raises(dp.DPTypeError, match="no parameter named 'q'"):
        dp.grad(mod.dtw, wrt="q")
    with pytest.raises(dp.DPTypeError, match="has 1 parameter"):
        dp.grad(mod.dtw, wrt=3)


def test_in_program_errors_are_located():
    bad = '''
def f(x: f64[n]) -> f64[n]:
    return x * 2.0

def g(x: f64[n]) -> f64[n]:
    return grad(f)(x)
'''
    with pytest.raises(dp.DPTypeError) as e:
        dp.compile(bad, filename="bad.dp")
    assert "bad.dp:6:" in str(e.value) and "one float scalar result" in str(e.value)
    bad2 = '''
def f(x: f64, k: i64) -> f64:
    return x * k

def g(x: f64) -> f64:
    return grad(f, wrt="k")(x, 2)
'''
    with pytest.raises(dp.DPTypeError) as e:
        dp.compile(bad2, filename="bad2.dp")
    assert "bad2.dp:6:" in str(e.value) and "not a float" in str(e.value)


def test_derived_programs_pass_the_verifier(mod):
    from dplang.ir.verify import verify_program
    for d in (dp.grad(mod.dtw), dp.grad(mod.heat, wrt=(0, 1)), dp.hvp(mod.overwrite),
              dp.vjp(mod.pair, wrt=(0, 1)), dp.grad(dp.grad(mod.newton)),
              dp.value_and_grad(mod.band)):
        verify_program(d.program, pass_name="ad")


def test_table_rewritten_by_an_enclosing_loop():
    """The inner nest looks like a write-once table, but the outer loop runs it again on
    the same array: the old values must still be saved and restored."""
    m = dp.compile('''
def again(x: f64[n]) -> f64:
    R = zeros(n)
    for k in range(3):
        for i in range(1, n):
            R[i] = sin(R[i - 1] + x[i] * (k + 1))
    return sum(R * x)
''', backend="interp")
    x = rng.standard_normal(6)
    g = dp.grad(m.again)(x)
    assert interp.LAST_RUN.tape_pushes >= 3 * 5      # one old value per write
    u = rng.standard_normal(6)
    assert np.sum(g * u) == pytest.approx(fd_dir(m.again, [x], 0, u), rel=1e-6)


def test_row_recursion_keeps_no_old_rows():
    """V[t, :] = max(theta[t].T + V[t - 1, :], axis=1) writes one row per step and reads
    the previous one: the table is its own tape (no old rows saved); only the operand of
    each step's max is taped, for its derivative."""
    m = dp.compile('''
def vit(theta: f64[T, S, S]) -> f64:
    V = zeros((T, S))
    V[0, :] = theta[0, 0, :]
    for t in range(1, T):
        V[t, :] = max(theta[t, :, :].T + V[t - 1, :], axis=1)
    return max(V[T - 1, :])
''', backend="interp")
    sm = dp.smooth(m.vit, "entropy")
    theta = rng.standard_normal((6, 3, 3))
    g = dp.grad(sm)(theta, 0.7)
    assert interp.LAST_RUN.tape_pushes == 5
    U = rng.standard_normal(theta.shape)
    assert np.sum(g * U) == pytest.approx(fd_dir(lambda th: sm(th, 0.7), [theta], 0, U),
                                          rel=1e-6)


CELL = '''
@smooth(entropy, gamma=g)
def cell(x: f64[3], g: f64) -> f64:
    s = 0.0
    for k in range(2):
        s = s + min(x[0], x[1], x[2]) * (k + 1.0) + max(x[0], x[1], x[2])
    return s
'''


@pytest.mark.parametrize("x", [[0.3, -1.2, 2.0], [1.0, 1.0, 5.0], [np.inf, 0.5, np.inf],
                               [np.inf, np.inf, np.inf], [-np.inf, 2.0, 100.0],
                               [100.0, 100.0 + 1e-9, 250.0]])
@pytest.mark.parametrize("g", [1.0, 1e-8])
def test_taped_partials_of_soft_cells_match_the_rules(x, g):
    """Soft cells in a loop take their partials from Primitive.residuals (taped weights);
    the gradient must equal forward mode's, which uses the primitives' JVP rules, with
    infinite entries and tiny temperatures, and contain no NaN."""
    m = dp.compile(CELL, backend="interp")
    x = np.array(x)
    assert "tape_push" in dp.grad(m.cell).ir()
    gr = dp.grad(m.cell)(x, g)
    assert np.all(np.isfinite(gr))
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1.0
        _, t = dp.jvp(m.cell)(x, g, e)
        assert gr[k] == pytest.approx(t, rel=1e-12, abs=1e-300)


def test_transforms_of_jitted_functions_before_the_first_call():
    @dp.jit
    def sq(x):
        return np.sum(x * x)

    g = dp.grad(sq)
    with pytest.raises(dp.DPError, match="has not been called yet"):
        g.ir()
    np.testing.assert_allclose(g(np.array([1.0, -2.0])), [2.0, -4.0])
    assert "grad_" in g.ir()
    with pytest.raises(TypeError, match="compiled dplang function"):
        dp.grad(lambda x: x)
