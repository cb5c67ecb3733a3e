"""Derivative rules that read like the math.

Every primitive's JVP and VJP rule is written next to its declaration with ``rules``:

    rules("sin", partials={"x": lambda x: cos(x)})                 # dz/dx = cos(x)
    rules("div", jvp=lambda y, z, dx, dy: (dx - z * dy) / y,
                 vjp=lambda y, z, g: (g / y, -g * z / y))

A rule is a Python function of ``E`` values (IR values with Python operators) that emits
IR through the builder the AD pass hands in; since it emits ordinary primitives, which
have rules of their own, rules applied to the IR that rules emitted give the second and
higher derivatives.

**The interface the AD passes call** (what ``rules`` installs as ``Primitive.jvp`` /
``Primitive.vjp``)::

    jvp(b, primals, tangents, outs, attrs) -> [tangent of each result | None]
    vjp(b, primals, outs, cotangents, attrs) -> [cotangent of each operand | None]

``None`` is a zero (or an operand that has no derivative: integers, bools, indices,
sizes, the ``like`` operand of ``sum_to``).  The rules emit at ``b``'s insertion point.
What comes back is fitted to its primal: a result tangent has exactly the result's type
(cast to its dtype, ``broadcast_to`` its shape), an operand cotangent exactly the
operand's type (cast, and ``sum_to`` the operand's shape: the reverse of broadcasting,
a scalar operand of an array op gets the sum).  Integer/bool results never get tangents,
integer/bool operands never get cotangents.

**Names a rule may take** (only those it names are passed, checked at declaration):
the operand names of the declaration (``x``, ``y``, ``A``, ``gamma``; a starred operand
``*idx`` gives a list ``idx``), their tangents ``dx``, ``dy``, ``dA``, ... (jvp; lists for
starred operands), the result ``z`` (``zs`` when several), its cotangent ``g`` (vjp),
every attr by name (``axis``, ``reg``, ``index``, ``dtype``, ...) and ``attrs`` (the op's
full attrs, ``_shape`` hints included, to pass on to the same primitive).

**What a rule returns**: ``jvp`` the tangent of the result (an ``E``, ``ZERO`` or
``None``); ``vjp`` the cotangents of the operands: one value when the primitive has one
operand entry, else a tuple aligned with the operand entries or a dict by operand name
(a starred entry takes a list; missing names and ``None`` are zeros).
``partials={"x": f, "y": h}`` (elementwise primitives: a diagonal Jacobian) gives both:
``jvp = dx * f(..) + dy * h(..)`` and ``vjp = (g * f(..), g * h(..))``; a partial may
take the operands, ``z`` and the attrs.

**Symbolic zeros**: a missing tangent is ``ZERO``, which absorbs what is linear in it
(``ZERO * a``, ``a @ ZERO``, ``ZERO.sum()``, ``getitem(ZERO, ...)``, ``where(c, ZERO, ZERO)``,
``solve(A, ZERO)``, ...) and vanishes in sums (``ZERO + a = a``), so one rule serves
every combination of present tangents without emitting dead code.

**Helpers** (all emit through the builder set by ``emitting(b)``): ``E`` operators
``+ - * / ** @ -x abs(x) < <= > >= & | ~``, ``x.T`` ``x.mT`` ``x.astype(dt)``
``x.sum(axis)`` ``x.mean/prod/max/min(axis)`` ``x[i, lo:hi]``; functions ``exp log log1p
expm1 sqrt sin cos tan tanh sigmoid softplus sign floor where maximum minimum clip eq ne
cast`` ``sum_to(g, like)`` ``spread(v, like, axis)`` (broadcast_to) ``matmul dot outer
transpose mT solve diag trace`` ``getitem setitem scatter_add zeros_like dense array
full full_like linspace arange`` ``softmax sparsemax sargmax sargmin onehot_argmax
onehot_argmin`` ``reshape reshape_like expand ravel dims size eye_mask`` ``finite
finite_or_zero xlogy0 add_all axes_of``, and ``prim(name, *args, **attrs)`` for the rest.
Python numbers are lifted to constants of the other operand's dtype (``x * 2.0`` stays
``f32`` for an ``f32`` ``x``); constant scalar arithmetic is folded.
"""
from __future__ import annotations

