"""Forward-mode differentiation as an IR -> IR pass.

``jvp_func(program, func, active)`` builds a new function

    f_jvp(x_0, ..., x_k, dx_a, dx_b, ...) -> (y_0, ..., y_r, dy_0, ..., dy_r)

taking one tangent per active (differentiated) parameter and returning the tangent of
every float result.  Each op is copied, and when one of its operands carries a tangent
the primitive's own ``jvp`` rule (ir/primitives) emits the tangent computation right
after it.  Activity: a value has a tangent only if it depends on an active parameter
(``None`` stands for a zero tangent and costs nothing).

Control flow: loops carry the tangents of their active carried values (the active set
is found by a fixpoint: a carried value becomes active when its update depends on an
active value); ``if`` ops yield tangents from both branches; calls are replaced by
calls of the callee's JVP (created once per callee and activity pattern).

The pass emits only primitives that have rules themselves, so it composes with itself
and with reverse mode to any order.
"""
from __future__ import annotations

from dplang.errors import DPInternalError
from dplang.ir import types as T
from dplang.ir.builder import Builder
from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.ir.primitives import REGISTRY


def is_float(t) -> bool:
    return getattr(t, "dtype", None) in ("f64", "f32")


def zero_like(b: Builder, v: Value) -> Value:
    if isinstance(v.type, T.Scalar):
        return b.const(0.0, v.type)
    return b.prim("zeros_like", v)


