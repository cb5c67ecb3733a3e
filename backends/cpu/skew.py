"""Skewed row blocks: reverse sweeps that run several rows at once.

The reverse sweep of a soft-DTW-like recursion (passes/ad_reverse.py) runs in row order,
descending, and each cell waits for its right neighbour: the adjoint it adds into its
left neighbour travels in a register (ranges.py, ``Carry``), an add and a multiply a cell
(about 3 ns), and the row's cells form one chain.  The cells of one anti-diagonal do not
depend on each other, so ``ROWS`` consecutive rows can run side by side, each one column
behind the row below it:

    step t:   row i_hi      at column c1 - t
              row i_hi - 1  at column c1 - t + 1
              ...
              row i_hi - 3  at column c1 - t + 3

Row ``i_hi - q`` reaches column j one step after row ``i_hi - q + 1`` has done columns
``j`` and ``j + 1`` (the cells whose adjoints it reads), and within a step the rows go
from the bottom up.  That is the reverse of the wavefront order restricted to the block
(``ir/wavefront.py`` accepted the nest: every dependence is ordered the same way by
diagonals), so every addition happens in the same order as in row order: the same bits.
``ROWS`` chains are in flight instead of one, and the cells of a step lie on one
diagonal of the forward sweep, so the tapes it kept in wavefront order
(``wavefront._wave_tapes``) hold their entries in consecutive slots (``rt_wave_rank``
once a step, then ``- q``; the blocks lie within the forward's strips of
``rt_wave_strip(cols)`` rows for that).

A nest gets this schedule (``plan``) when it is a descending row-order nest that
``gen.rows`` keeps, pops only tapes kept in wavefront order for it, pushes nothing and
asserts nothing.  Each step with all the block's rows inside the columns runs ``ROWS``
copies of the cell's code, each with its own locals and its own carries (LLVM keeps
them in registers; a loop over the rows with the carries in an array ran slower than
row order), and the first and last ``ROWS - 1`` steps of a block, and blocks of fewer
rows, run one copy in a loop over the rows present with the carries in a small array.
A two-row adjoint table (``window.py``) becomes a ring of ``ROWS + 1`` rows (row ``r``
at ``r % (ROWS + 1)``), cleared after each block, with a pitch that keeps its rows in
different cache sets.

Measured (docs/performance.md, session 15): soft-DTW value + gradient at n = 512 and
1024.  ``ROWS = 0`` turns the schedule off (tests compare both).
"""
from __future__ import annotations

from dplang.ir import types as T

from dplang.backends.cpu import ranges

# Rows in flight (0: off).  Four chains of an add and a multiply (4 cycles each) keep
# the core as busy as the cell's loads and stores allow: soft-DTW value + gradient took
# the same time with 4 and 8 rows (5.0 and 23.9 ms at 512 and 1024; 2 rows 5.5 and 28,
# the row order 5.5-5.9 and 26-29), and 8 rows cost another 0.4 s of cold compile (the
# cell's code is emitted ROWS + 1 times).
ROWS = 4

# Steps ahead whose tape entries a steady step prefetches (rt_prefetch).  A block reads
# each line of a tape once, a diagonal's length (the strip height) further down every
# step: a stride the hardware prefetchers do not follow, so without the hint a 1024 x
# 1024 soft-DTW gradient took 28-33 ms depending on where the tapes sat; with it 25-26
# (8 and 32 steps measured alike).
AHEAD = 16


def plan(gen) -> dict:
    """{outer for: Nest} of the reverse nests of ``gen`` emitted as skewed row blocks;
    marks their two-row windows as rings."""
    if not ROWS:
        return {}
    out = {}
    for outer, n in gen.rows.items():
        if n.sign != -1 or n.pushes or not n.pops or n.keep_order:
            continue
        if not all(t in gen.wave_tapes and gen.wave_tapes[t].outer is outer for t in n.pops):
            continue
        body = n.inner.regions[0]
        if any(op.name == "assert" for op in body.ops):
            continue
        out[outer] = n
    for w in {id(w): w for w in gen.windows.values()}.values():
        if w.nest.outer in out:
            w.ring = ROWS + 1
    return out