import inspect
import threading
from contextlib import contextmanager
from functools import reduce

import numpy as np

from dplang.ir import types as T
from dplang.ir.core import Op, Value
from dplang.ir.primitives import REGISTRY

INF = float("inf")

# ----------------------------------------------------------------------------- builder
_local = threading.local()


def _stack() -> list:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


@contextmanager
def emitting(b):
    """Emit the IR of the helpers below through builder ``b``."""
    s = _stack()
    s.append(b)
    try:
        yield b
    finally:
        s.pop()


def builder():
    s = _stack()
    if not s:
        raise RuntimeError("rules: no builder; emit inside `with emitting(b):`")
    return s[-1]


# ----------------------------------------------------------------------------- values
class _Zero:
    """The symbolic zero tangent/cotangent (no type: it stands for a zero of any)."""
    __slots__ = ()
    __array_ufunc__ = None

    def __repr__(self):
        return "ZERO"

    def __bool__(self):
        return False

    def __add__(self, o):
        return o

    __radd__ = __add__

    def __sub__(self, o):
        return o if o is ZERO else -o

    def __rsub__(self, o):
        return o

    def __mul__(self, o):
        return self

    __rmul__ = __truediv__ = __matmul__ = __rmatmul__ = __mul__

    def __neg__(self):
        return self

    def __getitem__(self, key):
        return self

    T = property(lambda self: self)
    mT = property(lambda self: self)

    def astype(self, dtype):
        return self

    def sum(self, axis=None):
        return self

    mean = sum


ZERO = _Zero()


