"""Indexing: ``getitem(x, *idx)``, ``setitem(x, v, *idx)``, ``dim(x)``.

The static attr ``index`` describes the index expression, one entry per position:

* ``"i"``: an integer index, consuming one ``i64`` operand (negative counts from the
  end, as NumPy; out of range raises ``IndexError``);
* ``("slice", has_lo, has_hi, has_step)``: a slice consuming 0 to 3 ``i64`` operands,
  in the order lo, hi, step (an absent part is ``None`` in Python slicing).

``index=None`` (the default) means every operand is an integer index.  Fewer entries
than ``x.ndim`` keep the remaining axes, as NumPy.  Arrays are values: ``getitem`` of a
slice returns a copy and ``setitem`` returns a new array (code generators write in
place when the old one is dead).
"""
from __future__ import annotations

import numpy as np

from dplang.ir import types as T
from dplang.ir.primitives import TypeRuleError, defprim
from dplang.ir.primitives.constructors import check_write, result_shape
from dplang.ir.primitives.reductions import dtype_of, need_scalar, norm_axes, numeric
from dplang.ir.primitives.rules import (dense, getitem, reshape, reshape_like, rules,
                                        scatter_add, setitem, zeros_like)

_INT = ("i64",)


def _entries(index, nidx):
    if index is None:
        return ("i",) * nidx
    return tuple(index)


def _check_index(name, x, idx_types, index, start):
    """Validate ``x``, the index operands and ``index``; the dims of the kept axes."""
    if not isinstance(x, T.Array) or x.dtype not in T.DTYPES:
        kind = "shape" if isinstance(x, T.Scalar) else "type"
        raise TypeRuleError(f"{name}: only arrays can be indexed, got {x}", kind=kind, arg=0)
    entries = _entries(index, len(idx_types))
    if len(entries) > x.ndim:
        raise TypeRuleError(f"{name}: too many indices ({len(entries)}) for an array of rank "
                            f"{x.ndim}", kind="shape", arg=start)
    k = 0
    kept = []
    for axis, e in enumerate(entries):
        if e == "i":
            n = 1
        elif isinstance(e, tuple) and len(e) == 4 and e[0] == "slice":
            n = sum(bool(b) for b in e[1:])
        else:
            raise TypeRuleError(f"{name}: bad index entry {e!r}")
        if k + n > len(idx_types):
            raise TypeRuleError(f"{name}: the index {entries!r} needs more operands than the "
                                f"{len(idx_types)} given")
        for j in range(k, k + n):
            need_scalar(idx_types[j], name, start + j, _INT, what="an i64 index")
        k += n
        if e != "i":
            full = not any(e[1:])
            kept.append(x.shape[axis] if full else None)
    if k != len(idx_types):
        raise TypeRuleError(f"{name}: the index {entries!r} takes {k} operands, got "
                            f"{len(idx_types)}")
    kept += list(x.shape[len(entries):])
    return tuple(kept)


def _selected(name, x, idx_types, attrs, start):
    shape = _check_index(name, x, idx_types, attrs.get("index"), start)
    hint = attrs.get("_shape")
    if hint is not None:
        hint = tuple(hint)
        if len(hint) != len(shape):
            raise TypeRuleError(f"{name}: the result shape hint {T.fmt_shape(hint)} has rank "
                                f"{len(hint)}, expected {len(shape)}", kind="shape")
        shape = hint
    return shape


def _getitem_infer(types, attrs):
    if not types:
        raise TypeRuleError("getitem needs an array")
    x = types[0]
    return T.make(getattr(x, "dtype", None), _selected("getitem", x, types[1:], attrs, 1))


def build_index(idx, index):
    """The Python index tuple of the operands ``idx`` under the attr ``index``."""
    entries = _entries(index, len(idx))
    out, k = [], 0
    for e in entries:
        if e == "i":
            out.append(int(idx[k]))
            k += 1
        else:
            parts = []
            for has in e[1:]:
                if has:
                    parts.append(int(idx[k]))
                    k += 1
                else:
                    parts.append(None)
            out.append(slice(*parts))
    return tuple(out)


def _getitem(x, *idx, index=None):
    x = np.asarray(x)
    r = x[build_index(idx, index)]
    if isinstance(r, np.ndarray):
        return np.array(r, copy=True)[()]
    return r


defprim("getitem", operands=("x", "*idx"), variadic=True, attrs={"index": None},
        infer=_getitem_infer, impl=_getitem, linear=True, group="indexing",
        doc="x[i, lo:hi:step, ...] (NumPy basic indexing; slices are copies); linear in x")
# basic indexing reads every entry at most once, so the cotangent is added into zeros
rules("getitem", jvp=lambda dx, idx, attrs: getitem(dx, *idx, **attrs),
                 vjp=lambda x, idx, g, attrs: {"x": scatter_add(zeros_like(x), g, *idx, **attrs)})


