"""@dp.jit on Python functions (SPEC section 3) and the eager dp.NAME built-ins."""
import importlib.util
import inspect
import math
import os
import sys
import textwrap

import numpy as np
import pytest

import dplang as dp
from dplang import api

THIS = __file__.rstrip("c")
K_SCALE = 2.5          # a module constant, inlined into jitted code
N_STEPS = 3
BAD_GLOBAL = np.ones(3)
TEXT = "hello"


def line_of(fn, snippet):
    """The line number in this file of the first line of ``fn`` containing ``snippet``."""
    lines, start = inspect.getsourcelines(getattr(fn, "py_func", fn))
    for k, ln in enumerate(lines):
        if snippet in ln:
            return start + k, ln.index(snippet) + 1
    raise AssertionError(snippet)


# ----------------------------------------------------------------- programs
def dtw_py(D):
    n, m = D.shape
    R = np.full((n + 1, m + 1), np.inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]


dtw = dp.jit(dtw_py)


def soft_dtw_py(D, gamma):
    n, m = D.shape
    R = dp.full((n + 1, m + 1), dp.inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + dp.smin([R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]],
                                                gamma)
    return R[n, m]


soft_dtw = dp.jit(soft_dtw_py)


def mlp_py(W1, b1, W2, b2, X, y):
    H = np.tanh(X @ W1 + b1)
    logits = H @ W2 + b2
    lse = dp.logsumexp(logits, axis=1)
    P = dp.softmax(logits)
    nll = 0.0
    for i in range(len(y)):
        nll += lse[i] - logits[i, y[i]]
    return nll / len(y) + 1e-3 * np.sum(W1 * W1) + 0.0 * P[0, 0]


mlp = dp.jit(mlp_py)


def spellings_py(a, b, A, x):
    n, m = a.shape
    s = np.sum(a, axis=1)                       # (n,)
    z = np.zeros(m)
    for j in range(m):
        z[j] = max(a[0, j], 0.5, b) - min(a[n - 1, j], -0.5)
    u = np.maximum(s, 1.0) + np.exp(-s) + math.exp(b) + abs(b - 3.0)
    best = np.inf
    for i in range(len(s)):
        best = min(best, s[i])
    sol = np.linalg.solve(A, x)
    return np.sum(u) + np.sum(z) + best + np.sum(sol) + np.max(np.abs(a)) + np.mean(a, axis=0)[0]


spellings = dp.jit(spellings_py)


@dp.jit
def scaled_dtw(D, c):
    return K_SCALE * dtw(D) + c


@dp.jit
def loop_constant(x):
    s = 0.0
    for k in range(N_STEPS):
        s += x * k
    return s


@dp.jit
def kinds(x, k, flag):
    return x * k if flag else x - k


@dp.jit
def two(a, b):
    return a + b, a * b


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------- values
def test_dtw_same_with_and_without_jit():
    D = rng().random((5, 7))
    assert dtw(D) == pytest.approx(dtw_py(D), rel=1e-12)
    path = os.path.join(os.path.dirname(THIS), "..", "examples", "dtw.dp")
    if os.path.exists(path):
        mod = dp.load(path)
        if "dtw" in mod.functions:
            assert dtw(D) == pytest.approx(mod.dtw(D), rel=1e-12)


def test_soft_dtw_like_smin_same_with_and_without_jit():
    D = rng(1).random((4, 6))
    for gamma in (1.0, 0.1):
        want = soft_dtw_py(D, gamma)
        assert soft_dtw(D, gamma) == pytest.approx(want, rel=1e-12)
    # soft-DTW is below hard DTW and tends to it as gamma -> 0
    assert soft_dtw(D, 1e-4) == pytest.approx(dtw(D), abs=1e-2)


