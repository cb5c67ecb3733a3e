"""Reductions: ``sum mean prod max min logsumexp norm argmax argmin`` (attr ``axis``) and
the variadic scalar ``maxn`` / ``minn`` (``max(a, b, c)`` of the language).

``axis`` is ``None`` (every axis), an ``int`` (negative allowed) or a tuple of ints, as
NumPy; the reduced axes are dropped (no ``keepdims``), a full reduction gives a scalar.
Result dtypes follow NumPy: ``sum``/``prod`` keep the dtype (bool -> i64), ``mean``,
``logsumexp`` and ``norm`` are float (``float_of``), ``max``/``min`` keep it,
``argmax``/``argmin`` give ``i64`` (with ``axis=None`` the flat index, as NumPy).

The small helpers at the top (``numeric``, ``norm_axes``, ``out``, ...) are shared by
the other primitive modules.
"""
from __future__ import annotations

from functools import reduce

import numpy as np

from dplang.ir import types as T
from dplang.ir.primitives import TypeRuleError, defprim
from dplang.ir.primitives.rules import (add_all, axes_of, eq, onehot_argmax, onehot_argmin, rules,
                                        size, softmax, spread, sum_to, where)


# ---------------------------------------------------------------- shared helpers
def numeric(types, name, scalar_ok=True, start=0):
    """Every operand is a number or an array (not a function); optionally no scalars."""
    for i, t in enumerate(types):
        if not isinstance(t, (T.Scalar, T.Array)) or t.dtype not in T.DTYPES:
            raise TypeRuleError(f"{name}: operand {start + i + 1} is not a number or array, got {t}",
                                arg=start + i)
        if not scalar_ok and isinstance(t, T.Scalar):
            raise TypeRuleError(f"{name}: operand {start + i + 1} must be an array, got the scalar {t}",
                                kind="shape", arg=start + i)


def need_scalar(t, name, i, dtypes=None, what="a scalar"):
    """Operand ``i`` is a scalar of one of ``dtypes`` (any numeric dtype when None)."""
    if not isinstance(t, T.Scalar) or t.dtype not in T.DTYPES:
        kind = "shape" if isinstance(t, T.Array) else "type"
        raise TypeRuleError(f"{name}: operand {i + 1} must be {what}, got {t}", kind=kind, arg=i)
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeRuleError(f"{name}: operand {i + 1} must be {what}, got {t}", arg=i)


def promote_all(dtypes):
    return reduce(T.promote, dtypes)


def dtype_of(v) -> str:
    """The IR dtype of a runtime value (Python numbers count as f64 / i64 / bool)."""
    return T.dtype_of_numpy(np.asarray(v).dtype)


def out(a, dtype: str):
    """``a`` as the declared dtype, a NumPy scalar when 0-d."""
    return np.asarray(a, dtype=T.NP_DTYPES[dtype])[()]


