"""The IR verifier: run after every pass in tests, so a broken pass fails at the pass.

``verify_func(func, program=None, pass_name=None)`` and
``verify_program(program, pass_name=None)`` raise ``DPInternalError`` whose message
names the pass, the function and the op (printed as in the IR dump).  Checked:

* single definition: every value is defined once (an op result or a region argument),
  and its ``owner`` is the op / region defining it;
* dominance, structured: an operand is defined earlier in the same region, in an
  enclosing region (before the op holding the nested region), or is an argument of the
  region or of an enclosing one;
* terminators: every nested region ends with exactly one ``yield`` and a function body
  with exactly one ``return`` (no terminator anywhere else);
* ``for``: three ``i64`` bounds then the inits; body args ``(i64, *carried)``; carried
  types == init types == yielded types == result types;
* ``while``: cond args and body args == init types, cond yields one ``bool``, body
  yields the carried types, results too;
* ``if``: a ``bool`` condition, branches without args, both yielding the result types;
* ``call``: the callee exists (when a program is given), argument and result types
  match its signature;
* ``const`` (a value, no operands), ``assert`` (a bool condition, then any values for
  its message; no results),
  ``undef`` (no operands, one result);
* a primitive: its name is in ``REGISTRY``, its arity is right, and its result types
  equal ``REGISTRY[name].result_types(operand types, attrs)``;
* ``return`` operand types match ``func.result_types``.

Types are compared by dtype and rank, and dims only where both are integers (symbolic
dims may be refined by passes).
"""
from __future__ import annotations

from dplang.errors import DPInternalError
from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.ir import types as T

_STRUCT = ("const", "for", "while", "if", "call", "yield", "return", "assert", "undef",
           "tape_new", "tape_push", "tape_pop")


def types_match(a: T.Type, b: T.Type) -> bool:
    """Same dtype and rank; integer dims equal where both are integers."""
    if isinstance(a, (T.Scalar, T.Array)) and isinstance(b, (T.Scalar, T.Array)):
        if a.dtype != b.dtype or a.ndim != b.ndim:
            return False
        return not any(T.dims_conflict(x, y) for x, y in zip(a.shape, b.shape))
    return a == b


class _Fail(Exception):
    def __init__(self, message: str, op: Op | None = None):
        super().__init__(message)
        self.message = message
        self.op = op


