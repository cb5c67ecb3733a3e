"""Soft operators (SPEC 2.2, 2.3) and the smoothed counterparts of the hard ones.

Along the last axis by default (attr ``axis=-1``; ``None`` or a tuple of axes treat
those axes together as one flattened vector), float results:

* ``softmax(x)``, ``sparsemax(x)`` (Euclidean projection onto the simplex, the sort
  based algorithm of Martins & Astudillo 2016);
* ``smax(x, gamma)``, ``smin(x, gamma)`` with attr ``reg``: ``"entropy"`` gives
  ``gamma * logsumexp(x / gamma)``, ``"l2"`` gives ``<q, x> - gamma/2 ||q||^2`` with
  ``q = sparsemax(x / gamma)``; ``smin(x) = -smax(-x)``.  They reduce the axis;
* ``sargmax(x, gamma)``, ``sargmin(x, gamma)``: the maximiser q (``softmax(x / gamma)``
  or ``sparsemax(x / gamma)``), the gradient of ``smax``; ``sargmin(x) = sargmax(-x)``;
* ``onehot_argmax(x)``, ``onehot_argmin(x)``: one-hot f64 of the FIRST maximiser /
  minimiser (zero derivative);
* ``smaxn(gamma, *xs)`` / ``sminn(gamma, *xs)`` (variadic scalars: ``smax`` of the
  vector of xs) and ``smaximum(x, y, gamma)`` / ``sminimum(x, y, gamma)`` (pairwise,
  broadcasting), targets of the smoothing pass.

Exactness: the computations are max-shifted (finite for ``gamma = 1e-8`` with
``x ~ 1e2``), ``-inf`` entries get weight exactly 0 and no NaN, a vector whose maximum
is infinite (all ``-inf``, or some ``+inf``) has value that maximum and its weight
spread uniformly over the entries equal to it.  ``gamma`` must be positive (a
``ValueError`` otherwise).

Each hard primitive names its smoothed counterpart (``Primitive.smoothed``):
maxn->smaxn, minn->sminn, maximum->smaximum, minimum->sminimum, max->smax, min->smin,
onehot_argmax->sargmax, onehot_argmin->sargmin.  ``max``'s default axis is ``None``
and ``smax``'s is ``-1``: the smoothing pass copies ``axis`` explicitly.
"""
from __future__ import annotations

import numpy as np

from dplang.ir import types as T
from dplang.ir.primitives import REGISTRY, TypeRuleError, defprim
from dplang.ir.primitives.reductions import (dtype_of, need_scalar, norm_axes, numeric,
                                             out, promote_all, reduced_shape)
from dplang.ir.primitives.rules import (INF, ZERO, add_all, array, axes_of, finite, finite_or_zero,
                                        rules, sargmax, sargmin, spread, where, xlogy0,
                                        E, builder, lift)

REGS = ("entropy", "l2")


# ---------------------------------------------------------------- row kernels
# Each works on a 2-D float array ``z`` (rows = independent vectors) and returns per-row
# values (1-D) or weights (2-D).

def _row_max(z):
    m = np.max(z, axis=1, keepdims=True)
    fin = np.isfinite(m)
    return m, fin, np.where(fin, m, 0)


def _ties(z, m):
    """Uniform weights over the entries equal to the row maximum (for infinite maxima)."""
    tie = (z == m)
    return tie / np.sum(tie, axis=1, keepdims=True)


def softmax_rows(z, gamma=1.0):
    with np.errstate(all="ignore"):
        m, fin, shift = _row_max(z)
        e = np.exp((z - shift) / gamma)
        q = e / np.sum(e, axis=1, keepdims=True)
        return np.where(fin, q, _ties(z, m))


def sparsemax_rows(z, gamma=1.0):
    with np.errstate(all="ignore"):
        m, fin, shift = _row_max(z)
        w = (z - shift) / gamma                      # finite rows: max 0, -inf stays -inf
        ws = -np.sort(-w, axis=1)                    # descending, -inf last
        k = np.arange(1, z.shape[1] + 1, dtype=z.dtype)
        cs = np.cumsum(ws, axis=1)
        support = 1 + k * ws > cs
        kz = np.max(np.where(support, np.arange(1, z.shape[1] + 1), 0), axis=1, keepdims=True)
        kz = np.maximum(kz, 1)
        tau = (np.take_along_axis(cs, kz - 1, axis=1) - 1) / kz
        q = np.maximum(w - tau, 0)
        return np.where(fin, q, _ties(z, m)).astype(z.dtype, copy=False)


