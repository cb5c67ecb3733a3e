"""Derivative rules: a sweep of the primitive registry.

For every primitive that is not ``zero_derivative``, on the argument sets of ``CASES``
(a primitive added without an entry fails ``test_every_differentiable_primitive_has_cases``):

* the JVP rule, run as IR (a function built with ``Builder`` around the rule and run by
  the interpreter), against central finite differences;
* the dot-product test ``<w, J u> = <J^T w, u>`` between the JVP and VJP rules;
* second order: the rules applied to the IR the rules emitted (a straight-line forward
  mode below, ``forward``) against finite differences of the first-order rules, on both
  the JVP and the VJP function;
* exactness at ``-inf`` entries, subgradients at ties and kinks, symbolic shapes.
"""
from __future__ import annotations

import numpy as np
import dplang as dp
import pytest

from dplang.backends.interp import run_func
from dplang.ir import types as T
from dplang.ir.builder import Builder, new_region
from dplang.ir.core import Func
from dplang.ir.primitives import REGISTRY
from dplang.ir.verify import verify_func

inf = np.inf
_rng = np.random.default_rng(20240601)


def A(*shape, dtype="f64", lo=-2.0, hi=2.0):
    if dtype in ("f64", "f32"):
        v = _rng.uniform(lo, hi, shape).astype(T.NP_DTYPES[dtype])
    elif dtype == "i64":
        v = _rng.integers(int(np.ceil(lo)), int(hi) + 1, shape).astype(np.int64)
    else:
        v = _rng.integers(0, 2, shape).astype(bool)
    return v[()] if shape == () else v


def P(*shape, dtype="f64"):
    return A(*shape, dtype=dtype, lo=0.5, hi=3.0)


def B(*shape):
    return A(*shape, dtype="bool")


i = lambda v: np.int64(v)          # noqa: E731
f = lambda v: np.float64(v)        # noqa: E731


def case(*args, _fixed=(), _order2=True, **attrs):
    """Arguments and attrs of one application; ``_fixed``: float operands held constant
    (not differentiated: finite differences would leave the function's real domain);
    ``_order2=False``: a point where only the first derivative is exact."""
    return (args, attrs, frozenset(_fixed), _order2)


def spd(n):
    m = _rng.normal(size=(n, n))
    return m @ m.T + n * np.eye(n)


def nonsym(n):
    return spd(n) + _rng.normal(size=(n, n))


# ---------------------------------------------------------------- argument generators
CASES: dict = {}


def _binary(gx=A, gy=A):
    return lambda: [case(gx(3, 1), gy(4)), case(gx(2, 3), gy()), case(gx(), gy()),
                    case(gx(), gy(3)), case(A(3, dtype="i64"), gy(3)),
                    case(gx(2, dtype="f32"), gy(2, dtype="f32"))]


for _n in ("add", "sub", "mul", "maximum", "minimum"):
    CASES[_n] = _binary()
CASES["div"] = _binary(gy=P)
CASES["mod"] = _binary(gy=P)
CASES["pow"] = lambda: [case(P(3, 1), A(4)), case(P(2, 3), f(2.0)), case(P(), P(3)),
                        case(A(4), f(2.0), _fixed=(1,)), case(A(3), f(3.0), _fixed=(1,)),
                        case(P(3), i(3))]


def _unary(g=A):
    return lambda: [case(g(3, 4)), case(g()), case(g(5, dtype="f32")), case(A(3, dtype="i64"))]


for _n in ("exp", "expm1", "sin", "cos", "tanh", "sigmoid", "softplus", "abs", "neg"):
    CASES[_n] = _unary()
for _n in ("log", "log1p", "sqrt"):
    CASES[_n] = _unary(P)
CASES["tan"] = _unary(lambda *s, **k: A(*s, lo=-1.0, hi=1.0, **k))
CASES["where"] = lambda: [case(B(3, 1), A(4), A(3, 4)), case(np.True_, f(1.0), f(2.0)),
                          case(B(3), A(), A(3)), case(B(3), A(3, dtype="i64"), A(3))]
CASES["clip"] = lambda: [case(A(3, 4), f(-0.5), f(0.5)), case(A(), A(4) - 1, P(4)),
                         case(A(5), A(5) - 1.0, A(5) + 1.0), case(A(5), i(0), i(1))]
CASES["cast"] = lambda: [case(A(3), dtype="f64"), case(A(3, 2), dtype="f32"),
                         case(A(3, dtype="f32"), dtype="f64"), case(A(3), dtype="i64"),
                         case(A(3, dtype="i64"), dtype="f64"), case(f(2.5), dtype="f64")]


def _with_zeros():
    x = A(2, 3, 4)
    x[0, 1, 2] = 0.0                         # one zero in a row
    x[1, 2, 0] = x[1, 2, 3] = 0.0            # two zeros in a row
    return x


def _reduction(*extra):
    def gen():
        x = A(2, 3, 4)
        out = [case(x, axis=a) for a in (None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2), ())]
        out += [case(A(5)), case(f(3.0)), case(A(3, 2, dtype="f32"), axis=0),
                case(A(4, dtype="i64"))]
        return out + [c() for c in extra]
    return gen


