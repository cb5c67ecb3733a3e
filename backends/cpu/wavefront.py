"""Wavefront schedules on the CPU: 2-D DP nests visited by anti-diagonals.

``ir/wavefront.py`` says which nests may be visited by anti-diagonals ``d = i + j``; this
module chooses the ones worth it and emits them.  A DP cell that calls ``exp`` and
``log`` (soft-DTW's soft-min) waits about 50 ns for its left neighbour in row order;
the cells of one diagonal are independent, so the generated code computes a diagonal as

1. *gather*: the cell's reads (``R[i - 1, j - 1]``, ``D[i - 1, j - 1]``, ...) copied into
   contiguous buffers, one per read;
2. *compute*: a kernel function (``<name>_diagonal``) runs the cell's arithmetic over the
   buffers, with the runtime's vectorisable ``rt_exp``/``rt_log`` (LLVM vectorises the
   loop: no bounds checks, unit strides, nothing that aliases);
3. *scatter*: the results written back into the tables.

The table keeps its row-major layout, so everything else in the function is unchanged;
a table (or read array) whose row pitch is near a multiple of 4 KB is visited through
wider rows (the cells of a diagonal would otherwise all fall into one set of the L1
cache): a buffer of one strip's rows, filled before the strip and written back after it
(``rt_strip_buf``), or, for arrays reached at rows other than ``i + c``, a whole copy
(``rt_wave_pad``).
Tape pushes (the soft-min weights reverse mode keeps) are written at the slot they have
in row order, so the reverse sweep keeps its row order and pops them as before.  The
table is visited in strips of ``STRIP`` rows, each strip by diagonals, so that the rows
one diagonal touches stay in the cache and the TLB.  Nests without transcendental
arithmetic (hard DTW's ``min``) stay in row order, which is faster for them (contiguous
rows, about 3 ns a cell).  A descending nest (a DP from the far corner) runs the same
schedule mirrored, over ``(-i, -j)``.  ``DPLANG_WAVEFRONT=0`` turns the schedule off.
Decisions and measurements: docs/backend_cpu.md, "Wavefront schedules".
"""
from __future__ import annotations

import os

from dplang.ir import types as T
from dplang.ir.core import Op, Region, Value
from dplang.ir.printer import is_inlined_const
from dplang.ir.wavefront import Nest, _const_int, _offset, lowest, wavefront_nests

from dplang.backends.cpu import ranges
from dplang.backends.cpu.fusion import _is_two

# ops whose latency makes the row order slow (libm calls, the soft operators)
_EXPENSIVE = {"exp", "log", "expm1", "log1p", "tanh", "sigmoid", "softplus", "smaxn",
              "sminn", "pow", "sin", "cos", "tan", "sqrt"}


def enabled() -> bool:
    return os.environ.get("DPLANG_WAVEFRONT", "1") not in ("0", "", "no", "off")


def _defined_in(v: Value, region: Region) -> bool:
    o = v.owner
    return (isinstance(o, Op) and o.parent is region) or (o is region)


def plan(gen) -> dict:
    """{outer for op: Nest} of the nests of FuncGen ``gen``'s function that get a
    wavefront kernel."""
    if not enabled():
        return {}
    pushes: dict = {}
    for op in gen.func.walk():
        if op.name in ("tape_push", "tape_pop"):
            pushes.setdefault(op.operands[0], []).append(op)
    out = {}
    nests = wavefront_nests(gen.func)
    for n in nests:
        body = n.inner.regions[0]
        # a tape the nest pushes is pushed nowhere else (its slots are the nest's ranks)
        if any(o.parent is not body for t in n.pushes for o in pushes[t]
               if o.name == "tape_push"):
            continue
        if _emittable(gen, n) and _kernel_ok(gen, n):
            out[n.outer] = n
    gen.wave_tapes = _wave_tapes(out, nests, pushes)
    return out


