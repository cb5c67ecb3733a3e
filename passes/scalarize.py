"""Scalar replacement of small loop-carried arrays.

A loop that carries a small array of static shape (at most ``MAX_SIZE`` entries) and
only reads and writes single entries at constant indices (``a[0] = a[0] * 0.9 + x[i]``)
is rewritten to carry one scalar per entry instead.  The values are the same (each entry
is the same sequence of IEEE operations); what changes is that code generators keep the
entries in registers, and reverse mode carries scalar adjoints instead of writing a small
adjoint array (and taping the overwritten entries) every iteration.

Before the loop the entries are read from the initial array; after it, reads of the
result at constant indices use the scalars, and any other use gets the array rebuilt
from them.
"""
from __future__ import annotations

from dplang.ir import types as T
from dplang.ir.builder import Builder
from dplang.ir.analysis import uses as func_uses
from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.passes.simplify import _replace_uses, insert_before

MAX_SIZE = 8


def _const_index(op: Op, first: int, shape) -> tuple | None:
    """The flat entry (a tuple of non-negative ints) ``op`` indexes, when every index is a
    constant integer and there is one per axis; else None."""
    idx = op.operands[first:]
    index = op.attrs.get("index")
    if len(idx) != len(shape) or (index is not None and any(e != "i" for e in index)):
        return None
    out = []
    for v, n in zip(idx, shape):
        o = v.owner
        if not (isinstance(o, Op) and o.name == "const" and isinstance(o.attrs["value"], int)
                and not isinstance(o.attrs["value"], bool)):
            return None
        c = o.attrs["value"]
        c = c + n if c < 0 else c
        if not 0 <= c < n:
            return None
        out.append(c)
    return tuple(out)


def _entries(shape):
    out = [()]
    for n in shape:
        out = [e + (k,) for e in out for k in range(n)]
    return out


def _candidate(op: Op, k: int, uses: dict):
    """The body's version chain of carried slot ``k`` when it can be scalarised."""
    body = op.regions[-1]
    off = 1 if op.name == "for" else 0
    arg = body.args[off + k]
    t = arg.type
    if not isinstance(t, T.Array) or not all(isinstance(d, int) for d in t.shape):
        return None
    size = 1
    for d in t.shape:
        size *= d
    if size == 0 or size > MAX_SIZE:
        return None
    if op.name == "while" and any(uses.get(a) for a in op.regions[0].args[k:k + 1]):
        return None                      # the condition reads the array
    y = body.ops[-1].operands[k]
    versions = [arg]
    v = arg
    for o in body.ops[:-1]:
        for x in o.operands:
            if x in versions and x is not v:
                return None              # an older version used after a write
        if o.name == "setitem" and o.operands[0] is v:
            if _const_index(o, 2, t.shape) is None or o.operands[1].type.ndim != 0:
                return None
            v = o.results[0]
            versions.append(v)
    if y is not v:
        return None
    for ver in versions:
        for u in uses.get(ver, ()):
            if u.parent is not body and u.name != "yield":
                return None
            if u.name == "getitem" and u.operands[0] is ver:
                if _const_index(u, 1, t.shape) is None:
                    return None
            elif u.name == "setitem" and u.operands[0] is ver:
                pass
            elif u is body.ops[-1] and ver is y:
                if sum(1 for x in u.operands if x is ver) != 1:
                    return None
            else:
                return None
    return versions


def scalarize_func(func: Func) -> bool:
    changed = False
    while True:
        uses = func_uses(func)
        for op in list(func.walk()):
            if op.name not in ("for", "while"):
                continue
            for k in range(len(op.results)):
                versions = _candidate(op, k, uses)
                if versions is not None:
                    _rewrite(func, op, k, versions, uses)
                    changed = True
                    break
            else:
                continue
            break
        else:
            return changed