def test_mlp_same_with_and_without_jit():
    r = rng(2)
    W1, b1 = r.normal(size=(4, 8)), r.normal(size=8)
    W2, b2 = r.normal(size=(8, 3)), r.normal(size=3)
    X, y = r.normal(size=(10, 4)), r.integers(0, 3, size=10)
    want = mlp_py(W1, b1, W2, b2, X, y)
    assert mlp(W1, b1, W2, b2, X, y) == pytest.approx(want, rel=1e-12)


def test_numpy_and_python_spellings():
    r = rng(3)
    a = r.normal(size=(3, 4))
    A = r.normal(size=(3, 3)) + 3 * np.eye(3)
    x = r.normal(size=3)
    want = spellings_py(a, 0.25, A, x)
    assert spellings(a, 0.25, A, x) == pytest.approx(want, rel=1e-12)
    text = spellings.ir()
    for prim in ("solve", "maximum", "exp", "minn", "maxn", "sum", "abs"):
        assert prim in text


def test_result_types_and_tuples():
    assert two(1.0, 2.0) == (3.0, 2.0)
    assert isinstance(two(1, 2)[0], int)
    assert kinds(2.0, 3, True) == 6.0 and kinds(2.0, 3, False) == -1.0
    assert isinstance(dtw(np.ones((2, 2))), float)


# ----------------------------------------------------------------- specialisations
def test_one_specialisation_per_signature():
    @dp.jit
    def total(v):
        return np.sum(v) * 2.0

    assert total(np.ones(3)) == 6.0
    assert total(np.ones(5)) == 10.0                  # other sizes: same specialisation
    assert len(total.specialisations) == 1
    assert total(np.ones((2, 2))) == 8.0              # another rank
    assert total(np.ones(3, np.float32)) == 6.0       # another dtype
    assert total(np.arange(3)) == 6                   # integers
    assert len(total.specialisations) == 4
    f1 = total.specialise(np.ones(7))
    assert f1 is total.specialise(np.zeros(2))
    assert isinstance(f1, api.Function)


def test_float32_arrays():
    @dp.jit
    def f(x, w):
        return np.sum(np.tanh(x * w) + 1.0)

    x = np.linspace(-1, 1, 5).astype(np.float32)
    out = f(x, np.float32(0.5))
    assert isinstance(out, np.float32)
    assert out == pytest.approx(float(np.sum(np.tanh(x * np.float32(0.5)) + 1.0)), rel=1e-6)
    fn = f.specialise(x, np.float32(0.5))
    assert [str(v.type.dtype) for v in fn.func.params] == ["f32", "f32"]
    assert "f32" in f.ir()
    # a Python float argument is an f64 parameter (literals in the body stay weak)
    assert type(f(x, 0.5)) is float
    D = rng().random((3, 4)).astype(np.float32)
    assert dtw(D) == pytest.approx(dtw_py(D), rel=1e-6)


def test_scalar_argument_types():
    @dp.jit
    def f(x):
        return x

    assert f(1.5) == 1.5 and isinstance(f(1.5), float)
    assert f(3) == 3 and isinstance(f(3), int)
    assert f(True) is True
    assert isinstance(f(np.float32(2.0)), np.float32)
    assert f(np.int32(4)) == 4
    kinds_seen = sorted(f.specialisations)
    assert kinds_seen == sorted(["(x: f64)", "(x: i64)", "(x: bool)", "(x: f32)"])


def test_keyword_arguments_and_binding_errors():
    assert two(b=2.0, a=1.0) == (3.0, 2.0)
    with pytest.raises(dp.DPTypeError, match="takes 2 argument"):
        two(1.0, 2.0, 3.0)
    with pytest.raises(dp.DPTypeError, match="missing argument 'b'"):
        two(1.0)
    with pytest.raises(dp.DPTypeError, match="no parameter 'c'"):
        two(1.0, c=2.0)
    with pytest.raises(dp.DPTypeError, match="argument 'a'.*str"):
        two("x", 1.0)

    @dp.jit
    def with_default(x, k=2):
        return x * k

    with pytest.raises(dp.DPUnsupportedError, match="default") as ei:
        with_default(1.0)
    assert ei.value.loc.line == line_of(with_default, "def with_default")[0]