def _wave_tapes(waves: dict, nests: list, uses: dict) -> dict:
    """{tape: the reverse nest that pops it} for tapes whose entries stay in the order
    the wavefront kernel computes them (no copy into row order): the tape is pushed once
    per cell, by one wavefront nest, with a value the kernel computes, and popped once per
    cell by one descending nest -- the nest reverse mode made of the forward one, so its
    cells are the forward's.  That nest reads each entry at its cell's wavefront slot
    (``rt_wave_rank``) instead of popping in order."""
    out = {}
    for f in waves.values():
        if f.sign != 1:         # (a mirrored nest's pushes keep their row-order slots)
            continue
        fbody = f.inner.regions[0]
        pushed = [op.operands[1] for op in fbody.ops if op.name == "tape_push"]
        # (in push order, not the set's: the generated source must not depend on
        # addresses, or the cache would miss in the next process)
        for t in dict.fromkeys(op.operands[0] for op in fbody.ops if op.name == "tape_push"):
            ops = uses[t]
            push = [o for o in ops if o.name == "tape_push"]
            pops = [o for o in ops if o.name == "tape_pop"]
            if len(push) != 1 or len(pops) != 1 or isinstance(t.type.elem, T.Array):
                continue
            v = push[0].operands[1]
            if pushed.count(v) != 1 or not (isinstance(v.owner, Op) and v.owner.parent is fbody
                                           and v.owner.name != "const"):
                continue
            back = [b for b in nests if b.sign == -1 and b.outer not in waves
                    and pops[0].parent is b.inner.regions[0]]
            if len(back) == 1:
                out[t] = back[0]
    return out


def _emittable(gen, n: Nest) -> bool:
    ana = gen.ana
    for loop in (n.outer, n.inner):
        if any((loop, k) in ana.init_copies for k in range(len(loop.operands))):
            return False
    for y in (n.outer.regions[0].terminator, n.inner.regions[0].terminator):
        if any((y, k) in ana.yield_copies for k in range(len(y.operands))):
            return False
    return all(a.op in gen.inplace for a in n.accesses if a.kind != "read")


def _kernel_ok(gen, n: Nest) -> bool:
    if not n.parallel or n.pops:
        return False
    body = n.inner.regions[0]
    invariant = _invariant_ops(n)
    stored = {op.operands[1] for op in body.ops if op.name in ("setitem", "scatter_add")}
    if any(op.name == "tape_push" and op.operands[1] in stored for op in body.ops):
        return False                # (pushes are copied per strip, stores per diagonal)
    expensive = False
    for op in body.ops[:-1]:
        if op.name == "assert":
            if op not in invariant:
                return False
        elif op.name == "tape_push":
            t = op.operands[0]
            if not (isinstance(t.owner, Op) and t.owner.operands):    # a growable tape
                return False
        elif op.name in _EXPENSIVE:
            if op.name in ("smaxn", "sminn") and op.attrs.get("reg", "entropy") != "entropy":
                continue
            if op.name == "pow" and _is_two(op.operands[1]):
                continue            # (x ** 2 is x * x: DTW's squared distances stay in rows)
            expensive = True
    return expensive


def _invariant_ops(n: Nest) -> list:
    """The inner body's ops that compute from values defined before the nest only (a
    soft operator's check of gamma): done once per diagonal, outside the kernel."""
    body = n.inner.regions[0]
    loop_vals = set(n.outer.regions[0].args)
    out, vals = [], set()
    for op in body.ops[:-1]:
        if op.name in ("getitem", "setitem", "scatter_add", "tape_push", "tape_pop"):
            continue
        if all(v in vals or not (_defined_in(v, body) or v in loop_vals)
               for v in op.operands):
            out.append(op)
            vals.update(op.results)
    return out


