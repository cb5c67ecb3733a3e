"""Perfect, row-by-row DP nests: hoisted row values sunk, and loop interchange.

Sinking first.  A row's value computed before the inner loop, as programs hoist it,

    for i in range(1, n + 1):
        xi = x[i - 1]
        for j in range(1, m + 1):
            R[i, j] = (xi - y[j - 1]) ** 2 + min(...)

makes the nest imperfect, and imperfect nests get no schedule (ir/wavefront.py): 10.8
against 2.8 ms for a 512 x 512 soft-DTW.  Scalar ops of the outer body that depend on
the outer loop's variable move to the start of the inner body (they are recomputed per
cell: the same values) when they have no effect, read no array the loops carry (that
read must see the table before the row), and only the inner body uses them.  The move
is kept only where the nest then qualifies (``nest_of``) or is interchanged.  Moved ops
carry ``_per_row``: code that runs the nest row by row computes them once a row, at
the start of the inner loop as the program did (backends/cpu/codegen.py), and only a
schedule that needs them per cell (a wavefront kernel's lanes) recomputes them.

Then interchange: a 2-D table filled column by column is filled row by row.

A recursion written with the column loop outside,

    for j in range(1, m + 1):
        for i in range(1, n + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])

walks the table down its columns.  The schedules the backends have for DP tables (the
CPU backend's wavefront kernels, hoisted index checks, two-row adjoint tables, skewed
reverse sweeps; ``ir/wavefront.py``) are for nests whose outer loop walks the rows, so
this one ran cell after cell: a 512 x 512 soft-DTW took 11.1 ms (value) and 15.1 ms
(value + gradient) against 3.0 and 5.1 ms written row by row.  This pass swaps the two
loops when nothing the program can observe changes:

* a perfect nest: the outer body holds the inner ``for``, its ``yield`` and scalar ops
  that use neither induction variable; both loops step by 1, or both by -1; the inner
  loop's bounds are defined before the nest;
* the inner body is straight-line scalar code that reads arrays and writes scalars into
  the carried 2-D arrays (the tables) with ``setitem`` at ``[i + a, j + b]`` (``i`` the
  inner loop's variable, ``j`` the outer's, ``a, b`` constants; never at a negative
  index, which would wrap around); every carried value is a table; asserts test values
  from before the nest only (so the first failing cell cannot change);
* every dependence keeps its order: for two accesses of one table, at least one a
  write, the cell that comes first column by column also comes first row by row.

Then every cell computes the same operations on the same values, and the values are
the same to the bit (tests compare with ``DPLANG_INTERCHANGE=0``, which turns the pass
off).  No additions into tables (``scatter_add``) and no carried scalars: summed in
another order they would have other bits.  The pass runs at the start of the "ad"
stage (passes/pipeline.py), so reverse mode differentiates the row-by-row nest; its
reverse sweep then adds the terms of each adjoint entry in the other order, so
gradients agree with the written order's to rounding (1e-16 relative), not to the bit.
"""
from __future__ import annotations

import os

from dplang.ir import types as T
from dplang.ir.core import EFFECTS, Func, Op, Program
from dplang.ir.wavefront import _lex, lowest, nest_of, perfect_nest, table_offsets
from dplang.passes.simplify import insert_before, rewrite_funcs


def enabled() -> bool:
    return os.environ.get("DPLANG_INTERCHANGE", "1").strip().lower() not in (
        "0", "false", "no", "off")


def run(program: Program) -> Program:
    if not enabled():
        return program
    return rewrite_funcs(program, _rewrite,
                         wanted=lambda f: any(op.name == "for" for op in f.body.walk()))


def _rewrite(func: Func) -> bool:
    changed = False
    for op in list(func.body.walk()):
        if op.name != "for":
            continue
        sunk = _sink(op)
        if interchangeable(op):
            _swap(op, op.regions[0].ops[-2])
            changed = True
        elif sunk:
            if nest_of(op) is None:
                _unsink(op, sunk)           # (no schedule gained: keep the row's values)
            else:
                changed = True
    return changed


def _sink(outer: Op) -> list:
    """Move the outer body's scalar ops that depend on the outer loop's variable (a row's
    value the program hoisted, ``xi = x[i - 1]``) to the start of the inner body, so that
    the nest is perfect; returns them ([] when there are none or they cannot move: an
    effect, a read of an array the nest carries, a use outside the inner body)."""
    ob = outer.regions[0]
    ops = ob.ops
    if len(ops) < 3 or ops[-1].name != "yield" or ops[-2].name != "for":
        return []
    inner = ops[-2]
    carried = set(ob.args[1:])
    dep = {ob.args[0]}
    moving = []
    for op in ops[:-2]:
        if not any(v in dep for v in op.operands):
            continue
        if (op.regions or op.name in EFFECTS or op.name in ("call", "while", "if", "for")
                or not all(isinstance(r.type, T.Scalar) for r in op.results)
                or any(v in carried for v in op.operands)):
            return []
        moving.append(op)
        dep.update(op.results)
    if not moving:
        return []
    made = {r for op in moving for r in op.results}
    staying = [op for op in ops[:-2] if op not in moving]
    if any(v in made for op in staying + [ops[-1]] for v in op.operands) or \
            any(v in made for v in inner.operands):
        return []
    ib = inner.regions[0]
    for op in moving:
        ob.ops.remove(op)
        op.parent = ib
        op.attrs["_per_row"] = True
    ib.ops[0:0] = moving
    return moving


