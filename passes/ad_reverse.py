"""Reverse-mode differentiation as an IR -> IR pass.

``ReverseAD(program).vjp_func(func, active, mode)`` builds one new function:

    mode "vjp"             f_vjp(x..., d_y...) -> (y..., dx_a, dx_b, ...)
    mode "grad"            f_grad(x...)        -> (dx_a, dx_b, ...)      (seed 1.0)
    mode "value_and_grad"  f_vg(x...)          -> (y, dx_a, dx_b, ...)

with one cotangent per float result and one adjoint per active parameter.  The body is
the **forward sweep** (a copy of the primal) followed by the **reverse sweep**, in which
every op of the primal, in reverse order, hands the adjoints of its results to its
primitive's own ``vjp`` rule (ir/primitives) and adds what comes back to the adjoints of
its operands.  Only *varied* values (floats that depend on an active parameter) get
adjoints.

**Loops.**  The reverse of a loop is a loop over the same iterations backwards (a
``while`` records its trip count in the forward sweep).  It carries the adjoints of the
loop-carried values, *images* of the arrays the loop updates (below), and accumulators
for the adjoints of values from outside the loop (``D`` in DTW: ``scatter_add`` into
the accumulator, written in place).  A primal value that the reverse of an iteration
needs is obtained, in order of preference:

1. from outside the loop (loop-invariant: used directly);
2. recomputed: the induction variable, constants, cheap scalar arithmetic of such values
   (``i - 1``), and reads ``A[i - 1, j]`` of an array whose image is available (below)
   or that is loop-invariant;
3. from a **tape**: the forward sweep pushes it (``tape_push``) each iteration, the
   reverse sweep pops it (``tape_pop``); one tape per value, so the order of pops within
   an iteration is free.  Values inside ``if`` branches are pushed and popped inside the
   mirrored branches.

**Images: the DP table is the tape.**  An array that a loop updates only by ``setitem``
(possibly through nested loops and ``if``s) is *restorable*: the forward sweep pushes
the old value of each cell it overwrites (one scalar per write), and the reverse sweep
writes it back, so at every point of the reverse sweep the image holds exactly the
table the forward sweep saw at the mirrored point.  Reads are then re-done on the image
instead of being taped: reverse mode of a DTW-style recursion keeps the table plus one
scalar per cell, O(n*m), never a copy per iteration, and a cell overwritten many times
gets its overwritten values back in the right order.

**Calls** become calls of the callee's VJP function (built once per activity pattern),
which recomputes the callee's forward sweep.

**Tapes in the input** (reverse over reverse: ``grad(grad(f))``): the adjoint of a
``tape_pop`` is pushed onto an adjoint tape, and popped back at the matching
``tape_push``; forward mode (passes/ad_forward.py) pushes and pops tangents alongside.
"""
from __future__ import annotations

from dplang.errors import DPInternalError
from dplang.ir import types as T
from dplang.ir.analysis import uses
from dplang.ir.builder import Builder
from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.ir.primitives import REGISTRY

# scalar ops the reverse sweep recomputes instead of taping their results
CHEAP = {"add", "sub", "mul", "neg", "floordiv", "mod", "cast", "lt", "le", "gt", "ge", "eq",
         "ne", "logical_and", "logical_or", "logical_not", "dim", "abs", "sign", "maximum",
         "minimum", "maxn", "minn", "where"}


def is_float(t) -> bool:
    return getattr(t, "dtype", None) in ("f64", "f32")


# ----------------------------------------------------------------------- analyses
def varied_values(func: Func, active) -> set:
    """Float values of ``func`` that depend on the parameters at indices ``active`` (and
    the tapes that hold such values)."""
    var = {func.params[k] for k in active if is_float(func.params[k].type)}
    ops = list(func.walk())
    changed = True
    while changed:
        changed = False

        def mark(v):
            nonlocal changed
            if v not in var and (is_float(v.type) or isinstance(v.type, T.Tape)):
                var.add(v)
                changed = True
        for op in ops:
            n = op.name
            if n in ("const", "undef", "assert", "yield", "return", "tape_new"):
                continue
            if n == "tape_push":
                if op.operands[1] in var:
                    mark(op.operands[0])
                continue
            if n in ("for", "while"):
                nb = 3 if n == "for" else 0
                body = op.regions[-1]
                bargs = body.args[1:] if n == "for" else body.args
                ys = body.ops[-1].operands
                for k, (a, i, y, r) in enumerate(zip(bargs, op.operands[nb:], ys, op.results)):
                    if i in var or y in var or a in var:
                        mark(a)
                        mark(r)
                        if n == "while":
                            mark(op.regions[0].args[k])
                continue
            if n == "if":
                for k, r in enumerate(op.results):
                    if any(reg.ops[-1].operands[k] in var for reg in op.regions):
                        mark(r)
                continue
            p = REGISTRY.get(n)
            if p is not None and p.zero_derivative:
                continue
            if any(x in var for x in op.operands):
                for r in op.results:
                    mark(r)
    return var


