"""The smoothing pass (SPEC 2.2): hard maxima into regularised ones.

``run(program)`` rewrites every function that carries ``@smooth(REG, gamma=NAME)``
(``func.attrs["smooth"]``) and every function it calls:

* ``maxn``/``minn`` (``max(a, b, c)`` of scalars) become ``smaxn``/``sminn(gamma, ...)``,
  ``maximum``/``minimum`` become ``smaximum``/``sminimum(x, y, gamma)``, the reductions
  ``max``/``min`` become ``smax``/``smin(x, gamma)`` (``axis`` copied explicitly, since
  the defaults differ), ``onehot_argmax``/``onehot_argmin`` become
  ``sargmax``/``sargmin(x, gamma)``; each takes the attr ``reg``.  The target of each
  hard primitive is its registry entry's ``Primitive.smoothed``.
* Only float-valued ops are smoothed: an integer ``max``/``min``/``maximum`` computes an
  index or a loop bound (``range(max(1, i - w), min(m, i + w) + 1)``) and stays hard.
* A call of a function ``g`` is redirected to a clone of ``g`` keyed
  ``smooth.REG.KEY`` (one clone per callee and regulariser, shared by all callers) that
  takes the temperature as an extra trailing ``f64`` parameter and is rewritten the
  same way.  A call through an in-program transformation (``grad(g)(x)``) gets the
  temperature right after ``g``'s own parameters (the primals), so ``grad``, ``jvp``
  and ``vjp`` of the clone line up.  Calls of functions that are themselves
  ``@smooth`` (their own temperature) or ``@argmin/@root/@fixed_point`` (defined by
  their optimality condition) are left alone.
* Integer ``argmax``/``argmin`` reached under smoothing is a located ``DPTypeError``
  that suggests ``onehot_argmax``/``onehot_argmin``.

``smooth_program(program, key, reg, gamma=None)`` is the same rewrite for the Python
API ``dp.smooth(f, reg, gamma=None)``: it returns a program holding the smoothed
function and its key.  With ``gamma=None`` the new function takes the temperature as
a new last ``f64`` parameter named ``gamma`` (it is the callee clone ``smooth.REG.KEY``);
with ``gamma`` a parameter name or index of ``f``, that parameter is the temperature
(key ``smooth.REG.KEY[NAME]``).

Neither function modifies its input program: rewritten functions are clones
(``passes.simplify.clone_func``); untouched functions are shared.  The rewrite is
idempotent: a rewritten ``@smooth`` function is marked ``attrs["smooth"]["_applied"]``
(hidden from the printer) and clones carry ``attrs["smoothed"]``, so running the pass
again changes nothing.
"""
from __future__ import annotations

from functools import reduce

from dplang.errors import DPInternalError, DPTypeError
from dplang.ir import types as T
from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.ir.primitives import REGISTRY, TypeRuleError

REGS = ("entropy", "l2")
HARD = ("maxn", "minn", "maximum", "minimum", "max", "min", "onehot_argmax", "onehot_argmin")
PREFIX = "smooth."


def _is_float(t) -> bool:
    return getattr(t, "dtype", None) in ("f64", "f32")


def check_reg(reg, loc=None, what="dp.smooth") -> str:
    """``reg`` if it names a regulariser, else a ``DPTypeError``."""
    if not isinstance(reg, str) or reg not in REGS:
        raise DPTypeError(f"{what}: unknown regulariser {reg!r}: use one of "
                          f"{', '.join(repr(r) for r in REGS)}", loc)
    return reg


def _copy_program(program: Program) -> Program:
    prog = Program(dict(program.funcs), dict(program.exports), program.filename)
    if hasattr(program, "loader"):
        prog.loader = program.loader
    return prog


def _clone(func: Func) -> Func:
    from dplang.passes.simplify import clone_func
    new = clone_func(func)
    new.attrs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in func.attrs.items()}
    return new


def _fresh_name(names, base: str) -> str:
    if base not in names:
        return base
    k = 1
    while f"{base}_{k}" in names:
        k += 1
    return f"{base}_{k}"


def _key(prog: Program, name: str) -> str:
    return name if name in prog.funcs else prog.exports.get(name, name)


