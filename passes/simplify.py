"""Simplification: dead-code elimination, common subexpressions, constant folding and
algebraic identities (``x * 0``, ``x * 1``, ``x + 0``, ``x - 0``, ``x / 1``, ``--x``).

``simplify_func(func)`` rewrites a function in place and returns it; ``run(program)``
returns a program whose functions are simplified copies (the input is not modified).
Ops with effects (``assert``) and loops or ifs that contain them are never removed.
Identities apply only when the result type equals the kept operand's type (no
broadcasting is lost), and ``x * 0`` is not folded for floats, since ``inf * 0`` is NaN
under IEEE: derivative code that multiplies by a zero tangent stays exact.
"""
from __future__ import annotations

import copy as _copy

import numpy as np

from dplang.ir import types as T
from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.ir.primitives import REGISTRY

PURE_STRUCTURAL = ("const", "undef", "call")

# Constructors of fresh arrays are not merged by CSE: two tables made alike (``M =
# full(..., -inf)``, ``X = full(..., -inf)`` in an affine-gap recursion) are written
# apart afterwards, and one value for both made the in-place analysis copy each table
# before its loop (and a copied table's nest gets no wavefront schedule).
FRESH = ("empty", "full", "zeros", "ones", "full_like", "zeros_like", "ones_like", "eye",
         "arange", "linspace", "array", "copy")


def _const(v: Value):
    o = v.owner
    if isinstance(o, Op) and o.name == "const":
        return o.attrs["value"]
    return None


def _is(v: Value, x) -> bool:
    c = _const(v)
    return c is not None and not isinstance(c, bool) and np.ndim(c) == 0 and c == x


def _has_effects(op: Op) -> bool:
    if op.name in ("assert", "return", "yield", "tape_push", "tape_pop"):
        return True
    return any(_has_effects(o) for r in op.regions for o in r.ops)


def _replace_uses(region: Region, old: Value, new: Value) -> None:
    for op in region.walk():
        op.operands = [new if x is old else x for x in op.operands]


