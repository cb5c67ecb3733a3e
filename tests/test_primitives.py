"""The primitive registry: every primitive's type rule agrees with its NumPy reference
implementation, the implementations agree with independent NumPy computations, and
the type rules reject bad operands.

``CASES`` holds argument generators for every primitive; a primitive added to the
registry without an entry here fails ``test_every_primitive_has_cases``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from dplang.ir import types as T
from dplang.ir.primitives import REGISTRY, TypeRuleError

inf = np.inf
_rng = np.random.default_rng(1234)


def A(*shape, dtype="f64", lo=-2.0, hi=2.0):
    """A random array (or NumPy scalar when shape is ())."""
    if dtype == "f64":
        v = _rng.uniform(lo, hi, shape)
    elif dtype == "f32":
        v = _rng.uniform(lo, hi, shape).astype(np.float32)
    elif dtype == "i64":
        v = _rng.integers(int(np.ceil(lo)), int(hi) + 1, shape).astype(np.int64)
    else:
        v = _rng.integers(0, 2, shape).astype(bool)
    return v[()] if shape == () else v


def P(*shape, dtype="f64"):
    """Positive values."""
    return A(*shape, dtype=dtype, lo=0.5, hi=3.0)


def S(v, dtype="f64"):
    return np.asarray(v, dtype=T.NP_DTYPES[dtype])[()]


i = lambda v: np.int64(v)          # noqa: E731
f = lambda v: np.float64(v)        # noqa: E731


def case(*args, **attrs):
    return (args, attrs)


# ---------------------------------------------------------------- argument generators
def _binary(dtypes=("f64", "i64"), pos=False):
    def gen():
        g = P if pos else A
        out = [case(g(3, 1), g(4)), case(g(2, 3), g()), case(g(), g())]
        if "i64" in dtypes:
            out.append(case(A(3, 4, dtype="i64", lo=1, hi=4), A(4, dtype="i64", lo=1, hi=4)))
        if "bool" in dtypes:
            out.append(case(A(3, dtype="bool"), A(3, dtype="bool")))
        return out
    return gen


def _unary(pos=False, dtypes=("f64", "i64", "f32", "bool")):
    def gen():
        g = P if pos else A
        out = [case(g(3, 4)), case(g())]
        for dt in dtypes[1:]:
            out.append(case(g(5, dtype=dt)))
        out.append(case(1.5 if pos else -1.5))   # a Python float, as a const may be
        return out
    return gen


CASES = {}
for _n in ("add", "mul", "maximum", "minimum"):
    CASES[_n] = _binary(("f64", "i64", "bool"))
CASES["sub"] = _binary()
CASES["div"] = _binary(pos=True)
CASES["floordiv"] = _binary(pos=True)
CASES["mod"] = _binary(pos=True)
CASES["pow"] = _binary(pos=True)
CASES["neg"] = _unary(dtypes=("f64", "i64", "f32"))
for _n in ("eq", "ne", "lt", "le", "gt", "ge"):
    CASES[_n] = _binary()
CASES["logical_and"] = CASES["logical_or"] = lambda: [
    case(A(3, 2, dtype="bool"), A(2, dtype="bool")), case(np.True_, np.False_)]
CASES["logical_not"] = lambda: [case(A(4, dtype="bool")), case(np.True_)]
for _n in ("exp", "expm1", "sin", "cos", "tan", "tanh", "sigmoid", "softplus"):
    CASES[_n] = _unary()
for _n in ("log1p", "sqrt"):
    CASES[_n] = _unary(pos=True)
CASES["log"] = _unary(pos=True, dtypes=("f64", "i64", "f32"))
CASES["abs"] = _unary()
CASES["sign"] = _unary(dtypes=("f64", "i64", "f32"))
for _n in ("floor", "ceil", "round"):
    CASES[_n] = _unary()
CASES["where"] = lambda: [case(A(3, 1, dtype="bool"), A(4), A(3, 4)),
                          case(np.True_, f(1.0), f(2.0)),
                          case(A(3, dtype="bool"), A(3, dtype="i64"), A(3, dtype="i64"))]
CASES["clip"] = lambda: [case(A(3, 4), f(-0.5), f(0.5)), case(A(), A(4), P(4)),
                         case(A(5, dtype="i64"), i(0), i(1))]
CASES["cast"] = lambda: [case(A(3), dtype="i64"), case(A(3, dtype="i64"), dtype="f64"),
                         case(A(3), dtype="bool"), case(f(2.5), dtype="f32"),
                         case(A(2, dtype="bool"), dtype="i64")]


def _reduction(dtypes=("f64", "i64", "f32", "bool"), tuples=True):
    def gen():
        x = A(2, 3, 4)
        axes = [None, 0, 1, -1, 2, -3]
        if tuples:
            axes += [(0, 2), (-1, 0), (0, 1, 2), ()]
        out = [case(x, axis=a) for a in axes]
        out += [case(A(5, dtype=dt)) for dt in dtypes]
        out += [case(A(3, 2, dtype=dt), axis=0) for dt in dtypes]
        out.append(case(f(3.0)))
        return out
    return gen


for _n in ("sum", "mean", "prod", "max", "min", "logsumexp", "norm"):
    CASES[_n] = _reduction()
CASES["argmax"] = CASES["argmin"] = _reduction(tuples=False)
CASES["maxn"] = CASES["minn"] = lambda: [case(f(1.0), f(3.0), f(2.0)), case(i(1), f(2.5)),
                                         case(i(4)), case(i(1), i(-3)),
                                         case(np.float32(1.0), np.float32(2.0)),
                                         case(np.True_, np.False_), case(1.0, 2.0)]

CASES["matmul"] = lambda: [case(A(3, 4), A(4, 5)), case(A(3, 4), A(4)), case(A(4), A(4, 2)),
                           case(A(4), A(4)), case(A(2, 3, 4), A(4, 5)),
                           case(A(2, 1, 3, 4), A(5, 4, 2)),
                           case(A(3, 4, dtype="i64"), A(4, dtype="i64")),
                           case(A(3, 4, dtype="i64"), A(4, 2))]
CASES["dot"] = lambda: [case(A(3, 4), A(4, 5)), case(A(3, 4), A(4)), case(A(4), A(4, 2)),
                        case(A(4), A(4)), case(A(3, dtype="i64"), A(3, dtype="i64"))]
CASES["outer"] = lambda: [case(A(3), A(4)), case(A(2, 3), A(4)),
                          case(A(3, dtype="i64"), A(2))]
CASES["transpose"] = lambda: [case(A(3, 4)), case(A(2, 3, 4)), case(A(5)),
                              case(A(2, 3, dtype="i64"))]


def _spd(n, dtype="f64"):
    m = _rng.normal(size=(n, n))
    return (m @ m.T + n * np.eye(n)).astype(T.NP_DTYPES[dtype])


CASES["solve"] = lambda: [case(_spd(4), A(4)), case(_spd(3), A(3, 2)),
                          case(np.array([[2, 1], [1, 3]]), np.array([1, 2])),
                          case(_spd(3, "f32"), A(3, dtype="f32"))]
CASES["trace"] = lambda: [case(A(3, 3)), case(A(3, 5)), case(A(4, 2, dtype="i64")),
                          case(A(3, 3, dtype="bool"))]
CASES["diag"] = lambda: [case(A(4)), case(A(3, 3)), case(A(2, 5)), case(A(4, dtype="i64"))]

for _n in ("zeros", "ones", "empty"):
    CASES[_n] = lambda: [case(i(3), i(2)), case(i(4)), case(i(2), dtype="i64"),
                         case(i(2), i(3), _shape=(2, 3)), case(i(0), i(3), dtype="bool"),
                         case()]
CASES["full"] = lambda: [case(f(inf), i(3), i(4)), case(i(7), i(2)),
                         case(f(1.5), i(2), dtype="f32"), case(np.True_, i(3)),
                         case(f(2.0), i(2), i(2), _shape=(2, 2)), case(f(2.0))]
CASES["eye"] = lambda: [case(i(3)), case(i(2), dtype="i64"), case(i(4), _shape=(4, 4))]
CASES["arange"] = lambda: [case(i(0), i(5), i(1)), case(i(5), i(-3), i(-2)),
                           case(f(0.0), f(1.0), f(0.25)), case(i(1), f(2.0), i(1)),
                           case(i(0), i(6), i(2), _shape=(3,))]
CASES["linspace"] = lambda: [case(f(0.0), f(1.0), i(5)), case(i(0), i(10), i(3)),
                             case(f(-1.0), f(1.0), i(1))]
CASES["zeros_like"] = CASES["ones_like"] = CASES["copy"] = lambda: [
    case(A(3, 4)), case(A(2, dtype="i64")), case(f(2.0)), case(A(3, dtype="bool"))]
CASES["full_like"] = lambda: [case(A(3, 4), f(7.0)), case(A(2, dtype="i64"), i(3)),
                              case(A(3), i(1)), case(f(2.0), f(3.0))]
CASES["array"] = lambda: [case(f(1.0), f(2.0), f(3.0)), case(i(1), f(2.0)), case(i(1), i(2)),
                          case(A(3), A(3)), case(A(2, 3), A(2, 3, dtype="i64"), A(2, 3)),
                          case(np.True_, np.False_), case()]


def _gi(*index, **kw):
    return dict(index=index, **kw)


CASES["getitem"] = lambda: [
    case(A(4, 5), i(1), i(2), index=("i", "i")),
    case(A(4, 5), i(-1), i(-2), index=("i", "i")),
    case(A(4, 5), i(-1)),                                         # index=None: all ints
    case(A(4, 5), i(2), **_gi("i")),
    case(A(4, 5), i(1), **_gi(("slice", False, False, False), "i")),
    case(A(4, 5), i(1), i(3), **_gi(("slice", True, True, False))),
    case(A(4, 5), i(-1), i(-1), **_gi("i", ("slice", False, False, True))),   # x[-1, ::-1]
    case(A(6), i(4), i(0), i(-2), **_gi(("slice", True, True, True))),
    case(A(6), i(1), i(3), **_gi(("slice", True, True, False), _shape=(2,))),
    case(A(2, 3, 4), i(1), i(-1), **_gi("i", ("slice", True, False, False))),
    case(A(5, dtype="i64"), i(0)),
    case(A(3, 3), **_gi()),
]
CASES["setitem"] = lambda: [
    case(A(4, 5), f(1.0), i(1), i(2), index=("i", "i")),
    case(A(4, 5), A(5), i(-1), index=("i",)),
    case(A(4, 5), f(0.0), i(1), **_gi(("slice", False, False, False), "i")),
    case(A(4, 5), A(2, 1), i(1), i(3), **_gi(("slice", True, True, False))),
    case(A(6), A(3), i(-2), **_gi(("slice", False, False, True), _shape=(3,))),
    case(A(6), i(3), i(0)),                                      # i64 into f64: fine
    case(A(3, dtype="i64"), i(9), i(0)),
    case(A(3, dtype="bool"), np.True_, i(2)),
]
CASES["sum_to"] = lambda: [case(A(2, 3, 4), A(3, 1)), case(A(3, 4), A()), case(A(3, 4), A(4)),
                           case(A(3, 4), A(3, 4)), case(A(3, 4, dtype="f32"), A(1, 4))]
CASES["broadcast_to"] = lambda: [case(A(3, 1), A(2, 3, 4)), case(A(), A(3)),
                                 case(A(3), A(2, 3, 4), axis=(0, 2)),
                                 case(A(2, 4), A(2, 3, 4), axis=1),
                                 case(A(3, dtype="i64"), A(2, 3))]
CASES["reshape"] = lambda: [case(A(2, 3), i(3), i(2), _shape=(3, 2)), case(A(6), i(2), i(3)),
                            case(A(1, 1), _shape=()), case(A(2, 3, dtype="i64"), i(6))]
CASES["scatter_add"] = lambda: [
    case(A(4, 5), f(1.0), i(1), i(2), index=("i", "i")),
    case(A(4, 5), A(2, 1), i(1), i(3), index=(("slice", True, True, False),)),
    case(A(6), A(3), i(-2), index=(("slice", False, False, True),), _shape=(3,)),
    case(A(3, dtype="i64"), i(9), i(0))]
CASES["dim"] = lambda: [case(A(3, 4)), case(A(3, 4), axis=1), case(A(3, 4, 2), axis=-1)]

_soft_x = lambda: [A(5), A(3, 4), np.array([1.0, -inf, 2.0, -inf]), A(2, 3, 4)]  # noqa: E731
CASES["softmax"] = CASES["sparsemax"] = CASES["onehot_argmax"] = CASES["onehot_argmin"] = \
    lambda: [case(x) for x in _soft_x()] + [case(A(2, 3, 4), axis=1), case(A(2, 3, 4), axis=None),
                                            case(A(3, 2), axis=(0, 1)), case(A(4, dtype="i64")),
                                            case(A(4, dtype="f32"))]


def _gamma_cases():
    out = []
    for reg in ("entropy", "l2"):
        out += [case(x, f(0.5), reg=reg) for x in _soft_x()]
        out += [case(A(2, 3, 4), f(1.0), reg=reg, axis=0),
                case(A(2, 3, 4), f(1.0), reg=reg, axis=None),
                case(A(4, dtype="f32"), np.float32(0.3), reg=reg),
                case(A(4, dtype="i64"), f(0.3), reg=reg)]
    return out


for _n in ("smax", "smin", "sargmax", "sargmin", "smax_arg", "smin_arg"):
    CASES[_n] = _gamma_cases
CASES["smaxn"] = CASES["sminn"] = lambda: [
    case(f(0.1), f(1.0), f(2.0), f(-inf), reg=r) for r in ("entropy", "l2")] + [
    case(f(1.0), i(1)), case(f(0.5), f(-inf), f(-inf)), case(f(0.5), i(3), f(inf), reg="l2")]
CASES["smaximum"] = CASES["sminimum"] = lambda: [
    case(A(3, 1), A(4), f(0.5), reg=r) for r in ("entropy", "l2")] + [
    case(f(1.0), f(-inf), f(0.1)), case(np.array([-inf, 1.0, inf]), f(-inf), f(1.0), reg="l2"),
    case(A(3, dtype="i64"), f(2.0), f(0.1))]


# ---------------------------------------------------------------- helpers
def typeof(v, sym=None):
    """The IR type of a runtime value; with ``sym`` (a prefix) array dims become
    distinct symbols."""
    a = np.asarray(v)
    dt = T.dtype_of_numpy(a.dtype)
    if a.ndim == 0:
        return T.Scalar(dt)
    if sym is None:
        return T.Array(dt, a.shape)
    return T.Array(dt, tuple(T.Sym.name(f"{sym}{k}") for k in range(a.ndim)))


def run(name, args, attrs):
    p = REGISTRY[name]
    full = dict(p.attrs)
    full.update(attrs)
    return p.impl(*args, **{k: v for k, v in full.items() if not k.startswith("_")})


def call(name, *args, **attrs):
    return run(name, args, attrs)


def infer(name, types, **attrs):
    p = REGISTRY[name]
    p.check_arity(len(types))
    return p.result_types(list(types), attrs)


def assert_value_has_type(v, t, where):
    if isinstance(t, T.Scalar):
        assert isinstance(v, np.generic) and not isinstance(v, np.ndarray), \
            f"{where}: expected a NumPy scalar, got {type(v).__name__} {v!r}"
        assert T.dtype_of_numpy(v.dtype) == t.dtype and np.dtype(v.dtype) == T.NP_DTYPES[t.dtype], \
            f"{where}: dtype {v.dtype}, rule says {t}"
    else:
        assert isinstance(t, T.Array), where
        assert isinstance(v, np.ndarray), f"{where}: expected an array, got {v!r}"
        assert np.dtype(v.dtype) == T.NP_DTYPES[t.dtype], f"{where}: dtype {v.dtype}, rule says {t}"
        assert v.ndim == t.ndim, f"{where}: shape {v.shape}, rule says {t}"
        for d, n in zip(t.shape, v.shape):
            assert d is None or isinstance(d, T.Sym) or d == n, f"{where}: shape {v.shape}, rule says {t}"


# ---------------------------------------------------------------- registry-wide
def test_every_primitive_has_cases():
    missing = sorted(set(REGISTRY) - set(CASES))
    extra = sorted(set(CASES) - set(REGISTRY))
    assert not missing, f"primitives without test cases: {missing}"
    assert not extra, f"test cases for unknown primitives: {extra}"


def test_declarations_complete():
    for name, p in REGISTRY.items():
        assert callable(p.infer) and callable(p.impl), name
        assert p.doc and p.group, name
        assert isinstance(p.operands, tuple), name
        if p.smoothed is not None:
            assert p.smoothed in REGISTRY, (name, p.smoothed)
    assert {k: REGISTRY[k].smoothed for k in ("maxn", "minn", "maximum", "minimum", "max", "min",
                                               "onehot_argmax", "onehot_argmin")} == {
        "maxn": "smaxn", "minn": "sminn", "maximum": "smaximum", "minimum": "sminimum",
        "max": "smax", "min": "smin", "onehot_argmax": "sargmax", "onehot_argmin": "sargmin"}
    for name in ("argmax", "argmin", "floor", "ceil", "round", "sign", "onehot_argmax",
                 "onehot_argmin", "eq", "lt"):
        assert REGISTRY[name].zero_derivative, name
    for name in ("sum", "mean", "transpose", "getitem", "setitem", "trace", "diag", "copy",
                 "array", "full"):
        assert REGISTRY[name].linear, name
    assert not REGISTRY["matmul"].linear


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_infer_matches_impl(name):
    gen = CASES.get(name)
    if gen is None:
        pytest.fail(f"no test cases for {name}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k, (args, attrs) in enumerate(gen()):
            where = f"{name} case {k} {[typeof(a) for a in args]} {attrs}"
            types = [typeof(a) for a in args]
            ts = infer(name, types, **attrs)
            assert len(ts) == REGISTRY[name].nresults, where
            vs = run(name, args, attrs)
            vs = (vs,) if len(ts) == 1 else vs
            assert len(vs) == len(ts), where
            for v, t in zip(vs, ts):
                assert_value_has_type(v, t, where)
            # the same rule on symbolic dims: same rank and dtype, no spurious error
            if "_shape" not in attrs:
                stypes = [typeof(a, sym=f"n{j}_") for j, a in enumerate(args)]
                for st, t in zip(infer(name, stypes, **attrs), ts):
                    assert type(st) is type(t) and st.dtype == t.dtype and st.ndim == t.ndim, \
                        f"{where}: symbolic {st} vs {t}"


def test_underscore_attrs_not_passed():
    # impl signatures do not take the front end's hints
    with pytest.raises(TypeError):
        REGISTRY["zeros"].impl(i(2), _shape=(2,))


# ---------------------------------------------------------------- elementwise
def test_elementwise_reference():
    x, y = A(3, 1), A(4)
    assert np.array_equal(call("add", x, y), x + y)
    assert np.array_equal(call("maximum", x, y), np.maximum(x, y))
    assert np.isnan(call("maximum", f(np.nan), f(1.0)))
    assert call("where", np.True_, f(1.0), f(2.0)) == 1.0
    assert isinstance(call("where", np.True_, f(1.0), f(2.0)), np.float64)
    assert call("exp", np.True_).dtype == np.float64
    np.testing.assert_allclose(call("sigmoid", np.array([-800.0, 0.0, 800.0])), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(call("softplus", np.array([-800.0, 800.0])), [0.0, 800.0])


# ---------------------------------------------------------------- reductions
@pytest.mark.parametrize("axis", [None, 0, 1, -1, 2, (0, 2), (-1, 0), (0, 1, 2)])
def test_reductions_reference(axis):
    x = A(2, 3, 4)
    ax = axis
    np.testing.assert_allclose(call("sum", x, axis=axis), np.sum(x, axis=ax))
    np.testing.assert_allclose(call("mean", x, axis=axis), np.mean(x, axis=ax))
    np.testing.assert_allclose(call("prod", x, axis=axis), np.prod(x, axis=ax))
    np.testing.assert_array_equal(call("max", x, axis=axis), np.max(x, axis=ax))
    np.testing.assert_array_equal(call("min", x, axis=axis), np.min(x, axis=ax))
    np.testing.assert_allclose(call("logsumexp", x, axis=axis), np.log(np.sum(np.exp(x), axis=ax)))
    np.testing.assert_allclose(call("norm", x, axis=axis), np.sqrt(np.sum(x ** 2, axis=ax)))
    if not isinstance(axis, tuple):
        np.testing.assert_array_equal(call("argmax", x, axis=axis), np.argmax(x, axis=ax))
        np.testing.assert_array_equal(call("argmin", x, axis=axis), np.argmin(x, axis=ax))


def test_reductions_details():
    m = A(3, 4)
    assert call("norm", m) == pytest.approx(np.linalg.norm(m, "fro"))
    np.testing.assert_allclose(call("norm", m, axis=1), np.linalg.norm(m, axis=1))
    assert call("argmax", np.array([[1, 5], [5, 2]])) == 1            # flat, first maximiser
    assert call("sum", np.array([True, True, False])) == 2
    assert call("sum", np.array([True, True])).dtype == np.int64
    assert np.isnan(call("max", np.array([1.0, np.nan, 2.0])))
    assert call("maxn", i(1), f(2.5), i(3)) == 3.0 and call("maxn", i(1), f(2.5)).dtype == np.float64
    assert call("minn", i(1), i(-3)) == -3 and isinstance(call("minn", i(1), i(-3)), np.int64)
    assert np.isnan(call("maxn", f(1.0), f(np.nan), f(2.0)))
    assert np.isnan(call("minn", f(np.nan), f(1.0)))


def test_logsumexp_infinities():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert call("logsumexp", np.array([-inf, -inf])) == -inf
        assert call("logsumexp", np.array([-inf, 0.0])) == 0.0
        assert call("logsumexp", np.array([inf, 1.0, -inf])) == inf
        r = call("logsumexp", np.array([[-inf, -inf], [1000.0, 1000.0], [-inf, 2.0]]), axis=1)
        np.testing.assert_allclose(r, [-inf, 1000.0 + np.log(2.0), 2.0])
        assert call("logsumexp", np.array([1e308, 1e308])) == pytest.approx(1e308)


# ---------------------------------------------------------------- linear algebra
def test_linalg_reference():
    a, b, v = A(3, 4), A(4, 5), A(4)
    np.testing.assert_allclose(call("matmul", a, b), np.einsum("ik,kj->ij", a, b))
    np.testing.assert_allclose(call("matmul", a, v), np.einsum("ik,k->i", a, v))
    np.testing.assert_allclose(call("matmul", v, b), np.einsum("k,kj->j", v, b))
    assert call("matmul", v, v) == pytest.approx(float(np.sum(v * v)))
    bt, bb = A(2, 1, 3, 4), A(5, 4, 2)
    expect = np.array([[bt[p, 0] @ bb[q] for q in range(5)] for p in range(2)])
    np.testing.assert_allclose(call("matmul", bt, bb), expect)
    np.testing.assert_allclose(call("dot", a, b), np.einsum("ik,kj->ij", a, b))
    np.testing.assert_allclose(call("outer", A(3) * 0 + [1, 2, 3], np.array([1.0, -1.0])),
                               [[1, -1], [2, -2], [3, -3]])
    np.testing.assert_array_equal(call("transpose", a), np.array([[a[i_, j] for i_ in range(3)]
                                                                  for j in range(4)]))
    M, rhs = _spd(4), A(4, 2)
    x = call("solve", M, rhs)
    np.testing.assert_allclose(M @ x, rhs, atol=1e-10)
    assert call("solve", np.array([[2, 0], [0, 4]]), np.array([1, 1])).dtype == np.float64
    m = A(3, 5)
    assert call("trace", m) == pytest.approx(sum(m[k, k] for k in range(3)))
    np.testing.assert_array_equal(call("diag", m), [m[k, k] for k in range(3)])
    d = call("diag", np.array([1.0, 2.0]))
    np.testing.assert_array_equal(d, [[1.0, 0.0], [0.0, 2.0]])
    d2 = call("diag", m)
    d2[0] = 99.0                           # a writable copy
    assert m[0, 0] != 99.0


def test_linalg_symbolic_shapes():
    n, k, m = T.Sym.name("n"), T.Sym.name("k"), T.Sym.name("m")
    assert infer("matmul", [T.Array("f64", (n, k)), T.Array("f64", (k, m))]) == [T.Array("f64", (n, m))]
    assert infer("matmul", [T.Array("f64", (n, k)), T.Array("f64", (k,))]) == [T.Array("f64", (n,))]
    assert infer("matmul", [T.Array("f64", (k,)), T.Array("i64", (k,))]) == [T.F64]
    assert infer("outer", [T.Array("f64", (n,)), T.Array("f64", (m,))]) == [T.Array("f64", (n, m))]
    assert infer("transpose", [T.Array("f64", (n, m))]) == [T.Array("f64", (m, n))]
    assert infer("solve", [T.Array("i64", (n, n)), T.Array("i64", (n, 2))]) == [T.Array("f64", (n, 2))]
    assert infer("diag", [T.Array("f64", (n,))]) == [T.Array("f64", (n, n))]
    assert infer("diag", [T.Array("f64", (n, n))]) == [T.Array("f64", (n,))]
    assert infer("diag", [T.Array("f64", (n, m))]) == [T.Array("f64", (None,))]
    assert infer("sum", [T.Array("f64", (n, m))], axis=0) == [T.Array("f64", (m,))]


# ---------------------------------------------------------------- constructors
def test_constructors_reference():
    z = call("zeros", i(2), i(3))
    assert z.shape == (2, 3) and z.dtype == np.float64 and not z.any()
    assert call("ones", i(3), dtype="i64").tolist() == [1, 1, 1]
    fl = call("full", f(inf), i(2), i(2))
    assert fl.shape == (2, 2) and np.all(fl == inf)
    assert call("full", i(7), i(2)).dtype == np.int64
    np.testing.assert_array_equal(call("eye", i(3)), [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert call("arange", i(5), i(-3), i(-2)).tolist() == list(range(5, -3, -2))
    assert call("arange", i(0), i(3), i(1)).dtype == np.int64
    np.testing.assert_allclose(call("arange", f(0.0), f(1.0), f(0.25)), [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(call("linspace", i(0), i(10), i(3)), [0.0, 5.0, 10.0])
    x = A(3)
    c = call("copy", x)
    c[0] = 42.0
    assert x[0] != 42.0
    assert call("full_like", A(2, dtype="i64"), i(3)).tolist() == [3, 3]
    arr = call("array", i(1), f(2.5))
    assert arr.dtype == np.float64 and arr.tolist() == [1.0, 2.5]
    r1, r2 = A(2, 3), A(2, 3)
    np.testing.assert_array_equal(call("array", r1, r2), np.stack([r1, r2]))
    assert infer("zeros", [T.I64, T.I64], _shape=(T.Sym.name("n"), 3)) == \
        [T.Array("f64", (T.Sym.name("n"), 3))]
    assert infer("zeros", [T.I64, T.I64]) == [T.Array("f64", (None, None))]
    assert infer("full", [T.F64, T.I64]) == [T.Array("f64", (None,))]
    assert infer("array", [T.F64, T.I64, T.F64]) == [T.Array("f64", (3,))]


# ---------------------------------------------------------------- indexing
def test_getitem_reference():
    x = A(4, 5)
    assert call("getitem", x, i(-1), i(-2), index=("i", "i")) == x[-1, -2]
    assert isinstance(call("getitem", x, i(1), i(2), index=("i", "i")), np.float64)
    np.testing.assert_array_equal(call("getitem", x, i(-1)), x[-1])
    np.testing.assert_array_equal(call("getitem", x, i(1), **_gi(("slice", False, False, False), "i")),
                                  x[:, 1])
    np.testing.assert_array_equal(
        call("getitem", x, i(-1), **_gi(("slice", False, False, False), ("slice", False, False, True))),
        x[:, ::-1])
    np.testing.assert_array_equal(call("getitem", x, i(-2), i(-1), **_gi("i", ("slice", False, False, True))),
                                  x[-2, ::-1])
    y = np.arange(10)
    for lo, hi, st in [(8, 1, -2), (-1, -8, -3), (1, 8, 2), (-3, 100, 1), (None, None, -1)]:
        e = ("slice", lo is not None, hi is not None, st is not None)
        ops = [i(v) for v in (lo, hi, st) if v is not None]
        assert call("getitem", y, *ops, **_gi(e)).tolist() == list(range(10))[lo:hi:st]
    r = call("getitem", x, i(1), i(3), **_gi(("slice", True, True, False)))
    r[0, 0] = 123.0                                   # a copy
    assert x[1, 0] != 123.0
    with pytest.raises(IndexError):
        call("getitem", x, i(4), index=("i",))
    with pytest.raises(IndexError):
        call("getitem", x, i(0), i(-6), index=("i", "i"))
    t = infer("getitem", [T.Array("f64", (T.Sym.name("n"), 5)), T.I64],
              **_gi(("slice", False, False, False), "i"))
    assert t == [T.Array("f64", (T.Sym.name("n"),))]
    t = infer("getitem", [T.Array("f64", (T.Sym.name("n"), 5)), T.I64, T.I64],
              **_gi(("slice", True, True, False)))
    assert t == [T.Array("f64", (None, 5))]
    t = infer("getitem", [T.Array("f64", (7,)), T.I64], **_gi(("slice", True, False, False),
                                                             _shape=(T.Sym.name("m"),)))
    assert t == [T.Array("f64", (T.Sym.name("m"),))]


def test_setitem_reference():
    x = A(4, 5)
    x0 = x.copy()
    r = call("setitem", x, f(7.0), i(-1), i(-1), index=("i", "i"))
    assert r[3, 4] == 7.0 and np.array_equal(x, x0)          # x untouched
    e = x0.copy()
    e[1:3] = np.array([[1.0], [2.0]])
    np.testing.assert_array_equal(call("setitem", x, np.array([[1.0], [2.0]]), i(1), i(3),
                                       **_gi(("slice", True, True, False))), e)
    e = x0.copy()
    e[:, 2] = 0.0
    np.testing.assert_array_equal(call("setitem", x, f(0.0), i(2),
                                       **_gi(("slice", False, False, False), "i")), e)
    y = np.arange(6.0)
    e = y.copy()
    e[::-2] = [10.0, 20.0, 30.0]
    np.testing.assert_array_equal(call("setitem", y, np.array([10.0, 20.0, 30.0]), i(-2),
                                       **_gi(("slice", False, False, True))), e)
    with pytest.raises(IndexError):
        call("setitem", y, f(1.0), i(6))
    assert call("dim", A(3, 4), axis=-1) == 4 and isinstance(call("dim", A(3, 4)), np.int64)


# ---------------------------------------------------------------- soft operators
def _proj_simplex(z):
    """Euclidean projection onto the simplex by bisection on the threshold."""
    z = np.asarray(z, float)
    fin = z[np.isfinite(z)]
    lo, hi = fin.max() - 1.0, fin.max()
    for _ in range(200):
        tau = (lo + hi) / 2
        s = np.sum(np.maximum(np.where(np.isfinite(z), z, -1e300) - tau, 0))
        lo, hi = (tau, hi) if s > 1 else (lo, tau)
    return np.maximum(np.where(np.isfinite(z), z, -1e300) - (lo + hi) / 2, 0)


def test_softmax_sparsemax_reference():
    x = A(3, 5)
    e = np.exp(x)
    np.testing.assert_allclose(call("softmax", x), e / e.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(call("softmax", x, axis=0), e / e.sum(axis=0, keepdims=True))
    for z in [A(6) * 3, np.array([0.1, 0.2, 0.15]), np.array([3.0, -inf, 2.5, 0.0]), A(7) * 0.1]:
        q = call("sparsemax", z)
        assert np.all(q >= 0) and q.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(q, _proj_simplex(z), atol=1e-9)
    q = call("sparsemax", A(4, 6) * 2)
    np.testing.assert_allclose(q.sum(axis=-1), 1.0)


def test_soft_ops_with_neg_inf():
    x = np.array([[0.5, -inf, 1.5, -inf], [-inf, -inf, 3.0, -inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for reg in ("entropy", "l2"):
            for q in (call("softmax", x), call("sparsemax", x), call("sargmax", x, f(0.3), reg=reg),
                      call("sargmin", -x, f(0.3), reg=reg), call("onehot_argmax", x)):
                assert not np.any(np.isnan(q))
                assert np.all(q[np.isneginf(x)] == 0.0)
                np.testing.assert_allclose(q.sum(axis=-1), 1.0)
            v = call("smax", x, f(0.3), reg=reg)
            assert np.all(np.isfinite(v))
            # a single finite entry: q is one-hot, value x - gamma * Omega(e_k)
            assert v[1] == pytest.approx(3.0 if reg == "entropy" else 3.0 - 0.3 / 2)
            np.testing.assert_allclose(call("smin", -x, f(0.3), reg=reg), -v)
            # all -inf: value -inf, no NaN
            assert call("smax", np.array([-inf, -inf]), f(1.0), reg=reg) == -inf
            assert call("smaxn", f(1.0), f(-inf), f(-inf), reg=reg) == -inf
            assert call("smaxn", f(1.0), f(-inf), f(2.0), reg=reg) == pytest.approx(
                2.0 if reg == "entropy" else 1.5)
            assert call("sminimum", f(1.0), f(inf), f(0.5), reg=reg) == pytest.approx(
                1.0 if reg == "entropy" else 1.25)
            assert call("smax", np.array([inf, 1.0]), f(1.0), reg=reg) == inf
        assert call("softmax", np.array([-inf, 0.0])).tolist() == [0.0, 1.0]


def test_smax_reference():
    x, g = A(3, 5) * 3, 0.7
    np.testing.assert_allclose(call("smax", x, f(g)), g * np.log(np.sum(np.exp(x / g), axis=-1)))
    np.testing.assert_allclose(call("smin", x, f(g)), -g * np.log(np.sum(np.exp(-x / g), axis=-1)))
    np.testing.assert_allclose(call("sargmax", x, f(g)),
                               np.exp(x / g) / np.exp(x / g).sum(-1, keepdims=True))
    # l2: <q, x> - gamma/2 ||q||^2 with q = projection of x / gamma
    for row in x:
        q = _proj_simplex(row / g)
        assert call("smax", row, f(g), reg="l2") == pytest.approx(q @ row - g / 2 * q @ q)
        np.testing.assert_allclose(call("sargmax", row, f(g), reg="l2"), q, atol=1e-9)
        # and it is the maximum of the objective over the simplex
        for _ in range(20):
            r = _rng.dirichlet(np.ones(row.size))
            assert r @ row - g / 2 * r @ r <= call("smax", row, f(g), reg="l2") + 1e-12
    # the maximiser is the gradient of smax
    for reg in ("entropy", "l2"):
        v, h = A(6), 1e-6
        fd = [(call("smax", v + h * e, f(0.5), reg=reg) - call("smax", v - h * e, f(0.5), reg=reg))
              / (2 * h) for e in np.eye(6)]
        np.testing.assert_allclose(call("sargmax", v, f(0.5), reg=reg), fd, atol=1e-6)
    # the axis attr reduces the named axes together
    y = A(2, 3, 4)
    np.testing.assert_allclose(call("smax", y, f(1.0), axis=None), np.log(np.sum(np.exp(y))))
    np.testing.assert_allclose(call("smax", y, f(1.0), axis=0), np.log(np.sum(np.exp(y), axis=0)))


def test_smax_small_gamma():
    x = np.array([[100.0, 99.5, 37.0, -inf], [-50.0, 120.0, 119.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for reg in ("entropy", "l2"):
            for g in (1e-2, 1e-4, 1e-8):
                v = call("smax", x, f(g), reg=reg)
                assert np.all(np.isfinite(v))
                np.testing.assert_allclose(v, x.max(axis=-1), atol=10 * g)
                np.testing.assert_allclose(call("smin", x, f(g), reg=reg), x.min(axis=-1), atol=10 * g)
                q = call("sargmax", x, f(g), reg=reg)
                np.testing.assert_allclose(q, call("onehot_argmax", x), atol=1e-12)
            v1, v2 = (call("smax", x, f(g), reg=reg) for g in (1.0, 0.1))
            if reg == "entropy":     # decreases to the max from above
                assert np.all(x.max(axis=-1) <= v2) and np.all(v2 <= v1)
            else:                    # increases to the max from below
                assert np.all(v1 <= v2) and np.all(v2 <= x.max(axis=-1))


def test_smoothed_scalar_forms():
    xs = [f(1.0), f(-0.5), f(2.0)]
    for reg in ("entropy", "l2"):
        assert call("smaxn", f(0.4), *xs, reg=reg) == pytest.approx(call("smax", np.array(xs), f(0.4), reg=reg))
        assert call("sminn", f(0.4), *xs, reg=reg) == pytest.approx(call("smin", np.array(xs), f(0.4), reg=reg))
        a, b = A(3, 1), A(4)
        ab = np.stack(np.broadcast_arrays(a, b), axis=-1)
        np.testing.assert_allclose(call("smaximum", a, b, f(0.4), reg=reg), call("smax", ab, f(0.4), reg=reg))
        np.testing.assert_allclose(call("sminimum", a, b, f(0.4), reg=reg), call("smin", ab, f(0.4), reg=reg))
    with pytest.raises(ValueError):
        call("smax", A(3), f(0.0))


def test_onehot_first_maximiser():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(call("onehot_argmax", x), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(call("onehot_argmin", x), [[1, 0, 0], [0, 0, 1]])
    assert call("onehot_argmax", np.array([1, 3, 3])).dtype == np.float64


# ---------------------------------------------------------------- rejections
F2 = T.Array("f64", (3, 4))
F1 = T.Array("f64", (4,))

BAD = [
    ("sum", [F2], {"axis": 2}, "shape", 0),
    ("sum", [F2], {"axis": (0, 0)}, "shape", 0),
    ("argmax", [F2], {"axis": (0, 1)}, "type", 0),
    ("max", [T.FuncType("f")], {}, "type", 0),
    ("matmul", [T.Array("f64", (3, 4)), T.Array("f64", (5, 2))], {}, "shape", 1),
    ("matmul", [F2, T.F64], {}, "shape", 1),
    ("dot", [T.Array("f64", (2, 3, 4)), F1], {}, "shape", 0),
    ("solve", [T.Array("f64", (3, 4)), F1], {}, "shape", 0),
    ("solve", [T.Array("f64", (4, 4)), T.Array("f64", (3,))], {}, "shape", 1),
    ("trace", [F1], {}, "shape", 0),
    ("zeros", [T.I64, T.F64], {}, "type", 1),
    ("zeros", [T.I64], {"dtype": "f16"}, "type", None),
    ("eye", [T.BOOL], {}, "type", 0),
    ("linspace", [T.F64, T.F64, T.F64], {}, "type", 2),
    ("array", [T.F64, F1], {}, "shape", 1),
    ("array", [F1, T.Array("f64", (5,))], {}, "shape", 1),
    ("getitem", [F2, T.F64], {"index": ("i",)}, "type", 1),
    ("getitem", [F2, T.BOOL], {"index": ("i",)}, "type", 1),
    ("getitem", [F2, T.I64, T.I64, T.I64], {"index": ("i", "i", "i")}, "shape", 1),
    ("getitem", [T.F64, T.I64], {"index": ("i",)}, "shape", 0),
    ("setitem", [T.Array("i64", (3,)), T.F64, T.I64], {"index": ("i",)}, "type", 1),
    ("setitem", [F2, T.Array("f64", (5,)), T.I64], {"index": ("i",)}, "shape", 1),
    ("dim", [F2], {"axis": 2}, "shape", 0),
    ("smax", [F1, T.F64], {"reg": "l1"}, "type", None),
    ("smax", [F1, T.BOOL], {}, "type", 1),
    ("smax", [F1, F1], {}, "shape", 1),
    ("softmax", [T.F64], {}, "shape", 0),
    ("sargmax", [F1, T.F64], {"reg": "entropic"}, "type", None),
    ("smaximum", [F2, T.Array("f64", (5,)), T.F64], {}, "shape", 1),
    ("maxn", [T.F64, F1], {}, "shape", 1),
    ("full_like", [T.Array("i64", (3,)), T.F64], {}, "type", 1),
]


@pytest.mark.parametrize("name,types,attrs,kind,arg", BAD,
                         ids=[f"{b[0]}-{k}" for k, b in enumerate(BAD)])
def test_type_rule_rejects(name, types, attrs, kind, arg):
    with pytest.raises(TypeRuleError) as ei:
        infer(name, types, **attrs)
    assert ei.value.kind == kind, ei.value.message
    if arg is not None:
        assert ei.value.arg == arg, ei.value.message


def test_rejection_messages():
    with pytest.raises(TypeRuleError, match="cannot write f64 into an i64 array"):
        infer("setitem", [T.Array("i64", (3,)), T.F64, T.I64], index=("i",))
    with pytest.raises(TypeRuleError, match="'entropy', 'l2'"):
        infer("smin", [F1, T.F64], reg="kl")
    with pytest.raises(TypeRuleError, match="inner dimensions"):
        infer("matmul", [T.Array("f64", (3, 4)), T.Array("f64", (5, 2))])


def test_smax_arg_is_smax_and_its_maximiser():
    # the residual form of smax/smin (reverse mode's forward sweep): the same numbers as
    # the two primitives, also at -inf entries and infinite maxima
    rows = np.array([[0.3, -inf, 1.2, 0.7], [-inf, -inf, -inf, -inf], [inf, 1.0, inf, 0.0]])
    for reg in ("entropy", "l2"):
        for x, axis in ((A(3, 4), -1), (A(2, 3, 4), 0), (rows, 1), (rows, 0), (A(5), None)):
            for name, arg in (("smax", "sargmax"), ("smin", "sargmin")):
                with np.errstate(all="ignore"):
                    v, q = call(name + "_arg", x, f(0.7), reg=reg, axis=axis)
                    v0 = call(name, x, f(0.7), reg=reg, axis=axis)
                    q0 = call(arg, x, f(0.7), reg=reg, axis=axis)
                np.testing.assert_array_equal(v, v0)
                np.testing.assert_array_equal(q, q0)
