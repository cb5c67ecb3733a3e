"""Bounds checks hoisted out of 2-D loop nests.

Generated functions keep Numba's bounds checks (an index out of range is a located
error, as in the interpreter), and a check costs a compare and a branch per index per
access: in a DP recursion that reads four cells and writes one, about half of the time.
In a nest that ``ir/wavefront.py`` accepts (``Nest``: two ``for`` loops with bounds
known before the nest, a straight-line body), every access of the form

    A[i + a, j + b]     (or any index that is ``i + a``, ``j + b`` or a value from
                         before the nest, on each axis)

runs at every iteration, so its indices sweep a rectangle whose corners are known
before the nest starts.  ``guard`` emits one test of those corners before the nest
(``-shape <= lowest`` and ``highest < shape`` on each axis, NumPy's rule for negative
indices) and returns the accesses it proved; codegen then emits them through the
runtime's unchecked accessors (``rt_at2``, ``rt_put2``, ``rt_inc2``, ...; LLVM inlines
them).  When the test fails, some access of the nest is out of range at an iteration the
nest certainly runs, so the function raises ``IndexError`` at once and the backend
replays the call on the interpreter, which reports the located error (``__init__``).

Tape pops in the nest (a reverse sweep) are proved the same way: the tape holds at least
as many entries as the nest pops.  Codegen uses this for wavefront nests and for
row-order nests that pop a tape or descend (reverse sweeps); ascending row-order nests
measured faster with Numba's own checks (docs/backend_cpu.md, "Hoisted bounds checks
and register carries").
"""
from __future__ import annotations

import re

from dplang.ir import types as T
from dplang.ir.core import Op, Value
from dplang.ir.wavefront import Nest, _inside, _offset

ACCESS_OPS = ("getitem", "setitem", "scatter_add")
MAX_NDIM = 3            # the runtime's unchecked accessors: rt_at1..3, rt_put1..3, rt_inc1..3


def bounds(gen, loop: Op, sign: int):
    """(lowest, highest, trip count) of ``loop``'s induction variable, as text (the trip
    count is positive exactly when the loop runs)."""
    lo, hi = (gen.literals.get(v) or gen.ref(v) for v in loop.operands[:2])
    if sign > 0:
        return lo, plus(hi, -1), minus(hi, lo)
    return plus(hi, 1), lo, minus(lo, hi)


def last_value(gen, loop: Op, sign: int) -> str:
    """The text of ``loop``'s last induction value (when it runs)."""
    lo, hi, _ = bounds(gen, loop, sign)
    return hi if sign > 0 else lo


def trip_count(gen, loop: Op, sign: int) -> str:
    return bounds(gen, loop, sign)[2]


def guard(gen, n: Nest, ind: int, push_slots=()) -> set:
    """Emit the hoisted range test of nest ``n`` (before its loops) and return the ops
    whose indices it proves in range; nothing when no access can be proved.  Pushes on
    the tapes ``push_slots`` are proved too: they go to the slots ``count + rank`` of a
    tape sized beforehand (the wavefront schedule's row-order slots)."""
    ob, ib = n.outer.regions[0], n.inner.regions[0]
    iv_i, iv_j = ob.args[0], ib.args[0]
    i_lo, i_hi, i_n = bounds(gen, n.outer, n.sign)
    j_lo, j_hi, j_n = bounds(gen, n.inner, n.sign)
    hoisted = set(n.hoisted)
    table_of = {a.op: a.table for a in n.accesses}

    def base_of(op: Op):
        """The array ``op`` accesses, as a value from before the nest (a table: the
        value the nest starts from)."""
        k = table_of.get(op)
        v = op.operands[0] if k is None else n.outer.operands[3 + k]
        return None if _inside(v, ob) else v

    def span(v: Value):
        a = _offset(v, iv_i)
        if a is not None:
            return plus(i_lo, a), plus(i_hi, a)
        b = _offset(v, iv_j)
        if b is not None:
            return plus(j_lo, b), plus(j_hi, b)
        if not _inside(v, ob) or v.owner in hoisted:
            s = _paren(gen.literals.get(v) or gen.ref(v))
            return s, s
        return None

    tests: list[str] = []
    proved = set()
    for op in ib.ops:
        if op.name not in ACCESS_OPS:
            continue
        index = op.attrs.get("index")
        if index is not None and any(e != "i" for e in index):
            continue
        arr = op.operands[0]
        idx = op.operands[1:] if op.name == "getitem" else op.operands[2:]
        if (not isinstance(arr.type, T.Array) or len(idx) != arr.type.ndim
                or arr.type.ndim > MAX_NDIM):
            continue
        if op.name == "getitem" and not isinstance(op.results[0].type, T.Scalar):
            continue
        base = base_of(op)
        if base is None:
            continue
        spans = [span(v) for v in idx]
        if any(s is None for s in spans):
            continue
        name = gen.ref(base)
        win = gen.windows.get(op)           # a table kept as two rows (window.py)
        for ax, (lo, hi) in enumerate(spans):
            size = f"{name}.shape[{ax}]"
            if win is not None:
                size = (win.names["rows"] if ax == 0
                        else win.names.get("cols") or f"{name}.shape[0]")
            nonneg = _int(lo) is not None and _int(lo) >= 0     # (a shape is never < 0)
            low = [] if nonneg else [f"{'0' if win is not None and ax == 0 else '-' + size} <= {lo}"]
            for t in low + [f"{hi} < {size}"]:
                if t not in tests:
                    tests.append(t)
        proved.add(op)
    pops: dict = {}
    for op in ib.ops:
        if op.name == "tape_pop" and isinstance(op.operands[0].type.elem, T.Scalar):
            pops[op.operands[0]] = pops.get(op.operands[0], 0) + 1
    pushes: dict = {}
    for op in ib.ops:
        if op.name == "tape_push" and op.operands[0] in push_slots:
            pushes[op.operands[0]] = pushes.get(op.operands[0], 0) + 1
    cells = f"{_paren(i_n)} * {_paren(j_n)}"
    for t, p in pops.items():
        tests.append(f"{cells}{f' * {p}' if p > 1 else ''} <= {gen.tape_count(t)}")
        tests.append(f"{gen.tape_count(t)} <= {gen.ref(t)}.shape[0]")
    for t, p in pushes.items():
        tests.append(f"{gen.tape_count(t)} + {cells}{f' * {p}' if p > 1 else ''} <= "
                     f"{gen.ref(t)}.shape[0]")
    proved.update(op for op in ib.ops if op.name in ("tape_pop", "tape_push")
                  and (op.operands[0] in pops or op.operands[0] in pushes))
    if not proved:
        return set()
    gen.line(ind, f"# index checks hoisted out of the nest (backends/cpu/ranges.py)", n.outer)
    gen.line(ind, f"if {i_n} > 0 and {j_n} > 0 and not (", n.outer)
    for k, t in enumerate(tests):
        gen.line(ind + 2, t + (" and" if k + 1 < len(tests) else "):"), n.outer)
    gen.line(ind + 1, "raise IndexError('index out of range')", n.outer)
    return proved