class _Body:
    """The rewrite of one function body with temperature ``gamma`` (a parameter)."""

    def __init__(self, sm: "Smoother", func: Func, reg: str, gamma: Value):
        self.sm, self.func, self.reg = sm, func, reg
        self.gamma = gamma
        self.gammas = {gamma.type.dtype: gamma}
        self.casts: list = []               # gamma casts, placed at the function's entry

    def run(self) -> None:
        self.region(self.func.body)
        if self.casts:
            for op in self.casts:
                op.parent = self.func.body
            self.func.body.ops[:0] = self.casts

    def gamma_of(self, dtype: str) -> Value:
        """The temperature in ``dtype`` (one cast per dtype, at the function's entry)."""
        g = self.gammas.get(dtype)
        if g is None:
            g = Value(T.Scalar(dtype), f"gamma_{dtype}", self.gamma.loc)
            self.casts.append(Op("cast", [self.gamma], [g], {"dtype": dtype},
                                 loc=self.func.loc))
            self.gammas[dtype] = g
        return g

    def region(self, reg: Region) -> None:
        out = []
        for op in reg.ops:
            for sub in op.regions:
                self.region(sub)
            out.extend(self.op(op))
        for op in out:
            op.parent = reg
        reg.ops = out

    def op(self, op: Op) -> list:
        name = op.name
        if name in ("argmax", "argmin"):
            raise DPTypeError(f"{name} returns an integer index, which cannot be smoothed "
                              f"(here under dp.smooth or @smooth); use onehot_{name}(v), "
                              f"whose smoothed form is differentiable", op.loc)
        if name == "call":
            return [self.call(op)]
        if name in HARD and len(op.results) == 1 and _is_float(op.results[0].type):
            return self.prim(op)
        return [op]

    def prim(self, op: Op) -> list:
        """``op`` (a float max/min/...) as its smoothed counterpart; the result Value is
        kept (a cast is added in the rare case where the smoothed type differs)."""
        soft = REGISTRY[op.name].smoothed
        r = op.results[0]
        attrs = {"reg": self.reg}
        if op.name in ("max", "min", "onehot_argmax", "onehot_argmin"):
            attrs["axis"] = op.attrs.get("axis", REGISTRY[op.name].attrs.get("axis"))
        xs = list(op.operands)
        fdt = T.float_of(reduce(T.promote, [v.type.dtype for v in xs]))
        g = self.gamma_of(fdt)
        operands = [g] + xs if soft in ("smaxn", "sminn") else xs + [g]
        p = REGISTRY[soft]
        try:
            rtype = p.result_types([v.type for v in operands], attrs)[0]
        except TypeRuleError as exc:
            raise DPInternalError(f"smooth: cannot rewrite {op.name} into {soft}: "
                                  f"{exc.message}", op.loc)
        full = dict(p.attrs)
        full.update(attrs)
        if rtype == r.type:
            return [Op(soft, operands, [r], full, loc=op.loc)]
        tmp = Value(rtype, r.hint, r.loc)
        return [Op(soft, operands, [tmp], full, loc=op.loc),
                Op("cast", [tmp], [r], {"dtype": r.type.dtype}, loc=op.loc)]

    def call(self, op: Op) -> Op:
        key = _key(self.sm.prog, op.attrs.get("callee"))
        callee = self.sm.prog.funcs.get(key)
        if callee is None:
            raise DPInternalError(f"smooth: call to unknown function {key!r}", op.loc)
        if any(a in callee.attrs for a in ("smooth", "smoothed", "implicit")):
            return op
        nparams = len(callee.params)
        new_key = self.sm.callee_clone(key, self.reg)
        # the temperature follows the callee's own parameters (the primals of a
        # transformed call come first, its tangents/cotangents after them)
        g = self.gamma_of("f64")
        operands = list(op.operands[:nparams]) + [g] + list(op.operands[nparams:])
        attrs = dict(op.attrs)
        attrs["callee"] = new_key
        return Op("call", operands, list(op.results), attrs, list(op.regions), op.loc)


