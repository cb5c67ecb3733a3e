"""The primitive registry: every built-in operation declared once.

A declaration (``defprim``) holds everything about a primitive:

* ``operands``  the names of its array/scalar operands, in order (``("x", "y")``);
                ``variadic=True`` means any number of operands (``maxn``, ``stack``);
* ``attrs``     static attributes with defaults (``{"axis": None}``): compile-time
                constants, never SSA values;
* ``infer``     the type and shape rule: ``infer(types, attrs) -> Type | list[Type]``,
                raising ``TypeRuleError`` for bad operands;
* ``impl``      the NumPy reference semantics: ``impl(*values, **attrs)`` (the
                interpreter runs exactly this);
* ``jvp``/``vjp`` derivative rules written as IR-building code, installed next to the
                declaration with ``rules(...)`` (``ir/primitives/rules.py``: the
                interface the AD passes call and the helpers rules are written in);
                ``zero_derivative`` for ops like ``floor`` (outputs are constants);
                every primitive has one or the other;
* ``linear``    linear in its float operands (indices, sizes, conditions and the
                shape-only ``like`` operands held fixed): its rules never read the float
                primal values;
* ``smoothed``  the name of the smoothed counterpart (``maxn`` -> ``smaxn``), if any;
* ``templates`` code templates per backend (``{"cpu": "np.exp({x})"}``).

Adding a primitive is one ``defprim`` call in one of the modules of this package; the
test suite walks ``REGISTRY`` so a primitive without rules is noticed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from dplang.ir.types import Type


class TypeRuleError(Exception):
    """Raised by a type rule.  ``kind`` is ``"type"`` or ``"shape"``; ``arg`` the index of
    the offending operand when known (the front end points the caret at it)."""

    def __init__(self, message: str, kind: str = "type", arg: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.arg = arg


@dataclass
class Primitive:
    name: str
    operands: tuple = ()
    infer: Callable[..., Any] = None
    impl: Callable[..., Any] = None
    attrs: dict = field(default_factory=dict)
    variadic: bool = False
    nresults: int = 1
    jvp: Optional[Callable] = None
    vjp: Optional[Callable] = None
    zero_derivative: bool = False
    linear: bool = False
    smoothed: Optional[str] = None
    # residuals(b, operands, attrs, need) -> (value, partials) | None: emit the value of a
    # single-result op together with its partial derivatives w.r.t. the operands flagged
    # in ``need`` (reverse mode tapes them instead of recomputing them in the reverse
    # sweep): per operand None, a value w (contribution: cotangent * w) or a pair
    # (w, contribution(b, g, w)) for array partials; None where the primitive cannot
    # (then its vjp rule is used)
    residuals: Optional[Callable] = None
    templates: dict = field(default_factory=dict)
    doc: str = ""
    group: str = ""

    def result_types(self, types: list[Type], attrs: dict) -> list[Type]:
        full = dict(self.attrs)
        full.update(attrs)
        out = self.infer(list(types), full)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def check_arity(self, n: int) -> None:
        if not self.variadic and n != len(self.operands):
            raise TypeRuleError(f"{self.name} takes {len(self.operands)} operand(s), got {n}")


REGISTRY: dict[str, Primitive] = {}


def defprim(name: str, **kw) -> Primitive:
    if name in REGISTRY:
        raise ValueError(f"primitive {name!r} declared twice")
    p = Primitive(name=name, **kw)
    REGISTRY[name] = p
    return p


def get(name: str) -> Primitive:
    return REGISTRY[name]


def _load_all() -> None:
    # each module declares its primitives when imported
    from dplang.ir.primitives import (elementwise, reductions, linalg,  # noqa: F401
                                      constructors, indexing, soft)


_load_all()