# ------------------------------------------------------------------------- emission
def emit(gen, n: Nest, ind: int):
    outer, inner = n.outer, n.inner
    ob, ib = outer.regions[0], inner.regions[0]
    ana = gen.ana
    oslots = [gen.ref(a) for a in ob.args[1:]]
    islots = [gen.ref(a) for a in ib.args[1:]]
    if n.sign > 0:
        gen.line(ind, f"# wavefront (backends/cpu/wavefront.py): strips of up to {STRIP} rows, "
                      f"each by anti-diagonals d = i + j, a vector kernel per diagonal", outer)
    else:
        gen.line(ind, f"# wavefront (backends/cpu/wavefront.py), mirrored: strips of up to "
                      f"{STRIP} rows from the last, each by anti-diagonals d = i + j from the "
                      f"highest, a vector kernel per diagonal", outer)
    gen.assign_slots(ind, outer, oslots, outer.operands[3:], ana.init_copies, 3, outer)
    for h in n.hoisted:
        _op(gen, h, ind)
    # one test of the nest's index ranges (backends/cpu/ranges.py): the gathers, the
    # scatters and the tape copies then index without checks
    proved = ranges.guard(gen, n, ind, push_slots=n.pushes) if gen.mod.boundscheck else set()
    gen.assign_slots(ind, inner, islots, inner.operands[3:], ana.init_copies, 3, inner)
    _Kernel(gen, n, proved).emit(ind, islots)
    oy = ob.terminator
    gen.assign_slots(ind, oy, oslots, oy.operands, ana.yield_copies, 0, oy)


# Rows per strip.  Visiting a whole row-major table by diagonals touches a new page per
# cell (TLB misses from n = 1024 on); strips of this many rows keep the rows a diagonal
# touches in the cache and the TLB, and are still long vectors.
STRIP = 64

# Working copies of tables with a row pitch near a multiple of 4 KB (rt_wave_pad).
PAD = True

# ... as buffers of one strip's rows where the nest's rows are i + constants
# (rt_strip_buf): the copies stay in L2 instead of streaming whole tables.
STRIP_BUFFERS = True

# The kernel is called for a whole number of vectors of this many cells (8 float64
# lanes with AVX-512, two vectors of 4 with AVX2): a diagonal's last cells otherwise go
# through LLVM's scalar remainder loop, which dominated small tables (soft-DTW value at
# n = 32: 21 -> 16 us, 9% at n = 512: docs/backend_cpu.md, "Whole vectors"; STRIP is a
# multiple of LANES, so a rounded count still fits the buffers).  The lanes past the
# diagonal compute on what the buffers hold (zeros, or an earlier diagonal's cells) and
# are never read; outputs written straight into a tape get LANES entries of slack at
# its end.  Nothing a kernel
# computes can raise (a nest with an assert that depends on the cell gets no kernel,
# and an integer exponent of a float is cast to float first: Numba raises for
# 0.0 ** -1 only).  0: off.
LANES = 8


def _classify(n: Nest):
    """The inner body's ops: index arithmetic (integers from i, j and invariants), loads,
    stores, compute (everything else), and the invariant ops (with their asserts)."""
    ib = n.inner.regions[0]
    iv_i, iv_j = n.outer.regions[0].args[0], ib.args[0]
    index, loads, stores, compute = [], [], [], []
    invariant = _invariant_ops(n)
    # (an invariant's result counts as an index input: a constant used only in this body,
    # as in `j - 3`, is defined there; the invariant ops run before the gather loop)
    idx_vals = {iv_i, iv_j} | {r for op in invariant for r in op.results}
    for op in ib.ops[:-1]:
        if op in invariant:
            continue
        if op.name == "getitem":
            loads.append(op)
        elif op.name in ("setitem", "scatter_add"):
            stores.append(op)
        elif (op.name != "tape_push" and op.results and all(
                isinstance(r.type, T.Scalar) and r.type.dtype in ("i64", "i32")
                for r in op.results)
              and all(v in idx_vals or not _defined_in(v, ib) for v in op.operands)):
            index.append(op)
            idx_vals.update(op.results)
        else:
            compute.append(op)
    return index, loads, stores, compute, invariant


def _needed(ops, roots):
    """The ops among ``ops`` that the values ``roots`` depend on, in order."""
    want = set(roots)
    keep = []
    for op in reversed(ops):
        if any(r in want for r in op.results):
            keep.append(op)
            want.update(op.operands)
    return list(reversed(keep))