def test_calls_jitted_functions_and_inlines_constants():
    D = rng(4).random((3, 3))
    assert scaled_dtw(D, 1.0) == pytest.approx(K_SCALE * dtw_py(D) + 1.0)
    prog = scaled_dtw.specialise(D, 1.0).module._program
    assert set(prog.funcs) == {"scaled_dtw", "dtw_py"}        # dtw = dp.jit(dtw_py)
    assert loop_constant(2.0) == 2.0 * (0 + 1 + 2)


def test_callee_specialised_per_call_signature():
    @dp.jit
    def sq(v):
        return v * v

    @dp.jit
    def both(x, n):
        return np.sum(sq(x)) + sq(n)

    assert both(np.arange(3.0), 4) == 5.0 + 16
    prog = both.specialise(np.arange(3.0), 4).module._program
    assert len([k for k in prog.funcs if k.startswith("sq")]) == 2


def test_callee_with_keyword_arguments():
    @dp.jit
    def lin(a, b):
        return 2.0 * a + b

    @dp.jit
    def caller(x):
        return lin(b=1.0, a=x)

    assert caller(3.0) == 7.0


def test_closure_and_late_binding():
    @dp.jit
    def outer_fn(x):
        return inner_fn(x) + 1.0

    @dp.jit
    def inner_fn(x):                 # defined after outer_fn: resolved at the first call
        return x * 3.0

    assert outer_fn(2.0) == 7.0


def test_global_name_aliases(tmp_path):
    mod = _write_module(tmp_path, "aliases_mod", """
        import math as m
        import numpy as onp
        import numpy.linalg as la
        from numpy import exp, float32
        from dplang import smax, logsumexp as lse
        import dplang as dpl

        @dpl.jit
        def f(x, A):
            y = onp.zeros(3, dtype=float32)
            y[0] = exp(x[0]) + m.sqrt(4.0)
            return onp.sum(y) + smax(x, 1.0) + lse(x) + onp.sum(la.solve(A, x))
        """)
    x = np.array([0.1, 0.2, 0.3])
    A = 2.0 * np.eye(3)
    want = np.float32(np.exp(0.1) + 2.0) + dp.smax(x, 1.0) + dp.logsumexp(x) + 0.3
    assert mod.f(x, A) == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------- errors
def test_unsupported_syntax_located_in_python_file():
    @dp.jit
    def f(x):
        g = lambda y: y + 1
        return x

    with pytest.raises(dp.DPUnsupportedError) as ei:
        f(1.0)
    line, col = line_of(f, "lambda")
    assert ei.value.loc.file == THIS
    assert (ei.value.loc.line, ei.value.loc.col) == (line, col)
    assert "lambda" in str(ei.value) and str(ei.value).startswith(f"{THIS}:{line}:{col}:")
    assert "g = lambda y: y + 1" in str(ei.value)

    @dp.jit
    def h(x):
        s = 0.0
        for v in [x * k for k in range(3)]:
            s += v
        return s

    with pytest.raises(dp.DPUnsupportedError, match="comprehension") as ei:
        h(1.0)
    assert (ei.value.loc.line, ei.value.loc.col) == line_of(h, "[x * k")


def test_type_error_located_in_python_file():
    @dp.jit
    def f(x):
        y = x[0]
        return y[1]

    with pytest.raises(dp.DPTypeError) as ei:
        f(np.ones(3))
    assert ei.value.loc.file == THIS
    assert (ei.value.loc.line, ei.value.loc.col) == line_of(f, "y[1]")
    assert "f(x: f64[:])" in str(ei.value)            # the note names the specialisation


