"""Wavefront (anti-diagonal) schedules of 2-D loop nests.

A DP recursion such as DTW's

    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])

runs cell after cell, each waiting for its left neighbour.  Visited by anti-diagonals
(``d = i + j``), the cells of one diagonal depend only on earlier diagonals, so they can
be computed side by side (SIMD lanes on the CPU, threads on a GPU).  This module decides,
on the final IR of a function, which loop nests may be visited that way; the backends
decide which ones are worth it and emit the schedule.

A nest qualifies (``Nest``) when

* it is perfect: the outer body holds only the inner ``for``, scalar ops that do not
  depend on the outer induction variable (hoisted before the nest), and the ``yield`` of
  the inner loop's results; the outer loop's carried values are the inner loop's, in
  order; both loops step by 1, or both by -1 (a reverse sweep), with bounds known before
  the nest;
* the inner body is straight-line code: scalar primitives, ``getitem`` of scalars,
  ``setitem``/``scatter_add`` of scalars into carried 2-D arrays (the *tables*), tape
  pushes and pops of scalars, ``assert``;
* every access to a table indexes it as ``[i + a, j + b]`` with constant ``a, b``;
* (for a diagonal order) the skewed order keeps every dependence: for two accesses of
  one table, at least one a write, the iteration that comes first in the original order
  also comes first by diagonals (checked on the distance vectors).  A nest that fails
  this is still a ``Nest``, with ``keep_order`` set: row-order code generation (hoisted
  index checks, two-row adjoint tables, register carries) applies to it, reordering
  does not.  Two additions into one entry count (the same sum in another order has
  other bits): a reverse sweep that adds into ``d_R[i, j - 2]`` and ``d_R[i - 1, j]``
  keeps its order.

``parallel`` says more: no dependence joins two cells of one diagonal, and in the body
each table is read before it is written at the same offset, so a diagonal can be computed
as gather (all reads), compute, scatter (all writes).

``keep_order`` is also set when some table index may be negative, which wraps around to
the end of its axis (NumPy's rule) and is then no constant distance: ``R[i - 1, j - 1]``
at ``j = 0`` reads row i - 1's last entry, which rows compute before (i, 0) and
diagonals after it.  An index is provably non-negative when both loops start
(ascending) or stop (descending) at a constant and ``i + a``, ``j + b`` are at least 0
there (``wraps`` says which case it is).  ``keep_order`` implies ``parallel`` is False;
backends never reorder such a nest.

Tapes: a reverse sweep pops what the forward sweep pushed, in the reverse order of the
pushes.  A backend that reschedules a nest that pushes either reschedules the popping
nest the same way backwards, or (the CPU backend) writes each push at the slot it has in
the original order, ``rank(i, j) * pushes per cell + k``, so that the reverse sweep
keeps its own order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dplang.ir import types as T
from dplang.ir.core import EFFECTS, Func, Op, Region, Value


@dataclass
class Access:
    op: Op
    table: int                  # the inner loop's carried slot
    offset: tuple               # (a, b): the op touches table[i + a, j + b]
    kind: str                   # "read", "write" (setitem) or "add" (scatter_add)


@dataclass
class Nest:
    outer: Op
    inner: Op
    sign: int                   # +1: both loops ascend; -1: both descend
    hoisted: list               # outer-body ops computed once, before the nest
    tables: list                # carried slots written in the body
    accesses: list
    parallel: bool
    pushes: set = field(default_factory=set)     # tapes pushed in the body
    pops: set = field(default_factory=set)       # tapes popped in the body
    keep_order: bool = False    # run in the written order only (see the module's docs)
    wraps: bool = False         # some table index may be negative (implies keep_order)


_INDEX_OPS = ("add", "sub")


def _const_int(v: Value):
    o = v.owner
    if isinstance(o, Op) and o.name == "const":
        c = o.attrs.get("value")
        if isinstance(c, (int,)) and not isinstance(c, bool):
            return c
    return None


def _offset(v: Value, iv: Value):
    """c when v is iv + c (iv itself, iv + c, c + iv, iv - c); else None."""
    if v is iv:
        return 0
    o = v.owner
    if not (isinstance(o, Op) and o.name in _INDEX_OPS and len(o.operands) == 2):
        return None
    x, y = o.operands
    if x is iv and _const_int(y) is not None:
        return _const_int(y) if o.name == "add" else -_const_int(y)
    if o.name == "add" and y is iv and _const_int(x) is not None:
        return _const_int(x)
    return None


def table_offsets(op: Op, iv_i: Value, iv_j: Value):
    """``(a, b)`` when ``op`` (``getitem``, ``setitem`` or ``scatter_add`` of a 2-D
    array) indexes it at ``[iv_i + a, iv_j + b]`` with two integer indices and constant
    ``a, b``; else None."""
    arr = op.operands[0]
    idx = op.operands[1 if op.name == "getitem" else 2:]
    index = op.attrs.get("index")
    if (len(idx) != 2 or (index is not None and any(e != "i" for e in index))
            or not isinstance(arr.type, T.Array) or arr.type.ndim != 2):
        return None
    a, b = _offset(idx[0], iv_i), _offset(idx[1], iv_j)
    return None if a is None or b is None else (a, b)


def lowest(loop: Op, sign: int):
    """The least value of ``loop``'s induction variable when it runs (``sign``: its
    step), if the loop starts (ascending) or stops (descending) at a constant."""
    c = _const_int(loop.operands[0] if sign > 0 else loop.operands[1])
    return None if c is None else c if sign > 0 else c + 1


def _inside(v: Value, region: Region) -> bool:
    """Whether v is defined in region (or in a region nested in it)."""
    o = v.owner
    while o is not None:
        if o is region:
            return True
        if isinstance(o, Op):
            o = o.parent
        elif isinstance(o, Region):
            o = o.parent
        else:
            return False
    return False


def _step(op: Op):
    s = _const_int(op.operands[2])
    return s if s in (1, -1) else None


def _lex(a: tuple) -> int:
    for x in a:
        if x:
            return 1 if x > 0 else -1
    return 0


def _scalar(v: Value) -> bool:
    return isinstance(v.type, T.Scalar)


def perfect_nest(outer: Op):
    """``(inner for, step sign)`` when ``outer`` (a ``for``) heads a perfect 2-D nest: its
    body is scalar ops that use neither its variable nor its carried values (hoisted,
    computed once), the inner ``for`` and a ``yield`` of the inner loop's results; the
    inner loop's bounds come from before the nest or the hoisted ops, it carries exactly
    the outer loop's values, and both loops step by 1, or both by -1.  Else None."""
    if outer.name != "for" or not outer.regions:
        return None
    ob = outer.regions[0]
    ops = ob.ops
    if len(ops) < 2 or ops[-1].name != "yield" or ops[-2].name != "for":
        return None
    inner = ops[-2]
    sign = _step(outer)
    if sign is None or _step(inner) != sign or not inner.regions:
        return None
    hoisted = ops[:-2]
    for h in hoisted:
        if (h.regions or h.name in EFFECTS or h.name in ("call", "while", "if", "for")
                or not all(_scalar(r) for r in h.results)
                or any(v in ob.args for v in h.operands)):
            return None
    if any(_inside(v, ob) and v.owner not in hoisted for v in inner.operands[:3]):
        return None
    if list(inner.operands[3:]) != list(ob.args[1:]) or \
            list(ops[-1].operands) != list(inner.results):
        return None
    return inner, sign


