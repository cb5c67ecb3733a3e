"""The IR builder: appends ops at an insertion point and infers result types from the
primitive registry.  Passes and the front end build IR only through it.

    b = Builder(region)
    y = b.prim("exp", x)                    # y: Value, type inferred
    s = b.prim("sum", y, axis=1)
    with b.at(other_region): ...
"""
from __future__ import annotations

from contextlib import contextmanager

from dplang.errors import Loc
from dplang.ir.core import Op, Region, Value
from dplang.ir.primitives import REGISTRY
from dplang.ir.types import Type, make
from dplang.ir import types as T


class Builder:
    def __init__(self, region: Region | None = None, loc: Loc | None = None):
        self.region = region
        self.loc = loc          # default location of new ops

    @contextmanager
    def at(self, region: Region):
        old = self.region
        self.region = region
        try:
            yield self
        finally:
            self.region = old

    @contextmanager
    def located(self, loc: Loc | None):
        old = self.loc
        self.loc = loc if loc is not None else old
        try:
            yield self
        finally:
            self.loc = old

    def insert(self, op: Op) -> Op:
        if op.loc is None:
            op.loc = self.loc
        self.region.append(op)
        return op

    def op(self, name: str, operands, result_types, attrs=None, regions=None,
           hints=None, loc=None) -> Op:
        hints = list(hints or [None] * len(result_types))
        results = [Value(t, h, loc or self.loc) for t, h in zip(result_types, hints)]
        return self.insert(Op(name, list(operands), results, attrs, regions, loc or self.loc))

    # ------------------------------------------------------------ primitives
    def prim(self, name: str, *operands: Value, hint: str | None = None,
             loc: Loc | None = None, **attrs):
        """Apply primitive ``name``; returns its Value (or a tuple for several results).
        Raises ``TypeRuleError`` when the type rule rejects the operands."""
        p = REGISTRY[name]
        p.check_arity(len(operands))
        rtypes = p.result_types([v.type for v in operands], attrs)
        full = dict(p.attrs)
        full.update(attrs)
        op = self.op(name, operands, rtypes, full, hints=[hint] * len(rtypes), loc=loc)
        return op.results[0] if len(op.results) == 1 else tuple(op.results)

    def const(self, value, type: Type | None = None, hint: str | None = None) -> Value:
        if type is None:
            if isinstance(value, bool):
                type = T.BOOL
            elif isinstance(value, int):
                type = T.I64
            else:
                type = T.F64
        return self.op("const", [], [type], {"value": value}, hints=[hint]).result

    def cast(self, v: Value, dtype: str) -> Value:
        if getattr(v.type, "dtype", None) == dtype:
            return v
        if v.owner is not None and isinstance(v.owner, Op) and v.owner.name == "const" \
                and isinstance(v.type, T.Scalar):
            # fold casts of constants
            val = v.owner.attrs["value"]
            pyval = {"f64": float, "f32": float, "i64": int, "bool": bool}[dtype](val)
            return self.const(pyval, T.Scalar(dtype), hint=v.hint)
        return self.prim("cast", v, dtype=dtype, hint=v.hint)

    # ------------------------------------------------------------ structure
    def yield_(self, *values: Value) -> Op:
        return self.op("yield", values, [])

    def return_(self, *values: Value) -> Op:
        return self.op("return", values, [])

    def call(self, callee: str, args, result_types, hints=None, attrs=None) -> Op:
        a = {"callee": callee}
        a.update(attrs or {})
        return self.op("call", args, result_types, a, hints=hints)


def new_region(arg_types=(), hints=(), label="") -> Region:
    hints = list(hints) + [None] * (len(arg_types) - len(hints))
    return Region([Value(t, h) for t, h in zip(arg_types, hints)], label=label)