CASES["sum"] = CASES["mean"] = CASES["max"] = CASES["min"] = CASES["norm"] = _reduction()
# at exact zeros the rule (product of the non-zero others, where) is exact at first order
# only: its own derivative there is piecewise
CASES["prod"] = _reduction(lambda: case(_with_zeros(), axis=2, _order2=False),
                           lambda: case(_with_zeros(), _order2=False),
                           lambda: case(_with_zeros(), axis=(0, 2), _order2=False))
CASES["logsumexp"] = _reduction(
    lambda: case(np.array([[1.0, -inf, 2.0], [-inf, 0.5, -inf]]), axis=1),
    lambda: case(np.array([[1.0, -inf, 2.0], [-inf, 0.5, -inf]])),
    lambda: case(np.array([1000.0, 999.0, -inf])))
CASES["maxn"] = CASES["minn"] = lambda: [case(f(1.0), f(3.0), f(2.0)), case(i(1), f(2.5)),
                                         case(f(1.5)), case(A(), A(), A(), A()),
                                         case(np.float32(1.0), np.float32(2.0))]
CASES["sum_to"] = lambda: [case(A(2, 3, 4), A(3, 1)), case(A(3, 4), A()), case(A(3, 4), A(4)),
                           case(A(3, 4), A(1, 4)), case(A(3, 4), A(3, 4))]
CASES["broadcast_to"] = lambda: [case(A(3, 1), A(2, 3, 4)), case(A(), A(3)),
                                 case(A(3), A(2, 3, 4), axis=(0, 2)),
                                 case(A(2, 4), A(2, 3, 4), axis=1),
                                 case(A(1, 4), A(2, 3, 4), axis=0), case(A(), A(2, 2), axis=None),
                                 case(A(3, 4), A(3, 4))]
CASES["full"] = lambda: [case(f(1.5), i(3), i(2)), case(f(2.0)), case(f(2.0), i(2), i(2),
                                                                       _shape=(2, 2)),
                         case(f(1.5), i(2), dtype="f32"), case(np.float32(0.5), i(3)),
                         case(i(7), i(2), dtype="f64")]
CASES["linspace"] = lambda: [case(f(0.5), f(2.0), i(5)), case(f(-1.0), f(1.0), i(1)),
                             case(i(0), f(3.0), i(4)), case(f(0.0), f(1.0), i(3), _shape=(3,))]
CASES["full_like"] = lambda: [case(A(3, 4), f(7.0)), case(f(2.0), f(3.0)), case(A(3), i(1)),
                              case(A(2, dtype="f32"), np.float32(2.0))]
CASES["copy"] = lambda: [case(A(3, 4)), case(f(2.0))]
CASES["array"] = lambda: [case(f(1.0), f(2.0), f(3.0)), case(i(1), f(2.0)), case(A(3), A(3)),
                          case(A(2, 3), A(2, 3, dtype="i64"), A(2, 3)), case(A())]


def _gi(*index, **kw):
    return dict(index=index, **kw)


S = ("slice", True, True, False)
ALL = ("slice", False, False, False)
CASES["getitem"] = lambda: [
    case(A(4, 5), i(1), i(2), index=("i", "i")),
    case(A(4, 5), i(-1)),
    case(A(4, 5), i(1), **_gi(ALL, "i")),
    case(A(4, 5), i(1), i(3), **_gi(S)),
    case(A(4, 5), i(-1), i(-1), **_gi("i", ("slice", False, False, True))),
    case(A(6), i(4), i(0), i(-2), **_gi(("slice", True, True, True))),
    case(A(6), i(1), i(3), **_gi(S, _shape=(2,))),
    case(A(2, 3, 4), i(1), i(-1), **_gi("i", ("slice", True, False, False))),
    case(A(3, 3), **_gi()),
]
_SET = lambda: [                                                        # noqa: E731
    case(A(4, 5), f(1.0), i(1), i(2), index=("i", "i")),
    case(A(4, 5), A(5), i(-1), index=("i",)),
    case(A(4, 5), f(0.5), i(1), **_gi(ALL, "i")),
    case(A(4, 5), A(2, 1), i(1), i(3), **_gi(S)),
    case(A(4, 5), A(5), i(1), i(3), **_gi(S)),
    case(A(6), A(3), i(-2), **_gi(("slice", False, False, True), _shape=(3,))),
    case(A(6), i(3), i(0)),
    case(A(2, 3, 4), A(3, 4), i(1), index=("i",)),
]
CASES["setitem"] = CASES["scatter_add"] = _SET
CASES["reshape"] = lambda: [case(A(2, 3), i(3), i(2), _shape=(3, 2)),
                            case(A(6), i(2), i(3), _shape=(2, 3)),
                            case(A(2, 3), i(6), _shape=(6,)), case(A(1, 1), _shape=()),
                            case(A(2, 3), i(3), i(2))]
CASES["matmul"] = lambda: [case(A(3, 4), A(4, 5)), case(A(3, 4), A(4)), case(A(4), A(4, 2)),
                           case(A(4), A(4)), case(A(2, 3, 4), A(4, 5)),
                           case(A(2, 1, 3, 4), A(5, 4, 2)), case(A(4), A(2, 4, 3)),
                           case(A(2, 3, 4), A(4)), case(A(3, 4, dtype="i64"), A(4, 2)),
                           case(A(3, 4, dtype="f32"), A(4, dtype="f32"))]