class _Verifier:
    def __init__(self, func: Func, program: Program | None):
        self.func = func
        self.program = program
        self.defined: set[Value] = set()     # ever defined in this function
        self.visible: set[Value] = set()     # visible at the current point

    def fail(self, msg: str, op: Op | None = None):
        raise _Fail(msg, op)

    def define(self, v: Value, owner, op: Op | None) -> None:
        if not isinstance(v, Value):
            self.fail(f"{v!r} is not a Value", op)
        if v in self.defined:
            self.fail(f"value {v.hint or 't'} is defined twice", op)
        if v.owner is not owner:
            self.fail(f"value {v.hint or 't'}'s owner is not where it is defined", op)
        self.defined.add(v)
        self.visible.add(v)

    # ------------------------------------------------------------------ regions
    def region(self, region: Region, kind: str, owner_op: Op | None) -> list[T.Type]:
        """Verify ``region``; returns the types its terminator yields/returns."""
        if region.parent is not (owner_op if owner_op is not None else self.func):
            self.fail("a region's parent is not the op holding it", owner_op)
        local: list[Value] = []
        for a in region.args:
            self.define(a, region, owner_op)
            local.append(a)
        term = "return" if kind == "func" else "yield"
        if not region.ops:
            self.fail(f"region without terminator (expected {term})", owner_op)
        out: list[T.Type] = []
        for k, op in enumerate(region.ops):
            if op.parent is not region:
                self.fail("op's parent is not the region holding it", op)
            last = k == len(region.ops) - 1
            if op.name in ("yield", "return"):
                if not last:
                    self.fail(f"{op.name} before the end of a region", op)
                if op.name != term:
                    self.fail(f"{op.name} ends a {'function body' if kind == 'func' else 'nested region'}"
                              f" (expected {term})", op)
            elif last:
                self.fail(f"region without terminator (expected {term}); it ends with "
                          f"{op.name}", op)
            self.op(op)
            local.extend(op.results)
            if op.name in ("yield", "return"):
                out = [v.type for v in op.operands]
        for v in local:
            self.visible.discard(v)
        return out

    # ------------------------------------------------------------------ ops
    def op(self, op: Op) -> None:
        for i, v in enumerate(op.operands):
            if not isinstance(v, Value):
                self.fail(f"operand {i} is not a Value: {v!r}", op)
            if v not in self.visible:
                if v in self.defined:
                    where = "is not visible here (defined in a region that does not enclose this op)"
                elif v in self._all_defined():
                    where = "is used before its definition"
                else:
                    where = "is not defined in this function"
                self.fail(f"operand {i} ({v.hint or 't'}) {where}", op)
        handler = getattr(self, "op_" + op.name, None) if op.name in _STRUCT else None
        if handler is not None:
            handler(op)
        else:
            self.primitive(op)
        for r in op.results:
            self.define(r, op, op)

    _all_cache: set | None = None

    def _all_defined(self) -> set:
        if self._all_cache is None:
            s = set(self.func.params)
            for o in self.func.walk():
                s.update(o.results)
                for reg in o.regions:
                    s.update(reg.args)
            self._all_cache = s
        return self._all_cache

    def _types(self, what: str, got, want, op: Op) -> None:
        got, want = list(got), list(want)
        if len(got) != len(want):
            self.fail(f"{what}: {len(got)} value(s), expected {len(want)}", op)
        for k, (g, w) in enumerate(zip(got, want)):
            if not types_match(g, w):
                self.fail(f"{what}: value {k} has type {g}, expected {w}", op)

    def _nreg(self, op: Op, n: int) -> None:
        if len(op.regions) != n:
            self.fail(f"{op.name} must have {n} region(s), has {len(op.regions)}", op)

    def op_const(self, op: Op) -> None:
        self._nreg(op, 0)
        if op.operands or len(op.results) != 1:
            self.fail("const takes no operands and has one result", op)
        if "value" not in op.attrs:
            self.fail("const without a value attr", op)

    def op_undef(self, op: Op) -> None:
        self._nreg(op, 0)
        if op.operands or len(op.results) != 1:
            self.fail("undef takes no operands and has one result", op)

    def op_assert(self, op: Op) -> None:
        self._nreg(op, 0)
        if len(op.operands) < 1 or op.results:
            self.fail("assert takes a condition (and values for its message) and has no "
                      "results", op)
        self._types("assert condition", [op.operands[0].type], [T.BOOL], op)

    def op_tape_new(self, op: Op) -> None:
        self._nreg(op, 0)
        if len(op.operands) > 1 or len(op.results) != 1 \
                or not isinstance(op.results[0].type, T.Tape):
            self.fail("tape_new takes an optional capacity and has one tape result", op)
        self._types("tape_new capacity", [v.type for v in op.operands],
                    [T.I64] * len(op.operands), op)

    def op_tape_push(self, op: Op) -> None:
        self._nreg(op, 0)
        if len(op.operands) != 2 or op.results or not isinstance(op.operands[0].type, T.Tape):
            self.fail("tape_push takes (tape, value) and has no results", op)
        self._types("tape_push value", [op.operands[1].type], [op.operands[0].type.elem], op)

    def op_tape_pop(self, op: Op) -> None:
        self._nreg(op, 0)
        if len(op.operands) != 1 or len(op.results) != 1 \
                or not isinstance(op.operands[0].type, T.Tape):
            self.fail("tape_pop takes a tape and has one result", op)
        self._types("tape_pop result", [op.results[0].type], [op.operands[0].type.elem], op)

    def op_yield(self, op: Op) -> None:
        self._nreg(op, 0)
        if op.results:
            self.fail("yield has results", op)

    def op_return(self, op: Op) -> None:
        self._nreg(op, 0)
        if op.results:
            self.fail("return has results", op)
        self._types(f"return of {self.func.name}", [v.type for v in op.operands],
                    self.func.result_types, op)

    def op_for(self, op: Op) -> None:
        self._nreg(op, 1)
        if len(op.operands) < 3:
            self.fail("for needs three bounds (lo, hi, step)", op)
        for k, what in enumerate(("lower bound", "upper bound", "step")):
            self._types(f"for {what}", [op.operands[k].type], [T.I64], op)
        inits = [v.type for v in op.operands[3:]]
        body = op.regions[0]
        if len(body.args) != 1 + len(inits):
            self.fail(f"for body has {len(body.args)} argument(s), expected "
                      f"{1 + len(inits)} (the induction variable and the carried values)", op)
        self._types("for induction variable", [body.args[0].type], [T.I64], op)
        self._types("for carried values vs inits", [a.type for a in body.args[1:]], inits, op)
        self._types("for results vs inits", [r.type for r in op.results], inits, op)
        ys = self.region(body, "nested", op)
        self._types("for body yield", ys, inits, body.ops[-1])

    def op_while(self, op: Op) -> None:
        self._nreg(op, 2)
        inits = [v.type for v in op.operands]
        cond, body = op.regions
        self._types("while cond arguments vs inits", [a.type for a in cond.args], inits, op)
        self._types("while body arguments vs inits", [a.type for a in body.args], inits, op)
        self._types("while results vs inits", [r.type for r in op.results], inits, op)
        ys = self.region(cond, "nested", op)
        self._types("while cond yield", ys, [T.BOOL], cond.ops[-1])
        ys = self.region(body, "nested", op)
        self._types("while body yield", ys, inits, body.ops[-1])

    def op_if(self, op: Op) -> None:
        self._nreg(op, 2)
        if len(op.operands) != 1:
            self.fail("if takes one operand (the condition)", op)
        self._types("if condition", [op.operands[0].type], [T.BOOL], op)
        rts = [r.type for r in op.results]
        for reg, which in zip(op.regions, ("then", "else")):
            if reg.args:
                self.fail(f"if {which} branch has arguments", op)
            ys = self.region(reg, "nested", op)
            self._types(f"if {which} yield", ys, rts, reg.ops[-1])

    def op_call(self, op: Op) -> None:
        self._nreg(op, 0)
        callee = op.attrs.get("callee")
        if not isinstance(callee, str):
            self.fail("call without a callee attr", op)
        if self.program is None:
            return
        key = self.program.exports.get(callee, callee)
        f = self.program.funcs.get(key)
        if f is None:
            self.fail(f"call to unknown function {callee!r}", op)
        if "transform" in op.attrs:
            return      # grad(f)(x): checked by the front end, materialised in stage "ad"
        self._types(f"arguments of call to {callee}", [v.type for v in op.operands],
                    [p.type for p in f.params], op)
        self._types(f"results of call to {callee}", [r.type for r in op.results],
                    f.result_types, op)

    def primitive(self, op: Op) -> None:
        from dplang.ir.primitives import REGISTRY, TypeRuleError
        p = REGISTRY.get(op.name)
        if p is None:
            self.fail(f"unknown op {op.name!r} (neither structural nor a primitive)", op)
        if op.regions:
            self.fail(f"primitive {op.name} has regions", op)
        try:
            p.check_arity(len(op.operands))
            want = p.result_types([v.type for v in op.operands], op.attrs)
        except TypeRuleError as e:
            self.fail(f"operands rejected by the type rule of {op.name}: {e.message}", op)
        except Exception as e:  # a type rule crashing is a bug too
            self.fail(f"type rule of {op.name} failed: {type(e).__name__}: {e}", op)
        self._types(f"result types of {op.name}", [r.type for r in op.results], want, op)

    # ------------------------------------------------------------------ entry
    def run(self) -> None:
        f = self.func
        if not isinstance(f.body, Region):
            self.fail("function body is not a Region")
        self.region(f.body, "func", None)


