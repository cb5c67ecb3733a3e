"""The dplang abstract syntax tree.

The parser (``dsl/parser.py``, Lark) produces these nodes for ``.dp`` files and for
the source of ``@dplang.jit`` functions alike.  Every node carries ``loc`` (1-based
line and column).  Type annotations are kept as expressions (``f64[n, m]`` is a
``Subscript`` of ``Name('f64')``); the checker interprets them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from dplang.errors import Loc


@dataclass
class Node:
    loc: Loc


# ----------------------------------------------------------------- expressions
@dataclass
class Expr(Node):
    pass


@dataclass
class Name(Expr):
    id: str


@dataclass
class Num(Expr):
    value: Union[int, float]          # int for integer literals, float for float literals


@dataclass
class Str(Expr):
    value: str


@dataclass
class Bool(Expr):
    value: bool


@dataclass
class BinOp(Expr):
    op: str                           # '+', '-', '*', '/', '//', '%', '**', '@'
    left: Expr
    right: Expr


@dataclass
class UnaryOp(Expr):
    op: str                           # '-', '+', 'not'
    operand: Expr


@dataclass
class Compare(Expr):
    left: Expr
    ops: list[str]                    # '<', '<=', '>', '>=', '==', '!='
    comparators: list[Expr]


@dataclass
class BoolOp(Expr):
    op: str                           # 'and' | 'or'
    values: list[Expr]


@dataclass
class IfExp(Expr):
    test: Expr
    body: Expr
    orelse: Expr


@dataclass
class Keyword(Node):
    name: str
    value: Expr


@dataclass
class Call(Expr):
    func: Expr
    args: list[Expr]
    keywords: list[Keyword] = field(default_factory=list)


@dataclass
class Slice(Expr):
    lower: Optional[Expr]
    upper: Optional[Expr]
    step: Optional[Expr]


@dataclass
class Subscript(Expr):
    value: Expr
    index: list[Expr]                 # each an Expr or a Slice; a[i, j] -> [i, j]


@dataclass
class Attribute(Expr):
    value: Expr
    attr: str


@dataclass
class Tuple(Expr):
    elts: list[Expr]


@dataclass
class List(Expr):
    elts: list[Expr]


# ------------------------------------------------------------------ statements
@dataclass
class Stmt(Node):
    pass


@dataclass
class Assign(Stmt):
    targets: list[Expr]               # a = b = e -> [a, b]; each a Name, Subscript or Tuple
    value: Expr
    annotation: Optional[Expr] = None  # x: T = e


@dataclass
class AugAssign(Stmt):
    target: Expr                      # Name or Subscript
    op: str                           # '+', '-', '*', '/', ...
    value: Expr


@dataclass
class If(Stmt):
    test: Expr
    body: list[Stmt]
    orelse: list[Stmt]                # elif is a nested If here


@dataclass
class For(Stmt):
    var: str
    var_loc: Loc
    iter: Expr                        # must be a call of range (checked later)
    body: list[Stmt]


@dataclass
class While(Stmt):
    test: Expr
    body: list[Stmt]


@dataclass
class Break(Stmt):
    pass


@dataclass
class Continue(Stmt):
    pass


@dataclass
class Return(Stmt):
    value: Optional[Expr]             # `return a, b` -> Tuple


@dataclass
class Assert(Stmt):
    test: Expr
    msg: Optional[Expr]


@dataclass
class Pass(Stmt):
    pass


@dataclass
class ExprStmt(Stmt):
    value: Expr                       # a docstring, or a bare call


# ---------------------------------------------------------------- definitions
@dataclass
class Param(Node):
    name: str
    annotation: Optional[Expr]


@dataclass
class Decorator(Node):
    expr: Expr                        # a Name, Attribute, or Call (@smooth(entropy, gamma=g))


@dataclass
class FuncDef(Node):
    name: str
    params: list[Param]
    returns: Optional[Expr]
    body: list[Stmt]
    decorators: list[Decorator] = field(default_factory=list)


@dataclass
class ImportFrom(Node):
    module: str                       # dotted: 'std.align', 'helpers'
    names: list[tuple[str, Optional[str], Loc]]   # (name, asname, loc)


@dataclass
class ConstDef(Node):
    name: str
    value: Expr


@dataclass
class Module(Node):
    filename: str
    source: str
    imports: list[ImportFrom]
    consts: list[ConstDef]
    funcs: list[FuncDef]