CASES["dot"] = lambda: [case(A(3, 4), A(4, 5)), case(A(3, 4), A(4)), case(A(4), A(4, 2)),
                        case(A(4), A(4))]
CASES["outer"] = lambda: [case(A(3), A(4)), case(A(2, 3), A(4)), case(f(2.0), A(3)),
                          case(A(3), A(2, 2)), case(A(3, dtype="i64"), A(2))]
CASES["transpose"] = lambda: [case(A(3, 4)), case(A(2, 3, 4)), case(A(5)), case(f(1.0)),
                              case(A(2, 3, 4), axes=(1, 0, 2)), case(A(2, 3, 4), axes=(-1, 0, 1))]
CASES["solve"] = lambda: [case(spd(4), A(4)), case(spd(3), A(3, 2)), case(nonsym(3), A(3)),
                          case(nonsym(3), A(3, 4)), case(np.array([[2, 1], [1, 3]]), A(2))]
CASES["trace"] = lambda: [case(A(3, 3)), case(A(3, 5)), case(A(4, 2))]
CASES["diag"] = lambda: [case(A(4)), case(A(3, 3)), case(A(2, 5)), case(A(5, 2))]

_SOFT_X = lambda: [A(5), A(3, 4), np.array([1.0, -inf, 1.6, -inf]),         # noqa: E731
                   np.array([[0.3, -inf], [-inf, 1.0], [0.5, 0.6]])]
CASES["softmax"] = CASES["sparsemax"] = lambda: (
    [case(x) for x in _SOFT_X()] +
    [case(A(2, 3, 4), axis=1), case(A(2, 3, 4), axis=None), case(A(2, 3, 4), axis=(0, 2)),
     case(A(4, dtype="f32")), case(A(4, dtype="i64"))])


def _gamma_cases():
    out = []
    for reg in ("entropy", "l2"):
        out += [case(x, f(0.7), reg=reg) for x in _SOFT_X()]
        out += [case(A(2, 3, 4), f(1.3), reg=reg, axis=0),
                case(A(2, 3, 4), f(0.9), reg=reg, axis=None),
                case(A(2, 3, 4), f(0.9), reg=reg, axis=(0, 2)),
                case(A(4, dtype="f32"), np.float32(0.3), reg=reg),
                case(A(4, dtype="i64"), f(0.8), reg=reg)]
    return out


for _n in ("smax", "smin", "sargmax", "sargmin", "smax_arg", "smin_arg"):
    CASES[_n] = _gamma_cases


# Primitives with several results are checked through one packed result: a fixed linear
# map of them, (pack(b, results, attrs), its adjoint unpack(b, w, results, attrs)).
def _arg_axes(q, attrs):
    from dplang.ir.primitives.reductions import norm_axes
    return tuple(norm_axes(attrs.get("axis"), q.type.ndim, "smax_arg"))


def _pack_arg(b, zs, attrs):
    """(v, q) -> v spread over the axes + q / 2"""
    v, q = zs
    half = b.const(0.5, T.Scalar(q.type.dtype))
    return b.prim("add", b.prim("broadcast_to", v, q, axis=_arg_axes(q, attrs)),
                  b.prim("mul", q, half))


def _unpack_arg(b, w, zs, attrs):
    half = b.const(0.5, T.Scalar(w.type.dtype))
    return [b.prim("sum", w, axis=_arg_axes(zs[1], attrs)), b.prim("mul", w, half)]


PACK = {"smax_arg": (_pack_arg, _unpack_arg), "smin_arg": (_pack_arg, _unpack_arg)}
CASES["smaxn"] = CASES["sminn"] = lambda: [
    c for r in ("entropy", "l2") for c in (
        case(f(0.5), f(1.0), f(1.3), f(-inf), reg=r), case(f(1.0), i(1), f(0.5), reg=r),
        case(f(0.7), f(0.3), reg=r), case(f(2.0), A(), A(), A(), reg=r))]
CASES["smaximum"] = CASES["sminimum"] = lambda: [
    c for r in ("entropy", "l2") for c in (
        case(A(3, 1), A(4), f(0.8), reg=r), case(f(1.0), f(-inf), f(0.3), reg=r),
        case(A(3, dtype="i64"), A(3), f(0.7), reg=r), case(A(2, 2), A(), f(1.1), reg=r),
        case(np.array([-inf, 0.2, 1.0]), np.array([0.1, -inf, 1.2]), f(0.6), reg=r))]


# ---------------------------------------------------------------- building IR
def typeof(v, sym=None):
    a = np.asarray(v)
    dt = T.dtype_of_numpy(a.dtype)
    if a.ndim == 0:
        return T.Scalar(dt)
    if sym is None:
        return T.Array(dt, a.shape)
    return T.Array(dt, tuple(T.Sym.name(f"{sym}{k}") for k in range(a.ndim)))


def is_float(v):
    return T.is_float(typeof(v))


def _func(name, types, body_fn):
    """A Func of params ``types``; ``body_fn(b, params) -> result values``."""
    body = new_region(list(types), hints=[f"p{k}" for k in range(len(types))])
    b = Builder(body)
    res = body_fn(b, body.args)
    b.return_(*res)
    fn = Func(name, body, [r.type for r in res], param_names=[f"p{k}" for k in range(len(types))])
    verify_func(fn)
    return fn


