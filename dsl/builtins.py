"""The built-in functions of SPEC 1.6 as the front end sees them: their surface
spellings (``max``, ``np.max``, ``np.amax``, ``a.max()``, ``math.exp``), how their
arguments bind, and which primitive(s) of the registry they lower to.

Most built-ins are one primitive with the same name; the rest are listed in
``SPECIAL``: ``max``/``min`` (a reduction of one array, or ``maxn`` of several
scalars), constructors whose shape is a tuple, ``len``, casts, and the
transformations ``grad``/``value_and_grad``/``jvp``/``vjp``.
"""
from __future__ import annotations

import math

from dplang.dsl import ast as A
from dplang.errors import DPTypeError, DPShapeError, DPNameError
from dplang.ir import types as T
from dplang.ir.core import Value

ELEMENTWISE_1 = ("exp log log1p expm1 sqrt sin cos tan tanh sigmoid softplus abs sign floor "
                 "ceil round").split()
REDUCTIONS = "sum mean prod logsumexp norm argmax argmin".split()
BUILTINS = set(ELEMENTWISE_1) | set(REDUCTIONS) | set(
    ("maximum minimum where clip max min dot matmul outer transpose solve eye trace diag "
     "zeros ones full empty arange linspace array copy zeros_like ones_like full_like "
     "softmax sparsemax smax smin onehot_argmax onehot_argmin len float int bool").split())

# NumPy / math / scipy spellings -> built-in names
ALIASES = {"amax": "max", "amin": "min", "absolute": "abs", "fabs": "abs", "around": "round",
           "asarray": "array", "logaddexp_reduce": "logsumexp", "sum": "sum"}
NP_CONSTS = {"inf": math.inf, "nan": math.nan, "pi": math.pi, "e": math.e, "Inf": math.inf,
             "NaN": math.nan}
NP_DTYPES = {"float64": "f64", "float32": "f32", "int64": "i64", "bool_": "bool",
             "f64": "f64", "f32": "f32", "i64": "i64", "bool": "bool", "double": "f64",
             "single": "f32"}
METHODS = {"copy": "copy", "sum": "sum", "mean": "mean", "max": "max", "min": "min",
           "prod": "prod", "argmax": "argmax", "argmin": "argmin", "dot": "dot",
           "transpose": "transpose", "astype": "astype"}


def resolve_module_name(path: list):
    """``['np', 'linalg', 'solve']`` -> ('func', 'solve'); constants, dtypes, modules."""
    root, rest = path[0], path[1:]
    if not rest:
        return ("module", root)
    if root in ("np", "numpy", "jnp"):
        if rest == ["linalg"] or rest == ["random"]:
            return ("module", None) if rest == ["linalg"] else None
        if rest[0] == "linalg" and len(rest) == 2:
            return ("func", {"solve": "solve", "norm": "norm"}[rest[1]]) \
                if rest[1] in ("solve", "norm") else None
        if len(rest) != 1:
            return None
        nm = rest[0]
    elif root == "math":
        if len(rest) != 1:
            return None
        nm = rest[0]
        if nm not in ("exp log log1p expm1 sqrt sin cos tan tanh floor ceil fabs inf nan pi e "
                      "isinf".split()):
            return None
    elif root in ("dp", "dplang"):
        if len(rest) != 1:
            return None
        nm = rest[0]
        if nm in ("grad", "value_and_grad", "jvp", "vjp"):
            return ("func", nm)
    elif root == "scipy":
        if rest == ["special"]:
            return ("module", None)
        if rest[:1] == ["special"] and len(rest) == 2 and rest[1] in ("logsumexp", "softmax",
                                                                    "expit"):
            return ("func", {"expit": "sigmoid"}.get(rest[1], rest[1]))
        return None
    else:
        return None
    if nm in NP_CONSTS:
        return ("const", NP_CONSTS[nm])
    if nm in NP_DTYPES:
        return ("dtype", NP_DTYPES[nm])
    nm = ALIASES.get(nm, nm)
    if nm in BUILTINS:
        return ("func", nm)
    return None


