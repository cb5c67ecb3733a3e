"""Elementwise fusion: a run of elementwise array ops becomes one loop nest.

Without it each array op of ``tanh(X @ W.T + b)`` is one NumPy-style statement that
Numba compiles to its own loop over a fresh array: the sum is written to memory and read
back by ``tanh``.  Here consecutive elementwise ops of one region whose results have the
same shape form a *group*; the group is emitted as one loop nest over that shape whose
body computes every op of the group on scalars, in the ops' order:

    t9 = X @ W.T ...                     for i0 in range(n0):
    t10 = t9 + b            ->               for i1 in range(n1):
    Z = tanh(t10)                                t10 = t9[i0, i1] + b[i1]
                                                 Z[i0, i1] = rt_tanh(t10)

A value of the group that nothing outside the group uses (``t10``) never exists as an
array; the others (``Z``) are fresh C-contiguous arrays, as before.  The scalar forms are
the ones the array forms use element by element (``rt_tanh`` for tanh, libm for log),
so results are bit-identical to the unfused code.

Which ops: ``add sub mul div neg abs maximum minimum``, ``x ** 2``, ``exp expm1 tanh log
log1p sqrt sin cos tan sigmoid softplus`` and ``broadcast_to``, with float64 results of
rank 1 to 3 (the runtime's unchecked accessors) whose dimensions are all known; array
operands are float64 and broadcast *statically*: each of their dimensions is, by the
types, equal to the result's or 1.  Scalar operands are float64 or int64.  A group needs
two ops or more and one operand of the result's full shape (its run-time shape gives the
loop bounds).  Before the loop one test compares every other operand's run-time shape
with the loop bounds (a dimension of 1 must be 1); if it fails the function raises
``ValueError`` and the backend replays the call on the interpreter, which reports the
located error -- so the elements inside the loop are read without per-access checks.
"""
from __future__ import annotations

import os
import re

from dataclasses import dataclass, field

from dplang.ir import types as T
from dplang.ir.core import EFFECTS, Op, Region, Value
from dplang.ir.printer import is_inlined_const
from dplang.ir.primitives.reductions import norm_axes

MAX_NDIM = 3


def enabled() -> bool:
    """``DPLANG_FUSION=0`` turns fusion off (to compare, or to rule it out)."""
    return os.environ.get("DPLANG_FUSION", "1") not in ("0", "", "no", "off")


_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_LIBM = ("log", "log1p", "sqrt", "sin", "cos", "tan")
_RT = {"exp": "rt_exp", "expm1": "rt_expm1", "tanh": "rt_tanh",
       "sigmoid": "rt_sigmoid_v", "softplus": "rt_softplus_v"}
_MINMAX = {"maximum": "rt_max2", "minimum": "rt_min2"}
UNARY = set(_LIBM) | set(_RT) | {"neg", "abs"}
OPS = UNARY | set(_INFIX) | set(_MINMAX) | {"pow", "broadcast_to"}


@dataclass
class Group:
    ops: list                                   # in program order
    shape: tuple                                # the result shape (types)
    rep: Value                                  # an operand of the full shape
    outputs: set = field(default_factory=set)   # results used outside the group
    writes: list = field(default_factory=list)  # in-place writes of results done in the loop
    sums: list = field(default_factory=list)    # sums of results over one axis done in it
    reuse: dict = field(default_factory=dict)   # output -> the operand whose buffer it takes
    pushes: list = field(default_factory=list)  # tape pushes of results, done after the loop


def _is_two(v: Value) -> bool:
    o = v.owner
    return isinstance(o, Op) and o.name == "const" and o.attrs.get("value") == 2 \
        and isinstance(v.type, T.Scalar)


def _read_dims(op: Op, k: int, rank: int):
    """For operand ``k`` of ``op`` (an array), the result axis each of its axes runs
    along (right-aligned broadcasting, or ``broadcast_to``'s ``axis``)."""
    x = op.operands[k]
    if op.name == "broadcast_to" and op.attrs.get("axis") is not None:
        axes = norm_axes(op.attrs["axis"], rank, "broadcast_to")
        return [a for a in range(rank) if a not in axes]
    return list(range(rank - x.type.ndim, rank))


def _reads(op: Op):
    """The operands whose elements ``op`` reads."""
    return op.operands[:1] if op.name == "broadcast_to" else op.operands