def smax_rows(z, gamma, reg):
    with np.errstate(all="ignore"):
        m, fin, shift = _row_max(z)
        if reg == "entropy":
            s = np.sum(np.exp((z - shift) / gamma), axis=1, keepdims=True)
            v = shift + gamma * np.log(s)
        else:
            q = sparsemax_rows(z, gamma)
            lin = np.sum(np.where(q > 0, q * (z - shift), 0), axis=1, keepdims=True)
            v = shift + lin - gamma / 2 * np.sum(q * q, axis=1, keepdims=True)
        return np.where(fin, v, m)[:, 0]


def sargmax_rows(z, gamma, reg):
    return softmax_rows(z, gamma) if reg == "entropy" else sparsemax_rows(z, gamma)


def onehot_rows(z, pick=np.argmax):
    q = np.zeros(z.shape, np.float64)
    q[np.arange(z.shape[0]), pick(z, axis=1)] = 1.0
    return q


def along(x, axis, fn, reduce):
    """Apply a row kernel over ``axis`` (moved last and flattened) of array ``x``."""
    nd = x.ndim
    axes = norm_axes(axis, nd, "soft operator")
    rest = [k for k in range(nd) if k not in axes]
    perm = rest + list(axes)
    xt = np.transpose(x, perm)
    lead = xt.shape[:len(rest)]
    rows = int(np.prod(lead, dtype=np.int64))
    K = int(np.prod(xt.shape[len(rest):], dtype=np.int64))
    r = fn(xt.reshape(rows, K))
    if reduce:
        return r.reshape(lead)
    return np.transpose(r.reshape(xt.shape), np.argsort(perm))


# ---------------------------------------------------------------- type rules
def _check_reg(attrs, name):
    reg = attrs.get("reg")
    if reg not in REGS:
        raise TypeRuleError(f"{name}: reg must be one of {', '.join(repr(r) for r in REGS)}, "
                            f"got {reg!r}")
    return reg


def _need_gamma(t, name, i):
    need_scalar(t, name, i, ("i64", "f32", "f64"), what="a positive float temperature")


def _map_infer(name, with_gamma=False, with_reg=False, dtype=None):
    """x -> same shape (softmax, sparsemax, sargmax, onehot)."""
    def infer(types, attrs):
        numeric(types[:1], name)
        x = types[0]
        if with_gamma:
            _need_gamma(types[1], name, 1)
        if with_reg:
            _check_reg(attrs, name)
        norm_axes(attrs.get("axis"), x.ndim, name)
        dt = dtype or T.float_of(promote_all([t.dtype for t in types]))
        return T.make(dt, x.shape)
    return infer


def _reduce_infer(name):
    """smax/smin: (x, gamma) -> x with axis reduced."""
    def infer(types, attrs):
        numeric(types[:1], name)
        x = types[0]
        _need_gamma(types[1], name, 1)
        _check_reg(attrs, name)
        axes = norm_axes(attrs.get("axis"), x.ndim, name)
        return T.make(T.float_of(T.promote(x.dtype, types[1].dtype)), reduced_shape(x.shape, axes))
    return infer


def _floats(*vals):
    """The values as arrays of their promoted float dtype; that dtype."""
    dt = T.float_of(promote_all([dtype_of(v) for v in vals]))
    npdt = T.NP_DTYPES[dt]
    return [np.asarray(v, dtype=npdt) for v in vals], dt


def _gamma(g, name):
    g = g[()] if isinstance(g, np.ndarray) else g
    if not g > 0:
        raise ValueError(f"{name}: gamma must be positive, got {g}")
    return g


# ---------------------------------------------------------------- softmax / sparsemax
def _softmax(x, axis=-1):
    (x,), dt = _floats(x)
    return out(along(x, axis, softmax_rows, False), dt)


def _sparsemax(x, axis=-1):
    (x,), dt = _floats(x)
    return out(along(x, axis, sparsemax_rows, False), dt)


defprim("softmax", operands=("x",), attrs={"axis": -1}, infer=_map_infer("softmax"),
        impl=_softmax, group="soft",
        doc="exp(x) / sum(exp(x)) along the last axis (max-shifted; -inf entries weigh 0)")
defprim("sparsemax", operands=("x",), attrs={"axis": -1}, infer=_map_infer("sparsemax"),
        impl=_sparsemax, group="soft",
        doc="Euclidean projection of x onto the simplex along the last axis "
            "(Martins & Astudillo 2016; -inf entries weigh 0)")


# The Jacobians at the output q, applied to t along axes (both symmetric, so they serve
# the JVP and the VJP): softmax J = diag(q) - q q^T; sparsemax, on the support S = {q > 0},
# J = diag(s) - s s^T / |S|.  Entries of weight 0 (-inf inputs) do not mix in.
def softmax_jac(q, t, axes):
    return q * (t - spread((q * t).sum(axes), q, axes))