def emit(gen, n, ind: int):
    """The skewed schedule of nest ``n`` (after emit_for's hoisted ops, index test,
    carries and tape counts)."""
    K = ROWS
    ana = gen.ana
    outer, inner = n.outer, n.inner
    ob, ib = outer.regions[0], inner.regions[0]
    r0, r1, _ = ranges.bounds(gen, outer, -1)       # lowest and highest row
    c0, c1, _ = ranges.bounds(gen, inner, -1)       # lowest and highest column
    carries = gen.carry_loops.get(inner, [])
    wins = gen.window_turns.get(outer, [])
    h_ = gen.mod.helper
    f = gen.fresh
    cols, h, strips, s, s_lo, s_hi, b, b_lo, b_hi, kk, t, q, q0, q1, base = (f(x) for x in (
        "cols", "strip_h", "strips", "s", "s_lo", "s_hi", "b", "b_lo", "b_hi", "kk", "t",
        "q", "q0", "q1", "base"))
    gen.line(ind, f"# skewed rows (backends/cpu/skew.py): blocks of {K} rows, row i_hi - q "
                  f"q columns behind row i_hi, so the {K} cells of a step lie on one "
                  f"anti-diagonal", outer)
    oslots = [gen.ref(a) for a in ob.args[1:]]
    islots = [gen.ref(a) for a in ib.args[1:]]
    gen.assign_slots(ind, outer, oslots, outer.operands[3:], ana.init_copies, 3, outer)
    gen.assign_slots(ind, inner, islots, inner.operands[3:], ana.init_copies, 3, inner)
    gen.line(ind, f"{cols} = {ranges.minus(ranges.plus(c1, 1), c0)}", outer)
    gen.line(ind, f"{h} = {h_('rt_wave_strip')}({cols})", outer)
    gen.line(ind, f"{strips} = (max({ranges.minus(ranges.plus(r1, 1), r0)}, 0) + {h} - 1) // {h}",
             outer)
    arrs = {}
    for name, c in carries:                 # one carry a row: in an array at the edges
        arrs[name] = f(name + "_q")
        gen.line(ind, f"{arrs[name]} = np.empty({K}, np.float64)", c.add)
    steady = {name: [f(f"{name}_{k}") for k in range(K)] for name, _ in carries}
    for op in ib.ops:                       # (the copies' locals are these names + _k)
        for r in op.results:
            gen.ref(r)
    for name, _ in carries:
        gen.line(ind, " = ".join(steady[name]) + " = -0.0", outer)
    def rank(q: str) -> str:            # the slot of the cell of row b_hi - q at step t
        plus = "" if q == "0" else f" + {q}"
        return (f"{h_('rt_wave_rank')}({b_hi}{'' if q == '0' else f' - {q}'}, {c1} - {t}{plus}, "
                f"{r0}, {ranges.plus(r1, 1)}, {c0}, {ranges.plus(c1, 1)}, {h}){plus}")
    # blocks: strips of the forward's height from the last, blocks of K rows from the last
    gen.line(ind, f"for {s} in range({strips} - 1, -1, -1):", outer)
    i1 = ind + 1
    gen.line(i1, f"{s_lo} = {r0} + {s} * {h}", outer)
    gen.line(i1, f"{s_hi} = min({s_lo} + {h}, {ranges.plus(r1, 1)})", outer)
    gen.line(i1, f"for {b} in range(({s_hi} - {s_lo} + {K - 1}) // {K} - 1, -1, -1):", outer)
    i2 = ind + 2
    gen.line(i2, f"{b_lo} = {s_lo} + {K} * {b}", outer)
    gen.line(i2, f"{b_hi} = min({b_lo} + {K}, {s_hi}) - 1", outer)
    gen.line(i2, f"{kk} = {b_hi} - {b_lo} + 1", outer)
    for name, _ in carries:
        gen.line(i2, f"{arrs[name]}[:] = -0.0", outer)
    views = {}                              # the steady copies' rows of each ring
    for w in wins:
        ring, R = w.names["ring"], w.ring
        views[id(w)] = []
        for k in range(K):
            cur, up = f(f"{ring}_{k}"), f(f"{ring}_{k}_up")
            row = ranges.plus(b_hi, -k)
            gen.line(i2, f"{cur} = {ring}[{row if k == 0 else f'({row})'} % {R}]", outer)
            gen.line(i2, f"{up} = {ring}[({ranges.plus(b_hi, -k - 1)}) % {R}]", outer)
            views[id(w)].append((cur, up))
    # phase 0: steps 0 .. t_a (all of them for a block of fewer rows or columns than K);
    # then, for a full block, the steady steps (all K rows inside the columns: K copies,
    # the carries in locals) and phase 1: the last K - 1 steps.  Both phases: one copy
    # in a loop over the rows present, the carries in a small array.
    full, ph, t_a, t_b = f("full"), f("phase"), f("t_a"), f("t_b")
    gen.line(i2, f"{full} = {kk} == {K} and {cols} >= {K}", outer)
    gen.line(i2, f"{t_a} = {K - 1} if {full} else {cols} + {kk} - 1", outer)
    gen.line(i2, f"for {ph} in range(2):", outer)
    i3 = ind + 3
    gen.line(i3, f"if {ph} == 1:", outer)
    i4 = ind + 4
    gen.line(i4, f"if not {full}:", outer)
    gen.line(i4 + 1, "break", outer)
    for name, _ in carries:
        gen.line(i4, ", ".join(steady[name]) + " = " +
                 ", ".join(f"{arrs[name]}[{k}]" for k in range(K)), outer)
    gen.line(i4, f"for {t} in range({K - 1}, {cols}):", outer)
    i5 = ind + 5
    gen.line(i5, f"{base} = {rank('0')}", outer)
    pops = list(dict.fromkeys(op.operands[0] for op in ib.ops if op.name == "tape_pop"))
    for tp in pops:                         # the tapes' lines AHEAD steps on (in body
        # order: the source must not depend on addresses, or the cache would miss)
        gen.line(i5, f"{h_('rt_prefetch')}({gen.ref(tp)}, {gen.tape_count(tp)} + {base} - "
                     f"{AHEAD} * {h})", outer)
    for k in range(K):
        i_k, j_k = f(f"i_{k}"), f(f"j_{k}")
        gen.line(i5, f"{i_k} = {ranges.plus(b_hi, -k)}", inner)
        gen.line(i5, f"{j_k} = {c1} - {t}" + (f" + {k}" if k else ""), inner)
        _copy(gen, n, f"{k}", i_k, j_k, f"{base} - {k}" if k else base, i5,
              {name: steady[name][k] for name, _ in carries},
              {id(w): views[id(w)][k] for w in wins})
    for name, _ in carries:
        gen.line(i4, ", ".join(f"{arrs[name]}[{k}]" for k in range(K)) + " = " +
                 ", ".join(steady[name]), outer)
    _last_adds(gen, carries, {name: steady[name][0] for name, _ in carries}, b_hi, c0,
               {id(w): views[id(w)][0] for w in wins}, i4)     # row i_hi is done
    gen.line(i3, f"{t_b} = (0, {t_a}) if {ph} == 0 else ({cols}, {cols} + {K - 1})", outer)
    gen.line(i3, f"for {t} in range({t_b}[0], {t_b}[1]):", outer)
    gen.line(i4, f"{q0} = max(0, {t} - {cols} + 1)", outer)
    gen.line(i4, f"{q1} = min({kk}, {t} + 1)", outer)
    gen.line(i4, f"{base} = {rank(q0)}", outer)
    gen.line(i4, f"for {q} in range({q0}, {q1}):", inner)
    i_g, j_g = f("i_g"), f("j_g")
    gen.line(i5, f"{i_g} = {b_hi} - {q}", inner)
    gen.line(i5, f"{j_g} = {c1} - {t} + {q}", inner)
    gviews = {}
    for w in wins:
        ring, R = w.names["ring"], w.ring
        cur, up = f(f"{ring}_g"), f(f"{ring}_g_up")
        gen.line(i5, f"{cur} = {ring}[{i_g} % {R}]", inner)
        gen.line(i5, f"{up} = {ring}[({i_g} - 1) % {R}]", inner)
        gviews[id(w)] = (cur, up)
    gcar = {name: f(f"{name}_g") for name, _ in carries}
    for name, _ in carries:
        gen.line(i5, f"{gcar[name]} = {arrs[name]}[{q}]", inner)
    _copy(gen, n, "g", i_g, j_g, f"{base} - {q}", i5, gcar, gviews)
    for name, _ in carries:
        gen.line(i5, f"{arrs[name]}[{q}] = {gcar[name]}", inner)
    if carries:
        gen.line(i5, f"if {j_g} == {c0}:", inner)       # row i_g is done
        _last_adds(gen, carries, gcar, i_g, c0, gviews, i5 + 1)
    for w in wins:                          # the block's rows, cleared for the next ones
        ring, R = w.names["ring"], w.ring
        r = f("r")
        gen.line(i2, f"for {r} in range({b_lo}, {b_hi} + 1):", outer)
        gen.line(i2 + 1, f"{ring}[{r} % {R}, :] = 0.0", outer)
    oy = ob.terminator
    gen.assign_slots(ind, oy, oslots, oy.operands, ana.yield_copies, 0, oy)