def test_wrong_rank_is_a_clear_located_error():
    with pytest.raises(dp.DPTypeError, match="cannot unpack 1 values into 2 names") as ei:
        dtw(np.ones(4))
    assert ei.value.loc.file == THIS
    assert (ei.value.loc.line, ei.value.loc.col) == line_of(dtw_py, "n, m = D.shape")
    assert "dtw_py(D: f64[:])" in str(ei.value)

    @dp.jit
    def row_sum(A):
        return A[0, 0] + A[0, 1]

    with pytest.raises(dp.DPShapeError, match="too many indices: 2 for an array of rank 1") as ei:
        row_sum(np.ones(3))
    assert ei.value.loc.line == line_of(row_sum, "return A[0, 0]")[0]

    @dp.jit
    def calls_with_wrong_rank(x):
        return row_sum(x)                  # row_sum specialised on a vector: located there

    with pytest.raises(dp.DPShapeError) as ei:
        calls_with_wrong_rank(np.ones(2))
    assert ei.value.loc.line == line_of(row_sum, "return A[0, 0]")[0]


def test_write_into_parameter_located():
    @dp.jit
    def f(D):
        D[0] = 1.0
        return D[1]

    with pytest.raises(dp.DPTypeError, match="parameter") as ei:
        f(np.ones(3))
    assert (ei.value.loc.line, ei.value.loc.col) == line_of(f, "D[0] = 1.0")


def test_bad_globals_are_located_errors():
    def helper(x):
        return x

    @dp.jit
    def uses_array(x):
        return x + BAD_GLOBAL

    @dp.jit
    def uses_python_function(x):
        return helper(x)

    @dp.jit
    def uses_string(x):
        return x + TEXT

    @dp.jit
    def uses_unknown(x):
        return x + not_defined_anywhere

    for fn, snippet, cls, msg in [
            (uses_array, "BAD_GLOBAL", dp.DPTypeError, "NumPy array"),
            (uses_python_function, "helper(x)", dp.DPTypeError, "@dp.jit"),
            (uses_string, "TEXT", dp.DPTypeError, "str"),
            (uses_unknown, "not_defined_anywhere", dp.DPNameError, "unknown name")]:
        with pytest.raises(cls, match=msg) as ei:
            fn(1.0)
        assert (ei.value.loc.line, ei.value.loc.col) == line_of(fn, snippet), fn.__name__


def test_recursion_is_located():
    @dp.jit
    def rec(x):
        return rec(x - 1.0)

    with pytest.raises(dp.DPTypeError, match="recursion") as ei:
        rec(1.0)
    assert ei.value.loc.line == line_of(rec, "return rec")[0]

    @dp.jit
    def ping(x):
        return pong(x) + 1.0

    @dp.jit
    def pong(x):
        return ping(x) * 2.0

    with pytest.raises(dp.DPTypeError, match="recursion") as ei:
        ping(np.ones(2))
    assert ei.value.loc.line == line_of(pong, "return ping")[0]


def test_inspection_before_and_after_first_call():
    @dp.jit
    def f(x):
        return np.exp(x) + 1.0

    with pytest.raises(dp.DPError, match="not been compiled yet"):
        f.ir()
    with pytest.raises(dp.DPError, match="not been compiled yet"):
        f.dot()
    f(np.ones(2))
    assert "exp" in f.ir("ssa")
    assert "exp" in f.ir("optimized")
    assert "np.exp(x)" in f.ir("parsed")
    assert "digraph" in f.dot()
    f(2.0)                                   # the latest specialisation is shown
    assert "f(x: f64)" in f.ir().replace(" ->", "").split("{")[0] or "x: f64)" in f.ir()
    if f.backend == "interp":
        with pytest.raises(dp.DPError):
            f.source()