def _rewrite(func: Func, op: Op, k: int, versions, uses) -> None:
    is_for = op.name == "for"
    nb = 3 if is_for else 0
    off = 1 if is_for else 0
    body = op.regions[-1]
    arg = versions[0]
    t = arg.type
    dt = t.dtype
    ents = _entries(t.shape)
    region = op.parent
    pos = region.ops.index(op)
    pre = Region()
    b = Builder(pre, op.loc)
    init = op.operands[nb + k]
    hint = arg.hint or "a"
    firsts = [b.prim("getitem", init, *[b.const(c) for c in e], hint=f"{hint}_{'_'.join(map(str, e))}")
              for e in ents]
    for o in pre.ops:
        o.parent = region
    region.ops[pos:pos] = pre.ops
    # new region args for every region of the loop (a while's condition too)
    new_args = {}
    for reg in op.regions:
        i = off + k if reg is body else k       # a while's regions have no iv
        vals = [Value(T.Scalar(dt), f"{hint}_{'_'.join(map(str, e))}") for e in ents]
        for v in vals:
            v.owner = reg
        reg.args[i:i + 1] = vals
        new_args[reg] = vals
    # the body: entries as values, reads replaced, writes dropped
    cur = dict(zip(ents, new_args[body]))
    bb = Builder(None, op.loc)
    new_ops = []
    rep: dict = {}
    for o in body.ops[:-1]:
        if o.name == "getitem" and o.operands[0] in versions:
            rep[o.results[0]] = cur[_const_index(o, 1, t.shape)]
            continue
        if o.name == "setitem" and o.operands[0] in versions:
            v = o.operands[1]
            v = rep.get(v, v)
            if v.type.dtype != dt:
                tmp = Region()
                with bb.at(tmp), bb.located(o.loc):
                    v = bb.cast(v, dt)
                new_ops += tmp.ops
            cur[_const_index(o, 2, t.shape)] = v
            continue
        o.operands = [rep.get(x, x) for x in o.operands]
        for sub in o.regions:
            for so in sub.walk():
                so.operands = [rep.get(x, x) for x in so.operands]
        new_ops.append(o)
    y = body.ops[-1]
    yv = [rep.get(x, x) for x in y.operands]
    yv[k:k + 1] = [cur[e] for e in ents]
    y.operands = yv
    for o in new_ops:
        o.parent = body
    body.ops = new_ops + [y]
    # the loop op: operands and results
    old_res = op.results[k]
    ops_ = list(op.operands)
    ops_[nb + k:nb + k + 1] = firsts
    op.operands = ops_
    res = [Value(T.Scalar(dt), f"{hint}_{'_'.join(map(str, e))}", old_res.loc) for e in ents]
    for r in res:
        r.owner = op
    op.results[k:k + 1] = res
    # uses of the old result after the loop
    after = list(uses.get(old_res, ()))
    by_entry = dict(zip(ents, res))
    need_array = any(not (u.name == "getitem" and u.operands[0] is old_res
                          and _const_index(u, 1, t.shape) is not None) for u in after)
    post = Region()
    pb = Builder(post, op.loc)
    for u in after:
        if u.name == "getitem" and u.operands[0] is old_res and \
                _const_index(u, 1, t.shape) is not None:
            _replace_uses(func.body, u.results[0], by_entry[_const_index(u, 1, t.shape)])
    if need_array:
        arr = pb.prim("zeros", *[pb.const(d) for d in t.shape], dtype=dt, _shape=t.shape,
                      hint=old_res.hint)
        for e in ents:
            arr = pb.prim("setitem", arr, by_entry[e], *[pb.const(c) for c in e],
                          hint=old_res.hint)
        _replace_uses(func.body, old_res, arr)
    pos = region.ops.index(op) + 1
    for o in post.ops:
        o.parent = region
    region.ops[pos:pos] = post.ops


def run(program: Program) -> Program:
    """Scalarise in every function (a copy of the program; the input is not modified)."""
    from dplang.passes.simplify import rewrite_funcs
    return rewrite_funcs(program, scalarize_func)


# ------------------------------------------------------------ small soft choices
SMALL_CHOICE = 8        # at most this many entries