def sparsemax_jac(q, t, axes):
    s = (q > 0).astype(q.dtype)
    return s * (t - spread((s * t).sum(axes) / s.sum(axes), q, axes))


def _jac(reg):
    return softmax_jac if reg == "entropy" else sparsemax_jac


# Infinite entries of x move nothing: in a row with a finite entry their weight is 0
# already; in a row whose maximum is infinite (all -inf, or +inf entries sharing the
# weight) the weights are constant.  So the Jacobian is J diag(finite(x)): the tangent
# is masked before J, the cotangent after it.
def soft_jvp(reg, x, q, t, axes):
    return _jac(reg)(q, where(finite(x), t, 0), axes)


def soft_vjp(reg, x, q, g, axes):
    return where(finite(x), _jac(reg)(q, g, axes), 0)


for _name, _reg in (("softmax", "entropy"), ("sparsemax", "l2")):
    rules(_name, jvp=lambda x, z, dx, axis, reg=_reg: soft_jvp(reg, x, z, dx, axes_of(x, axis)),
                 vjp=lambda x, z, g, axis, reg=_reg: soft_vjp(reg, x, z, g, axes_of(x, axis)))


def _smax_dgamma(q, reg, axes, sign=1):
    """d smax / d gamma at the maximiser q (Danskin): the entropy H(q) for "entropy",
    -||q||^2 / 2 for "l2"; smin(x) = -smax(-x) flips the sign."""
    d = -xlogy0(q).sum(axes) if reg == "entropy" else -(q * q).sum(axes) / 2
    return d if sign > 0 else -d


# ---------------------------------------------------------------- smax / smin
def _smax(x, gamma, reg="entropy", axis=-1):
    (x, g), dt = _floats(x, gamma)
    g = _gamma(g, "smax")
    return out(along(x, axis, lambda z: smax_rows(z, g, reg), True), dt)


def _smin(x, gamma, reg="entropy", axis=-1):
    (x, g), dt = _floats(x, gamma)
    g = _gamma(g, "smin")
    return out(-along(-x, axis, lambda z: smax_rows(z, g, reg), True), dt)


defprim("smax", operands=("x", "gamma"), attrs={"reg": "entropy", "axis": -1},
        infer=_reduce_infer("smax"), impl=_smax, group="soft",
        doc="regularised max over the last axis: max over q in the simplex of "
            "<q, x> - gamma * Omega(q); reg 'entropy' (gamma * logsumexp(x / gamma)) or 'l2'")
defprim("smin", operands=("x", "gamma"), attrs={"reg": "entropy", "axis": -1},
        infer=_reduce_infer("smin"), impl=_smin, group="soft",
        doc="regularised min over the last axis: -smax(-x, gamma)")


def _smax_tangent(q, dx, dgamma, reg, axes, sign):
    """d smax = <q, dx> + dgamma * d smax/d gamma at the maximiser q (its gradient)."""
    return (q * dx).sum(axes) + _smax_dgamma(q, reg, axes, sign) * dgamma


def _smax_cotangent(x, q, g, reg, axes, sign):
    """(x's, gamma's) cotangent of smax at the maximiser q; gamma's still to be summed."""
    return q * spread(g, x, axes), g * _smax_dgamma(q, reg, axes, sign)


def _smax_rules(name, arg, sign):
    def jvp(x, gamma, dx, dgamma, reg, axis):
        axes = axes_of(x, axis)
        return _smax_tangent(arg(x, gamma, reg=reg, axis=axis), dx, dgamma, reg, axes, sign)

    def vjp(x, gamma, g, reg, axis):
        axes = axes_of(x, axis)
        return _smax_cotangent(x, arg(x, gamma, reg=reg, axis=axis), g, reg, axes, sign)
    rules(name, jvp=jvp, vjp=vjp)


_smax_rules("smax", sargmax, 1)
_smax_rules("smin", sargmin, -1)


# ---------------------------------------------------------------- sargmax / sargmin
def _sargmax(x, gamma, reg="entropy", axis=-1):
    (x, g), dt = _floats(x, gamma)
    g = _gamma(g, "sargmax")
    return out(along(x, axis, lambda z: sargmax_rows(z, g, reg), False), dt)


def _sargmin(x, gamma, reg="entropy", axis=-1):
    (x, g), dt = _floats(x, gamma)
    g = _gamma(g, "sargmin")
    return out(along(-x, axis, lambda z: sargmax_rows(z, g, reg), False), dt)


defprim("sargmax", operands=("x", "gamma"), attrs={"reg": "entropy", "axis": -1},
        infer=_map_infer("sargmax", with_gamma=True, with_reg=True), impl=_sargmax,
        group="soft",
        doc="the maximiser of smax: softmax(x / gamma) (entropy) or sparsemax(x / gamma) (l2)")