def test_protocol_for_transformations():
    @dp.jit
    def loss(w, x):
        return np.sum(np.tanh(x @ w) ** 2)

    assert loss.param_names == ["w", "x"]
    assert loss.__name__ == "loss" and loss.__wrapped__ is not None
    w, X = np.array([0.1, -0.2, 0.3]), rng(5).normal(size=(4, 3))
    fn = loss.specialise(w, X)
    assert isinstance(fn, api.Function) and fn.key in fn.module._program.funcs
    assert fn.func is fn.module._program.funcs[fn.key]
    v = np.array([1.0, 0.5, -1.0])
    val, tan = dp.jvp(fn)(w, X, v)
    eps = 1e-6
    fd = (loss(w + eps * v, X) - loss(w - eps * v, X)) / (2 * eps)
    assert val == pytest.approx(loss(w, X)) and tan == pytest.approx(fd, rel=1e-6)


def test_jvp_of_a_jitted_function():
    @dp.jit
    def f(x):
        return np.sum(np.sin(x) * x)

    x, v = np.array([0.3, 1.2]), np.array([1.0, -2.0])
    val, tan = dp.jvp(f)(x, v)
    assert val == pytest.approx(f(x))
    assert tan == pytest.approx(np.sum((np.cos(x) * x + np.sin(x)) * v), rel=1e-10)


def test_in_language_transformations_resolve():
    @dp.jit
    def loss(w, x):
        return np.sum(np.tanh(x @ w) ** 2)

    @dp.jit
    def step(w, x, lr):
        return w - lr * dp.grad(loss)(w, x)

    @dp.jit
    def step_bare(w, x, lr):
        return w - lr * grad(loss, wrt="w")(w, x)     # noqa: F821 (the language's grad)

    w, X = np.array([0.1, -0.2, 0.3]), rng(6).normal(size=(4, 3))
    for fn in (step, step_bare):
        f = fn.specialise(w, X, 0.1)
        assert "transform=((\"grad\"" in f.ir()
        assert f.func.result_types[0].ndim == 1
    g = (np.array([loss(w + 1e-6 * e, X) - loss(w - 1e-6 * e, X) for e in np.eye(3)]) / 2e-6)
    assert step(w, X, 0.1) == pytest.approx(w - 0.1 * g, rel=1e-6)


def test_integer_wrt_is_a_located_error():
    @dp.jit
    def f(x, k):
        return x * k

    @dp.jit
    def g(x, k):
        return dp.grad(f, wrt=1)(x, k)

    with pytest.raises(dp.DPTypeError, match="cannot differentiate with respect to 'k'") as ei:
        g(1.0, 2)
    assert ei.value.loc.line == line_of(g, "dp.grad(f")[0]


# ----------------------------------------------------------------- module files
def _write_module(tmp_path, name, text):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_jit_in_a_temporary_module(tmp_path):
    mod = _write_module(tmp_path, "jit_tmp_mod", """
        from __future__ import annotations
        import numpy as np
        import dplang as dp
        from dplang import f64, i64

        SCALE = 3

        def ident(f):
            return f

        decorators = {"id": ident}

        @decorators["id"]
        @dp.jit
        def norm2(x):
            return np.sum(x * x)

        @dp.jit(backend="interp")
        def annotated(x: f64[n], k: i64) -> f64:
            return SCALE * norm2(x) + k

        class Holder:
            @dp.jit
            def method_like(v):
                s = 0.0
                for i in range(len(v)):
                    s += v[i]
                return s

        @dp.jit
        def broken(x):
            y = x + 1.0
            return y[0, 0]
        """)
    path = str(tmp_path / "jit_tmp_mod.py")
    x = np.array([1.0, 2.0])
    assert mod.norm2(x) == 5.0
    assert mod.annotated(x, 2) == 17.0
    assert mod.annotated(np.array([1, 2]), 2) == 17.0      # converted to the annotation
    assert len(mod.annotated.specialisations) == 1
    with pytest.raises(dp.DPShapeError, match="argument 'x'"):
        mod.annotated(np.ones((2, 2)), 2)
    assert mod.Holder.method_like(x) == 3.0
    with pytest.raises(dp.DPShapeError) as ei:
        mod.broken(x)
    assert ei.value.loc.file == path
    assert ei.value.loc.line == 33 and ei.value.loc.col == 17      # the extra index
    assert str(ei.value).startswith(f"{path}:33:17:")
    assert "return y[0, 0]" in str(ei.value)
    # the same function name in two modules: both callees in one program
    other = _write_module(tmp_path, "jit_tmp_mod2", """
        import numpy as np
        import dplang as dp
        from jit_tmp_mod import norm2 as other_norm2

        @dp.jit
        def norm2(x):
            return other_norm2(x) + 1.0
        """)
    assert other.norm2(x) == 6.0


