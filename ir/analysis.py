"""Use-def analyses over the IR (graphs built with networkx), and the in-place analysis that
lets code generators write ``A2 = setitem(A1, ...)`` into ``A1``'s buffer.

Helpers
-------
* ``def_use_graph(func)``: a ``networkx.DiGraph`` whose nodes are the ops of ``func``
  (nested ones included) and whose edges go from the op defining a value to each op
  using it (attr ``values``: the values carried by that edge).  A region argument is
  "defined" by the op holding the region (a loop's induction variable by the loop);
  function parameters have no defining op and give no edges.
* ``uses(func)``: ``{value: [ops using it as an operand, in program order]}``.
* ``call_graph(program)`` / ``callees_first(program)``; ``calls_of(program)``: the same
  edges as a plain dict.

networkx is imported by the functions that return graphs, not by this module: what the
code generator asks on every run (which functions a module needs, the in-place analysis)
does without it, so a warm start does not pay for its import (docs/design.md).

The in-place rule
-----------------
Let ``P`` be an op in region ``R`` and ``v`` a value.  ``v`` is *consumable at P* iff

(a) no op after ``P`` in ``R`` uses ``v`` (a use anywhere inside the nested regions of a
    later op counts), and
(b) ``v`` is defined in ``R`` -- by an op of ``R``, or as an argument of ``R`` when ``R`` is
    a ``for`` body or a ``while`` body (never a function body: parameters belong to the
    caller; never a ``while`` cond region: its arguments flow on into the body and the
    results) -- or ``R`` is a branch of an ``if`` op ``I`` and ``v`` is consumable at ``I``
    in ``I``'s region (recursively; the other branch never runs).

``inplace_setitems(func)`` is the set of ``setitem`` (and ``scatter_add``) ops whose array operand (operand 0)
is consumable at the op: they may write into that buffer and return it.

Values also flow into *slots* without an op computing them: slot ``k`` of a ``for`` is
{body arg ``k+1``, result ``k``}, entered by init operand ``3+k`` (at the loop) and by
operand ``k`` of the body's ``yield``; of a ``while``, {cond arg, body arg, result}
entered by init operand ``k`` and the body's yield; of an ``if``, {result ``k``} entered
by the yields of both branches.  A slot is *written* when one of its members is the
array operand of an in-place ``setitem``, or is handed without a copy (see below) into
another written slot (transitively; a fixpoint).  An entry hands its operand ``u``
over without copying when ``u`` is consumable at the entry op (for a loop's init, ``u``
must in addition not be used inside the loop's regions) and ``u`` is no other operand
of that same op (in ``carry (a = A, b = A)`` a written slot gets its own buffer).
Then:

* ``loop_init_copies(func)``: ``{(loop_op, operand_index)}`` -- the init operands
  (indices into ``loop_op.operands``: ``3+k`` for ``for``, ``k`` for ``while``) whose
  written slot needs a fresh copy because the operand is not handed over;
* ``yield_copies(func)``: ``{(terminator_op, operand_index)}`` -- likewise for the
  operands of loop-body and ``if``-branch ``yield``s (a loop body yielding an outer array
  or an ``if`` yielding an array still live after it), and for ``return`` operands that
  may share a parameter's buffer (a parameter returned as is, or passed through an
  unwritten loop) or repeat an earlier return operand, so that every result a caller
  receives is its own.

With these copies made, every member of a written slot owns its buffer, which is what
(b) assumes of values "defined in R".  Only array-typed values are considered.  The
analysis assumes that primitive results never share memory with their operands (the
interpreter copies one that may; code generators must do the same for primitives that
return views).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dplang.ir.core import Func, Op, Program, Region, Value

if TYPE_CHECKING:
    import networkx as nx
from dplang.ir import types as T


# ---------------------------------------------------------------------- use-def
def uses(func: Func) -> dict[Value, list[Op]]:
    """Every value used in ``func`` -> the ops using it as an operand, in program order
    (an op using a value twice appears once)."""
    out: dict[Value, list[Op]] = {}
    for op in func.walk():
        seen = set()
        for v in op.operands:
            if v in seen:
                continue
            seen.add(v)
            out.setdefault(v, []).append(op)
    return out


def defining_op(v: Value) -> Op | None:
    """The op defining ``v``: its owner op, or the op holding the region whose argument
    ``v`` is (None for function parameters)."""
    owner = v.owner
    if isinstance(owner, Op):
        return owner
    if isinstance(owner, Region) and isinstance(owner.parent, Op):
        return owner.parent
    return None


def def_use_graph(func: Func) -> "nx.DiGraph":
    """Nodes: the ops of ``func`` (attr ``index``: program order).  Edge ``d -> u``: ``u``
    uses a value defined by ``d`` (attr ``values``: the list of such values)."""
    import networkx as nx
    g = nx.DiGraph()
    for k, op in enumerate(func.walk()):
        g.add_node(op, index=k)
    for op in func.walk():
        for v in op.operands:
            d = defining_op(v)
            if d is None or d not in g:
                continue
            if g.has_edge(d, op):
                vals = g.edges[d, op]["values"]
                if all(w is not v for w in vals):
                    vals.append(v)
            else:
                g.add_edge(d, op, values=[v])
    return g


def calls_of(program: Program) -> dict[str, list[str]]:
    """``{function key: [keys of the functions it calls, in order of first call]}``."""
    out: dict[str, list[str]] = {}
    for name, f in program.funcs.items():
        callees = out.setdefault(name, [])
        for op in f.walk():
            if op.name == "call":
                callee = op.attrs.get("callee")
                callee = program.exports.get(callee, callee)
                if callee not in callees:
                    callees.append(callee)
    return out


def call_graph(program: Program) -> "nx.DiGraph":
    """Nodes: function keys of ``program``; edge ``f -> g``: ``f`` calls ``g``."""
    import networkx as nx
    g = nx.DiGraph()
    for name, callees in calls_of(program).items():
        g.add_node(name)
        for callee in callees:
            g.add_edge(name, callee)
    return g


def callees_first(program: Program) -> list[str]:
    """The functions in an order where every callee comes before its callers (a cycle,
    i.e. recursion, raises ``networkx.NetworkXUnfeasible``)."""
    import networkx as nx
    g = call_graph(program)
    return list(reversed(list(nx.topological_sort(g))))


# ---------------------------------------------------------------------- in place
@dataclass
class InPlace:
    """The results of the in-place analysis of one function."""
    inplace: set = field(default_factory=set)          # setitem ops
    init_copies: set = field(default_factory=set)      # (loop op, operand index)
    yield_copies: set = field(default_factory=set)     # (yield/return op, operand index)


def _is_array(v: Value) -> bool:
    return isinstance(v.type, T.Array)


class _Liveness:
    def __init__(self, func: Func):
        self.pos: dict[Op, int] = {}
        self.last_use: dict[Region, dict[Value, int]] = {}
        self.inner: dict[Op, set] = {}      # values used inside an op's regions
        self._scan(func.body)

    def _scan(self, region: Region) -> set:
        lu: dict[Value, int] = {}
        used_all: set = set()
        for idx, op in enumerate(region.ops):
            self.pos[op] = idx
            used = set(op.operands)
            if op.regions:
                inner: set = set()
                for reg in op.regions:
                    inner |= self._scan(reg)
                self.inner[op] = inner
                used |= inner
            for v in used:
                lu[v] = idx
            used_all |= used
        self.last_use[region] = lu
        return used_all

    def consumable(self, v: Value, op: Op, region: Region) -> bool:
        """Rule (a) and (b) of the module docstring."""
        for _ in range(100_000):
            if self.last_use.get(region, {}).get(v, -1) > self.pos.get(op, -1):
                return False
            owner = v.owner
            if isinstance(owner, Op) and owner.parent is region:
                return True
            if owner is region and _owns_args(region):
                return True
            parent = region.parent
            if isinstance(parent, Op) and parent.name == "if" and isinstance(parent.parent, Region):
                op, region = parent, parent.parent
                continue
            return False
        return False


def _owns_args(region: Region) -> bool:
    p = region.parent
    if not isinstance(p, Op):
        return False
    if p.name == "for":
        return len(p.regions) >= 1 and region is p.regions[0]
    if p.name == "while":
        return len(p.regions) >= 2 and region is p.regions[1]
    return False


def _slots(func: Func):
    """Yield ``(members, entries)`` per array slot; an entry is ``(op, operand index)``."""
    for op in func.walk():
        if op.name == "for" and len(op.regions) == 1:
            body = op.regions[0]
            y = body.terminator if body.terminator is not None and body.terminator.name == "yield" else None
            inits = op.operands[3:]
            for k, init in enumerate(inits):
                members = []
                if 1 + k < len(body.args):
                    members.append(body.args[1 + k])
                if k < len(op.results):
                    members.append(op.results[k])
                if not members or not any(_is_array(m) for m in members + [init]):
                    continue
                entries = [(op, 3 + k)]
                if y is not None and k < len(y.operands):
                    entries.append((y, k))
                yield members, entries
        elif op.name == "while" and len(op.regions) == 2:
            cond, body = op.regions
            y = body.terminator if body.terminator is not None and body.terminator.name == "yield" else None
            for k, init in enumerate(op.operands):
                members = [r.args[k] for r in (cond, body) if k < len(r.args)]
                if k < len(op.results):
                    members.append(op.results[k])
                if not members or not any(_is_array(m) for m in members + [init]):
                    continue
                entries = [(op, k)]
                if y is not None and k < len(y.operands):
                    entries.append((y, k))
                yield members, entries
        elif op.name == "if" and len(op.regions) == 2:
            for k, res in enumerate(op.results):
                if not _is_array(res):
                    continue
                entries = []
                for reg in op.regions:
                    y = reg.terminator
                    if y is not None and y.name == "yield" and k < len(y.operands):
                        entries.append((y, k))
                yield [res], entries


def analyze_inplace(func: Func) -> InPlace:
    """Run the whole in-place analysis of ``func`` (see the module docstring)."""
    live = _Liveness(func)
    res = InPlace()
    for op in func.walk():
        if op.name in WRITES and op.operands and _is_array(op.operands[0]) \
                and isinstance(op.parent, Region) \
                and live.consumable(op.operands[0], op, op.parent):
            res.inplace.add(op)

    def first_occurrence(op: Op, idx: int) -> bool:
        u = op.operands[idx]
        return next(j for j, w in enumerate(op.operands) if w is u) == idx

    def handed_over(op: Op, idx: int) -> bool:
        """The entry gives its operand's buffer to the slot (no copy needed)."""
        u = op.operands[idx]
        if sum(w is u for w in op.operands) > 1 or not isinstance(op.parent, Region):
            return False
        if not live.consumable(u, op, op.parent):
            return False
        if op.regions and u in live.inner.get(op, ()):
            return False
        return True

    slots = list(_slots(func))
    member_slot: dict[Value, int] = {}
    for s, (members, _) in enumerate(slots):
        for m in members:
            member_slot[m] = s
    written_direct = {member_slot[op.operands[0]] for op in res.inplace
                      if op.operands[0] in member_slot}
    # slot graph: s -> s2 when a member of s is handed over into s2
    # (kept as predecessor sets: a slot is written when a slot it reaches is)
    handed_from: dict[int, set[int]] = {s: set() for s in range(len(slots))}
    free: dict[tuple[Op, int], bool] = {}
    for s2, (_, entries) in enumerate(slots):
        for (op, idx) in entries:
            free[(op, idx)] = handed_over(op, idx)
            u = op.operands[idx]
            if free[(op, idx)] and u in member_slot:
                handed_from[s2].add(member_slot[u])
    written = set(written_direct)
    todo = list(written_direct)
    while todo:
        for s in handed_from[todo.pop()] - written:
            written.add(s)
            todo.append(s)
    for s, (_, entries) in enumerate(slots):
        if s not in written:
            continue
        for (op, idx) in entries:
            if free[(op, idx)] or not _is_array(op.operands[idx]):
                continue
            if op.name in ("for", "while"):
                res.init_copies.add((op, idx))
            else:
                res.yield_copies.add((op, idx))

    # returns: results belong to the caller, so none may share a parameter's buffer
    may_alias_param = {p for p in func.params if _is_array(p)}
    changed = True
    while changed:
        changed = False
        for s, (members, entries) in enumerate(slots):
            if all(m in may_alias_param for m in members):
                continue
            for (op, idx) in entries:
                u = op.operands[idx]
                copied = (op, idx) in res.init_copies or (op, idx) in res.yield_copies
                if u in may_alias_param and not copied:
                    may_alias_param.update(members)
                    changed = True
                    break
    ret = func.body.terminator
    if ret is not None and ret.name == "return":
        for idx, u in enumerate(ret.operands):
            if _is_array(u) and (u in may_alias_param or not first_occurrence(ret, idx)):
                res.yield_copies.add((ret, idx))
    return res


WRITES = ("setitem", "scatter_add")    # ops that may write into their operand 0's buffer


def inplace_setitems(func: Func) -> set[Op]:
    """The ``setitem`` ops that may write into their array operand's buffer."""
    return analyze_inplace(func).inplace


def loop_init_copies(func: Func) -> set[tuple[Op, int]]:
    """``(loop op, operand index)`` of the loop inits that must be copied on entry."""
    return analyze_inplace(func).init_copies


def yield_copies(func: Func) -> set[tuple[Op, int]]:
    """``(yield or return op, operand index)`` of the terminator operands to copy."""
    return analyze_inplace(func).yield_copies


__all__ = ["uses", "def_use_graph", "defining_op", "call_graph", "calls_of", "callees_first",
           "InPlace", "analyze_inplace", "inplace_setitems", "loop_init_copies",
           "yield_copies"]
