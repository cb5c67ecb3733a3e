"""Modules and programs: imports, module constants, the call graph, decorators, and
on-demand lowering of every function a module reaches.

``load_program(source, filename)`` parses a module, resolves ``from X import f``
(``X.dp`` beside the importing file, or ``std.X`` from the standard library), rejects
recursion (a cycle in the call graph, found with graphlib), validates decorators and
lowers every function into one ``Program``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import graphlib

from dplang.dsl import ast as A
from dplang.dsl.lower import (CONSTANTS, MODULE_ALIASES, FuncRef, FunctionLowerer,
                              annotation_type)
from dplang.errors import DPError, DPNameError, DPTypeError, Loc
from dplang.ir import types as T
from dplang.ir.core import Program

STDLIB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "stdlib")


def _stdlib_dir() -> str:
    import dplang.stdlib as s
    return os.path.dirname(os.path.abspath(s.__file__))


@dataclass
class SigInfo:
    key: str
    param_names: list
    param_types: list
    result_types: list
    returns_tuple: bool
    alias_params: set = field(default_factory=set)
    param_types_needed: bool = False


class ModuleCtx:
    """The scope of one module while its functions are lowered."""

    def __init__(self, loader: "Loader", mod: A.Module, prefix: str, require_annotations=True):
        self.loader = loader
        self.mod = mod
        self.filename = mod.filename
        self.prefix = prefix                 # '' for the main module, 'std.align.' otherwise
        self.require_annotations = require_annotations
        self.funcs: dict[str, A.FuncDef] = {}
        self.imports: dict[str, tuple] = {}  # local name -> (ModuleCtx, name there)
        self.consts: dict = {}
        self.extra_funcs: dict = {}          # name -> (ctx, fdef) for jit-registered callees

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- names --------------------------------------------------------------
    def const_value(self, name: str):
        return self.consts.get(name)

    def func_key(self, name: str) -> Optional[str]:
        if name in self.funcs:
            return self.key(name)
        if name in self.imports:
            ctx, nm = self.imports[name]
            return ctx.func_key(nm)
        if name in self.extra_funcs:
            ctx, fdef = self.extra_funcs[name]
            return ctx.key(fdef.name)
        return None

    def resolve(self, key: str):
        return self.loader.defs[key]

    # -- callee signatures --------------------------------------------------
    def signature(self, fref: FuncRef, arg_types, node, final=False) -> SigInfo:
        if fref.transforms:
            from dplang.dsl.builtins import transformed_signature
            base_types = None
            if arg_types is not None and self.loader.jit_mode:
                # a jitted callee without annotations: every transformation keeps the
                # primals first, so the base is specialised on the leading arguments
                nparams = len(self.loader.defs[fref.key][1].params)
                base_types = list(arg_types[:nparams])
            base = self.signature(FuncRef(fref.key, fref.name), base_types, node)
            if base.param_types is None:
                return _deferred_transformed(base, fref)
            return transformed_signature(base, fref, node)
        return self.loader.signature(fref.key, arg_types, node)


class Loader:
    """Loads modules (with caching), builds the call graph and lowers functions."""

    def __init__(self, jit_mode=False):
        self.modules: dict[str, ModuleCtx] = {}     # abspath or std name -> ctx
        self.defs: dict[str, tuple] = {}            # key -> (ctx, FuncDef)
        self.program = Program()
        self.lowered: dict[str, object] = {}        # key -> FunctionLowerer (finished)
        self.in_progress: list = []
        self.jit_mode = jit_mode
        self.specs: dict = {}                       # (key, types) -> specialised key
        self.spec_base: dict = {}                   # specialised key -> key

    # -- modules --------------------------------------------------------------
    def load_source(self, source: str, filename: str, prefix: str = "",
                    require_annotations: bool = True) -> ModuleCtx:
        from dplang.dsl.parser import parse_module
        mod = parse_module(source, filename)
        ctx = ModuleCtx(self, mod, prefix, require_annotations)
        self.modules[os.path.abspath(filename) if prefix == "" else prefix] = ctx
        self._register(ctx)
        return ctx

    def _register(self, ctx: ModuleCtx) -> None:
        mod = ctx.mod
        ctx.registering = True              # an import of this module now is a cycle
        # imports first
        for imp in mod.imports:
            other = self.import_module(imp, ctx)
            for name, asname, loc in imp.names:
                if name not in other.funcs and name not in other.consts:
                    raise DPNameError(f"module '{imp.module}' has no function '{name}'", loc)
                local = asname or name
                if name in other.funcs:
                    ctx.imports[local] = (other, name)
                else:
                    ctx.consts[local] = other.consts[name]
        seen = {}
        for f in mod.funcs:
            if f.name in seen:
                raise DPTypeError(f"function '{f.name}' is defined twice (first at line "
                                  f"{seen[f.name].loc.line})", f.loc)
            if f.name in ctx.imports:
                raise DPTypeError(f"function '{f.name}' shadows an imported name", f.loc)
            seen[f.name] = f
            ctx.funcs[f.name] = f
            self.defs[ctx.key(f.name)] = (ctx, f)
        for c in mod.consts:
            if c.name in ctx.funcs:
                raise DPTypeError(f"'{c.name}' is both a constant and a function", c.loc)
            ctx.consts[c.name] = self.eval_const(c.value, ctx)
        ctx.registering = False
        self.check_call_graph()

    def import_module(self, imp: A.ImportFrom, ctx: ModuleCtx) -> ModuleCtx:
        parts = imp.module.split(".")
        if parts[0] == "std":
            path = os.path.join(_stdlib_dir(), *parts) + ".dp"
            prefix = imp.module + "."
            key = imp.module
        else:
            base = os.path.dirname(os.path.abspath(ctx.filename)) if ctx.filename and \
                not ctx.filename.startswith("<") else os.getcwd()
            path = os.path.join(base, *parts) + ".dp"
            prefix = imp.module + "."
            key = os.path.abspath(path)
        if key in self.modules:
            if getattr(self.modules[key], "registering", False):
                raise DPTypeError(f"circular import of module '{imp.module}': imports must not "
                                  f"form a cycle (and functions may not recurse)", imp.loc)
            return self.modules[key]
        if not os.path.isfile(path):
            raise DPNameError(f"cannot find module '{imp.module}' (looked for {path})", imp.loc)
        with open(path) as fh:
            src = fh.read()
        from dplang.dsl.parser import parse_module
        mod = parse_module(src, path)
        other = ModuleCtx(self, mod, prefix, True)
        self.modules[key] = other
        self._register(other)
        return other

    def eval_const(self, e: A.Expr, ctx: ModuleCtx):
        def ev(x):
            if isinstance(x, A.Num):
                return x.value
            if isinstance(x, A.Bool):
                return x.value
            if isinstance(x, A.Str):
                return x.value
            if isinstance(x, A.Name):
                if x.id in ctx.consts:
                    return ctx.consts[x.id]
                if x.id in CONSTANTS:
                    return CONSTANTS[x.id]
                if x.id in ("True", "False"):
                    return x.id == "True"
                raise DPNameError(f"unknown name '{x.id}' in a module constant", x.loc)
            if isinstance(x, A.Attribute) and isinstance(x.value, A.Name) and \
                    x.value.id in MODULE_ALIASES and x.attr in CONSTANTS:
                return CONSTANTS[x.attr]
            if isinstance(x, A.UnaryOp) and x.op in "-+":
                v = ev(x.operand)
                return -v if x.op == "-" else v
            if isinstance(x, A.BinOp) and x.op in ("+", "-", "*", "/", "//", "%", "**"):
                a, b = ev(x.left), ev(x.right)
                try:
                    return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                            "/": lambda: a / b, "//": lambda: a // b, "%": lambda: a % b,
                            "**": lambda: a ** b}[x.op]()
                except (ZeroDivisionError, OverflowError) as exc:
                    raise DPTypeError(f"cannot evaluate this constant: {exc}", x.loc)
            raise DPTypeError("a module constant must be a number computed from literals and "
                              "other constants", x.loc)
        v = ev(e)
        if isinstance(v, str):
            raise DPTypeError("a module constant must be a number", e.loc)
        return v

    # -- call graph (recursion is not allowed) -------------------------------
    def check_call_graph(self) -> None:
        # (the standard library's graphlib: importing networkx costs 0.09 s, a third of a
        # warm start, for a graph of a few nodes; docs/design.md, "Dependencies")
        calls: dict[str, list[str]] = {}
        sites = {}
        for key, (ctx, f) in self.defs.items():
            out = calls.setdefault(key, [])
            for call in _calls(f.body):
                name = call.func.id
                k = ctx.func_key(name)
                if k is not None:
                    out.append(k)
                    sites.setdefault((key, k), call)
            for d in f.decorators:
                # functions named by @argmin(obj)/@root(F)/@fixed_point(T) are called too
                if isinstance(d.expr, A.Call) and d.expr.args and isinstance(d.expr.args[0], A.Name):
                    k = ctx.func_key(d.expr.args[0].id)
                    if k is not None:
                        out.append(k)
                        sites.setdefault((key, k), d.expr.args[0])
        try:
            graphlib.TopologicalSorter(calls).prepare()
            return
        except graphlib.CycleError as e:
            # graphlib lists a cycle against the edges (callee before caller), its first
            # and last node the same: report it in call order from its earliest definition
            cycle = list(reversed(e.args[1]))[:-1]
        order = {k: n for n, k in enumerate(self.defs)}
        k0 = min(range(len(cycle)), key=lambda k: order.get(cycle[k], len(order)))
        cycle = cycle[k0:] + cycle[:k0]
        names = " -> ".join(c.rsplit(".", 1)[-1] for c in cycle + cycle[:1])
        raise DPTypeError(f"recursion is not allowed ({names})",
                          sites[(cycle[0], cycle[1 % len(cycle)])].loc)

    # -- lowering -------------------------------------------------------------
    def signature(self, key: str, arg_types, node) -> SigInfo:
        ctx, f = self.defs[key]
        annotated = all(p.annotation is not None for p in f.params) or not self.jit_mode
        if annotated:
            lw = self.lower_key(key, None, node)
        else:
            pnames = [p.name for p in f.params]
            if arg_types is None or len(arg_types) != len(f.params):
                # jit: the types come from the call (a transformation of an unannotated
                # function is resolved when it is called; keyword arguments are bound first)
                return SigInfo(key, pnames, None if arg_types is None else [None] * len(pnames),
                               None, False, set(), param_types_needed=True)
            lw = self.lower_specialised(key, arg_types, node)
        fn = lw.func
        return SigInfo(fn.name, fn.param_names, [v.type for v in fn.params],
                       fn.result_types, fn.returns_tuple, lw.result_alias_params())

    def lower_key(self, key: str, param_types, node=None) -> FunctionLowerer:
        if key in self.lowered:
            return self.lowered[key]
        if key in self.in_progress:
            raise DPTypeError("recursion is not allowed", node.loc if node else None)
        ctx, f = self.defs[key]
        self.in_progress.append(key)
        try:
            lw = self._lower(ctx, f, key, param_types)
        finally:
            self.in_progress.pop()
        self.lowered[key] = lw
        self.program.funcs[key] = lw.func
        return lw

    def lower_specialised(self, key, arg_types, node) -> FunctionLowerer:
        ctx, f = self.defs[key]
        sig = _spec_types(f, arg_types)
        k = (key, sig)
        recursion = f"recursion is not allowed ('{f.name}' calls itself, directly or " \
                    f"through other functions)"
        if k in self.specs:
            if self.specs[k] not in self.lowered:
                raise DPTypeError(recursion, node.loc if node else None)
            return self.lowered[self.specs[k]]
        if any(self.spec_base.get(kk, kk) == key for kk in self.in_progress):
            raise DPTypeError(recursion, node.loc if node else None)
        n = sum(1 for kk in self.specs if kk[0] == key)
        skey = key if n == 0 else f"{key}__{n}"
        self.specs[k] = skey
        self.spec_base[skey] = key
        self.in_progress.append(skey)
        try:
            lw = self._lower(ctx, f, skey, list(sig))
        finally:
            self.in_progress.pop()
        self.lowered[skey] = lw
        self.program.funcs[skey] = lw.func
        return lw

    def _lower(self, ctx, f, key, param_types):
        lw = FunctionLowerer(ctx, f, key, param_types)
        lw.lower()
        if lw.ret_join_changed:
            # a later return widened the result type: lower again with the joined types
            types = list(lw.ret_types)
            lw = FunctionLowerer(ctx, f, key, param_types)
            lw.ret_types, lw.ret_fixed = types, True
            lw.returns_tuple = len(types) > 1
            lw.lower()
        lw.func.attrs = validate_decorators(f, lw.func, ctx, self)
        if "smooth" in lw.func.attrs:
            self.check_smoothable(lw.func, set())
        return lw

    def check_smoothable(self, func, seen: set) -> None:
        """Integer argmax/argmin cannot be smoothed (SPEC 2.2): a located error, in the
        smoothed function or any function it calls."""
        for op in func.walk():
            if op.name in ("argmax", "argmin"):
                raise DPTypeError(f"{op.name} returns an integer index, which cannot be "
                                  f"smoothed under @smooth; use onehot_{op.name}(v), whose "
                                  f"smoothed form is differentiable", op.loc)
            if op.name == "call" and op.attrs["callee"] not in seen:
                seen.add(op.attrs["callee"])
                callee = self.program.funcs.get(op.attrs["callee"])
                if callee is not None:
                    self.check_smoothable(callee, seen)


def _generalise(t, names=None):
    """Specialisation key of an argument type: dtype and rank (sizes vary per call).
    ``names`` gives the dimension names (one per axis); ``d0, d1, ...`` otherwise."""
    if isinstance(t, T.Array):
        return T.Array(t.dtype, tuple(T.Sym.name(names[k] if names else f"d{k}")
                                      for k in range(t.ndim)))
    return t


def _spec_types(f: A.FuncDef, arg_types) -> tuple:
    """The parameter types of a specialisation of an unannotated (jit) function: an
    annotated parameter keeps its annotation; the others take the argument's dtype and
    rank, with fresh dimension names ``x_dim0, x_dim1, ...`` for parameter ``x`` (renamed when a
    name of the function already uses them), so sizes are free and independent."""
    used = {p.name for p in f.params} | _names_in(f.body) | \
        _names_in([p.annotation for p in f.params if p.annotation is not None])
    out = []
    for p, t in zip(f.params, arg_types):
        if p.annotation is not None:
            out.append(annotation_type(p.annotation, f"parameter '{p.name}'", allow_tuple=False))
            continue
        names = None
        if isinstance(t, T.Array):
            names = []
            for k in range(t.ndim):
                nm = f"{p.name}_dim{k}"
                while nm in used:
                    nm += "_"
                used.add(nm)
                names.append(nm)
        out.append(_generalise(t, names))
    return tuple(out)


def _names_in(stmts) -> set:
    """Every name a list of statements mentions (read, assigned or a loop variable)."""
    out = set()

    def walk(x):
        if isinstance(x, A.Name):
            out.add(x.id)
        if isinstance(x, A.For):
            out.add(x.var)
        if isinstance(x, A.Node):
            for k, v in vars(x).items():
                if k == "loc":
                    continue
                if isinstance(v, (A.Node, list)):
                    walk(v)
        elif isinstance(x, list):
            for y in x:
                walk(y)
    walk(stmts)
    return out


def _deferred_transformed(base: SigInfo, fref) -> SigInfo:
    """The signature of a transformation of a jit function whose types are not known yet
    (``grad(f)`` before it is called): parameter names only."""
    names = list(base.param_names)
    for kind, (idx, _) in fref.transforms:
        if kind == "jvp":
            names = names + [f"d_{names[k]}" for k in idx]
        elif kind == "vjp":
            names = names + ["d_out"]
    return SigInfo(base.key, names, None, None, False, set(), param_types_needed=True)


def _calls(stmts):
    """Every call whose callee is a plain name, in a list of statements."""
    out = []

    def ex(e):
        if isinstance(e, A.Call) and isinstance(e.func, A.Name):
            out.append(e)
        if isinstance(e, A.Node):
            for v in vars(e).values():
                if isinstance(v, A.Node) and v is not getattr(e, "loc", None):
                    ex(v)
                elif isinstance(v, list):
                    for x in v:
                        if isinstance(x, A.Node):
                            ex(x)
    for s in stmts:
        ex(s)
    return out


# --------------------------------------------------------------------- decorators
REGS = ("entropy", "l2")
SOLVERS = ("cg", "gmres", "bicgstab", "dense")


def validate_decorators(fdef: A.FuncDef, func, ctx: ModuleCtx, loader: Loader) -> dict:
    """Check ``@smooth``, ``@argmin``, ``@root``, ``@fixed_point`` and return them as data."""
    out = {}
    pnames = func.param_names
    ptypes = [v.type for v in func.params]
    for d in fdef.decorators:
        e = d.expr
        name, args, kws = None, [], []
        if isinstance(e, A.Call):
            fn = e.func
            args, kws = e.args, e.keywords
        else:
            fn = e
        if isinstance(fn, A.Attribute) and isinstance(fn.value, A.Name) and \
                fn.value.id in MODULE_ALIASES:
            name = fn.attr
        elif isinstance(fn, A.Name):
            name = fn.id
        if name in ("jit",):
            continue
        if name == "smooth":
            out["smooth"] = _smooth_decorator(d, args, kws, pnames, ptypes)
        elif name in ("argmin", "root", "fixed_point"):
            if "implicit" in out:
                raise DPTypeError("a function can have only one of @argmin, @root, @fixed_point",
                                  d.loc)
            out["implicit"] = _implicit_decorator(name, d, args, kws, func, ctx, loader)
        else:
            raise DPTypeError(f"unknown decorator '@{name or '?'}' (dplang has @smooth, @argmin, "
                              f"@root, @fixed_point)", fn.loc if fn is not None else d.loc)
        if name in out.get("_seen", ()):
            raise DPTypeError(f"@{name} given twice", d.loc)
        out.setdefault("_seen", []).append(name)
    out.pop("_seen", None)
    return out


def _reg_value(e: A.Expr) -> Optional[str]:
    if isinstance(e, A.Str):
        return e.value
    if isinstance(e, A.Name):
        return e.id
    return None


def _smooth_decorator(d, args, kws, pnames, ptypes) -> dict:
    if not args:
        raise DPTypeError("@smooth needs a regulariser: @smooth(entropy, gamma=NAME) or "
                          "@smooth(l2, gamma=NAME)", d.loc)
    if len(args) > 1:
        raise DPTypeError("@smooth takes one positional argument (the regulariser)", args[1].loc)
    reg = _reg_value(args[0])
    if reg not in REGS:
        raise DPTypeError(f"unknown regulariser {reg!r} for @smooth: use one of "
                          f"{', '.join(REGS)}", args[0].loc)
    gamma = None
    for kw in kws:
        if kw.name != "gamma":
            raise DPTypeError(f"@smooth has no option '{kw.name}' (only gamma=)", kw.loc)
        if not isinstance(kw.value, A.Name):
            raise DPTypeError("gamma= must name a parameter of the function", kw.value.loc)
        gamma = kw.value.id
        if gamma not in pnames:
            raise DPTypeError(f"gamma={gamma}: the function has no parameter '{gamma}'",
                              kw.value.loc)
        t = ptypes[pnames.index(gamma)]
        if not (isinstance(t, T.Scalar) and t.dtype in ("f64", "f32")):
            raise DPTypeError(f"the temperature '{gamma}' must be a float scalar parameter, "
                              f"it is {t}", kw.value.loc)
    if gamma is None:
        raise DPTypeError("@smooth needs gamma=NAME naming the temperature parameter", d.loc)
    return {"reg": reg, "gamma": gamma}


def _implicit_decorator(kind, d, args, kws, func, ctx, loader) -> dict:
    if len(args) != 1 or not isinstance(args[0], A.Name):
        what = {"argmin": "an objective", "root": "a function F", "fixed_point": "a map T"}[kind]
        raise DPTypeError(f"@{kind} takes {what} as its one positional argument: "
                          f"@{kind}(NAME, solver=..., tol=..., maxiter=...)", d.loc)
    fname = args[0].id
    key = ctx.func_key(fname)
    if key is None:
        raise DPNameError(f"@{kind}: unknown function '{fname}'", args[0].loc)
    opts = {"fn": key, "solver": "cg" if kind == "argmin" else "gmres", "tol": 1e-10,
            "maxiter": None, "kind": kind, "_loc": d.loc}   # (where solve errors point)
    for kw in kws:
        if kw.name == "solver":
            if not isinstance(kw.value, A.Str) or kw.value.value not in SOLVERS:
                raise DPTypeError(f"solver= must be one of {', '.join(repr(s) for s in SOLVERS)}",
                                  kw.value.loc)
            opts["solver"] = kw.value.value
        elif kw.name == "tol":
            v = kw.value
            ok = isinstance(v, A.Num) and v.value > 0
            if not ok:
                raise DPTypeError("tol= must be a positive number", v.loc)
            opts["tol"] = float(v.value)
        elif kw.name == "maxiter":
            v = kw.value
            if not (isinstance(v, A.Num) and isinstance(v.value, int) and v.value > 0):
                raise DPTypeError("maxiter= must be a positive integer", v.loc)
            opts["maxiter"] = v.value
        else:
            raise DPTypeError(f"@{kind} has no option '{kw.name}' (solver, tol, maxiter)", kw.loc)
    if len(func.result_types) != 1:
        raise DPTypeError(f"@{kind}: the function must return one array or scalar (its "
                          f"solution x)", d.loc)
    xt = func.result_types[0]
    sig = loader.signature(key, None, args[0])
    want = 1 + len(func.params)
    if sig.param_types is None and len(sig.param_names) == want:
        # a jitted function without annotations: specialised on (x, *theta)
        sig = loader.signature(key, [xt] + [v.type for v in func.params], args[0])
    if sig.param_types is not None and sig.key in loader.lowered:
        opts["fn"] = sig.key        # (a jitted function's specialisation on (x, *theta))
    if len(sig.param_names) != want:
        raise DPTypeError(f"@{kind}: '{fname}' must take (x, {', '.join(func.param_names)}): "
                          f"{want} parameter(s), it takes {len(sig.param_names)}", args[0].loc)
    if sig.param_types[0].dtype != xt.dtype or getattr(sig.param_types[0], "ndim", 0) != \
            getattr(xt, "ndim", 0):
        raise DPTypeError(f"@{kind}: the first parameter of '{fname}' is {sig.param_types[0]} "
                          f"but the solution is {xt}", args[0].loc)
    if len(sig.result_types) != 1:
        raise DPTypeError(f"@{kind}: '{fname}' must return one value", args[0].loc)
    rt = sig.result_types[0]
    if kind == "argmin":
        if not isinstance(rt, T.Scalar) or rt.dtype not in ("f64", "f32"):
            raise DPTypeError(f"@argmin: the objective '{fname}' must return a float scalar, it "
                              f"returns {rt}", args[0].loc)
    else:
        if getattr(rt, "ndim", 0) != getattr(xt, "ndim", 0):
            raise DPTypeError(f"@{kind}: '{fname}' must return a value shaped like x ({xt}), it "
                              f"returns {rt}", args[0].loc)
    if not (xt.dtype in ("f64", "f32")):
        raise DPTypeError(f"@{kind}: the solution must be float, it is {xt}", d.loc)
    return opts


def load_program(source: str, filename: str) -> Program:
    """Parse, check and lower a module and everything it imports."""
    loader = Loader()
    ctx = loader.load_source(source, filename)
    for name in ctx.funcs:
        loader.lower_key(ctx.key(name), None, ctx.funcs[name])
    prog = loader.program
    prog.filename = filename
    for name in ctx.funcs:
        prog.exports[name] = ctx.key(name)
    for local, (other, nm) in ctx.imports.items():
        k = other.func_key(nm)
        loader.lower_key(k, None, None)
        prog.exports[local] = k
    prog.loader = loader
    return prog
