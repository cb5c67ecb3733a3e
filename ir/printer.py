"""The IR printer: a dump that reads like the program.

    @smooth(reg="entropy", gamma="gamma")
    func dtw(D: f64[n, m]) -> f64 {                        # dtw.dp:1
      R = full(inf, n_1, m_1)                              # dtw.dp:2
      R_1 = setitem(R, [0, 0], 0.0)                        # dtw.dp:3
      R_6 = for i in range(1, n_1, 1) carry (R_2 = R_1) {  # dtw.dp:4
        ...
        yield R_5
      }
      t = R_6[n, m]                                        # dtw.dp:7
      return t                                             # dtw.dp:7
    }

Format (one op per line, deterministic):

* Names come from ``Value.hint`` made unique per function: the first value hinted ``R``
  prints ``R``, the next ``R_1``, ``R_2``, ... (a trailing ``_<digits>`` of a hint is
  dropped first, so the printer numbers the versions); a value without a hint is ``t``,
  ``t_1``, ...  Names are given in definition order, where the results of an op with
  regions come after the values defined inside it (the loop's result is the last
  version).  Raw ids are never printed.
* Scalar ``const`` ops are not printed: their users show the literal (``0.0``, ``inf``,
  ``-inf``, ``nan``, ``3``, ``True``; an ``f32`` constant prints ``f32(0.5)``).  A
  ``const`` holding an array prints on its own line: ``C = const([1.0, 2.0])``.
* Primitives print as calls, ``y = exp(x)``, ``s = sum(x, axis=1)`` (attrs as keywords,
  strings double-quoted; attrs starting with ``_`` and attrs set to ``None`` are not
  printed).  Binary arithmetic,
  comparisons and logic print infix: ``c = a + b``, ``c = a < b``, ``c = a and b``,
  ``C = A @ B``; unary ``y = -x``, ``y = not x``; a negative literal operand is
  parenthesised (``y = x - (-1)``).
* ``getitem`` prints ``t = R[i, j]``, ``setitem`` prints ``R_1 = setitem(R, [i, j], v)``;
  slices print ``lo:hi:step`` with absent parts left out (``A[i, :]``, ``A[1:n]``).
* Structure::

      a_2, b_2 = for i in range(lo, hi, step) carry (a_1 = a, b_1 = b) {
        ...
        yield a_3, b_3
      }
      x_2 = while carry (x_1 = x) cond {
        ...
        yield flag
      } do (x_3) {
        ...
        yield x_4
      }
      y = if c {
        yield a
      } else {
        yield b
      }
      t = call dtw(D)
      assert c, "message"
      assert t, "size {1}, expected {2}", args=(k, n), kind="shape"
      x = undef f64[n]
      return t

* Every op with a location ends with ``# file.dp:LINE`` (basename and line), the ``#``
  at column 56, or two spaces after the text when it is longer.
* ``func name(p: T, ...) -> R {`` with the function's decorators (``func.attrs``) on
  ``@name(key=value)`` lines before it; several results print ``-> (f64, f64[n])``.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.ir import types as T

COMMENT_COL = 56          # 1-based column of the '#' of location comments
INDENT = "  "

INFIX = {
    "add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%",
    "pow": "**", "matmul": "@",
    "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
    "logical_and": "and", "logical_or": "or",
}
PREFIX = {"neg": "-", "logical_not": "not "}

_SUFFIX = re.compile(r"_\d+$")
_BAD = re.compile(r"[^0-9A-Za-z_]")


def public_attrs(attrs: dict) -> dict:
    """The attrs a primitive's ``impl`` receives (and the printer shows): no ``_`` hints."""
    return {k: v for k, v in attrs.items() if not str(k).startswith("_")}


def is_inlined_const(op: Op) -> bool:
    """Scalar constants are printed inline at their uses."""
    return (op.name == "const" and len(op.results) == 1
            and isinstance(op.results[0].type, T.Scalar)
            and _is_scalar_value(op.attrs.get("value")))


def _is_scalar_value(v) -> bool:
    return isinstance(v, (bool, int, float, np.generic)) or (
        isinstance(v, np.ndarray) and v.ndim == 0)


