"""Index-set splitting: loops that test for their first iteration lose the test.

A DP written the textbook way fills its borders with branches on the indices,

    R = zeros((n, m))
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                R[i, j] = D[i, j]
            elif i == 0:
                R[i, j] = D[i, j] + R[i, j - 1]
            elif j == 0:
                R[i, j] = D[i, j] + R[i - 1, j]
            else:
                R[i, j] = D[i, j] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])

A body with an ``if`` is no nest (ir/wavefront.py), so this ran cell after cell with a
branch per cell: a 512 x 512 soft-DTW took 8.8 ms (value) and 10.8 ms (value +
gradient), against 2.7 and 4.6 ms for the same recursion written with an ``inf``
border.  This pass rewrites it into

    row 0:     for j in range(m): ...            (the first row, its own branches gone)
    column 0:  for i in range(1, n): R[i, 0] = D[i, 0] + R[i - 1, 0]
    the rest:  for i in range(1, n): for j in range(1, m): R[i, j] = D[i, j] + min(...)

whose last nest is a perfect nest that gets the schedules of the padded form.  First
every ``if`` that the ranges of the loops around it decide is folded (``i > 0`` in a
loop from 1); then two rewrites, repeated while one applies (outer loops first):

* **Peeling** a loop's first iteration, when some ``if`` in its body (at any depth) has a
  condition that the loop's variable decides for every later iteration: ``i == 0``,
  ``i > 0``, ``i != lo``, ``i < n`` in a descending loop from ``n``, and ``and``, ``or``,
  ``not`` of such tests.  The first iteration runs before the loop as a loop of at most
  one iteration, ``range(start, min(start + 1, stop))`` (no ``if`` around it: reverse
  mode would tape whole tables through one), with the tests decided for it and its
  variable replaced by the start; the loop then starts one later with the tests decided
  for the rest.  The same operations run in the same order: the values are the same
  bits, always.  A loop outside every loop is peeled only for tests made in a loop
  within it (a test once an iteration of an outermost loop costs next to nothing).
* **Splitting off the first column** of a perfect 2-D nest (both loops ascending) whose
  inner body tests for the inner loop's first iteration: the column's cells run first,
  row after row, then the nest runs from the next column.  That reorders cells, so it
  is done only when no dependence changes order.  The cells are read and written as
  ``T[i + a, j + b]`` (``a, b`` constants; never a negative index, which would wrap
  around); a cell (i2, lo) of the column reads or writes a table entry that a cell
  (i1, j1 > lo) of the nest also touches (at least one of them writing or adding) only
  when the column offset of the first is at least 1 more than the second's, and it then
  ran after it when i2 > i1, that is when the row offset of the second exceeds the
  first's: such a pair forbids the split.  Two additions into one entry count, so
  every cell still computes the same operations on the same values: the same bits.

Gradients come from reverse mode on the rewritten loops (the pass runs at the start of
the "ad" stage, passes/pipeline.py), so they agree with the written form's to rounding.
``DPLANG_PEEL=0`` turns the pass off (the tests compare both).  Only tests against the
first iteration are decided; a test of the last (``j == m - 1``) stays a branch.
"""
from __future__ import annotations

import os

from dplang.ir import types as T
from dplang.ir.builder import Builder
from dplang.ir.core import EFFECTS, Op, Program, Region, Value
from dplang.ir.wavefront import _const_int, table_offsets
from dplang.passes.simplify import _replace_uses, insert_before, rewrite_funcs

# no peel or split of a loop whose body has more ops than this (each copies the body)
MAX_BODY = 2000
_FLIP = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le", "eq": "eq", "ne": "ne"}


def enabled() -> bool:
    return os.environ.get("DPLANG_PEEL", "1").strip().lower() not in (
        "0", "false", "no", "off")


def run(program: Program) -> Program:
    if not enabled():
        return program
    return rewrite_funcs(program, _rewrite, wanted=lambda f: any(
        op.name == "if" for op in f.body.walk()) and any(op.name == "for" for op in f.body.walk()))


def _rewrite(func) -> bool:
    # tests that the loops' ranges decide already (``i > 0`` in a loop from 1)
    changed = _fold(func.body, {})
    for _ in range(200):
        for op in func.body.walk():
            if op.name == "for" and _sign(op) is not None and (_peel(op) or _split(op)):
                changed = True
                break
        else:
            break
    return changed