class Tracking:
    """Which loop-carried arrays are restorable (updated only by ``setitem``, through
    nested loops and ``if``s) and read inside their loop: those get images in reverse."""

    def __init__(self, func: Func):
        self.slots: set = set()          # (loop op, carried index)
        self.setitems: set = set()       # setitem ops whose old value is pushed
        self.write_once: set = set()     # setitem ops of write-once tables (no undo)
        self.inner: set = set()          # slots that are updates inside another slot's chain
        self.if_start: dict = {}         # (if op, result index) -> the version it updates
        self._memo: dict = {}
        self.readers = uses(func)
        for op in func.walk():
            if op.name in ("for", "while"):
                for k in range(len(op.results)):
                    if isinstance(op.results[k].type, T.Array):
                        ch = self.loop_chain(op, k)
                        if ch is not None and self._read(ch):
                            self.mark(op, k)
        for op, k in list(self.slots):
            if (op, k) in self.inner:
                continue        # the nest runs again for an enclosing loop: keep undoing
            w = self._write_once(op, k)
            if w is not None:
                self.write_once.add(w)
                self.setitems.discard(w)

    def _read(self, chain) -> bool:
        trans, versions = chain
        for t in trans:
            if t[0] == "loop" and self._read(self.loop_chain(t[1], t[2])):
                return True
        moves = {id(t[1]) for t in trans}
        for v in versions:
            for user in self.readers.get(v, ()):
                if user.name == "setitem" and user.operands[0] is v and id(user) in moves:
                    continue
                if user.name in ("for", "while", "if", "yield"):
                    continue
                return True
        return False

    def _write_once(self, outer: Op, k: int):
        """The setitem of a DP table filled once per cell by a nest of ``for`` loops with
        steps of 1 or -1 (``R[i + a, j + b] = ...``) whose reads in the nest all look
        back (``R[i + c, j + d]`` with (c - a, d - b), times the steps, lexicographically
        negative: ``R[i + 1, j]`` in a descending nest): every cell read was written in
        an earlier iteration or never, and no cell is written twice, so the final table
        answers every read of the reverse sweep and no old value needs saving.  None
        when the pattern does not hold."""
        loops, cur, ck = [outer], outer, k
        chains = []
        while True:
            if cur.name != "for" or _const_of(cur.operands[2]) not in (1, -1):
                return None
            trans, versions = self.loop_chain(cur, ck)
            chains.append(versions)
            if len(trans) != 1:
                return None
            t = trans[0]
            if t[0] == "loop":
                loops.append(t[1])
                cur, ck = t[1], t[2]
                continue
            if t[0] != "set":
                return None
            setop = t[1]
            break
        ivs = [lp.regions[0].args[0] for lp in loops]
        a = _offsets(setop.operands[2:], setop.attrs.get("index"), ivs)
        if a is None:
            return None
        moves = {id(setop)} | {id(lp) for lp in loops}
        for level, versions in enumerate(chains):
            for v in versions:
                for user in self.readers.get(v, ()):
                    if id(user) in moves or user.name == "yield":
                        continue
                    if user.name != "getitem" or level != len(chains) - 1:
                        return None
                    c = _offsets(user.operands[1:], user.attrs.get("index"), ivs)
                    if c is None:
                        return None
                    steps = [_const_of(lp.operands[2]) for lp in loops]
                    diff = [(ci - ai) * st for ci, ai, st in zip(c, a, steps)]
                    first = next((d for d in diff if d != 0), 0)
                    if first >= 0:
                        return None
        return setop

    def loop_chain(self, op: Op, k: int):
        key = (id(op), k)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = None
        body = op.regions[-1]
        arg = body.args[k + 1] if op.name == "for" else body.args[k]
        t = self.trace(body, body.ops[-1].operands[k])
        res = None
        if t is not None and t[0] is arg:
            res = (t[1], t[2])
        self._memo[key] = res
        return res

    def trace(self, region: Region, v: Value):
        """Walk back from ``v`` through the update chain inside ``region``: returns
        (start value, transitions, versions) or None when an update is not restorable."""
        trans, versions = [], [v]
        while True:
            o = v.owner
            if not isinstance(o, Op) or o.parent is not region:
                return v, trans, versions
            if o.name == "setitem":
                trans.append(("set", o))
                v = o.operands[0]
            elif o.name in ("for", "while"):
                k = o.results.index(v)
                if self.loop_chain(o, k) is None:
                    return None
                trans.append(("loop", o, k))
                v = o.operands[(3 if o.name == "for" else 0) + k]
            elif o.name == "if":
                k = o.results.index(v)
                starts = []
                for reg in o.regions:
                    t = self.trace(reg, reg.ops[-1].operands[k])
                    if t is None:
                        return None
                    starts.append(t[0])
                    trans += t[1]
                    versions += t[2]
                if starts[0] is not starts[1]:
                    return None
                trans.append(("if", o, k))
                self.if_start[(o, k)] = starts[0]
                v = starts[0]
            else:
                return None
            versions.append(v)

    def mark(self, op: Op, k: int) -> None:
        if (op, k) in self.slots:
            return
        self.slots.add((op, k))
        trans, _ = self.loop_chain(op, k)
        for t in trans:
            if t[0] == "set":
                self.setitems.add(t[1])
            elif t[0] == "loop":
                self.inner.add((t[1], t[2]))
                self.mark(t[1], t[2])


def _const_of(v: Value):
    o = v.owner
    return o.attrs.get("value") if isinstance(o, Op) and o.name == "const" else None


_FULL = ("slice", False, False, False)        # ``:``


def _offsets(idx, index_attr, ivs):
    """Offsets (a_1, ..., a_r) when the integer indices are exactly iv_1 + a_1, ...,
    iv_r + a_r (one per loop of the nest, in order), possibly followed by whole axes
    (``R[t, :]``: a row per iteration); None otherwise."""
    if index_attr is not None:
        ints = [e for e in index_attr if e == "i"]
        if list(index_attr[:len(ints)]) != ints or \
                any(e != _FULL for e in index_attr[len(ints):]):
            return None
    if len(idx) != len(ivs):
        return None
    out = []
    for v, iv in zip(idx, ivs):
        if v is iv:
            out.append(0)
            continue
        o = v.owner
        if not isinstance(o, Op) or o.name not in ("add", "sub") or len(o.operands) != 2:
            return None
        x, y = o.operands
        if x is iv and isinstance(_const_of(y), int):
            out.append(_const_of(y) if o.name == "add" else -_const_of(y))
        elif o.name == "add" and y is iv and isinstance(_const_of(x), int):
            out.append(_const_of(x))
        else:
            return None
    return out