def norm_axes(axis, ndim, name, arg=0, allow_tuple=True):
    """The axes reduced by ``axis`` (None | int | tuple of ints), normalised and sorted."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer, tuple, list)):
        raise TypeRuleError(f"{name}: axis must be None, an int or a tuple of ints, got {axis!r}",
                            arg=arg)
    if isinstance(axis, (tuple, list)):
        if not allow_tuple:
            raise TypeRuleError(f"{name}: axis must be None or an int, got {axis!r}", arg=arg)
        axes = tuple(axis)
    else:
        axes = (axis,)
    res = []
    for a in axes:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
            raise TypeRuleError(f"{name}: axis entries must be ints, got {a!r}", arg=arg)
        if not -ndim <= a < ndim:
            raise TypeRuleError(f"{name}: axis {a} is out of range for an operand of rank {ndim}",
                                kind="shape", arg=arg)
        a = int(a) % ndim
        if a in res:
            raise TypeRuleError(f"{name}: axis {a} repeated in {axis!r}", kind="shape", arg=arg)
        res.append(a)
    return tuple(sorted(res))


def np_axis(axis):
    """The ``axis`` argument as NumPy takes it (lists become tuples)."""
    return tuple(axis) if isinstance(axis, list) else axis


def reduced_shape(shape, axes):
    return tuple(d for k, d in enumerate(shape) if k not in axes)


# ---------------------------------------------------------------- reductions
_KEEP = lambda dt: dt                                  # noqa: E731
_ACC = lambda dt: "i64" if dt == "bool" else dt        # noqa: E731


def _reduction_infer(name, dtype_rule, allow_tuple=True):
    def infer(types, attrs):
        numeric(types, name)
        (x,) = types
        axes = norm_axes(attrs.get("axis"), x.ndim, name, allow_tuple=allow_tuple)
        return T.make(dtype_rule(x.dtype), reduced_shape(x.shape, axes))
    return infer


def _sum(x, axis=None):
    x = np.asarray(x)
    return out(np.sum(x, axis=np_axis(axis)), _ACC(dtype_of(x)))


def _prod(x, axis=None):
    x = np.asarray(x)
    return out(np.prod(x, axis=np_axis(axis)), _ACC(dtype_of(x)))


def _as_float(x):
    x = np.asarray(x)
    dt = T.float_of(dtype_of(x))
    return x.astype(T.NP_DTYPES[dt], copy=False), dt


def _mean(x, axis=None):
    x, dt = _as_float(x)
    return out(np.mean(x, axis=np_axis(axis)), dt)


def _max(x, axis=None):
    x = np.asarray(x)
    return out(np.max(x, axis=np_axis(axis)), dtype_of(x))


def _min(x, axis=None):
    x = np.asarray(x)
    return out(np.min(x, axis=np_axis(axis)), dtype_of(x))


def logsumexp_np(x, axis=None, keepdims=False):
    """Stable ``log(sum(exp(x)))``: exact at ``-inf`` (all ``-inf`` gives ``-inf``) and
    ``+inf`` entries, no warnings.  ``x`` a float array."""
    with np.errstate(all="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        finite = np.isfinite(m)
        shift = np.where(finite, m, 0)
        s = np.sum(np.exp(x - shift), axis=axis, keepdims=True)
        r = np.where(finite, np.log(s) + shift, m)   # m = +-inf (or nan): the result is m
    if not keepdims:
        r = np.squeeze(r, axis=axis) if axis is not None else r.reshape(())
    return r


def _logsumexp(x, axis=None):
    x, dt = _as_float(x)
    return out(logsumexp_np(x, np_axis(axis)), dt)


def _norm(x, axis=None):
    x, dt = _as_float(x)
    return out(np.sqrt(np.sum(x * x, axis=np_axis(axis))), dt)


def _argmax(x, axis=None):
    return out(np.argmax(np.asarray(x), axis=axis), "i64")


def _argmin(x, axis=None):
    return out(np.argmin(np.asarray(x), axis=axis), "i64")


# A reduction's cotangent is spread back over the reduced axes: ``spread(g, x, axes)``
# (broadcast_to with axis); its tangent is the reduction of a weighted tangent.
defprim("sum", operands=("x",), attrs={"axis": None}, infer=_reduction_infer("sum", _ACC),
        impl=_sum, linear=True, group="reduction",
        doc="sum over axis (None: all); bool sums to i64")
rules("sum", jvp=lambda dx, axis: dx.sum(axis),
             vjp=lambda x, g, axis: spread(g, x, axes_of(x, axis)))

defprim("mean", operands=("x",), attrs={"axis": None},
        infer=_reduction_infer("mean", T.float_of), impl=_mean, linear=True,
        group="reduction", doc="arithmetic mean over axis; float result")
rules("mean", jvp=lambda dx, axis: dx.mean(axis),
              vjp=lambda x, g, axis: spread(g, x, axes_of(x, axis)) / size(x, axes_of(x, axis)))

defprim("prod", operands=("x",), attrs={"axis": None}, infer=_reduction_infer("prod", _ACC),
        impl=_prod, group="reduction", doc="product over axis; bool gives i64")


def _prod_others(x, axis):
    """The product of the other entries along ``axis``, for every entry of ``x``, exact
    at zeros (no division by zero): the products of the non-zero entries, the count of
    zeros, and where."""
    axes = axes_of(x, axis)
    zero = eq(x, 0)
    nonzero = where(zero, 1, x)
    p = spread(nonzero.prod(axes), x, axes)
    nzeros = spread(zero.sum(axes), x, axes)
    return where(zero, where(eq(nzeros, 1), p, 0),
                 where(eq(nzeros, 0), p / nonzero, 0))


rules("prod", jvp=lambda x, dx, axis: (dx * _prod_others(x, axis)).sum(axis),
              vjp=lambda x, g, axis: spread(g, x, axes_of(x, axis)) * _prod_others(x, axis))

defprim("max", operands=("x",), attrs={"axis": None}, infer=_reduction_infer("max", _KEEP),
        impl=_max, group="reduction",
        doc="maximum over axis (NaN-propagating); derivative to the first maximiser")
defprim("min", operands=("x",), attrs={"axis": None}, infer=_reduction_infer("min", _KEEP),
        impl=_min, group="reduction",
        doc="minimum over axis (NaN-propagating); derivative to the first minimiser")


def _pick_rules(name, onehot):
    """max/min: the derivative goes to the first maximiser (minimiser) along axis."""
    def first(x, axis):
        return onehot(x, axis=axes_of(x, axis))

    rules(name,
          jvp=lambda x, dx, axis: dx if x.ndim == 0 else (first(x, axis) * dx).sum(axis),
          vjp=lambda x, g, axis: g if x.ndim == 0 else
          first(x, axis) * spread(g, x, axes_of(x, axis)))


_pick_rules("max", onehot_argmax)
_pick_rules("min", onehot_argmin)

defprim("logsumexp", operands=("x",), attrs={"axis": None},
        infer=_reduction_infer("logsumexp", T.float_of), impl=_logsumexp, group="reduction",
        doc="log(sum(exp(x))) over axis, max-shifted; exact at -inf and +inf entries")


def _lse_weights(x, axis):
    """The softmax weights along axis: the gradient of logsumexp (0 at -inf entries)."""
    return softmax(x, axis=axes_of(x, axis))


rules("logsumexp",
      jvp=lambda x, dx, axis: dx if x.ndim == 0 else (_lse_weights(x, axis) * dx).sum(axis),
      vjp=lambda x, g, axis: g if x.ndim == 0 else
      _lse_weights(x, axis) * spread(g, x, axes_of(x, axis)))

defprim("norm", operands=("x",), attrs={"axis": None},
        infer=_reduction_infer("norm", T.float_of), impl=_norm, group="reduction",
        doc="2-norm: Frobenius/flattened with axis=None, vector 2-norm along axis; "
            "derivative x / norm, 0 where the norm is 0")


def _unit(x, z, axis):
    """x / norm along axis, 0 where the norm is 0."""
    n = spread(z, x, axes_of(x, axis))
    pos = n > 0
    return where(pos, x / where(pos, n, 1), 0)


rules("norm", jvp=lambda x, z, dx, axis: (_unit(x, z, axis) * dx).sum(axis),
              vjp=lambda x, z, g, axis: _unit(x, z, axis) * spread(g, x, axes_of(x, axis)))
defprim("argmax", operands=("x",), attrs={"axis": None},
        infer=_reduction_infer("argmax", lambda dt: "i64", allow_tuple=False), impl=_argmax,
        zero_derivative=True, group="reduction",
        doc="index of the first maximum (flat index when axis=None), i64")
defprim("argmin", operands=("x",), attrs={"axis": None},
        infer=_reduction_infer("argmin", lambda dt: "i64", allow_tuple=False), impl=_argmin,
        zero_derivative=True, group="reduction",
        doc="index of the first minimum (flat index when axis=None), i64")


# ---------------------------------------------------------------- variadic scalars
def _scalars_infer(name):
    def infer(types, attrs):
        if len(types) < 1:
            raise TypeRuleError(f"{name} needs at least one operand")
        for i, t in enumerate(types):
            need_scalar(t, name, i)
        return T.Scalar(promote_all([t.dtype for t in types]))
    return infer


def _maxn(*xs):
    dt = promote_all([dtype_of(v) for v in xs])
    return out(np.max(np.array(xs, dtype=T.NP_DTYPES[dt])), dt)


def _minn(*xs):
    dt = promote_all([dtype_of(v) for v in xs])
    return out(np.min(np.array(xs, dtype=T.NP_DTYPES[dt])), dt)


defprim("maxn", operands=("*xs",), variadic=True, infer=_scalars_infer("maxn"), impl=_maxn,
        group="reduction",
        doc="max(a, b, ...) of scalars, promoted dtype, NaN-propagating; derivative to the "
            "first maximiser")
defprim("minn", operands=("*xs",), variadic=True, infer=_scalars_infer("minn"), impl=_minn,
        group="reduction",
        doc="min(a, b, ...) of scalars, promoted dtype, NaN-propagating; derivative to the "
            "first minimiser")


def _first_hits(xs, z):
    """For each operand, whether it is the first one equal to the result z."""
    hits, taken = [], None
    for x in xs:
        hit = eq(x, z)
        hits.append(hit if taken is None else hit & ~taken)
        taken = hit if taken is None else taken | hit
    return hits


for _name in ("maxn", "minn"):
    rules(_name, jvp=lambda xs, z, dxs: add_all(where(s, dx, 0)
                                                for s, dx in zip(_first_hits(xs, z), dxs)),
                 vjp=lambda xs, z, g: [where(s, g, 0) for s in _first_hits(xs, z)])


# ---------------------------------------------------------------- broadcasting
# The pair that differentiation of broadcasting needs: ``sum_to`` undoes NumPy
# broadcasting (a cotangent summed back to its operand's shape), ``broadcast_to`` does it
# (with ``axis``: the reverse of a reduction over those axes).  Each is the other's
# transpose.  The ``like`` operand gives only its runtime shape (no derivative).

def _sum_to_infer(types, attrs):
    numeric(types, "sum_to")
    x, like = types
    lead = x.ndim - like.ndim
    if lead < 0:
        raise TypeRuleError(f"sum_to: cannot sum {x} down to the higher rank of {like}",
                            kind="shape", arg=1)
    for dx, dl in zip(x.shape[lead:], like.shape):
        if dl != 1 and T.dims_conflict(dx, dl):
            raise TypeRuleError(f"sum_to: {like} does not broadcast to {x}", kind="shape", arg=1)
    return T.make(x.dtype, like.shape)


def _sum_to(x, like):
    x = np.asarray(x)
    shape = np.shape(like)
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + k for k, d in enumerate(shape)
                                      if d == 1 and x.shape[lead + k] != 1)
    r = np.sum(x, axis=axes, keepdims=True) if axes else x
    return out(np.reshape(r, shape), dtype_of(x))


def _broadcast_to_infer(types, attrs):
    numeric(types, "broadcast_to")
    x, like = types
    axis = attrs.get("axis")
    if axis is None:
        kept = like.shape
        if x.ndim > like.ndim:
            raise TypeRuleError(f"broadcast_to: cannot broadcast {x} to the lower rank of "
                                f"{like}", kind="shape", arg=1)
    else:
        axes = norm_axes(axis, like.ndim, "broadcast_to", arg=1)
        kept = reduced_shape(like.shape, axes)
        if x.ndim != len(kept):
            raise TypeRuleError(f"broadcast_to: {x} is not {like} without axes {axis!r}",
                                kind="shape", arg=0)
    for dx, dl in zip(reversed(x.shape), reversed(kept)):
        if dx != 1 and T.dims_conflict(dx, dl):
            raise TypeRuleError(f"broadcast_to: {x} does not broadcast to {like}", kind="shape")
    return T.make(x.dtype, like.shape)


def _broadcast_to(x, like, axis=None):
    x = np.asarray(x)
    shape = np.shape(like)
    if axis is not None:
        x = np.expand_dims(x, norm_axes(axis, len(shape), "broadcast_to"))
    return np.array(np.broadcast_to(x, shape), copy=True)[()]


defprim("sum_to", operands=("x", "like"), infer=_sum_to_infer, impl=_sum_to, linear=True,
        group="broadcast",
        doc="x summed over the axes along which like's shape broadcasts to x's (leading axes, "
            "and size-1 axes of like): the transpose of broadcast_to; linear in x")
rules("sum_to", jvp=lambda dx, like: sum_to(dx, like),
                vjp=lambda x, g: (spread(g, x), None))
defprim("broadcast_to", operands=("x", "like"), attrs={"axis": None}, infer=_broadcast_to_infer,
        impl=_broadcast_to, linear=True, group="broadcast",
        doc="x broadcast to like's shape (NumPy broadcasting; with axis, x has like's shape "
            "without those axes, which are inserted first); linear in x")
rules("broadcast_to",
      jvp=lambda dx, like, axis: spread(dx, like, axis),
      vjp=lambda x, g, axis: (sum_to(g, x) if axis is None else
                              g.sum(axes_of(g, axis)), None))