def _message(func: Func, err: _Fail, pass_name: str | None) -> str:
    where = f" after pass {pass_name!r}" if pass_name else ""
    msg = f"invalid IR{where} in function {func.name!r}: {err.message}"
    if err.op is not None:
        from dplang.ir.printer import FuncPrinter
        try:
            line = FuncPrinter(func).op_line(err.op)
        except Exception:
            line = f"<{err.op.name} op>"
        msg += f"\n  at op: {line}"
    return msg


def verify_func(func: Func, program: Program | None = None,
                pass_name: str | None = None) -> None:
    """Raise ``DPInternalError`` if ``func`` is not well-formed IR."""
    v = _Verifier(func, program)
    try:
        v.run()
    except _Fail as e:
        loc = e.op.loc if e.op is not None else func.loc
        raise DPInternalError(_message(func, e, pass_name), loc) from None


def verify_program(program: Program, pass_name: str | None = None) -> None:
    """Verify every function of ``program`` (calls checked against their callees)."""
    for key, target in program.exports.items():
        if target not in program.funcs:
            raise DPInternalError(
                f"invalid IR{f' after pass {pass_name!r}' if pass_name else ''}: export "
                f"{key!r} names unknown function {target!r}")
    for f in program.funcs.values():
        verify_func(f, program, pass_name)


__all__ = ["verify_func", "verify_program", "types_match"]
