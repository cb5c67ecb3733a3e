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


def _has_effects(op: Op, nested: bool = False) -> bool:
    """Whether ``op`` must stay though its results are unused: an effect, or a
    terminator of its region (the terminators of regions nested in ``op`` do not
    count: a loop that computes nothing used goes)."""
    if op.name in ("assert", "return", "tape_push", "tape_pop") or \
            (op.name == "yield" and not nested):
        return True
    return any(_has_effects(o, True) for r in op.regions for o in r.ops)


def _replace_uses(region: Region, old: Value, new: Value) -> None:
    for op in region.walk():
        op.operands = [new if x is old else x for x in op.operands]


def insert_before(anchor: Op, ops: list) -> None:
    """Put ``ops`` (built elsewhere, e.g. in a scratch region) just before ``anchor``."""
    parent = anchor.parent
    at = parent.ops.index(anchor)
    for o in ops:
        o.parent = parent
    parent.ops[at:at] = ops


class Simplifier:
    def __init__(self, func: Func):
        self.func = func
        self.changed = False

    def run(self) -> Func:
        for _ in range(10):
            self.changed = False
            self.fold_region(self.func.body, {})
            self.dce_region(self.func.body)
            self.drop_write_only()
            self.drop_unchanged_carries()
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


    # ------------------------------------------------ write-only array chains
    def drop_write_only(self) -> None:
        """Remove the arrays that are only ever written: loop-carried arrays and ``if``
        results whose versions are never read, only updated (``setitem``,
        ``scatter_add``) and passed on (loop-carried, yielded).  Reverse mode makes
        them: a loop's reverse carries an *image* of its table (ad_reverse.py) and
        undoes its writes even when its derivative reads no entry (``R[i, 0] = R[i -
        1, 0] + D[i, 0]``); the image then starts from the forward sweep's table, which
        must stay alive, and the code generator copied the table before every later
        loop that writes it (and a copied table's nest lost its wavefront schedule).
        The slots go; the ordinary dead-code pass then removes the writes."""
        arrays, pred, real = self._array_flow()
        live = set()
        work = [v for v in arrays if v in real]
        while work:
            v = work.pop()
            if v in live:
                continue
            live.add(v)
            work.extend(pred.get(v, ()))
        dead = arrays - live
        if not dead:
            return
        for op in list(self.func.walk()):
            if op.name == "for" or op.name == "while":
                nb = 3 if op.name == "for" else 0
                body = op.regions[-1]
                off = 1 if op.name == "for" else 0
                drop = [k for k, r in enumerate(op.results)
                        if r in dead and body.args[k + off] in dead
                        and (op.name == "for" or op.regions[0].args[k] in dead)]
                if not drop:
                    continue
                keep = [k for k in range(len(op.results)) if k not in drop]
                op.operands = op.operands[:nb] + [op.operands[nb + k] for k in keep]
                op.results = [op.results[k] for k in keep]
                body.args = body.args[:off] + [body.args[k + off] for k in keep]
                y = body.terminator
                y.operands = [y.operands[k] for k in keep]
                if op.name == "while":
                    op.regions[0].args = [op.regions[0].args[k] for k in keep]
                self.changed = True
            elif op.name == "if":
                drop = [k for k, r in enumerate(op.results) if r in dead]
                if not drop:
                    continue
                keep = [k for k in range(len(op.results)) if k not in drop]
                op.results = [op.results[k] for k in keep]
                for reg in op.regions:
                    y = reg.terminator
                    y.operands = [y.operands[k] for k in keep]
                self.changed = True

    def drop_unchanged_carries(self) -> None:
        """A ``for`` that yields a carried value unchanged (``yield R`` for ``R``: the
        loop's body has no effect on it, as in a peeled iteration that writes nothing)
        returns its initial value: the slot goes and its uses take that value."""
        for op in list(self.func.walk()):
            if op.name != "for":
                continue
            body = op.regions[0]
            y = body.terminator
            keep = []
            for k, (arg, out) in enumerate(zip(body.args[1:], y.operands)):
                if out is arg:
                    init = op.operands[3 + k]
                    _replace_uses(body, arg, init)
                    self.replace_value(op.results[k], init)
                else:
                    keep.append(k)
            if len(keep) == len(op.results):
                continue
            op.operands = op.operands[:3] + [op.operands[3 + k] for k in keep]
            op.results = [op.results[k] for k in keep]
            body.args = body.args[:1] + [body.args[1 + k] for k in keep]
            y.operands = [y.operands[k] for k in keep]
            self.changed = True

    def _array_flow(self):
        """The array values of the function, ``pred`` (value -> the values that flow
        into it unchanged or updated: a ``setitem``'s array operand into its result, a
        loop's initial value and yielded value into its carried argument and result, a
        branch's yielded value into the ``if``'s result) and the values with a use that
        is none of these (a read, a call, a return...)."""
        arrays, pred, real = set(), {}, set()

        def flow(a, b):
            pred.setdefault(b, []).append(a)

        for op in self.func.walk():
            for v in op.results:
                if isinstance(v.type, T.Array):
                    arrays.add(v)
            for reg in op.regions:
                arrays.update(a for a in reg.args if isinstance(a.type, T.Array))
            parent = op.parent.parent if op.parent is not None else None
            for k, v in enumerate(op.operands):
                if not isinstance(v.type, T.Array):
                    continue
                if op.name in ("setitem", "scatter_add") and k == 0:
                    flow(v, op.results[0])
                elif op.name == "for" and k >= 3:
                    flow(v, op.regions[0].args[k - 2])
                    flow(v, op.results[k - 3])
                elif op.name == "while":
                    flow(v, op.regions[0].args[k])
                    flow(v, op.regions[1].args[k])
                    flow(v, op.results[k])
                elif op.name == "yield" and isinstance(parent, Op) and (
                        parent.name == "if" or parent.name == "for"
                        or (parent.name == "while" and op.parent is parent.regions[1])):
                    if parent.name == "if":
                        flow(v, parent.results[k])
                    elif parent.name == "for":
                        flow(v, parent.regions[0].args[k + 1])
                        flow(v, parent.results[k])
                    else:
                        flow(v, parent.regions[0].args[k])
                        flow(v, parent.regions[1].args[k])
                        flow(v, parent.results[k])
                else:
                    real.add(v)
        arrays.difference_update(self.func.body.args)
        real.update(self.func.body.args)
        return arrays, pred, real


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
