"""The structured SSA IR.

* A ``Value`` is defined once: by an ``Op`` (one of its ``results``) or as an argument
  of a ``Region`` (a loop's induction variable or loop-carried value, a function's
  parameter).  ``hint`` is the source name the printer uses (``R``, ``R_1``, ...).
* An ``Op`` has ``operands`` (Values), ``results`` (Values), static ``attrs`` and nested
  ``regions``.  Primitive ops are named after their primitive (``exp``, ``setitem``);
  the structural ops are:

  ``const``   attrs value                         -> (v)
  ``for``     operands (lo, hi, step, *init)      -> (*carried_out)
              region body(i, *carried) ... yield (*carried_next)
  ``while``   operands (*init)                    -> (*carried_out)
              region cond(*carried) ... yield (flag)
              region body(*carried) ... yield (*carried_next)
  ``if``      operands (cond,)                    -> (*results)
              region then() ... yield (*results);  region else() ... yield (*results)
  ``call``    attrs callee (function name), operands args -> (*results)
  ``yield``   terminator of a nested region
  ``return``  terminator of a function body (exactly one, at its end)

* Arrays are values: ``A2 = setitem(A1, v, i, j)`` is a new array; code generators write
  in place when ``A1`` is dead afterwards (``ir/analysis.py``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from dplang.errors import Loc
from dplang.ir.types import Type

_ids = itertools.count()

STRUCTURAL = ("const", "for", "while", "if", "call", "yield", "return", "assert", "undef",
              "tape_new", "tape_push", "tape_pop")
# ``assert``: operands (cond, *extra), attrs msg (may hold {0}, {1}... for the extra
#             operands), kind ("assert" | "shape"): raises at run time when cond is false.
# ``undef``:  no operands, one result: a placeholder of its type on paths that never
#             read it (the return value before a ``return`` ran).
# Tapes (emitted by reverse mode only; ops with effects, never removed or merged):
# ``tape_new``:  an optional capacity (i64: at most that many values are pushed), one
#                result of type ``Tape(elem)``: an empty stack.
# ``tape_push``: operands (tape, v), no results: pushes (a copy of) v.
# ``tape_pop``:  operand (tape,), one result of the tape's element type: pops the last
#                value pushed.  Each tape holds one value of the primal per iteration
#                that needs it, so pushes and pops of one tape mirror each other.
EFFECTS = ("assert", "tape_push", "tape_pop", "tape_new")


class Value:
    __slots__ = ("id", "type", "hint", "owner", "loc")

    def __init__(self, type: Type, hint: str | None = None, loc: Loc | None = None):
        self.id = next(_ids)
        self.type = type
        self.hint = hint
        self.owner: Any = None      # the defining Op, or the Region whose argument it is
        self.loc = loc

    def __repr__(self) -> str:
        return f"<Value {self.hint or ''}#{self.id}: {self.type}>"


class Op:
    __slots__ = ("name", "operands", "results", "attrs", "regions", "loc", "parent")

    def __init__(self, name: str, operands: list[Value], results: list[Value],
                 attrs: dict | None = None, regions: list["Region"] | None = None,
                 loc: Loc | None = None):
        self.name = name
        self.operands = list(operands)
        self.results = list(results)
        self.attrs = dict(attrs or {})
        self.regions = list(regions or [])
        self.loc = loc
        self.parent: Optional[Region] = None
        for r in self.results:
            r.owner = self
        for reg in self.regions:
            reg.parent = self

    @property
    def result(self) -> Value:
        assert len(self.results) == 1, self
        return self.results[0]

    def walk(self) -> Iterator["Op"]:
        """This op and every op nested in its regions, in program order."""
        yield self
        for reg in self.regions:
            yield from reg.walk()

    def __repr__(self) -> str:
        return f"<Op {self.name} {self.operands} -> {self.results}>"


class Region:
    """A list of ops with arguments; its last op is a terminator (yield/return)."""
    __slots__ = ("args", "ops", "parent", "label")

    def __init__(self, args: list[Value] | None = None, ops: list[Op] | None = None,
                 label: str = ""):
        self.args = list(args or [])
        self.ops: list[Op] = []
        self.parent: Any = None     # the Op (or Func) that holds this region
        self.label = label
        for a in self.args:
            a.owner = self
        for op in ops or []:
            self.append(op)

    def append(self, op: Op) -> Op:
        op.parent = self
        self.ops.append(op)
        return op

    @property
    def terminator(self) -> Op | None:
        return self.ops[-1] if self.ops and self.ops[-1].name in ("yield", "return") else None

    def walk(self) -> Iterator[Op]:
        for op in self.ops:
            yield from op.walk()


@dataclass
class Func:
    """A function: parameters are the arguments of ``body``; ``body`` ends in ``return``."""
    name: str
    body: Region
    result_types: list[Type]
    loc: Loc | None = None
    # decorators, as validated data: {"smooth": {...}, "argmin": {...}, ...}
    attrs: dict = field(default_factory=dict)
    # the names of the parameters (as written) and whether the result is a tuple
    param_names: list[str] = field(default_factory=list)
    returns_tuple: bool = False
    filename: str = "<dp>"

    def __post_init__(self):
        self.body.parent = self

    @property
    def params(self) -> list[Value]:
        return self.body.args

    def walk(self) -> Iterator[Op]:
        return self.body.walk()


@dataclass
class Program:
    """Every function reachable from a module, keyed by qualified name.

    Functions of the main module keep their own name; imported ones are keyed
    ``module.name`` (``std.align.dtw``).  ``exports`` maps the main module's public
    names (including imported aliases) to keys of ``funcs``.
    """
    funcs: dict[str, Func] = field(default_factory=dict)
    exports: dict[str, str] = field(default_factory=dict)
    filename: str = "<dp>"

    def func(self, name: str) -> Func:
        return self.funcs[self.exports.get(name, name)]
