"""Constructors: ``zeros ones empty full eye arange linspace zeros_like ones_like
full_like copy array``.

Sizes are ``i64`` scalar operands, so a result's dims are not known from the operand
types alone: the front end computes the symbolic result shape (``n + 1``) and passes it
as the hint attr ``_shape``; without it the unknown dims are ``None``.
"""
from __future__ import annotations

import numpy as np

from dplang.ir import types as T
from dplang.ir.primitives import TypeRuleError, defprim
from dplang.ir.primitives.reductions import dtype_of, need_scalar, numeric, promote_all
from dplang.ir.primitives.rules import array, dense, full, full_like, linspace, rules


def result_shape(attrs, default, name):
    """``attrs["_shape"]`` when the front end gave it (its rank checked), else ``default``."""
    s = attrs.get("_shape")
    if s is None:
        return tuple(default)
    s = tuple(s)
    if len(s) != len(default):
        raise TypeRuleError(f"{name}: the result shape hint {T.fmt_shape(s)} has rank {len(s)}, "
                            f"expected {len(default)}", kind="shape")
    return s


def check_dtype(attrs, name, allow_none=False):
    dt = attrs.get("dtype")
    if dt is None and allow_none:
        return None
    if dt not in T.DTYPES:
        raise TypeRuleError(f"{name}: dtype must be one of {', '.join(T.DTYPES)}, got {dt!r}")
    return dt


def _dims(types, name, start=0):
    for i, t in enumerate(types):
        need_scalar(t, name, start + i, ("i64",), what="an i64 size")


def _sizes(dims):
    return tuple(int(d) for d in dims)


def _fill_infer(name):
    def infer(types, attrs):
        _dims(types, name)
        dt = check_dtype(attrs, name)
        return T.make(dt, result_shape(attrs, (None,) * len(types), name))
    return infer


for _name, _fn, _what in [("zeros", np.zeros, "zeros"), ("ones", np.ones, "ones"),
                          ("empty", np.empty, "uninitialised")]:
    defprim(_name, operands=("*dims",), variadic=True, attrs={"dtype": "f64"},
            infer=_fill_infer(_name),
            impl=(lambda fn: lambda *dims, dtype="f64": fn(_sizes(dims), T.NP_DTYPES[dtype])[()])(_fn),
            zero_derivative=True, group="constructor",
            doc=f"{_name}(d0, d1, ...): a new array of {_what} of the given sizes (dtype attr)")


def _full_infer(types, attrs):
    if len(types) < 1:
        raise TypeRuleError("full needs a fill value")
    need_scalar(types[0], "full", 0, what="a scalar fill value")
    _dims(types[1:], "full", start=1)
    dt = check_dtype(attrs, "full", allow_none=True) or types[0].dtype
    return T.make(dt, result_shape(attrs, (None,) * (len(types) - 1), "full"))


def _full(fill, *dims, dtype=None):
    dt = dtype or dtype_of(fill)
    return np.full(_sizes(dims), fill, dtype=T.NP_DTYPES[dt])[()]


defprim("full", operands=("fill", "*dims"), variadic=True, attrs={"dtype": None},
        infer=_full_infer, impl=_full, linear=True, group="constructor",
        doc="full(fill, d0, d1, ...): a new array filled with fill (dtype: fill's unless "
            "given); linear in fill")
rules("full", jvp=lambda dfill, dims, attrs: full(dfill, *dims, **attrs),
              vjp=lambda g: {"fill": g.sum()})


def _eye_infer(types, attrs):
    _dims(types, "eye")
    dt = check_dtype(attrs, "eye")
    return T.Array(dt, result_shape(attrs, (None, None), "eye"))


defprim("eye", operands=("n",), attrs={"dtype": "f64"}, infer=_eye_infer,
        impl=lambda n, dtype="f64": np.eye(int(n), dtype=T.NP_DTYPES[dtype]),
        zero_derivative=True, group="constructor", doc="the n x n identity matrix")


def _arange_dtype(dts):
    dt = promote_all(dts)
    return "i64" if dt == "bool" else dt


def _arange_infer(types, attrs):
    for i, t in enumerate(types):
        need_scalar(t, "arange", i, ("i64", "f32", "f64"), what="an i64 or float scalar")
    return T.Array(_arange_dtype([t.dtype for t in types]), result_shape(attrs, (None,), "arange"))


def _arange(start, stop, step):
    dt = _arange_dtype([dtype_of(v) for v in (start, stop, step)])
    return np.arange(start, stop, step, dtype=T.NP_DTYPES[dt])


defprim("arange", operands=("start", "stop", "step"), infer=_arange_infer, impl=_arange,
        zero_derivative=True, group="constructor",
        doc="start, start + step, ... up to stop excluded (NumPy arange); i64 when all "
            "operands are integers")