def _small_array(v: Value):
    """The scalar operands of ``array(a, b, ...)`` when ``v`` is such a 1-D array of at
    most ``SMALL_CHOICE`` floats; else None."""
    o = v.owner
    if not (isinstance(o, Op) and o.name == "array" and isinstance(v.type, T.Array)
            and v.type.ndim == 1 and 1 <= len(o.operands) <= SMALL_CHOICE
            and all(isinstance(x.type, T.Scalar) and x.type.dtype == v.type.dtype
                    for x in o.operands)
            and v.type.dtype in ("f64", "f32")):
        return None
    return list(o.operands)


def _whole(op: Op) -> bool:
    return op.attrs.get("axis", -1) in (-1, 0, None, (0,), (-1,))


def small_choices_func(func: Func) -> bool:
    """Smoothed choices among a few scalars written as an array, as a DP cell that keeps
    its predecessors' weights does (``q = array([R[i - 1, j - 1], R[i - 1, j], R[i, j -
    1]])``, ``W[i, j, :] = onehot_argmin(q)``, ``R[i, j] = D[i - 1, j - 1] + min(q)``,
    smoothed into ``sargmin`` and ``smin``): each cell allocated the array, the weights
    and their copy (150 ms for a 512 x 512 soft alignment, 30x the gradient of soft-DTW,
    which computes the same matrix).  Rewritten into scalar ops:

    * ``sargmin/sargmax(array(x...), gamma)`` -> ``array(w...)``, the weights in the
      elementary ops that ``sminn``'s own derivative uses (ir/primitives/soft.py,
      ``_entropy_cell``; ``_l2_cell`` for two or three entries under l2): exact at
      ``inf`` entries and tiny gamma, finite derivatives of any order;
    * ``smin/smax`` of the same array -> the value that cell computes (entropy), else
      ``sminn/smaxn(gamma, x...)``;
    * the hard forms too: ``onehot_argmin/onehot_argmax(array(x...))`` -> the one-hot
      weights of the first extreme entry as NumPy picks it (the first NaN when there
      is one), ``min/max(array(x...))`` -> ``minn/maxn(x...)`` (72 -> 3.5 ms for the
      hard alignment at 512);
    * ``setitem(W, array(w...), ..., :)`` over a last axis of that static length -> one
      scalar ``setitem`` per entry, and ``getitem(array(w...), k)`` -> ``w_k``.

    (``dp.smooth`` therefore smooths a function before this stage, as ``@smooth`` is:
    after it no ``onehot_argmin`` would be left to smooth.)

    Returns whether anything changed; the arrays left unused go with dead code."""
    from dplang.ir.primitives.soft import _entropy_cell, _l2_cell
    changed = False
    values: dict = {}           # (array, gamma, reg, sign) -> the cell's smoothed value
    for op in list(func.walk()):
        if op.name not in ("sargmin", "sargmax") or not _whole(op):
            continue
        xs = _small_array(op.operands[0])
        reg = op.attrs.get("reg", "entropy")
        if xs is None or (reg == "l2" and len(xs) > 3) or reg not in ("entropy", "l2") \
                or op.operands[1].type != T.Scalar(xs[0].type.dtype):
            continue
        sign = 1 if op.name == "sargmax" else -1
        tmp = Region()
        b = Builder(tmp, op.loc)
        if reg == "entropy":
            z, ws = _entropy_cell(b, op.operands[1], xs, sign)
            values[(op.operands[0], op.operands[1], reg, sign)] = z
        else:
            ws = _l2_cell(b, op.operands[1], xs, sign)
        q = b.prim("array", *ws, hint=op.results[0].hint)
        insert_before(op, tmp.ops)
        _replace_uses(func.body, op.results[0], q)
        changed = True
    for op in list(func.walk()):
        if op.name in ("onehot_argmin", "onehot_argmax", "min", "max") and _whole(op) \
                and _small_array(op.operands[0]) is not None:
            xs = _small_array(op.operands[0])
            tmp = Region()
            b = Builder(tmp, op.loc)
            if op.name in ("min", "max"):
                if not isinstance(op.results[0].type, T.Scalar):
                    continue
                rep = b.prim(op.name + "n", *xs, hint=op.results[0].hint)
            else:
                rep = b.prim("array", *_first_extreme(b, xs, op.name == "onehot_argmax"),
                             hint=op.results[0].hint)
            insert_before(op, tmp.ops)
            _replace_uses(func.body, op.results[0], rep)
            changed = True
        elif op.name in ("smin", "smax") and _whole(op) and _small_array(op.operands[0]) \
                and isinstance(op.results[0].type, T.Scalar):
            xs = _small_array(op.operands[0])
            if op.operands[1].type != T.Scalar(xs[0].type.dtype):
                continue
            sign = 1 if op.name == "smax" else -1
            reg = op.attrs.get("reg", "entropy")
            z = values.get((op.operands[0], op.operands[1], reg, sign))
            if z is None:
                tmp = Region()
                b = Builder(tmp, op.loc)
                z = b.prim("smaxn" if sign > 0 else "sminn", op.operands[1], *xs, reg=reg,
                           hint=op.results[0].hint)
                insert_before(op, tmp.ops)
            _replace_uses(func.body, op.results[0], z)
            changed = True
        elif op.name == "setitem" and _small_array(op.operands[1]) is not None:
            changed |= _setitem_entries(func, op)
        elif op.name == "getitem" and _small_array(op.operands[0]) is not None:
            xs = _small_array(op.operands[0])
            k = _const_index(op, 1, (len(xs),))
            if k is not None and isinstance(op.results[0].type, T.Scalar):
                _replace_uses(func.body, op.results[0], xs[k[0]])
                changed = True
    return changed