class Case:
    """One application of a primitive with the functions the checks run."""

    def __init__(self, name, args, attrs, fixed=frozenset(), order2=True, sym=None):
        self.name, self.args, self.attrs, self.order2 = name, list(args), attrs, order2
        self.prim = REGISTRY[name]
        self.types = [typeof(a, None if sym is None else f"{sym}{k}_") for k, a in enumerate(args)]
        self.active = [is_float(a) and k not in fixed for k, a in enumerate(args)]
        self.where = f"{name}{[str(t) for t in self.types]} {attrs}"

    # the primitive alone (several results packed into one, see PACK)
    def apply(self, b, ps):
        z = b.prim(self.name, *ps, **self.attrs)
        if self.prim.nresults == 1:
            return z, z.owner
        return PACK[self.name][0](b, list(z), z[0].owner.attrs), z[0].owner

    def primal(self):
        return _func(self.name, self.types, lambda b, ps: [self.apply(b, ps)[0]])

    def jvp(self):
        """(args..., tangents of the active args) -> (z, dz)"""
        n = len(self.types)
        ttypes = [t for t, a in zip(self.types, self.active) if a]

        def body(b, ps):
            prim, tans = ps[:n], iter(ps[n:])
            z, op = self.apply(b, prim)
            ts = [next(tans) if a else None for a in self.active]
            dzs = self.prim.jvp(b, list(prim), ts, list(op.results), op.attrs)
            for d, r in zip(dzs, op.results):
                assert d is None or d.type == r.type, \
                    f"{self.where}: tangent {d.type} of result {r.type}"
            self.jvp_none = all(d is None for d in dzs)
            if len(dzs) == 1:
                dz = dzs[0]
            elif not self.jvp_none:
                dz = PACK[self.name][0](b, [d if d is not None else _zeros_of(b, r)
                                            for d, r in zip(dzs, op.results)], op.attrs)
            else:
                dz = None
            return [z, dz if dz is not None else _zeros_of(b, z)]
        return _func(self.name + "_jvp", self.types + ttypes, body)

    def vjp(self):
        """(args..., w) -> cotangents of the active args"""
        n = len(self.types)
        ztype = self.prim.result_types(self.types, self.attrs)[-1]

        def body(b, ps):
            prim, w = ps[:n], ps[n]
            z, op = self.apply(b, prim)
            ws = [w] if self.prim.nresults == 1 else \
                PACK[self.name][1](b, w, list(op.results), op.attrs)
            cts = self.prim.vjp(b, list(prim), list(op.results), ws, op.attrs)
            assert len(cts) == n, f"{self.where}: {len(cts)} cotangents for {n} operands"
            out = []
            for c, p, a in zip(cts, prim, self.active):
                if c is not None:
                    assert T.is_float(p.type), f"{self.where}: cotangent for {p.type}"
                    assert c.type == p.type, f"{self.where}: cotangent {c.type} of {p.type}"
                if a:
                    out.append(c if c is not None else _zeros_of(b, p))
            return out
        return _func(self.name + "_vjp", self.types + [ztype], body)


def _zeros_of(b, v):
    if isinstance(v.type, T.Scalar):
        return b.const(0.0, T.Scalar(v.type.dtype if T.is_float(v.type) else "f64"))
    z = b.prim("zeros_like", v)
    return z if T.is_float(v.type) else b.prim("cast", z, dtype="f64")


def run(fn, args):
    return run_func(None, fn, list(args))


def rand_like(v):
    a = np.asarray(v)
    r = _rng.normal(size=a.shape).astype(a.dtype)
    return r[()] if a.ndim == 0 else r


def inner(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sum(a * b))


def _scale(*xs):
    return max([1.0] + [float(np.max(np.abs(np.asarray(x)))) for x in xs if np.size(x)])


def _shift(args, dirs, active, h):
    return [a + h * d if act else a for a, d, act in zip(args, dirs, active)]


def _fd(fn, args, dirs, active, k=0, h=1e-6):
    """Central difference of result k of fn along dirs."""
    hi = run(fn, _shift(args, dirs, active, h))[k]
    lo = run(fn, _shift(args, dirs, active, -h))[k]
    with np.errstate(invalid="ignore"):
        return (np.asarray(hi, np.float64) - np.asarray(lo, np.float64)) / (2 * h)


def _f64_case(c):
    return all(np.asarray(a).dtype != np.float32 for a in c.args)


def _fd_ok(c, z):
    """Finite differences apply: float64 operands and a finite, float value."""
    return _f64_case(c) and typeof(z).dtype == "f64" and np.all(np.isfinite(z))


def all_cases(name):
    for args, attrs, fixed, order2 in CASES[name]():
        yield Case(name, args, attrs, fixed, order2)


DIFF = sorted(n for n, p in REGISTRY.items() if not p.zero_derivative)


# ---------------------------------------------------------------- registry-wide
def test_every_primitive_has_rules_or_zero_derivative():
    for name, p in REGISTRY.items():
        if p.zero_derivative:
            assert p.jvp is None and p.vjp is None, f"{name}: zero_derivative with rules"
        else:
            assert callable(p.jvp) and callable(p.vjp), f"{name}: no derivative rules"