def fusable(op: Op) -> bool:
    if op.name not in OPS or len(op.results) != 1 or op.regions:
        return False
    r = op.results[0].type
    if not isinstance(r, T.Array) or r.dtype != "f64" or not 1 <= r.ndim <= MAX_NDIM:
        return False
    if any(d is None for d in r.shape):
        return False
    if op.name == "pow" and not _is_two(op.operands[1]):
        return False
    if op.name == "broadcast_to":
        x, like = op.operands
        if not isinstance(like.type, T.Array) or tuple(like.type.shape) != tuple(r.shape):
            return False
        if not isinstance(x.type, T.Array):
            return False
    for k, x in enumerate(_reads(op)):
        t = x.type
        if isinstance(t, T.Scalar):
            if t.dtype not in ("f64", "i64"):
                return False
            continue
        if not isinstance(t, T.Array) or t.dtype != "f64" or t.ndim > r.ndim:
            return False
        dims = _read_dims(op, k, r.ndim)
        if len(dims) != t.ndim:
            return False
        for d, a in zip(t.shape, dims):
            if not (d == 1 or T.dims_equal(d, r.shape[a])):
                return False
    return True


def _scalar_only(op: Op) -> bool:
    return (not op.regions and op.name not in EFFECTS and op.name != "call"
            and all(isinstance(v.type, T.Scalar) for v in op.operands)
            and all(isinstance(v.type, T.Scalar) for v in op.results))


def plan(gen) -> dict:
    """{last op: Group} for every region of ``gen.func``: the group's loop is emitted
    where its last op stood.  Scalar ops between its ops (a cast of a loop index, say)
    do not end a run: they read no array, so they are emitted before the loop, in
    their place."""
    users: dict = {}
    for o in gen.func.walk():                   # (terminators included)
        for v in o.operands:
            users.setdefault(v, []).append(o)
    groups: dict = {}

    def close(run, pushes=()):
        if len(run) < 2:
            return
        members = set(run)
        made = {op.results[0] for op in run}
        rep = None
        for op in run:
            for x in _reads(op):
                if x not in made and isinstance(x.type, T.Array) \
                        and tuple(x.type.shape) == tuple(run[0].results[0].type.shape) \
                        and all(d != 1 for d in x.type.shape) \
                        and op.name != "broadcast_to":
                    rep = rep or x
        if rep is None:
            return
        g = Group(list(run), tuple(run[0].results[0].type.shape), rep)
        g.writes = _write_through(gen, run, users)
        g.sums = _sums(gen, run, users)
        members |= set(g.writes) | set(g.sums)
        for op in run:
            r = op.results[0]
            if any(u not in members for u in users.get(r, ())):
                g.outputs.add(r)
        g.reuse = _reuse(gen, g, users, groups)
        g.pushes = list(pushes)
        groups[run[-1]] = g

    def ok(op: Op) -> bool:         # (and an op the code generator knows unfused)
        return fusable(op) and hasattr(gen, "p_" + op.name) and op not in gen.absorbed

    def walk(region: Region):
        run: list = []
        pushes: list = []
        for op in region.ops:
            for reg in op.regions:
                walk(reg)
            if is_inlined_const(op):
                continue
            if ok(op) and (not run or tuple(op.results[0].type.shape)
                                           == tuple(run[0].results[0].type.shape)):
                run.append(op)
                continue
            if run and _scalar_only(op):
                continue                # stays where it is; the run goes on
            if run and op.name == "tape_push" and isinstance(op.operands[1].type, T.Array) \
                    and any(op.operands[1] is o.results[0] for o in run):
                # reverse mode tapes a result of the run: the run goes on, and the push
                # follows the loop (the loop may compute the result into its entry)
                pushes.append(op)
                continue
            close(run, pushes)
            run, pushes = ([op] if ok(op) else []), []
        close(run, pushes)
    walk(gen.func.body)
    return groups


_VIEWS = ("getitem", "reshape", "transpose")


def _may_view(v: Value, x: Value) -> bool:
    """Whether ``v`` may share ``x``'s buffer: ``x`` itself or a view of it."""
    while True:
        if v is x:
            return True
        o = v.owner
        if not (isinstance(o, Op) and o.name in _VIEWS):
            return False
        v = o.operands[0]


def _same_view(y: Value, u: Op) -> bool:
    """``y`` is ``x[idx]`` for the table ``x`` and the indices that write ``u`` uses."""
    o = y.owner
    return isinstance(o, Op) and o.name == "getitem" and o.operands[0] is u.operands[0] \
        and list(o.operands[1:]) == list(u.operands[2:]) \
        and (o.attrs.get("index") or ("i",) * (len(o.operands) - 1)) \
        == (u.attrs.get("index") or ("i",) * len(u.operands[2:]))