def _sign(loop: Op):
    s = _const_int(loop.operands[2])
    return s if s in (1, -1) else None


# ---------------------------------------------------------------- deciding tests
class _Range:
    """What is known of a loop variable where a test runs: ``lo <= iv <= hi`` (None:
    unbounded), and ``iv REL start`` for the loop's start value (``rel``: "eq" for the
    first iteration, "gt"/"lt" for the later ones, "ge"/"le" for all)."""

    def __init__(self, loop: Op, which: str = "all"):
        start, stop = loop.operands[0], loop.operands[1]
        s, e, sign = _const_int(start), _const_int(stop), _sign(loop)
        self.start = start
        if which == "first":
            self.lo = self.hi = s
            self.rel = "eq"
            return
        later = 1 if which == "rest" else 0
        if sign > 0:
            self.lo = None if s is None else s + later
            self.hi = None if e is None else e - 1
            self.rel = "gt" if later else "ge"
        else:
            self.hi = None if s is None else s - later
            self.lo = None if e is None else e + 1
            self.rel = "lt" if later else "le"

    _SYMBOLIC = {   # truth of `iv OP start` given `iv REL start`
        "eq": {"eq": True, "ne": False, "lt": False, "le": True, "gt": False, "ge": True},
        "gt": {"eq": False, "ne": True, "lt": False, "le": False, "gt": True, "ge": True},
        "lt": {"eq": False, "ne": True, "lt": True, "le": True, "gt": False, "ge": False},
        "ge": {"lt": False, "ge": True},
        "le": {"gt": False, "le": True},
    }

    def compare(self, op: str, w: Value):
        """The truth of ``iv OP w`` wherever these facts hold, or None when it varies."""
        if self.start is not None and _same(w, self.start):
            got = self._SYMBOLIC[self.rel].get(op)
            if got is not None:
                return got
        c = _const_int(w)
        if c is None:
            return None
        lo, hi = self.lo, self.hi
        below = hi is not None and hi < c          # every iv < c
        above = lo is not None and lo > c          # every iv > c
        if op in ("eq", "ne"):
            if below or above:
                return op == "ne"
            return (op == "eq") if lo == hi == c else None
        if op == "lt":
            return True if below else False if lo is not None and lo >= c else None
        if op == "le":
            return True if hi is not None and hi <= c else False if above else None
        if op == "gt":
            return True if above else False if hi is not None and hi <= c else None
        return True if lo is not None and lo >= c else False if below else None   # ge


def _facts(op: Op) -> dict:
    """{loop variable: _Range} for the ``for`` loops around ``op``."""
    out = {}
    o = op.parent.parent if op.parent is not None else None
    while isinstance(o, Op):
        if o.name == "for" and _sign(o) is not None:
            out.setdefault(o.regions[0].args[0], _Range(o))
        o = o.parent.parent if o.parent is not None else None
    return out


def _decide(v: Value, facts: dict, depth: int = 0):
    """True/False when condition ``v`` has that value wherever ``facts`` hold, else None."""
    o = v.owner
    if not isinstance(o, Op) or depth > 20 or not isinstance(v.type, T.Scalar):
        return None
    if o.name == "const":
        c = o.attrs.get("value")
        return c if isinstance(c, bool) else None
    if o.name in _FLIP and len(o.operands) == 2:
        x, y = o.operands
        cx, cy = _const_int(x), _const_int(y)
        if cx is not None and cy is not None:           # (a test of the peeled iteration)
            return {"eq": cx == cy, "ne": cx != cy, "lt": cx < cy, "le": cx <= cy,
                    "gt": cx > cy, "ge": cx >= cy}[o.name]
        if isinstance(x.type, T.Scalar) and x.type.dtype == "i64" and _same(x, y):
            return o.name in ("eq", "le", "ge")
        for iv, w, name in ((x, y, o.name), (y, x, _FLIP[o.name])):
            if iv in facts and w is not iv:
                d = facts[iv].compare(name, w)
                if d is not None:
                    return d
        return None
    if o.name == "logical_not":
        d = _decide(o.operands[0], facts, depth + 1)
        return None if d is None else not d
    if o.name in ("logical_and", "logical_or"):
        ds = [_decide(x, facts, depth + 1) for x in o.operands]
        absorbing = o.name == "logical_or"              # True absorbs `or`, False `and`
        if absorbing in ds:
            return absorbing
        return (not absorbing) if all(d is not None for d in ds) else None
    if o.name == "if":                                  # a short-circuit `and` / `or`
        k = o.results.index(v)
        d = _decide(o.operands[0], facts, depth + 1)
        picks = [d] if d is not None else [True, False]
        got = {_decide(o.regions[0 if p else 1].terminator.operands[k], facts, depth + 1)
               for p in picks}
        return got.pop() if len(got) == 1 else None
    return None