def test_every_differentiable_primitive_has_cases():
    missing = sorted(set(DIFF) - set(CASES))
    extra = sorted(set(CASES) - set(DIFF))
    assert not missing, f"differentiable primitives without rule test cases: {missing}"
    assert not extra, f"rule test cases for unknown or zero-derivative primitives: {extra}"


@pytest.mark.parametrize("name", DIFF)
def test_jvp_matches_finite_differences(name):
    checked = 0
    for c in all_cases(name):
        if not any(c.active):
            continue
        fj = c.jvp()
        u = [rand_like(a) for a in c.args]
        z, dz = run(fj, c.args + [d for d, a in zip(u, c.active) if a])
        (z0,) = run(c.primal(), c.args)
        np.testing.assert_array_equal(z, z0, err_msg=c.where)
        if not T.is_float(typeof(z)):
            assert c.jvp_none, f"{c.where}: tangent of an integer result"
            continue
        assert np.all(np.isfinite(dz)), f"{c.where}: tangent {dz}"
        if not _fd_ok(c, z):
            continue
        fd = _fd(c.primal(), c.args, u, c.active)
        s = _scale(fd)
        np.testing.assert_allclose(dz, fd, rtol=1e-6, atol=1e-6 * s, err_msg=c.where)
        checked += 1
    assert checked, f"{name}: no case checked against finite differences"


@pytest.mark.parametrize("name", DIFF)
def test_dot_product_jvp_vjp(name):
    for c in all_cases(name):
        if not any(c.active):
            continue
        u = [rand_like(a) for a in c.args]
        z, dz = run(c.jvp(), c.args + [d for d, a in zip(u, c.active) if a])
        if not T.is_float(typeof(z)):
            continue
        w = rand_like(z)
        cts = run(c.vjp(), c.args + [w])
        act_u = [d for d, a in zip(u, c.active) if a]
        for ct, d in zip(cts, act_u):
            assert np.shape(ct) == np.shape(d), c.where
            assert np.all(np.isfinite(ct)), f"{c.where}: cotangent {ct}"
        lhs = inner(w, dz)
        rhs = sum(inner(ct, d) for ct, d in zip(cts, act_u))
        tol = 1e-10 if _f64_case(c) and typeof(z).dtype == "f64" else 1e-4
        assert abs(lhs - rhs) <= tol * max(1.0, abs(lhs), abs(rhs)), \
            f"{c.where}: <w, J u> = {lhs} but <J^T w, u> = {rhs}"


# ---------------------------------------------------------------- second order
def forward(fn, active):
    """Straight-line forward mode by the rules: (params..., tangents of the active params)
    -> (results..., tangents of the results); rules applied to the IR rules emitted."""
    ptypes = [p.type for p in fn.params]
    ttypes = [t for t, a in zip(ptypes, active) if a]
    body = new_region(ptypes + ttypes)
    b = Builder(body)
    n = len(ptypes)
    env = dict(zip(fn.params, body.args[:n]))
    act = [p for p, a in zip(fn.params, active) if a]
    tan = dict(zip(act, body.args[n:]))
    for op in fn.body.ops:
        if op.name == "return":
            outs = [env[v] for v in op.operands]
            touts = [tan.get(v) or _zeros_of(b, env[v]) for v in op.operands]
            b.return_(*outs, *touts)
            break
        assert not op.regions, op
        new = b.op(op.name, [env[v] for v in op.operands], [r.type for r in op.results],
                   dict(op.attrs))
        for r, nr in zip(op.results, new.results):
            env[r] = nr
        p = REGISTRY.get(op.name)
        if p is None or p.zero_derivative:
            continue
        ts = [tan.get(v) for v in op.operands]
        if all(t is None for t in ts):
            continue
        for r, t in zip(new.results, p.jvp(b, new.operands, ts, new.results, new.attrs)):
            if t is not None:
                assert t.type == r.type, (op.name, t.type, r.type)
                tan[[k for k, v in env.items() if v is r][0]] = t
    res = [env[v] for v in fn.body.ops[-1].operands]
    out = Func(fn.name + "_fwd", body, [v.type for v in res] + [v.type for v in res])
    verify_func(out)
    return out


def _second_order(c, fn, nprimal, extra_args, k_out):
    """d/dx of fn's results (the first-order rules as IR) along v, by ``forward``, against
    finite differences of fn."""
    active = c.active + [False] * len(extra_args)
    args = c.args + extra_args
    v = [rand_like(a) for a in c.args] + [None] * len(extra_args)
    fwd = forward(fn, active)
    res = run(fwd, args + [d for d, a in zip(v, active) if a])
    nres = len(res) // 2
    for k in k_out:
        d2 = res[nres + k]
        assert np.all(np.isfinite(d2)), f"{c.where}: second-order tangent {d2}"
        fd = _fd(fn, args, v, active, k=k)
        np.testing.assert_allclose(d2, fd, rtol=1e-5, atol=1e-5 * _scale(fd), err_msg=c.where)