class _Kernel:
    """One nest as strips x diagonals x (gather, kernel call, scatter), and its kernel."""

    def __init__(self, gen, n: Nest, proved=frozenset()):
        self.gen, self.n = gen, n
        self.proved = proved
        self.ib = ib = n.inner.regions[0]
        self.iv_i, self.iv_j = n.outer.regions[0].args[0], ib.args[0]
        self.index, self.loads, self.stores, self.compute, self.invariant = _classify(n)
        self.pushes = [op for op in self.compute if op.name == "tape_push"]
        self.compute = [op for op in self.compute if op.name != "tape_push"]
        # values the kernel returns: stored into tables, pushed on tapes
        self.outs = []
        for op in self.stores + self.pushes:
            v = op.operands[1]
            if v not in gen.literals and v not in self.outs:
                self.outs.append(v)
        roots = [v for op in self.compute for v in op.operands] + self.outs
        self.idx_in_kernel = _needed(self.index, roots)
        self.inv = []
        for op in self.idx_in_kernel + self.compute:
            for v in op.operands:
                if v in gen.literals or v is self.iv_i or v is self.iv_j or (
                        _defined_in(v, ib) and v.owner not in self.invariant):
                    continue
                if v not in self.inv:
                    self.inv.append(v)
        self.uses_ij = any(v in (self.iv_i, self.iv_j)
                           for op in self.idx_in_kernel + self.compute for v in op.operands)

    def emit(self, ind: int, islots):
        gen, n, ib = self.gen, self.n, self.ib
        inner = n.inner
        i, j = gen.ref(self.iv_i), gen.ref(self.iv_j)
        a, A = (gen.ref(v) for v in n.outer.operands[:2])
        b, B = (gen.ref(v) for v in inner.operands[:2])
        # buffers (a diagonal of a strip has at most STRIP cells): one per read, one per
        # value the kernel returns
        gbuf = {op: gen.fresh(gen.ref(op.results[0]) + "_g") for op in self.loads}
        obuf = {v: gen.fresh(gen.ref(v) + "_o") for v in self.outs}
        lanes = LANES
        for op in self.loads:               # (zeros: whole vectors read past the cells)
            gen.line(ind, f"{gbuf[op]} = np.{'zeros' if lanes else 'empty'}({STRIP}, "
                          f"{_npdt(op.results[0].type.dtype)})", op)
        pushed = [op.operands[1] for op in self.pushes]
        # values pushed on a tape kept in wavefront order: the kernel writes them into
        # the tape itself, at the nest's count of cells so far
        wave = {op.operands[1]: op.operands[0] for op in self.pushes
                if op.operands[0] in gen.wave_tapes}
        for v in self.outs:
            if v in wave:
                continue
            if v in pushed:                 # one row per diagonal of the strip
                cols = f"{B} - {b}" if n.sign > 0 else _minus(b, B)
                gen.line(ind, f"{obuf[v]} = np.empty(({STRIP} + {cols}, "
                              f"{STRIP + lanes}), {_npdt(v.type.dtype)})", v.owner)
            else:
                gen.line(ind, f"{obuf[v]} = np.empty({STRIP}, {_npdt(v.type.dtype)})",
                         v.owner)
        strip_rows = {v for v in self.outs if v in pushed and v not in wave}
        done = gen.fresh("done") if wave else None      # (a name only where it is used)
        if wave:
            gen.line(ind, f"{done} = 0", n.outer)
        r0, r1, c0, c1 = (gen.fresh(x) for x in ("row_lo", "row_hi", "col_lo", "col_hi"))
        if n.sign > 0:
            gen.line(ind, f"{r0}, {r1}, {c0}, {c1} = {a}, {A}, {b}, {B}", n.outer)
        else:   # (mirrored: the schedule runs over -i, -j, which ascend)
            gen.line(ind, "# a descending nest: the schedule below runs over (-i, -j)", n.outer)
            gen.line(ind, f"{r0}, {r1}, {c0}, {c1} = {_neg(a)}, {_neg(A)}, "
                          f"{_neg(b)}, {_neg(B)}", n.outer)
        total = f"max({r1} - {r0}, 0) * max({c1} - {c0}, 0)"    # the nest's cells
        strip = self.strip_tables(ind, total)
        pad = self.pad(ind, total, skip=strip)
        strips, s, s0, s1, d, lo, cnt, k = (gen.fresh(x) for x in (
            "strips", "s", "s_lo", "s_hi", "d", "lo", "cells", "k"))
        if wave:        # the reverse sweep reads the tapes with rt_wave_rank's strips
            h = gen.fresh("strip_h")
            gen.line(ind, f"{h} = {gen.mod.helper('rt_wave_strip')}({c1} - {c0})", n.outer)
            gen.line(ind, f"{strips} = (max({r1} - {r0}, 0) + {h} - 1) // {h}", n.outer)
        else:
            h = STRIP
            gen.line(ind, f"{strips} = (max({r1} - {r0}, 0) + {STRIP - 1}) // {STRIP}", n.outer)
        gen.line(ind, f"for {s} in range({strips}):", n.outer)
        gen.line(ind + 1, f"{s0} = {r0} + {s} * {h}", n.outer)
        gen.line(ind + 1, f"{s1} = min({s0} + {h}, {r1})", n.outer)
        for st in strip.values():           # the strip's rows into the strip buffers
            gen.line(ind + 1, f"if {st.copied}:", n.outer)
            if n.sign > 0:
                gen.line(ind + 2, f"{st.base} = {_plus(s0, st.lo)}", n.outer)
                gen.line(ind + 2, f"{gen.mod.helper('rt_strip_in')}({st.buf}, {st.name}, "
                                  f"{st.base}, {_plus(s1, st.hi)} - {st.base})", n.outer)
            else:                           # (rows -s_hi + 1 .. -s_lo, plus lo .. hi)
                gen.line(ind + 2, f"{st.base} = {_plus(f'1 - {s1}', st.lo)}", n.outer)
                gen.line(ind + 2, f"{gen.mod.helper('rt_strip_in')}({st.buf}, {st.name}, "
                                  f"{st.base}, {_plus(f'{s1} - {s0}', st.hi - st.lo)})",
                         n.outer)
        gen.line(ind + 1, f"for {d} in range({s0} + {c0}, {s1} + {c1} - 1):", n.outer)
        ind2 = ind + 2          # one diagonal: rows lo <= i < lo + cells, columns j = d - i
        gen.line(ind2, f"{lo} = max({s0}, {d} - {c1} + 1)", n.outer)
        gen.line(ind2, f"{cnt} = min({s1}, {d} - {c0} + 1) - {lo}", n.outer)
        for op in self.invariant:           # checks of invariants (gamma): per diagonal
            _op(gen, op, ind2)
        for op in self.compute:
            if op.name in ("smaxn", "sminn"):
                g = gen.val(op.operands[0], "f64")
                gen.line(ind2, f"{gen.mod.helper('rt_check_gamma')}({g})", op)
        gen.line(ind2, f"for {k} in range({cnt}):", inner)         # gather
        self.cell(ind2 + 1, i, j, lo, k, d)
        for op in _needed(self.index, [v for op in self.loads for v in op.operands]):
            _op(gen, op, ind2 + 1)
        at1, put1 = gen.mod.helper("rt_at1"), gen.mod.helper("rt_put1")
        for op in self.loads:       # (k < cells <= STRIP: the buffers need no check)
            idx = gen.index_text(op, op.operands[1:])
            x = gen.ref(op.operands[0])
            x = pad.get(x, x)               # (the working copy, if the nest has one)
            if x in strip:
                st = strip[x]
                gen.line(ind2 + 1, f"{put1}({gbuf[op]}, {k}, "
                                   f"{gen.unchecked_load(op.operands[0], st.idx(gen, op, 1), st.buf)})",
                         op)
            elif op in self.proved:
                gen.line(ind2 + 1, f"{put1}({gbuf[op]}, {k}, "
                                   f"{gen.unchecked_load(op.operands[0], idx, x)})", op)
            else:
                gen.line(ind2 + 1, f"{put1}({gbuf[op]}, {k}, {x}[{idx}])", op)
        where = [cnt, lo, d] if self.uses_ij else [cnt]
        given = where
        if lanes:                           # the kernel runs whole vectors (LANES)
            whole = gen.fresh("lanes")
            gen.line(ind2, f"{whole} = ({cnt} + {lanes - 1}) & {-lanes}", inner)
            given = [whole] + where[1:]
        args = ([gbuf[op] for op in self.loads]
                + [f"{gen.ref(wave[v])}[{gen.tape_count(wave[v])} + {done}:]" if v in wave
                   else f"{obuf[v]}[{d} - {s0} - {c0}, {lo} - {s0}:]" if v in strip_rows
                   else obuf[v] for v in self.outs] + given
                + [gen.ref(v) for v in self.inv])
        kname = gen.mod.globals.take(f"{gen.name}_diagonal")
        gen.line(ind2, f"{kname}({', '.join(args)})", inner)
        if wave:
            gen.line(ind2, f"{done} += {cnt}", inner)
        gen.line(ind2, f"for {k} in range({cnt}):", inner)         # scatter
        self.cell(ind2 + 1, i, j, lo, k, d)
        for op in _needed(self.index, [v for op in self.stores for v in op.operands[2:]]):
            _op(gen, op, ind2 + 1)
        for op in self.stores:
            x, v = op.operands[:2]
            sym = "=" if op.name == "setitem" else "+="
            idx = gen.index_text(op, op.operands[2:])
            val = gen.literals[v] if v in gen.literals else f"{at1}({obuf[v]}, {k})"
            name = pad.get(gen.ref(x), gen.ref(x))
            if name in strip:
                st = strip[name]
                gen.line(ind2 + 1, gen.unchecked_store(x, st.idx(gen, op, 2), sym, val, st.buf), op)
            elif op in self.proved:
                gen.line(ind2 + 1, gen.unchecked_store(x, idx, sym, val, name), op)
            else:
                gen.line(ind2 + 1, f"{name}[{idx}] {sym} {val}", op)
        y = ib.terminator
        gen.assign_slots(ind2, y, islots, y.operands, gen.ana.yield_copies, 0, y)
        for st in strip.values():           # the rows the strip wrote, back in the table
            if st.written is not None:
                w0, w1 = st.written
                first = _plus(s0, w0) if n.sign > 0 else _plus(f"1 - {s1}", w0)
                gen.line(ind + 1, f"if {st.copied}:", n.outer)
                gen.line(ind + 2, f"{gen.mod.helper('rt_strip_out')}({st.name}, {st.buf}, "
                                  f"{first}, {_plus(f'{s1} - {s0}', w1 - w0)}, "
                                  f"{st.base})", n.outer)
        # pushes go to the slots they have in row order, so the reverse sweep pops them in
        # its own order: after each strip, the strip's rows copied from the diagonals
        per_cell: dict = {}
        for op in self.pushes:
            per_cell[op.operands[0]] = per_cell.get(op.operands[0], 0) + 1
        copied = [op for op in self.pushes if op.operands[0] not in gen.wave_tapes]
        if copied:
            r, jj, rank = gen.fresh("r"), gen.fresh("jc"), gen.fresh("rank")
            gen.line(ind + 1, f"for {r} in range({s0}, {s1}):", inner)
            gen.line(ind + 2, f"for {jj} in range({c0}, {c1}):", inner)
            gen.line(ind + 3, f"{rank} = ({r} - {r0}) * ({c1} - {c0}) + ({jj} - {c0})", inner)
        seen: dict = {}
        for op in copied:
            t, v = op.operands
            p, q = per_cell[t], seen.get(t, 0)
            seen[t] = q + 1
            slot = f"{rank} * {p} + {q}" if p > 1 else rank
            if v in gen.literals:
                val = gen.literals[v]
            else:
                val = (f"{gen.mod.helper('rt_at2')}({obuf[v]}, {r} + {jj} - {s0} - {c0}, "
                       f"{r} - {s0})")
            if op in self.proved:
                gen.line(ind + 3, gen.unchecked_store(t, f"{gen.tape_count(t)} + {slot}", "=",
                                                      val), op)
            else:
                gen.line(ind + 3, f"{gen.ref(t)}[{gen.tape_count(t)} + {slot}] = {val}", op)
        for x in dict.fromkeys(gen.ref(op.operands[0]) for op in self.stores):
            if x in pad:                    # the padded copy's entries back in the table
                gen.line(ind, f"{gen.mod.helper('rt_wave_unpad')}({x}, {pad[x]})", n.outer)
        for t, p in per_cell.items():
            gen.line(ind, f"{gen.tape_count(t)} += {total}" + (f" * {p}" if p > 1 else ""),
                     n.outer)
        self.kernel(kname, gbuf, obuf, where, lo, cnt, k, d, i, j)

    def cell(self, ind: int, i: str, j: str, lo: str, k: str, d: str):
        """The indices of cell ``k`` of the diagonal that starts at row ``lo`` (the
        schedule's rows and columns: -i and -j in a mirrored nest)."""
        gen, inner = self.gen, self.n.inner
        if self.n.sign > 0:
            gen.line(ind, f"{i} = {lo} + {k}", inner)
            gen.line(ind, f"{j} = {d} - {i}", inner)
        else:
            gen.line(ind, f"{i} = -({lo} + {k})", inner)
            gen.line(ind, f"{j} = -{d} - {i}", inner)

    def strip_tables(self, ind: int, cells: str) -> dict:
        """{name: _Strip} for the 2-D arrays the nest reaches only at rows i + c (c a
        constant) through accesses the nest's hoisted test proved in range: where
        rt_wave_pad would copy one, the nest works on a buffer of a strip's rows with the
        padded pitch instead (rt_strip_buf), filled from the table before each strip and
        written back after it.  The rest keep rt_wave_pad's whole copies."""
        gen = self.gen
        if not (PAD and STRIP_BUFFERS):
            return {}
        offs: dict = {}
        for op in self.loads + self.stores:
            x = op.operands[0]
            name = gen.ref(x)
            if not (isinstance(x.type, T.Array) and x.type.ndim == 2):
                continue
            first = 1 if op.name == "getitem" else 2
            idx = op.operands[first:]
            a = _offset(idx[0], self.iv_i) if len(idx) == 2 else None
            index = op.attrs.get("index")
            if (a is None or op not in self.proved or not self._column_kept(op)
                    or (index is not None and any(e != "i" for e in index))
                    or any(isinstance(v.type, T.Array) for v in idx)):
                offs[name] = None
            elif offs.get(name, ()) is not None:
                offs.setdefault(name, []).append((a, op.name != "getitem"))
        out = {}
        names = [k for k, acc in offs.items() if acc is not None]
        if names:
            gen.line(ind, f"# {', '.join(names)}: through buffers of one strip's rows "
                          f"with wider rows where theirs are near a multiple of 4 KB apart "
                          f"(rt_strip_buf), else themselves", self.n.outer)
        for name, acc in offs.items():
            if acc is None:
                continue
            lo = min(a for a, _ in acc)
            hi = max(a for a, _ in acc)
            w = [a for a, wr in acc if wr]
            st = _Strip(name, gen.fresh(name + "_s"), gen.fresh(name + "_c"),
                        gen.fresh(name + "_b"), lo, hi, (min(w), max(w)) if w else None)
            gen.line(ind, f"{st.buf} = {gen.mod.helper('rt_strip_buf')}({name}, {cells}, "
                          f"{STRIP + hi - lo})", self.n.outer)   # rows i + lo .. i + hi of a strip
            gen.line(ind, f"{st.copied} = {st.buf}.ctypes.data != {name}.ctypes.data",
                     self.n.outer)
            gen.line(ind, f"{st.base} = 0", self.n.outer)
            out[name] = st
        return out

    def pad(self, ind: int, cells: str, skip=()) -> dict:
        """{name: name of its working copy} for the 2-D arrays the nest reads or writes
        (but those in ``skip``): rt_wave_pad gives the array itself, or a copy with a row
        pitch that spreads the rows of a strip over the L1 cache's sets (a 4 KB pitch
        puts them all in one)."""
        gen = self.gen
        if not PAD:
            return {}
        out = {}
        wraps = {gen.ref(op.operands[0]) for op in self.loads + self.stores
                 if not self._column_kept(op)}
        for op in self.loads + self.stores:
            x = op.operands[0]
            if (not (isinstance(x.type, T.Array) and x.type.ndim == 2) or gen.ref(x) in out
                    or gen.ref(x) in skip or gen.ref(x) in wraps):
                continue
            name = gen.fresh(gen.ref(x) + "_w")
            gen.line(ind, f"{name} = {gen.mod.helper('rt_wave_pad')}({gen.ref(x)}, {cells})",
                     self.n.outer)
            out[gen.ref(x)] = name
        return out

    def _column_kept(self, op) -> bool:
        """Whether access ``op`` (a 2-D one) provably has a column index of at least 0,
        which then means the same in a copy with wider rows (rt_wave_pad, rt_strip_buf):
        a negative index wraps around to the end of the row, in the copy to its padding.
        (Tables the nest writes never have negative indices: ir/wavefront.nest_of.)"""
        first = 1 if op.name == "getitem" else 2
        idx = op.operands[first:]
        if len(idx) != 2:
            return True
        b = _offset(idx[1], self.iv_j)
        low = lowest(self.n.inner, self.n.sign)
        if b is not None:
            return low is not None and low + b >= 0
        c = _const_int(idx[1])
        return c is not None and c >= 0

    def kernel(self, kname, gbuf, obuf, where, lo, cnt, k, d, i, j):
        """The kernel: its own function, without bounds checks (every index is a k <
        cells into its buffers), with the runtime's vectorisable exp and log."""
        gen, inner = self.gen, self.n.inner
        saved = gen.lines
        gen.lines = []
        gen.kernel_mode = True
        try:
            params = ([gbuf[op] for op in self.loads] + [obuf[v] for v in self.outs] + where
                      + [gen.ref(v) for v in self.inv])
            gen.line(0, "@jit_kernel", None)
            gen.line(0, f"def {kname}({', '.join(params)}):", inner)
            gen.line(1, f'"""One diagonal of {_doc(gen.func.name)}: its cells are SIMD lanes."""',
                     None)
            gen.line(1, f"{gen.mod.helper('rt_wide')}()", inner)
            gen.line(1, f"for {k} in range({cnt}):", inner)
            if self.uses_ij:
                self.cell(2, i, j, lo, k, d)
            for op in self.loads:
                gen.line(2, f"{gen.ref(op.results[0])} = {gbuf[op]}[{k}]", op)
            for op in self.idx_in_kernel + self.compute:
                _op(gen, op, 2)
            for v in self.outs:
                gen.line(2, f"{obuf[v]}[{k}] = {gen.ref(v)}", v.owner)
            gen.kernels.append(gen.lines)
        finally:
            gen.lines = saved
            gen.kernel_mode = False
        gen.mod.kernels = True