# ----------------------------------------------------------------------- forward sweep
class Forward:
    """Copies the primal, recording what the reverse sweep needs: the old value of each
    restorable cell write, and the trip count of each ``while``."""

    def __init__(self, ad: "ReverseAD", track: Tracking):
        self.ad = ad
        self.b = ad.b
        self.track = track
        self.vmap = ad.vmap
        self.region_of: dict = {}        # original region -> its forward copy
        self.old: dict = {}              # setitem op -> forward value of the old cell
        self.count: dict = {}            # while op -> forward trip count
        self.partials: dict = {}         # op -> forward values of its partial derivatives

    def copy_ops(self, orig: Region, new: Region, ops) -> None:
        self.region_of[orig] = new
        with self.b.at(new):
            for op in ops:
                self.copy_op(op)

    def copy_op(self, op: Op) -> None:
        b, vmap = self.b, self.vmap
        if self.with_partials(op):
            return
        with b.located(op.loc):
            if op.name == "setitem" and op in self.track.setitems:
                x = vmap[op.operands[0]]
                idx = [vmap[i] for i in op.operands[2:]]
                self.old[op] = b.op("getitem", [x] + idx,
                                    [REGISTRY["getitem"].result_types(
                                        [x.type] + [i.type for i in idx],
                                        {"index": op.attrs.get("index")})[0]],
                                    {"index": op.attrs.get("index")}, hints=["old"]).result
            regions = []
            for reg in op.regions:
                args = [Value(a.type, a.hint, a.loc) for a in reg.args]
                if op.name == "while":
                    args.append(Value(T.I64, "trips"))
                nreg = Region(args, label=reg.label)
                for a, n in zip(reg.args, args):
                    vmap[a] = n
                self.copy_ops(reg, nreg, reg.ops)
                if op.name == "while" and reg is op.regions[1]:
                    y = nreg.ops.pop()
                    with b.at(nreg):
                        inc = b.prim("add", args[-1], b.const(1), hint="trips")
                        b.op("yield", list(y.operands) + [inc], [])
                regions.append(nreg)
            operands = [vmap[v] for v in op.operands]
            rtypes = [r.type for r in op.results]
            hints = [r.hint for r in op.results]
            if op.name == "while":
                operands.append(b.const(0))
                rtypes.append(T.I64)
                hints.append("trips")
            new = b.op(op.name, operands, rtypes, dict(op.attrs), regions, hints=hints)
            for o, n in zip(op.results, new.results):
                vmap[o] = n
            if op.name == "while":
                self.count[op] = new.results[-1]


    def with_partials(self, op: Op) -> bool:
        """A scalar op inside a loop whose primitive can give its value together with its
        partial derivatives (``Primitive.residuals``: a soft DP cell's weights): emit that
        in the forward sweep, so the reverse sweep multiplies by taped partials instead
        of recomputing them (no exp per cell)."""
        p = REGISTRY.get(op.name)
        if p is None or p.residuals is None or not isinstance(op.parent.parent, Op) \
                or len(op.results) != 1 or op.results[0] not in self.ad.varied:
            return False
        need = [x in self.ad.varied for x in op.operands]
        with self.b.located(op.loc):
            got = p.residuals(self.b, [self.vmap[x] for x in op.operands], dict(op.attrs),
                              need)
        if got is None:
            return False
        value, self.partials[op] = got
        value.hint = value.hint or op.results[0].hint
        self.vmap[op.results[0]] = value
        return True