# ----------------------------------------------------------------- binding helpers
class Args:
    """Positional and keyword arguments of a built-in call, evaluated lazily."""

    def __init__(self, lw, e: A.Call, env, pre=None):
        self.lw, self.e, self.env = lw, e, env
        self.nodes = list(e.args)
        self.pre = list(pre or [])          # already-evaluated leading arguments (methods)
        self.kw = {k.name: k for k in e.keywords}
        seen = set()
        for k in e.keywords:
            if k.name in seen:
                raise DPTypeError(f"keyword argument '{k.name}' repeated", k.loc)
            seen.add(k.name)

    def count(self):
        return len(self.pre) + len(self.nodes)

    def node(self, i):
        i -= len(self.pre)
        return self.nodes[i] if 0 <= i < len(self.nodes) else self.e

    def get(self, i, name=None, default=None, required=True):
        """The i-th positional argument, or keyword ``name``: an evaluated expression."""
        if i < len(self.pre):
            return self.pre[i]
        j = i - len(self.pre)
        if j < len(self.nodes):
            if name is not None and name in self.kw:
                raise DPTypeError(f"argument '{name}' given twice", self.kw[name].loc)
            return self.lw.expr(self.nodes[j], self.env)
        if name is not None and name in self.kw:
            return self.lw.expr(self.kw[name].value, self.env)
        if required and default is None:
            raise DPTypeError(f"{self.fname()}() is missing its argument "
                              f"'{name or i + 1}'", self.e)
        return default

    def value(self, i, name=None, required=True):
        v = self.get(i, name, required=required)
        if v is None:
            return None
        return self.lw.as_value(v, self.anode(i, name))

    def anode(self, i, name=None):
        if name is not None and name in self.kw and i - len(self.pre) >= len(self.nodes):
            return self.kw[name].value
        return self.node(i)

    def static(self, i, name, default=None):
        j = i - len(self.pre)
        if 0 <= j < len(self.nodes):
            return self.lw.static(self.nodes[j], self.env)
        if name in self.kw:
            return self.lw.static(self.kw[name].value, self.env)
        return default

    def fname(self):
        f = self.e.func
        return f.attr if isinstance(f, A.Attribute) else getattr(f, "id", "function")

    def check(self, max_pos, kws=()):
        if self.count() > max_pos:
            raise DPTypeError(f"{self.fname()}() takes at most {max_pos} positional "
                              f"argument(s), got {self.count()}", self.node(max_pos))
        for k, node in self.kw.items():
            if k not in kws:
                raise DPTypeError(f"{self.fname()}() got an unexpected keyword argument "
                                  f"'{k}'", node.loc)


def _axis(args, i):
    ax = args.static(i, "axis", None)
    if ax is not None and not (isinstance(ax, int) or (isinstance(ax, tuple) and
                                                        all(isinstance(a, int) for a in ax))):
        raise DPTypeError("axis= must be an integer or a tuple of integers", args.anode(i, "axis"))
    return ax


def _dtype(lw, args, i, default):
    d = args.get(i, "dtype", required=False)
    if d is None:
        return default
    from dplang.dsl.lower import DtypeVal, StrVal
    if isinstance(d, DtypeVal):
        return d.dtype
    if isinstance(d, StrVal) and d.value in NP_DTYPES:
        return NP_DTYPES[d.value]
    raise DPTypeError("dtype= must be f64, f32, i64 or bool", args.anode(i, "dtype"))


def _shape_values(lw, shp, node):
    """A shape argument (an int or a tuple of ints) as i64 Values plus its symbolic dims."""
    vals = shp if isinstance(shp, list) else [shp]
    out, dims = [], []
    for v in vals:
        v = lw.as_value(v, node)
        if not isinstance(v.type, T.Scalar) or v.type.dtype not in ("i64", "bool"):
            raise DPTypeError(f"a shape must be integers, got {v.type}", node)
        v = lw.cast(v, "i64")
        out.append(v)
        dims.append(lw.sym_of(v))
    return out, tuple(dims)


def _arrayish(lw, x, node):
    """A list literal or tuple becomes an array; anything else must be a Value."""
    if isinstance(x, list):
        return lw.make_array([lw.as_value(v, node) for v in x], node)
    return lw.as_value(x, node)