def _write_through(gen, run: list, users: dict) -> list:
    """The in-place ``A[i, :] = r`` / ``A[i, :] += r`` (setitem/scatter_add of a result
    ``r`` of the group over a view of the loop's shape, integer indices and whole
    slices) that the loop can do itself, element by element, instead of a second pass
    over ``r``.  Only when the write can move up to the loop: the ops in between are
    straight-line code that reads neither ``A`` nor a view of it, the indices exist at
    the loop, and the group reads neither."""
    region = run[-1].parent
    if region is None:
        return []
    pos = {id(o): k for k, o in enumerate(region.ops)}
    end = pos[id(run[-1])]
    made = {op.results[0] for op in run}
    rank = len(run[0].results[0].type.shape)
    reads = [(k, j, x) for k, op in enumerate(run) for j, x in enumerate(_reads(op))
             if isinstance(x.type, T.Array)]
    out = []
    for at, op in enumerate(run):
        r = op.results[0]
        for u in users.get(r, ()):
            if u.name not in ("setitem", "scatter_add") or u.parent is not region or \
                    u.operands[1] is not r or r in u.operands[2:] or u.operands[0] in made:
                continue
            if u not in gen.inplace or u in gen.unchecked or u in gen.carry_of:
                continue
            x = u.operands[0]
            if x.type.dtype != "f64" or gen.view_rank(u) != len(r.type.shape):
                continue
            index = u.attrs.get("index") or ("i",) * len(u.operands[2:])
            if any(e != "i" and tuple(e[1:]) != (False, False, False) for e in index):
                continue
            view = [d for e, d in zip(index + ("s",) * x.type.ndim, x.type.shape)
                    if e != "i"][:len(r.type.shape)]
            if not all(T.dims_equal(a, b) for a, b in zip(view, r.type.shape)):
                continue
            # the group may read the view it writes (``A[t] += w``: each element is read
            # before it is written), element by element at the loop's index, in ops up
            # to the one that makes the value written; any other view of A ends it
            if any(_may_view(y, x) and not (
                    _same_view(y, u) and k <= at and tuple(y.type.shape) == tuple(r.type.shape)
                    and _read_dims(run[k], j, rank) == list(range(rank)))
                   for k, j, y in reads):
                continue
            k = pos.get(id(u))
            if k is None or k <= end:
                continue
            between = region.ops[end + 1:k]
            if any(b.regions or b.name in EFFECTS or any(
                    isinstance(y.type, T.Array) and y not in made and
                    (_may_view(y, x) or (isinstance(y.owner, Op) and y.owner.name in _VIEWS))
                    for y in b.operands) for b in between):
                continue
            defined_late = {v for b in between for v in b.results}
            if x in defined_late or any(i in defined_late for i in u.operands[2:]):
                continue
            out.append(u)
    return out


def _reuse(gen, g: Group, users: dict, groups: dict) -> dict:
    """{output: operand} for outputs written into the buffer of an operand that dies in
    the group: a new C-contiguous array of the loop's shape (a 2-D matrix product, or
    an output of an earlier loop of the region) that nothing else uses, read element by
    element at the loop's own index and only by ops up to the output's (each element is
    read before the output's element overwrites it).  ``tanh(X @ W.T + b)`` then needs
    one 1 MB array instead of two at N = 2048, h = 64 (and the cache holds half)."""
    region = g.ops[0].parent
    made = {op.results[0] for op in g.ops}
    earlier = {r for h in groups.values() if h.ops[0].parent is region for r in h.outputs}
    rank = len(g.shape)
    reads: dict = {}                    # operand -> [positions of the ops reading it]
    for k, op in enumerate(g.ops):
        for j, x in enumerate(_reads(op)):
            if x in made or not isinstance(x.type, T.Array):
                continue
            ok = tuple(x.type.shape) == g.shape and _read_dims(op, j, rank) == list(range(rank))
            reads.setdefault(x, []).append(k if ok else None)
    out, taken = {}, set()
    for k, op in enumerate(g.ops):
        r = op.results[0]
        if r not in g.outputs:
            continue
        for x, ks in reads.items():
            o = x.owner
            fresh = x in earlier or (isinstance(o, Op) and o.name == "matmul" and all(
                v.type.ndim == 2 for v in o.operands))
            if x in taken or not fresh or not isinstance(o, Op) or o.parent is not region \
                    or x.type.dtype != "f64" or x in gen.escapes or None in ks \
                    or max(ks) > k or any(u not in g.ops for u in users.get(x, ())):
                continue
            out[r] = x
            taken.add(x)
            break
    return out