class Smoother:
    """Adds smoothed functions to ``prog`` (a copy owned by the pass)."""

    def __init__(self, prog: Program):
        self.prog = prog
        self.clones: dict = {}              # (key, reg) -> clone key

    def smooth_own(self, key: str) -> None:
        """Rewrite the ``@smooth`` function ``key`` with its own temperature parameter."""
        f = _clone(self.prog.funcs[key])
        opts = dict(f.attrs["smooth"])
        reg = check_reg(opts.get("reg"), f.loc, "@smooth")
        gname = opts.get("gamma")
        if gname not in f.param_names:
            raise DPInternalError(f"smooth: '{f.name}' has no temperature parameter "
                                  f"{gname!r}", f.loc)
        opts["_applied"] = True
        f.attrs["smooth"] = opts
        self.prog.funcs[key] = f
        _Body(self, f, reg, f.params[f.param_names.index(gname)]).run()

    def callee_clone(self, key: str, reg: str) -> str:
        """The key of ``key`` smoothed with a new trailing temperature (made once)."""
        ck = (key, reg)
        if ck in self.clones:
            return self.clones[ck]
        new_key = f"{PREFIX}{reg}.{key}"
        old = self.prog.funcs.get(new_key)
        if old is not None:
            if old.attrs.get("smoothed", {}).get("of") == key:
                self.clones[ck] = new_key            # made by an earlier run
                return new_key
            new_key = _fresh_name(self.prog.funcs, new_key)
        self.clones[ck] = new_key
        f = _clone(self.prog.funcs[key])
        f.name = new_key
        f.attrs = {"smoothed": {"reg": reg, "of": key}}
        g = Value(T.F64, _fresh_name(set(f.param_names), "gamma"), f.loc)
        g.owner = f.body
        f.body.args.append(g)
        f.param_names = list(f.param_names) + [g.hint]
        self.prog.funcs[new_key] = f        # registered first: shared by every caller
        _Body(self, f, reg, g).run()
        return new_key

    def with_temperature(self, key: str, reg: str, k: int) -> str:
        """``key`` smoothed with its own parameter ``k`` as the temperature."""
        src = self.prog.funcs[key]
        gname = src.param_names[k]
        new_key = f"{PREFIX}{reg}.{key}[{gname}]"
        old = self.prog.funcs.get(new_key)
        if old is not None and old.attrs.get("smoothed", {}).get("of") == key:
            return new_key
        new_key = _fresh_name(self.prog.funcs, new_key)
        f = _clone(src)
        f.name = new_key
        f.attrs = {"smoothed": {"reg": reg, "of": key, "gamma": gname}}
        self.prog.funcs[new_key] = f
        _Body(self, f, reg, f.params[k]).run()
        return new_key


# --------------------------------------------------------------------- entry points
def _pending(program: Program) -> list:
    return [k for k, f in program.funcs.items()
            if f is not None and "smooth" in f.attrs and not f.attrs["smooth"].get("_applied")]


def run(program: Program) -> Program:
    """Rewrite every ``@smooth`` function (and its callees); the input is not modified."""
    todo = _pending(program)
    if not todo:
        return program
    prog = _copy_program(program)
    sm = Smoother(prog)
    for key in todo:
        sm.smooth_own(key)
    return prog


def _resolve_gamma(func: Func, gamma) -> int:
    names = list(func.param_names)
    if isinstance(gamma, bool) or not isinstance(gamma, (str, int)):
        raise DPTypeError(f"dp.smooth: gamma must be None, a parameter name or a parameter "
                          f"index of '{func.name}', got {gamma!r}", func.loc)
    if isinstance(gamma, str):
        if gamma not in names:
            raise DPTypeError(f"dp.smooth: gamma={gamma!r}: '{func.name}' has no parameter "
                              f"'{gamma}' (its parameters: {', '.join(names)})", func.loc)
        k = names.index(gamma)
    else:
        k = gamma + len(names) if gamma < 0 else gamma
        if not 0 <= k < len(names):
            raise DPTypeError(f"dp.smooth: gamma={gamma}: '{func.name}' has {len(names)} "
                              f"parameter(s)", func.loc)
    t = func.params[k].type
    if not (isinstance(t, T.Scalar) and t.dtype in ("f64", "f32")):
        raise DPTypeError(f"dp.smooth: the temperature '{names[k]}' must be a float scalar "
                          f"parameter, it is {t}", func.loc)
    return k


def smooth_program(program: Program, key: str, reg: str, gamma=None) -> tuple:
    """A copy of ``program`` that also holds ``key`` smoothed with ``reg``; returns it and
    the new function's key (see the module docstring)."""
    key = _key(program, key)
    func = program.funcs[key]
    check_reg(reg, func.loc)
    if "smooth" in func.attrs or "smoothed" in func.attrs:
        raise DPTypeError(f"dp.smooth: '{func.name}' is already smoothed; apply dp.smooth to "
                          f"the hard function", func.loc)
    k = None if gamma is None else _resolve_gamma(func, gamma)
    prog = run(program)         # @smooth functions not rewritten yet (an 'ssa' program)
    if prog is program:
        prog = _copy_program(program)
    sm = Smoother(prog)
    if k is None:
        return prog, sm.callee_clone(key, reg)
    return prog, sm.with_temperature(key, reg, k)
