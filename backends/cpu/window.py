"""Two-row windows for the adjoint tables of reverse sweeps.

The reverse sweep of a DP recursion (passes/ad_reverse.py) accumulates the adjoint of the
table in a table of the same shape, created as zeros, seeded with a few entries (the
adjoint of ``return R[n, m]``), then swept backwards:

    d_R = zeros_like(R);  d_R[n, m] += 1.0
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            a = d_R[i, j];  d_R[i, j] = 0.0
            d_R[i - 1, j] += a * w1;  d_R[i - 1, j - 1] += a * w0;  d_R[i, j - 1] += ...

Iteration i touches rows i and i - 1 only, nothing reads the table after the sweep, and
the entries of row i - 1 are all still zero (or seeded) when the sweep gets to row i.  So
two rows hold everything that is ever read: ``cur`` is row i, ``up`` row i - 1; after row
i the two change places and the new ``up`` is cleared.  For a 1024 x 1024 soft-DTW
gradient that is 16 KB instead of an 8 MB table to clear and stream through the cache:
28.1 -> 26.6 ms (docs/performance.md, session 11).  The arithmetic is the same, in the
same order: the same bits.

A table gets a window (``plan``) when, in a descending row-order nest (``gen.rows``):

* every access of the nest to it is at row ``i`` or ``i - 1`` (``ir/wavefront.py``'s
  ``Access`` offsets), and the nest's writes are in place; no table index of the nest
  may be negative (``Nest.wraps``: row -1 would be the table's last row);
* the table the nest starts from is ``zeros_like(x)`` or ``zeros(a, b)`` followed by
  in-place writes of scalars (the seeds), each value used once, by the next;
* each seed's row is provably the sweep's first row ``i0`` or ``i0 - 1`` (``_affine``:
  sums with integer constants, and ``maximum(x, c)`` where x is a dimension plus at
  least c: the reverse loop's start ``max(n + 1, 1) - 1`` is ``n``);
* nothing uses the table after the nest.

Index checks stay what they were: the nest's hoisted test (ranges.py) tests rows against
the table's row count and requires them non-negative (a negative row would wrap to the
end of the table, which the window does not hold), columns against the rows' length; a
seed's row is tested where it is written, its column by Numba's own check.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dplang.ir import types as T
from dplang.ir.core import Op, Value
from dplang.ir.wavefront import _const_int

WRITES = ("setitem", "scatter_add")


@dataclass
class Window:
    nest: object                # the reverse nest (ir/wavefront.Nest)
    slot: int                   # the table's carried slot
    base: Op                    # zeros_like / zeros: the table before its seeds
    seeds: list                 # in-place scalar writes between base and the nest
    seed_rows: dict             # seed op -> 0 (row i0) or -1 (row i0 - 1)
    rows_of: dict               # access op -> its row offset (0 or -1)
    names: dict = field(default_factory=dict)   # "cur", "up", "rows" (, "ring"): locals
    ring: int = 0               # > 0: a ring of this many rows instead (skew.py)


def plan(gen) -> dict:
    """``{op: Window}`` for the base, seeds and accesses of every window (codegen
    finds the nest's outer loop through ``Window.nest``)."""
    out: dict = {}
    for n in gen.rows.values():
        # (a row that may be negative wraps around to the table's last row, which two
        # rows do not hold: the hoisted test would refuse every call)
        if n.sign != -1 or n.wraps:
            continue
        for k in sorted(set(n.tables)):
            w = _window(gen, n, k)
            if w is not None:
                for op in [w.base, *w.seeds, *w.rows_of]:
                    out[op] = w
    return out


def _window(gen, n, k: int):
    accs = [a for a in n.accesses if a.table == k]
    if not accs or any(a.offset[0] not in (0, -1) for a in accs):
        return None
    if any(a.kind != "read" and a.op not in gen.inplace for a in accs):
        return None
    if gen.users.get(n.outer.results[k]):
        return None
    v = n.outer.operands[3 + k]
    t = v.type
    if not (isinstance(t, T.Array) and t.ndim == 2):
        return None
    seeds: list = []
    while True:
        if len(gen.users.get(v, ())) != 1:
            return None
        o = v.owner
        if not isinstance(o, Op):
            return None
        if o.name in WRITES:
            idx = o.operands[2:]
            index = o.attrs.get("index")
            if (o not in gen.inplace or len(idx) != 2 or not isinstance(o.operands[1].type, T.Scalar)
                    or any(isinstance(x.type, T.Array) for x in idx)
                    or (index is not None and any(e != "i" for e in index))):
                return None
            seeds.insert(0, o)
            v = o.operands[0]
            continue
        if o.name == "zeros_like" or (o.name == "zeros" and len(o.operands) == 2):
            base = o
            break
        return None
    i0 = _affine(n.outer.operands[0])
    if i0 is None:
        return None
    seed_rows = {}
    for s in seeds:
        r = _affine(s.operands[2])
        if r is None or r[0] is not i0[0] or r[1] - i0[1] not in (0, -1):
            return None
        seed_rows[s] = r[1] - i0[1]
    return Window(n, k, base, seeds, seed_rows, {a.op: a.offset[0] for a in accs})


def _affine(v: Value):
    """(leaf, c) with v == leaf + c (leaf None: a constant), or None."""
    c = _const_int(v)
    if c is not None:
        return None, c
    o = v.owner
    if isinstance(o, Op) and len(o.operands) == 2 and o.name in ("add", "sub"):
        x, y = (_affine(u) for u in o.operands)
        if x is None or y is None:
            return None
        if o.name == "add" and (x[0] is None or y[0] is None):
            return (x[0] if y[0] is None else y[0]), x[1] + y[1]
        if o.name == "sub" and y[0] is None:
            return x[0], x[1] - y[1]
        return None
    if isinstance(o, Op) and o.name == "maximum" and len(o.operands) == 2:
        x, y = (_affine(u) for u in o.operands)
        if x is None or y is None or y[0] is not None or x[0] is None:
            return None
        # max(dim + a, c) is dim + a when a >= c (a dimension is never negative)
        if _is_dim(x[0]) and x[1] >= y[1]:
            return x
        return None
    return v, 0


def _is_dim(v: Value) -> bool:
    o = v.owner
    return isinstance(o, Op) and o.name == "dim"


# ------------------------------------------------------------------------ emission
def emit_base(gen, w: Window, ind: int):
    """The two rows instead of the table (and the table's row count, for the checks)."""
    from dplang.backends.cpu.codegen import NPDT
    o = w.base
    r = o.results[0]
    dt = NPDT[r.type.dtype]
    if o.name == "zeros_like":
        x = gen.ref(o.operands[0])
        rows, cols = f"{x}.shape[0]", f"{x}.shape[1]"
    else:
        rows, cols = (gen.ref(d) for d in o.operands)
    cur = gen.ref(r)
    name = gen.ref(w.nest.outer.regions[0].args[1 + w.slot])
    if w.ring:
        # a ring of rows for a sweep that runs several rows at once (skew.py): row r at
        # r % ring, with a pitch that spreads the rows over the L1 cache's sets
        ring = gen.fresh(f"{cur}_ring")
        w.names = {"ring": ring, "rows": gen.fresh(f"{cur}_rows"),
                   "cols": gen.fresh(f"{cur}_cols"), "cur": None, "up": None}
        size = 4 if r.type.dtype == "f32" else 8
        gen.line(ind, f"# {name} keeps {w.ring} rows (backends/cpu/window.py, skew.py): the "
                      f"reverse sweep touches rows i_hi - {w.ring - 1} .. i_hi of a block", o)
        gen.line(ind, f"{w.names['rows']} = {rows}", o)
        gen.line(ind, f"{w.names['cols']} = {cols}", o)
        gen.line(ind, f"{ring} = np.zeros(({w.ring}, {gen.mod.helper('rt_pitch')}"
                      f"({w.names['cols']}, {size}) // {size}), {dt})", o)
        gen.line(ind, f"{cur} = {ring}", o)     # (the table's name: its carried slots)
        return
    w.names = {"cur": cur, "up": gen.fresh(f"{cur}_up"), "rows": gen.fresh(f"{cur}_rows")}
    gen.line(ind, f"# {name} keeps two rows (backends/cpu/window.py): the reverse "
                  f"sweep touches rows i and i - 1 only", o)
    gen.line(ind, f"{w.names['rows']} = {rows}", o)
    gen.line(ind, f"{cur} = np.zeros({cols}, {dt})", o)
    gen.line(ind, f"{w.names['up']} = np.zeros({cols}, {dt})", o)


def emit_seed(gen, w: Window, op: Op, ind: int):
    row, col = op.operands[2:]
    rows = w.names["rows"]
    r = gen.ref(row)
    gen.line(ind, f"if not (0 <= {r} < {rows}):", op)
    gen.line(ind + 1, "raise IndexError('index out of range')", op)
    sym = "=" if op.name == "setitem" else "+="
    val = gen.val(op.operands[1], op.operands[0].type.dtype)
    if w.ring:
        gen.line(ind, f"{w.names['ring']}[{r} % {w.ring}, {gen.ref(col)}] {sym} {val}", op)
        return
    buf = w.names["cur" if w.seed_rows[op] == 0 else "up"]
    gen.line(ind, f"{buf}[{gen.ref(col)}] {sym} {val}", op)



def row_buffer(w: Window, op: Op) -> str:
    """The local holding the row that access ``op`` touches."""
    return w.names["cur" if w.rows_of[op] == 0 else "up"]


def emit_turn(gen, w: Window, ind: int):
    """After row i: row i - 1 becomes the current row, the other one is cleared."""
    cur, up = w.names["cur"], w.names["up"]
    gen.line(ind, f"{cur}, {up} = {up}, {cur}", w.nest.outer)
    gen.line(ind, f"{up}[:] = 0.0", w.nest.outer)