def sum_axis(u: Op, rank: int):
    """``"rows"`` for a sum over the last axis of a rank-``rank`` array, ``"lead"`` over
    the first (rank 2 or more), else None."""
    axes = norm_axes(u.attrs.get("axis"), rank, "sum")
    if rank < 2 or len(axes) != 1:
        return None
    return "rows" if axes[0] == rank - 1 else "lead" if axes[0] == 0 else None


def _sums(gen, run: list, users: dict) -> list:
    """The ``sum(r, axis=...)`` of a result ``r`` of the group over its first or its last
    axis that the loop accumulates as it computes ``r`` (no second pass over ``r``, and
    no ``r`` at all when nothing else reads it).  ``r`` is a new array that no write
    reaches, so the sum can move up to the loop."""
    region = run[-1].parent
    out = []
    for op in run:
        r = op.results[0]
        for u in users.get(r, ()):
            if u.name == "sum" and u.parent is region and u.operands[0] is r and \
                    u not in gen.unchecked and u not in gen.early and \
                    sum_axis(u, r.type.ndim) is not None:
                out.append(u)
    return out


def emit(gen, g: Group, ind: int):
    """The loop nest of group ``g``."""
    first = g.ops[0]
    rank = len(g.shape)
    made = {op.results[0] for op in g.ops}
    rep = gen.ref(g.rep)
    # the same index and extent names in every fused loop of the function (the loops
    # follow one another; they never nest)
    names = gen.__dict__.setdefault("_fusion_names", {})
    for a in range(rank):
        if ("n", a) not in names:
            names["n", a], names["i", a] = gen.fresh(f"n{a}"), gen.fresh(f"i{a}")
    ns = [names["n", a] for a in range(rank)]
    iv = [names["i", a] for a in range(rank)]
    for a, n in enumerate(ns):
        gen.line(ind, f"{n} = {rep}.shape[{a}]", first)
    # one test of every other operand's shape against the loop bounds
    tests, seen = [], {g.rep}
    for op in g.ops:
        checked = [(x, _read_dims(op, k, rank)) for k, x in enumerate(_reads(op))
                   if isinstance(x.type, T.Array)]
        if op.name == "broadcast_to":         # the shape it broadcasts to
            checked.append((op.operands[1], list(range(rank))))
        for x, dims in checked:
            if x in seen or x in made:
                continue
            seen.add(x)
            for ax, (d, a) in enumerate(zip(x.type.shape, dims)):
                want = "1" if d == 1 and g.shape[a] != 1 else ns[a]
                tests.append(f"{gen.ref(x)}.shape[{ax}] != {want}")
    views = {}
    for u in g.writes:
        w = views[u] = gen.fresh(gen.ref(u.operands[0]) + "_v")
        gen.line(ind, f"{w} = {gen.ref(u.operands[0])}[{gen.index_text(u, u.operands[2:])}]", u)
        tests += [f"{w}.shape[{a}] != {ns[a]}" for a in range(rank)]
    if tests:
        gen.line(ind, f"if {' or '.join(tests)}:", first)
        gen.line(ind + 1, "raise ValueError('elementwise operands could not be broadcast "
                          "together')", first)
    shape = _tuple(ns)
    for op in g.ops:
        r = op.results[0]
        if r in g.outputs:
            if gen.take_dest(r, ind, op, shape) is not None:    # its tape entry
                continue
            x = g.reuse.get(r)          # (else an operand's buffer, or a new array)
            new = f"np.empty({shape}, np.float64)"
            gen.line(ind, f"{gen.ref(r)} = {gen.ref(x) if x is not None else new}", op)
    # sums over the first axis add each element into their result; sums over the last
    # one add a row in order in a local (rows of up to 128 entries: NumPy's pairwise
    # order would need eight accumulators, and this is as accurate for such rows), and
    # longer rows go into a buffer summed as NumPy does
    rowsum = {}
    for u in g.sums:
        s = gen.ref(u.results[0])
        kept = ns[1:] if sum_axis(u, rank) == "lead" else ns[:-1]
        fill = "zeros" if sum_axis(u, rank) == "lead" else "empty"
        gen.line(ind, f"{s} = np.{fill}({_tuple(kept)}, np.float64)", u)
        if sum_axis(u, rank) == "rows":
            rowsum[u] = gen.fresh(s + "_s"), gen.fresh(s + "_long"), gen.fresh(s + "_row")
            gen.line(ind, f"{rowsum[u][1]} = {ns[-1]} > 128", u)
            gen.line(ind, f"{rowsum[u][2]} = np.empty({ns[-1]} if {rowsum[u][1]} else 0, "
                          f"np.float64)", u)
    for a in range(rank):
        if a == rank - 1:
            for u, (s, _, _) in rowsum.items():
                gen.line(ind + a, f"{s} = 0.0", u)
        gen.line(ind + a, f"for {iv[a]} in range({ns[a]}):", first)
    body = ind + rank
    local: dict = {}

    def elem(op: Op, k: int) -> str:
        x = op.operands[k]
        if x in local:
            return local[x]
        if not isinstance(x.type, T.Array):
            return gen.ref(x)
        dims = _read_dims(op, k, rank)
        idx = ", ".join("0" if d == 1 and g.shape[a] != 1 else iv[a]
                        for d, a in zip(x.type.shape, dims))
        return load(gen, x, idx)

    for op in g.ops:
        r = op.results[0]
        e = scalar_expr(gen, op, [elem(op, k) for k in range(len(_reads(op)))])
        idx = ", ".join(iv)
        writes = [u for u in g.writes if u.operands[1] is r]
        sums = [u for u in g.sums if u.operands[0] is r]
        inside = any(r in o.operands for o in g.ops)
        if r not in local and (writes or sums or inside or r not in g.outputs):
            # the element gets a local: the array's name when there is no array
            s = local[r] = gen.ref(r) if r not in g.outputs else gen.fresh(gen.ref(r) + "_e")
            gen.line(body, f"{s} = {e}", op)
            e = s
        for u in writes:
            w = views[u]
            gen.line(body, store(gen, w, idx, e, rank, "+=" if u.name == "scatter_add" else "="), u)
        if r in g.outputs:
            gen.line(body, store(gen, r, idx, e), op)
        for u in sums:              # (after the stores: measured faster in this order)
            if u in rowsum:
                s, long, row = rowsum[u]
                gen.line(body, f"if {long}:", u)
                gen.line(body + 1, store(gen, row, iv[-1], e, 1), u)
                gen.line(body, f"{s} += {e}", u)
            else:
                gen.line(body, store(gen, u.results[0], ", ".join(iv[1:]), e, rank - 1, "+="), u)
    for u, (s, long, row) in rowsum.items():
        total = f"{gen.mod.helper('rt_psum')}({row}) if {long} else {s}"
        gen.line(body - 1, store(gen, u.results[0], ", ".join(iv[:-1]), total, rank - 1), u)
    for p in g.pushes:              # (a result computed into its tape entry: a count)
        gen.op(p, ind)


