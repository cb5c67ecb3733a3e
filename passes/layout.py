"""Transpose sinking: reductions of a transposed matrix reduce the matrix itself.

``max(A.T + v, axis=1)`` reads ``A`` across its rows: the code either materialises the
transpose or reduces with strided loads.  Since

    f(X.T) = f(X).T                    for an elementwise f,
    X.T op v = (X op v[:, None]).T     for a vector v along the last axis,
    X.T op Y.T = (X op Y).T,
    r(X.T, axis=a) = r(X, axis=1 - a)  for a reduction r over one axis,
    m(X.T, axis=a) = m(X, axis=1 - a).T  for an axis map m (softmax, sargmax ...),

a ``transpose`` of a matrix can be moved down through elementwise ops and axis maps
until a reduction absorbs it by reducing over the other axis, or another transpose
cancels it.  The pass does this only when every path from the transpose ends that way
(otherwise the transpose would only move).  ``max(A.T + v, axis=1)`` becomes
``max(A + broadcast_to(v, A, axis=(1,)), axis=0)``: both operands are read in their own
layout, and the backends reduce over the leading axis along columns (the columns are
the vector lanes).  Reverse mode then never transposes either: the cotangent of ``A``
is in ``A``'s layout.

It runs at the start of the "ad" stage, before differentiation (passes/pipeline.py).
The values are the same up to the order of the additions in a reduction.
"""
from __future__ import annotations

from dplang.ir.analysis import uses as func_uses
from dplang.ir.builder import Builder
from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.ir.primitives import REGISTRY

# reductions over one axis (a transpose flips the axis)
REDUCTIONS = {"sum", "mean", "prod", "max", "min", "logsumexp", "norm", "argmax",
              "argmin", "smax", "smin"}
# maps along one axis (the result stays transposed)
AXIS_MAPS = {"softmax", "sparsemax", "sargmax", "sargmin", "onehot_argmax",
             "onehot_argmin"}
ELEMENTWISE_GROUPS = ("arithmetic", "math")


def _is_matrix_transpose(op) -> bool:
    return (isinstance(op, Op) and op.name == "transpose" and op.operands[0].type.ndim == 2
            and op.attrs.get("axes") in (None, (1, 0), [1, 0]))


def _one_axis(op: Op):
    """The axis (0 or 1) ``op`` works along on its 2-D operand 0, or None."""
    a = op.attrs.get("axis")
    if isinstance(a, (tuple, list)) and len(a) == 1:
        a = a[0]
    if isinstance(a, bool) or not isinstance(a, int) or not -2 <= a <= 1:
        return None
    return a % 2


def _elementwise(op: Op) -> bool:
    p = REGISTRY.get(op.name)
    return (p is not None and p.group in ELEMENTWISE_GROUPS and len(op.results) == 1
            and 1 <= len(op.operands) <= 2 and op.results[0].type.ndim == 2)


class _Sinker:
    def __init__(self, func: Func):
        self.func = func
        self.uses = func_uses(func)

    def sinkable(self, v: Value) -> bool:
        """Whether every use of the (transposed) matrix ``v`` absorbs or passes on the
        transpose until it is absorbed."""
        users = self.uses.get(v, [])
        if not users:
            return False
        for u in users:
            if u.name in REDUCTIONS or u.name in AXIS_MAPS:
                if u.operands[0] is not v or v in u.operands[1:] or _one_axis(u) is None:
                    return False
                if u.name in AXIS_MAPS and not self.sinkable(u.results[0]):
                    return False
            elif _is_matrix_transpose(u):
                continue
            elif _elementwise(u):
                for x in u.operands:
                    if x is v or x.type.ndim == 0:
                        continue
                    if x.type.ndim == 1 or _is_matrix_transpose(x.owner):
                        continue
                    return False
                if not self.sinkable(u.results[0]):
                    return False
            else:
                return False
        return True

    def run(self) -> bool:
        changed = False
        for op in list(self.func.walk()):
            if _is_matrix_transpose(op) and op.parent is not None and \
                    self.sinkable(op.results[0]):
                self.sink(op.results[0], op.operands[0])
                changed = True
        if changed:
            self.drop_dead_transposes()
        return changed

    def sink(self, v: Value, x: Value) -> None:
        """Rewrite the uses of ``v`` = transpose(``x``) (all sinkable)."""
        for u in list(self.uses.get(v, [])):
            if u.parent is None:
                continue
            if _is_matrix_transpose(u):
                self.replace(u.results[0], x)
                self.remove(u)
            elif u.name in REDUCTIONS:
                u.operands[0] = x
                u.attrs["axis"] = 1 - _one_axis(u)
                self.uses.setdefault(x, []).append(u)
            else:
                self.rebuild(u, v, x)

    def rebuild(self, u: Op, v: Value, x: Value) -> None:
        """``u`` (elementwise or axis map of v = x.T) as ``transpose(u'(x, ...))``."""
        region = u.parent
        tmp = Region()
        b = Builder(tmp, u.loc)
        attrs = {k: val for k, val in u.attrs.items()}
        if u.name in AXIS_MAPS:
            attrs["axis"] = 1 - _one_axis(u)
            operands = [x] + list(u.operands[1:])
        else:
            operands = []
            for y in u.operands:
                if y is v:
                    operands.append(x)
                elif y.type.ndim == 0:
                    operands.append(y)
                elif y.type.ndim == 1:
                    operands.append(b.prim("broadcast_to", y, x, axis=(1,), hint=y.hint))
                else:                                   # another transposed matrix
                    operands.append(y.owner.operands[0])
        r = b.prim(u.name, *operands, hint=u.results[0].hint, **attrs)
        t = b.prim("transpose", r, hint=u.results[0].hint)
        pos = region.ops.index(u)
        for o in tmp.ops:
            o.parent = region
        region.ops[pos:pos] = tmp.ops
        for o in tmp.ops:
            for y in o.operands:
                self.uses.setdefault(y, []).append(o)
        self.replace(u.results[0], t)
        self.remove(u)
        self.sink(t, r)

    def replace(self, old: Value, new: Value) -> None:
        for u in self.uses.pop(old, []):
            if u.parent is None:
                continue
            u.operands = [new if y is old else y for y in u.operands]
            self.uses.setdefault(new, []).append(u)

    def remove(self, op: Op) -> None:
        op.parent.ops.remove(op)
        op.parent = None

    def drop_dead_transposes(self) -> None:
        """Transposes left without uses (an operand ``Y.T`` now read as ``Y``)."""
        live = func_uses(self.func)
        for op in list(self.func.walk()):
            if _is_matrix_transpose(op) and op.parent is not None and \
                    not live.get(op.results[0]):
                self.remove(op)


def sink_transposes(func: Func) -> bool:
    """Sink the transposes of ``func`` (in place); returns whether anything changed."""
    return _Sinker(func).run()


def _has_transpose(func: Func) -> bool:
    return any(_is_matrix_transpose(op) for op in func.walk())


def run(program: Program) -> Program:
    """A copy of the program with transposes sunk in every function that has one."""
    from dplang.passes.simplify import rewrite_funcs
    if not any(f is not None and _has_transpose(f) for f in program.funcs.values()):
        return program
    return rewrite_funcs(program, sink_transposes, wanted=_has_transpose)