def _same(a: Value, b: Value, depth: int = 0) -> bool:
    """Whether two values are equal by construction: the same value, equal integer
    constants, or the same scalar op of such operands (``n - 1`` computed twice)."""
    if a is b:
        return True
    ca, cb = _const_int(a), _const_int(b)
    if ca is not None or cb is not None:
        return ca == cb
    x, y = a.owner, b.owner
    return (depth < 4 and isinstance(x, Op) and isinstance(y, Op) and x.name == y.name
            and x.name in ("add", "sub", "mul", "dim") and not x.regions
            and len(x.results) == 1 and x.attrs == y.attrs
            and len(x.operands) == len(y.operands)
            and all(_same(p, q, depth + 1) for p, q in zip(x.operands, y.operands)))


def _inner_facts(op: Op, facts: dict) -> dict:
    """``facts`` inside the regions of ``op`` (a loop adds its variable's range)."""
    if op.name == "for" and _sign(op) is not None:
        facts = dict(facts)
        facts.setdefault(op.regions[0].args[0], _Range(op))
    return facts


def _decided_ifs(region: Region, facts: dict) -> list:
    """The ``if`` ops of ``region`` (any depth) that ``facts`` decide."""
    out = []
    for op in region.ops:
        if op.name == "if" and _decide(op.operands[0], facts) is not None:
            out.append(op)
        inner = _inner_facts(op, facts)
        for sub in op.regions:
            out += _decided_ifs(sub, inner)
    return out


def _fold(region: Region, facts: dict) -> bool:
    """Replace every ``if`` of ``region`` (at any depth) that ``facts`` decide by the ops
    of the branch taken; whether any was."""
    changed = again = False
    while True:
        again = False
        for op in region.ops:
            d = _decide(op.operands[0], facts) if op.name == "if" else None
            if d is None:
                continue
            taken = op.regions[0 if d else 1]
            at = region.ops.index(op)
            body = taken.ops[:-1]
            for b in body:
                b.parent = region
            region.ops[at:at + 1] = body
            for old, new in zip(op.results, taken.terminator.operands):
                _replace_uses(region, old, new)
            changed = again = True
            break
        if not again:
            break
    for op in region.ops:
        inner = _inner_facts(op, facts)
        for sub in op.regions:
            changed |= _fold(sub, inner)
    return changed


def _with(facts: dict, loop: Op, iv: Value, which: str) -> dict:
    out = dict(facts)
    out[iv] = _Range(loop, which)
    return out


# ---------------------------------------------------------------- cloning
def _clone_op(op: Op, vmap: dict) -> Op:
    regions = [_clone_region(r, vmap) for r in op.regions]
    results = [Value(r.type, r.hint, r.loc) for r in op.results]
    vmap.update(zip(op.results, results))
    return Op(op.name, [vmap.get(x, x) for x in op.operands], results, dict(op.attrs),
              regions, op.loc)


def _clone_region(region: Region, vmap: dict) -> Region:
    args = [Value(a.type, a.hint, a.loc) for a in region.args]
    vmap.update(zip(region.args, args))
    new = Region(args, [], region.label)
    for op in region.ops:
        new.append(_clone_op(op, vmap))
    return new


def _size(region: Region) -> int:
    return sum(1 for _ in region.walk())


def _next_start(b: Builder, loop: Op) -> Value:
    """``start + step`` (a constant when the start is one)."""
    s, step = _const_int(loop.operands[0]), _sign(loop)
    if s is not None:
        return b.const(s + step)
    return b.prim("add", loop.operands[0], b.const(step))


def _first_stop(b: Builder, loop: Op) -> Value:
    """The stop of a loop that runs ``loop``'s first iteration only, if it has one:
    ``min(start + 1, stop)`` (``max(start - 1, stop)`` descending)."""
    return b.prim("minimum" if _sign(loop) > 0 else "maximum", _next_start(b, loop),
                  loop.operands[1])