def test_unsupported_syntax_in_a_temporary_module(tmp_path):
    mod = _write_module(tmp_path, "jit_tmp_bad", """
        import dplang as dp

        if True:
            @dp.jit
            def f(x):
                return sum(v for v in x)
        """)
    with pytest.raises(dp.DPUnsupportedError, match="generator") as ei:
        mod.f(1.0)
    assert ei.value.loc.file == str(tmp_path / "jit_tmp_bad.py")
    assert (ei.value.loc.line, ei.value.loc.col) == (6, 19)


def test_backend_option():
    with pytest.raises(ValueError, match="unknown backend"):
        dp.jit(backend="gpu")

    @dp.jit(backend="interp")
    def f(x):
        return x + 1.0

    assert f(1.0) == 2.0 and f.backend == "interp"
    assert f.specialise(1.0).module._backend == "interp"


# ----------------------------------------------------------------- eager built-ins
EAGER_CASES = {
    "elementwise": "dp.exp(x) + dp.log(dp.abs(x) + 1) + dp.log1p(dp.abs(y)) + dp.expm1(x)"
                   " + dp.sqrt(dp.abs(x)) + dp.sin(x) + dp.cos(y) + dp.tan(x * 0.1)"
                   " + dp.tanh(y) + dp.sigmoid(x) + dp.softplus(y) + dp.sign(x) + dp.floor(x)"
                   " + dp.ceil(y) + dp.round(x) + dp.maximum(x, y) + dp.minimum(x, 0.0)"
                   " + dp.where(x > y, x, y) + dp.clip(x, -0.5, 0.5)",
    "reductions": "dp.sum(x) + dp.mean(y) + dp.prod(x) + dp.max(x) + dp.min(y) + dp.argmax(x)"
                  " + dp.argmin(y) + dp.logsumexp(x) + dp.norm(y) + dp.max(x[0], y[1], 0.25)"
                  " + dp.min([x[1], y[0]]) + dp.sum(dp.max(dp.outer(x, y), axis=1))"
                  " + dp.sum(dp.logsumexp(dp.outer(x, y), axis=0))",
    "linalg": "dp.dot(x, y) + dp.sum(dp.matmul(dp.outer(x, y), y))"
              " + dp.sum(dp.transpose(dp.outer(x, y))[0])"
              " + dp.sum(dp.solve(dp.eye(len(x)) * 2.0 + dp.diag(x * x), y))"
              " + dp.trace(dp.outer(x, x))",
    "constructors": "dp.sum(dp.zeros(3) + dp.ones(3) + dp.full(3, 2.0)) + dp.sum(dp.arange(4))"
                    " + dp.sum(dp.linspace(0.0, 1.0, 5)) + dp.sum(dp.array([x[0], y[0]]))"
                    " + dp.sum(dp.copy(x)) + dp.sum(dp.zeros_like(x) + dp.ones_like(y))"
                    " + dp.sum(dp.full_like(x, 0.5)) + dp.sum(dp.zeros((2, 3), dtype=dp.f32))",
    "soft": "dp.sum(dp.softmax(x) * y) + dp.sum(dp.sparsemax(x) * y) + dp.smax(x, 0.5)"
            " + dp.smin(y, 2.0, \"l2\") + dp.smax(x, 0.3, reg=\"l2\")"
            " + dp.sum(dp.onehot_argmax(x) * y) + dp.sum(dp.onehot_argmin(x) * y)"
            " + dp.smin([x[0], x[1], y[0]], 0.1)",
}


