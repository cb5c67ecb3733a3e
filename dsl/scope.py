"""Lowering state: bindings of names to IR values, definite assignment, and the
alias tracking that keeps NumPy's reference semantics equal to value semantics.

Every array binding carries an *origin*: the set of roots (allocations) it may point
into.  A write ``A[i] = v`` (or ``A += v``) is refused when ``A`` may point into a
parameter, or when another bound name may point into the same allocation (SPEC 1.4).
Inside loops a carried array starts each iteration with a fresh *token* root; the
relations ``Q`` (token -> outer roots it may hold) and ``P`` (pairs of tokens that may
hold the same allocation) are computed to a fixpoint, so that swapping two buffers
(``prev, cur = cur, prev``) is accepted while ``prev = cur`` followed by a write to
``cur`` in the next iteration is refused.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional, Union

from dplang.errors import Loc
from dplang.ir.core import Value

_roots = itertools.count(1)


def fresh_root() -> int:
    return next(_roots)


@dataclass
class Binding:
    value: Union[Value, list]        # a Value, or a list of Values for a tuple
    origin: frozenset = frozenset()  # roots, for arrays
    loc: Optional[Loc] = None        # where it was assigned


@dataclass
class Unassigned:
    """A name assigned on some paths only (or a loop variable after its loop)."""
    why: str


@dataclass
class AliasInfo:
    """Function-wide alias facts: which roots are parameters, Q and P of the loops."""
    param_roots: dict = field(default_factory=dict)     # root -> param name
    q: dict = field(default_factory=dict)               # token -> set of roots
    p: set = field(default_factory=set)                 # frozenset({t1, t2})

    def closure(self, origin) -> set:
        out = set(origin)
        todo = list(origin)
        while todo:
            r = todo.pop()
            for s in self.q.get(r, ()):
                if s not in out:
                    out.add(s)
                    todo.append(s)
        return out

    def overlap(self, o1, o2) -> bool:
        e1, e2 = self.closure(o1), self.closure(o2)
        if e1 & e2:
            return True
        return any(frozenset((a, b)) in self.p for a in e1 for b in e2 if a != b)

    def params_in(self, origin) -> list:
        return sorted({self.param_roots[r] for r in self.closure(origin) if r in self.param_roots})


class Env:
    """Name -> Binding | Unassigned, plus the internal control flags of lowering:
    ``$ret`` / ``$brk`` / ``$cont`` (each ``False``, ``True`` or a bool Value) and ``$rv``
    (the list of return values)."""

    def __init__(self, names=None, flags=None):
        self.names: dict = dict(names or {})
        self.flags: dict = dict(flags or {"$ret": False, "$brk": False, "$cont": False, "$rv": None})

    def copy(self) -> "Env":
        return Env(self.names, self.flags)

    def get(self, name):
        return self.names.get(name)

    def bind(self, name, b) -> None:
        self.names[name] = b