def lower_builtin_call(lw, name: str, e: A.Call, env, pre=None):
    args = Args(lw, e, env, pre)
    p = lw.prim

    if name in ELEMENTWISE_1:
        args.check(1)
        x = _arrayish(lw, args.get(0, "x"), args.node(0))
        if name in ("abs", "sign") and x.type.dtype == "bool":
            x = lw.cast(x, "i64")
        if name in ("floor", "ceil", "round") and x.type.dtype in ("bool",):
            x = lw.cast(x, "i64")
        return p(name, x, node=e)
    if name in ("maximum", "minimum"):
        args.check(2)
        x, y = args.value(0, "x"), args.value(1, "y")
        x, y = lw.promote_pair(x, y, e)
        return p(name, x, y, node=e)
    if name == "where":
        args.check(3)
        c = args.value(0, "condition")
        if c.type.dtype != "bool":
            c = lw.to_bool(c, args.node(0)) if isinstance(c.type, T.Scalar) else \
                p("ne", c, lw.const(0, c.type.dtype), node=e)
        x, y = args.value(1, "x"), args.value(2, "y")
        x, y = lw.promote_pair(x, y, e)
        return p("where", c, x, y, node=e)
    if name == "clip":
        args.check(3, ("a_min", "a_max", "min", "max"))
        x = args.value(0, "a")
        lo = args.value(1, "a_min")
        hi = args.value(2, "a_max")
        dt = x.type.dtype
        for v in (lo, hi):
            dt = T.promote(dt, v.type.dtype) if v not in lw.weak else T.promote_weak(dt, v.type.dtype)
        return p("clip", lw.cast(x, dt), lw.cast(lo, dt), lw.cast(hi, dt), node=e)
    if name in REDUCTIONS:
        kws = ("axis",) if name != "norm" else ("axis", "ord")
        args.check(2, kws)
        x = _arrayish(lw, args.get(0, "a"), args.node(0))
        if name == "norm" and args.static(99, "ord", None) not in (None, 2, "fro"):
            raise DPTypeError("norm() computes the 2-norm only (ord=2 or None)", e)
        ax = _axis(args, 1)
        if x.type.dtype == "bool" and name in ("sum", "prod"):
            x = lw.cast(x, "i64")
        return p(name, x, axis=ax, node=e)
    if name in ("max", "min"):
        return _lower_max(lw, name, args, e)
    if name in ("dot", "matmul", "outer", "solve"):
        args.check(2)
        x, y = args.value(0, "a"), args.value(1, "b")
        x, y = lw.promote_pair(x, y, e)
        return p(name, x, y, node=e)
    if name in ("transpose", "trace", "diag"):
        args.check(1)
        return p(name, args.value(0, "a"), node=e)
    if name == "eye":
        args.check(1, ("dtype",))
        n = args.value(0, "N")
        if n.type.dtype not in ("i64", "bool") or n.type.ndim:
            raise DPTypeError(f"eye(n) needs an integer size, got {n.type}", args.node(0))
        n = lw.cast(n, "i64")
        d = lw.sym_of(n)
        return p("eye", n, node=e, dtype=_dtype(lw, args, 99, "f64"), _shape=(d, d))
    if name in ("zeros", "ones", "empty"):
        args.check(2, ("dtype", "shape"))
        shp = args.get(0, "shape")
        vals, dims = _shape_values(lw, shp, args.anode(0, "shape"))
        dt = _dtype(lw, args, 1, "f64")
        return p(name, *vals, node=e, dtype=dt, _shape=dims)
    if name == "full":
        args.check(3, ("shape", "fill_value", "dtype"))
        shp = args.get(0, "shape")
        vals, dims = _shape_values(lw, shp, args.anode(0, "shape"))
        fill = args.value(1, "fill_value")
        if not isinstance(fill.type, T.Scalar):
            raise DPTypeError("full() needs a scalar fill value", args.anode(1, "fill_value"))
        dt = _dtype(lw, args, 2, None)
        if dt is not None:
            fill = lw.cast(fill, dt)
        return p("full", fill, *vals, node=e, _shape=dims)
    if name in ("zeros_like", "ones_like", "copy"):
        args.check(1)
        x = args.value(0, "a")
        return p(name, x, node=e)
    if name == "full_like":
        args.check(2)
        x = args.value(0, "a")
        fill = lw.cast(args.value(1, "fill_value"), x.type.dtype)
        return p("full_like", x, fill, node=e)
    if name == "arange":
        args.check(3, ("dtype",))
        vs = [args.value(i) for i in range(args.count())]
        if not vs:
            raise DPTypeError("arange() needs at least one argument", e)
        if len(vs) == 1:
            vs = [lw.const(0, weak=True), vs[0], lw.const(1, weak=True)]
        elif len(vs) == 2:
            vs.append(lw.const(1, weak=True))
        dt = "i64"
        for v in vs:
            if not isinstance(v.type, T.Scalar):
                raise DPTypeError("arange() takes scalars", e)
            dt = T.promote(dt, v.type.dtype)
        dt = _dtype(lw, args, 99, "i64" if dt in ("i64", "bool") else "f64")
        vs = [lw.cast(v, dt) for v in vs]
        size = None
        if dt == "i64" and lw.sym_of(vs[2]) == 1 and lw.sym_of(vs[0]) is not None and \
                lw.sym_of(vs[1]) is not None:
            size = T.dim_add(lw.sym_of(vs[1]), lw.sym_of(vs[0]), -1)
        return p("arange", *vs, node=e, _shape=(size,))
    if name == "linspace":
        args.check(3, ("num",))
        a = lw.cast(args.value(0, "start"), "f64")
        b = lw.cast(args.value(1, "stop"), "f64")
        num = args.get(2, "num", required=False)
        num = lw.const(50) if num is None else lw.as_value(num, args.anode(2, "num"))
        if num.type.dtype not in ("i64", "bool") or num.type.ndim:
            raise DPTypeError("linspace(): num must be an integer", args.anode(2, "num"))
        num = lw.cast(num, "i64")
        return p("linspace", a, b, num, node=e, _shape=(lw.sym_of(num),))
    if name == "array":
        args.check(1, ("dtype",))
        x = args.get(0, "object")
        x = _arrayish(lw, x, args.node(0))
        dt = _dtype(lw, args, 1, None)
        if not lw.is_array(x):
            raise DPTypeError("array() needs a list [a, b, ...] or an array", args.node(0))
        if x.owner is not None and getattr(x.owner, "name", "") != "array":
            x = p("copy", x, node=e)
        return lw.cast(x, dt) if dt else x
    if name in ("softmax", "sparsemax", "onehot_argmax", "onehot_argmin"):
        args.check(1, ("axis",) if name == "softmax" else ())
        axis = args.static(1, "axis", -1)
        x = _arrayish(lw, args.get(0, "x"), args.node(0))
        if axis not in (-1, None) and axis != x.type.ndim - 1:     # axis=1 of a matrix is fine
            raise DPTypeError(f"{name}() works along the last axis only", e)
        if x.type.dtype in ("i64", "bool"):
            x = lw.cast(x, "f64")
        return p(name, x, node=e)
    if name in ("smax", "smin"):
        args.check(3, ("gamma", "reg"))
        x = _arrayish(lw, args.get(0, "v"), args.node(0))
        g = args.value(1, "gamma")
        reg = _reg_arg(lw, args, 2)
        if x.type.dtype in ("i64", "bool"):
            x = lw.cast(x, "f64")
        g = lw.cast(g, x.type.dtype)
        return p(name, x, g, node=e, reg=reg)
    if name == "len":
        args.check(1)
        x = args.value(0, "obj")
        if not lw.is_array(x):
            raise DPTypeError(f"len() of a scalar ({x.type})", args.node(0))
        out = p("dim", x, axis=0, node=e)
        lw.set_sym(out, x.type.shape[0])
        return out
    if name in ("float", "int", "bool"):
        args.check(1)
        x = args.value(0, "x")
        if lw.is_array(x):
            raise DPTypeError(f"{name}() of an array: use a scalar", args.node(0))
        return lw.cast(x, {"float": "f64", "int": "i64", "bool": "bool"}[name])
    raise DPNameError(f"built-in '{name}' cannot be called this way", e)