class E:
    """An IR value with operators that emit primitives."""
    __slots__ = ("v",)
    __array_ufunc__ = None          # NumPy scalars on the left defer to us

    def __init__(self, v):
        self.v = v.v if isinstance(v, E) else v

    type = property(lambda self: self.v.type)
    dtype = property(lambda self: self.v.type.dtype)
    shape = property(lambda self: tuple(self.v.type.shape))
    ndim = property(lambda self: self.v.type.ndim)
    is_float = property(lambda self: T.is_float(self.v.type))

    def __repr__(self):
        return f"E({self.v!r})"

    def __bool__(self):
        raise TypeError("an IR value has no truth value while rules are built; use where()")

    def __add__(self, o):
        return _arith("add", self, o)

    def __radd__(self, o):
        return _arith("add", o, self)

    def __sub__(self, o):
        return _arith("sub", self, o)

    def __rsub__(self, o):
        return _arith("sub", o, self)

    def __mul__(self, o):
        return _arith("mul", self, o)

    def __rmul__(self, o):
        return _arith("mul", o, self)

    def __truediv__(self, o):
        return _arith("div", self, o)

    def __rtruediv__(self, o):
        return _arith("div", o, self)

    def __pow__(self, o):
        return _arith("pow", self, o)

    def __rpow__(self, o):
        return _arith("pow", o, self)

    def __matmul__(self, o):
        return matmul(self, o)

    def __rmatmul__(self, o):
        return matmul(o, self)

    def __neg__(self):
        return _emit("neg", self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _emit("abs", self)

    def __lt__(self, o):
        return _emit("lt", *_lift2(self, o))

    def __le__(self, o):
        return _emit("le", *_lift2(self, o))

    def __gt__(self, o):
        return _emit("gt", *_lift2(self, o))

    def __ge__(self, o):
        return _emit("ge", *_lift2(self, o))

    def __and__(self, o):
        return _emit("logical_and", self, lift(o))

    def __or__(self, o):
        return _emit("logical_or", self, lift(o))

    def __invert__(self):
        return _emit("logical_not", self)

    __hash__ = object.__hash__

    @property
    def T(self):
        return transpose(self)

    @property
    def mT(self):
        return mT(self)

    def astype(self, dtype):
        return cast(self, dtype)

    def sum(self, axis=None):
        return _emit("sum", self, axis=axis)

    def mean(self, axis=None):
        return _emit("mean", self, axis=axis)

    def prod(self, axis=None):
        return _emit("prod", self, axis=axis)

    def max(self, axis=None):
        return _emit("max", self, axis=axis)

    def min(self, axis=None):
        return _emit("min", self, axis=axis)

    def __getitem__(self, key):
        ops, index = _index_key(key)
        return _emit("getitem", self, *ops, index=index)


def _is_num(c) -> bool:
    return isinstance(c, (bool, int, float, np.bool_, np.integer, np.floating))


def lift(c, dtype: str | None = None):
    """``c`` as an ``E``: Values are wrapped, Python/NumPy numbers become constants (of
    ``dtype``'s kind when given: a float literal with an integer ``dtype`` stays f64)."""
    if isinstance(c, E) or c is ZERO:
        return c
    if isinstance(c, Value):
        return E(c)
    b = builder()
    if isinstance(c, (bool, np.bool_)):
        return E(b.const(bool(c), T.BOOL))
    if isinstance(c, (int, np.integer)):
        if dtype in ("f32", "f64"):
            return E(b.const(float(c), T.Scalar(dtype)))
        return E(b.const(int(c), T.I64))
    if isinstance(c, (float, np.floating)):
        dt = dtype if dtype in ("f32", "f64") else "f64"
        return E(b.const(float(c), T.Scalar(dt)))
    raise TypeError(f"rules: cannot use {c!r} as an IR value")


def _lift2(a, b):
    if isinstance(a, E) and isinstance(b, E):
        return a, b
    if isinstance(a, E):
        return a, lift(b, a.dtype)
    if isinstance(b, E):
        return lift(a, b.dtype), b
    return lift(a), lift(b)


def _const_of(v: Value):
    o = v.owner
    if isinstance(o, Op) and o.name == "const" and isinstance(v.type, T.Scalar):
        return o.attrs["value"]
    return None


_FOLD = {"add", "sub", "mul", "div", "neg", "pow"}


def _emit(name: str, *args, **attrs) -> E:
    """Emit primitive ``name`` on ``args`` (E values); scalar constant arithmetic folds."""
    b = builder()
    vals = [a.v if isinstance(a, E) else a for a in args]
    attrs = {k: v for k, v in attrs.items() if v is not None or k in REGISTRY[name].attrs}
    if name in _FOLD:
        consts = [_const_of(v) for v in vals]
        if all(c is not None for c in consts):
            p = REGISTRY[name]
            rtype = p.result_types([v.type for v in vals], {})[0]
            try:
                with np.errstate(all="ignore"):
                    r = p.impl(*[T.NP_DTYPES[v.type.dtype](c) for v, c in zip(vals, consts)])
                return E(b.const(np.asarray(r, T.NP_DTYPES[rtype.dtype]).item(), rtype))
            except Exception:
                pass
    return E(b.prim(name, *vals, **attrs))


def _is_one(e) -> bool:
    c = _const_of(e.v) if isinstance(e, E) else None
    return c is not None and not isinstance(c, bool) and c == 1


def _arith(name, a, b):
    if a is ZERO or b is ZERO:
        if name == "add":
            return b if a is ZERO else a
        if name == "sub":
            return a if b is ZERO else (-b if isinstance(b, E) else -b)
        if name in ("mul",) or (name == "div" and a is ZERO):
            return ZERO
        raise ZeroDivisionError(f"rules: {name} with a symbolic zero {a!r}, {b!r}")
    a, b = _lift2(a, b)
    # x * 1, 1 * x, x ** 1, x / 1 (same dtype): x
    if name in ("mul", "pow", "div") and _is_one(b) and b.dtype == a.dtype and a.is_float:
        return a
    if name == "mul" and _is_one(a) and a.dtype == b.dtype and b.is_float:
        return b
    return _emit(name, a, b)


def prim(name: str, *args, **attrs) -> E:
    """Any primitive on E values or numbers (ints become i64 constants)."""
    return _emit(name, *[lift(a) for a in args], **attrs)


def add_all(terms):
    """The sum of ``terms`` (ZERO when empty)."""
    return reduce(lambda a, t: a + t, terms, ZERO)


# ----------------------------------------------------------------------------- math
def _unary(name):
    def f(x):
        if x is ZERO:
            raise TypeError(f"rules: {name} of a symbolic zero")
        return _emit(name, lift(x))
    f.__name__ = name
    return f


exp, log, log1p, expm1, sqrt = (_unary(n) for n in ("exp", "log", "log1p", "expm1", "sqrt"))
sin, cos, tan, tanh = (_unary(n) for n in ("sin", "cos", "tan", "tanh"))
sigmoid, softplus, sign, floor = (_unary(n) for n in ("sigmoid", "softplus", "sign", "floor"))


def where(c, a, b):
    """``a`` where ``c`` else ``b``; a ZERO branch is a 0 of the other's dtype."""
    if a is ZERO and b is ZERO:
        return ZERO
    a = 0 if a is ZERO else a
    b = 0 if b is ZERO else b
    a, b = _lift2(a, b)
    return _emit("where", lift(c), a, b)


def maximum(x, y):
    return _emit("maximum", *_lift2(x, y))


def minimum(x, y):
    return _emit("minimum", *_lift2(x, y))


def clip(x, lo, hi):
    x = lift(x)
    return _emit("clip", x, lift(lo, x.dtype), lift(hi, x.dtype))


def eq(a, b):
    return _emit("eq", *_lift2(a, b))


def ne(a, b):
    return _emit("ne", *_lift2(a, b))


def cast(x, dtype: str):
    if x is ZERO:
        return ZERO
    x = lift(x)
    return E(builder().cast(x.v, dtype))


def finite(x):
    """``|x| < inf`` (bool): false at +-inf and NaN."""
    return abs(lift(x)) < INF


def finite_or_zero(x):
    """``x`` with its infinite entries replaced by 0: multiply this, never ``x``, by a
    weight that is 0 where ``x`` is infinite."""
    return where(finite(x), x, 0)


_TINY = 2.2250738585072014e-308        # the least normal float64


def xlogy0(p):
    """``p * log(p)`` with the limit 0 at ``p = 0`` (no ``0 * -inf``).  Subnormal ``p``
    count as 0 too: their term is below 2e-305 in size, and the derivative of ``log``,
    ``dp / p``, overflows for them (``1 / p = inf``), which made second derivatives in
    gamma of a soft max ``-inf`` as soon as one weight was subnormal."""
    return p * log(where(p >= _TINY, p, 1))


# ----------------------------------------------------------------------------- shapes
def axes_of(x, axis, name="rule") -> tuple:
    """``axis`` (None | int | tuple) normalised against ``x``'s rank."""
    from dplang.ir.primitives.reductions import norm_axes
    return norm_axes(axis, x.ndim, name)


def dims(x) -> list:
    """The sizes of ``x``'s axes: Python ints where the type knows them, else ``dim`` ops."""
    x = lift(x)
    return [d if isinstance(d, int) else _emit("dim", x, axis=k) for k, d in enumerate(x.shape)]


def size(x, axes=None):
    """The number of elements of ``x`` over ``axes`` (all when None): int or i64 E."""
    ds = dims(x)
    if axes is not None:
        ds = [ds[k] for k in axes]
    return reduce(lambda a, d: a * d, ds, 1)


def reshape(x, *sizes, shape=None):
    """``x`` reshaped to ``sizes`` (ints or i64 E); ``shape`` is the static result shape."""
    if x is ZERO:
        return ZERO
    if shape is None:
        shape = tuple(s if isinstance(s, int) else None for s in sizes)
    return _emit("reshape", lift(x), *[lift(s) for s in sizes], _shape=tuple(shape))


def reshape_like(v, x):
    """``v`` (as many elements as ``x``) reshaped to ``x``'s shape."""
    x = lift(x)
    if v is ZERO or (v.shape == x.shape and None not in x.shape):
        return v
    return reshape(v, *dims(x), shape=lift(x).shape)


def expand(x, axis: int):
    """``x`` with a new axis of size 1 at ``axis`` (NumPy expand_dims)."""
    if x is ZERO:
        return ZERO
    x = lift(x)
    k = axis % (x.ndim + 1)
    ds, sh = dims(x), x.shape
    return reshape(x, *ds[:k], 1, *ds[k:], shape=sh[:k] + (1,) + sh[k:])


def ravel(x):
    """``x`` as a 1-D array (C order)."""
    if x is ZERO:
        return ZERO
    x = lift(x)
    if x.ndim == 1:
        return x
    n = size(x)
    return reshape(x, n, shape=(n if isinstance(n, int) else None,))


def sum_to(g, like):
    """``g`` summed over the axes along which ``like`` was broadcast to ``g``'s shape."""
    if g is ZERO:
        return ZERO
    return _emit("sum_to", lift(g), lift(like))


def spread(v, like, axis=None):
    """``v`` broadcast to ``like``'s shape; with ``axis``, ``v`` lacks those axes of
    ``like`` (the reverse of a reduction over ``axis``)."""
    if v is ZERO:
        return ZERO
    v, like = lift(v), lift(like)
    if v.shape == like.shape:
        return v
    return _emit("broadcast_to", v, like, axis=tuple(axis) if isinstance(axis, list) else axis)


# ----------------------------------------------------------------------------- linalg
def matmul(a, b):
    if a is ZERO or b is ZERO:
        return ZERO
    return _emit("matmul", lift(a), lift(b))


def dot(a, b):
    if a is ZERO or b is ZERO:
        return ZERO
    return _emit("dot", lift(a), lift(b))


def outer(a, b):
    if a is ZERO or b is ZERO:
        return ZERO
    return _emit("outer", lift(a), lift(b))


def transpose(x, axes=None):
    if x is ZERO:
        return ZERO
    return _emit("transpose", lift(x), axes=None if axes is None else tuple(axes))


def mT(x):
    """``x`` with its last two axes swapped (a 1-D or scalar ``x`` unchanged)."""
    if x is ZERO:
        return ZERO
    x = lift(x)
    if x.ndim < 2:
        return x
    if x.ndim == 2:
        return transpose(x)
    perm = list(range(x.ndim))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return transpose(x, perm)


def solve(A, b):
    if b is ZERO:
        return ZERO
    return _emit("solve", lift(A), lift(b))


def diag(x):
    if x is ZERO:
        return ZERO
    return _emit("diag", lift(x))


def trace(x):
    if x is ZERO:
        return ZERO
    return _emit("trace", lift(x))


def arange(start, stop, step=1, shape=None):
    return _emit("arange", lift(start), lift(stop), lift(step),
                 _shape=None if shape is None else tuple(shape))


def eye_mask(x):
    """Bool ``(m, n)``: true on the diagonal of the 2-D ``x``."""
    x = lift(x)
    m, n = dims(x)
    r = arange(0, m, shape=(x.shape[0],))
    c = arange(0, n, shape=(x.shape[1],))
    return eq(reshape(r, m, 1, shape=(x.shape[0], 1)), c)


# ----------------------------------------------------------------------------- indexing
def _int(c):
    return lift(int(c)) if _is_num(c) else lift(c)


def _index_key(key):
    """A Python index (ints, i64 E, slices of them) as ``(operands, index attr)``."""
    if not isinstance(key, tuple):
        key = (key,)
    ops, entries = [], []
    for k in key:
        if isinstance(k, slice):
            parts = (k.start, k.stop, k.step)
            entries.append(("slice",) + tuple(p is not None for p in parts))
            ops += [_int(p) for p in parts if p is not None]
        else:
            entries.append("i")
            ops.append(_int(k))
    index = None if all(e == "i" for e in entries) else tuple(entries)
    return ops, index


def getitem(x, *idx, **attrs):
    if x is ZERO:
        return ZERO
    return _emit("getitem", lift(x), *[lift(i) for i in idx], **attrs)


def setitem(x, v, *idx, **attrs):
    x = lift(x)
    v = lift(0 if v is ZERO else v, x.dtype)
    return _emit("setitem", x, v, *[lift(i) for i in idx], **attrs)


def put(x, v, *key):
    """``x`` with ``x[key] = v`` for a Python index ``key`` (ints, i64 E, slices)."""
    ops, index = _index_key(key)
    return setitem(x, v, *ops, index=index)


def loop(kind: str, inits, body, cond=None, bounds=None, attrs=None) -> list:
    """A ``while`` (``cond``: carried values -> bool E) or ``for`` (``bounds``: lo, hi,
    step) op carrying ``inits``; ``body`` gets the carried values (after the index, for a
    ``for``) and returns the next ones, of the same types.  Returns the results."""
    from dplang.ir.builder import Builder
    from dplang.ir.core import Region
    b = builder()
    loc = b.loc
    vals = [lift(v).v for v in inits]
    types = [v.type for v in vals]

    def region(label, iv):
        args = ([Value(T.I64, "k", loc)] if iv else []) + \
            [Value(t, v.hint, loc) for t, v in zip(types, vals)]
        return Region(args, label=label)
    regions = []
    if kind == "while":
        creg = region("cond", False)
        cb = Builder(creg, loc)
        with emitting(cb):
            cb.yield_(lift(cond(*[E(a) for a in creg.args])).v)
        regions.append(creg)
    breg = region("body", kind == "for")
    bb = Builder(breg, loc)
    with emitting(bb):
        outs = [lift(o, t.dtype).v for o, t in zip(body(*[E(a) for a in breg.args]), types)]
        for o, t in zip(outs, types):
            if o.type != t:
                raise TypeError(f"rules.loop: the loop carries {t} but its body gives {o.type}")
        bb.yield_(*outs)
    regions.append(breg)
    operands = ([lift(x).v for x in bounds] if kind == "for" else []) + vals
    op = b.op(kind, operands, types, dict(attrs or {}), regions=regions,
              hints=[v.hint for v in vals])
    return [E(r) for r in op.results]


def scatter_add(x, v, *idx, **attrs):
    """``x`` with ``v`` added into ``x[idx]``."""
    if v is ZERO:
        return x
    return _emit("scatter_add", lift(x), lift(v), *[lift(i) for i in idx], **attrs)


# ----------------------------------------------------------------------------- constructors
def zeros_like(x):
    return _emit("zeros_like", lift(x))


def dense(t, like, dtype: str | None = None):
    """``t``, or (for ZERO) a zero of ``like``'s shape in ``dtype`` (default: like's
    dtype when float, else f64)."""
    like = lift(like)
    if dtype is None:
        dtype = like.dtype if like.is_float else "f64"
    if t is not ZERO:
        return t
    if like.ndim == 0:
        return lift(0.0, dtype)
    return cast(zeros_like(like), dtype)


def array(*xs):
    return _emit("array", *[lift(x) for x in xs])


def full(fill, *sizes, **attrs):
    if fill is ZERO:
        return ZERO
    return _emit("full", lift(fill), *[lift(s) for s in sizes], **attrs)


def full_like(x, fill):
    if fill is ZERO:
        return ZERO
    return _emit("full_like", lift(x), lift(fill))


def linspace(start, stop, num, **attrs):
    return _emit("linspace", lift(start), lift(stop), lift(num), **attrs)


# ----------------------------------------------------------------------------- soft
def softmax(x, axis=-1):
    return _emit("softmax", lift(x), axis=axis)


def sparsemax(x, axis=-1):
    return _emit("sparsemax", lift(x), axis=axis)


def sargmax(x, gamma, reg="entropy", axis=-1):
    return _emit("sargmax", lift(x), lift(gamma), reg=reg, axis=axis)


def sargmin(x, gamma, reg="entropy", axis=-1):
    return _emit("sargmin", lift(x), lift(gamma), reg=reg, axis=axis)


def onehot_argmax(x, axis=-1):
    return _emit("onehot_argmax", lift(x), axis=axis)


def onehot_argmin(x, axis=-1):
    return _emit("onehot_argmin", lift(x), axis=axis)


# ----------------------------------------------------------------------------- adapters
def _fit_tangent(t, o: Value) -> Value:
    """A result tangent with exactly the result's type."""
    t = lift(t, o.type.dtype)
    if t.dtype != o.type.dtype:
        t = cast(t, o.type.dtype)
    if t.shape != tuple(o.type.shape):
        t = _emit("broadcast_to", t, E(o))
    return t.v


def _fit_cotangent(g, x: Value) -> Value:
    """An operand cotangent with exactly the operand's type."""
    g = lift(g, x.type.dtype)
    if g.dtype != x.type.dtype:
        g = cast(g, x.type.dtype)
    if g.shape != tuple(x.type.shape):
        # a cotangent of lower rank is a constant along the missing axes
        g = _emit("sum_to" if g.ndim >= x.type.ndim else "broadcast_to", g, E(x))
    return g.v


def _groups(spec: tuple, n: int) -> list:
    """``[(name, starred, slice)]`` of the operand entries of a declaration."""
    star = [k for k, s in enumerate(spec) if s.startswith("*")]
    out, i = [], 0
    for k, s in enumerate(spec):
        if s.startswith("*"):
            m = n - (len(spec) - 1)
            out.append((s[1:], True, slice(i, i + m)))
            i += m
        else:
            out.append((s, False, slice(i, i + 1)))
            i += 1
    assert len(star) <= 1
    return out


def _names(p, kind: str) -> set:
    spec = [s.lstrip("*") for s in p.operands]
    names = set(spec) | set(p.attrs) | {"z", "zs", "attrs"}
    if kind == "jvp":
        names |= {"d" + s for s in spec}
    elif kind == "vjp":
        names |= {"g"}
    return names


def _caller(fn, p, kind: str):
    """Call ``fn`` with the keyword arguments it names (checked now, at declaration)."""
    params = inspect.signature(fn).parameters
    if any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values()):
        return lambda kw: fn(**kw)
    names = [n for n, q in params.items()
             if q.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    known = _names(p, kind)
    bad = [n for n in names if n not in known and params[n].default is inspect.Parameter.empty]
    if bad:
        raise TypeError(f"{kind} rule of {p.name} takes unknown argument(s) {bad}; "
                        f"known: {sorted(known)}")
    return lambda kw: fn(**{n: kw[n] for n in names if n in kw})


def _kwargs(p, primals, outs, attrs) -> tuple[dict, list]:
    full = dict(p.attrs)
    full.update(attrs or {})
    kw = {k: v for k, v in full.items() if not k.startswith("_")}
    kw["attrs"] = full
    groups = _groups(p.operands, len(primals))
    for name, starred, sl in groups:
        vals = [E(v) for v in primals[sl]]
        kw[name] = vals if starred else vals[0]
    zs = [E(o) for o in outs]
    kw["zs"] = zs
    kw["z"] = zs[0] if len(zs) == 1 else None
    return kw, groups


def _jvp_adapter(p, fn):
    call = _caller(fn, p, "jvp")

    def jvp(b, primals, tangents, outs, attrs):
        if all(t is None for t in tangents) or not any(T.is_float(o.type) for o in outs):
            return [None] * len(outs)
        with emitting(b):
            kw, groups = _kwargs(p, primals, outs, attrs)
            for name, starred, sl in groups:
                ts = [ZERO if t is None or not T.is_float(v.type) else E(t)
                      for t, v in zip(tangents[sl], primals[sl])]
                kw["d" + name] = ts if starred else ts[0]
            res = call(kw)
            res = [res] if len(outs) == 1 else list(res)
            return [None if r is None or r is ZERO or not T.is_float(o.type)
                    else _fit_tangent(r, o) for r, o in zip(res, outs)]
    jvp.__name__ = jvp.__qualname__ = f"jvp_{p.name}"
    return jvp


def _vjp_adapter(p, fn):
    call = _caller(fn, p, "vjp")

    def vjp(b, primals, outs, cotangents, attrs):
        n = len(primals)
        if all(c is None for c in cotangents) or not any(T.is_float(v.type) for v in primals):
            return [None] * n
        with emitting(b):
            kw, groups = _kwargs(p, primals, outs, attrs)
            gs = [ZERO if c is None else E(c) for c in cotangents]
            kw["g"] = gs[0] if len(gs) == 1 else gs
            res = call(kw)
            if isinstance(res, dict):
                unknown = set(res) - {name for name, _, _ in groups}
                if unknown:
                    raise TypeError(f"vjp rule of {p.name} returned unknown operands {unknown}")
                entries = [res.get(name) for name, _, _ in groups]
            elif len(groups) == 1:
                entries = [res]
            else:
                entries = list(res)
                if len(entries) != len(groups):
                    raise TypeError(f"vjp rule of {p.name} returned {len(entries)} entries "
                                    f"for {len(groups)} operand entries")
            flat = []
            for (name, starred, sl), e in zip(groups, entries):
                m = sl.stop - sl.start
                if starred:
                    e = [None] * m if e is None or e is ZERO else list(e)
                    assert len(e) == m, (p.name, name)
                    flat += e
                else:
                    flat.append(e)
            return [None if c is None or c is ZERO or not T.is_float(v.type)
                    else _fit_cotangent(c, v) for c, v in zip(flat, primals)]
    vjp.__name__ = vjp.__qualname__ = f"vjp_{p.name}"
    return vjp


def _from_partials(p, partials: dict):
    spec = [s.lstrip("*") for s in p.operands]
    bad = set(partials) - set(spec)
    if bad:
        raise TypeError(f"partials of {p.name} for unknown operands {bad}")
    calls = {name: _caller(fn, p, "partial") for name, fn in partials.items()}

    def jvp(**kw):
        return add_all(kw["d" + n] * calls[n](kw) for n in spec
                       if n in calls and kw["d" + n] is not ZERO)

    def vjp(**kw):
        g = kw["g"]
        return {n: g * calls[n](kw) for n in spec if n in calls and kw[n].is_float}
    return jvp, vjp


def rules(name: str, *, jvp=None, vjp=None, partials: dict | None = None):
    """Install the derivative rules of primitive ``name`` (see the module docstring)."""
    p = REGISTRY[name]
    if partials is not None:
        if jvp is not None or vjp is not None:
            raise TypeError("rules: give partials, or jvp and vjp")
        jvp, vjp = _from_partials(p, partials)
    if jvp is None or vjp is None:
        raise TypeError(f"rules of {name}: both jvp and vjp are needed")
    if p.zero_derivative:
        raise TypeError(f"{name} is declared zero_derivative")
    p.jvp = _jvp_adapter(p, jvp)
    p.vjp = _vjp_adapter(p, vjp)
    return p