defprim("sargmin", operands=("x", "gamma"), attrs={"reg": "entropy", "axis": -1},
        infer=_map_infer("sargmin", with_gamma=True, with_reg=True), impl=_sargmin,
        group="soft", doc="the minimiser of smin: sargmax(-x, gamma)")


def _shifted(x, axes, sign):
    """``x`` minus its row's largest (sign 1) / smallest (-1) finite entry, infinite
    entries 0.  J annihilates a constant per row, so J(x / gamma^2) = J(shifted / gamma^2)
    exactly, and the shifted form does not cancel catastrophically when gamma is tiny
    (x ~ 1e2, gamma = 1e-8: x / gamma^2 ~ 1e18 while the differences matter)."""
    fin = finite(x)
    if sign > 0:
        c = where(fin, x, -INF).max(axes)
    else:
        c = where(fin, x, INF).min(axes)
    return finite_or_zero(x - spread(c, x, axes))


# q = J(u) applied: q = softmax/sparsemax(u), u = sign * x / gamma, so
# du = sign * (dx / gamma - x dgamma / gamma^2); infinite x (weight 0) contribute 0.
def _sarg_tangent(x, gamma, q, dx, dgamma, reg, axes, sign):
    du = dx / gamma
    if dgamma is not ZERO:
        du = du - _shifted(x, axes, sign) * dgamma / gamma ** 2
    return soft_jvp(reg, x, q, du if sign > 0 else -du, axes)


def _sarg_cotangent(x, gamma, q, g, reg, axes, sign):
    gu = soft_vjp(reg, x, q, g, axes)
    gu = gu if sign > 0 else -gu
    return gu / gamma, -(gu * _shifted(x, axes, sign)).sum() / gamma ** 2


def _sarg_rules(name, sign):
    def jvp(x, gamma, z, dx, dgamma, reg, axis):
        return _sarg_tangent(x, gamma, z, dx, dgamma, reg, axes_of(x, axis), sign)

    def vjp(x, gamma, z, g, reg, axis):
        return _sarg_cotangent(x, gamma, z, g, reg, axes_of(x, axis), sign)
    rules(name, jvp=jvp, vjp=vjp)


_sarg_rules("sargmax", 1)
_sarg_rules("sargmin", -1)


# ---------------------------------------------------------------- smax_arg / smin_arg
# smax and its maximiser from one pass over x: what reverse mode tapes for an array smax
# inside a loop (``Primitive.residuals``), so that its reverse sweep multiplies by the
# taped weights instead of recomputing them (no exp).  Not a built-in of the language.
def _smax_arg(x, gamma, reg="entropy", axis=-1):
    return _smax(x, gamma, reg, axis), _sargmax(x, gamma, reg, axis)


def _smin_arg(x, gamma, reg="entropy", axis=-1):
    return _smin(x, gamma, reg, axis), _sargmin(x, gamma, reg, axis)


def _arg_infer(name):
    red = _reduce_infer(name)
    same = _map_infer(name, with_gamma=True, with_reg=True)
    return lambda types, attrs: (red(types, attrs), same(types, attrs))


for _name, _impl, _of in (("smax_arg", _smax_arg, "smax"), ("smin_arg", _smin_arg, "smin")):
    defprim(_name, operands=("x", "gamma"), attrs={"reg": "entropy", "axis": -1},
            infer=_arg_infer(_name), impl=_impl, nresults=2, group="soft",
            doc=f"({_of}(x, gamma), its maximiser) in one pass: reverse mode's residual form "
                f"of {_of}")


def _arg_rules(name, sign):
    """The rules of smax and sargmax (smin, sargmin) at the taped maximiser."""
    def jvp(x, gamma, zs, dx, dgamma, reg, axis):
        axes, q = axes_of(x, axis), zs[1]
        return (_smax_tangent(q, dx, dgamma, reg, axes, sign),
                _sarg_tangent(x, gamma, q, dx, dgamma, reg, axes, sign))

    def vjp(x, gamma, zs, g, reg, axis):
        axes, q = axes_of(x, axis), zs[1]
        gx, gg = ZERO, ZERO
        if g[0] is not ZERO:
            gx, gg = _smax_cotangent(x, q, g[0], reg, axes, sign)
            if gg.ndim:
                gg = gg.sum()
        if g[1] is not ZERO:
            hx, hg = _sarg_cotangent(x, gamma, q, g[1], reg, axes, sign)
            gx, gg = gx + hx, gg + hg
        return gx, gg
    rules(name, jvp=jvp, vjp=vjp)


_arg_rules("smax_arg", 1)
_arg_rules("smin_arg", -1)