@pytest.mark.parametrize("name", DIFF)
def test_second_order(name):
    """The rules' own IR differentiated by the rules: along v, the JVP function
    (x, u) -> J(x) u and the VJP function (x, w) -> J(x)^T w, against finite differences."""
    checked = 0
    for c in all_cases(name):
        if not any(c.active):
            continue
        (z,) = run(c.primal(), c.args)
        if not _fd_ok(c, z) or not c.order2:
            continue
        u = [rand_like(a) for a, act in zip(c.args, c.active) if act]
        _second_order(c, c.jvp(), len(c.args), u, [1])
        w = rand_like(z)
        _second_order(c, c.vjp(), len(c.args), [w], range(sum(c.active)))
        checked += 1
    assert checked, f"{name}: no case checked at second order"


def test_linear_primitives_rules_do_not_read_float_primals():
    """``linear=True``: the derivative is the same at every point (the JVP at x and at
    2x + 1 agree)."""
    for name in DIFF:
        if not REGISTRY[name].linear:
            continue
        for c in all_cases(name):
            if not any(c.active) or not _f64_case(c):
                continue
            u = [rand_like(a) for a, act in zip(c.args, c.active) if act]
            fj = c.jvp()
            moved = [2 * a + 1 if act else a for a, act in zip(c.args, c.active)]
            if name == "cast":
                moved = c.args
            d1 = run(fj, c.args + u)[1]
            d2 = run(fj, moved + u)[1]
            np.testing.assert_allclose(d1, d2, rtol=1e-12, atol=1e-12, err_msg=c.where)


# ---------------------------------------------------------------- exactness and subgradients
def grad_of(name, args, w=None, **attrs):
    """The VJP of a primitive at args with cotangent w (ones by default): cotangents of
    the float operands."""
    c = Case(name, args, attrs)
    (z,) = run(c.primal(), c.args)
    w = np.ones_like(np.asarray(z, np.float64))[()] if w is None else w
    return run(c.vjp(), c.args + [w])


def tangent_of(name, args, dirs, **attrs):
    c = Case(name, args, attrs)
    return run(c.jvp(), c.args + [d for d, a in zip(dirs, c.active) if a])[1]


def test_ties_go_to_the_first():
    x = np.array([1.0, 3.0, 3.0, 2.0])
    gx, gy = grad_of("maximum", [x, np.array([1.0, 3.0, 0.0, 5.0])])
    np.testing.assert_array_equal(gx, [1, 1, 1, 0])
    np.testing.assert_array_equal(gy, [0, 0, 0, 1])
    gx, gy = grad_of("minimum", [x, np.array([1.0, 3.0, 0.0, 5.0])])
    np.testing.assert_array_equal(gx, [1, 1, 0, 1])
    (g,) = grad_of("max", [x])
    np.testing.assert_array_equal(g, [0, 1, 0, 0])
    (g,) = grad_of("min", [np.array([2.0, 1.0, 1.0])])
    np.testing.assert_array_equal(g, [0, 1, 0])
    m = np.array([[1.0, 5.0, 5.0], [7.0, 7.0, 0.0]])
    (g,) = grad_of("max", [m], axis=1)
    np.testing.assert_array_equal(g, [[0, 1, 0], [1, 0, 0]])
    (g,) = grad_of("max", [np.array([[1.0, 7.0], [7.0, 0.0]])])        # flat order
    np.testing.assert_array_equal(g, [[0, 1], [0, 0]])
    g = grad_of("maxn", [f(2.0), f(3.0), f(3.0), f(1.0)])
    np.testing.assert_array_equal(g, [0, 1, 0, 0])
    g = grad_of("minn", [f(1.0), f(1.0)])
    np.testing.assert_array_equal(g, [1, 0])
    assert tangent_of("maxn", [f(3.0), f(3.0)], [f(1.0), f(10.0)]) == 1.0


def test_kinks_and_zeros():
    (g,) = grad_of("abs", [np.array([-2.0, 0.0, 3.0])])
    np.testing.assert_array_equal(g, [-1, 0, 1])
    (g,) = grad_of("norm", [np.zeros(3)])
    np.testing.assert_array_equal(g, [0, 0, 0])
    (g,) = grad_of("norm", [np.array([[0.0, 0.0], [3.0, 4.0]])], axis=1)
    np.testing.assert_allclose(g, [[0, 0], [0.6, 0.8]])
    (g,) = grad_of("prod", [np.array([2.0, 0.0, 3.0])])
    np.testing.assert_array_equal(g, [0, 6, 0])
    (g,) = grad_of("prod", [np.array([0.0, 0.0, 3.0])])
    np.testing.assert_array_equal(g, [0, 0, 0])
    (g,) = grad_of("prod", [np.array([[0.0, 2.0], [4.0, 5.0]])], axis=0)
    np.testing.assert_array_equal(g, [[4, 5], [0, 2]])
    # x ** y: no NaN at x = 0 or x < 0
    gx, gy = grad_of("pow", [np.array([0.0, -2.0, 3.0]), f(2.0)])
    np.testing.assert_allclose(gx, [0.0, -4.0, 6.0])
    assert np.isfinite(gy)
    gx, gy = grad_of("pow", [np.array([0.0, -2.0, 3.0]), np.array([2.0, 2.0, 2.0])])
    np.testing.assert_allclose(gx, [0.0, -4.0, 6.0])
    np.testing.assert_allclose(gy, [0.0, 0.0, 9 * np.log(3.0)])
    gx, glo, ghi = grad_of("clip", [np.array([-1.0, 0.2, 2.0]), f(0.0), f(1.0)])
    np.testing.assert_array_equal(gx, [0, 1, 0])                 # zero outside
    assert (glo, ghi) == (1.0, 1.0)
    gx, glo, ghi = grad_of("clip", [np.array([-1.0, 0.2, 2.0, 0.0, 1.0]), f(0.0), f(1.0)])
    np.testing.assert_array_equal(gx, [0, 1, 0, 1, 1])           # ties go to x
    assert (glo, ghi) == (1.0, 1.0)


