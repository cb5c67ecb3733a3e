"""The built-ins of SPEC 1.6 as ordinary Python functions on NumPy arrays and Python
scalars: ``dp.exp``, ``dp.logsumexp``, ``dp.smax(v, gamma, reg)``, ``dp.onehot_argmax``...

A function written for ``@dp.jit`` calls ``dp.NAME``; run undecorated, by plain Python,
it calls these and computes the same values as the compiled function.  Each one binds
its arguments as the front end does (``dsl/builtins.py``: list literals become arrays,
``bool`` operands of ``abs`` become integers, ``gamma`` takes the dtype of ``v``, ...) and
then runs the primitive's own NumPy semantics from the registry (``ir/primitives``),
the same code the interpreter runs, so the two cannot drift apart.

The transformations (``dp.grad``, ``dp.jvp``, ...) are not here: they are the API's
(``dplang/api.py``) and take compiled or jitted functions.  ``dp.argmin`` is both the
reduction of SPEC 1.6 and the decorator of SPEC 2.4: called with a function it is the
decorator (see ``argmin`` below and ``docs/jit.md``).
"""
from __future__ import annotations

import math

import numpy as np

from dplang.ir import types as T
from dplang.ir.primitives import REGISTRY

__all__ = [
    # elementwise
    "exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "tanh", "sigmoid", "softplus",
    "abs", "sign", "floor", "ceil", "round", "maximum", "minimum", "where", "clip",
    # reductions
    "sum", "mean", "prod", "max", "min", "argmax", "argmin", "logsumexp", "norm",
    # linear algebra
    "dot", "matmul", "outer", "transpose", "solve", "eye", "trace", "diag",
    # constructors
    "zeros", "ones", "full", "empty", "arange", "linspace", "array", "copy", "zeros_like",
    "ones_like", "full_like",
    # soft operators
    "softmax", "sparsemax", "smax", "smin", "onehot_argmax", "onehot_argmin",
    # constants and dtypes
    "inf", "nan", "pi", "e", "f64", "f32", "i64", "bool_",
]

inf = math.inf
nan = math.nan
pi = math.pi
e = math.e
f64 = np.float64
f32 = np.float32
i64 = np.int64
bool_ = np.bool_

_REGS = ("entropy", "l2")


# ----------------------------------------------------------------- helpers
def _impl(name):
    return REGISTRY[name].impl


def _canon(x) -> np.ndarray:
    """``x`` as an array of one of dplang's dtypes (bool, i64, f32, f64)."""
    a = np.asarray(x)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise TypeError(f"dplang works on numbers and arrays of bool, integers and floats, "
                        f"got {type(x).__name__}"
                        + (f" of {a.dtype}" if isinstance(x, np.ndarray) else ""))
    dt = T.dtype_of_numpy(a.dtype)
    if a.dtype != T.NP_DTYPES[dt]:
        a = a.astype(T.NP_DTYPES[dt])
    return a


def _arrayish(x) -> np.ndarray:
    """A list or tuple literal becomes an array (its elements' dtypes promoted)."""
    if isinstance(x, (list, tuple)):
        if not len(x):
            raise TypeError("an empty list has no type")
        return _impl("array")(*[_canon(v) for v in x])
    return _canon(x)


def _dtype(d, default):
    if d is None:
        return default
    if isinstance(d, str) and d in T.DTYPES:
        return d
    if isinstance(d, str) and d in ("float64", "float32", "int64", "bool_", "float", "int",
                                    "bool"):
        return {"float64": "f64", "float32": "f32", "int64": "i64", "bool_": "bool",
                "float": "f64", "int": "i64", "bool": "bool"}[d]
    try:
        return T.dtype_of_numpy(np.dtype(d))
    except TypeError:
        raise TypeError(f"dtype must be f64, f32, i64 or bool, got {d!r}") from None


def _axis(axis):
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        return tuple(int(a) for a in axis)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError("axis= must be an integer or a tuple of integers")
    return int(axis)


def _shape(shape):
    if isinstance(shape, (list, tuple)):
        return [int(s) for s in shape]
    return [int(shape)]


def _cast_int_bool(x):
    return x.astype(np.int64) if x.dtype == np.bool_ else x


def _to_float(x):
    return x.astype(np.float64) if x.dtype.kind in "biu" else x


# ----------------------------------------------------------------- elementwise
def _unary(name, bool_to_int=False):
    impl = _impl(name)

    def fn(x):
        x = _arrayish(x)
        if bool_to_int:
            x = _cast_int_bool(x)
        return impl(x)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"dp.{name}(x): {REGISTRY[name].doc or name} (eager NumPy semantics)"
    return fn


exp = _unary("exp")
log = _unary("log")
log1p = _unary("log1p")
expm1 = _unary("expm1")
sqrt = _unary("sqrt")
sin = _unary("sin")
cos = _unary("cos")
tan = _unary("tan")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
softplus = _unary("softplus")
abs = _unary("abs", bool_to_int=True)
sign = _unary("sign", bool_to_int=True)
floor = _unary("floor", bool_to_int=True)
ceil = _unary("ceil", bool_to_int=True)
round = _unary("round", bool_to_int=True)