def _reg_arg(lw, args, i):
    node = args.anode(i, "reg")
    j = i - len(args.pre)
    if 0 <= j < len(args.nodes) or "reg" in args.kw:
        r = args.nodes[j] if 0 <= j < len(args.nodes) else args.kw["reg"].value
        if isinstance(r, A.Name) and r.id in ("entropy", "l2") and r.id not in args.env.names:
            return r.id
        if isinstance(r, A.Str):
            if r.value not in ("entropy", "l2"):
                raise DPTypeError(f"unknown regulariser {r.value!r}: use \"entropy\" or \"l2\"",
                                  r.loc)
            return r.value
        raise DPTypeError("reg must be \"entropy\" or \"l2\"", node)
    return "entropy"


def _lower_max(lw, name, args, e):
    args.check(99, ("axis",))
    n = args.count()
    if n == 0:
        raise DPTypeError(f"{name}() needs arguments", e)
    if n == 1:
        x = args.get(0)
        if isinstance(x, list):
            vals = [lw.as_value(v, args.node(0)) for v in x]
            return _maxn(lw, name, vals, e)
        x = lw.as_value(x, args.node(0))
        if lw.is_array(x):
            ax = _axis(args, 1)
            return lw.prim(name, x, axis=ax, node=e)
        return x
    if "axis" in args.kw:
        pass
    vals = [args.value(i) for i in range(n)]
    if n == 2 and lw.is_array(vals[0]) and isinstance(vals[1], Value) and \
            isinstance(vals[1].type, T.Scalar) and vals[1].type.dtype == "i64" and \
            args.nodes and isinstance(args.nodes[-1], A.Num):
        # np.max(a, 1): the second argument is the axis
        ax = args.static(1, "axis")
        return lw.prim(name, vals[0], axis=ax, node=e)
    return _maxn(lw, name, vals, e)


