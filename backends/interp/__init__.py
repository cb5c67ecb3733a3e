"""The reference interpreter: executes the IR op by op with NumPy.

``run_func(program, name_or_func, args) -> list`` runs a function (a key or export name
of ``program``, or a ``Func``) on ``args`` and returns its results as a list, each
converted to its declared type (``f64`` -> ``np.float64``, arrays -> ``np.ndarray``).

Semantics (the executable definition of the IR's meaning):

* ``const`` gives its ``value`` attr as the result type's NumPy scalar (arrays copied);
  ``undef`` a placeholder (0 of the dtype, or an empty array of the right rank);
* a primitive runs ``REGISTRY[name].impl(*operands, **attrs)`` (attrs starting with
  ``_`` are front-end hints and are not passed); its results are converted to the
  declared dtype, and an array result that may share memory with an operand is copied
  (arrays are values);
* ``setitem`` ops found by ``ir.analysis`` to be in place write into the operand's
  buffer directly; loop inits and yields are copied where the analysis says so, so
  the value semantics hold exactly as compiled code would realise them;
* ``for`` runs over ``range(lo, hi, step)`` (any non-zero step, negative too); ``while``
  evaluates its cond region before each trip; ``if`` runs one branch; ``call`` runs the
  callee by name; a failed ``assert`` raises ``DPAssertionError`` (``DPShapeError`` for
  ``kind="shape"``) at the op's location, its ``msg`` formatted with the operands'
  values (``{1}`` is the first operand after the condition);
* any other failure while running an op (an index out of range, a singular matrix, ...)
  becomes a ``DPRuntimeError`` located at that op.  Floating-point exceptions are
  ignored (IEEE results, as compiled code gives).
"""
from __future__ import annotations

import numpy as np

from dplang.errors import (DPAssertionError, DPConvergenceError, DPError, DPInternalError,
                           DPRuntimeError, DPShapeError)
from dplang.ir import types as T
from dplang.ir.analysis import analyze_inplace
from dplang.ir.core import Func, Op, Program, Region
from dplang.ir.primitives import REGISTRY
from dplang.ir.primitives.indexing import build_index


# ---------------------------------------------------------------------- conversions
def to_type(val, t: T.Type):
    """``val`` as a value of IR type ``t`` (NumPy scalar or array of its dtype)."""
    if isinstance(t, T.Scalar):
        dt = T.NP_DTYPES[t.dtype]
        if type(val) is dt:
            return val
        if isinstance(val, np.ndarray):
            if val.size != 1:
                raise ValueError(f"expected a scalar {t}, got an array of shape {val.shape}")
            val = val.reshape(()).item() if val.ndim else val[()]
        return dt(val)
    if isinstance(t, T.Array):
        dt = T.NP_DTYPES[t.dtype]
        if isinstance(val, np.ndarray) and val.dtype == dt:
            return val
        return np.asarray(val, dtype=dt)
    return val


def _undef(t: T.Type):
    if isinstance(t, T.Scalar):
        return T.NP_DTYPES[t.dtype](0)
    if isinstance(t, T.Array):
        return np.zeros((0,) * t.ndim, dtype=T.NP_DTYPES[t.dtype])
    return None


def _copy(v):
    return v.copy() if isinstance(v, np.ndarray) else v


# ---------------------------------------------------------------------- per-func plan
class _Plan:
    """What the interpreter precomputes once per function."""

    def __init__(self, func: Func):
        a = analyze_inplace(func)
        self.inplace = a.inplace
        self.init_copies = a.init_copies
        self.yield_copies = a.yield_copies
        self.signature = _signature(func)


def _signature(func: Func):
    return tuple((id(op), tuple(id(v) for v in op.operands), tuple(id(v) for v in op.results))
                 for op in func.walk())


_PLAN_ATTR = "_interp_plan"


def _plan_for(func: Func, run_cache: dict) -> _Plan:
    """The plan of ``func``: kept on the function object itself (so it lives exactly as
    long as the function), revalidated against the function's structure once per run."""
    p = run_cache.get(id(func))
    if p is not None:
        return p
    plan = getattr(func, _PLAN_ATTR, None)
    if plan is None or plan.signature != _signature(func):
        plan = _Plan(func)
        try:
            object.__setattr__(func, _PLAN_ATTR, plan)
        except (AttributeError, TypeError):
            pass
    run_cache[id(func)] = plan
    return plan