# ----------------------------------------------------------------------- reverse sweep
class Ctx:
    """The reverse of one region of the primal: the function body (this class), a loop
    body (LoopCtx) or a branch of an ``if`` (BranchCtx)."""

    def __init__(self, ad: "ReverseAD", orig: Region, parent, rev: Region, fwd: Region):
        self.ad, self.orig, self.parent, self.rev, self.fwd = ad, orig, parent, rev, fwd
        self.b = ad.b
        self.defined = set(orig.args)
        for op in orig.ops:
            self.defined.update(op.results)
        self.cache: dict = {}
        self.adj: dict = {}
        self.images: dict = {}

    # -- primal values ---------------------------------------------------------
    def primal(self, p: Value) -> Value:
        return self.ad.vmap[p]

    def fwd_value(self, fv: Value) -> Value:
        return fv

    def cheap(self, a: Value) -> bool:
        return True

    def free(self, x: Value, depth: int = 0) -> bool:
        return True

    def image_of(self, v: Value) -> Value:
        if v in self.images:
            return self.images[v]
        return self.primal(v)

    # -- adjoints --------------------------------------------------------------
    def cur_adj(self, v: Value):
        if v in self.adj:
            return self.adj[v]
        if v in self.defined:
            return None
        return self.import_adj(v)

    def import_adj(self, v: Value):
        return None

    def add_adj(self, v: Value, c) -> None:
        if c is None or v not in self.ad.varied:
            return
        cur = self.cur_adj(v)
        if cur is None:
            self.adj[v] = c
            return
        with self.b.at(self.rev):
            self.adj[v] = self.b.prim("add", cur, c, hint=_dhint(v))

    def zero(self, like: Value) -> Value:
        with self.b.at(self.rev):
            if isinstance(like.type, T.Scalar):
                return self.b.const(0.0, like.type)
            return self.b.prim("zeros_like", like)

    def zeros_of(self, t):
        """Zeros of array type ``t`` built from the parameters' dimensions (no primal
        value needed), or None when a dimension is not a parameter's."""
        dims = self.ad.param_dims
        vals = []
        with self.b.at(self.rev):
            for d in t.shape:
                if isinstance(d, int):
                    vals.append(self.b.const(d))
                    continue
                if not isinstance(d, T.Sym) or any(name not in dims for name, _ in d.terms):
                    return None
                acc = self.b.const(d.const)
                for name, coef in d.terms:
                    p, ax = dims[name]
                    term = self.b.prim("dim", self.ad.vmap[p], axis=ax, hint=name)
                    if coef != 1:
                        term = self.b.prim("mul", term, self.b.const(coef))
                    acc = self.b.prim("add", acc, term)
                vals.append(acc)
            return self.b.prim("zeros", *vals, dtype=t.dtype, _shape=t.shape)

    # -- the walk --------------------------------------------------------------
    def run(self) -> None:
        for op in reversed(self.orig.ops[:-1]):
            with self.b.located(op.loc):
                self.reverse_op(op)

    def reverse_op(self, op: Op) -> None:
        n = op.name
        if n in ("const", "undef", "assert", "tape_new"):
            return
        if n == "for" or n == "while":
            return self.reverse_loop(op)
        if n == "if":
            return self.reverse_if(op)
        if n == "call":
            return self.reverse_call(op)
        if n == "tape_push" or n == "tape_pop":
            return self.reverse_tape(op)
        if op in self.ad.fw.partials:
            return self.reverse_from_partials(op)
        p = REGISTRY.get(n)
        if p is None:
            raise DPInternalError(f"reverse AD: unknown op '{n}'", op.loc)
        cts = [self.adj.get(r) for r in op.results]
        if any(c is not None for c in cts) and not p.zero_derivative \
                and any(x in self.ad.varied for x in op.operands):
            if p.vjp is None:
                raise DPInternalError(f"reverse AD: primitive '{n}' has no VJP rule", op.loc)
            self.apply_rule(op, p, cts)
        if n == "setitem" and op.results[0] in self.images:
            if op in self.ad.fw.old:
                self.undo_setitem(op)
            elif op in self.ad.track.write_once:      # the final table serves every read
                self.images[op.operands[0]] = self.images[op.results[0]]

    def apply_rule(self, op: Op, p, cts) -> None:
        b = self.b
        tmp = Region()
        ph_ops = [Value(x.type, x.hint) for x in op.operands]
        ph_res = [Value(r.type, r.hint) for r in op.results]
        phmap = dict(zip(ph_ops, op.operands))
        phmap.update(zip(ph_res, op.results))
        with b.at(tmp):
            contribs = list(p.vjp(b, ph_ops, ph_res, cts, dict(op.attrs)))
        varied = self.ad.varied
        direct: dict = {}
        seen = set()
        for k, (x, c) in enumerate(zip(op.operands, contribs)):
            if c is None or x not in varied:
                contribs[k] = None
                continue
            so = c.owner
            if isinstance(so, Op) and so.name == "scatter_add" and so.parent is tmp \
                    and x not in seen:
                z = so.operands[0].owner
                if isinstance(z, Op) and z.name == "zeros_like" and z.parent is tmp:
                    cur = self.cur_adj(x)
                    if cur is not None:
                        with b.at(tmp):
                            direct[k] = b.op("scatter_add", [cur] + so.operands[1:], [cur.type],
                                             dict(so.attrs), hints=[_dhint(x)]).result
                        contribs[k] = None
            seen.add(x)
        # keep only the ops the contributions need
        need = {c for c in contribs if c is not None} | set(direct.values())
        live = []
        for o in reversed(tmp.ops):
            if any(r in need for r in o.results):
                live.append(o)
                need.update(o.operands)
        live.reverse()
        subst: dict = {}
        for o in live:
            for x in o.operands:
                if x in phmap and x not in subst:
                    subst[x] = self.primal(phmap[x])
        for c in contribs:
            if c is not None and c in phmap and c not in subst:
                subst[c] = self.primal(phmap[c])
        for o in live:
            o.operands = [subst.get(x, x) for x in o.operands]
            self.rev.append(o)
        for k, x in enumerate(op.operands):
            if k in direct:
                self.adj[x] = direct[k]
            elif contribs[k] is not None:
                self.add_adj(x, subst.get(contribs[k], contribs[k]))

    def reverse_from_partials(self, op: Op) -> None:
        g = self.adj.get(op.results[0])
        if g is None:
            return
        for x, w in zip(op.operands, self.ad.fw.partials[op]):
            if x in self.ad.varied and w is not None:
                # a partial is a value (times the cotangent) or (value, contribution(b, g, w))
                w, combine = w if isinstance(w, tuple) else (w, None)
                w = self.fwd_value(w)
                with self.b.at(self.rev):
                    self.add_adj(x, combine(self.b, g, w) if combine is not None
                                 else self.b.prim("mul", g, w))

    def undo_setitem(self, op: Op) -> None:
        b = self.b
        img = self.images[op.results[0]]
        old = self.fwd_value(self.ad.fw.old[op])
        idx = [self.primal(i) for i in op.operands[2:]]
        with b.at(self.rev):
            self.images[op.operands[0]] = b.op("setitem", [img, old] + idx, [img.type],
                                               dict(op.attrs), hints=[op.operands[0].hint]).result

    # -- calls ------------------------------------------------------------------
    def reverse_call(self, op: Op) -> None:
        if "transform" in op.attrs:
            raise DPInternalError("reverse AD through an in-program transformation needs it "
                                  "materialised first", op.loc)
        cts = [self.adj.get(r) for r in op.results]
        varied = self.ad.varied
        act = tuple(k for k, x in enumerate(op.operands) if x in varied)
        if all(c is None for c in cts) or not act:
            return
        key = self.ad.callee_vjp(op.attrs["callee"], act)
        f = self.ad.program.funcs[key]
        args = [self.primal(x) for x in op.operands]
        for r, c in zip(op.results, cts):
            if is_float(r.type):
                args.append(c if c is not None else self._zero_result(r))
        with self.b.at(self.rev):
            new = self.b.op("call", args, f.result_types, {"callee": key},
                            hints=[r.hint for r in op.results] +
                            [_dhint(op.operands[k]) for k in act])
        grads = new.results[len(op.results):]
        for k, g in zip(act, grads):
            self.add_adj(op.operands[k], g)

    def _zero_result(self, r: Value) -> Value:
        if isinstance(r.type, T.Scalar):
            return self.zero(r)
        if r in self.images or r in self.cache or not isinstance(self, _Nested):
            return self.zero(self.primal(r))
        z = self.zeros_of(r.type)
        return z if z is not None else self.zero(self.primal(r))

    # -- tapes in the input (second order) ---------------------------------------
    def reverse_tape(self, op: Op) -> None:
        t = op.operands[0]
        if t not in self.ad.varied:
            return
        at = self.ad.adjoint_tape(t)
        b = self.b
        if op.name == "tape_push":
            v = op.operands[1]
            with b.at(self.rev):
                g = b.op("tape_pop", [at], [v.type], hints=[_dhint(v)]).result
            self.add_adj(v, g)
        else:
            r = op.results[0]
            g = self.adj.get(r)
            if g is None:
                g = self._zero_result(r)
            with b.at(self.rev):
                b.op("tape_push", [at, g], [])

    # -- loops ----------------------------------------------------------------------
    def reverse_loop(self, op: Op) -> None:
        ad, b = self.ad, self.b
        is_for = op.name == "for"
        nb = 3 if is_for else 0
        body = op.regions[-1]
        bargs = body.args[1:] if is_for else body.args
        ys = body.ops[-1].operands
        inits = op.operands[nb:]
        # once an adjoint flows into the loop (through a result, or through a tape it
        # pushes to: reverse over reverse), every varied carried value carries one: a
        # carried value whose result is unused may still feed the others in the body
        adj_idx = []
        if ad.pushes_adjoints(op) or any(self.adj.get(r) is not None for r in op.results):
            adj_idx = [k for k, r in enumerate(op.results) if r in ad.varied]
            for k in adj_idx:
                if self.adj.get(op.results[k]) is None:
                    self.adj[op.results[k]] = self._zero_result(op.results[k])
        img_idx = [k for k in range(len(bargs)) if (op, k) in ad.track.slots]
        if not adj_idx:
            # no adjoint flows into the loop; undo its writes only if an image needs it
            img_idx = [k for k in img_idx if op.results[k] in self.images]
            if not img_idx:
                return
        iv = Value(T.I64, body.args[0].hint if is_for else "k")
        adj_args = [Value(bargs[k].type, _dhint(bargs[k])) for k in adj_idx]
        img_args = [Value(bargs[k].type, bargs[k].hint) for k in img_idx]
        rev = Region([iv] + adj_args + img_args, label="body")
        L = LoopCtx(ad, body, self, rev, ad.fw.region_of[body])
        L.iv_orig = body.args[0] if is_for else None
        L.iv_rev = iv
        for k, a in zip(img_idx, img_args):
            L.images[ys[k]] = a
        for k, a in zip(adj_idx, adj_args):
            L.add_adj(ys[k], a)
        L.run()
        with b.at(rev), b.located(body.ops[-1].loc):
            outs = []
            for k, a in zip(adj_idx, adj_args):
                g = L.cur_adj(bargs[k])
                outs.append(g if g is not None else L.zero(a))
            for k in img_idx:
                if bargs[k] not in L.images:
                    raise DPInternalError("reverse AD: lost the image of a restorable array",
                                          op.loc)
                outs.append(L.images[bargs[k]])
            outs += [L.adj[v] for v, _ in L.accs]
            b.op("yield", outs, [])
        with b.at(self.rev), b.located(op.loc):
            if is_for:
                lo, hi, step = (self.primal(x) for x in op.operands[:3])
                last, stop, nstep = _reverse_range(b, lo, hi, step)
            else:
                cnt = self.fwd_value(ad.fw.count[op])
                last = b.prim("sub", cnt, b.const(1))
                stop, nstep = b.const(-1), b.const(-1)
        init = []
        for k in adj_idx:
            init.append(self.adj[op.results[k]])
        for k in img_idx:
            init.append(self.image_of(op.results[k]))
        for v, a in L.accs:
            g = self.cur_adj(v)
            init.append(g if g is not None else self._zero_result(v))
        with b.at(self.rev), b.located(op.loc):
            new = b.op("for", [last, stop, nstep] + init, [a.type for a in rev.args[1:]], {},
                       [rev], hints=[a.hint for a in rev.args[1:]])
        res = new.results
        off = len(adj_idx) + len(img_idx)
        for j, (v, _) in enumerate(L.accs):        # accumulators first: they hold the
            self.adj[v] = res[off + j]             # adjoint from before the loop
        for j, k in enumerate(adj_idx):
            self.add_adj(inits[k], res[j])
        if isinstance(self, _Nested):     # the function body reads the forward values
            for j, k in enumerate(img_idx):
                self.images[inits[k]] = res[len(adj_idx) + j]

    # -- branches ---------------------------------------------------------------------
    def reverse_if(self, op: Op) -> None:
        ad, b = self.ad, self.b
        k_adj = [k for k, r in enumerate(op.results) if self.adj.get(r) is not None]
        # (an image continues through the branches when Tracking traced the if: both
        # branches update one version; else reads before the if do without it)
        k_img = [k for k, r in enumerate(op.results)
                 if r in self.images and (op, k) in ad.track.if_start]
        if not k_adj and not k_img and not ad.pushes_adjoints(op):
            return
        cond = self.primal(op.operands[0])
        branches = []
        for reg in op.regions:
            B = BranchCtx(ad, reg, self, Region(label=reg.label), ad.fw.region_of[reg])
            ys = reg.ops[-1].operands
            for k in k_img:
                B.images[ys[k]] = self.images[op.results[k]]
            for k in k_adj:
                B.add_adj(ys[k], self.adj[op.results[k]])
            B.run()
            branches.append(B)
        touched = []
        for B in branches:
            for v in B.imported:
                if v not in touched:
                    touched.append(v)
        initial = {v: self.cur_adj(v) for v in touched}
        starts = [ad.track.if_start[(op, k)] for k in k_img]
        for B in branches:
            with b.at(B.rev), b.located(op.loc):
                outs = []
                for v in touched:
                    g = B.adj.get(v) if v in B.imported else initial[v]
                    outs.append(g if g is not None else B._zero_result(v))
                for s in starts:
                    if s not in B.images:
                        raise DPInternalError("reverse AD: lost the image of a restorable "
                                              "array in a branch", op.loc)
                    outs.append(B.images[s])
                b.op("yield", outs, [])
        types = [v.type for v in touched] + [s.type for s in starts]
        hints = [_dhint(v) for v in touched] + [s.hint for s in starts]
        with b.at(self.rev), b.located(op.loc):
            new = b.op("if", [cond], types, {}, [B.rev for B in branches], hints=hints)
        for v, r in zip(touched, new.results):
            self.adj[v] = r
        for s, r in zip(starts, new.results[len(touched):]):
            self.images[s] = r