@pytest.mark.parametrize("name", sorted(EAGER_CASES))
def test_eager_builtins_match_compiled(name):
    code = f"def case(x, y):\n    return {EAGER_CASES[name]}\n"
    plain = _function_from_text(code)
    x = np.array([0.3, -1.2, 2.5, 0.7])
    y = np.array([1.1, 0.4, -0.6, 0.2])
    want = plain(x, y)
    got = dp.jit(plain)(x, y)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def _function_from_text(code, _count=[0]):
    """A Python function from source text whose source inspect can find."""
    import linecache
    _count[0] += 1
    fname = f"<jit-test-{_count[0]}>"
    linecache.cache[fname] = (len(code), None, code.splitlines(True), fname)
    ns = {"dp": dp, "np": np}
    exec(compile(code, fname, "exec"), ns)
    return ns["case"]


def test_eager_semantics_details():
    v = np.array([1.0, 3.0, 2.0])
    assert dp.smax(v, 1.0) == pytest.approx(np.log(np.sum(np.exp(v))))
    assert dp.smin(v, 1.0) == pytest.approx(-np.log(np.sum(np.exp(-v))))
    assert dp.sparsemax(v).sum() == pytest.approx(1.0)
    assert list(dp.onehot_argmax([1.0, 3.0, 3.0])) == [0.0, 1.0, 0.0]
    assert dp.max(1, 2.5, 2) == 2.5 and dp.max([1, 4]) == 4
    assert list(dp.max(np.arange(6).reshape(2, 3), axis=1)) == [2, 5]
    assert math.isnan(dp.max(1.0, np.nan))                    # NaN-propagating, as compiled
    assert isinstance(dp.argmax(v), (int, np.integer)) and dp.argmax(v) == 1
    assert dp.smax(v.astype(np.float32), 1.0).dtype == np.float32
    assert dp.abs(True) == 1 and dp.sum(np.array([True, True])) == 2
    with pytest.raises(ValueError):
        dp.smax(v, 1.0, "l3")
    with pytest.raises(TypeError):
        dp.max(np.ones(2), np.ones(2))
    assert dp.inf == math.inf and dp.f32 is np.float32


def test_api_names_are_not_shadowed():
    assert dp.jvp is api.jvp
    assert dp.compile is api.compile and dp.load is api.load
    assert dp.jit.__module__ == "dplang.jit"
    for name in ("grad", "value_and_grad", "vjp", "hvp", "smooth", "vmap", "root",
                 "fixed_point"):
        obj = getattr(dp, name, None)
        assert obj is None or obj.__module__ != "dplang.eager", name
    # dp.argmin: the reduction on arrays; the decorator of SPEC 2.4 on functions
    assert dp.argmin(np.array([3.0, 1.0, 2.0])) == 1
    assert list(dp.argmin(np.array([[3.0, 1.0], [0.0, 2.0]]), axis=1)) == [1, 0]


def test_undecorated_function_runs_in_plain_python():
    def f(x, gamma):
        n = len(x)
        acc = 0.0
        for i in range(n - 1):
            acc += dp.smin([x[i], x[i + 1], 0.5], gamma) + dp.maximum(x[i], 0.0)
        return acc + dp.logsumexp(x) + dp.sum(dp.softmax(x) * x)

    x = np.array([0.2, -0.4, 1.3, 0.8])
    assert dp.jit(f)(x, 0.7) == pytest.approx(f(x, 0.7), rel=1e-12)