def _copy(gen, n, tag: str, i: str, j: str, slot: str, ind: int, carry: dict, views: dict):
    """One copy of the inner body for the cell (i, j): its own locals (``_tag``), its
    carries, its tapes' slot and its rows of the rings."""
    ib = n.inner.regions[0]
    iv_i, iv_j = n.outer.regions[0].args[0], ib.args[0]
    saved_names = dict(gen.names)
    saved_carry = dict(gen.carry_of)
    saved_slot = gen.wave_slots.get(n.inner)
    wins = gen.window_turns.get(n.outer, [])
    saved_views = {id(w): (w.names.get("cur"), w.names.get("up")) for w in wins}
    try:
        gen.names[gen.root(iv_i)] = i
        gen.names[gen.root(iv_j)] = j
        for op in ib.ops:
            for r in op.results:
                rt = gen.root(r)
                if isinstance(r.type, T.Scalar) and rt.owner is op:
                    gen.names[rt] = gen.locals.take(f"{gen.ref(r)}_{tag}")
        for name, c in gen.carry_loops.get(n.inner, []):
            gen.carry_of[c.read] = gen.carry_of[c.add] = carry[name]
        gen.wave_slots[n.inner] = slot
        for w in wins:
            w.names["cur"], w.names["up"] = views[id(w)]
        gen.region(ib, ind)
    finally:
        gen.names.clear()
        gen.names.update(saved_names)
        gen.carry_of.clear()
        gen.carry_of.update(saved_carry)
        gen.wave_slots[n.inner] = saved_slot
        for w in wins:
            w.names["cur"], w.names["up"] = saved_views[id(w)]


def _last_adds(gen, carries, names: dict, i: str, c0: str, views: dict, ind: int):
    """After a row's last cell: each carry's last add, where the row order puts it
    (column c0 - 1 of row i)."""
    for name, c in carries:
        x = c.add.operands[0]
        idx = f"{i}, {ranges.plus(c0, c.sign)}"
        w = gen.windows.get(c.add)
        if w is not None:
            cur, up = views[id(w)]
            saved = w.names.get("cur"), w.names.get("up")
            w.names["cur"], w.names["up"] = cur, up
            try:
                gen.line(ind, gen.window_access(c.add, idx, "+=", names[name]), c.add)
            finally:
                w.names["cur"], w.names["up"] = saved
        else:
            gen.line(ind, gen.unchecked_store(x, idx, "+=", names[name]), c.add)