def format_literal(value: Any, type: T.Type | None = None) -> str:
    """The text of a scalar constant of type ``type``."""
    if isinstance(value, np.ndarray):
        value = value[()]
    if isinstance(value, np.generic):
        value = value.item()
    dtype = getattr(type, "dtype", None)
    try:
        if dtype == "bool":
            return "True" if bool(value) else "False"
        if dtype == "i64":
            return str(int(value))
        if dtype in ("f64", "f32"):
            s = repr(float(value))
            return f"f32({s})" if dtype == "f32" else s
    except (TypeError, ValueError, OverflowError):
        pass
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return repr(value)


def loc_comment(loc) -> str | None:
    if loc is None:
        return None
    short = getattr(loc, "short", None)
    if callable(short):
        return short()
    return str(loc)


def with_comment(line: str, comment: str | None) -> str:
    if not comment:
        return line
    width = COMMENT_COL - 1
    if len(line) <= width - 2:
        return line.ljust(width) + "# " + comment
    return line + "  # " + comment


class Namer:
    """Unique, readable names for the values of one function."""

    def __init__(self):
        self.names: dict[Value, str] = {}
        self.used: set[str] = set()
        self.literals: dict[Value, str] = {}     # inlined constants

    def define(self, v: Value) -> str:
        if v in self.names:
            return self.names[v]
        if not v.hint:
            # temporaries are %1, %2, ...: never confused with a source name
            k = 1
            while f"%{k}" in self.used:
                k += 1
            name = f"%{k}"
            self.used.add(name)
            self.names[v] = name
            return name
        base = _SUFFIX.sub("", v.hint) or v.hint
        base = _BAD.sub("_", base) or "v"
        if base[0].isdigit():
            base = "v" + base
        name = base
        k = 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        self.names[v] = name
        return name

    def __call__(self, v: Value) -> str:
        lit = self.literals.get(v)
        if lit is not None:
            return lit
        # values never defined in this function (broken IR) get a name on first use
        return self.names.get(v) or self.define(v)

    # -- naming a whole function in definition order --------------------------------
    def name_func(self, func: Func) -> "Namer":
        params = func.params
        pnames = list(func.param_names or [])
        for k, p in enumerate(params):
            if p.hint is None and k < len(pnames):
                # a parameter keeps its written name
                name = pnames[k]
                if name not in self.used:
                    self.used.add(name)
                    self.names[p] = name
                    continue
            self.define(p)
        self.name_region_ops(func.body)
        return self

    def name_region_ops(self, region: Region) -> None:
        for op in region.ops:
            if is_inlined_const(op):
                self.literals[op.results[0]] = format_literal(op.attrs.get("value"),
                                                              op.results[0].type)
                continue
            for reg in op.regions:
                for a in reg.args:
                    self.define(a)
                self.name_region_ops(reg)
            for r in op.results:
                self.define(r)


def _fmt_attr(v: Any, name) -> str:
    if isinstance(v, Value):
        return name(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, np.ndarray):
        return _fmt_attr(v.tolist(), name)
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int)):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, tuple):
        inner = ", ".join(_fmt_attr(x, name) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_attr(x, name) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_fmt_attr(k, name)}: {_fmt_attr(x, name)}"
                               for k, x in v.items()) + "}"
    if isinstance(v, (T.Type, T.Sym)):
        return str(v)
    return repr(v)


def _fmt_kwargs(attrs: dict, name) -> list[str]:
    """``key=value`` for the public attrs; a ``None`` attr means "absent" and is omitted."""
    return [f"{k}={_fmt_attr(v, name)}" for k, v in public_attrs(attrs).items()
            if v is not None]