def _first_extreme(b: Builder, xs: list, maximum: bool) -> list:
    """The one-hot f64 weights of the first maximiser (minimiser) of scalars ``xs``, as
    NumPy's argmax (argmin) picks it: the first NaN when there is one."""
    nans = [b.prim("ne", x, x) for x in xs]
    anynan = nans[0]
    for v in nans[1:]:
        anynan = b.prim("logical_or", anynan, v)
    m = b.prim("maxn" if maximum else "minn", *xs)
    found = None
    out = []
    for x, nan in zip(xs, nans):
        hit = b.prim("logical_or", b.prim("logical_and", anynan, nan),
                     b.prim("logical_and", b.prim("logical_not", anynan),
                            b.prim("eq", x, m)))
        pick = hit if found is None else b.prim("logical_and", hit,
                                                 b.prim("logical_not", found))
        found = hit if found is None else b.prim("logical_or", found, hit)
        out.append(b.prim("cast", pick, dtype="f64", hint="w"))
    return out


def _setitem_entries(func: Func, op: Op) -> bool:
    """``W[..., :] = array(w...)`` (integer indices, then a whole last axis whose static
    length is the number of entries) as one scalar write per entry."""
    xs = _small_array(op.operands[1])
    arr = op.operands[0]
    index = op.attrs.get("index")
    full = ("slice", False, False, False)
    if not (isinstance(arr.type, T.Array) and index is not None and len(index) == arr.type.ndim
            and index[-1] == full and all(e == "i" for e in index[:-1])
            and arr.type.shape[-1] == len(xs) and arr.type.dtype == op.operands[1].type.dtype):
        return False
    tmp = Region()
    b = Builder(tmp, op.loc)
    cur = arr
    idx = op.operands[2:]
    for k, x in enumerate(xs):
        cur = b.prim("setitem", cur, x, *idx, b.const(k), hint=op.results[0].hint)
    insert_before(op, tmp.ops)
    _replace_uses(func.body, op.results[0], cur)
    op.parent.ops.remove(op)
    return True


def small_choices(program: Program) -> Program:
    """``small_choices_func`` on every function; ``DPLANG_SMALL_CHOICES=0`` turns it
    off (the random-program tests' reference runs without it)."""
    import os
    from dplang.passes.simplify import rewrite_funcs
    if os.environ.get("DPLANG_SMALL_CHOICES", "1").strip().lower() in ("0", "false", "no",
                                                                      "off"):
        return program
    return rewrite_funcs(program, small_choices_func, wanted=lambda f: any(
        op.name in _CHOICES for op in f.body.walk()))


_CHOICES = ("sargmin", "sargmax", "smin", "smax", "onehot_argmin", "onehot_argmax", "min",
            "max")