# ---------------------------------------------------------------------- execution
class _Run:
    def __init__(self, program: Program | None):
        self.program = program
        self.plans: dict[int, _Plan] = {}
        self.tape_pushes = 0    # tape statistics of the last run (tests measure memory)
        self.tape_size = 0
        self.tape_peak = 0

    def lookup(self, name: str, op: Op | None = None) -> Func:
        prog = self.program
        if prog is not None:
            key = prog.exports.get(name, name)
            f = prog.funcs.get(key)
            if f is not None:
                return f
        raise DPRuntimeError(f"call to unknown function {name!r}", op.loc if op else None)

    def call(self, func: Func, args: list) -> list:
        plan = _plan_for(func, self.plans)
        params = func.params
        if len(args) != len(params):
            raise DPRuntimeError(f"{func.name} takes {len(params)} argument(s), got {len(args)}",
                                 func.loc)
        env: dict = {}
        for p, a in zip(params, args):
            env[p] = to_type(a, p.type)
        out = self.region(func.body, env, plan)
        return [to_type(v, t) for v, t in zip(out, func.result_types)]

    def region(self, region: Region, env: dict, plan: _Plan) -> list:
        for op in region.ops:
            name = op.name
            if name == "yield" or name == "return":
                vals = [env[v] for v in op.operands]
                if plan.yield_copies:
                    for k in range(len(vals)):
                        if (op, k) in plan.yield_copies:
                            vals[k] = _copy(vals[k])
                return vals
            try:
                handler = _HANDLERS.get(name)
                if handler is not None:
                    handler(self, op, env, plan)
                else:
                    self.primitive(op, env, plan)
            except DPError:
                raise
            except RecursionError:
                raise DPRuntimeError("recursion too deep", op.loc) from None
            except Exception as e:
                raise DPRuntimeError(_describe(op, e), op.loc) from e
        raise DPRuntimeError("region ended without a terminator", None)

    # -- primitives -------------------------------------------------------------
    def primitive(self, op: Op, env: dict, plan: _Plan) -> None:
        vals = [env[v] for v in op.operands]
        if op in plan.inplace:
            x = vals[0]
            if isinstance(x, np.ndarray) and x.flags.writeable:
                ix = build_index(vals[2:], op.attrs.get("index"))
                if op.name == "setitem":
                    x[ix] = vals[1]
                else:
                    x[ix] += vals[1]
                env[op.results[0]] = x
                return
        prim = REGISTRY.get(op.name)
        if prim is None:
            raise DPRuntimeError(f"unknown op {op.name!r}", op.loc)
        out = prim.impl(*vals, **_public(op.attrs))
        results = op.results
        if len(results) == 1:
            out = (out,)
        elif not isinstance(out, (tuple, list)) or len(out) != len(results):
            raise DPRuntimeError(f"{op.name} returned {out!r}, expected {len(results)} results",
                                 op.loc)
        for r, v in zip(results, out):
            v = to_type(v, r.type)
            if isinstance(v, np.ndarray):
                for a in vals:
                    if isinstance(a, np.ndarray) and np.may_share_memory(v, a):
                        v = v.copy()
                        break
            env[r] = v


def _public(attrs: dict) -> dict:
    for k in attrs:
        if k[:1] == "_":
            return {k: v for k, v in attrs.items() if k[:1] != "_"}
    return attrs


def _describe(op: Op, e: Exception) -> str:
    if isinstance(e, IndexError):
        return f"index out of range in {op.name}: {e}"
    if isinstance(e, np.linalg.LinAlgError):
        return f"{op.name}: {e}"
    return f"{op.name} failed: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------- structural ops