class _Nested(Ctx):
    """What loop bodies and branches share: values from outside come from the parent;
    values defined here are recomputed or taped."""

    def primal(self, p: Value) -> Value:
        if p in self.images:
            return self.images[p]
        if p in self.cache:
            return self.cache[p]
        if p not in self.defined:
            v = self.parent.primal(p)
        else:
            v = self.materialize(p)
        self.cache[p] = v
        return v

    def fwd_value(self, fv: Value) -> Value:
        return self._tape(fv, fv.type, fv.hint)

    def cheap(self, a: Value) -> bool:
        if a in self.cache or a in self.images:
            return True
        if a not in self.defined:
            return self.parent.cheap(a)
        return False

    def free(self, x: Value, depth: int = 0) -> bool:
        if x not in self.defined:
            return isinstance(x.type, T.Scalar) or self.parent.cheap(x)
        if x in self.cache or x in self.images:
            return True
        o = x.owner
        if isinstance(o, Region):
            return x is getattr(self, "iv_orig", None)
        if o.name == "const":
            return True
        if o.name in CHEAP and isinstance(x.type, T.Scalar) and depth < 8:
            return all(self.free(y, depth + 1) for y in o.operands)
        if o.name == "getitem" and isinstance(x.type, T.Scalar) and depth < 8:
            return self._readable(o.operands[0]) and \
                all(self.free(y, depth + 1) for y in o.operands[1:])
        return False

    def materialize(self, p: Value) -> Value:
        b = self.b
        o = p.owner
        if isinstance(o, Region):
            if p is getattr(self, "iv_orig", None):
                return self.iv_rev
            return self._tape(self.ad.vmap[p], p.type, p.hint)
        if o.name == "const":
            with b.at(self.rev):
                return b.op("const", [], [p.type], dict(o.attrs), hints=[p.hint]).result
        if (o.name in CHEAP and isinstance(p.type, T.Scalar)
                and all(self.free(y) for y in o.operands)) or \
                (o.name == "getitem" and self._readable(o.operands[0])
                 and all(self.free(y) for y in o.operands[1:])):
            args = [self.primal(y) for y in o.operands]
            with b.at(self.rev), b.located(o.loc):
                return b.op(o.name, args, [p.type], dict(o.attrs), hints=[p.hint]).result
        return self._tape(self.ad.vmap[p], p.type, p.hint)

    def _readable(self, a: Value) -> bool:
        if a in self.images or a in self.cache:
            return True
        return a not in self.defined and self.parent.cheap(a)

    def _tape(self, fv: Value, t, hint) -> Value:
        tape = self.ad.new_tape(t)
        self.ad.pushes.append((self.fwd, fv, tape))
        with self.b.at(self.rev):
            return self.b.op("tape_pop", [tape], [t], hints=[hint]).result