def format_index(index, idx_texts: list[str]) -> str | None:
    """``i, lo:hi:step, ...`` for the ``index`` attr over the index operands' texts, or
    None when they do not fit together."""
    entries = ("i",) * len(idx_texts) if index is None else index
    try:
        entries = tuple(entries)
    except TypeError:
        return None
    out, k = [], 0
    for e in entries:
        if e == "i":
            if k >= len(idx_texts):
                return None
            out.append(idx_texts[k])
            k += 1
        elif isinstance(e, (tuple, list)) and len(e) == 4 and e[0] == "slice":
            parts = []
            for has in e[1:]:
                if has:
                    if k >= len(idx_texts):
                        return None
                    parts.append(idx_texts[k])
                    k += 1
                else:
                    parts.append("")
            lo, hi, step = parts
            out.append(f"{lo}:{hi}:{step}" if step else f"{lo}:{hi}")
        else:
            return None
    if k != len(idx_texts):
        return None
    return ", ".join(out) if out else "()"


def format_func_attrs(attrs: dict, name=str) -> list[str]:
    """Decorator lines for ``func.attrs``."""
    lines = []
    for key, val in attrs.items():
        if str(key).startswith("_"):
            continue
        if val is None or val is True or val == {}:
            lines.append(f"@{key}")
        elif isinstance(val, dict):
            lines.append(f"@{key}(" + ", ".join(_fmt_kwargs(val, name)) + ")")
        elif isinstance(val, (list, tuple)):
            lines.append(f"@{key}(" + ", ".join(_fmt_attr(x, name) for x in val) + ")")
        else:
            lines.append(f"@{key}({_fmt_attr(val, name)})")
    return lines