def nest_of(outer: Op) -> Nest | None:
    """The wavefront description of ``outer`` (a ``for``), or None when it does not
    qualify (see the module's docstring)."""
    got = perfect_nest(outer)
    if got is None:
        return None
    inner, sign = got
    ob = outer.regions[0]
    hoisted = ob.ops[:-2]
    ib = inner.regions[0]
    iv_i, iv_j = ob.args[0], ib.args[0]
    slots = list(ib.args[1:])
    y = ib.terminator
    if y is None or len(y.operands) != len(slots):
        return None
    chain: dict = {a: k for k, a in enumerate(slots)}     # table version -> slot
    low_i, low_j = lowest(outer, sign), lowest(inner, sign)
    keep_order = wraps = False
    accesses, pushes, pops = [], set(), set()
    written = set()
    for op in ib.ops[:-1]:
        if op.regions or op.name in ("call", "while", "if", "for", "tape_new", "return"):
            return None
        if op.name in ("getitem", "setitem", "scatter_add"):
            arr = op.operands[0]
            if arr in chain:
                k = chain[arr]
                got = table_offsets(op, iv_i, iv_j)
                if got is None:
                    return None
                a, b = got
                if low_i is None or low_j is None or low_i + a < 0 or low_j + b < 0:
                    wraps = keep_order = True       # (an index that may wrap around)
                if op.name == "getitem":
                    if not _scalar(op.results[0]):
                        return None
                    accesses.append(Access(op, k, (a, b), "read"))
                else:
                    if not _scalar(op.operands[1]):
                        return None
                    accesses.append(Access(op, k, (a, b),
                                           "write" if op.name == "setitem" else "add"))
                    chain[op.results[0]] = k
                    written.add(k)
                continue
            if op.name != "getitem" or _inside(arr, ib) or not _scalar(op.results[0]):
                return None
            continue
        if op.name == "tape_push":
            if not _scalar(op.operands[1]):
                return None
            pushes.add(op.operands[0])
            continue
        if op.name == "tape_pop":
            if not _scalar(op.results[0]):
                return None
            pops.add(op.operands[0])
            continue
        if op.name == "assert" or op.name == "const":
            continue
        if not all(_scalar(r) for r in op.results) or not all(_scalar(v) for v in op.operands):
            return None
    # every carried value: a pass-through, or a table whose last version is yielded;
    # versions of a table are used only by its accesses (one writer each) and the yield
    users: dict = {}
    for op in ib.ops:
        for v in op.operands:
            if v in chain:
                users.setdefault(v, []).append(op)
    for v, us in users.items():
        writers = [u for u in us if u.name in ("setitem", "scatter_add") and u.operands[0] is v]
        if len(writers) > 1:
            return None
        for u in us:
            if u.name == "getitem" and u.operands[0] is v:
                continue
            if u in writers or u is y:
                continue
            return None
    for k, (arg, out) in enumerate(zip(slots, y.operands)):
        if out is arg:
            continue
        if chain.get(out) != k or k not in written:
            return None
        if not isinstance(arg.type, T.Array):
            return None
    # dependences: the skewed order must order every pair as the original does
    parallel = True
    for a in accesses:
        for b in accesses:
            if a is b or a.table != b.table or (a.kind == "read" and b.kind == "read"):
                continue
            d = tuple(sign * (x - z) for x, z in zip(a.offset, b.offset))
            if d == (0, 0):
                continue
            if _lex(d) != _lex((d[0] + d[1], d[0])):
                keep_order = True
            if d[0] + d[1] == 0:
                parallel = False
    # gather-compute-scatter: no read after a write at the same offset of its table
    seen_writes: set = set()
    for a in accesses:
        if a.kind == "read" and (a.table, a.offset) in seen_writes:
            parallel = False
        elif a.kind != "read":
            seen_writes.add((a.table, a.offset))
    return Nest(outer, inner, sign, list(hoisted), sorted(written), accesses,
                parallel and not keep_order, pushes, pops, keep_order, wraps)


def wavefront_nests(func: Func) -> list[Nest]:
    """The qualifying nests of ``func`` (outermost first)."""
    nests = []

    def walk(region: Region):
        for op in region.ops:
            n = nest_of(op) if op.name == "for" else None
            if n is not None:
                nests.append(n)
                continue
            for reg in op.regions:
                walk(reg)
    walk(func.body)
    return nests