# ---------------------------------------------------------------- peeling
def _peel(loop: Op) -> bool:
    body = loop.regions[0]
    iv = body.args[0]
    outside = _facts(loop)
    rest = _with(outside, loop, iv, "rest")
    decided = _decided_ifs(body, rest)
    if not _in_loop(loop):
        # (a loop outside every loop is peeled for tests made once a cell of a loop in
        # it; a test made once an iteration of an outermost loop costs next to nothing)
        decided = [op for op in decided if _in_loop(op, body)]
    if not decided or _size(body) > MAX_BODY:
        return False
    # the first iteration: a loop of at most one iteration (the loop may be empty), its
    # tests decided and its variable replaced by the start
    first_body = _clone_region(body, {})
    _fold(first_body, _with(outside, loop, first_body.args[0], "first"))
    start = loop.operands[0]
    for op in first_body.walk():
        op.operands = [start if x is first_body.args[0] else x for x in op.operands]
    tmp = Region()
    b = Builder(tmp, loop.loc)
    init = list(loop.operands[3:])
    first = b.op("for", [start, _first_stop(b, loop), loop.operands[2], *init],
                 [v.type for v in init], regions=[first_body],
                 hints=[v.hint for v in init])
    # the rest: from the next iteration on, its tests decided too
    loop.operands[0] = _next_start(b, loop)
    loop.operands[3:] = first.results
    insert_before(loop, tmp.ops)
    _fold(body, rest)
    return True


def _in_loop(op: Op, within: Region | None = None) -> bool:
    """Whether a loop encloses ``op`` (below ``within``, when given)."""
    reg = op.parent
    while reg is not None and reg is not within:
        o = reg.parent
        if not isinstance(o, Op):
            return False
        if o.name in ("for", "while"):
            return True
        reg = o.parent
    return False


# ---------------------------------------------------------------- splitting a column
def _accesses(region: Region, iv_i: Value, iv_j: Value, slots: list):
    """``[(table, a, b, kind)]`` for the table accesses ``T[i + a, j + b]`` of region (any
    depth), or None when the region does something else with a table or is not
    straight-line scalar code with ``if``s."""
    chain = {s: k for k, s in enumerate(slots)}
    out = []

    def walk(reg: Region) -> bool:
        for op in reg.ops:
            if op.name == "yield":
                continue
            if op.name == "if":
                if not all(walk(r) for r in op.regions):
                    return False
                for k, res in enumerate(op.results):
                    ys = [r.terminator.operands[k] for r in op.regions]
                    tabs = {chain.get(y) for y in ys}
                    if tabs != {None}:
                        if len(tabs) != 1:
                            return False
                        chain[res] = tabs.pop()
                    elif not isinstance(res.type, T.Scalar):
                        return False
                continue
            if op.regions or op.name in EFFECTS or op.name in ("call", "return"):
                return False
            if op.name in ("getitem", "setitem", "scatter_add") and op.operands[0] in chain:
                arr = op.operands[0]
                got = table_offsets(op, iv_i, iv_j)
                if got is None:
                    return False
                a, b = got
                if op.name == "getitem":
                    if not isinstance(op.results[0].type, T.Scalar):
                        return False
                    out.append((chain[arr], a, b, "read"))
                else:
                    if not isinstance(op.operands[1].type, T.Scalar):
                        return False
                    out.append((chain[arr], a, b,
                                "write" if op.name == "setitem" else "add"))
                    chain[op.results[0]] = chain[arr]
                continue
            if any(v in chain for v in op.operands):
                return False
            if not all(isinstance(v.type, T.Scalar) for v in [*op.operands, *op.results]):
                if op.name != "getitem" or not isinstance(op.results[0].type, T.Scalar):
                    return False
        return True

    if not walk(region):
        return None
    y = region.terminator
    if y is None or [chain.get(v) for v in y.operands] != list(range(len(slots))):
        return None
    return out