def _array_residuals(name):
    """``Primitive.residuals`` of smax/smin on a float64 array (gamma not differentiated):
    the value and the maximiser from one ``smax_arg``/``smin_arg``; the reverse sweep's
    contribution to x is the maximiser times the cotangent spread over the axes."""
    def residuals(b, operands, attrs, need):
        x, gamma = operands
        if need[1] or not isinstance(x.type, T.Array) or x.type.dtype != "f64" \
                or gamma.type.dtype != "f64":
            return None
        v, q = b.prim(name + "_arg", x, gamma, **attrs)
        axes = tuple(norm_axes(attrs.get("axis"), x.type.ndim, name))

        def contribution(b, g, w):
            return b.prim("mul", w, b.prim("broadcast_to", g, w, axis=axes))
        return v, [(q, contribution), None]
    return residuals


REGISTRY["smax"].residuals = _array_residuals("smax")
REGISTRY["smin"].residuals = _array_residuals("smin")


# ---------------------------------------------------------------- one-hot
def _onehot_argmax(x, axis=-1):
    return out(along(np.asarray(x), axis, onehot_rows, False), "f64")


def _onehot_argmin(x, axis=-1):
    return out(along(np.asarray(x), axis, lambda z: onehot_rows(z, np.argmin), False), "f64")


defprim("onehot_argmax", operands=("x",), attrs={"axis": -1},
        infer=_map_infer("onehot_argmax", dtype="f64"), impl=_onehot_argmax,
        zero_derivative=True, smoothed="sargmax", group="soft",
        doc="one-hot f64 vector of the first maximiser along the last axis")
defprim("onehot_argmin", operands=("x",), attrs={"axis": -1},
        infer=_map_infer("onehot_argmin", dtype="f64"), impl=_onehot_argmin,
        zero_derivative=True, smoothed="sargmin", group="soft",
        doc="one-hot f64 vector of the first minimiser along the last axis")


# ---------------------------------------------------------------- smoothed scalar forms
def _smaxn_infer(name):
    def infer(types, attrs):
        if len(types) < 2:
            raise TypeRuleError(f"{name} needs gamma and at least one value")
        _need_gamma(types[0], name, 0)
        for i, t in enumerate(types[1:], 1):
            need_scalar(t, name, i)
        _check_reg(attrs, name)
        return T.Scalar(T.float_of(promote_all([t.dtype for t in types])))
    return infer


def _smaxn(gamma, *xs, reg="entropy"):
    (g, *xs), dt = _floats(gamma, *xs)
    g = _gamma(g, "smaxn")
    return out(smax_rows(np.array(xs).reshape(1, -1), g, reg)[0], dt)


def _sminn(gamma, *xs, reg="entropy"):
    (g, *xs), dt = _floats(gamma, *xs)
    g = _gamma(g, "sminn")
    return out(-smax_rows(-np.array(xs).reshape(1, -1), g, reg)[0], dt)


defprim("smaxn", operands=("gamma", "*xs"), variadic=True, attrs={"reg": "entropy"},
        infer=_smaxn_infer("smaxn"), impl=_smaxn, group="soft",
        doc="smoothed max(a, b, ...) of scalars: smax of the vector of xs")
defprim("sminn", operands=("gamma", "*xs"), variadic=True, attrs={"reg": "entropy"},
        infer=_smaxn_infer("sminn"), impl=_sminn, group="soft",
        doc="smoothed min(a, b, ...) of scalars: smin of the vector of xs")


def soft_choice(xs, gamma, z, reg, sign):
    """For smax (sign 1) / smin (-1) of the operands ``xs`` taken pairwise (elementwise,
    broadcast to z's shape): the weight of each operand (its partial derivative) and
    d/d gamma.  The operands are stacked along a new axis 0 and sargmax'ed along it."""
    if reg == "entropy" and all(not isinstance(x.type, T.Array) for x in list(xs) + [z]):
        return _scalar_entropy_choice(xs, gamma, z, sign)
    if SCALAR_L2 and reg == "l2" and len(xs) <= 3 and \
            all(not isinstance(x.type, T.Array) for x in list(xs) + [z]):
        return _scalar_l2_choice(xs, gamma, z, sign)
    v = array(*[spread(x.astype(z.dtype), z) for x in xs])
    q = (sargmax if sign > 0 else sargmin)(v, gamma, reg=reg, axis=0)
    return [q[k] for k in range(len(xs))], _smax_dgamma(q, reg, (0,), sign)