def _maxn(lw, name, vals, e):
    for k, v in enumerate(vals):
        if lw.is_array(v):
            other = "maximum" if name == "max" else "minimum"
            raise DPTypeError(f"{name}() of several values takes scalars; for arrays use "
                              f"{other}(a, b) (elementwise) or {name}(a) (a reduction)",
                              e.args[k] if k < len(e.args) else e)
    dt = vals[0].type.dtype
    for v in vals[1:]:
        dt = T.promote(dt, v.type.dtype)
    if dt == "bool":
        dt = "i64"
    vals = [lw.cast(v, dt) for v in vals]
    if len(vals) == 1:
        return vals[0]
    return lw.prim(name + "n", *vals, node=e)


def lower_method_call(lw, name, base, e, env):
    if name == "astype":
        if len(e.args) != 1:
            raise DPTypeError("astype() takes one dtype", e)
        from dplang.dsl.lower import DtypeVal
        d = lw.expr(e.args[0], env)
        if not isinstance(d, DtypeVal):
            raise DPTypeError("astype() needs a dtype (f64, f32, i64, bool)", e.args[0])
        return lw.cast(base, d.dtype)
    if name == "transpose" and not e.args:
        return lw.prim("transpose", base, node=e)
    return lower_builtin_call(lw, METHODS[name], e, env, pre=[base])


# ------------------------------------------------------------ transformations
TRANSFORMS = ("grad", "value_and_grad", "jvp", "vjp")