def _nest_parts(outer: Op):
    """``(inner, hoisted, per_row)`` when ``outer`` (an ascending ``for``) holds scalar
    ops, an ascending inner ``for`` that carries exactly its values and the ``yield`` of
    the inner loop's results: ``hoisted``, the ops that do not depend on the outer
    variable, ``per_row`` those that do (a row's value the program hoisted, ``xi =
    x[i]``); None otherwise.  The ops may read no array the loops carry, and the inner
    loop's bounds may not depend on the row."""
    ob = outer.regions[0]
    ops = ob.ops
    if (len(ops) < 2 or ops[-1].name != "yield" or ops[-2].name != "for"
            or _sign(outer) != 1 or _sign(ops[-2]) != 1):
        return None
    inner = ops[-2]
    if list(inner.operands[3:]) != list(ob.args[1:]) or \
            list(ops[-1].operands) != list(inner.results):
        return None
    dep = {ob.args[0]}
    hoisted, per_row = [], []
    for op in ops[:-2]:
        if (op.regions or op.name in EFFECTS or op.name in ("call", "while", "if", "for")
                or not all(isinstance(r.type, T.Scalar) for r in op.results)
                or any(v in ob.args[1:] for v in op.operands)):
            return None
        if any(v in dep for v in op.operands):
            per_row.append(op)
            dep.update(op.results)
        else:
            hoisted.append(op)
    if any(v in dep for v in inner.operands[:3]):
        return None
    return inner, hoisted, per_row


def _split(outer: Op) -> bool:
    got = _nest_parts(outer)
    if got is None:
        return False
    inner, hoisted, per_row = got
    ib = inner.regions[0]
    outside = _inner_facts(outer, _facts(outer))
    if not _decided_ifs(ib, _with(outside, inner, ib.args[0], "rest")) \
            or _size(ib) > MAX_BODY:
        return False
    low_i, low_j = _const_int(outer.operands[0]), _const_int(inner.operands[0])
    slots = list(ib.args[1:])
    if low_i is None or low_j is None or not slots or not all(
            isinstance(s.type, T.Array) and s.type.ndim == 2 for s in slots):
        return False
    ob = outer.regions[0]
    iv_i = ob.args[0]
    # the column's body (j = lo; the row's values computed there too) and the rest's,
    # each with its tests decided
    vmap = {}
    row_vals = [_clone_op(op, vmap) for op in per_row]
    col = _clone_region(ib, vmap)
    for op in reversed(row_vals):
        op.parent = col
        col.ops.insert(0, op)
    _fold(col, _with(outside, inner, col.args[0], "first"))
    rest_body = _clone_region(ib, {})
    _fold(rest_body, _with(outside, inner, rest_body.args[0], "rest"))
    a_col = _accesses(col, iv_i, col.args[0], col.args[1:])
    a_rest = _accesses(rest_body, iv_i, rest_body.args[0], rest_body.args[1:])
    if a_col is None or a_rest is None:
        return False
    # no index may be negative (it would wrap around to the end of its axis)
    if any(low_i + a < 0 or low_j + b < 0 for _, a, b, _ in a_col) or any(
            low_i + a < 0 or low_j + 1 + b < 0 for _, a, b, _ in a_rest):
        return False
    for t1, a1, b1, k1 in a_col:
        for t2, a2, b2, k2 in a_rest:
            if t1 == t2 and not (k1 == "read" and k2 == "read") and b1 - b2 >= 1 \
                    and a2 - a1 >= 1:
                return False
    # the column: for i in range(lo_i, hi_i) { body at j = lo_j }, when lo_j < hi_j
    insert_before(outer, hoisted)
    ob.ops = [op for op in ob.ops if op not in hoisted]
    tmp = Region()
    b = Builder(tmp, outer.loc)
    init = list(outer.operands[3:])
    col_iv = Value(iv_i.type, iv_i.hint, iv_i.loc)
    subst = {iv_i: col_iv, col.args[0]: inner.operands[0]}
    for op in col.walk():
        op.operands = [subst.get(x, x) for x in op.operands]
    col.args = [col_iv, *col.args[1:]]
    for a in col.args:
        a.owner = col
    lo_i, hi_i, step = outer.operands[:3]
    stop = b.prim("where", b.prim("lt", inner.operands[0], inner.operands[1]), hi_i, lo_i)
    col_loop = b.op("for", [lo_i, stop, step, *init], [v.type for v in init],
                    regions=[col], hints=[v.hint for v in init], loc=inner.loc)
    # the rest: the nest from the next column
    inner.operands[0] = b.const(low_j + 1)
    outer.operands[3:] = col_loop.results
    insert_before(outer, tmp.ops)
    inner.regions[0] = rest_body
    rest_body.parent = inner
    return True