def _all_finite(*xs):
    return all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in xs)


INF_ROWS = np.array([[1.0, -inf, 2.0, -inf], [-inf, -inf, -inf, -inf], [-inf, 0.5, -inf, -inf]])


@pytest.mark.parametrize("name,args,attrs", [
    ("logsumexp", [INF_ROWS], {"axis": 1}),
    ("logsumexp", [np.array([-inf, -inf])], {}),
    ("softmax", [INF_ROWS], {}),
    ("sparsemax", [INF_ROWS], {}),
    ("smax", [INF_ROWS, f(0.5)], {"reg": "entropy"}),
    ("smax", [INF_ROWS, f(0.5)], {"reg": "l2"}),
    ("smin", [-INF_ROWS, f(0.5)], {"reg": "entropy"}),
    ("smin", [-INF_ROWS, f(0.5)], {"reg": "l2"}),
    ("sargmax", [INF_ROWS, f(0.5)], {"reg": "entropy"}),
    ("sargmax", [INF_ROWS, f(0.5)], {"reg": "l2"}),
    ("sargmin", [-INF_ROWS, f(0.5)], {"reg": "entropy"}),
    ("sargmin", [-INF_ROWS, f(0.5)], {"reg": "l2"}),
    ("smaxn", [f(0.5), f(-inf), f(-inf)], {"reg": "entropy"}),
    ("smaxn", [f(0.5), f(-inf), f(1.0), f(-inf)], {"reg": "l2"}),
    ("sminn", [f(0.5), f(inf), f(inf)], {"reg": "entropy"}),
    ("sminn", [f(0.5), f(inf), f(2.0)], {"reg": "l2"}),
    ("smaximum", [np.array([-inf, -inf, 1.0, inf]), np.array([-inf, 2.0, -inf, 1.0]), f(0.3)],
     {"reg": "entropy"}),
    ("smaximum", [np.array([-inf, -inf, 1.0]), np.array([-inf, 2.0, -inf]), f(0.3)],
     {"reg": "l2"}),
    ("sminimum", [np.array([inf, inf, 1.0]), np.array([inf, 2.0, inf]), f(0.3)],
     {"reg": "entropy"}),
])
def test_infinite_entries_give_finite_derivatives(name, args, attrs):
    """-inf entries (inf for the min forms): derivatives finite, first and second order,
    and exact (weight 0) at the infinite entries of a row with a finite entry."""
    c = Case(name, args, attrs)
    (z,) = run(c.primal(), c.args)
    u = [rand_like(a) for a, act in zip(c.args, c.active) if act]
    _, dz = run(c.jvp(), c.args + u)
    cts = run(c.vjp(), c.args + [rand_like(z)])
    assert _all_finite(dz, *cts), f"{c.where}: {dz} {cts}"
    # the cotangent of an infinite entry of a row with finite entries is exactly 0
    x = np.asarray(args[0], np.float64)
    if x.ndim == 2:
        g = cts[0]
        fin_rows = np.any(np.isfinite(x), axis=1)
        assert np.all(g[fin_rows][~np.isfinite(x[fin_rows])] == 0), f"{c.where}: {g}"
    # second order through the rules' IR
    f2 = forward(c.jvp(), c.active + [False] * len(u))
    v = [rand_like(a) for a, act in zip(c.args, c.active) if act]
    res = run(f2, c.args + u + v)
    assert _all_finite(*res[len(res) // 2:]), f"{c.where}: second order {res}"
    f3 = forward(c.vjp(), c.active + [False])
    res = run(f3, c.args + [rand_like(z)] + v)
    assert _all_finite(*res[len(res) // 2:]), f"{c.where}: second order of the VJP {res}"


def test_smax_gamma_derivative_is_danskin():
    x = np.array([0.3, -1.2, 2.0, -inf])
    for reg in ("entropy", "l2"):
        gx, gg = grad_of("smax", [x, f(0.7)], reg=reg)
        q = REGISTRY["sargmax"].impl(x, f(0.7), reg=reg)
        np.testing.assert_allclose(gx, q)
        if reg == "entropy":
            qq = q[q > 0]
            np.testing.assert_allclose(gg, -np.sum(qq * np.log(qq)))
        else:
            np.testing.assert_allclose(gg, -np.sum(q * q) / 2)


def test_second_gamma_derivative_with_a_subnormal_weight():
    """d^2 smax / d gamma^2 = Var_q(x) / gamma^3 (entropy).  A weight below 2^-1022 (a gap
    of 720 gamma) made it -inf: the rule's x log x divided by the weight (1 / q = inf).
    The scalar soft max of DP cells (smaxn) takes the same rule; both routes are checked,
    on the interpreter and the cpu backend, against the closed form and differences."""
    src = (
        "@smooth(entropy, gamma=g)\n"
        "def cell(a: f64, b: f64, c: f64, g: f64) -> f64:\n"
        "    return max(a, b, c)\n"
        "def row(a: f64, b: f64, c: f64, g: f64) -> f64:\n"
        "    return smax(array([a, b, c]), g, \"entropy\")\n")
    for xs in ([0.0, -720.0, -inf], [0.0, -1.0, -740.0], [3.0, 2.5, -727.0]):
        g = 1.0
        x = np.array(xs)
        fin = np.isfinite(x)
        q = np.zeros(3)
        q[fin] = np.exp((x[fin] - x.max()) / g)
        q /= q.sum()
        mean = np.sum(q[fin] * x[fin])
        want = np.sum(q[fin] * (x[fin] - mean) ** 2) / g ** 3
        for backend in ("interp", "cpu"):
            mod = dp.compile(src, filename="gamma2.dp", backend=backend)
            for fn in (mod.cell, mod.row):
                got = float(dp.hvp(fn, wrt=3)(*xs, g, 1.0))
                assert np.isfinite(got), (xs, backend, got)
                assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), (xs, backend, got, want)
                d = dp.grad(fn, wrt=3)
                fd = (d(*xs, g + 1e-6) - d(*xs, g - 1e-6)) / 2e-6
                assert abs(got - fd) <= 1e-6 * max(1.0, abs(want))


def test_broadcast_operands_get_summed_cotangents():
    x, y = A(3, 1), A(4)
    w = A(3, 4)
    gx, gy = grad_of("mul", [x, y], w)
    np.testing.assert_allclose(gx, np.sum(w * y, axis=1, keepdims=True))
    np.testing.assert_allclose(gy, np.sum(w * x, axis=0))
    x, y = A(3, 4), A()
    gx, gy = grad_of("add", [x, y], w)
    np.testing.assert_allclose(gx, w)
    np.testing.assert_allclose(gy, np.sum(w))
    assert isinstance(gy, np.float64)


# ---------------------------------------------------------------- symbolic shapes
@pytest.mark.parametrize("name,args,attrs", [
    ("mean", [A(3, 4)], {"axis": 1}), ("sum", [A(3, 4)], {}), ("trace", [A(3, 5)], {}),
    ("diag", [A(4, 2)], {}), ("diag", [A(2, 4)], {}), ("matmul", [A(4), A(2, 4, 3)], {}),
    ("matmul", [A(2, 3, 4), A(4)], {}), ("outer", [A(2, 3), A(4)], {}),
    ("softmax", [A(3, 4)], {"axis": 0}), ("smax", [A(3, 4), f(0.5)], {"reg": "l2"}),
    ("max", [A(3, 4)], {"axis": 0}), ("prod", [A(3, 4)], {"axis": 1}),
    ("getitem", [A(4, 5), i(1)], {}), ("exp", [A(3, 4)], {}), ("norm", [A(3, 4)], {}),
])
def test_rules_on_symbolic_shapes(name, args, attrs):
    """The same rules on types with symbolic dims (sizes taken with ``dim`` at run time)
    verify and compute the same derivatives."""
    conc, symb = Case(name, args, attrs), Case(name, args, attrs, sym="n")
    u = [rand_like(a) for a, act in zip(args, conc.active) if act]
    np.testing.assert_allclose(run(symb.jvp(), args + u)[1], run(conc.jvp(), args + u)[1])
    (z,) = run(conc.primal(), args)
    w = rand_like(z)
    for a, b in zip(run(symb.vjp(), args + [w]), run(conc.vjp(), args + [w])):
        np.testing.assert_allclose(a, b)


# ---------------------------------------------------------------- HVP by the forward pass
@pytest.mark.parametrize("name", DIFF)
def test_hvp_by_forward_pass(name):
    """Hessian-vector products: passes/ad_forward applied to the VJP function
    (x, w) -> J(x)^T w (the gradient of <w, f(x)>), against finite differences."""
    from dplang.passes.ad_forward import ForwardAD
    checked = 0
    for c in all_cases(name):
        if not any(c.active):
            continue
        (z,) = run(c.primal(), c.args)
        if not _fd_ok(c, z) or not c.order2:
            continue
        w = rand_like(z)
        grad = c.vjp()
        act = [k for k, a in enumerate(c.active) if a]
        hvp = ForwardAD(None).jvp_func(grad, tuple(act))
        verify_func(hvp)
        v = [rand_like(c.args[k]) for k in act]
        res = run(hvp, c.args + [w] + v)
        ngrad = len(act)
        dirs = [None] * len(c.args)
        for k, d in zip(act, v):
            dirs[k] = d
        for j in range(ngrad):
            hv = res[ngrad + j]
            fd = _fd(grad, c.args + [w], dirs + [None], c.active + [False], k=j)
            np.testing.assert_allclose(hv, fd, rtol=1e-5, atol=1e-5 * _scale(fd),
                                       err_msg=f"{c.where}: gradient {j}")
        checked += 1
    assert checked, f"{name}: no HVP checked"