class FuncPrinter:
    """Prints one function; ``op_line(op)`` is the one-line text of an op (the header
    line of an op with regions), also used by the verifier and the dot writer."""

    def __init__(self, func: Func):
        self.func = func
        self.name = Namer().name_func(func)

    # ------------------------------------------------------------------ pieces
    def names(self, values) -> str:
        return ", ".join(self.name(v) for v in values)

    def operand(self, v: Value) -> str:
        """An operand inside an infix expression: negative literals parenthesised."""
        s = self.name(v)
        return f"({s})" if s.startswith("-") else s

    def _lhs(self, op: Op) -> str:
        return self.names(op.results) + " = " if op.results else ""

    def _carry(self, args, inits) -> str:
        pairs = [f"{self.name(a)} = {self.name(i)}" for a, i in zip(args, inits)]
        return f" carry ({', '.join(pairs)})" if pairs else ""

    def op_line(self, op: Op) -> str:
        try:
            return self._op_line(op)
        except Exception:       # never let a malformed op break a dump
            return self._generic(op)

    def _generic(self, op: Op) -> str:
        args = [self.name(v) for v in op.operands] + _fmt_kwargs(op.attrs, self.name)
        s = f"{self._lhs(op)}{op.name}({', '.join(args)})"
        if op.regions:
            reg = op.regions[0]
            s += (f" ({self.names(reg.args)})" if reg.args else "") + " {"
        return s

    def _op_line(self, op: Op) -> str:
        n = op.name
        ops = op.operands
        lhs = self._lhs(op)
        if n == "const":
            val = op.attrs.get("value")
            if isinstance(val, np.ndarray):
                val = val.tolist()
            return f"{lhs}const({_fmt_attr(val, self.name)})"
        if n == "for" and len(ops) >= 3 and len(op.regions) == 1:
            body = op.regions[0]
            iv = self.name(body.args[0]) if body.args else "_"
            rng = f"range({self.name(ops[0])}, {self.name(ops[1])}, {self.name(ops[2])})"
            return f"{lhs}for {iv} in {rng}{self._carry(body.args[1:], ops[3:])} {{"
        if n == "while" and len(op.regions) == 2:
            cond = op.regions[0]
            return f"{lhs}while{self._carry(cond.args, ops)} cond {{"
        if n == "if" and len(ops) == 1 and len(op.regions) == 2:
            return f"{lhs}if {self.name(ops[0])} {{"
        if n == "call":
            args = [self.name(v) for v in ops] + _fmt_kwargs(
                {k: v for k, v in op.attrs.items() if k != "callee"}, self.name)
            return f"{lhs}call {op.attrs.get('callee', '?')}({', '.join(args)})"
        if n in ("yield", "return"):
            return f"{n} {self.names(ops)}" if ops else n
        if n == "assert" and len(ops) >= 1:
            msg = op.attrs.get("msg")
            s = f"assert {self.name(ops[0])}" + (f", {json.dumps(str(msg))}" if msg else "")
            if len(ops) > 1:
                s += f", args=({self.names(ops[1:])}{',' if len(ops) == 2 else ''})"
            rest = {k: v for k, v in op.attrs.items() if k != "msg"
                    and not (k == "kind" and v == "assert")}
            return ", ".join([s] + _fmt_kwargs(rest, self.name))
        if n == "undef" and len(op.results) == 1:
            return f"{lhs}undef {op.results[0].type}"
        pub = public_attrs(op.attrs)
        if not op.regions:
            if n in INFIX and len(ops) == 2 and not pub:
                return f"{lhs}{self.operand(ops[0])} {INFIX[n]} {self.operand(ops[1])}"
            if n in PREFIX and len(ops) == 1 and not pub:
                return f"{lhs}{PREFIX[n]}{self.operand(ops[0])}"
            if n == "getitem" and len(ops) >= 1 and set(pub) <= {"index"}:
                idx = format_index(pub.get("index"), [self.name(v) for v in ops[1:]])
                if idx is not None:
                    return f"{lhs}{self.name(ops[0])}[{idx}]"
            if n == "setitem" and len(ops) >= 2 and set(pub) <= {"index"}:
                idx = format_index(pub.get("index"), [self.name(v) for v in ops[2:]])
                if idx is not None:
                    return (f"{lhs}setitem({self.name(ops[0])}, [{idx}], "
                            f"{self.name(ops[1])})")
        return self._generic(op)

    def signature(self) -> str:
        f = self.func
        params = ", ".join(f"{self.name(p)}: {p.type}" for p in f.params)
        rts = [str(t) for t in f.result_types]
        if len(rts) == 1 and not f.returns_tuple:
            res = rts[0]
        else:
            res = "(" + ", ".join(rts) + ("," if len(rts) == 1 else "") + ")"
        return f"func {f.name}({params}) -> {res} {{"

    # ------------------------------------------------------------------ whole text
    def lines(self) -> list[str]:
        out = format_func_attrs(self.func.attrs, self.name)
        out.append(with_comment(self.signature(), loc_comment(self.func.loc)))
        self._region(self.func.body, 1, out)
        out.append("}")
        return out

    def _region(self, region: Region, depth: int, out: list[str]) -> None:
        ind = INDENT * depth
        for op in region.ops:
            if is_inlined_const(op):
                continue
            out.append(with_comment(ind + self.op_line(op), loc_comment(op.loc)))
            if not op.regions:
                continue
            for k, reg in enumerate(op.regions):
                if k > 0:
                    out.append(ind + self._region_sep(op, k, reg))
                self._region(reg, depth + 1, out)
            out.append(ind + "}")

    def _region_sep(self, op: Op, k: int, reg: Region) -> str:
        if op.name == "while" and k == 1:
            return f"}} do ({self.names(reg.args)}) {{" if reg.args else "} do {"
        if op.name == "if" and k == 1:
            return "} else {"
        return f"}} ({self.names(reg.args)}) {{" if reg.args else "} {"

    def text(self) -> str:
        return "\n".join(self.lines()) + "\n"


def print_func(func: Func) -> str:
    """The text of one function (ends with a newline)."""
    return FuncPrinter(func).text()


def print_program(program: Program) -> str:
    """Every function of ``program`` in its order, separated by blank lines."""
    return "\n".join(print_func(f) for f in program.funcs.values())


def op_text(op: Op, func: Func | None = None) -> str:
    """One op's line, named as in its function's dump (for error messages)."""
    if func is None:
        func = enclosing_func(op)
    if func is None:
        return FuncPrinter(Func("?", Region(), [])).op_line(op)
    return FuncPrinter(func).op_line(op)


def enclosing_func(op: Op) -> Func | None:
    node: Any = op
    for _ in range(10_000):
        parent = getattr(node, "parent", None)
        if parent is None or isinstance(parent, Func):
            return parent
        node = parent
    return None


__all__ = ["print_func", "print_program", "FuncPrinter", "Namer", "op_text",
           "format_literal", "public_attrs", "is_inlined_const", "format_index"]