def _int(s: str):
    """The integer that text ``s`` spells (``-1``, or a literal as the code generator
    writes it, ``((-1))``), or None."""
    while s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    try:
        return int(s)
    except ValueError:
        return None


def _paren(s: str) -> str:
    return s if s.isidentifier() or _int(s) is not None else f"({s})"


def plus(s: str, c: int) -> str:
    """The text of ``s + c`` (folded when s is a literal)."""
    if _int(s) is not None:
        return str(_int(s) + c)
    m = re.fullmatch(r"([A-Za-z_]\w*) ([+-]) (\d+)", s)
    if m:                               # fold "t - 1" + c
        c += int(m.group(3)) * (1 if m.group(2) == "+" else -1)
        s = m.group(1)
    if c == 0:
        return s
    return f"{_paren(s)} + {c}" if c > 0 else f"{_paren(s)} - {-c}"


def minus(a: str, b: str) -> str:
    """The text of ``a - b``."""
    if _int(a) is not None and _int(b) is not None:
        return str(_int(a) - _int(b))
    if _int(b) == 0:
        return a
    return f"{_paren(a)} - {_paren(b)}"


# ------------------------------------------------------------------- register carries
class Carry:
    """A table cell that the inner loop's iteration adds into and the next iteration
    reads first (a reverse sweep's ``d_R[i, j - 1] += ...`` then ``d_R[i, j]``): the sum
    travels in a local instead of through memory.  ``add`` becomes ``c = value``,
    ``read`` becomes ``T[i, j] + c``, and after the inner loop the last iteration's
    value is added where the original put it.  Bit for bit the original arithmetic:
    no other access of the nest touches the cell in between, and ``c`` starts at -0.0
    (``x + -0.0`` is ``x``, signed zeros included)."""

    def __init__(self, read: Op, add: Op, sign: int):
        self.read, self.add, self.sign = read, add, sign


def carries(gen, n: Nest) -> list:
    """The register carries of row-order nest ``n`` (accesses proved in range only)."""
    out = []
    by_table: dict = {}
    for a in n.accesses:
        by_table.setdefault(a.table, []).append(a)
    s = n.sign
    for k, accs in by_table.items():
        row0 = [a for a in accs if a.offset[0] == 0]
        reads = [a for a in row0 if a.kind == "read"]
        adds = [a for a in row0 if a.kind == "add"]
        if (len(reads) != 1 or reads[0].offset != (0, 0) or len(adds) != 1
                or adds[0].offset != (0, s)):
            continue
        order = [a.op for a in accs]
        # the carry holds the add of this iteration for the next one: the read of the
        # cell must come first (an add before it would be read back at once; Gotoh's
        # three tables do that: d_M[i, j - 1] gets its add before d_M[i, j] is read)
        if order.index(adds[0].op) < order.index(reads[0].op):
            continue
        # other row-0 accesses: only writes of the cell itself, after its read
        rest = [a for a in row0 if a is not reads[0] and a is not adds[0]]
        if any(a.offset != (0, 0) or a.kind != "write"
               or order.index(a.op) < order.index(reads[0].op) for a in rest):
            continue
        if not (reads[0].op in gen.unchecked and adds[0].op in gen.unchecked
                and adds[0].op in gen.inplace):
            continue
        out.append(Carry(reads[0].op, adds[0].op, s))
    return out