def _tuple(dims: list) -> str:
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def load(gen, x: Value, idx: str) -> str:
    if gen.mod.boundscheck:
        return gen.unchecked_load(x, idx)
    return f"{gen.ref(x)}[{idx}]"


def store(gen, x, idx: str, val: str, rank: int | None = None, sym: str = "=") -> str:
    """``x[idx] = val`` (or ``+=``) without per-access checks; ``x`` a Value, or a local's
    name with its rank."""
    name = x if isinstance(x, str) else gen.ref(x)
    rank = rank if rank is not None else x.type.ndim
    if gen.mod.boundscheck:
        acc = gen.mod.helper(("rt_put" if sym == "=" else "rt_inc") + str(rank))
        return f"{acc}({name}, {idx}, {val})"
    return f"{name}[{idx}] {sym} {val}"


def _p(s: str) -> str:
    """Parenthesise an operand text unless it is a name, a non-negative number or one
    call."""
    from dplang.backends.cpu.codegen import _balanced_outer, _paren
    m = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*(\(.*\))", s)
    return s if m and _balanced_outer(m.group(1)) else _paren(s)


def scalar_expr(gen, op: Op, xs: list) -> str:
    """The scalar form of elementwise ``op`` on the element texts ``xs``."""
    n = op.name
    if n in _INFIX:
        return f"{_p(xs[0])} {_INFIX[n]} {_p(xs[1])}"
    if n == "pow":
        return f"{_p(xs[0])} * {_p(xs[0])}"
    if n == "neg":
        return f"-{_p(xs[0])}"
    if n == "abs":
        return f"abs({xs[0]})"
    if n == "broadcast_to":
        return xs[0]
    if n in _MINMAX:
        return f"{gen.mod.helper(_MINMAX[n])}({xs[0]}, {xs[1]})"
    if n in _RT:
        return f"{gen.mod.helper(_RT[n])}({xs[0]})"
    return f"math.{n}({xs[0]})"
