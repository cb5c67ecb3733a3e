"""Checking and lowering: typed AST -> structured SSA IR, in one walk.

Name resolution, type and shape inference (types come from the primitive registry's
rules), NumPy promotion, definite assignment, the write rules (no writes into
parameters or through aliases) and call checks all happen while the IR is built, so
every error carries the location of the AST node being lowered.

Control flow is lowered into structured form:
* ``if`` -> an ``if`` op yielding every name either branch changed;
* ``for``/``while`` -> loop ops carrying every name the body assigns that was bound
  before the loop (types found by a fixpoint, so ``s = 0`` then ``s += x[i]`` carries
  an ``f64``);
* ``break``/``continue``/``return`` set flags (``$brk``, ``$cont``, ``$ret``); the rest
  of a block after a statement that may have set one runs under ``if not flags``;
  loops carry the flags and a ``while`` loop's condition is false once one is set.
"""
from __future__ import annotations

import math
from typing import Optional

from dplang.dsl import ast as A
from dplang.dsl.scope import AliasInfo, Env, Unassigned, fresh_root
from dplang.errors import (DPError, DPInternalError, DPNameError, DPShapeError, DPTypeError,
                           DPUnsupportedError, Loc)
from dplang.ir import types as T
from dplang.ir.builder import Builder
from dplang.ir.core import Func, Op, Region, Value
from dplang.ir.primitives import REGISTRY, TypeRuleError

DTYPE_NAMES = {"f64": "f64", "f32": "f32", "i64": "i64", "bool": "bool",
               "float": "f64", "int": "i64", "float64": "f64", "float32": "f32",
               "int64": "i64", "bool_": "bool"}
MODULE_ALIASES = {"np", "numpy", "math", "dp", "dplang", "jnp", "scipy"}
CONSTANTS = {"inf": math.inf, "nan": math.nan, "pi": math.pi, "e": math.e}
ALIASING_PRIMS = {"getitem", "transpose"}      # results may be views of operand 0
FLAG_NAMES = ("$ret", "$brk", "$cont")


# ------------------------------------------------------------------ static values
class Static:
    """A compile-time value produced by an expression: a function, a module, a string."""


class FuncRef(Static):
    def __init__(self, key: str, name: str, transforms: tuple = ()):
        self.key, self.name, self.transforms = key, name, transforms


class ModRef(Static):
    def __init__(self, path: str):
        self.path = path


class StrVal(Static):
    def __init__(self, value: str):
        self.value = value


class DtypeVal(Static):
    def __init__(self, dtype: str):
        self.dtype = dtype


class NoneVal(Static):
    pass


def annotation_type(expr: A.Expr, where: str, allow_tuple=True) -> T.Type | list:
    """Interpret a type annotation: ``f64``, ``f64[n, 3]``, ``(f64, f64[n])``."""
    def err(msg):
        raise DPTypeError(msg, expr.loc)

    if isinstance(expr, A.Tuple) and allow_tuple:
        return [annotation_type(e, where, allow_tuple=False) for e in expr.elts]
    if isinstance(expr, A.Attribute) and isinstance(expr.value, A.Name) \
            and expr.value.id in MODULE_ALIASES:
        expr = A.Name(expr.loc, expr.attr)
    if isinstance(expr, A.Name):
        if expr.id in DTYPE_NAMES:
            return T.Scalar(DTYPE_NAMES[expr.id])
        err(f"unknown type '{expr.id}' in {where} (expected f64, f32, i64, bool or an array "
            f"type such as f64[n, m])")
    if isinstance(expr, A.Subscript):
        base = expr.value
        if isinstance(base, A.Attribute) and isinstance(base.value, A.Name) \
                and base.value.id in MODULE_ALIASES:
            base = A.Name(base.loc, base.attr)
        if not (isinstance(base, A.Name) and base.id in DTYPE_NAMES):
            err(f"unknown array type in {where}: write DTYPE[dims], e.g. f64[n, m]")
        dims = []
        for d in expr.index:
            if isinstance(d, A.Name):
                dims.append(T.Sym.name(d.id))
            elif isinstance(d, A.Num) and isinstance(d.value, int) and d.value >= 0:
                dims.append(d.value)
            else:
                raise DPTypeError("an array dimension must be a name or a non-negative "
                                  "integer literal", d.loc)
        return T.Array(DTYPE_NAMES[base.id], tuple(dims))
    err(f"cannot read this as a type in {where}")


def dims_of(t) -> list:
    return [d for d in getattr(t, "shape", ()) if isinstance(d, T.Sym)]