def _operand(x):
    """An operand of a binary operation: Python scalars stay Python scalars, so that they
    are weak (NEP 50) as literals are in compiled code."""
    if isinstance(x, (bool, int, float)):
        return x
    return _arrayish(x)


def maximum(x, y):
    """Elementwise maximum (NaN-propagating), NumPy's broadcasting and promotion."""
    return np.asarray(_impl("maximum")(_operand(x), _operand(y)))[()]


def minimum(x, y):
    """Elementwise minimum (NaN-propagating), NumPy's broadcasting and promotion."""
    return np.asarray(_impl("minimum")(_operand(x), _operand(y)))[()]


def where(condition, x, y):
    """``x`` where ``condition`` else ``y`` (a non-bool condition means ``!= 0``)."""
    c = _arrayish(condition)
    if c.dtype != np.bool_:
        c = c != 0
    return _impl("where")(c, _operand(x), _operand(y))


def clip(a, a_min, a_max):
    """``minimum(maximum(a, a_min), a_max)``."""
    return np.asarray(_impl("clip")(_operand(a), _operand(a_min), _operand(a_max)))[()]


# ----------------------------------------------------------------- reductions
def _reduction(name):
    impl = _impl(name)

    def fn(a, axis=None):
        x = _arrayish(a)
        if name in ("sum", "prod"):
            x = _cast_int_bool(x)
        return impl(x, axis=_axis(axis))
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"dp.{name}(a, axis=None): {REGISTRY[name].doc or name}"
    return fn


sum = _reduction("sum")
mean = _reduction("mean")
prod = _reduction("prod")
logsumexp = _reduction("logsumexp")
argmax = _reduction("argmax")
_argmin_reduction = _reduction("argmin")


def norm(a, axis=None, ord=None):
    """The 2-norm (of all entries, or along ``axis``)."""
    if ord not in (None, 2, "fro"):
        raise ValueError("norm() computes the 2-norm only (ord=2 or None)")
    return _impl("norm")(_arrayish(a), axis=_axis(axis))


def argmin(a, *args, **kwargs):
    """``dp.argmin(v, axis=None)``: the index of the first minimum (an ``i64``, as NumPy).

    ``dp.argmin(obj, solver=..., tol=..., maxiter=...)`` with a function ``obj`` is the
    implicit-differentiation decorator of SPEC 2.4 instead; it is the API's
    (``dplang.api.argmin``) and this function hands such calls to it."""
    if callable(a) and not isinstance(a, (np.ndarray, np.generic)):
        from dplang import api
        dec = getattr(api, "argmin", None)
        if dec is None or dec is argmin:
            from dplang.errors import DPError
            raise DPError("dp.argmin(obj, ...) (implicit differentiation) is not available in "
                          "this build")
        return dec(a, *args, **kwargs)
    return _argmin_reduction(a, *args, **kwargs)


def _max_min(name, args, axis):
    red = _impl(name)
    nary = _impl(name + "n")
    if not args:
        raise TypeError(f"{name}() needs arguments")
    if len(args) == 1:
        x = args[0]
        if isinstance(x, (list, tuple)):
            vals = [_canon(v) for v in x]
            return _scalars(name, nary, vals)
        x = _canon(x)
        if x.ndim:
            return red(x, axis=_axis(axis))
        return x[()]
    if len(args) == 2 and np.ndim(args[0]) > 0 and isinstance(args[1], (int, np.integer)) \
            and not isinstance(args[1], (bool, np.bool_)) and axis is None:
        # np.max(a, 1): the second argument is the axis
        return red(_canon(args[0]), axis=int(args[1]))
    return _scalars(name, nary, [_canon(v) for v in args])


def _scalars(name, nary, vals):
    for v in vals:
        if v.ndim:
            other = "maximum" if name == "max" else "minimum"
            raise TypeError(f"{name}() of several values takes scalars; for arrays use "
                            f"{other}(a, b) (elementwise) or {name}(a) (a reduction)")
    vals = [_cast_int_bool(v) for v in vals]
    if len(vals) == 1:
        return vals[0][()]
    return nary(*[v[()] for v in vals])


def max(*args, axis=None):
    """``max(a, b, c)`` / ``max([a, b, c])`` of scalars (NaN-propagating), or ``max(A)``,
    ``max(A, axis=k)`` of an array (a reduction)."""
    return _max_min("max", args, axis)


def min(*args, axis=None):
    """``min(a, b, c)`` / ``min([a, b, c])`` of scalars (NaN-propagating), or ``min(A)``,
    ``min(A, axis=k)`` of an array (a reduction)."""
    return _max_min("min", args, axis)