class LoopCtx(_Nested):
    def __init__(self, *a):
        super().__init__(*a)
        self.accs: list = []             # (outer value, accumulator arg)

    def import_adj(self, v: Value):
        a = Value(v.type, _dhint(v))
        a.owner = self.rev
        self.rev.args.append(a)
        self.accs.append((v, a))
        self.adj[v] = a
        return a


class BranchCtx(_Nested):
    def __init__(self, *a):
        super().__init__(*a)
        self.imported: dict = {}

    def import_adj(self, v: Value):
        g = self.parent.cur_adj(v)
        self.adj[v] = g
        self.imported[v] = g
        return g


def _dhint(v: Value) -> str:
    return "d_" + (v.hint or "v")


def _loop_nest(body: Region, region: Region):
    """(the op of ``body`` that encloses ``region``, the ``for`` loops around ``region``,
    the ops to copy before it) when every loop around it is a ``for`` whose bounds are
    defined in ``body`` or computed inside the nest by integer arithmetic of such values
    (``m - 1`` in the outer body of a descending nest: those ops, in order, are the
    third item); None otherwise (a ``while``, or bounds that depend on the nest)."""
    loops, outer, r = [], None, region
    while r is not body:
        op = r.parent
        if not isinstance(op, Op) or op.name == "while":
            return None
        if op.name == "for":
            loops.append(op)
        outer, r = op, op.parent
    if outer is None:
        return None
    copies: list = []

    def known(v: Value) -> bool:
        o = v.owner
        if o is body or (isinstance(o, Op) and o.parent is body):
            return True
        if (not isinstance(o, Op) or o.regions or o.name not in _INT_ARITH
                or not all(getattr(x.type, "dtype", None) == "i64" for x in o.results)
                or not all(known(x) for x in o.operands)):
            return False
        if o not in copies:
            copies.append(o)
        return True
    for lp in loops:
        if not all(known(v) for v in lp.operands[:3]):
            return None
    return outer, loops, copies


