"""Elementwise primitives: arithmetic, comparisons, logic, math functions, casts.

All broadcast as NumPy does.  Dtype promotion happens in the front end (it inserts
``cast`` ops), so the operands of a binary arithmetic primitive share one dtype.
"""
from __future__ import annotations

import numpy as np

from dplang.ir import types as T
from dplang.ir.primitives import TypeRuleError, defprim
from dplang.ir.primitives.rules import (add_all, cast, cos, floor, log, maximum, rules,
                                        sigmoid, sign, sin, where)


def _shape(types):
    try:
        return T.broadcast_shapes(*[t.shape for t in types])
    except T.BroadcastError as e:
        raise TypeRuleError(str(e), kind="shape")


def _check_numeric(types, name):
    for i, t in enumerate(types):
        if not isinstance(t, (T.Scalar, T.Array)):
            raise TypeRuleError(f"{name}: operand {i + 1} is not a number or array", arg=i)


def same_dtype_infer(name):
    def infer(types, attrs):
        _check_numeric(types, name)
        dt = types[0].dtype
        for t in types[1:]:
            dt = T.promote(dt, t.dtype)
        return T.make(dt, _shape(types))
    return infer


def float_infer(name):
    """Result is float (``exp``, ``/``): ints become f64, f32 stays f32."""
    def infer(types, attrs):
        _check_numeric(types, name)
        dt = types[0].dtype
        for t in types[1:]:
            dt = T.promote(dt, t.dtype)
        return T.make(T.float_of(dt), _shape(types))
    return infer


def bool_infer(name):
    def infer(types, attrs):
        _check_numeric(types, name)
        return T.make("bool", _shape(types))
    return infer


# ---------------------------------------------------------------- arithmetic
def _binary(name, impl, infer=None, doc="", cpu=None, **kw):
    defprim(name, operands=("x", "y"), infer=infer or same_dtype_infer(name), impl=impl,
            group="arithmetic", doc=doc, templates={"cpu": cpu} if cpu else {}, **kw)


def _log_pos(x):
    """log(x) where x > 0, else 0 (the d/dy of x ** y, guarded: no NaN at x <= 0)."""
    pos = x > 0
    return where(pos, log(where(pos, x, 1)), 0)


_binary("add", np.add, doc="x + y", cpu="({x} + {y})", linear=True)
rules("add", jvp=lambda dx, dy: dx + dy,
             vjp=lambda g: (g, g))
_binary("sub", np.subtract, doc="x - y", cpu="({x} - {y})", linear=True)
rules("sub", jvp=lambda dx, dy: dx - dy,
             vjp=lambda g: (g, -g))
_binary("mul", np.multiply, doc="x * y", cpu="({x} * {y})")
rules("mul", partials={"x": lambda y: y,
                       "y": lambda x: x})
_binary("div", np.true_divide, infer=float_infer("div"), doc="x / y", cpu="({x} / {y})")
rules("div", jvp=lambda y, z, dx, dy: (dx - z * dy) / y,
             vjp=lambda y, z, g: (g / y, -g * z / y))
_binary("floordiv", np.floor_divide, doc="x // y", cpu="({x} // {y})", zero_derivative=True)
_binary("mod", np.mod, doc="x % y (sign of y, as NumPy)", cpu="({x} % {y})")
rules("mod", partials={"x": lambda: 1,                          # x % y = x - y * floor(x / y)
                       "y": lambda x, y: -floor(x / y)})
_binary("pow", np.power, doc="x ** y", cpu="({x} ** {y})")
rules("pow", partials={"x": lambda x, y: y * x ** (y - 1),
                       "y": lambda x, z: _log_pos(x) * z})
_binary("maximum", np.maximum, doc="elementwise maximum (NaN-propagating); derivative to x "
        "on ties")
rules("maximum", jvp=lambda x, y, dx, dy: where(x >= y, dx, dy),       # ties: the first
                 vjp=lambda x, y, g: (where(x >= y, g, 0), where(x >= y, 0, g)))
_binary("minimum", np.minimum, doc="elementwise minimum (NaN-propagating); derivative to x "
        "on ties")
rules("minimum", jvp=lambda x, y, dx, dy: where(x <= y, dx, dy),
                 vjp=lambda x, y, g: (where(x <= y, g, 0), where(x <= y, 0, g)))

defprim("neg", operands=("x",), infer=same_dtype_infer("neg"), impl=np.negative,
        group="arithmetic", doc="-x", templates={"cpu": "(-{x})"}, linear=True)
rules("neg", jvp=lambda dx: -dx,
             vjp=lambda g: -g)

# ---------------------------------------------------------------- comparisons
for _name, _fn, _sym in [("eq", np.equal, "=="), ("ne", np.not_equal, "!="),
                         ("lt", np.less, "<"), ("le", np.less_equal, "<="),
                         ("gt", np.greater, ">"), ("ge", np.greater_equal, ">=")]:
    defprim(_name, operands=("x", "y"), infer=bool_infer(_name), impl=_fn,
            zero_derivative=True, group="comparison", doc=f"x {_sym} y",
            templates={"cpu": f"({{x}} {_sym} {{y}})"})

defprim("logical_and", operands=("x", "y"), infer=bool_infer("and"), impl=np.logical_and,
        zero_derivative=True, group="logic", doc="x and y (both evaluated)")