# ----------------------------------------------------------------- decorators, annotations
def test_implicit_decorators_from_source_and_from_decorate(tmp_path):
    mod = _write_module(tmp_path, "jit_tmp_implicit", """
        import numpy as np
        import dplang as dp

        def argmin(obj, **options):          # stands for the API's dp.argmin decorator
            return lambda f: f

        @dp.jit
        def obj(x, a):
            return np.sum((x - a) ** 2)

        @argmin(obj, solver="dense", tol=1e-8)
        @dp.jit
        def solver(a):
            return 1.0 * a

        @dp.jit
        def plain_solver(a):
            return 1.0 * a

        @dp.jit
        def uses(a):
            return np.sum(solver(a))
        """)
    a = np.array([1.0, 2.0])
    fn = mod.solver.specialise(a)
    imp = fn.func.attrs["implicit"]
    assert imp["kind"] == "argmin" and imp["solver"] == "dense" and imp["tol"] == 1e-8
    assert imp["fn"] in fn.module._program.funcs or imp["fn"] in fn.module._program.loader.defs
    assert mod.uses(a) == 3.0
    d = mod.plain_solver.decorate("argmin", mod.obj, solver="cg", maxiter=50)
    assert d is not mod.plain_solver and d.param_names == ["a"]
    imp = d.specialise(a).func.attrs["implicit"]
    assert (imp["kind"], imp["solver"], imp["maxiter"]) == ("argmin", "cg", 50)
    assert "implicit" not in mod.plain_solver.specialise(a).func.attrs
    assert mod.solver.decorate("argmin", mod.obj) is mod.solver      # already in the source
    with pytest.raises(TypeError):
        mod.plain_solver.decorate("argmin", lambda x, a: 0.0)


def test_python_annotations_are_ignored_and_dplang_ones_used(tmp_path):
    mod = _write_module(tmp_path, "jit_tmp_annot", """
        import numpy as np
        import numpy.typing as npt
        from typing import Any
        import dplang as dp

        @dp.jit
        def f(x: np.ndarray, y: npt.NDArray[np.float64], k: int, z: Any) -> float:
            return np.sum(x * y) * k + z

        @dp.jit
        def g(x) -> int:
            return np.sum(x)
        """)
    x = np.arange(3.0)
    assert mod.f(x, x, 2, 1.0) == 11.0
    assert mod.f(x.astype(np.float32), x, 2.0, 1.0) == 11.0     # k: int -> i64 (converted)
    with pytest.raises(dp.DPShapeError, match="argument 'k' must be i64"):
        mod.f(x, x, 2.5, 1.0)
    with pytest.raises(dp.DPTypeError, match="does not match its result annotation") as ei:
        mod.g(x)
    assert ei.value.loc.line == 11


def test_transformed_global_and_missing_source():
    @dp.jit
    def f(x):
        return x * x

    g = dp.grad(f)

    @dp.jit
    def uses_g(x):
        return g(x)

    with pytest.raises(dp.DPTypeError, match="write the transformation where it is called"):
        uses_g(1.0)

    ns = {"dp": dp}
    exec(compile("def nosrc(x):\n    return x\n", "<no-such-file>", "exec"), ns)
    h = dp.jit(ns["nosrc"])
    with pytest.raises(dp.DPError, match="needs the source"):
        h(1.0)
    with pytest.raises(TypeError):
        dp.jit(42)


def test_cpu_backend():
    @dp.jit(backend="cpu")
    def running_max(x):
        best = -np.inf
        for i in range(len(x)):
            best = max(best, x[i])
        return best

    x = np.array([0.5, 2.0, -1.0])
    assert running_max(x) == 2.0
    src = running_max.source()
    assert f"test_jit.py:{line_of(running_max, 'best = max')[0]}" in src


def test_api_transformations_of_jitted_functions():
    D = rng(7).random((3, 4))
    smoothed = dp.smooth(dtw, "entropy")            # gamma becomes a new last parameter
    assert smoothed(D, 0.5) == pytest.approx(soft_dtw(D, 0.5), rel=1e-12)
    G = dp.grad(soft_dtw)(D, 0.5)
    E = np.zeros_like(D)
    E[1, 2] = 1e-6
    fd = (soft_dtw(D + E, 0.5) - soft_dtw(D - E, 0.5)) / 2e-6
    assert G.shape == D.shape and G[1, 2] == pytest.approx(fd, rel=1e-6)