# integer ops that cannot fail: loop bounds computed with them inside a nest are
# computed again before it (for the capacity of a tape)
_INT_ARITH = ("add", "sub", "mul", "neg", "maximum", "minimum", "const")


def _step_sign(b: Builder, step):
    c = _const_of(step)
    if c is not None:
        return b.const(1 if c > 0 else -1)
    return b.prim("where", b.prim("gt", step, b.const(0)), b.const(1), b.const(-1))


def _trip_count(b: Builder, lo, hi, step):
    """The number of iterations of range(lo, hi, step)."""
    if _const_of(step) == 1:
        return b.prim("maximum", b.prim("sub", hi, lo), b.const(0))
    span = b.prim("sub", b.prim("add", b.prim("sub", hi, lo), step), _step_sign(b, step))
    return b.prim("maximum", b.prim("floordiv", span, step), b.const(0), hint="trips")


def _reverse_range(b: Builder, lo, hi, step):
    """(last, stop, -step) such that range(last, stop, -step) visits range(lo, hi, step)
    backwards."""
    c = _const_of(step)
    if c == 1:          # range(lo, hi): hi - 1 down to lo
        return (b.prim("sub", b.prim("maximum", hi, lo), b.const(1)),
                b.prim("sub", lo, b.const(1)), b.const(-1))
    if c == -1:         # range(lo, hi, -1): hi + 1 up to lo
        return (b.prim("add", b.prim("minimum", hi, lo), b.const(1)),
                b.prim("add", lo, b.const(1)), b.const(1))
    trips = _trip_count(b, lo, hi, step)
    last = b.prim("add", lo, b.prim("mul", b.prim("sub", trips, b.const(1)), step))
    return last, b.prim("sub", lo, _step_sign(b, step)), b.prim("neg", step)


