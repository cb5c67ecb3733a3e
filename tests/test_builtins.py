"""Every built-in of SPEC 1.6 called from a program, against NumPy: broadcasting,
axis=, negative indices, slices, constructors, and the NumPy spellings."""
import numpy as np
import pytest

import dplang as dp

rng = np.random.default_rng(3)
x3 = rng.standard_normal(3)
x4 = rng.standard_normal(4)
pos4 = rng.random(4) + 0.1
M34 = rng.standard_normal((3, 4))
M43 = rng.standard_normal((4, 3))
S33 = rng.standard_normal((3, 3)) + 3 * np.eye(3)

# (name, source of the function body's signature and return, args, numpy reference)
CASES = [
    ("exp", "(x: f64[n]) -> f64[n]", "exp(x)", (x4,), lambda x: np.exp(x)),
    ("log", "(x: f64[n]) -> f64[n]", "log(x)", (pos4,), np.log),
    ("log1p", "(x: f64[n]) -> f64[n]", "log1p(x)", (pos4,), np.log1p),
    ("expm1", "(x: f64[n]) -> f64[n]", "expm1(x)", (x4,), np.expm1),
    ("sqrt", "(x: f64[n]) -> f64[n]", "sqrt(x)", (pos4,), np.sqrt),
    ("sin", "(x: f64[n]) -> f64[n]", "sin(x)", (x4,), np.sin),
    ("cos", "(x: f64[n]) -> f64[n]", "cos(x)", (x4,), np.cos),
    ("tan", "(x: f64[n]) -> f64[n]", "tan(x)", (x4,), np.tan),
    ("tanh", "(x: f64[n]) -> f64[n]", "tanh(x)", (x4,), np.tanh),
    ("sigmoid", "(x: f64[n]) -> f64[n]", "sigmoid(x)", (x4,), lambda x: 1 / (1 + np.exp(-x))),
    ("softplus", "(x: f64[n]) -> f64[n]", "softplus(x)", (x4,), lambda x: np.log1p(np.exp(x))),
    ("abs", "(x: f64[n]) -> f64[n]", "abs(x)", (x4,), np.abs),
    ("sign", "(x: f64[n]) -> f64[n]", "sign(x)", (x4,), np.sign),
    ("floor", "(x: f64[n]) -> f64[n]", "floor(3.0 * x)", (x4,), lambda x: np.floor(3 * x)),
    ("ceil", "(x: f64[n]) -> f64[n]", "ceil(3.0 * x)", (x4,), lambda x: np.ceil(3 * x)),
    ("round", "(x: f64[n]) -> f64[n]", "round(3.0 * x)", (x4,), lambda x: np.round(3 * x)),
    ("maximum_bcast", "(A: f64[a, b], x: f64[b]) -> f64[a, b]", "maximum(A, x)", (M34, x4),
     np.maximum),
    ("minimum_scalar", "(A: f64[a, b]) -> f64[a, b]", "minimum(A, 0.0)", (M34,),
     lambda A: np.minimum(A, 0.0)),
    ("where", "(A: f64[a, b], x: f64[b]) -> f64[a, b]", "where(A > x, A, x * 2.0)", (M34, x4),
     lambda A, x: np.where(A > x, A, 2 * x)),
    ("clip", "(x: f64[n]) -> f64[n]", "clip(x, -0.5, 0.5)", (x4,), lambda x: np.clip(x, -.5, .5)),
    ("sum", "(A: f64[a, b]) -> f64", "sum(A)", (M34,), np.sum),
    ("sum_axis0", "(A: f64[a, b]) -> f64[b]", "sum(A, axis=0)", (M34,), lambda A: A.sum(0)),
    ("sum_axis_neg", "(A: f64[a, b]) -> f64[a]", "sum(A, axis=-1)", (M34,), lambda A: A.sum(-1)),
    ("mean", "(A: f64[a, b]) -> f64[a]", "mean(A, axis=1)", (M34,), lambda A: A.mean(1)),
    ("prod", "(A: f64[a, b]) -> f64[b]", "prod(A, axis=0)", (M34,), lambda A: A.prod(0)),
    ("max_arr", "(A: f64[a, b]) -> f64[b]", "max(A, axis=0)", (M34,), lambda A: A.max(0)),
    ("min_arr", "(A: f64[a, b]) -> f64", "min(A)", (M34,), np.min),
    ("max_scalars", "(x: f64[n]) -> f64", "max(x[0], x[1], x[2])", (x4,), lambda x: max(x[:3])),
    ("min_list", "(x: f64[n]) -> f64", "min([x[0], x[-1], 0.0])", (x4,),
     lambda x: min(x[0], x[-1], 0.0)),
    ("argmax", "(A: f64[a, b]) -> i64[a]", "argmax(A, axis=1)", (M34,), lambda A: A.argmax(1)),
    ("argmin", "(A: f64[a, b]) -> i64", "argmin(A)", (M34,), np.argmin),
    ("logsumexp", "(A: f64[a, b]) -> f64[a]", "logsumexp(A, axis=1)", (M34,),
     lambda A: np.log(np.exp(A).sum(1))),
    ("norm", "(x: f64[n]) -> f64", "norm(x)", (x4,), np.linalg.norm),
    ("norm_axis", "(A: f64[a, b]) -> f64[a]", "norm(A, axis=1)", (M34,),
     lambda A: np.linalg.norm(A, axis=1)),
    ("dot", "(x: f64[n], y: f64[n]) -> f64", "dot(x, y)", (x4, pos4), np.dot),
    ("matmul", "(A: f64[a, b], B: f64[b, c]) -> f64[a, c]", "A @ B", (M34, M43), np.matmul),
    ("matvec", "(A: f64[a, b], x: f64[b]) -> f64[a]", "matmul(A, x)", (M34, x4), np.matmul),
    ("outer", "(x: f64[n], y: f64[m]) -> f64[n, m]", "outer(x, y)", (x3, x4), np.outer),
    ("transpose", "(A: f64[a, b]) -> f64[b, a]", "transpose(A)", (M34,), np.transpose),
    ("dotT", "(A: f64[a, b]) -> f64[b, a]", "A.T", (M34,), lambda A: A.T),
    ("solve", "(A: f64[n, n], b: f64[n]) -> f64[n]", "solve(A, b)", (S33, x3), np.linalg.solve),
    ("eye", "(n: i64) -> f64[n, n]", "eye(n)", (3,), np.eye),
    ("trace", "(A: f64[n, n]) -> f64", "trace(A)", (S33,), np.trace),
    ("diag_of_matrix", "(A: f64[n, n]) -> f64[n]", "diag(A)", (S33,), np.diag),
    ("diag_of_vector", "(x: f64[n]) -> f64[n, n]", "diag(x)", (x3,), np.diag),
    ("zeros", "(n: i64) -> f64[n, 2]", "zeros((n, 2))", (3,), lambda n: np.zeros((n, 2))),
    ("ones", "(n: i64) -> f64[n]", "ones(n)", (3,), np.ones),
    ("full", "(n: i64) -> f64[n, n]", "full((n, n), -inf)", (2,),
     lambda n: np.full((n, n), -np.inf)),
    ("empty_shape", "(n: i64) -> i64", "len(empty(n + 2))", (3,), lambda n: n + 2),
    ("arange", "(n: i64) -> i64[n]", "arange(n)", (5,), np.arange),
    ("arange3", "(a: i64, b: i64) -> i64[?]", "arange(a, b, 2)", (1, 8),
     lambda a, b: np.arange(a, b, 2)),
    ("linspace", "(a: f64, b: f64) -> f64[5]", "linspace(a, b, 5)", (0.0, 1.0),
     lambda a, b: np.linspace(a, b, 5)),
    ("array", "(x: f64[n]) -> f64[3]", "array([x[0], 2.0, x[1]])", (x4,),
     lambda x: np.array([x[0], 2.0, x[1]])),
    ("copy", "(x: f64[n]) -> f64[n]", "copy(x)", (x4,), np.copy),
    ("zeros_like", "(x: f64[n]) -> f64[n]", "zeros_like(x) + 1.0", (x4,),
     lambda x: np.zeros_like(x) + 1),
    ("ones_like", "(A: f64[a, b]) -> f64[a, b]", "ones_like(A)", (M34,), np.ones_like),
    ("full_like", "(x: f64[n]) -> f64[n]", "full_like(x, 7.0)", (x4,),
     lambda x: np.full_like(x, 7.0)),
    ("softmax", "(A: f64[a, b]) -> f64[a, b]", "softmax(A)", (M34,),
     lambda A: np.exp(A) / np.exp(A).sum(-1, keepdims=True)),
    ("smax", "(x: f64[n]) -> f64", "smax(x, 0.5, \"entropy\")", (x4,),
     lambda x: 0.5 * np.log(np.exp(x / 0.5).sum())),
    ("smin", "(x: f64[n]) -> f64", "smin(x, 0.5, \"entropy\")", (x4,),
     lambda x: -0.5 * np.log(np.exp(-x / 0.5).sum())),
    ("onehot_argmax", "(x: f64[n]) -> f64[n]", "onehot_argmax(x)", (x4,),
     lambda x: np.eye(4)[x.argmax()]),
    ("onehot_argmin_list", "(x: f64[n]) -> f64[3]", "onehot_argmin([x[1], x[0], x[2]])",
     (x4,), lambda x: np.eye(3)[np.argmin([x[1], x[0], x[2]])]),
    ("len", "(A: f64[a, b]) -> i64", "len(A) * 10 + A.shape[1]", (M34,), lambda A: 34),
    # operators, promotion, indexing
    ("int_div", "(k: i64) -> f64", "k / 2", (3,), lambda k: 1.5),
    ("floordiv_mod", "(k: i64) -> i64", "(-k) // 2 * 10 + (-k) % 3", (7,),
     lambda k: (-7) // 2 * 10 + (-7) % 3),
    ("pow", "(x: f64[n]) -> f64[n]", "x ** 2 + 2.0 ** x", (x4,), lambda x: x ** 2 + 2.0 ** x),
    ("neg_index", "(x: f64[n]) -> f64", "x[-1] + x[-2]", (x4,), lambda x: x[-1] + x[-2]),
    ("slice_neg_step", "(x: f64[n]) -> f64[n]", "x[::-1]", (x4,), lambda x: x[::-1]),
    ("slice_bounds", "(x: f64[n]) -> f64[?]", "x[1:-1]", (x4,), lambda x: x[1:-1]),
    ("slice_step", "(x: f64[n]) -> f64[?]", "x[3:0:-2]", (x4,), lambda x: x[3:0:-2]),
    ("row", "(A: f64[a, b]) -> f64[b]", "A[-1, :]", (M34,), lambda A: A[-1, :]),
    ("col", "(A: f64[a, b]) -> f64[a]", "A[:, 2]", (M34,), lambda A: A[:, 2]),
    ("row_short", "(A: f64[a, b]) -> f64[b]", "A[1]", (M34,), lambda A: A[1]),
    ("block", "(A: f64[a, b]) -> f64[?, ?]", "A[1:, 1:3]", (M34,), lambda A: A[1:, 1:3]),
    ("bcast_col", "(A: f64[a, b], x: f64[a, 1]) -> f64[a, b]", "A - x", (M34, x3[:, None]),
     lambda A, x: A - x),
    ("int_float_promote", "(k: i64, x: f64[n]) -> f64[n]", "k * x + 1", (3, x4),
     lambda k, x: k * x + 1),
    ("bool_sum", "(x: f64[n]) -> i64", "sum(x > 0.0)", (x4,), lambda x: int((x > 0).sum())),
    # NumPy spellings
    ("np_spellings", "(A: f64[a, b]) -> f64", "np.sum(np.exp(A), axis=1)[0] + np.max(A) + "
     "np.linalg.norm(A[0, :]) + math.exp(1.0) + np.pi",
     (M34,), lambda A: np.exp(A).sum(1)[0] + A.max() + np.linalg.norm(A[0]) + np.e + np.pi),
    ("np_solve", "(A: f64[n, n], b: f64[n]) -> f64[n]", "np.linalg.solve(A, b)", (S33, x3),
     np.linalg.solve),
    ("methods", "(A: f64[a, b]) -> f64", "A.sum() + A.max(axis=0)[1] + A.copy()[0, 0] + "
     "A.mean()", (M34,), lambda A: A.sum() + A.max(0)[1] + A[0, 0] + A.mean()),
]


@pytest.fixture(scope="module")
def mod():
    src = []
    for name, sig, body, _, _ in CASES:
        if "?" in sig:
            # an unknown result size: return its sum and length instead (types stay exact)
            pre, _ = sig.split("->")
            dt = sig.split("->")[1].strip().split("[")[0]
            src.append(f"def f_{name}{pre}-> {dt}[k]:\n    return {body}\n"
                       if False else
                       f"def f_{name}{pre}-> ({dt}, i64):\n    r = {body}\n"
                       f"    return sum(r), len(r)\n")
        else:
            src.append(f"def f_{name}{sig}:\n    return {body}\n")
    return dp.compile("\n".join(src), filename="builtins_test.dp", backend="interp")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_builtin(mod, case):
    name, sig, body, args, ref = case
    got = getattr(mod, "f_" + name)(*args)
    want = ref(*args)
    if "?" in sig:
        want = np.asarray(want)
        assert got[1] == len(want)
        assert got[0] == pytest.approx(want.sum(), rel=1e-13, abs=1e-14)
        return
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float),
                               rtol=1e-13, atol=1e-15)
    ret = sig.split("->")[1].strip()
    if ret.startswith("i64"):
        assert np.asarray(got).dtype == np.int64 or isinstance(got, int)


def test_softmax_axis_may_name_the_last_axis():
    src = ("def f(x: f64[n, m]) -> f64[n, m]:\n    return softmax(x, axis=1)\n\n"
           "def g(x: f64[n, m]) -> f64[n, m]:\n    return softmax(x, axis=-1)\n")
    mod = dp.compile(src, filename="sm.dp")
    x = np.random.default_rng(0).standard_normal((3, 4))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(mod.f(x), want, rtol=1e-14)
    np.testing.assert_allclose(mod.g(x), want, rtol=1e-14)
    np.testing.assert_allclose(dp.softmax(x, axis=1), want, rtol=1e-14)     # eager
    with pytest.raises(dp.DPTypeError) as ei:
        dp.compile("def h(x: f64[n, m]) -> f64[n, m]:\n    return softmax(x, axis=0)\n",
                   filename="sm.dp")
    assert "last axis only" in str(ei.value) and "sm.dp:2:" in str(ei.value)
    with pytest.raises(ValueError):
        dp.softmax(x, axis=0)