class _Strip:
    """A table visited through a strip buffer: ``buf`` (rt_strip_buf), ``copied`` (a
    bool: buf is not the table itself), ``base`` (the table's row in buf's row 0), the
    rows i + lo .. i + hi the nest reaches, and ``written`` ((lo, hi) of the rows of
    its writes, or None)."""

    def __init__(self, name, buf, copied, base, lo, hi, written):
        self.name, self.buf, self.copied, self.base = name, buf, copied, base
        self.lo, self.hi, self.written = lo, hi, written

    def idx(self, gen, op, first: int) -> str:
        """The buffer's index text for access ``op`` (its indices from operand
        ``first``): the table's row less ``base``, the same column."""
        row, col = op.operands[first:first + 2]
        return f"{gen.ref(row)} - {self.base}, {gen.ref(col)}"


def _minus(x: str, y: str) -> str:
    """The text of x - y."""
    c = ranges._int(y)
    return ranges.plus(x, -c) if c is not None else ranges.minus(x, y)


def _neg(x: str) -> str:
    """The text of -x."""
    c = ranges._int(x)
    return str(-c) if c is not None else f"-{ranges._paren(x)}"


def _plus(x: str, c: int) -> str:
    """The text of x + c."""
    return x if c == 0 else f"{x} + {c}" if c > 0 else f"{x} - {-c}"


def _doc(name: str) -> str:
    return name.replace('"', "'").replace("\\", "/")


def _op(gen, op, ind):
    if not is_inlined_const(op):
        gen.op(op, ind)


def _npdt(dt: str) -> str:
    from dplang.backends.cpu.codegen import NPDT
    return NPDT[dt]