# ----------------------------------------------------------------------- the pass
class ReverseAD:
    def __init__(self, program: Program | None):
        self.program = program

    def vjp_func(self, func: Func, active: tuple, mode: str = "vjp",
                 name: str | None = None) -> Func:
        for k in active:
            if not is_float(func.params[k].type):
                raise DPInternalError(f"reverse AD of '{func.name}' w.r.t. non-float "
                                      f"parameter {k}")
        name = name or f"{mode}_{func.name}_" + "_".join(map(str, active))
        if func.attrs.get("implicit"):      # @argmin/@root/@fixed_point: from the condition
            from dplang.passes import implicit
            return implicit.vjp_func(self.program, func, active, mode, name)
        func = inline_calls(func, self.program)
        self.varied = varied_values(func, active)
        self.track = Tracking(func)
        self.vmap: dict = {}
        self.pushes: list = []
        self.tapes: list = []
        self.adj_tapes: dict = {}
        params = [Value(p.type, p.hint, p.loc) for p in func.params]
        ret = func.body.ops[-1]
        float_res = [k for k, t in enumerate(func.result_types) if is_float(t)]
        cts = []
        if mode == "vjp":
            cts = [Value(func.result_types[k], "d_" + (ret.operands[k].hint or "out"), func.loc)
                   for k in float_res]
        body = Region(params + cts)
        self.b = Builder(body, func.loc)
        self.vmap.update(zip(func.params, params))
        self.param_dims = {}
        for p in func.params:
            for ax, d in enumerate(getattr(p.type, "shape", ())):
                if isinstance(d, T.Sym) and len(d.terms) == 1 and d.terms[0][1] == 1 \
                        and d.const == 0:
                    self.param_dims.setdefault(d.terms[0][0], (p, ax))
        self.fw = Forward(self, self.track)
        self.fw.copy_ops(func.body, body, func.body.ops[:-1])
        F = Ctx(self, func.body, None, body, body)
        b = self.b
        with b.located(ret.loc):
            if mode == "vjp":
                for k, c in zip(float_res, cts):
                    F.add_adj(ret.operands[k], c)
            else:
                (k,) = float_res
                F.add_adj(ret.operands[k], b.const(1.0, func.result_types[k]))
            F.run()
            grads = []
            for k in active:
                g = F.cur_adj(func.params[k])
                grads.append(g if g is not None else F.zero(params[k]))
            vals = [self.vmap[x] for x in ret.operands]
            outs = {"vjp": vals, "grad": [], "value_and_grad": vals[:1]}[mode] + grads
            b.return_(*outs)
        self._patch(body)
        rtypes = [v.type for v in outs]
        pnames = list(func.param_names) + [c.hint for c in cts]
        return Func(name, body, rtypes, func.loc, {}, pnames, True, func.filename)

    # -- tapes -------------------------------------------------------------------------
    def pushes_adjoints(self, op: Op) -> bool:
        """Whether ``op`` (a loop or if of a reverse-mode input) pushes onto a tape whose
        adjoints the reverse sweep has collected."""
        return bool(self.adj_tapes) and any(
            o.name == "tape_push" and o.operands[0] in self.adj_tapes for o in op.walk())

    def new_tape(self, t) -> Value:
        v = Value(T.Tape(t), "tape")
        self.tapes.append(Op("tape_new", [], [v], {}, loc=self.b.loc))
        return v

    def adjoint_tape(self, t: Value) -> Value:
        if t not in self.adj_tapes:
            self.adj_tapes[t] = self.new_tape(t.type.elem)
        return self.adj_tapes[t]

    def _patch(self, body: Region) -> None:
        """Insert the tapes at the top of the body and each push right after the forward
        value it saves; a tape pushed to inside ``for`` loops whose bounds are known
        before the outermost one is created right before it, with its capacity (the
        product of the trip counts) as operand, so that backends allocate it once."""
        for op in self.tapes:
            op.parent = body
        body.ops[0:0] = self.tapes
        tape_op = {op.results[0]: op for op in self.tapes}
        for region, fv, tape in self.pushes:
            nest = _loop_nest(body, region)
            if nest is None:
                continue
            outer, loops, copies = nest
            op = tape_op[tape]
            tmp = Region()
            b = Builder(tmp, op.loc)
            vmap: dict = {}
            for c in copies:                # (bounds computed inside the nest)
                new = b.op(c.name, [vmap.get(x, x) for x in c.operands],
                           [r.type for r in c.results], c.attrs,
                           hints=[r.hint for r in c.results])
                vmap.update(zip(c.results, new.results))
            cap = b.const(1)
            for lp in loops:
                cap = b.prim("mul", cap, _trip_count(b, *(vmap.get(v, v)
                                                          for v in lp.operands[:3])))
            op.operands = [cap]
            body.ops.remove(op)
            pos = body.ops.index(outer)
            for o in tmp.ops + [op]:
                o.parent = body
            body.ops[pos:pos] = tmp.ops + [op]
        for region, fv, tape in self.pushes:
            loc = fv.owner.loc if isinstance(fv.owner, Op) else getattr(region.parent, "loc", None)
            push = Op("tape_push", [tape, fv], [], {}, loc=loc)
            push.parent = region
            o = fv.owner
            if isinstance(o, Op) and o.parent is region:
                pos = region.ops.index(o) + 1
            else:
                pos = 0
            region.ops.insert(pos, push)

    # -- callees -----------------------------------------------------------------------
    def callee_vjp(self, callee: str, active: tuple) -> str:
        prog = self.program
        key = prog.exports.get(callee, callee) if prog is not None else callee
        name = f"vjp_{key}_" + "_".join(map(str, active))
        if name not in prog.funcs:
            prog.funcs[name] = None
            prog.funcs[name] = ReverseAD(prog).vjp_func(prog.funcs[key], active, "vjp", name)
        return name


def inline_calls(func: Func, program: Program, limit: int = 2000) -> Func:
    """A copy of ``func`` with the calls it makes (and those its callees make) replaced by
    the callees' bodies, while the function stays under ``limit`` ops: the reverse sweep
    then reuses the forward sweep's values instead of running each callee's forward
    sweep again inside its VJP."""
    from dplang.passes.simplify import _replace_uses, clone_func
    func = clone_func(func)
    changed = True
    while changed:
        changed = False
        for op in list(func.walk()):
            if op.name != "call" or "transform" in op.attrs or program is None:
                continue
            key = program.exports.get(op.attrs["callee"], op.attrs["callee"])
            callee = program.funcs.get(key)
            # (a function with @argmin/@root/@fixed_point is not inlined: its derivative
            # is not its body's but the implicit one, passes/implicit.py)
            if callee is None or "implicit" in callee.attrs or sum(1 for _ in func.walk()) + sum(
                    1 for _ in callee.walk()) > limit:
                continue
            body = clone_func(callee).body
            pmap = dict(zip(body.args, op.operands))
            for o in body.walk():
                o.operands = [pmap.get(x, x) for x in o.operands]
            ret = body.ops[-1]
            region = op.parent
            pos = region.ops.index(op)
            new_ops = body.ops[:-1]
            for o in new_ops:
                o.parent = region
            region.ops[pos:pos + 1] = new_ops
            for old, new in zip(op.results, ret.operands):
                _replace_uses(func.body, old, pmap.get(new, new))
            changed = True
            break
    return func


def reverse_program(program: Program, key: str, active: tuple, mode: str) -> tuple[Program, str]:
    """A copy of ``program`` that also holds the ``mode`` function ("grad", "vjp",
    "value_and_grad") of ``key`` w.r.t. ``active``; returns it and the new key."""
    from dplang.passes.simplify import simplify_func
    prog = Program(dict(program.funcs), dict(program.exports), program.filename)
    if hasattr(program, "loader"):
        prog.loader = program.loader
    name = f"{mode}_{key}_" + "_".join(map(str, active))
    if name not in prog.funcs:
        before = set(prog.funcs)
        prog.funcs[name] = None
        prog.funcs[name] = ReverseAD(prog).vjp_func(program.funcs[key], active, mode, name)
        for k in set(prog.funcs) - before:
            simplify_func(prog.funcs[k])
    return prog, name