defprim("logical_or", operands=("x", "y"), infer=bool_infer("or"), impl=np.logical_or,
        zero_derivative=True, group="logic", doc="x or y (both evaluated)")
defprim("logical_not", operands=("x",), infer=bool_infer("not"), impl=np.logical_not,
        zero_derivative=True, group="logic", doc="not x")


# ---------------------------------------------------------------- math functions
def _sigmoid(x):
    x = np.asarray(x)
    # stable for large |x|
    out = np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))),
                   np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
    return out.astype(np.result_type(x.dtype, np.float32) if x.dtype == np.float32 else np.float64)[()]


def _softplus(x):
    x = np.asarray(x)
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x))))[()]


# name: (NumPy reference, dz/dx as a function of x and the result z)
_UNARY_FLOAT = {
    "exp": (np.exp, lambda z: z),
    "log": (np.log, lambda x: 1 / x),
    "log1p": (np.log1p, lambda x: 1 / (1 + x)),
    "expm1": (np.expm1, lambda z: z + 1),
    "sqrt": (np.sqrt, lambda z: 0.5 / z),
    "sin": (np.sin, lambda x: cos(x)),
    "cos": (np.cos, lambda x: -sin(x)),
    "tan": (np.tan, lambda z: 1 + z * z),
    "tanh": (np.tanh, lambda z: 1 - z * z),
    "sigmoid": (_sigmoid, lambda z: z * (1 - z)),
    "softplus": (_softplus, lambda x: sigmoid(x)),
}


def _float_arg(fn):
    """Compute in the float dtype the type rule promises (NumPy would give float16 for
    bool operands)."""
    def impl(x):
        x = np.asarray(x)
        if x.dtype != np.float32:
            x = x.astype(np.float64, copy=False)
        return fn(x)
    return impl


for _name, (_fn, _dzdx) in _UNARY_FLOAT.items():
    defprim(_name, operands=("x",), infer=float_infer(_name), impl=_float_arg(_fn), group="math",
            doc=f"elementwise {_name}")
    rules(_name, partials={"x": _dzdx})

defprim("abs", operands=("x",), infer=same_dtype_infer("abs"), impl=np.abs, group="math",
        doc="elementwise |x| (subgradient 0 at 0)")
rules("abs", partials={"x": lambda x: sign(x)})
defprim("sign", operands=("x",), infer=same_dtype_infer("sign"), impl=np.sign,
        zero_derivative=True, group="math", doc="elementwise sign")
def _round(x):
    x = np.asarray(x)
    # NumPy rounds bools to float16; rounding keeps the dtype everywhere else
    return x.copy()[()] if x.dtype == np.bool_ else np.round(x)[()]


for _name, _fn in [("floor", np.floor), ("ceil", np.ceil), ("round", _round)]:
    defprim(_name, operands=("x",), infer=same_dtype_infer(_name), impl=_fn,
            zero_derivative=True, group="math",
            doc=f"elementwise {_name} (NumPy: float in, float out; round half to even)")


def _where_infer(types, attrs):
    c, a, b = types
    _check_numeric(types, "where")
    if c.dtype != "bool":
        raise TypeRuleError(f"where: the condition must be bool, got {c}", arg=0)
    return T.make(T.promote(a.dtype, b.dtype), _shape(types))


defprim("where", operands=("cond", "x", "y"), infer=_where_infer,
        impl=lambda c, x, y: np.where(c, x, y)[()], linear=True,
        group="selection", doc="x where cond else y (linear in x, y)")
rules("where", jvp=lambda cond, dx, dy: where(cond, dx, dy),
               vjp=lambda cond, g: (None, where(cond, g, 0), where(cond, 0, g)))


def _clip_infer(types, attrs):
    _check_numeric(types, "clip")
    return T.make(T.promote(T.promote(types[0].dtype, types[1].dtype), types[2].dtype),
                  _shape(types))


defprim("clip", operands=("x", "lo", "hi"), infer=_clip_infer,
        impl=lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi), group="selection",
        doc="minimum(maximum(x, lo), hi); derivative to x inside [lo, hi], else to the bound")


def _clip_sides(x, lo, hi):
    """Where minimum(maximum(x, lo), hi) takes x, lo and hi (ties to x, as maximum/minimum)."""
    inside = maximum(x, lo) <= hi
    take_x = x >= lo
    return take_x & inside, ~take_x & inside, ~inside


rules("clip",
      jvp=lambda x, lo, hi, dx, dlo, dhi: add_all(
          where(s, d, 0) for s, d in zip(_clip_sides(x, lo, hi), (dx, dlo, dhi))),
      vjp=lambda x, lo, hi, g: tuple(where(s, g, 0) for s in _clip_sides(x, lo, hi)))


def _cast_infer(types, attrs):
    _check_numeric(types, "cast")
    return T.with_dtype(types[0], attrs["dtype"])


defprim("cast", operands=("x",), attrs={"dtype": "f64"}, infer=_cast_infer,
        impl=lambda x, dtype: np.asarray(x).astype(T.NP_DTYPES[dtype])[()], linear=True,
        group="conversion", doc="convert to another dtype (inserted by promotion); linear "
        "between float dtypes, no derivative into or out of integers")
rules("cast", jvp=lambda dx, dtype: cast(dx, dtype),       # int results get no tangent
              vjp=lambda g: g)                             # fitted back to x's dtype