def _write_infer(name):
    def infer(types, attrs):
        if len(types) < 2:
            raise TypeRuleError(f"{name} needs an array and a value")
        x, v = types[0], types[1]
        region = _selected(name, x, types[2:], attrs, 2)
        numeric([v], name, start=1)
        if v.ndim > len(region):
            raise TypeRuleError(f"{name}: cannot write a value of shape {T.fmt_shape(v.shape)} "
                                f"into a region of shape {T.fmt_shape(region)}", kind="shape",
                                arg=1)
        for dv, dr in zip(reversed(v.shape), reversed(region)):
            if dv != 1 and T.dims_conflict(dv, dr):
                raise TypeRuleError(f"{name}: cannot write a value of shape "
                                    f"{T.fmt_shape(v.shape)} into a region of shape "
                                    f"{T.fmt_shape(region)}", kind="shape", arg=1)
        check_write(v.dtype, x.dtype, name, 1)
        return x
    return infer


_setitem_infer = _write_infer("setitem")


def _setitem(x, v, *idx, index=None):
    x = np.array(x, copy=True)
    check_write(dtype_of(v), dtype_of(x), "setitem", 1)
    x[build_index(idx, index)] = v
    return x


defprim("setitem", operands=("x", "v", "*idx"), variadic=True, attrs={"index": None},
        infer=_setitem_infer, impl=_setitem, linear=True, group="indexing",
        doc="a copy of x with x[idx] = v (v broadcast to the region and cast to x's dtype); "
            "linear in (x, v)")
rules("setitem",
      jvp=lambda x, idx, dx, dv, attrs: setitem(dense(dx, x), dv, *idx, **attrs),
      # read g[idx] before zeroing it, so that the write can reuse g's buffer
      vjp=lambda idx, g, attrs: {"v": getitem(g, *idx, **attrs),      # summed to v's shape
                                 "x": setitem(g, 0, *idx, **attrs)})


def _scatter_add(x, v, *idx, index=None):
    x = np.array(x, copy=True)
    check_write(dtype_of(v), dtype_of(x), "scatter_add", 1)
    x[build_index(idx, index)] += v
    return x


defprim("scatter_add", operands=("x", "v", "*idx"), variadic=True, attrs={"index": None},
        infer=_write_infer("scatter_add"), impl=_scatter_add, linear=True, group="indexing",
        doc="a copy of x with x[idx] += v (the index attr as setitem's; basic indexing "
            "selects each entry once); the transpose of getitem; linear in (x, v)")
rules("scatter_add",
      jvp=lambda x, idx, dx, dv, attrs: scatter_add(dense(dx, x), dv, *idx, **attrs),
      vjp=lambda idx, g, attrs: {"x": g, "v": getitem(g, *idx, **attrs)})


def _reshape_infer(types, attrs):
    if not types:
        raise TypeRuleError("reshape needs an array")
    numeric(types[:1], "reshape")
    for i, t in enumerate(types[1:], 1):
        need_scalar(t, "reshape", i, _INT, what="an i64 size")
    shape = result_shape(attrs, (None,) * (len(types) - 1), "reshape")
    x = types[0]
    known = [d for d in x.shape if isinstance(d, int)] + [d for d in shape if isinstance(d, int)]
    if len(known) == x.ndim + len(shape) and \
            int(np.prod(x.shape, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        raise TypeRuleError(f"reshape: cannot reshape {x} to {T.fmt_shape(shape)}", kind="shape")
    return T.make(x.dtype, shape)


def _reshape(x, *dims):
    return np.array(np.reshape(np.asarray(x), tuple(int(d) for d in dims)), copy=True)[()]


defprim("reshape", operands=("x", "*dims"), variadic=True, infer=_reshape_infer, impl=_reshape,
        linear=True, group="indexing",
        doc="reshape(x, d0, d1, ...): x's entries (C order) in the given sizes (the _shape "
            "hint gives the static result shape); linear in x")
rules("reshape", jvp=lambda dx, dims, attrs: reshape(dx, *dims, shape=attrs.get("_shape")),
                 vjp=lambda x, g: {"x": reshape_like(g, x)})


def _dim_infer(types, attrs):
    (x,) = types
    numeric(types, "dim", scalar_ok=False)
    norm_axes(attrs.get("axis"), x.ndim, "dim", allow_tuple=False)
    if attrs.get("axis") is None:
        raise TypeRuleError("dim: axis must be an int")
    return T.I64


defprim("dim", operands=("x",), attrs={"axis": 0}, infer=_dim_infer,
        impl=lambda x, axis=0: np.int64(np.shape(x)[axis]), zero_derivative=True,
        group="indexing", doc="x.shape[axis] as i64 (a.shape[k]; len(a) is axis 0)")