def _scalar_entropy_choice(xs, gamma, z, sign):
    """``soft_choice`` for scalars under entropy, in scalar arithmetic (no arrays, so a
    DP cell's reverse step allocates nothing): the weights of ``_entropy_cell``."""
    xs = [x.astype(z.dtype) for x in xs]
    g = lift(gamma).astype(z.dtype)
    _, wv = _entropy_cell(builder(), g.v, [x.v for x in xs], sign)
    w = [E(v) for v in wv]
    # d/d gamma (the entropy of the weights) needs log-weights computed from shifted
    # entries to stay exact near one-hot weights: the array route, emitted (and kept by
    # the AD passes) only when gamma itself is differentiated
    v = array(*xs)
    q = (sargmax if sign > 0 else sargmin)(v, gamma, reg="entropy", axis=0)
    return w, _smax_dgamma(q, "entropy", (0,), sign)


# l2 weights of two or three scalars in scalar ops (False: the array route, which tests
# compare against)
SCALAR_L2 = True


def _scalar_l2_choice(xs, gamma, z, sign):
    """``soft_choice`` for two or three scalars under l2, in scalar arithmetic (a DP
    cell's reverse step allocates nothing): the weights of ``_l2_cell`` and d/d gamma
    = -||q||^2 / 2 (Danskin; smin flips the sign)."""
    xs = [x.astype(z.dtype) for x in xs]
    g = lift(gamma).astype(z.dtype)
    w = [E(v) for v in _l2_cell(builder(), g.v, [x.v for x in xs], sign)]
    sq = w[0] * w[0]
    for q in w[1:]:
        sq = sq + q * q
    d = -sq / 2.0
    return w, (d if sign > 0 else -d)


def _l2_cell(b, gamma, xs, sign):
    """The sparsemax weights of smaxn (sign 1) / sminn (-1) of one to three scalars, in
    elementary ops: the sort-based projection of ``sparsemax_rows`` (Martins & Astudillo
    2016) with a sorting network.  With w_k = s (x_k - m) / gamma (m the s-extreme), the
    support is the largest prefix of the sorted w where 1 + k w_(k) > w_(1) + ... +
    w_(k), tau = (that sum - 1) / k and q_k = max(w_k - tau, 0) (tau's derivative taken
    from the unsorted entries of the support, below).  An entry at -s*inf
    stands in as w = -2 (never in the support: tau >= -1) and its difference to m is
    taken as 0, so no inf reaches a product (derivatives of any order stay finite);
    when m is infinite the weight is spread over the ties, as ``_entropy_cell`` does."""
    dt = xs[0].type.dtype
    c = lambda v: b.const(v, T.Scalar(dt))                      # noqa: E731
    inf, zero, one = c(INF), c(0.0), c(1.0)
    neg = (lambda v: v) if sign > 0 else (lambda v: b.prim("neg", v))  # noqa: E731
    zs = [neg(x) for x in xs]
    m = b.prim("maxn", *zs)
    fin = b.prim("lt", b.prim("abs", m), inf)
    mf = b.prim("where", fin, m, zero)
    ws = []
    for zk in zs:
        fk = b.prim("lt", b.prim("abs", zk), inf)
        d = b.prim("sub", b.prim("where", fk, zk, mf), mf)
        ws.append(b.prim("where", fk, b.prim("div", d, gamma), c(-2.0)))
    if len(ws) == 1:
        srt = ws
    elif len(ws) == 2:
        srt = [b.prim("maxn", *ws), b.prim("minn", *ws)]
    else:
        hi01, lo01 = b.prim("maxn", ws[0], ws[1]), b.prim("minn", ws[0], ws[1])
        srt = [b.prim("maxn", hi01, ws[2]),
               b.prim("maxn", lo01, b.prim("minn", hi01, ws[2])),
               b.prim("minn", lo01, ws[2])]
    cum = srt[0]
    tau = b.prim("sub", cum, one)
    for k, v in enumerate(srt[1:], start=2):
        cum = b.prim("add", cum, v)
        kf = c(float(k))
        inside = b.prim("gt", b.prim("add", one, b.prim("mul", kf, v)), cum)
        tau = b.prim("where", inside, b.prim("div", b.prim("sub", cum, one), kf), tau)
    # the support S = {k: w_k > tau}, and tau again from the unsorted entries, (sum of
    # w_k over S - 1) / |S|: the same number to rounding, but its derivative is the
    # mean of the support's (a sorting network's outputs at a tie would carry one
    # entry's derivative twice)
    sup = [b.prim("gt", wk, tau) for wk in ws]
    size = b.prim("cast", sup[0], dtype=dt)
    tot = b.prim("where", sup[0], ws[0], zero)
    for sk, wk in zip(sup[1:], ws[1:]):
        size = b.prim("add", size, b.prim("cast", sk, dtype=dt))
        tot = b.prim("add", tot, b.prim("where", sk, wk, zero))
    size = b.prim("where", b.prim("gt", size, zero), size, one)
    tau = b.prim("div", b.prim("sub", tot, one), size)
    ties = [b.prim("cast", b.prim("eq", zk, m), dtype=dt) for zk in zs]
    count = ties[0]
    for t in ties[1:]:
        count = b.prim("add", count, t)
    count = b.prim("where", b.prim("gt", count, zero), count, one)
    out = []
    for wk, sk, t in zip(ws, sup, ties):
        dk = b.prim("sub", wk, tau)
        qk = b.prim("where", b.prim("logical_and", sk, b.prim("gt", dk, zero)), dk, zero)
        out.append(b.prim("where", fin, qk, b.prim("div", t, count), hint="w"))
    return out