def _const(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    r = op.results[0]
    val = op.attrs["value"]
    if isinstance(r.type, T.Array):
        env[r] = np.array(val, dtype=T.NP_DTYPES[r.type.dtype], copy=True)
    else:
        env[r] = to_type(val, r.type)


def _undef_op(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    env[op.results[0]] = _undef(op.results[0].type)


def _assert(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    vals = [env[v] for v in op.operands]
    if bool(vals[0]):
        return
    msg = str(op.attrs.get("msg") or "assertion failed")
    if len(vals) > 1:
        try:
            msg = msg.format(*[v.item() if isinstance(v, np.generic) else v for v in vals])
        except (IndexError, KeyError, ValueError):
            pass
    cls = {"shape": DPShapeError, "convergence": DPConvergenceError}.get(
        op.attrs.get("kind"), DPAssertionError)
    err = cls(msg, op.loc)
    err.entry_check = bool(op.attrs.get("entry"))   # a parameter's shape, checked on entry
    raise err


def _inits(op: Op, start: int, env: dict, plan: _Plan) -> list:
    vals = []
    for k in range(start, len(op.operands)):
        v = env[op.operands[k]]
        if (op, k) in plan.init_copies:
            v = _copy(v)
        vals.append(v)
    return vals


def _for(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    lo, hi, step = (int(env[v]) for v in op.operands[:3])
    if step == 0:
        raise DPRuntimeError("range() step must not be zero", op.loc)
    carried = _inits(op, 3, env, plan)
    body = op.regions[0]
    iv, cargs = body.args[0], body.args[1:]
    i64 = np.int64
    for i in range(lo, hi, step):
        env[iv] = i64(i)
        for a, c in zip(cargs, carried):
            env[a] = c
        carried = run.region(body, env, plan)
    for r, c in zip(op.results, carried):
        env[r] = c


def _while(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    carried = _inits(op, 0, env, plan)
    cond, body = op.regions
    while True:
        for a, c in zip(cond.args, carried):
            env[a] = c
        (flag,) = run.region(cond, env, plan)
        if not flag:
            break
        for a, c in zip(body.args, carried):
            env[a] = c
        carried = run.region(body, env, plan)
    for r, c in zip(op.results, carried):
        env[r] = c


def _if(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    branch = op.regions[0] if bool(env[op.operands[0]]) else op.regions[1]
    out = run.region(branch, env, plan)
    for r, v in zip(op.results, out):
        env[r] = v


def _call(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    f = run.lookup(op.attrs.get("callee"), op)
    try:
        out = run.call(f, [env[v] for v in op.operands])
    except DPShapeError as e:
        if not getattr(e, "entry_check", False) or op.loc is None:
            raise
        # the arguments of this call do not fit the callee's parameters: say so here
        where = f" (declared at {e.loc})" if e.loc is not None else ""
        raise DPShapeError(f"in this call of {f.name}: {e.message}", op.loc,
                           note=f"{f.name}'s parameter{where}") from None
    for r, v in zip(op.results, out):
        env[r] = v


class _Tape(list):
    __slots__ = ("capacity",)


def _tape_new(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    t = _Tape()
    t.capacity = int(env[op.operands[0]]) if op.operands else None
    env[op.results[0]] = t


def _tape_push(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    tape = env[op.operands[0]]
    if tape.capacity is not None and len(tape) >= tape.capacity:
        raise DPInternalError(f"tape_push beyond the tape's capacity {tape.capacity}", op.loc)
    tape.append(_copy(env[op.operands[1]]))
    run.tape_pushes += 1
    run.tape_size += 1
    run.tape_peak = max(run.tape_peak, run.tape_size)


def _tape_pop(run: _Run, op: Op, env: dict, plan: _Plan) -> None:
    tape = env[op.operands[0]]
    if not tape:
        raise DPInternalError("tape_pop of an empty tape", op.loc)
    env[op.results[0]] = tape.pop()
    run.tape_size -= 1


_HANDLERS = {"tape_new": _tape_new, "tape_push": _tape_push, "tape_pop": _tape_pop,
             "const": _const, "undef": _undef_op, "assert": _assert, "for": _for,
             "while": _while, "if": _if, "call": _call}


# ---------------------------------------------------------------------- entry
def run_func(program: Program | None, name_or_func, args: list) -> list:
    """Run a function of ``program`` (by name, or a ``Func``) on ``args``; returns the
    list of its results, each of its declared type."""
    run = _Run(program)
    if isinstance(name_or_func, Func):
        func = name_or_func
    else:
        if program is None:
            raise ValueError("run_func: a function name needs a program")
        try:
            func = program.func(name_or_func)
        except KeyError:
            raise DPRuntimeError(f"no function named {name_or_func!r}") from None
    global LAST_RUN
    LAST_RUN = run
    with np.errstate(all="ignore"):
        return run.call(func, list(args))


LAST_RUN = None     # the last _Run (its tape_peak / tape_pushes: how much reverse mode kept)


__all__ = ["run_func", "to_type"]