class ForwardAD:
    def __init__(self, program: Program | None):
        self.program = program

    # ------------------------------------------------------------------ funcs
    def jvp_func(self, func: Func, active: tuple, name: str | None = None) -> Func:
        """The JVP of ``func`` with respect to the parameters at indices ``active``."""
        for k in active:
            if not is_float(func.params[k].type):
                raise DPInternalError(f"jvp of '{func.name}' w.r.t. non-float parameter {k}")
        name = name or f"jvp_{func.name}_" + "_".join(str(k) for k in active)
        if func.attrs.get("implicit"):      # @argmin/@root/@fixed_point: from the condition
            from dplang.passes import implicit
            return implicit.jvp_func(self.program, func, active, name)
        params = [Value(p.type, p.hint, p.loc) for p in func.params]
        tparams = [Value(func.params[k].type, "d_" + (func.params[k].hint or f"x{k}"),
                         func.params[k].loc) for k in active]
        body = Region(params + tparams)
        b = Builder(body, func.loc)
        vmap = {old: new for old, new in zip(func.params, params)}
        tmap = {func.params[k]: t for k, t in zip(active, tparams)}
        self._active_tapes(func, tmap)
        self.region(b, func.body, vmap, tmap, terminal="return")
        ret = body.ops.pop()          # the copied return: add the tangents
        outs = list(ret.operands)
        touts = []
        for old, new in zip(func.body.ops[-1].operands, outs):
            if is_float(new.type):
                t = tmap.get(old)
                touts.append(t if t is not None else self._zero(b, new))
        with b.located(ret.loc):
            b.return_(*outs, *touts)
        rtypes = list(func.result_types) + [t for t in func.result_types if is_float(t)]
        pnames = list(func.param_names) + ["d_" + func.param_names[k] for k in active]
        return Func(name, body, rtypes, func.loc, {}, pnames, True, func.filename)

    def _zero(self, b, v):
        return zero_like(b, v)

    # ------------------------------------------------------------------ tapes
    def _active_tapes(self, func: Func, tmap: dict) -> None:
        """Tapes (of a reverse-mode function) that hold values with tangents: their
        tangents travel on a companion tape, pushed and popped alongside."""
        self.active_tapes = set()
        pushes = [op for op in func.walk() if op.name == "tape_push"]
        changed = True
        while changed:
            changed = False
            for op in pushes:
                t = op.operands[0]
                if t not in self.active_tapes and is_float(op.operands[1].type) \
                        and self._depends(op.operands[1], tmap):
                    self.active_tapes.add(t)
                    changed = True

    def op_tape_new(self, b, op, vmap, tmap):
        new = self.copy_op(b, op, vmap)
        if op.results[0] in self.active_tapes:
            tmap[op.results[0]] = b.op("tape_new", list(new.operands), [new.results[0].type],
                                       {}, hints=["d_tape"]).result

    def op_tape_push(self, b, op, vmap, tmap):
        self.copy_op(b, op, vmap)
        comp = tmap.get(op.operands[0])
        if comp is not None:
            v = op.operands[1]
            t = tmap.get(v)
            b.op("tape_push", [comp, t if t is not None else zero_like(b, vmap[v])], [])

    def op_tape_pop(self, b, op, vmap, tmap):
        self.copy_op(b, op, vmap)
        comp = tmap.get(op.operands[0])
        if comp is not None:
            r = op.results[0]
            tmap[r] = b.op("tape_pop", [comp], [r.type], hints=["d_" + (r.hint or "v")]).result

    # ---------------------------------------------------------------- regions
    def region(self, b: Builder, reg: Region, vmap: dict, tmap: dict, terminal="yield"):
        """Copy the ops of ``reg`` (its args already mapped) with tangents; returns the
        copied terminator's operands and their tangents."""
        for op in reg.ops:
            with b.located(op.loc):
                if op.name in ("yield", "return"):
                    vals = [vmap[v] for v in op.operands]
                    b.op(op.name, vals, [])
                    return vals, [tmap.get(v) for v in op.operands]
                self.op(b, op, vmap, tmap)
        raise DPInternalError("region without terminator")

    def op(self, b: Builder, op: Op, vmap: dict, tmap: dict) -> None:
        m = getattr(self, "op_" + op.name, None)
        if m is not None:
            return m(b, op, vmap, tmap)
        self.prim_op(b, op, vmap, tmap)

    def copy_op(self, b: Builder, op: Op, vmap: dict, regions=None) -> Op:
        new = b.op(op.name, [vmap[v] for v in op.operands], [r.type for r in op.results],
                   dict(op.attrs), regions, hints=[r.hint for r in op.results], loc=op.loc)
        for o, n in zip(op.results, new.results):
            vmap[o] = n
        return new

    def prim_op(self, b, op, vmap, tmap):
        new = self.copy_op(b, op, vmap)
        tins = [tmap.get(v) for v in op.operands]
        if all(t is None for t in tins) or op.name in ("const", "undef", "assert"):
            return
        p = REGISTRY.get(op.name)
        if p is None:
            raise DPInternalError(f"forward AD: unknown op '{op.name}'", op.loc)
        if p.zero_derivative or not any(is_float(r.type) for r in op.results):
            return
        if p.jvp is None:
            raise DPInternalError(f"forward AD: primitive '{op.name}' has no JVP rule", op.loc)
        # tangents only for float operands
        tins = [t if is_float(v.type) else None for t, v in zip(tins, op.operands)]
        touts = p.jvp(b, list(new.operands), tins, list(new.results), dict(new.attrs))
        for r, t in zip(op.results, touts):
            if t is not None and is_float(r.type):
                tmap[r] = t

    # ---------------------------------------------------------------- control flow
    def op_if(self, b, op, vmap, tmap):
        active = [False] * len(op.results)
        for reg in op.regions:
            y = reg.ops[-1]
            for k, v in enumerate(y.operands):
                if self._has_tangent(v, tmap, reg) and is_float(op.results[k].type):
                    active[k] = True
        # build both branches with tangents for active results
        regions = []
        for reg in op.regions:
            nreg = Region(label=reg.label)
            with b.at(nreg):
                vals, ts = self.region(b, reg, vmap, tmap)
                y = nreg.ops.pop()
                extra = []
                for k, (v, t) in enumerate(zip(vals, ts)):
                    if active[k]:
                        extra.append(t if t is not None else zero_like(b, v))
                b.op("yield", vals + extra, [])
            regions.append(nreg)
        types = [r.type for r in op.results] + [op.results[k].type for k in range(len(active))
                                                 if active[k]]
        hints = [r.hint for r in op.results] + ["d_" + (op.results[k].hint or "v")
                                                for k in range(len(active)) if active[k]]
        new = b.op("if", [vmap[op.operands[0]]], types, dict(op.attrs), regions, hints=hints)
        n = len(op.results)
        for o, r in zip(op.results, new.results[:n]):
            vmap[o] = r
        j = n
        for k in range(n):
            if active[k]:
                tmap[op.results[k]] = new.results[j]
                j += 1

    def _has_tangent(self, v, tmap, reg) -> bool:
        # a yielded value has a tangent if it depends on an active value; we only know
        # this after copying, so be conservative: any float value computed from an
        # active value (checked by a dependence walk)
        return self._depends(v, tmap)

    def _depends(self, v: Value, tmap, seen=None) -> bool:
        if v in tmap:
            return True
        if seen is None:
            seen = set()
        if v in seen:
            return False
        seen.add(v)
        owner = v.owner
        if isinstance(owner, Op):
            if owner.name in ("const", "undef"):
                return False
            if owner.name == "tape_pop":
                return owner.operands[0] in getattr(self, "active_tapes", ())
            p = REGISTRY.get(owner.name)
            if p is not None and p.zero_derivative:
                return False
            if any(self._depends(x, tmap, seen) for x in owner.operands):
                return True
            for reg in owner.regions:
                for o in reg.walk():
                    if o.name in ("yield",) and any(self._depends(x, tmap, seen)
                                                     for x in o.operands):
                        return True
            return False
        if isinstance(owner, Region):
            # a region argument: active if its loop's init or update is active
            parent = owner.parent
            if isinstance(parent, Op) and parent.name in ("for", "while"):
                idx = owner.args.index(v)
                if parent.name == "for":
                    if idx == 0:
                        return False
                    init = parent.operands[3 + idx - 1]
                else:
                    init = parent.operands[idx]
                if self._depends(init, tmap, seen):
                    return True
                body = parent.regions[-1]
                k = idx - 1 if parent.name == "for" else idx
                return self._depends(body.ops[-1].operands[k], tmap, seen)
        return False

    def _loop(self, b, op, vmap, tmap, kind):
        nb = 3 if kind == "for" else 0
        inits = op.operands[nb:]
        body = op.regions[-1]
        bargs = body.args[1:] if kind == "for" else body.args
        ylds = body.ops[-1].operands
        active = [is_float(a.type) and (self._depends(i, tmap) or self._depends(y, tmap))
                  for a, i, y in zip(bargs, inits, ylds)]
        for _ in range(len(active) + 1):
            # a carried value is active if its update depends on an active carried value
            trial = dict(tmap)
            for a, act in zip(bargs, active):
                if act:
                    trial[a] = a
            changed = False
            for k, (a, y) in enumerate(zip(bargs, ylds)):
                if not active[k] and is_float(a.type) and self._depends(y, trial):
                    active[k] = True
                    changed = True
            if not changed:
                break
        idx = [k for k, a in enumerate(active) if a]
        # operands: bounds, inits, tangent inits
        new_bounds = [vmap[v] for v in op.operands[:nb]]
        new_inits = [vmap[v] for v in inits]
        t_inits = []
        for k in idx:
            t = tmap.get(inits[k])
            t_inits.append(t if t is not None else zero_like(b, new_inits[k]))
        ctypes = [a.type for a in bargs] + [bargs[k].type for k in idx]
        chints = [a.hint for a in bargs] + ["d_" + (bargs[k].hint or "v") for k in idx]
        regions = []
        for reg in op.regions:
            args = [Value(t, h) for t, h in zip(ctypes, chints)]
            if kind == "for" and reg is body:
                iv = Value(T.I64, reg.args[0].hint, reg.args[0].loc)
                args = [iv] + args
            nreg = Region(args, label=reg.label)
            old_args = reg.args
            for o, n in zip(old_args, args):
                vmap[o] = n
            off = 1 if (kind == "for" and reg is body) else 0
            for j, k in enumerate(idx):
                tmap[old_args[off + k]] = args[off + len(bargs) + j]
            with b.at(nreg):
                vals, ts = self.region(b, reg, vmap, tmap)
                if reg is body:
                    nreg.ops.pop()
                    extra = []
                    for k in idx:
                        t = ts[k]
                        extra.append(t if t is not None else zero_like(b, vals[k]))
                    b.op("yield", vals + extra, [])
            regions.append(nreg)
        rtypes = [r.type for r in op.results] + [op.results[k].type for k in idx]
        rhints = [r.hint for r in op.results] + ["d_" + (op.results[k].hint or "v") for k in idx]
        new = b.op(kind, new_bounds + new_inits + t_inits, rtypes, dict(op.attrs), regions,
                   hints=rhints)
        n = len(op.results)
        for o, r in zip(op.results, new.results[:n]):
            vmap[o] = r
        for j, k in enumerate(idx):
            tmap[op.results[k]] = new.results[n + j]

    def op_for(self, b, op, vmap, tmap):
        self._loop(b, op, vmap, tmap, "for")

    def op_while(self, b, op, vmap, tmap):
        self._loop(b, op, vmap, tmap, "while")

    def op_call(self, b, op, vmap, tmap):
        active = tuple(k for k, v in enumerate(op.operands)
                       if tmap.get(v) is not None and is_float(v.type))
        if not active or "transform" in op.attrs:
            if "transform" in op.attrs and active:
                raise DPInternalError("forward AD through an in-program transformation "
                                      "needs it materialised first", op.loc)
            self.copy_op(b, op, vmap)
            return
        callee = self.program.funcs[op.attrs["callee"]]
        key = f"jvp_{callee.name}_" + "_".join(map(str, active))
        if key not in self.program.funcs:
            self.program.funcs[key] = None       # reserve (no recursion in dplang)
            self.program.funcs[key] = self.jvp_func(callee, active, key)
        f = self.program.funcs[key]
        args = [vmap[v] for v in op.operands] + [tmap[op.operands[k]] for k in active]
        new = b.op("call", args, f.result_types, {"callee": key},
                   hints=[r.hint for r in op.results] +
                   ["d_" + (r.hint or "v") for r in op.results if is_float(r.type)])
        n = len(op.results)
        for o, r in zip(op.results, new.results[:n]):
            vmap[o] = r
        j = n
        for o in op.results:
            if is_float(o.type):
                tmap[o] = new.results[j]
                j += 1


def jvp_program(program: Program, key: str, active: tuple) -> tuple[Program, str]:
    """A copy of ``program`` that also holds the JVP of ``key``; returns it and the new key."""
    prog = Program(dict(program.funcs), dict(program.exports), program.filename)
    if hasattr(program, "loader"):
        prog.loader = program.loader
    ad = ForwardAD(prog)
    name = f"jvp_{key}_" + "_".join(map(str, active))
    if name not in prog.funcs:
        from dplang.passes.simplify import simplify_func
        prog.funcs[name] = ad.jvp_func(program.funcs[key], active, name)
        for k, f in list(prog.funcs.items()):
            if k.startswith("jvp_") and k not in program.funcs:
                simplify_func(f)
    return prog, name