def _smaxn_rules(name, sign):
    def jvp(gamma, xs, z, dgamma, dxs, reg):
        w, d = soft_choice(xs, gamma, z, reg, sign)
        return add_all(wk * dk for wk, dk in zip(w, dxs)) + d * dgamma

    def vjp(gamma, xs, z, g, reg):
        w, d = soft_choice(xs, gamma, z, reg, sign)
        return {"gamma": g * d, "xs": [g * wk for wk in w]}
    rules(name, jvp=jvp, vjp=vjp)


_smaxn_rules("smaxn", 1)
_smaxn_rules("sminn", -1)


DBL_MAX = float(np.finfo(np.float64).max)


def _entropy_cell(b, gamma, xs, sign):
    """smaxn (sign 1) / sminn (-1) of scalars under entropy, in elementary ops: z = m +
    s*gamma*log(sum_k e_k) with e_k = exp(s*(x_k - m)/gamma) and m the s-extreme (the
    arithmetic of the primitive), and the weights w_k = e_k / sum e, exact even for a tiny
    gamma (never computed from the rounded z); entries at -s*inf get e_k = 0, when m is
    infinite z = m and the weight is spread over the ties.  Every branch is finite, so
    derivatives of any order are too.  Returns (z, [w_k])."""
    dt = xs[0].type.dtype
    c = lambda v: b.const(v, T.Scalar(dt))                      # noqa: E731
    inf, zero, one = c(INF), c(0.0), c(1.0)
    # the primitive's own check, kept in the elementary form (an invariant gamma's check
    # is hoisted out of wavefront kernels by the CPU backend)
    name = "smaxn" if sign > 0 else "sminn"
    b.op("assert", [b.prim("gt", gamma, c(0.0)), gamma], [], {
        "msg": f"{name}: gamma must be positive, got {{1}}", "kind": "assert"})
    m = b.prim("maxn" if sign > 0 else "minn", *xs)
    fin = b.prim("lt", b.prim("abs", m), inf)
    mf = b.prim("where", fin, m, zero)
    # one division by gamma per cell, not one per entry (divisions are the slowest
    # arithmetic of a vectorised cell; an invariant gamma's reciprocal is hoisted out of
    # the loop); capped so that a subnormal gamma still gives exp(0) = 1 at the maximum
    rg = b.prim("minn", b.prim("div", one, gamma), c(DBL_MAX))

    def e_of(x):
        fx = b.prim("lt", b.prim("abs", x), inf)
        xm = b.prim("where", fx, x, mf)
        d = b.prim("sub", xm, mf) if sign > 0 else b.prim("sub", mf, xm)
        return b.prim("where", fx, b.prim("exp", b.prim("mul", d, rg)), zero)

    ties = [b.prim("cast", b.prim("eq", x, m), dtype=dt) for x in xs]
    if len(xs) in (2, 3) and ONE_EXP_FEWER:
        es = _first_extreme_free(b, xs, m, e_of, inf, dt)
    else:
        es = [e_of(x) for x in xs]
    total = es[0]
    for e in es[1:]:
        total = b.prim("add", total, e)
    lg = b.prim("mul", b.prim("mul", c(float(sign)), gamma), b.prim("log", total))
    z = b.prim("where", fin, b.prim("add", mf, lg), m)
    count = ties[0]
    for t in ties[1:]:
        count = b.prim("add", count, t)
    count = b.prim("where", b.prim("gt", count, zero), count, one)
    safe = b.prim("where", b.prim("gt", total, zero), total, one)
    # the weights e_k / total (finite extreme) or tie_k / count (infinite extreme), with
    # one division for both cases
    r = b.prim("div", one, b.prim("where", fin, safe, count))
    w = [b.prim("mul", b.prim("where", fin, e, t), r, hint="w") for e, t in zip(es, ties)]
    return z, w


# smaxn/sminn cells of two or three scalars skip the exp of their first extreme entry
# (_first_extreme_free; the CPU backend's value kernels too: codegen._smaxn_lanes)
ONE_EXP_FEWER = True