# ----------------------------------------------------------------- linear algebra
def _bilinear(name):
    impl = _impl(name)

    def fn(a, b):
        return impl(_arrayish(a), _arrayish(b))
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"dp.{name}(a, b): {REGISTRY[name].doc or name}"
    return fn


dot = _bilinear("dot")
matmul = _bilinear("matmul")
outer = _bilinear("outer")
solve = _bilinear("solve")


def transpose(a):
    """The transpose (axes reversed), as a new array."""
    return _impl("transpose")(_arrayish(a))


def trace(a):
    """Sum of the diagonal of a 2-D array."""
    return _impl("trace")(_arrayish(a))


def diag(a):
    """1-D v -> the matrix with diagonal v; 2-D A -> its diagonal."""
    return _impl("diag")(_arrayish(a))


def eye(N, dtype=None):
    """The N x N identity matrix."""
    return _impl("eye")(int(N), dtype=_dtype(dtype, "f64"))


# ----------------------------------------------------------------- constructors
def zeros(shape, dtype=None):
    return _impl("zeros")(*_shape(shape), dtype=_dtype(dtype, "f64"))


def ones(shape, dtype=None):
    return _impl("ones")(*_shape(shape), dtype=_dtype(dtype, "f64"))


def empty(shape, dtype=None):
    return _impl("empty")(*_shape(shape), dtype=_dtype(dtype, "f64"))


def full(shape, fill_value, dtype=None):
    fill = _canon(fill_value)
    if fill.ndim:
        raise TypeError("full() needs a scalar fill value")
    return _impl("full")(fill[()], *_shape(shape), dtype=_dtype(dtype, None))


def zeros_like(a):
    return _impl("zeros_like")(_canon(a))


def ones_like(a):
    return _impl("ones_like")(_canon(a))


def full_like(a, fill_value):
    a = _canon(a)
    return _impl("full_like")(a, np.asarray(fill_value).astype(a.dtype)[()])


def copy(a):
    """A writable copy."""
    return _impl("copy")(_canon(a))


def arange(*args, dtype=None):
    """``arange(stop)``, ``arange(start, stop)``, ``arange(start, stop, step)``: ``i64``
    when every argument is an integer, else ``f64`` (unless ``dtype=`` is given)."""
    if not args or len(args) > 3:
        raise TypeError("arange() takes 1 to 3 arguments")
    vals = [_canon(v) for v in args]
    if len(vals) == 1:
        vals = [np.asarray(0), vals[0], np.asarray(1)]
    elif len(vals) == 2:
        vals.append(np.asarray(1))
    ints = all(v.dtype.kind in "biu" for v in vals)
    dt = _dtype(dtype, "i64" if ints else "f64")
    start, stop, step = (v[()] for v in vals)
    return np.arange(start, stop, step, dtype=T.NP_DTYPES[dt])


def linspace(start, stop, num=50):
    return _impl("linspace")(start, stop, int(num))


def array(object, dtype=None):
    """A new array from a list of scalars (or of arrays of one shape), or a copy of an
    array."""
    if isinstance(object, (list, tuple)):
        x = _arrayish(object)
    else:
        x = _impl("copy")(_canon(object))
    x = np.asarray(x)
    return x.astype(T.NP_DTYPES[_dtype(dtype, None)]) if dtype is not None else x


# ----------------------------------------------------------------- soft operators
def _last_axis(name, axis, ndim):
    if axis not in (-1, None) and axis != ndim - 1:
        raise ValueError(f"{name}() works along the last axis only")


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along the last axis."""
    x = _to_float(_arrayish(x))
    _last_axis("softmax", axis, np.ndim(x))
    return _impl("softmax")(x)


def sparsemax(x):
    """The Euclidean projection of ``x`` onto the simplex, along the last axis."""
    return _impl("sparsemax")(_to_float(_arrayish(x)))


def onehot_argmax(x):
    """The one-hot ``f64`` vector of the first maximiser along the last axis."""
    return _impl("onehot_argmax")(_to_float(_arrayish(x)))


def onehot_argmin(x):
    """The one-hot ``f64`` vector of the first minimiser along the last axis."""
    return _impl("onehot_argmin")(_to_float(_arrayish(x)))


def _reg(reg):
    if reg not in _REGS:
        raise ValueError(f"unknown regulariser {reg!r}: use \"entropy\" or \"l2\"")
    return reg


def smax(v, gamma, reg="entropy"):
    """The regularised maximum over the last axis (SPEC 2.3): ``reg="entropy"`` gives
    ``gamma * logsumexp(v / gamma)``, ``reg="l2"`` the sparsemax-based one."""
    x = _to_float(_arrayish(v))
    g = np.asarray(gamma).astype(x.dtype)[()]
    return _impl("smax")(x, g, reg=_reg(reg))


def smin(v, gamma, reg="entropy"):
    """The regularised minimum over the last axis: ``-smax(-v, gamma, reg)``."""
    x = _to_float(_arrayish(v))
    g = np.asarray(gamma).astype(x.dtype)[()]
    return _impl("smin")(x, g, reg=_reg(reg))