class Simplifier:
    def __init__(self, func: Func):
        self.func = func
        self.changed = False

    def run(self) -> Func:
        for _ in range(10):
            self.changed = False
            self.fold_region(self.func.body, {})
            self.dce_region(self.func.body)
            if not self.changed:
                break
        return self.func

    # ----------------------------------------------------------- folding + CSE
    def fold_region(self, reg: Region, seen: dict) -> None:
        """Algebraic identities and CSE; ``seen`` maps op keys visible here to values."""
        seen = dict(seen)
        for op in list(reg.ops):
            for sub in op.regions:
                self.fold_region(sub, seen)
            if op.regions or op.name in ("yield", "return", "assert", "undef", "tape_new",
                                         "tape_push", "tape_pop"):
                continue
            rep = self.identity(op)
            if rep is None:
                rep = self.fold(op, reg)
            if rep is not None:
                self.replace(op, rep)
                continue
            key = self.key(op)
            if key is not None:
                if key in seen:
                    for a, b in zip(op.results, seen[key]):
                        self.replace_value(a, b)
                    self.changed = True
                    continue
                seen[key] = op.results

    def key(self, op: Op):
        if op.name == "call":
            return None
        p = REGISTRY.get(op.name)
        if p is None and op.name != "const":
            return None
        if op.name in FRESH:
            return None
        try:
            attrs = tuple(sorted((k, repr(v)) for k, v in op.attrs.items()))
        except Exception:
            return None
        types = tuple(str(r.type) for r in op.results)
        return (op.name, tuple(id(x) for x in op.operands), attrs, types)

    def identity(self, op: Op):
        """A value equal to ``op``'s single result, or None."""
        if len(op.results) != 1:
            return None
        r = op.results[0]
        a = op.operands
        same = lambda v: v.type == r.type  # noqa: E731
        if op.name == "add" and len(a) == 2:
            if _is(a[1], 0) and same(a[0]):
                return a[0]
            if _is(a[0], 0) and same(a[1]):
                return a[1]
        if op.name == "sub" and len(a) == 2 and _is(a[1], 0) and same(a[0]):
            return a[0]
        if op.name == "mul" and len(a) == 2:
            if _is(a[1], 1) and same(a[0]):
                return a[0]
            if _is(a[0], 1) and same(a[1]):
                return a[1]
        if op.name == "div" and len(a) == 2 and _is(a[1], 1) and same(a[0]):
            return a[0]
        # x ** 1 is x exactly (nan and inf included); the derivative of x ** 2 makes it
        if op.name == "pow" and len(a) == 2 and _is(a[1], 1) and same(a[0]):
            return a[0]
        if op.name == "neg":
            o = a[0].owner
            if isinstance(o, Op) and o.name == "neg" and same(o.operands[0]):
                return o.operands[0]
        if op.name == "cast" and a[0].type == r.type:
            return a[0]
        return None

    FOLDABLE = ("add", "sub", "mul", "neg", "floordiv", "mod", "maximum", "minimum", "lt",
                "le", "gt", "ge", "eq", "ne", "cast", "div", "pow", "sqrt", "exp", "log",
                "logical_and", "logical_or", "logical_not", "where", "abs")

    def fold(self, op: Op, reg: Region):
        """Constant folding of scalar arithmetic: a new ``const`` op, or None."""
        if op.name not in self.FOLDABLE or len(op.results) != 1 \
                or not isinstance(op.results[0].type, T.Scalar):
            return None
        vals = [_const(x) for x in op.operands]
        if any(v is None or np.ndim(v) != 0 for v in vals):
            return None
        r = op.results[0]
        try:
            with np.errstate(all="ignore"):
                out = REGISTRY[op.name].impl(*[np.asarray(v)[()] for v in vals],
                                             **{k: v for k, v in op.attrs.items()
                                                if not k.startswith("_")})
            val = {"f64": float, "f32": float, "i64": int, "bool": bool}[r.type.dtype](out)
        except Exception:
            return None
        c = Op("const", [], [Value(r.type, r.hint, r.loc)], {"value": val}, loc=op.loc)
        c.parent = reg
        reg.ops.insert(reg.ops.index(op), c)
        return c.results[0]

    def replace(self, op: Op, value: Value) -> None:
        self.replace_value(op.results[0], value)
        self.changed = True

    def replace_value(self, old: Value, new: Value) -> None:
        if new.hint is None and old.hint is not None:
            new.hint = old.hint
        _replace_uses(self.func.body, old, new)

    # ----------------------------------------------------------------- DCE
    def dce_region(self, reg: Region) -> None:
        used = set()
        for op in reg.walk():
            used.update(op.operands)
        # walk backwards so chains of dead ops go in one sweep
        keep = []
        for op in reversed(reg.ops):
            live = _has_effects(op) or any(r in used for r in op.results)
            if not live:
                self.changed = True
                continue
            keep.append(op)
            for sub in op.regions:
                self.dce_region(sub)
        keep.reverse()
        reg.ops = keep


def simplify_func(func: Func) -> Func:
    return Simplifier(func).run()


def clone_func(func: Func) -> Func:
    """A deep copy of a function (values and ops are fresh objects)."""
    memo = {}
    return _copy.deepcopy(func, memo)


def rewrite_funcs(program: Program, rewrite, wanted=None) -> Program:
    """A copy of ``program`` in which every function (for which ``wanted(func)`` holds)
    that ``rewrite`` changes on a clone -- it rewrites in place and returns whether it
    changed anything -- is that clone; the input is not modified."""
    prog = Program(dict(program.funcs), dict(program.exports), program.filename)
    if hasattr(program, "loader"):
        prog.loader = program.loader
    for key, f in program.funcs.items():
        if f is None or (wanted is not None and not wanted(f)):
            continue
        g = clone_func(f)
        if rewrite(g):
            prog.funcs[key] = g
    return prog


def run(program: Program) -> Program:
    prog = Program({}, dict(program.exports), program.filename)
    if hasattr(program, "loader"):
        prog.loader = program.loader
    for k, f in program.funcs.items():
        prog.funcs[k] = simplify_func(clone_func(f))
    return prog