def _linspace_infer(types, attrs):
    need_scalar(types[0], "linspace", 0, ("i64", "f32", "f64"), what="an i64 or float scalar")
    need_scalar(types[1], "linspace", 1, ("i64", "f32", "f64"), what="an i64 or float scalar")
    need_scalar(types[2], "linspace", 2, ("i64",), what="an i64 count")
    return T.Array("f64", result_shape(attrs, (None,), "linspace"))


def _linspace(start, stop, num):
    return np.linspace(float(start), float(stop), int(num), dtype=np.float64)


defprim("linspace", operands=("start", "stop", "num"), infer=_linspace_infer, impl=_linspace,
        linear=True, group="constructor",
        doc="num evenly spaced f64 values from start to stop included; linear in (start, stop)")


def _linspace_vjp(num, g, attrs):
    t = linspace(0.0, 1.0, num, **attrs)        # the weight of stop; start's is 1 - t
    return (g * (1 - t)).sum(), (g * t).sum(), None


rules("linspace",
      jvp=lambda start, stop, num, dstart, dstop, attrs:
          linspace(dense(dstart, start), dense(dstop, stop), num, **attrs),
      vjp=_linspace_vjp)


def _like_infer(name):
    def infer(types, attrs):
        numeric(types, name)
        return types[0]
    return infer


defprim("zeros_like", operands=("x",), infer=_like_infer("zeros_like"),
        impl=lambda x: np.zeros_like(np.asarray(x))[()], zero_derivative=True,
        group="constructor", doc="zeros of x's type and shape")
defprim("ones_like", operands=("x",), infer=_like_infer("ones_like"),
        impl=lambda x: np.ones_like(np.asarray(x))[()], zero_derivative=True,
        group="constructor", doc="ones of x's type and shape")

_KIND = {"bool": 0, "i64": 1, "f32": 2, "f64": 2}


def check_write(src: str, dst: str, name: str, arg: int, what="array"):
    """Writing a ``src`` value into a ``dst`` array must not change its kind (no silent
    truncation of floats into integers, of integers into bools)."""
    if _KIND[src] > _KIND[dst]:
        raise TypeRuleError(f"{name}: cannot write {src} into an {dst} {what}"
                            if dst == "i64" else
                            f"{name}: cannot write {src} into a {dst} {what}", arg=arg)


def _full_like_infer(types, attrs):
    numeric(types, "full_like")
    x, fill = types
    need_scalar(fill, "full_like", 1, what="a scalar fill value")
    check_write(fill.dtype, x.dtype, "full_like", 1)
    return x


defprim("full_like", operands=("x", "fill"), infer=_full_like_infer,
        impl=lambda x, fill: np.full_like(np.asarray(x), fill)[()], linear=True,
        group="constructor", doc="x's type and shape filled with fill; linear in fill")
rules("full_like", jvp=lambda x, dfill: full_like(x, dfill),
                   vjp=lambda g: (None, g.sum()))

defprim("copy", operands=("x",), infer=_like_infer("copy"),
        impl=lambda x: np.array(x, copy=True)[()], linear=True, group="constructor",
        doc="a writable copy of x")
rules("copy", jvp=lambda dx: dx,
              vjp=lambda g: g)


def _array_infer(types, attrs):
    numeric(types, "array")
    if not types:
        return T.Array("f64", result_shape(attrs, (0,), "array"))
    dt = promote_all([t.dtype for t in types])
    first = types[0]
    shape = list(first.shape)
    for i, t in enumerate(types[1:], 1):
        if t.ndim != first.ndim:
            raise TypeRuleError(f"array: element {i + 1} has rank {t.ndim} but element 1 has "
                                f"rank {first.ndim}", kind="shape", arg=i)
        for k, d in enumerate(t.shape):
            if T.dims_conflict(shape[k], d):
                raise TypeRuleError(f"array: element {i + 1} has shape {T.fmt_shape(t.shape)} but "
                                    f"element 1 has {T.fmt_shape(first.shape)}", kind="shape",
                                    arg=i)
            if shape[k] != d:
                shape[k] = d if isinstance(d, int) else (shape[k] if isinstance(shape[k], int)
                                                         else None)
    return T.Array(dt, result_shape(attrs, (len(types),) + tuple(shape), "array"))


def _array(*elems):
    if not elems:
        return np.zeros((0,), np.float64)
    dt = promote_all([dtype_of(e) for e in elems])
    return np.array([np.asarray(e) for e in elems], dtype=T.NP_DTYPES[dt])


defprim("array", operands=("*elems",), variadic=True, infer=_array_infer, impl=_array,
        linear=True, group="constructor",
        doc="array(a, b, ...): scalars -> a 1-D array; arrays of one shape -> stacked along "
            "a new axis 0 (np.array of a list); dtype promoted")
rules("array", jvp=lambda elems, delems, z: array(*[dense(d, e, z.dtype)
                                                    for d, e in zip(delems, elems)]),
               vjp=lambda elems, g: [g[k] for k in range(len(elems))])