def lower_transform(lw, name, e: A.Call, env):
    """``grad(f, wrt=...)`` -> a FuncRef carrying the transformation (called later)."""
    from dplang.dsl.lower import FuncRef
    if not e.args:
        raise DPTypeError(f"{name}() needs a function", e)
    if len(e.args) > 1:
        raise DPTypeError(f"{name}() takes one function; give wrt= as a keyword", e.args[1])
    f = lw.expr(e.args[0], env)
    if not isinstance(f, FuncRef) or f.key.startswith("builtin:"):
        raise DPTypeError(f"{name}() needs a function defined in the program", e.args[0])
    wrt, wrt_node = 0, e
    for kw in e.keywords:
        if kw.name != "wrt":
            raise DPTypeError(f"{name}() has no option '{kw.name}' (only wrt=)", kw.loc)
        wrt, wrt_node = lw.static(kw.value, env), kw.value
    base = lw.ctx.signature(FuncRef(f.key, f.name, f.transforms), None, e)
    if base.param_types is None:
        # a jitted function without annotations: types are known when it is called, and
        # transformed_signature checks them then
        idx = resolve_wrt(wrt, base.param_names, [None] * len(base.param_names), wrt_node, name)
        return FuncRef(f.key, f"{name}({f.name})", f.transforms + ((name, idx),))
    idx = resolve_wrt(wrt, base.param_names, base.param_types, wrt_node, name)
    out = FuncRef(f.key, f"{name}({f.name})", f.transforms + ((name, idx),))
    transformed_signature(base, FuncRef(f.key, f.name, ((name, idx),)), e.args[0])  # located check
    return out


def resolve_wrt(wrt, pnames, ptypes, node, what="grad"):
    """``wrt`` (an index, a name, or a tuple of them) -> a tuple of parameter indices, plus
    whether the caller asked for a tuple.  Integer parameters are a located error."""
    loc = node.loc if hasattr(node, "loc") else node
    as_tuple = isinstance(wrt, tuple)
    items = wrt if as_tuple else (wrt,)
    out = []
    for w in items:
        if isinstance(w, bool) or not isinstance(w, (int, str)):
            raise DPTypeError("wrt= must be a parameter index, a parameter name, or a tuple of "
                              "them", loc)
        if isinstance(w, str):
            if w not in pnames:
                raise DPTypeError(f"wrt={w!r}: the function has no parameter named {w!r} "
                                  f"(parameters: {', '.join(pnames)})", loc)
            k = pnames.index(w)
        else:
            k = w if w >= 0 else len(pnames) + w
            if not 0 <= k < len(pnames):
                raise DPTypeError(f"wrt={w}: the function has {len(pnames)} parameter(s)", loc)
        if ptypes[k] is not None and ptypes[k].dtype not in ("f64", "f32"):
            raise DPTypeError(f"cannot differentiate with respect to '{pnames[k]}': it is "
                              f"{ptypes[k]}, not a float", loc)
        out.append(k)
    return (tuple(out), as_tuple)


def transformed_signature(base, fref, node):
    """The signature of ``grad(f)``, ``jvp(f)``, ... built from f's."""
    from dplang.dsl.program import SigInfo
    sig = base
    for kind, (idx, as_tuple) in fref.transforms:
        pt = sig.param_types
        rt = sig.result_types
        for k in idx:
            if pt[k].dtype not in ("f64", "f32"):
                raise DPTypeError(f"cannot differentiate with respect to "
                                  f"'{sig.param_names[k]}': it is {pt[k]}, not a float", node.loc)
        if kind in ("grad", "value_and_grad"):
            if len(rt) != 1 or not isinstance(rt[0], T.Scalar) or rt[0].dtype not in ("f64", "f32"):
                shown = ", ".join(str(t) for t in rt)
                raise DPTypeError(f"{kind}() needs a function with one float scalar result; "
                                  f"'{sig.key}' returns {shown}", node.loc)
            grads = [pt[k] for k in idx]
            res = ([rt[0]] if kind == "value_and_grad" else []) + grads
            sig = SigInfo(sig.key, sig.param_names, pt, res,
                          len(res) > 1 or as_tuple or kind == "value_and_grad")
        elif kind == "jvp":
            tnames = [f"d_{sig.param_names[k]}" for k in idx]
            frt = [t for t in rt if t.dtype in ("f64", "f32")]
            sig = SigInfo(sig.key, sig.param_names + tnames, pt + [pt[k] for k in idx],
                          rt + frt, True)
        elif kind == "vjp":
            frt = [t for t in rt if t.dtype in ("f64", "f32")]
            cn = [f"d_out{j}" if len(frt) > 1 else "d_out" for j in range(len(frt))]
            sig = SigInfo(sig.key, sig.param_names + cn, pt + frt,
                          rt + [pt[k] for k in idx], True)
    return sig
