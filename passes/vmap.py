"""``dp.vmap`` (SPEC 3) as an IR -> IR transformation: ``f`` mapped over a leading batch
axis.

For ``f(a, b, c)`` with ``in_axes = (0, None, 0)`` the pass adds to the program

    func vmap_f_0_2(a: f64[batch, ...a's shape], b: <b's type>, c: f64[batch, ...])
        r = f(a[0], b, c[0])                   # the first example fixes the result shapes
        out = full(0, batch, *r's dims); out[0, ...] = r
        for k in range(1, batch):              # parallel: examples are independent
            out[k, ...] = f(a[k], b, c[k])
        return out                             # one stacked array per result of f

A batched parameter gets a leading axis named ``batch`` (so the API checks that every
batched argument has the same leading size, with the usual located ``DPShapeError``);
a scalar parameter becomes a 1-D array.  The loop carries the ``parallel`` attribute:
the CPU backend runs it with ``numba.prange`` across cores (backends/cpu/codegen.py,
docs/backend_cpu.md), the interpreter in order.  Because the result is an ordinary
function of the IR, every transformation applies to it and to what it maps:
``vmap(grad(f))`` gives per-example gradients, ``grad`` of a function of
``vmap(f)``'s results differentiates through the loop.

An empty batch has no first example: a located ``DPShapeError`` (JAX can trace
shapes without an example; dplang's result shapes are only known at run time).
"""
from __future__ import annotations

from dplang.errors import DPTypeError
from dplang.ir import types as T
from dplang.ir.builder import Builder
from dplang.ir.core import Func, Program, Region, Value
from dplang.ir.primitives.rules import E, builder, dims, emitting, full, lift, loop, put

_ALL = slice(None)


def batch_name(func: Func) -> str:
    """A dimension name for the batch axis that ``func``'s own types do not use."""
    used = set()
    for t in [p.type for p in func.params] + list(func.result_types):
        for d in getattr(t, "shape", ()):
            if isinstance(d, T.Sym):
                used.update(n for n, _ in d.terms)
    name = "batch"
    k = 1
    while name in used:
        name, k = f"batch_{k}", k + 1
    return name


def vmap_program(program: Program, key: str, batched: tuple) -> tuple[Program, str]:
    """A copy of ``program`` that also holds ``key`` mapped over the leading axis of the
    parameters whose entry in ``batched`` is True; returns it and the new key."""
    from dplang.passes.simplify import simplify_func
    prog = Program(dict(program.funcs), dict(program.exports), program.filename)
    if hasattr(program, "loader"):
        prog.loader = program.loader
    key = program.exports.get(key, key)
    name = f"vmap_{key}_" + "_".join(str(k) for k, b in enumerate(batched) if b)
    if name not in prog.funcs:
        prog.funcs[name] = simplify_func(vmap_func(program.funcs[key], batched, name))
    return prog, name


def vmap_func(func: Func, batched: tuple, name: str) -> Func:
    if not any(batched):
        raise DPTypeError(f"dp.vmap of '{func.name}': no argument is mapped (in_axes has no 0)",
                          func.loc)
    bname = batch_name(func)
    bdim = T.Sym.name(bname)
    params = []
    for p, b in zip(func.params, batched):
        t = p.type
        if b:
            if not isinstance(t, (T.Scalar, T.Array)):
                raise DPTypeError(f"dp.vmap: parameter '{p.hint}' of type {t} cannot be mapped",
                                  func.loc)
            t = T.Array(t.dtype, (bdim,) + tuple(getattr(t, "shape", ())))
        params.append(Value(t, p.hint, p.loc))
    body = Region(params)
    b = Builder(body, func.loc)
    first = next(k for k, x in enumerate(batched) if x)
    with emitting(b):
        n = E(b.prim("dim", params[first], axis=0, hint=bname))
        ok = b.prim("gt", n.v, b.const(0))
        b.op("assert", [ok], [], {"msg": f"dp.vmap of '{_short(func.name)}': the batch is "
                                         f"empty (no example to run)", "kind": "shape"})

        def example(k):
            return [_row(E(p), k) if bb else E(p) for p, bb in zip(params, batched)]

        def call(args):
            op = builder().op("call", [a.v for a in args], list(func.result_types),
                         {"callee": func.name}, hints=[None] * len(func.result_types))
            return [E(r) for r in op.results]
        r0 = call(example(lift(0)))
        outs = []
        for r, t in zip(r0, func.result_types):
            shape = (bdim,) + tuple(getattr(t, "shape", ()))
            fill = lift(False) if t.dtype == "bool" else lift(0, t.dtype)
            o = full(fill, n, *dims(r), _shape=shape)
            outs.append(_put(o, r, lift(0)))
        if outs:        # the other examples: independent iterations
            outs = loop("for", outs, lambda k, *cur: [
                _put(o, r, k) for o, r in zip(cur, call(example(k)))],
                bounds=[lift(1), n, lift(1)], attrs={"parallel": True})
        b.return_(*[o.v for o in outs])
    rtypes = [o.v.type for o in outs]
    return Func(name, body, rtypes, func.loc, {}, list(func.param_names), func.returns_tuple,
                func.filename)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _row(x: E, k):
    """Example ``k`` of a batched value (its entry along the leading axis)."""
    if x.ndim == 1:
        return x[k]
    return x[(k,) + (_ALL,) * (x.ndim - 1)]


def _put(out: E, r: E, k):
    """``out`` with example ``k`` set to ``r``."""
    return put(out, r, k, *(_ALL,) * (out.ndim - 1))