def _first_extreme_free(b, xs, m, e_of, inf, dt):
    """The e_k of two or three entries with one exp fewer: the first entry equal to the
    extreme m has d = x - m identically 0 (m's derivative is that entry's), so its e is
    1 (0 where it is infinite, as exp gives) to every order of derivative; the other
    entries are routed to the exps by selects and back.  Same values, bit for bit, and
    the same sum order as one exp per entry (a soft-DTW cell: 2 exps instead of 3)."""
    eq = [b.prim("eq", x, m) for x in xs]
    first = [eq[0]]
    seen = eq[0]
    for e in eq[1:]:
        first.append(b.prim("logical_and", e, b.prim("logical_not", seen)))
        seen = b.prim("logical_or", seen, e)
    ones = [b.prim("cast", b.prim("lt", b.prim("abs", x), inf), dtype=dt) for x in xs]
    if len(xs) == 2:
        e = e_of(b.prim("where", first[0], xs[1], xs[0]))
        return [b.prim("where", first[0], ones[0], e), b.prim("where", first[1], ones[1], e)]
    ea = e_of(b.prim("where", first[0], xs[1], xs[0]))     # x1 when x0 is the extreme
    eb = e_of(b.prim("where", first[2], xs[1], xs[2]))     # x1 when x2 is the extreme
    return [b.prim("where", first[0], ones[0], ea),
            b.prim("where", first[1], ones[1], b.prim("where", first[0], ea, eb)),
            b.prim("where", first[2], ones[2], eb)]


def _smaxn_residuals(sign):
    """``Primitive.residuals`` of smaxn/sminn under entropy, for f64 scalars: the value
    and the weights (the partials dz/dx_k) from ``_entropy_cell``; not gamma's partial
    (None when it is needed)."""
    def residuals(b, operands, attrs, need):
        gamma, xs = operands[0], operands[1:]
        if attrs.get("reg") != "entropy" or need[0] or not all(
                isinstance(v.type, T.Scalar) and v.type.dtype == "f64" for v in operands):
            return None
        z, w = _entropy_cell(b, gamma, xs, sign)
        return z, [None] + w
    return residuals


REGISTRY["smaxn"].residuals = _smaxn_residuals(1)
REGISTRY["sminn"].residuals = _smaxn_residuals(-1)


def _spair_infer(name):
    def infer(types, attrs):
        numeric(types[:2], name)
        _need_gamma(types[2], name, 2)
        _check_reg(attrs, name)
        try:
            shape = T.broadcast_shapes(types[0].shape, types[1].shape)
        except T.BroadcastError as e:
            raise TypeRuleError(f"{name}: {e}", kind="shape", arg=1)
        return T.make(T.float_of(promote_all([t.dtype for t in types])), shape)
    return infer


def _spair(x, y, gamma, reg, sign, name):
    (x, y, g), dt = _floats(x, y, gamma)
    g = _gamma(g, name)
    xb, yb = np.broadcast_arrays(sign * x, sign * y)
    z = np.stack([xb, yb], axis=-1)
    v = smax_rows(z.reshape(-1, 2), g, reg).reshape(xb.shape)
    return out(sign * v, dt)


def _smaximum(x, y, gamma, reg="entropy"):
    return _spair(x, y, gamma, reg, 1, "smaximum")


def _sminimum(x, y, gamma, reg="entropy"):
    return _spair(x, y, gamma, reg, -1, "sminimum")


defprim("smaximum", operands=("x", "y", "gamma"), attrs={"reg": "entropy"},
        infer=_spair_infer("smaximum"), impl=_smaximum, group="soft",
        doc="smoothed elementwise maximum(x, y): smax of each pair (broadcasting)")
defprim("sminimum", operands=("x", "y", "gamma"), attrs={"reg": "entropy"},
        infer=_spair_infer("sminimum"), impl=_sminimum, group="soft",
        doc="smoothed elementwise minimum(x, y): smin of each pair (broadcasting)")


def _spair_rules(name, sign):
    def jvp(x, y, gamma, z, dx, dy, dgamma, reg):
        (wx, wy), d = soft_choice([x, y], gamma, z, reg, sign)
        return wx * dx + wy * dy + d * dgamma

    def vjp(x, y, gamma, z, g, reg):
        (wx, wy), d = soft_choice([x, y], gamma, z, reg, sign)
        return g * wx, g * wy, g * d                # summed back to the operands' shapes
    rules(name, jvp=jvp, vjp=vjp)


_spair_rules("smaximum", 1)
_spair_rules("sminimum", -1)


# ---------------------------------------------------------------- hard -> smoothed
for _hard, _soft in [("maxn", "smaxn"), ("minn", "sminn"), ("maximum", "smaximum"),
                     ("minimum", "sminimum"), ("max", "smax"), ("min", "smin"),
                     ("onehot_argmax", "sargmax"), ("onehot_argmin", "sargmin")]:
    REGISTRY[_hard].smoothed = _soft