def _unsink(outer: Op, moved: list) -> None:
    ob = outer.regions[0]
    ib = ob.ops[-2].regions[0]
    for op in moved:
        ib.ops.remove(op)
        op.parent = ob
        del op.attrs["_per_row"]
    ob.ops[-2:-2] = moved


def _swap(outer: Op, inner: Op) -> None:
    """Exchange the loops' bounds and induction variables (and source locations): the
    body, which refers to the variables, is left as it is.  The outer body's scalar ops
    (they use neither variable: the inner bounds ``n + 1``) move before the nest."""
    ob, ib = outer.regions[0], inner.regions[0]
    hoisted = ob.ops[:-2]
    if hoisted:
        insert_before(outer, hoisted)
        del ob.ops[:-2]
    outer.operands[:3], inner.operands[:3] = inner.operands[:3], outer.operands[:3]
    j, i = ob.args[0], ib.args[0]
    ob.args[0], ib.args[0] = i, j
    i.owner, j.owner = ob, ib
    outer.loc, inner.loc = inner.loc, outer.loc
    yo, yi = ob.terminator, ib.terminator
    yo.loc, yi.loc = yi.loc, yo.loc


def interchangeable(outer: Op) -> bool:
    """Whether ``outer`` (a ``for``) heads a nest that fills its tables column by column
    and may run row by row instead (the module's conditions)."""
    got = perfect_nest(outer)
    if got is None:
        return False
    inner, sign = got
    ob = outer.regions[0]
    ib = inner.regions[0]
    iv_j, iv_i = ob.args[0], ib.args[0]
    slots = list(ib.args[1:])
    y = ib.terminator
    if not slots or y is None or len(y.operands) != len(slots):
        return False
    if not all(isinstance(s.type, T.Array) and s.type.ndim == 2 for s in slots):
        return False
    low_i, low_j = lowest(inner, sign), lowest(outer, sign)
    if low_i is None or low_j is None:
        return False
    chain = {a: k for k, a in enumerate(slots)}
    # values that change from cell to cell (an assert may test none of them)
    variant = {iv_i, iv_j, *slots}
    accesses = []
    for op in ib.ops[:-1]:
        if op.regions or op.name in ("call", "while", "if", "for", "return", "tape_new",
                                     "tape_push", "tape_pop", "scatter_add"):
            return False
        if any(v in variant for v in op.operands) or op.name == "getitem":
            variant.update(op.results)
        if op.name in ("getitem", "setitem"):
            arr = op.operands[0]
            if arr not in chain:
                if op.name != "getitem" or not isinstance(op.results[0].type, T.Scalar):
                    return False
                continue
            got = table_offsets(op, iv_i, iv_j)
            if got is None or low_i + got[0] < 0 or low_j + got[1] < 0:
                return False
            a, b = got
            k = chain[arr]
            if op.name == "getitem":
                if not isinstance(op.results[0].type, T.Scalar):
                    return False
                accesses.append((k, (a, b), False))
            else:
                if not isinstance(op.operands[1].type, T.Scalar):
                    return False
                accesses.append((k, (a, b), True))
                chain[op.results[0]] = k
            continue
        if op.name == "assert":
            if any(v in variant for v in op.operands):
                return False
            continue
        if not all(isinstance(v.type, T.Scalar) for v in [*op.operands, *op.results]):
            return False
    # each table's versions: read by its accesses, written by one setitem each, the last
    # one yielded in its slot
    for k, out in enumerate(y.operands):
        if chain.get(out) != k:
            return False
    written = set()
    for op in ib.ops:
        for n, v in enumerate(op.operands):
            if v in chain and not (op is y or (op.name in ("getitem", "setitem") and n == 0)):
                return False
        if op.name == "setitem":
            if op.operands[0] in written:
                return False
            written.add(op.operands[0])
    # dependences: column by column and row by row must order every pair alike
    for k1, o1, w1 in accesses:
        for k2, o2, w2 in accesses:
            if k1 != k2 or not (w1 or w2):
                continue
            d = (o1[0] - o2[0], o1[1] - o2[1])        # (rows, columns)
            if d != (0, 0) and _lex((d[1], d[0])) != _lex(d):
                return False
    return True
