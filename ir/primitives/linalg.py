"""Linear algebra: ``matmul dot outer transpose solve trace diag``.

Shape rules are symbolic: result dims are operand dims, and two dims that must agree
(the inner dimension of a product, the rows of ``solve``) are a shape error only when
both are known integers and differ (a symbolic mismatch is left to run time).  Dtypes
promote as NumPy; ``solve`` is float (bool/i64 operands give f64).
"""
from __future__ import annotations

import numpy as np

from dplang.ir import types as T
from dplang.ir.primitives import TypeRuleError, defprim
from dplang.ir.primitives.reductions import dtype_of, numeric, out
from dplang.ir.primitives.rules import (diag, dims, dot, expand, eye_mask, outer, ravel,
                                        reshape_like, rules, setitem, solve, trace, transpose,
                                        where, zeros_like)


def _pick(a, b):
    """The dim two agreeing dims stand for: the known one when one is an integer."""
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a is not None else b


def _inner(name, ka, kb):
    if T.dims_conflict(ka, kb):
        raise TypeRuleError(f"{name}: inner dimensions differ ({T.dim_str(ka)} and {T.dim_str(kb)})",
                            kind="shape", arg=1)


def _matmul_shape(name, sa, sb):
    a1, b1 = len(sa) == 1, len(sb) == 1
    if a1:
        sa = (1,) + tuple(sa)
    if b1:
        sb = tuple(sb) + (1,)
    _inner(name, sa[-1], sb[-2])
    try:
        batch = T.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
    except T.BroadcastError as e:
        raise TypeRuleError(f"{name}: batch dimensions: {e}", kind="shape")
    res = batch + ((sa[-2],) if not a1 else ()) + ((sb[-1],) if not b1 else ())
    return res


def _matmul_infer(types, attrs):
    numeric(types, "matmul", scalar_ok=False)
    a, b = types
    return T.make(T.promote(a.dtype, b.dtype), _matmul_shape("matmul", a.shape, b.shape))


def _matmul(a, b):
    a, b = np.asarray(a), np.asarray(b)
    dt = T.promote(dtype_of(a), dtype_of(b))
    return out(np.matmul(a, b), dt)


defprim("matmul", operands=("a", "b"), infer=_matmul_infer, impl=_matmul, group="linalg",
        doc="a @ b, NumPy matmul semantics (1-D operands promoted and squeezed; N-D batches "
            "broadcast); bilinear")


def _matmul_vjp(a, b, g):
    """The cotangents of a @ b; broadcast batch axes are summed back by the fitting."""
    if a.ndim == 1 and b.ndim == 1:                 # inner product
        return g * b, g * a
    if a.ndim == 1:                                 # a (k,), b (..., k, m)
        if b.ndim == 2:
            return b @ g, outer(a, g)
        return (b @ expand(g, -1)).sum(-1), expand(a, -1) @ expand(g, -2)
    if b.ndim == 1:                                 # a (..., n, k), b (k,)
        if a.ndim == 2:
            return outer(g, b), a.T @ g
        return expand(g, -1) @ expand(b, 0), (a.mT @ expand(g, -1)).sum(-1)
    return g @ b.mT, a.mT @ g


rules("matmul", jvp=lambda a, b, da, db: da @ b + a @ db,
                vjp=_matmul_vjp)


def _dot_infer(types, attrs):
    numeric(types, "dot", scalar_ok=False)
    a, b = types
    for i, t in enumerate(types):
        if t.ndim > 2:
            raise TypeRuleError(f"dot: operand {i + 1} must be 1-D or 2-D, got {t}",
                                kind="shape", arg=i)
    return T.make(T.promote(a.dtype, b.dtype), _matmul_shape("dot", a.shape, b.shape))