# ====================================================================== lowering
class FunctionLowerer:
    """Lowers one ``FuncDef`` into a ``Func`` (see the module docstring)."""

    def __init__(self, ctx, fdef: A.FuncDef, key: str, param_types: list | None = None):
        self.ctx = ctx                  # dsl.program.ModuleCtx: scope of the module
        self.fdef = fdef
        self.key = key
        self.file = ctx.filename
        self.b = Builder()
        self.alias = AliasInfo()
        self.origins: dict = {}         # array Value -> frozenset of roots
        self.sym: dict = {}             # i64 Value -> symbolic Dim
        self.weak: set = set()          # Values of Python literals (NEP 50 weak scalars)
        self.loop_tokens: list = []     # per enclosing loop: the tokens of its carries
        self.param_types = param_types
        self.ret_types: Optional[list] = None
        self.ret_fixed = False          # result types declared (or given)
        self.returns_tuple = False
        self.ret_join_changed = False
        self.result_origin = frozenset()

    # ------------------------------------------------------------ errors
    def err(self, cls, msg, node_or_loc, note=None):
        loc = node_or_loc if isinstance(node_or_loc, Loc) or node_or_loc is None else node_or_loc.loc
        raise cls(msg, loc, note)

    # ------------------------------------------------------------ helpers
    def origin(self, v: Value) -> frozenset:
        o = self.origins.get(v)
        if o is None:
            o = frozenset([fresh_root()])
            self.origins[v] = o
        return o

    def prim(self, name, *operands, node=None, hint=None, **attrs) -> Value:
        try:
            out = self.b.prim(name, *operands, hint=hint, loc=node.loc if node is not None else None,
                              **attrs)
        except TypeRuleError as e:
            loc = node.loc if node is not None else self.b.loc
            if e.arg is not None and node is not None and isinstance(node, A.Call) \
                    and e.arg < len(node.args):
                loc = node.args[e.arg].loc
            cls = DPShapeError if e.kind == "shape" else DPTypeError
            raise cls(e.message, loc)
        if name in ALIASING_PRIMS and isinstance(out, Value) and isinstance(out.type, T.Array):
            self.origins[out] = self.origin(operands[0])
        return out

    def const(self, value, dtype=None, weak=False) -> Value:
        t = T.Scalar(dtype) if dtype else None
        v = self.b.const(value, t)
        if weak:
            self.weak.add(v)
        if isinstance(value, (int, bool)) and not isinstance(value, float) and v.type == T.I64:
            self.sym[v] = int(value)
        return v

    def as_value(self, x, node) -> Value:
        if isinstance(x, Value):
            return x
        if isinstance(x, list):
            self.err(DPTypeError, "a tuple cannot be used here", node)
        if isinstance(x, FuncRef):
            self.err(DPTypeError, f"function '{x.name}' used as a value (call it, or pass it "
                                  f"to grad/jvp/vjp)", node)
        if isinstance(x, ModRef):
            self.err(DPTypeError, f"module '{x.path}' used as a value", node)
        if isinstance(x, StrVal):
            self.err(DPTypeError, "a string can only be a decorator, keyword or assert "
                                  "argument", node)
        self.err(DPTypeError, "this expression has no value", node)

    def is_array(self, v) -> bool:
        return isinstance(v, Value) and isinstance(v.type, T.Array)

    def to_bool(self, v: Value, node) -> Value:
        if isinstance(v.type, T.Array):
            self.err(DPTypeError, f"the truth value of an array ({v.type}) is ambiguous: "
                                  f"use a scalar condition", node)
        if not isinstance(v.type, T.Scalar):
            self.err(DPTypeError, "condition must be a scalar", node)
        if v.type.dtype == "bool":
            return v
        zero = self.const(0, v.type.dtype if v.type.dtype != "f32" else "f32")
        return self.prim("ne", v, zero, node=node)

    def cast(self, v: Value, dtype: str) -> Value:
        if v.type.dtype == dtype:
            return v
        out = self.b.cast(v, dtype)
        if v in self.weak:
            self.weak.add(out)
        return out

    def promote_pair(self, x: Value, y: Value, node, bool_to_int=True):
        dx, dy = x.type.dtype, y.type.dtype
        wx, wy = x in self.weak, y in self.weak
        if wx and not wy:
            dt = T.promote_weak(dy, dx)
        elif wy and not wx:
            dt = T.promote_weak(dx, dy)
        else:
            dt = T.promote(dx, dy)
        if bool_to_int and dt == "bool":
            dt = "i64"
        x2, y2 = self.cast(x, dt), self.cast(y, dt)
        return x2, y2

    def sym_of(self, v: Value):
        return self.sym.get(v)

    def set_sym(self, v: Value, d):
        if d is not None and isinstance(v, Value) and v.type == T.I64:
            self.sym[v] = d

    # ============================================================ function
    def lower(self) -> Func:
        fd = self.fdef
        ptypes = []
        names = []
        seen = set()
        for i, p in enumerate(fd.params):
            if p.name in seen:
                self.err(DPTypeError, f"duplicate parameter '{p.name}'", p)
            seen.add(p.name)
            names.append(p.name)
            if self.param_types is not None:
                t = self.param_types[i]
            elif p.annotation is None:
                self.err(DPTypeError, f"parameter '{p.name}' needs a type annotation "
                                      f"(f64, i64, f64[n], ...) in a .dp file", p)
            else:
                t = annotation_type(p.annotation, f"parameter '{p.name}'", allow_tuple=False)
            ptypes.append(t)
        if fd.returns is not None and self.param_types is None:
            rt = annotation_type(fd.returns, "the result type")
            self.returns_tuple = isinstance(rt, list)
            self.ret_types = rt if isinstance(rt, list) else [rt]
            self.ret_fixed = True
            bound = {d for t in ptypes for d in dims_of(t)}
            bound |= {T.Sym.name(p.name) for p, t in zip(fd.params, ptypes)
                      if isinstance(t, T.Scalar) and t.dtype == "i64"}
            for t in self.ret_types:
                for d in dims_of(t):
                    for nm, _ in d.terms:
                        if T.Sym.name(nm) not in bound:
                            self.err(DPTypeError, f"dimension '{nm}' of the result type is not "
                                                  f"the size of any parameter", fd.returns)
        elif self.param_types is None and fd.returns is None and self.ctx.require_annotations:
            self.err(DPTypeError, f"function '{fd.name}' needs a result type (-> f64, ...) in "
                                  f"a .dp file", fd)
        body = Region([Value(t, n, p.loc) for t, n, p in zip(ptypes, names, fd.params)])
        self.func = Func(self.key, body, [], fd.loc, {}, names, self.returns_tuple, self.file)
        self.b.region = body
        self.b.loc = fd.loc
        env = Env()
        for i, (v, p) in enumerate(zip(body.args, fd.params)):
            env.bind(p.name, v)
            if v.type == T.I64:
                self.sym[v] = T.Sym.name(p.name)
            if isinstance(v.type, T.Array):
                r = fresh_root()
                self.alias.param_roots[r] = p.name
                self.origins[v] = frozenset([r])
        # dimension names: bound by the first parameter that mentions them
        dim_val: dict = {}
        for i, (v, p) in enumerate(zip(body.args, fd.params)):
            for ax, d in enumerate(getattr(v.type, "shape", ())):
                if isinstance(d, T.Sym) and len(d.terms) == 1 and d.const == 0:
                    nm = d.terms[0][0]
                    with self.b.located(p.loc):
                        dv = self.prim("dim", v, axis=ax, hint=nm)
                    self.set_sym(dv, d)
                    if nm not in dim_val:
                        dim_val[nm] = (dv, p.name)
                        if nm in env.names:
                            self.err(DPTypeError, f"'{nm}' is both a parameter and a dimension "
                                                  f"name", p)
                        env.bind(nm, dv)
                    else:
                        first, pname = dim_val[nm]
                        with self.b.located(p.loc):
                            ok = self.prim("eq", dv, first)
                            self.b.op("assert", [ok, dv, first], [], {
                                "msg": f"parameter '{p.name}': dimension {nm} is {{1}} but "
                                       f"parameter '{pname}' gives {nm} = {{2}}",
                                "kind": "shape", "entry": True})
                elif isinstance(d, int):
                    with self.b.located(p.loc):
                        dv = self.prim("dim", v, axis=ax)
                        ok = self.prim("eq", dv, self.const(d))
                        self.b.op("assert", [ok, dv], [], {
                            "msg": f"parameter '{p.name}': axis {ax} has size {{1}}, expected {d}",
                            "kind": "shape", "entry": True})
        self.env = env
        self.lower_block(fd.body, env)
        if env.flags["$ret"] is not True:
            if env.flags["$ret"] is False:
                self.err(DPTypeError, f"function '{fd.name}' ends without returning a value",
                         fd)
            self.err(DPTypeError, f"function '{fd.name}' may end without returning a value "
                                  f"(some path has no return)", fd)
        rv = env.flags["$rv"]
        self.b.loc = fd.loc
        self.b.return_(*rv)
        self.result_origin = frozenset().union(*[self.origin(v) for v in rv if self.is_array(v)]) \
            if any(self.is_array(v) for v in rv) else frozenset()
        self.func.result_types = list(self.ret_types)
        self.func.returns_tuple = self.returns_tuple
        return self.func

    def result_alias_params(self) -> set:
        """Indices of the parameters a result may point into (for callers' alias rules)."""
        roots = self.alias.closure(self.result_origin)
        names = {self.alias.param_roots[r] for r in roots if r in self.alias.param_roots}
        return {i for i, n in enumerate(self.func.param_names) if n in names}

    # ============================================================ statements
    def exits(self, env: Env):
        """True / False / 'maybe': has control left the current block?"""
        fl = [env.flags["$ret"], env.flags["$brk"], env.flags["$cont"]]
        if any(f is True for f in fl):
            return True
        if any(isinstance(f, Value) for f in fl):
            return "maybe"
        return False

    def lower_block(self, stmts: list, env: Env) -> None:
        for k, s in enumerate(stmts):
            ex = self.exits(env)
            if ex is True:
                return          # unreachable code after return/break/continue
            if ex == "maybe":
                self.lower_guarded(stmts[k:], env)
                return
            with self.b.located(s.loc):
                self.lower_stmt(s, env)

    def any_flag(self, env: Env, node) -> Value:
        vals = [env.flags[f] for f in FLAG_NAMES if isinstance(env.flags[f], Value)]
        out = vals[0]
        for v in vals[1:]:
            out = self.prim("logical_or", out, v, node=node)
        return out

    def lower_guarded(self, stmts: list, env: Env) -> None:
        """Run ``stmts`` only if no flag is set: ``if any_flag: pass else: stmts``."""
        node = stmts[0]
        with self.b.located(node.loc):
            cond = self.any_flag(env, node)

            def run_rest(e: Env):
                for f in FLAG_NAMES:
                    if isinstance(e.flags[f], Value):
                        e.flags[f] = False      # on this branch no flag is set
                self.lower_block(stmts, e)
            def skip_rest(e: Env):
                dyn = [f for f in FLAG_NAMES if isinstance(e.flags[f], Value)]
                if len(dyn) == 1:
                    e.flags[dyn[0]] = True      # the guard says this one is set
            self.build_if(cond, skip_rest, run_rest, env, node)

    def lower_stmt(self, s: A.Stmt, env: Env) -> None:
        m = getattr(self, "stmt_" + type(s).__name__, None)
        if m is None:
            self.err(DPUnsupportedError, f"{type(s).__name__} statements are not supported", s)
        m(s, env)

    def stmt_Pass(self, s, env):
        pass

    def stmt_ExprStmt(self, s, env):
        if isinstance(s.value, A.Str):
            return      # a docstring
        if isinstance(s.value, A.Call):
            self.expr(s.value, env)
            return
        self.err(DPUnsupportedError, "an expression statement has no effect: only calls and "
                                     "docstrings may stand alone", s)

    def stmt_Assert(self, s, env):
        c = self.to_bool(self.value(s.test, env), s.test)
        msg = "assertion failed"
        if s.msg is not None:
            if not isinstance(s.msg, A.Str):
                self.err(DPTypeError, "an assert message must be a string literal", s.msg)
            msg = s.msg.value
        self.b.op("assert", [c], [], {"msg": msg, "kind": "assert"})

    def stmt_Assign(self, s, env):
        if s.annotation is not None:
            if len(s.targets) != 1 or not isinstance(s.targets[0], A.Name):
                self.err(DPTypeError, "only a plain name can carry a type annotation", s)
            t = annotation_type(s.annotation, f"the annotation of '{s.targets[0].id}'",
                                allow_tuple=False)
            v = self.value(s.value, env)
            v = self.convert_to(v, t, s.value, f"'{s.targets[0].id}'")
            self.assign(s.targets[0], v, env)
            return
        val = self.expr(s.value, env)
        if isinstance(val, (FuncRef, ModRef)):
            self.err(DPTypeError, "functions and modules cannot be assigned to names", s.value)
        if isinstance(val, StrVal):
            self.as_value(val, s.value)     # a string is not a value (SPEC 1.1)
        for tgt in s.targets:
            self.assign(tgt, val, env)

    def convert_to(self, v: Value, t: T.Type, node, what) -> Value:
        if isinstance(t, T.Scalar) != isinstance(v.type, T.Scalar) or \
                getattr(t, "ndim", 0) != getattr(v.type, "ndim", 0):
            self.err(DPTypeError, f"{what} is declared {t} but the value is {v.type}", node)
        for a, b in zip(getattr(t, "shape", ()), getattr(v.type, "shape", ())):
            if T.dims_conflict(a, b):
                self.err(DPShapeError, f"{what} is declared {t} but the value is {v.type}", node)
        if v.type.dtype != t.dtype:
            if not self.safe_cast(v, t.dtype):
                self.err(DPTypeError, f"{what} is declared {t} but the value is {v.type} "
                                      f"(no implicit conversion from {v.type.dtype} to "
                                      f"{t.dtype})", node)
            v = self.cast(v, t.dtype)
        return v

    def safe_cast(self, v: Value, dtype: str) -> bool:
        src = v.type.dtype
        order = {"bool": 0, "i64": 1, "f32": 2, "f64": 3}
        if v in self.weak and dtype in ("f32", "f64"):
            return True
        return order[src] <= order[dtype] and not (src == "f64" and dtype == "f32")

    def assign(self, tgt: A.Expr, val, env: Env) -> None:
        if isinstance(tgt, A.Name):
            if tgt.id in CONSTANTS and tgt.id not in env.names:
                pass
            if isinstance(val, Value) and val.hint is None:
                val.hint = tgt.id
            elif isinstance(val, Value) and val.hint != tgt.id and val.owner is not None \
                    and isinstance(val.owner, Op) and val.owner.name == "const":
                # give named constants their own line in dumps? keep the shared const
                pass
            env.bind(tgt.id, val)
            return
        if isinstance(tgt, (A.Tuple, A.List)):
            if not isinstance(val, list):
                self.err(DPTypeError, f"cannot unpack a non-tuple into {len(tgt.elts)} names",
                         tgt)
            if len(val) != len(tgt.elts):
                self.err(DPTypeError, f"cannot unpack {len(val)} values into "
                                      f"{len(tgt.elts)} names", tgt)
            for t_, v_ in zip(tgt.elts, val):
                self.assign(t_, v_, env)
            return
        if isinstance(tgt, A.Subscript):
            v = self.as_value(val, tgt)
            self.store_subscript(tgt, lambda old: v, env)
            return
        if isinstance(tgt, A.Attribute):
            self.err(DPUnsupportedError, "assignment to an attribute is not supported", tgt)
        self.err(DPTypeError, "cannot assign to this expression", tgt)

    def check_write(self, name: str, v: Value, node, env: Env) -> None:
        params = self.alias.params_in(self.origin(v))
        if params:
            if params == [name]:
                self.err(DPTypeError, f"cannot write into parameter '{name}': parameters are "
                                      f"read-only; write into a copy: {name} = copy({name})",
                         node)
            self.err(DPTypeError, f"cannot write into '{name}': it may refer to parameter "
                                  f"'{params[0]}'; make a copy first: {name} = copy({name})", node)
        for other, ov in env.names.items():
            if other == name or not self.is_array(ov) or other.startswith("$"):
                continue
            if ov is v or self.alias.overlap(self.origin(v), self.origin(ov)):
                self.err(DPTypeError, f"cannot write into '{name}': the same array is also "
                                      f"reachable as '{other}' (NumPy would change both); "
                                      f"use copy() to make them separate", node)

    def store_subscript(self, tgt: A.Subscript, make_value, env: Env) -> None:
        if not isinstance(tgt.value, A.Name):
            self.err(DPUnsupportedError, "writes must go into a named array: NAME[...] = value",
                     tgt.value)
        name = tgt.value.id
        arr = self.lookup(name, tgt.value, env)
        if not self.is_array(arr):
            self.err(DPTypeError, f"cannot write into '{name}': it is not an array "
                                  f"({getattr(arr, 'type', '?')})", tgt.value)
        self.check_write(name, arr, tgt, env)
        spec, idx, shape_hint = self.index_spec(tgt, arr, env)
        old = None

        def load_old():
            return self.prim("getitem", arr, *idx, node=tgt, index=spec, **shape_hint)
        v = make_value(load_old)
        v = self.as_value(v, tgt)
        if v.type.dtype != arr.type.dtype:
            if self.safe_cast(v, arr.type.dtype):
                v = self.cast(v, arr.type.dtype)
            elif v.type.dtype in ("f32", "f64") and arr.type.dtype in ("f32", "f64"):
                v = self.cast(v, arr.type.dtype)
            else:
                self.err(DPTypeError, f"cannot write a {v.type.dtype} value into '{name}', an "
                                      f"array of {arr.type.dtype} (convert explicitly)", tgt)
        new = self.prim("setitem", arr, v, *idx, node=tgt, index=spec, hint=name)
        self.origins[new] = self.origin(arr)
        env.bind(name, new)

    def stmt_AugAssign(self, s, env):
        op = s.op
        if isinstance(s.target, A.Subscript):
            def make(load_old):
                old = load_old()
                rhs = self.value(s.value, env)
                return self.binop(op, old, rhs, s)
            self.store_subscript(s.target, make, env)
            return
        if not isinstance(s.target, A.Name):
            self.err(DPTypeError, "cannot assign to this expression", s.target)
        name = s.target.id
        old = self.lookup(name, s.target, env)
        old = self.as_value(old, s.target)
        rhs = self.value(s.value, env)
        new = self.binop(op, old, rhs, s)
        if self.is_array(old):
            # NumPy's `A += e` writes into A: the alias rules apply, dtype and shape stay
            self.check_write(name, old, s, env)
            if new.type.dtype != old.type.dtype:
                if new.type.dtype in ("f32", "f64") and old.type.dtype in ("bool", "i64"):
                    self.err(DPTypeError, f"'{name} {op}= ...' would write {new.type.dtype} "
                                          f"values into an array of {old.type.dtype}", s)
                new = self.cast(new, old.type.dtype)
            if new.type.ndim != old.type.ndim or any(
                    T.dims_conflict(a, b) for a, b in zip(new.type.shape, old.type.shape)):
                self.err(DPShapeError, f"'{name} {op}= ...' would change the shape of "
                                       f"'{name}' from {old.type} to {new.type}", s)
            if new.type != old.type:
                new = self.prim("setitem", old, new, index=(("slice", False, False, False),) *
                                old.type.ndim, node=s)
            self.origins[new] = self.origin(old)
        new.hint = name if new.hint is None or new.hint != name else new.hint
        env.bind(name, new)

    def stmt_Return(self, s, env):
        if s.value is None:
            self.err(DPTypeError, "a function must return a value (dplang functions are pure)",
                     s)
        val = self.expr(s.value, env)
        vals = val if isinstance(val, list) else [self.as_value(val, s.value)]
        vals = [self.as_value(v, s.value) for v in vals]
        is_tuple = isinstance(val, list)
        if self.ret_types is None:
            self.ret_types = [v.type for v in vals]
            self.returns_tuple = is_tuple
        else:
            if len(vals) != len(self.ret_types) or (is_tuple != self.returns_tuple and
                                                     self.ret_fixed):
                want = (f"a tuple of {len(self.ret_types)}" if self.returns_tuple
                        else "one value")
                got = f"a tuple of {len(vals)}" if is_tuple else "one value"
                self.err(DPTypeError, f"the function returns {want} but this returns {got}",
                         s.value)
            out = []
            for k, (v, t) in enumerate(zip(vals, self.ret_types)):
                if not self.ret_fixed:
                    j = T.join(v.type, t)
                    if j is None:
                        self.err(DPTypeError, f"this returns {v.type} but an earlier return "
                                              f"gives {t}", s.value)
                    if j != t:
                        self.ret_join_changed = True
                        self.ret_types[k] = j
                        t = j
                out.append(self.convert_to(v, t, s.value, "the result"))
            vals = out
        env.flags["$ret"] = True
        env.flags["$rv"] = vals

    def stmt_Break(self, s, env):
        if not self.loop_tokens:
            self.err(DPTypeError, "'break' outside a loop", s)
        env.flags["$brk"] = True

    def stmt_Continue(self, s, env):
        if not self.loop_tokens:
            self.err(DPTypeError, "'continue' outside a loop", s)
        env.flags["$cont"] = True

    # ------------------------------------------------------------ if
    def stmt_If(self, s, env):
        c = self.to_bool(self.value(s.test, env), s.test)
        self.build_if(c, lambda e: self.lower_block(s.body, e),
                      lambda e: self.lower_block(s.orelse, e), env, s)

    def build_if(self, cond: Value, then_fn, else_fn, env: Env, node) -> None:
        regions, envs = [], []
        for fn in (then_fn, else_fn):
            reg = Region(label="then" if not regions else "else")
            e = env.copy()
            with self.b.at(reg):
                fn(e)
            regions.append(reg)
            envs.append(e)
        et, ee = envs
        names = []
        for nm in list(et.names) + [n for n in ee.names if n not in et.names]:
            a, b_ = et.names.get(nm), ee.names.get(nm)
            if a is b_:
                continue
            if a is None or b_ is None or isinstance(a, Unassigned) or isinstance(b_, Unassigned):
                env.names[nm] = Unassigned("assigned in only one branch of the if at line "
                                           f"{node.loc.line}")
                continue
            if isinstance(a, Value) and isinstance(b_, Value):
                names.append(nm)
            elif isinstance(a, list) and isinstance(b_, list) and len(a) == len(b_):
                names.append(nm)
            elif a is not b_:
                env.names[nm] = Unassigned(f"bound to different kinds of values in the branches "
                                           f"of the if at line {node.loc.line}")
        # flags
        flag_merge = {}
        for f in FLAG_NAMES:
            a, b_ = et.flags[f], ee.flags[f]
            if a is b_ or (isinstance(a, bool) and a == b_):
                env.flags[f] = a
            else:
                flag_merge[f] = (a, b_)
        rv_a, rv_b = et.flags["$rv"], ee.flags["$rv"]
        rv_merge = rv_a is not rv_b and (rv_a is not None or rv_b is not None)
        # yields
        ya, yb, types, hints, kinds = [], [], [], [], []
        for nm in names:
            a, b_ = et.names[nm], ee.names[nm]
            pa, pb = (a, b_) if isinstance(a, list) else ([a], [b_])
            for x, y in zip(pa, pb):
                t = T.join(x.type, y.type)
                if t is None:
                    self.err(DPTypeError, f"'{nm}' is {x.type} in one branch and {y.type} in "
                                          f"the other", node)
                ya.append(x); yb.append(y); types.append(t); hints.append(nm.lstrip("$"))
            kinds.append((nm, len(pa), isinstance(a, list)))
        for f, (a, b_) in flag_merge.items():
            ya.append(a); yb.append(b_); types.append(T.BOOL); hints.append(f[1:])
        if rv_merge:
            ref = rv_a if rv_a is not None else rv_b
            for k in range(len(ref)):
                x = rv_a[k] if rv_a is not None else None
                y = rv_b[k] if rv_b is not None else None
                t = x.type if x is not None else y.type
                if x is not None and y is not None and T.join(x.type, y.type) != t:
                    t = T.join(x.type, y.type)
                ya.append(x); yb.append(y); types.append(t); hints.append("rv")
        # materialise yields (flags as consts, missing rv as undef, casts)
        for reg, ys in ((regions[0], ya), (regions[1], yb)):
            with self.b.at(reg):
                final = []
                for v, t in zip(ys, types):
                    if isinstance(v, bool):
                        v = self.const(v)
                    elif v is None:
                        v = self.b.op("undef", [], [t], hints=["rv"]).result
                    if v.type != t:
                        v = self.cast(v, t.dtype) if v.type.dtype != t.dtype else v
                        if v.type != t:
                            # shapes refined differently: same dtype/rank, keep as is
                            pass
                    final.append(v)
                self.b.yield_(*final)
        # fix yield types to what was actually yielded
        res_types = [regions[0].ops[-1].operands[k].type for k in range(len(types))]
        res_types = [t if t == regions[1].ops[-1].operands[k].type else types[k]
                     for k, t in enumerate(res_types)]
        op = self.b.op("if", [cond], res_types, regions=regions, hints=hints)
        res = list(op.results)
        k = 0
        for nm, cnt, is_list in kinds:
            vs = res[k:k + cnt]
            for i, v in enumerate(vs):
                if self.is_array(v):
                    self.origins[v] = self.origin(ya[k + i]) | self.origin(yb[k + i])
            env.names[nm] = vs if is_list else vs[0]
            k += cnt
        for f in flag_merge:
            env.flags[f] = res[k]
            k += 1
        if rv_merge:
            env.flags["$rv"] = res[k:]
            for v, x, y in zip(res[k:], [*(rv_a or [None] * len(res[k:]))],
                               [*(rv_b or [None] * len(res[k:]))]):
                if self.is_array(v):
                    o = frozenset()
                    for z in (x, y):
                        if isinstance(z, Value):
                            o |= self.origin(z)
                    self.origins[v] = o

    # ------------------------------------------------------------ loops
    def assigned_names(self, stmts) -> list:
        out = []

        def tgt(t):
            if isinstance(t, A.Name):
                out.append(t.id)
            elif isinstance(t, (A.Tuple, A.List)):
                for e in t.elts:
                    tgt(e)
            elif isinstance(t, A.Subscript) and isinstance(t.value, A.Name):
                out.append(t.value.id)

        def walk(ss):
            for s in ss:
                if isinstance(s, A.Assign):
                    for t in s.targets:
                        tgt(t)
                elif isinstance(s, A.AugAssign):
                    tgt(s.target)
                elif isinstance(s, A.If):
                    walk(s.body)
                    walk(s.orelse)
                elif isinstance(s, (A.For, A.While)):
                    walk(s.body)
        walk(stmts)
        seen = []
        for n in out:
            if n not in seen:
                seen.append(n)
        return seen

    def has_stmt(self, stmts, kinds, into_loops=False) -> bool:
        for s in stmts:
            if isinstance(s, kinds):
                return True
            if isinstance(s, A.If) and (self.has_stmt(s.body, kinds, into_loops) or
                                        self.has_stmt(s.orelse, kinds, into_loops)):
                return True
            if isinstance(s, (A.For, A.While)) and into_loops and \
                    self.has_stmt(s.body, kinds, into_loops):
                return True
        return False

    def stmt_For(self, s, env):
        it = s.iter
        if not (isinstance(it, A.Call) and isinstance(it.func, A.Name) and it.func.id == "range"
                and "range" not in env.names):
            self.err(DPUnsupportedError, "a for loop must iterate over range(...)", it)
        if it.keywords:
            self.err(DPTypeError, "range() takes no keyword arguments", it.keywords[0])
        if not 1 <= len(it.args) <= 3:
            self.err(DPTypeError, f"range() takes 1 to 3 arguments, got {len(it.args)}", it)
        bounds = []
        for a in it.args:
            v = self.value(a, env)
            if not isinstance(v.type, T.Scalar) or v.type.dtype not in ("i64", "bool"):
                self.err(DPTypeError, f"range() needs integer bounds, got {v.type}", a)
            bounds.append(self.cast(v, "i64"))
        if len(bounds) == 1:
            bounds = [self.const(0), bounds[0], self.const(1)]
        elif len(bounds) == 2:
            bounds.append(self.const(1))
        step = bounds[2]
        if step.owner is not None and getattr(step.owner, "name", "") == "const" and \
                step.owner.attrs["value"] == 0:
            self.err(DPTypeError, "range() step must not be zero", it.args[2])
        self.build_loop("for", s, env, bounds=bounds)

    def stmt_While(self, s, env):
        self.build_loop("while", s, env)

    def build_loop(self, kind, s, env: Env, bounds=None) -> None:
        assigned = self.assigned_names(s.body)
        carried = [n for n in assigned if isinstance(env.names.get(n), (Value, list))]
        for n in carried:
            if isinstance(env.names[n], list):
                self.err(DPUnsupportedError, f"a tuple name '{n}' cannot be reassigned in a "
                                             f"loop; unpack it first", s)
        has_brk = self.has_stmt(s.body, A.Break)
        has_ret = self.has_stmt(s.body, A.Return, into_loops=True)
        flags = []
        if has_brk:
            flags.append("$brk")
        if has_ret or isinstance(env.flags["$ret"], Value):
            flags.append("$ret")
        # initial carried values (types may widen on a later attempt)
        init_vals = {n: env.names[n] for n in carried}
        types = {n: v.type for n, v in init_vals.items()}
        rv_types = None
        if env.flags["$rv"] is not None:
            rv_types = [v.type for v in env.flags["$rv"]]
        elif has_ret and self.ret_types is not None:
            rv_types = list(self.ret_types)
        tokens_p: set = set()
        q_extra: dict = {n: set() for n in carried}
        for attempt in range(8):
            res = self.loop_attempt(kind, s, env, bounds, carried, init_vals, types, flags,
                                    rv_types, q_extra, tokens_p)
            changed, new_types, new_rv, body_state = res
            if not changed:
                break
            types, rv_types = new_types, new_rv
        else:
            raise DPInternalError("loop typing did not settle", s.loc)
        op, names_out = body_state
        self.b.insert(op)
        # rebind
        k = 0
        for n in carried:
            env.names[n] = op.results[k]
            k += 1
        if "$brk" in flags:
            k += 1
        if "$ret" in flags:
            env.flags["$ret"] = op.results[k]
            k += 1
        if rv_types is not None and "$ret" in flags:
            env.flags["$rv"] = op.results[k:]
        # names first assigned in the body are not visible after the loop
        for n in assigned:
            if n not in carried and not isinstance(env.names.get(n), Unassigned):
                env.names[n] = Unassigned(f"assigned only inside the loop at line {s.loc.line} "
                                          f"(which may run zero times)")
        if kind == "for":
            env.names[s.var] = Unassigned(f"the loop variable of the for loop at line "
                                          f"{s.loc.line} is not defined after the loop")

    def loop_attempt(self, kind, s, env, bounds, carried, init_vals, types, flags, rv_types,
                     q_extra, tokens_p):
        """Build the loop op once with the given carried types.  Returns (changed,
        new_types, new_rv_types, (op, names))."""
        first_root = fresh_root()
        # the outer region gets the casts of init values; build them in a scratch region
        pre = Region()
        inits = []
        with self.b.at(pre):
            for n in carried:
                v = init_vals[n]
                if v.type.dtype != types[n].dtype:
                    v = self.cast(v, types[n].dtype)
                inits.append(v)
            for f in flags:
                fv = env.flags[f]
                inits.append(self.const(bool(fv)) if isinstance(fv, bool) else fv)
            rv_init = []
            if rv_types is not None and "$ret" in flags:
                cur = env.flags["$rv"]
                for k, t in enumerate(rv_types):
                    if cur is not None:
                        v = cur[k]
                        if v.type.dtype != t.dtype:
                            v = self.cast(v, t.dtype)
                    else:
                        v = self.b.op("undef", [], [t], hints=["rv"]).result
                    rv_init.append(v)
            inits += rv_init
        arg_types = [types[n] for n in carried] + [T.BOOL] * len(flags) + \
            (list(rv_types) if rv_types is not None and "$ret" in flags else [])
        arg_hints = list(carried) + [f[1:] for f in flags] + \
            (["rv"] * len(rv_types) if rv_types is not None and "$ret" in flags else [])

        def make_args():
            return [Value(t, h, s.loc) for t, h in zip(arg_types, arg_hints)]

        # tokens for carried arrays
        tokens = {}
        for n, v in zip(carried, inits):
            if self.is_array(v):
                t = fresh_root()
                tokens[n] = t
                self.alias.q[t] = set(self.alias.closure(self.origin(init_vals[n]))) | q_extra[n]
        for a, b_ in tokens_p:
            if a in carried and b_ in carried:
                self.alias.p.add(frozenset((tokens[a], tokens[b_])))
        names_in_tokens = list(tokens)
        for i, a in enumerate(names_in_tokens):
            for b_ in names_in_tokens[i + 1:]:
                if self.alias.overlap(self.origin(init_vals[a]), self.origin(init_vals[b_])):
                    self.alias.p.add(frozenset((tokens[a], tokens[b_])))

        def enter(reg_args, e: Env):
            k = 0
            for n in carried:
                e.names[n] = reg_args[k]
                if n in tokens:
                    self.origins[reg_args[k]] = frozenset([tokens[n]])
                if reg_args[k].type == T.I64 and self.sym_of(init_vals[n]) is not None \
                        and False:
                    pass
                k += 1
            for f in flags:
                e.flags[f] = reg_args[k]
                k += 1
            if rv_types is not None and "$ret" in flags:
                e.flags["$rv"] = reg_args[k:]

        def finish(e: Env, node):
            """Values to yield for the next iteration."""
            out = []
            for n in carried:
                v = e.names.get(n)
                if not isinstance(v, Value):
                    self.err(DPTypeError, f"'{n}' may be unassigned at the end of the loop body",
                             node)
                out.append(v)
            for f in flags:
                fv = e.flags[f]
                out.append(fv)
            rv = None
            if "$ret" in flags:
                rv = e.flags["$rv"]
            return out, rv

        self.loop_tokens.append(tokens)
        saved_brk, saved_cont = env.flags["$brk"], env.flags["$cont"]
        if kind == "for":
            body = Region(make_args(), label="body")
            iv = Value(T.I64, s.var, s.var_loc)
            body.args.insert(0, iv)
            iv.owner = body
            e = env.copy()
            e.flags["$brk"] = False
            e.flags["$cont"] = False
            enter(body.args[1:], e)
            e.names[s.var] = iv
            with self.b.at(body):
                self.lower_block(s.body, e)
                out, rv = finish(e, s)
            regions = [body]
            yield_regs = [(body, e, out, rv)]
        else:
            cond_reg = Region(make_args(), label="cond")
            ec = env.copy()
            ec.flags["$brk"] = False
            ec.flags["$cont"] = False
            enter(cond_reg.args, ec)
            with self.b.at(cond_reg), self.b.located(s.test.loc):
                fl = [ec.flags[f] for f in flags]
                if fl:
                    stop = fl[0]
                    for f in fl[1:]:
                        stop = self.prim("logical_or", stop, f, node=s.test)
                    r1, r2 = Region(label="then"), Region(label="else")
                    with self.b.at(r1):
                        self.b.yield_(self.const(False))
                    with self.b.at(r2):
                        c = self.to_bool(self.value(s.test, ec), s.test)
                        self.b.yield_(c)
                    c = self.b.op("if", [stop], [T.BOOL], regions=[r1, r2], hints=["go"]).result
                else:
                    c = self.to_bool(self.value(s.test, ec), s.test)
                self.b.yield_(c)
            body = Region(make_args(), label="body")
            e = env.copy()
            e.flags["$brk"] = False
            e.flags["$cont"] = False
            enter(body.args, e)
            with self.b.at(body):
                self.lower_block(s.body, e)
                out, rv = finish(e, s)
            regions = [cond_reg, body]
            yield_regs = [(body, e, out, rv)]
        self.loop_tokens.pop()
        env.flags["$brk"], env.flags["$cont"] = saved_brk, saved_cont

        # did the types settle?
        body, e, out, rv = yield_regs[0]
        new_types = dict(types)
        changed = False
        for n, v in zip(carried, out):
            j = T.join(types[n], v.type)
            if j is None:
                self.err(DPTypeError, f"'{n}' changes from {types[n]} to {v.type} in the loop",
                         s)
            if j != types[n]:
                new_types[n] = j
                changed = True
        new_rv = rv_types
        if "$ret" in flags:
            if rv is not None and rv_types is None:
                new_rv = [v.type for v in rv]
                changed = True
            elif rv is not None:
                new_rv = []
                for t, v in zip(rv_types, rv):
                    j = T.join(t, v.type)
                    new_rv.append(j)
                    if j != t:
                        changed = True
        # alias facts: Q (outer roots a carry may hold) and P (carries that may alias)
        for n, v in zip(carried, out):
            if n in tokens and isinstance(v, Value) and self.is_array(v):
                for r in self.alias.closure(self.origin(v)):
                    if r in tokens.values() or r >= first_root:
                        continue
                    if r not in q_extra[n]:
                        q_extra[n].add(r)
                        changed = True
        outs = {n: v for n, v in zip(carried, out) if n in tokens and self.is_array(v)}
        ns = list(outs)
        for i, a in enumerate(ns):
            for b_ in ns[i + 1:]:
                if self.alias.overlap(self.origin(outs[a]), self.origin(outs[b_])):
                    pair = (a, b_)
                    if pair not in tokens_p:
                        tokens_p.add(pair)
                        changed = True
        if changed:
            return True, new_types, new_rv, None
        # emit the init casts into the current region, then the loop op
        for op in pre.ops:
            self.b.insert(op)
        with self.b.at(body):
            ys = []
            for v, t in zip(out, arg_types):
                if isinstance(v, bool):
                    v = self.const(v)
                ys.append(v)
            if "$ret" in flags and rv_types is not None:
                if rv is None:
                    ys += list(body.args[-len(rv_types):])
                else:
                    ys += [self.cast(v, t.dtype) for v, t in zip(rv, rv_types)]
            self.b.yield_(*ys)
        res_hints = arg_hints
        results = [Value(t, h, s.loc) for t, h in zip(arg_types, res_hints)]
        operands = (list(bounds) if kind == "for" else []) + inits
        attrs = {"var": s.var} if kind == "for" else {}
        op = Op(kind, operands, results, attrs, regions, s.loc)
        for n, v in zip(carried, results):
            if n in tokens:
                self.origins[v] = frozenset([tokens[n]])
        return False, types, rv_types, (op, carried)

    # ============================================================ expressions
    def value(self, e: A.Expr, env: Env) -> Value:
        return self.as_value(self.expr(e, env), e)

    def expr(self, e: A.Expr, env: Env):
        m = getattr(self, "expr_" + type(e).__name__, None)
        if m is None:
            self.err(DPUnsupportedError, f"{type(e).__name__} expressions are not supported", e)
        with self.b.located(e.loc):
            return m(e, env)

    def lookup(self, name: str, node, env: Env):
        b = env.names.get(name)
        if isinstance(b, Unassigned):
            self.err(DPNameError, f"name '{name}' may be unassigned here: {b.why}", node)
        if b is not None:
            return b
        c = self.ctx.const_value(name)
        if c is not None:
            return self.const(c, weak=True) if not isinstance(c, (Static, list)) else c
        if name in CONSTANTS:
            return self.const(CONSTANTS[name], weak=True)
        f = self.ctx.func_key(name)
        if f is not None:
            return FuncRef(f, name)
        if name in MODULE_ALIASES:
            return ModRef(name)
        if name in DTYPE_NAMES and name not in ("e",):
            return DtypeVal(DTYPE_NAMES[name])
        from dplang.dsl.builtins import BUILTINS
        if name in BUILTINS or name in ("range", "grad", "value_and_grad", "jvp", "vjp"):
            return FuncRef("builtin:" + name, name)
        self.err(DPNameError, f"unknown name '{name}'", node)

    def expr_Name(self, e, env):
        if e.id in ("True", "False"):
            return self.const(e.id == "True")
        if e.id == "None":
            return NoneVal()
        return self.lookup(e.id, e, env)

    def expr_Num(self, e, env):
        return self.const(e.value, weak=True)

    def expr_Bool(self, e, env):
        return self.const(bool(e.value))

    def expr_Str(self, e, env):
        return StrVal(e.value)

    def expr_Tuple(self, e, env):
        return [self.expr(x, env) for x in e.elts]

    def expr_List(self, e, env):
        vals = [self.value(x, env) for x in e.elts]
        if not vals:
            self.err(DPTypeError, "an empty list has no type", e)
        return self.make_array(vals, e)

    def make_array(self, vals, node) -> Value:
        dt = vals[0].type.dtype
        allweak = all(v in self.weak for v in vals)
        for v in vals[1:]:
            dt = T.promote(dt, v.type.dtype)
        vals = [self.cast(v, dt) for v in vals]
        out = self.prim("array", *vals, node=node)
        return out

    def expr_UnaryOp(self, e, env):
        if e.op == "-" and isinstance(e.operand, A.Num):
            return self.const(-e.operand.value, weak=True)
        v = self.value(e.operand, env)
        if e.op == "-":
            if v.type.dtype == "bool":
                self.err(DPTypeError, "cannot negate a bool (use not)", e)
            out = self.prim("neg", v, node=e)
            self.set_sym(out, T.dim_mul(self.sym_of(v), -1) if self.sym_of(v) is not None else None)
            if v in self.weak:
                self.weak.add(out)
            return out
        if e.op == "+":
            return v
        if e.op == "not":
            return self.prim("logical_not", self.to_bool(v, e.operand), node=e)
        self.err(DPUnsupportedError, f"unary operator {e.op}", e)

    BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv", "%": "mod",
              "**": "pow", "@": "matmul"}

    def expr_BinOp(self, e, env):
        x = self.value(e.left, env)
        y = self.value(e.right, env)
        return self.binop(e.op, x, y, e)

    def binop(self, op: str, x: Value, y: Value, node) -> Value:
        if op not in self.BINOPS:
            self.err(DPUnsupportedError, f"operator {op}", node)
        for v in (x, y):
            if not isinstance(v.type, (T.Scalar, T.Array)):
                self.err(DPTypeError, f"operator {op} needs numbers or arrays", node)
        if op == "@":
            x2, y2 = self.promote_pair(x, y, node)
            return self.prim("matmul", x2, y2, node=node)
        if op == "**" and isinstance(y.type, T.Scalar) and y.type.dtype in ("i64", "bool") \
                and x.type.dtype in ("i64", "bool") and y.owner is not None \
                and getattr(y.owner, "name", "") == "const" and y.owner.attrs["value"] < 0:
            self.err(DPTypeError, "integers to negative integer powers are not allowed (write "
                                  "a float base)", node)
        x2, y2 = self.promote_pair(x, y, node)
        out = self.prim(self.BINOPS[op], x2, y2, node=node)
        if x in self.weak and y in self.weak:
            self.weak.add(out)
        sx, sy = self.sym_of(x), self.sym_of(y)
        if sx is not None and sy is not None:
            if op == "+":
                self.set_sym(out, T.dim_add(sx, sy))
            elif op == "-":
                self.set_sym(out, T.dim_add(sx, sy, -1))
            elif op == "*":
                self.set_sym(out, T.dim_mul(sx, sy))
        return out

    CMPOPS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}

    def expr_Compare(self, e, env):
        left = self.value(e.left, env)
        result = None
        for k, (op, rnode) in enumerate(zip(e.ops, e.comparators)):
            right = self.value(rnode, env)
            if op not in self.CMPOPS:
                self.err(DPUnsupportedError, f"comparison {op}", e)
            a, b_ = self.promote_pair(left, right, e, bool_to_int=False)
            c = self.prim(self.CMPOPS[op], a, b_, node=e)
            result = c if result is None else self.prim("logical_and", result, c, node=e)
            left = right
        return result

    def pure_cheap(self, e: A.Expr) -> bool:
        """True when evaluating ``e`` cannot fail or cost much (so ``and``/``or`` need not
        short-circuit)."""
        if isinstance(e, (A.Name, A.Num, A.Bool)):
            return True
        if isinstance(e, A.Compare):
            return self.pure_cheap(e.left) and all(self.pure_cheap(c) for c in e.comparators)
        if isinstance(e, A.BinOp) and e.op in ("+", "-", "*"):
            return self.pure_cheap(e.left) and self.pure_cheap(e.right)
        if isinstance(e, A.UnaryOp):
            return self.pure_cheap(e.operand)
        if isinstance(e, A.BoolOp):
            return all(self.pure_cheap(v) for v in e.values)
        return False

    def expr_BoolOp(self, e, env):
        first = self.to_bool(self.value(e.values[0], env), e.values[0])
        rest = e.values[1:]
        if not rest:
            return first
        nxt = A.BoolOp(e.loc, e.op, rest) if len(rest) > 1 else rest[0]
        if self.pure_cheap(nxt):
            second = self.to_bool(self.value(nxt, env), nxt)
            return self.prim("logical_and" if e.op == "and" else "logical_or", first, second,
                             node=e)
        # short-circuit: an `if` op
        r1, r2 = Region(label="then"), Region(label="else")
        with self.b.at(r1):
            if e.op == "and":
                self.b.yield_(self.to_bool(self.value(nxt, env), nxt))
            else:
                self.b.yield_(self.const(True))
        with self.b.at(r2):
            if e.op == "and":
                self.b.yield_(self.const(False))
            else:
                self.b.yield_(self.to_bool(self.value(nxt, env), nxt))
        return self.b.op("if", [first], [T.BOOL], regions=[r1, r2]).result

    def expr_IfExp(self, e, env):
        c = self.to_bool(self.value(e.test, env), e.test)
        r1, r2 = Region(label="then"), Region(label="else")
        with self.b.at(r1):
            x = self.value(e.body, env)
        with self.b.at(r2):
            y = self.value(e.orelse, env)
        t = T.join(x.type, y.type)
        if t is None:
            self.err(DPTypeError, f"the branches of this conditional expression have types "
                                  f"{x.type} and {y.type}", e)
        if x.type.dtype != t.dtype:
            with self.b.at(r1):
                x = self.cast(x, t.dtype)
        if y.type.dtype != t.dtype:
            with self.b.at(r2):
                y = self.cast(y, t.dtype)
        with self.b.at(r1):
            self.b.yield_(x)
        with self.b.at(r2):
            self.b.yield_(y)
        out = self.b.op("if", [c], [t], regions=[r1, r2]).result
        if self.is_array(out):
            self.origins[out] = self.origin(x) | self.origin(y)
        return out

    def expr_Attribute(self, e, env):
        # module paths: np.exp, np.linalg.solve, math.pi
        path = []
        node = e
        while isinstance(node, A.Attribute):
            path.append(node.attr)
            node = node.value
        if isinstance(node, A.Name) and node.id in MODULE_ALIASES and node.id not in env.names:
            path.append(node.id)
            path.reverse()
            return self.module_attr(path, e)
        base = self.expr(e.value, env)
        if isinstance(base, ModRef):
            return self.module_attr(base.path.split(".") + [e.attr], e)
        if isinstance(base, list) or not isinstance(base, Value):
            self.err(DPTypeError, f"'.{e.attr}' is not available here", e)
        if e.attr == "T":
            if not self.is_array(base):
                return base
            return self.prim("transpose", base, node=e)
        if e.attr == "shape":
            nd = base.type.ndim
            out = []
            for ax in range(nd):
                d = self.prim("dim", base, axis=ax, node=e)
                self.set_sym(d, base.type.shape[ax])
                out.append(d)
            return out
        if e.attr in ("ndim",):
            return self.const(base.type.ndim)
        if e.attr == "size":
            out = self.const(1)
            for ax in range(base.type.ndim):
                out = self.prim("mul", out, self.prim("dim", base, axis=ax, node=e), node=e)
            return out
        from dplang.dsl.builtins import METHODS
        if e.attr in METHODS:
            return ("method", e.attr, base)
        self.err(DPTypeError, f"arrays have no attribute '{e.attr}' in dplang", e)

    def module_attr(self, path, node):
        from dplang.dsl.builtins import resolve_module_name
        r = resolve_module_name(path)
        if r is None:
            self.err(DPNameError, f"'{'.'.join(path)}' is not a dplang built-in", node)
        kind, val = r
        if kind == "const":
            return self.const(val, weak=True)
        if kind == "dtype":
            return DtypeVal(val)
        if kind == "module":
            return ModRef(".".join(path))
        return FuncRef("builtin:" + val, val)

    def expr_Subscript(self, e, env):
        base = self.expr(e.value, env)
        if isinstance(base, list):
            # tuple indexing with a constant
            if len(e.index) != 1:
                self.err(DPTypeError, "a tuple takes one index", e)
            k = self.static_int(e.index[0], env)
            if not -len(base) <= k < len(base):
                self.err(DPTypeError, f"tuple index {k} out of range (length {len(base)})",
                         e.index[0])
            return base[k]
        if isinstance(base, DtypeVal):
            self.err(DPTypeError, "array types are only allowed in annotations", e)
        base = self.as_value(base, e.value)
        if not self.is_array(base):
            self.err(DPTypeError, f"cannot index a scalar ({base.type})", e)
        spec, idx, hint = self.index_spec(e, base, env)
        return self.prim("getitem", base, *idx, node=e, index=spec, **hint)

    def index_spec(self, e: A.Subscript, arr: Value, env):
        items = e.index
        if len(items) == 1 and isinstance(items[0], A.Tuple):
            items = items[0].elts
        if len(items) > arr.type.ndim:
            self.err(DPShapeError, f"too many indices: {len(items)} for an array of rank "
                                   f"{arr.type.ndim} ({arr.type})", items[arr.type.ndim])
        spec, idx, shape = [], [], []
        known = True
        for ax, it in enumerate(items):
            dim = arr.type.shape[ax]
            if isinstance(it, A.Slice):
                parts = []
                vals = {}
                for nm, p in (("lo", it.lower), ("hi", it.upper), ("step", it.step)):
                    if p is None:
                        parts.append(False)
                        continue
                    v = self.value(p, env)
                    if not isinstance(v.type, T.Scalar) or v.type.dtype not in ("i64", "bool"):
                        self.err(DPTypeError, f"slice bounds must be integers, got {v.type}", p)
                    v = self.cast(v, "i64")
                    parts.append(True)
                    idx.append(v)
                    vals[nm] = v
                spec.append(("slice", *parts))
                shape.append(self.slice_size(dim, vals))
            else:
                v = self.value(it, env)
                if self.is_array(v):
                    self.err(DPUnsupportedError, "indexing with an array (fancy indexing) is not "
                                                 "supported; use integers and slices", it)
                if not isinstance(v.type, T.Scalar) or v.type.dtype not in ("i64", "bool"):
                    self.err(DPTypeError, f"an index must be an integer, got {v.type}", it)
                spec.append("i")
                idx.append(self.cast(v, "i64"))
        shape += list(arr.type.shape[len(items):])
        return tuple(spec), idx, {"_shape": tuple(shape)}

    def slice_size(self, dim, vals):
        if "step" in vals:
            st = self.sym_of(vals["step"])
            if st != 1:
                return None
        lo = self.sym_of(vals["lo"]) if "lo" in vals else 0
        hi = self.sym_of(vals["hi"]) if "hi" in vals else dim
        if lo is None or hi is None or dim is None:
            return None
        if isinstance(lo, int) and lo < 0:
            lo = T.dim_add(dim, lo)
        if isinstance(hi, int) and hi < 0:
            hi = T.dim_add(dim, hi)
        size = T.dim_add(hi, lo, -1)
        if isinstance(size, int) and size < 0:
            return 0
        return size

    def static_int(self, e: A.Expr, env) -> int:
        v = self.static(e, env)
        if isinstance(v, bool) or not isinstance(v, int):
            self.err(DPTypeError, "expected an integer constant here", e)
        return v

    def static(self, e: A.Expr, env):
        """Evaluate a compile-time constant (numbers, strings, tuples, module constants)."""
        if isinstance(e, A.Num):
            return e.value
        if isinstance(e, A.Str):
            return e.value
        if isinstance(e, A.Bool):
            return e.value
        if isinstance(e, A.Name):
            if e.id in ("True", "False"):
                return e.id == "True"
            if e.id == "None":
                return None
            if e.id not in env.names:
                c = self.ctx.const_value(e.id)
                if c is not None:
                    return c
        if isinstance(e, A.UnaryOp) and e.op == "-":
            v = self.static(e.operand, env)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v
        if isinstance(e, A.Tuple):
            return tuple(self.static(x, env) for x in e.elts)
        if isinstance(e, A.List):
            return tuple(self.static(x, env) for x in e.elts)
        self.err(DPTypeError, "this must be a compile-time constant", e)

    def expr_Slice(self, e, env):
        self.err(DPTypeError, "a slice is only allowed inside [...]", e)

    def expr_Call(self, e, env):
        from dplang.dsl.builtins import lower_builtin_call, lower_method_call, lower_transform
        callee = self.expr(e.func, env) if not (isinstance(e.func, A.Call)) else None
        if isinstance(e.func, A.Call):
            # grad(f)(x): the callee is a transformation
            fref = self.expr(e.func, env)
            if not isinstance(fref, FuncRef):
                self.err(DPTypeError, "this is not a function", e.func)
            return self.call_user(fref, e, env)
        if isinstance(callee, tuple) and callee and callee[0] == "method":
            return lower_method_call(self, callee[1], callee[2], e, env)
        if isinstance(callee, DtypeVal):
            if len(e.args) != 1 or e.keywords:
                self.err(DPTypeError, f"{callee.dtype}(x) takes one argument", e)
            v = self.value(e.args[0], env)
            return self.cast(v, callee.dtype)
        if not isinstance(callee, FuncRef):
            self.err(DPTypeError, "this is not a function", e.func)
        if callee.key.startswith("builtin:"):
            name = callee.key[len("builtin:"):]
            if name in ("grad", "value_and_grad", "jvp", "vjp"):
                return lower_transform(self, name, e, env)
            if name == "range":
                self.err(DPTypeError, "range() can only be used as the iterable of a for loop", e)
            return lower_builtin_call(self, name, e, env)
        return self.call_user(callee, e, env)

    def call_user(self, fref: FuncRef, e: A.Call, env):
        """A call of a user function (or of a transformed one)."""
        args = [self.expr(a, env) for a in e.args]
        for a, node in zip(args, e.args):
            if isinstance(a, (FuncRef, ModRef, StrVal, list)):
                self.as_value(a, node)
        info = self.ctx.signature(fref, [a.type for a in args], e)
        pnames = info.param_names
        # keywords
        if e.keywords:
            for kw in e.keywords:
                if kw.name not in pnames:
                    self.err(DPTypeError, f"{fref.name}() has no parameter '{kw.name}'", kw)
                k = pnames.index(kw.name)
                if k < len(args) or kw.name in [q.name for q in e.keywords[:e.keywords.index(kw)]]:
                    self.err(DPTypeError, f"{fref.name}() got parameter '{kw.name}' twice", kw)
            by_name = {kw.name: self.value(kw.value, env) for kw in e.keywords}
            for k in range(len(args), len(pnames)):
                if pnames[k] in by_name:
                    args.append(by_name[pnames[k]])
                else:
                    break
            if len(args) != len(args) + 0 or len(by_name) + len(e.args) != len(args):
                pass
        if len(args) != len(info.param_types):
            self.err(DPTypeError, f"{fref.name}() takes {len(info.param_types)} argument(s) but "
                                  f"{len(args)} were given", e)
        if info.param_types_needed:
            info = self.ctx.signature(fref, [a.type for a in args], e, final=True)
        conv = []
        bound: dict = {}
        for k, (a, pt) in enumerate(zip(args, info.param_types)):
            node = e.args[k] if k < len(e.args) else e
            pn = pnames[k]
            if isinstance(pt, T.Scalar) and not isinstance(a.type, T.Scalar):
                self.err(DPShapeError, f"argument '{pn}' of {fref.name}() must be a scalar "
                                       f"{pt}, got {a.type}", node)
            if isinstance(pt, T.Array):
                if not isinstance(a.type, T.Array) or a.type.ndim != pt.ndim:
                    self.err(DPShapeError, f"argument '{pn}' of {fref.name}() must be {pt}, got "
                                           f"{a.type}", node)
                for ax, (pd, ad) in enumerate(zip(pt.shape, a.type.shape)):
                    if isinstance(pd, int) and isinstance(ad, int) and pd != ad:
                        self.err(DPShapeError, f"argument '{pn}' of {fref.name}() must be {pt}, "
                                               f"got {a.type}", node)
                    if isinstance(pd, T.Sym) and len(pd.terms) == 1 and isinstance(ad, int):
                        nm = pd.terms[0][0]
                        if nm in bound and bound[nm][0] != ad:
                            self.err(DPShapeError, f"argument '{pn}' of {fref.name}(): dimension "
                                                   f"{nm} is {ad} but argument '{bound[nm][1]}' "
                                                   f"gives {nm} = {bound[nm][0]}", node)
                        bound.setdefault(nm, (ad, pn))
            if a.type.dtype != pt.dtype:
                if self.safe_cast(a, pt.dtype):
                    a = self.cast(a, pt.dtype)
                else:
                    self.err(DPTypeError, f"argument '{pn}' of {fref.name}() must be {pt}, got "
                                          f"{a.type}", node)
            conv.append(a)
        rtypes = info.result_types
        rtypes = [self.subst_dims(t, info.param_types, [c.type for c in conv]) for t in rtypes]
        attrs = {}
        if fref.transforms:
            attrs["transform"] = fref.transforms
        op = self.b.call(info.key, conv, rtypes, hints=[None] * len(rtypes), attrs=attrs)
        for r in op.results:
            if self.is_array(r):
                o = frozenset([fresh_root()])
                for k in info.alias_params:
                    if k < len(conv) and self.is_array(conv[k]):
                        o |= self.origin(conv[k])
                self.origins[r] = o
        if info.returns_tuple:
            return list(op.results)
        return op.results[0]

    def subst_dims(self, t, ptypes, atypes):
        """Result dims of a callee in terms of the caller's dims."""
        if not isinstance(t, T.Array):
            return t
        m = {}
        for pt, at in zip(ptypes, atypes):
            for pd, ad in zip(getattr(pt, "shape", ()), getattr(at, "shape", ())):
                if isinstance(pd, T.Sym) and len(pd.terms) == 1 and pd.terms[0][1] == 1 \
                        and pd.const == 0:
                    m.setdefault(pd.terms[0][0], ad)
        out = []
        for d in t.shape:
            if isinstance(d, T.Sym):
                acc = d.const
                for nm, c in d.terms:
                    if nm not in m:
                        acc = None
                        break
                    acc = T.dim_add(acc, T.dim_mul(m[nm], c))
                out.append(acc)
            else:
                out.append(d)
        return T.Array(t.dtype, tuple(out))