def _dot(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return out(np.dot(a, b), T.promote(dtype_of(a), dtype_of(b)))


defprim("dot", operands=("a", "b"), infer=_dot_infer, impl=_dot, group="linalg",
        doc="np.dot for 1-D/2-D operands (inner product, matrix-vector, matrix product)")
rules("dot", jvp=lambda a, b, da, db: dot(da, b) + dot(a, db),
             vjp=_matmul_vjp)                       # dot is matmul on 1-D/2-D operands


def _size(shape):
    n = 1
    for d in shape:
        n = T.dim_mul(n, d)
    return n


def _outer_infer(types, attrs):
    numeric(types, "outer")
    a, b = types
    return T.Array(T.promote(a.dtype, b.dtype), (_size(a.shape), _size(b.shape)))


def _outer(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return out(np.outer(a, b), T.promote(dtype_of(a), dtype_of(b)))


defprim("outer", operands=("a", "b"), infer=_outer_infer, impl=_outer, group="linalg",
        doc="outer product a[i] * b[j] (operands flattened, as NumPy); bilinear")
rules("outer", jvp=lambda a, b, da, db: outer(da, b) + outer(a, db),
               vjp=lambda a, b, g: (reshape_like(g @ ravel(b), a),
                                    reshape_like(g.T @ ravel(a), b)))


def _perm(axes, ndim):
    """``axes`` checked to be a permutation of the axes (negative entries allowed)."""
    if not isinstance(axes, (tuple, list)) or len(axes) != ndim or \
            any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in axes) or \
            sorted(int(a) % ndim for a in axes if -ndim <= a < ndim) != list(range(ndim)):
        raise TypeRuleError(f"transpose: axes must be a permutation of {ndim} axes, got {axes!r}",
                            kind="shape")
    return tuple(int(a) % ndim for a in axes)


def _transpose_infer(types, attrs):
    numeric(types, "transpose")
    (x,) = types
    axes = attrs.get("axes")
    if axes is None:
        return T.make(x.dtype, tuple(reversed(x.shape)))
    return T.make(x.dtype, tuple(x.shape[a] for a in _perm(axes, x.ndim)))


def _transpose(x, axes=None):
    x = np.asarray(x)
    return np.array(np.transpose(x, axes), copy=True)[()]


def _inverse(axes, ndim):
    return None if axes is None else tuple(int(k) for k in np.argsort(_perm(axes, ndim)))


defprim("transpose", operands=("x",), attrs={"axes": None}, infer=_transpose_infer,
        impl=_transpose, linear=True, group="linalg",
        doc="x.T: axes reversed, or permuted by the attr axes as np.transpose (a copy, arrays "
            "being values)")
rules("transpose", jvp=lambda dx, axes: transpose(dx, axes),
                   vjp=lambda x, g, axes: transpose(g, _inverse(axes, x.ndim)))


def _solve_infer(types, attrs):
    numeric(types, "solve", scalar_ok=False)
    A, b = types
    if A.ndim != 2:
        raise TypeRuleError(f"solve: the matrix must be 2-D, got {A}", kind="shape", arg=0)
    if T.dims_conflict(A.shape[0], A.shape[1]):
        raise TypeRuleError(f"solve: the matrix must be square, got {A}", kind="shape", arg=0)
    if b.ndim not in (1, 2):
        raise TypeRuleError(f"solve: the right-hand side must be 1-D or 2-D, got {b}",
                            kind="shape", arg=1)
    n = _pick(A.shape[0], A.shape[1])
    if T.dims_conflict(n, b.shape[0]):
        raise TypeRuleError(f"solve: the matrix has {T.dim_str(n)} rows but the right-hand side "
                            f"has {T.dim_str(b.shape[0])}", kind="shape", arg=1)
    shape = (_pick(A.shape[1], b.shape[0]),) + tuple(b.shape[1:])
    return T.Array(T.float_of(T.promote(A.dtype, b.dtype)), shape)


def _solve(A, b):
    A, b = np.asarray(A), np.asarray(b)
    dt = T.float_of(T.promote(dtype_of(A), dtype_of(b)))
    npdt = T.NP_DTYPES[dt]
    return out(np.linalg.solve(A.astype(npdt), b.astype(npdt)), dt)


defprim("solve", operands=("A", "b"), infer=_solve_infer, impl=_solve, group="linalg",
        doc="x with A x = b; A square 2-D, b 1-D or 2-D (columns); float result")


def _solve_vjp(A, z, g):
    gb = solve(A.T, g)
    return -(outer(gb, z) if z.ndim == 1 else gb @ z.T), gb


rules("solve", jvp=lambda A, z, dA, db: solve(A, db - dA @ z),      # A dz = db - dA z
               vjp=_solve_vjp)


def _trace_infer(types, attrs):
    numeric(types, "trace")
    (x,) = types
    if x.ndim != 2:
        raise TypeRuleError(f"trace: operand must be 2-D, got {x}", kind="shape", arg=0)
    return T.Scalar("i64" if x.dtype == "bool" else x.dtype)


def _trace(x):
    x = np.asarray(x)
    dt = dtype_of(x)
    return out(np.trace(x), "i64" if dt == "bool" else dt)


defprim("trace", operands=("x",), infer=_trace_infer, impl=_trace, linear=True,
        group="linalg", doc="sum of the diagonal of a 2-D array (bool gives i64)")
rules("trace", jvp=lambda dx: trace(dx),
               vjp=lambda x, g: where(eye_mask(x), g, 0))


def _diag_infer(types, attrs):
    numeric(types, "diag")
    (x,) = types
    if x.ndim == 1:
        return T.Array(x.dtype, (x.shape[0], x.shape[0]))
    if x.ndim == 2:
        m, n = x.shape
        if isinstance(m, int) and isinstance(n, int):
            d = min(m, n)
        elif m is not None and m == n:
            d = m
        else:
            d = None
        return T.Array(x.dtype, (d,))
    raise TypeRuleError(f"diag: operand must be 1-D or 2-D, got {x}", kind="shape", arg=0)


def _diag(x):
    x = np.asarray(x)
    return np.array(np.diag(x), copy=True)


defprim("diag", operands=("x",), infer=_diag_infer, impl=_diag, linear=True, group="linalg",
        doc="1-D v -> the 2-D matrix with diagonal v; 2-D A -> its diagonal (a copy)")


def _diag_vjp(x, g):
    if x.ndim == 1 or (x.shape[0] == x.shape[1] and x.shape[0] is not None):
        return diag(g)                              # square: the matrix with diagonal g
    k = dims(g)[0]                                  # min(m, n): g into x[:k, :k]
    head = ("slice", False, True, False)
    return setitem(zeros_like(x), diag(g), k, k, index=(head, head), _shape=(g.shape[0],) * 2)


rules("diag", jvp=lambda dx: diag(dx),
              vjp=_diag_vjp)
