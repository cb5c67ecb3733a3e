"""The dplang front end: source text -> ``dplang.dsl.ast``.

Two parsers cooperate:

* Python's own parser (``ast.parse``) decides what is *Python*.  Text it rejects is a
  ``DPSyntaxError``.  Text it accepts is walked (``_Checker``) for constructs the dplang
  language does not have (``lambda``, ``class``, comprehensions, ...), and the first one
  in source order is a ``DPUnsupportedError`` located at the construct.
* The Lark LALR grammar ``grammar.lark`` describes the dplang language itself and
  produces the parse tree that ``_Builder`` turns into dplang AST nodes with locations.

Public API: :func:`parse_module` (a ``.dp`` file) and :func:`parse_function` (the
source of one ``@dplang.jit`` function).
"""
from __future__ import annotations

import ast as pyast
import bisect
import os
import re
import threading
from typing import Optional

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.indenter import Indenter

from dplang.errors import DPError, DPSyntaxError, DPUnsupportedError, Loc
from dplang.dsl import ast as A

__all__ = ["parse_module", "parse_function"]

_GRAMMAR_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grammar.lark")


# --------------------------------------------------------------------- lexing
class _IndentMismatch(LarkError):
    def __init__(self, line: int, column: int):
        super().__init__("unindent does not match any outer indentation level")
        self.line = line
        self.column = column


def _indent_width(s: str) -> int:
    """Indentation width as Python's tokenizer computes it (tabs to multiples of 8)."""
    col = 0
    for ch in s:
        if ch == " ":
            col += 1
        elif ch == "\t":
            col = (col // 8 + 1) * 8
        elif ch == "\f":
            col = 0
    return col


class _DPIndenter(Indenter):
    """Python-style INDENT/DEDENT post-lexer.

    Unlike ``lark.indenter.PythonIndenter`` it measures tabs as Python does, places
    INDENT/DEDENT tokens at the first character of the line that causes them (so that
    "unexpected indent" points at that line) and never asserts on malformed input.
    """

    NL_type = "_NEWLINE"
    OPEN_PAREN_types = ["LPAR", "LSQB", "LBRACE"]
    CLOSE_PAREN_types = ["RPAR", "RSQB", "RBRACE"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8

    @staticmethod
    def _tok(type_: str, value: str, at: Token, end: bool) -> Token:
        line = at.end_line if end else at.line
        col = at.end_column if end else at.column
        pos = at.end_pos if end else at.start_pos
        return Token(type_, value, pos, line, col, line, col, pos)

    def handle_NL(self, token: Token):
        if self.paren_level > 0:
            return
        yield token
        indent_str = token.rsplit("\n", 1)[1]
        indent = _indent_width(indent_str)
        if indent > self.indent_level[-1]:
            self.indent_level.append(indent)
            yield self._tok(self.INDENT_type, indent_str, token, True)
        else:
            while indent < self.indent_level[-1]:
                self.indent_level.pop()
                yield self._tok(self.DEDENT_type, indent_str, token, True)
            if indent != self.indent_level[-1]:
                raise _IndentMismatch(token.end_line, token.end_column)

    def _process(self, stream):
        token = None
        for token in stream:
            if token.type == self.NL_type:
                yield from self.handle_NL(token)
            else:
                yield token
            if token.type in self.OPEN_PAREN_types:
                self.paren_level += 1
            elif token.type in self.CLOSE_PAREN_types:
                self.paren_level = max(self.paren_level - 1, 0)
        while len(self.indent_level) > 1:
            self.indent_level.pop()
            if token is not None:
                yield self._tok(self.DEDENT_type, "", token, True)
            else:
                yield Token(self.DEDENT_type, "", 0, 1, 1, 1, 1, 0)


_PARSER: Optional[Lark] = None
_LOCK = threading.Lock()   # the post-lexer keeps per-parse state


def _lark() -> Lark:
    global _PARSER
    if _PARSER is None:
        with open(_GRAMMAR_PATH, encoding="utf-8") as f:
            grammar = f.read()
        # cache=True: Lark keeps the analysed LALR tables in the temp directory (keyed by
        # the grammar and options), so a new process builds the parser in milliseconds; a
        # cache file it cannot read is rebuilt
        _PARSER = Lark(grammar, parser="lalr", lexer="basic", postlex=_DPIndenter(),
                       start="file_input", propagate_positions=True, maybe_placeholders=False,
                       cache=True)
    return _PARSER


def _lark_parse(text: str):
    with _LOCK:
        return _lark().parse(text + "\n")


# --------------------------------------------------------------------- locations
def _normalize(source: str) -> str:
    if source.startswith("\ufeff"):
        source = source[1:]
    return source.replace("\r\n", "\n").replace("\r", "\n")


class _Ctx:
    """Where the text came from: builds ``Loc`` objects for (line, col) in the text."""

    def __init__(self, filename: str, text: str, line_offset: int = 0, col_offset: int = 0,
                 file_source: Optional[str] = None):
        self.filename = filename
        self.text = text
        self.lines = text.split("\n")
        self.line_offset = line_offset
        self.col_offset = col_offset
        self.file_lines = _normalize(file_source).split("\n") if file_source is not None else None
        self._line_starts: Optional[list[int]] = None

    def loc(self, line: int, col: int) -> Loc:
        n = len(self.lines)
        # the text seen by Lark ends with an extra newline: clamp to the real text
        while n > 1 and self.lines[n - 1] == "" and line >= n:
            n -= 1
        if line > n:
            line, col = n, len(self.lines[n - 1]) + 1
        line = max(line, 1)
        col = max(col, 1)
        fline = line + self.line_offset
        fcol = col + self.col_offset
        text = None
        if self.file_lines is not None:
            if 1 <= fline <= len(self.file_lines):
                text = self.file_lines[fline - 1]
        elif 1 <= line <= len(self.lines):
            text = " " * self.col_offset + self.lines[line - 1]
        return Loc(self.filename, fline, fcol, text)

    def tok(self, t: Token) -> Loc:
        return self.loc(t.line, t.column)

    def meta(self, m) -> Loc:
        return self.loc(m.line, m.column)

    # ---- Python-ast positions (col_offset is a 0-based UTF-8 byte offset)
    def pycol(self, lineno: int, col_offset: int) -> int:
        if 1 <= lineno <= len(self.lines):
            s = self.lines[lineno - 1]
            if not s.isascii():
                return len(s.encode("utf-8")[:col_offset].decode("utf-8", "replace")) + 1
        return col_offset + 1

    def pypos(self, node) -> tuple[int, int]:
        return node.lineno, self.pycol(node.lineno, node.col_offset)

    def pyend(self, node) -> tuple[int, int]:
        return node.end_lineno, self.pycol(node.end_lineno, node.end_col_offset)

    def index(self, line: int, col: int) -> int:
        """Absolute character index of 1-based (line, col)."""
        if self._line_starts is None:
            starts, acc = [], 0
            for s in self.lines:
                starts.append(acc)
                acc += len(s) + 1
            self._line_starts = starts
        return self._line_starts[line - 1] + col - 1

    def position(self, index: int) -> tuple[int, int]:
        self.index(1, 1)
        i = bisect.bisect_right(self._line_starts, index) - 1
        return i + 1, index - self._line_starts[i] + 1


# --------------------------------------------------------------------- unsupported Python
_NODE_MESSAGES = {
    pyast.Lambda: "lambda expressions are not supported",
    pyast.ListComp: "list comprehensions are not supported",
    pyast.SetComp: "set comprehensions are not supported",
    pyast.DictComp: "dict comprehensions are not supported",
    pyast.GeneratorExp: "generator expressions are not supported",
    pyast.Dict: "dict literals are not supported",
    pyast.Set: "set literals are not supported",
    pyast.JoinedStr: "f-strings are not supported",
    pyast.NamedExpr: "assignment expressions (:=) are not supported",
    pyast.Await: "async/await is not supported",
    pyast.Yield: "'yield' is not supported (no generators)",
    pyast.YieldFrom: "'yield from' is not supported (no generators)",
    pyast.Starred: "starred expressions (*x) are not supported",
    pyast.ClassDef: "class definitions are not supported",
    pyast.AsyncFunctionDef: "async functions are not supported",
    pyast.AsyncFor: "'async for' is not supported",
    pyast.AsyncWith: "'async with' is not supported",
    pyast.With: "'with' statements are not supported",
    pyast.Try: "'try' statements are not supported",
    pyast.Raise: "'raise' statements are not supported (use assert)",
    pyast.Global: "'global' statements are not supported",
    pyast.Nonlocal: "'nonlocal' statements are not supported",
    pyast.Delete: "'del' statements are not supported",
    pyast.Import: "'import' statements are not supported; only 'from MODULE import NAME' at module level",
    pyast.Match: "'match' statements are not supported",
}
if hasattr(pyast, "TryStar"):
    _NODE_MESSAGES[pyast.TryStar] = "'try' statements are not supported"

_BITWISE = {pyast.LShift: "<<", pyast.RShift: ">>", pyast.BitOr: "|", pyast.BitXor: "^",
            pyast.BitAnd: "&"}
_BIN_OPS = {pyast.Add: "+", pyast.Sub: "-", pyast.Mult: "*", pyast.Div: "/",
            pyast.FloorDiv: "//", pyast.Mod: "%", pyast.Pow: "**", pyast.MatMult: "@"}
_BAD_CMP = {pyast.Is: "is", pyast.IsNot: "is not", pyast.In: "in", pyast.NotIn: "not in"}
_CMP_RE = re.compile(r"\bis\s+not\b|\bnot\s+in\b|\bis\b|\bin\b")
_BITWISE_RE = re.compile(r"<<|>>|\||\^|&")
_MODULE_LEVEL = "only imports, constants (NAME = expr) and functions are allowed at module level"


class _Checker:
    """Finds the first construct (in source order) of a Python AST outside dplang."""

    def __init__(self, ctx: _Ctx):
        self.ctx = ctx
        self.found: list[tuple[int, int, int, str]] = []

    # ---- reporting
    def at(self, pos: tuple[int, int], msg: str) -> None:
        self.found.append((pos[0], pos[1], len(self.found), msg))

    def node(self, node, msg: str) -> None:
        self.at(self.ctx.pypos(node), msg)

    def _search(self, start: tuple[int, int], end: tuple[int, int], regex, default) -> tuple[int, int]:
        """Position of the first match of ``regex`` between two positions, comments skipped."""
        ctx = self.ctx
        i, j = ctx.index(*start), ctx.index(*end)
        seg = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), ctx.text[i:j])
        m = regex.search(seg)
        return ctx.position(i + m.start()) if m else default

    def _star_before(self, arg) -> tuple[int, int]:
        ctx = self.ctx
        pos = ctx.pypos(arg)
        i = ctx.index(*pos) - 1
        while i > 0 and ctx.text[i] in " \t\\\n":
            i -= 1
        while i > 0 and ctx.text[i - 1] == "*":
            i -= 1
        return ctx.position(i) if ctx.text[i] == "*" else pos

    def first(self) -> Optional[tuple[int, int, int, str]]:
        return min(self.found) if self.found else None

    # ---- module level
    def module(self, tree: pyast.Module, mode: str) -> None:
        ndefs = 0
        for s in tree.body:
            if isinstance(s, pyast.FunctionDef):
                ndefs += 1
                if mode == "function" and ndefs > 1:
                    self.node(s, "expected a single function definition")
                self.funcdef(s)
            elif mode == "module" and isinstance(s, pyast.ImportFrom):
                if s.level:
                    self.node(s, "relative imports are not supported")
                for a in s.names:
                    if a.name == "*":
                        self.node(a, "'from MODULE import *' is not supported")
            elif (mode == "module" and isinstance(s, pyast.Assign) and len(s.targets) == 1
                  and isinstance(s.targets[0], pyast.Name)):
                self.expr(s.value)
            elif (mode == "module" and isinstance(s, pyast.Expr) and isinstance(s.value, pyast.Constant)
                  and isinstance(s.value.value, str)):
                pass  # module docstring
            elif type(s) in _NODE_MESSAGES:
                self.stmt(s, toplevel=True)
            else:
                before = len(self.found)
                self.stmt(s, toplevel=True)
                if len(self.found) == before:
                    self.node(s, _MODULE_LEVEL if mode == "module"
                              else "expected a single function definition")

    def funcdef(self, f: pyast.FunctionDef) -> None:
        for d in f.decorator_list:
            fn = d.func if isinstance(d, pyast.Call) else d
            if not _is_dotted(fn):
                self.node(d, "a decorator must be a name or a call such as @smooth(entropy, gamma=g)")
            self.expr(d)
        a = f.args
        if a.posonlyargs:
            self.node(a.posonlyargs[0], "positional-only parameters ('/') are not supported")
        if a.vararg is not None:
            self.at(self._star_before(a.vararg), "*args parameters are not supported")
        if a.kwonlyargs:
            self.node(a.kwonlyargs[0], "keyword-only parameters are not supported")
        if a.kwarg is not None:
            self.at(self._star_before(a.kwarg), "**kwargs parameters are not supported")
        for dflt in list(a.defaults) + [d for d in a.kw_defaults if d is not None]:
            self.node(dflt, "default parameter values are not supported")
        for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
            if arg.annotation is not None:
                self.expr(arg.annotation)
        if f.returns is not None:
            self.expr(f.returns)
        self.body(f.body)

    def body(self, stmts) -> None:
        for s in stmts:
            self.stmt(s)

    # ---- statements
    def stmt(self, s, toplevel: bool = False) -> None:
        t = type(s)
        if t in _NODE_MESSAGES:
            self.node(s, _NODE_MESSAGES[t])
        elif t is pyast.FunctionDef:
            self.node(s, "nested function definitions are not supported"
                      + (" (decorators included)" if s.decorator_list else ""))
        elif t is pyast.ImportFrom:
            self.node(s, "imports are only allowed at module level")
        elif t is pyast.Assign:
            for tg in s.targets:
                self.target(tg)
            self.expr(s.value)
        elif t is pyast.AugAssign:
            op = type(s.op)
            if op in _BITWISE:
                self.at(self._search(self.ctx.pyend(s.target), self.ctx.pypos(s.value),
                                     _BITWISE_RE, self.ctx.pypos(s)),
                        f"bitwise operator '{_BITWISE[op]}=' is not supported")
            if isinstance(s.target, (pyast.Name, pyast.Subscript)):
                self.target(s.target)
            else:
                self.target_other(s.target)
            self.expr(s.value)
        elif t is pyast.AnnAssign:
            if not (isinstance(s.target, pyast.Name) and s.simple):
                self.node(s.target, "only a plain name can be annotated (x: T = value)")
            elif s.value is None:
                self.node(s, "an annotation without a value (x: T) is not supported; write x: T = value")
            self.expr(s.annotation)
            if s.value is not None:
                self.expr(s.value)
        elif t is pyast.For:
            if not isinstance(s.target, pyast.Name):
                self.node(s.target, "a for-loop target must be a single name")
            self.expr(s.iter)
            self.body(s.body)
            if s.orelse:
                self.at(self._else_pos(s), "'for ... else' is not supported")
                self.body(s.orelse)
        elif t is pyast.While:
            self.expr(s.test)
            self.body(s.body)
            if s.orelse:
                self.at(self._else_pos(s), "'while ... else' is not supported")
                self.body(s.orelse)
        elif t is pyast.If:
            self.expr(s.test)
            self.body(s.body)
            self.body(s.orelse)
        elif t is pyast.Return:
            if s.value is not None:
                self.expr(s.value)
        elif t is pyast.Assert:
            self.expr(s.test)
            if s.msg is not None:
                self.expr(s.msg)
        elif t is pyast.Expr:
            self.expr(s.value)
        elif t in (pyast.Pass, pyast.Break, pyast.Continue):
            pass
        else:
            self.node(s, f"'{t.__name__}' statements are not supported")

    def _else_pos(self, s) -> tuple[int, int]:
        ctx = self.ctx
        return self._search(ctx.pyend(s.body[-1]), ctx.pypos(s.orelse[0]),
                            re.compile(r"\belse\b"), ctx.pypos(s.orelse[0]))

    def target(self, t) -> None:
        if isinstance(t, pyast.Name):
            return
        if isinstance(t, pyast.Subscript):
            self.expr(t)
        elif isinstance(t, (pyast.Tuple, pyast.List)):
            for e in t.elts:
                if isinstance(e, pyast.Starred):
                    self.node(e, "starred assignment targets (*x) are not supported")
                else:
                    self.target(e)
        else:
            self.target_other(t)

    def target_other(self, t) -> None:
        if isinstance(t, pyast.Attribute):
            self.node(t, "assignment to an attribute (a.x = ...) is not supported")
        else:
            self.node(t, "this assignment target is not supported")

    # ---- expressions
    def expr(self, e) -> None:
        t = type(e)
        if t in _NODE_MESSAGES:
            self.node(e, _NODE_MESSAGES[t])
            return
        if t is pyast.Constant:
            v = e.value
            if v is None:
                self.node(e, "None is not supported")
            elif v is Ellipsis:
                self.node(e, "'...' is not supported")
            elif isinstance(v, complex):
                self.node(e, "complex numbers are not supported")
            elif isinstance(v, bytes):
                self.node(e, "bytes literals are not supported")
        elif t is pyast.Name:
            pass
        elif t is pyast.Attribute:
            self.expr(e.value)
        elif t is pyast.Subscript:
            self.expr(e.value)
            sl = e.slice
            for x in (sl.elts if isinstance(sl, pyast.Tuple) else [sl]):
                self.expr(x)
        elif t is pyast.Slice:
            for x in (e.lower, e.upper, e.step):
                if x is not None:
                    self.expr(x)
        elif t is pyast.BinOp:
            op = type(e.op)
            if op in _BITWISE:
                self.at(self._search(self.ctx.pyend(e.left), self.ctx.pypos(e.right),
                                     _BITWISE_RE, self.ctx.pypos(e)),
                        f"bitwise operator '{_BITWISE[op]}' is not supported")
            self.expr(e.left)
            self.expr(e.right)
        elif t is pyast.UnaryOp:
            if isinstance(e.op, pyast.Invert):
                self.node(e, "bitwise operator '~' is not supported")
            self.expr(e.operand)
        elif t is pyast.BoolOp:
            for x in e.values:
                self.expr(x)
        elif t is pyast.IfExp:
            self.expr(e.body)
            self.expr(e.test)
            self.expr(e.orelse)
        elif t is pyast.Compare:
            prev = e.left
            for op, right in zip(e.ops, e.comparators):
                if type(op) in _BAD_CMP:
                    name = _BAD_CMP[type(op)]
                    self.at(self._search(self.ctx.pyend(prev), self.ctx.pypos(right), _CMP_RE,
                                         self.ctx.pypos(e)),
                            f"'{name}' comparisons are not supported")
                prev = right
            self.expr(e.left)
            for x in e.comparators:
                self.expr(x)
        elif t is pyast.Call:
            self.expr(e.func)
            for x in e.args:
                if isinstance(x, pyast.Starred):
                    self.node(x, "starred arguments (*args) are not supported")
                else:
                    self.expr(x)
            for k in e.keywords:
                if k.arg is None:
                    self.node(k, "keyword-argument unpacking (**kwargs) is not supported")
                self.expr(k.value)
        elif t in (pyast.Tuple, pyast.List):
            for x in e.elts:
                self.expr(x)
        else:
            self.node(e, f"'{t.__name__}' expressions are not supported")


def _is_dotted(e) -> bool:
    while isinstance(e, pyast.Attribute):
        e = e.value
    return isinstance(e, pyast.Name)


# --------------------------------------------------------------------- Lark tree -> AST
class _Params(list):
    pass


class _Returns:
    def __init__(self, expr):
        self.expr = expr


class _Elif:
    def __init__(self, loc, test, body):
        self.loc, self.test, self.body = loc, test, body


class _Else:
    def __init__(self, body):
        self.body = body


class _SlicePart:
    def __init__(self, kind, value):
        self.kind, self.value = kind, value


def _is_target(e) -> bool:
    if isinstance(e, (A.Name, A.Subscript)):
        return True
    if isinstance(e, A.Tuple):
        return all(_is_target(x) for x in e.elts)
    return False


def _as_target(e):
    """``[a, b] = ...`` is read as ``(a, b) = ...``."""
    if isinstance(e, A.List):
        return A.Tuple(e.loc, [_as_target(x) for x in e.elts])
    if isinstance(e, A.Tuple):
        return A.Tuple(e.loc, [_as_target(x) for x in e.elts])
    return e


@v_args(meta=True)
class _Builder(Transformer):
    """Builds dplang AST nodes.  Python has already accepted the text and ``_Checker``
    has found nothing unsupported, so the checks here are only a backstop."""

    def __init__(self, ctx: _Ctx):
        super().__init__(visit_tokens=False)
        self.ctx = ctx

    def _unsupported(self, msg: str, loc: Loc):
        raise DPUnsupportedError(msg, loc)

    # ---- atoms
    def name(self, meta, ch):
        return A.Name(self.ctx.tok(ch[0]), str(ch[0]))

    def number(self, meta, ch):
        tok = ch[0]
        value = pyast.literal_eval(str(tok))
        if not isinstance(value, (int, float)):
            self._unsupported("this number literal is not supported", self.ctx.tok(tok))
        return A.Num(self.ctx.tok(tok), value)

    def string(self, meta, ch):
        return ch[0]

    def strings(self, meta, ch):
        parts = []
        for tok in ch:
            s = str(tok)
            prefix = s[: len(s) - len(s.lstrip("rRuUbBfF"))].lower()
            if "f" in prefix:
                self._unsupported("f-strings are not supported", self.ctx.tok(tok))
            if "b" in prefix:
                self._unsupported("bytes literals are not supported", self.ctx.tok(tok))
            parts.append(pyast.literal_eval(s))
        return A.Str(self.ctx.tok(ch[0]), "".join(parts))

    def true(self, meta, ch):
        return A.Bool(self.ctx.meta(meta), True)

    def false(self, meta, ch):
        return A.Bool(self.ctx.meta(meta), False)

    def empty_tuple(self, meta, ch):
        return A.Tuple(self.ctx.meta(meta), [])

    def paren_tuple(self, meta, ch):
        return A.Tuple(self.ctx.meta(meta), list(ch))

    def bare_tuple(self, meta, ch):
        return A.Tuple(self.ctx.meta(meta), list(ch))

    def empty_list(self, meta, ch):
        return A.List(self.ctx.meta(meta), [])

    def list(self, meta, ch):
        return A.List(self.ctx.meta(meta), list(ch))

    # ---- operators
    def ifexp(self, meta, ch):
        body, test, orelse = ch
        return A.IfExp(self.ctx.meta(meta), test, body, orelse)

    def or_test(self, meta, ch):
        return A.BoolOp(self.ctx.meta(meta), "or", list(ch))

    def and_test(self, meta, ch):
        return A.BoolOp(self.ctx.meta(meta), "and", list(ch))

    def not_op(self, meta, ch):
        return A.UnaryOp(self.ctx.meta(meta), "not", ch[0])

    def comparison(self, meta, ch):
        return A.Compare(self.ctx.meta(meta), ch[0], [str(t) for t in ch[1::2]], list(ch[2::2]))

    def _fold(self, meta, ch):
        # a - b - c -> (a - b) - c; every node starts where the whole chain starts
        loc = self.ctx.meta(meta)
        left = ch[0]
        for i in range(1, len(ch), 2):
            left = A.BinOp(loc, str(ch[i]), left, ch[i + 1])
        return left

    def arith_expr(self, meta, ch):
        return self._fold(meta, ch)

    def term(self, meta, ch):
        return self._fold(meta, ch)

    def factor(self, meta, ch):
        return A.UnaryOp(self.ctx.tok(ch[0]), str(ch[0]), ch[1])

    def power(self, meta, ch):
        return A.BinOp(self.ctx.meta(meta), "**", ch[0], ch[1])

    # ---- postfix
    def call(self, meta, ch):
        func = ch[0]
        args, kws = [], []
        for a in (ch[1] if len(ch) > 1 else []):
            if isinstance(a, A.Keyword):
                kws.append(a)
            else:
                if kws:
                    raise DPSyntaxError("positional argument follows keyword argument", a.loc)
                args.append(a)
        return A.Call(self.ctx.meta(meta), func, args, kws)

    def arguments(self, meta, ch):
        return list(ch)

    def argument(self, meta, ch):
        return ch[0]

    def kwarg(self, meta, ch):
        return A.Keyword(self.ctx.tok(ch[0]), str(ch[0]), ch[1])

    def getitem(self, meta, ch):
        return A.Subscript(self.ctx.meta(meta), ch[0], ch[1])

    def subscriptlist(self, meta, ch):
        return list(ch)

    def slice(self, meta, ch):
        parts = {p.kind: p.value for p in ch}
        return A.Slice(self.ctx.meta(meta), parts.get("lower"), parts.get("upper"), parts.get("step"))

    def slice_lower(self, meta, ch):
        return _SlicePart("lower", ch[0])

    def slice_upper(self, meta, ch):
        return _SlicePart("upper", ch[0])

    def slice_step(self, meta, ch):
        return _SlicePart("step", ch[0] if ch else None)

    def getattr(self, meta, ch):
        return A.Attribute(self.ctx.meta(meta), ch[0], str(ch[1]))

    # ---- simple statements
    def simple_stmt(self, meta, ch):
        return list(ch)

    def expr_stmt(self, meta, ch):
        return A.ExprStmt(self.ctx.meta(meta), ch[0])

    def annassign(self, meta, ch):
        target, ann, value = ch
        if not isinstance(target, A.Name):
            self._unsupported("only a plain name can be annotated (x: T = value)", target.loc)
        return A.Assign(self.ctx.meta(meta), [target], value, annotation=ann)

    def augassign_op(self, meta, ch):
        return str(ch[0])[:-1]

    def augassign(self, meta, ch):
        target, op, value = ch
        if not isinstance(target, (A.Name, A.Subscript)):
            self._unsupported("this augmented-assignment target is not supported", target.loc)
        return A.AugAssign(self.ctx.meta(meta), target, op, value)

    def assign(self, meta, ch):
        targets = [_as_target(t) for t in ch[:-1]]
        for t in targets:
            if not _is_target(t):
                self._unsupported("this assignment target is not supported", t.loc)
        return A.Assign(self.ctx.meta(meta), targets, ch[-1])

    def pass_stmt(self, meta, ch):
        return A.Pass(self.ctx.meta(meta))

    def break_stmt(self, meta, ch):
        return A.Break(self.ctx.meta(meta))

    def continue_stmt(self, meta, ch):
        return A.Continue(self.ctx.meta(meta))

    def return_stmt(self, meta, ch):
        return A.Return(self.ctx.meta(meta), ch[0] if ch else None)

    def assert_stmt(self, meta, ch):
        return A.Assert(self.ctx.meta(meta), ch[0], ch[1] if len(ch) > 1 else None)

    # ---- compound statements
    def suite(self, meta, ch):
        out = []
        for c in ch:
            for s in (c if isinstance(c, list) else [c]):
                if isinstance(s, A.FuncDef):
                    self._unsupported("nested function definitions are not supported", s.loc)
                if isinstance(s, A.ImportFrom):
                    self._unsupported("imports are only allowed at module level", s.loc)
                out.append(s)
        return out

    def elif_clause(self, meta, ch):
        return _Elif(self.ctx.meta(meta), ch[0], ch[1])

    def else_clause(self, meta, ch):
        return _Else(ch[0])

    def if_stmt(self, meta, ch):
        test, body, rest = ch[0], ch[1], ch[2:]
        orelse: list = []
        if rest and isinstance(rest[-1], _Else):
            orelse = rest[-1].body
            rest = rest[:-1]
        for el in reversed(rest):
            orelse = [A.If(el.loc, el.test, el.body, orelse)]
        return A.If(self.ctx.meta(meta), test, body, orelse)

    def while_stmt(self, meta, ch):
        return A.While(self.ctx.meta(meta), ch[0], ch[1])

    def for_stmt(self, meta, ch):
        target, it, body = ch
        if not isinstance(target, A.Name):
            self._unsupported("a for-loop target must be a single name", target.loc)
        return A.For(self.ctx.meta(meta), target.id, target.loc, it, body)

    # ---- functions
    def param(self, meta, ch):
        return A.Param(self.ctx.tok(ch[0]), str(ch[0]), ch[1] if len(ch) > 1 else None)

    def parameters(self, meta, ch):
        return _Params(ch)

    def return_annot(self, meta, ch):
        return _Returns(ch[0])

    def funcdef(self, meta, ch):
        name = str(ch[0])
        params: list = []
        returns = None
        for c in ch[1:-1]:
            if isinstance(c, _Params):
                params = list(c)
            elif isinstance(c, _Returns):
                returns = c.expr
        seen = set()
        for p in params:
            if p.name in seen:
                raise DPSyntaxError(f"duplicate parameter '{p.name}'", p.loc)
            seen.add(p.name)
        return A.FuncDef(self.ctx.meta(meta), name, params, returns, ch[-1])

    def decorator(self, meta, ch):
        e = ch[0]
        fn = e.func if isinstance(e, A.Call) else e
        d = fn
        while isinstance(d, A.Attribute):
            d = d.value
        if not isinstance(d, A.Name):
            self._unsupported("a decorator must be a name or a call such as @smooth(entropy, gamma=g)", e.loc)
        return A.Decorator(self.ctx.meta(meta), e)

    def decorated(self, meta, ch):
        f = ch[-1]
        f.decorators = list(ch[:-1])
        return f

    # ---- imports
    def dotted_name(self, meta, ch):
        return ".".join(str(t) for t in ch)

    def import_name(self, meta, ch):
        return (str(ch[0]), str(ch[1]) if len(ch) > 1 else None, self.ctx.tok(ch[0]))

    def import_names(self, meta, ch):
        return list(ch)

    def import_from(self, meta, ch):
        return A.ImportFrom(self.ctx.meta(meta), ch[0], ch[1])

    def file_input(self, meta, ch):
        out = []
        for c in ch:
            out.extend(c if isinstance(c, list) else [c])
        return out


# --------------------------------------------------------------------- errors
def _lark_message(err: UnexpectedInput) -> str:
    if isinstance(err, UnexpectedCharacters):
        return f"unexpected character {err.char!r}"
    if isinstance(err, UnexpectedToken):
        tok = err.token
        expected = set(getattr(err, "expected", ()) or ())
        if "_INDENT" in expected and tok.type != "_INDENT":
            return "expected an indented block"
        if tok.type == "$END":
            return "unexpected end of input"
        if tok.type == "_INDENT":
            return "unexpected indent"
        if tok.type == "_DEDENT":
            return "unexpected dedent"
        if tok.type == "_NEWLINE":
            return "unexpected end of line"
        text = str(tok.value)
        if tok.type in ("STRING", "LONG_STRING"):
            return "unexpected string literal"
        if len(text) > 30:
            text = text[:27] + "..."
        return f"unexpected token '{text}'"
    return "invalid syntax"


def _lark_position(err: UnexpectedInput) -> tuple[int, int]:
    if isinstance(err, UnexpectedToken) and err.token.type == "$END":
        tok = err.token
        if getattr(tok, "end_line", None) is not None:
            return tok.end_line, tok.end_column
    return err.line, err.column


def _syntax_error(ctx: _Ctx, pyerr: SyntaxError) -> DPSyntaxError:
    """Turn Python's SyntaxError into a located DPSyntaxError, preferring Lark's position."""
    py_msg = pyerr.msg or "invalid syntax"
    lo = ctx.line_offset
    if lo:
        py_msg = re.sub(r"(on|at) line (\d+)", lambda m: f"{m.group(1)} line {int(m.group(2)) + lo}", py_msg)
    py_pos = None
    if pyerr.lineno:
        line = pyerr.lineno
        col = pyerr.offset or 1
        # an indentation error points at the line's first character (Python puts
        # "unindent does not match" at the end of the line)
        if isinstance(pyerr, IndentationError) and py_msg.startswith(
                ("unexpected indent", "unindent does not match")) and 1 <= line <= len(ctx.lines):
            s = ctx.lines[line - 1]
            col = len(s) - len(s.lstrip()) + 1
        py_pos = (line, max(col, 1))

    lark_err: Optional[UnexpectedInput] = None
    try:
        _lark_parse(ctx.text)
    except UnexpectedInput as e:
        lark_err = e
    except LarkError:
        pass
    except RecursionError:
        pass

    prefer_python = (
        lark_err is None
        or (py_pos is not None and (
            "was never closed" in py_msg or py_msg.startswith("unterminated")
            or isinstance(pyerr, IndentationError)
            # Lark stopped earlier, at valid Python it does not know (e.g. a lambda):
            # the real syntax error is where Python says.
            or _lark_position(lark_err) < py_pos)))
    if prefer_python and py_pos is not None:
        return DPSyntaxError(py_msg, ctx.loc(*py_pos))
    if lark_err is not None:
        msg = _lark_message(lark_err)
        note = None
        lpos = _lark_position(lark_err)
        if lpos == py_pos and py_msg.startswith("expected") and not msg.startswith("expected"):
            # e.g. "expected ':'" says more than "unexpected end of line"
            msg, py_msg = py_msg, msg
        elif py_msg != "invalid syntax" and py_msg.split(".")[0] not in msg:
            note = "Python says: " + py_msg
        return DPSyntaxError(msg, ctx.loc(*lpos), note=note)
    return DPSyntaxError(py_msg, ctx.loc(1, 1))


# --------------------------------------------------------------------- driver
def _parse_items(ctx: _Ctx, mode: str) -> list:
    text = ctx.text
    if "\0" in text:
        i = text.index("\0")
        line = text.count("\n", 0, i) + 1
        col = i - (text.rfind("\n", 0, i) + 1) + 1
        raise DPSyntaxError("source contains a null byte", ctx.loc(line, col))
    try:
        tree = pyast.parse(text, ctx.filename)
    except SyntaxError as e:
        raise _syntax_error(ctx, e) from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise DPSyntaxError(f"cannot parse: {e}", ctx.loc(1, 1)) from None

    checker = _Checker(ctx)
    checker.module(tree, mode)
    first = checker.first()
    if first is not None:
        raise DPUnsupportedError(first[3], ctx.loc(first[0], first[1]))

    try:
        lt = _lark_parse(text)
    except UnexpectedInput as e:
        # Python accepted the text and it uses nothing unsupported: a gap in the grammar
        raise DPSyntaxError(_lark_message(e) + " (not in the dplang grammar)",
                            ctx.loc(*_lark_position(e))) from None
    except _IndentMismatch as e:
        raise DPSyntaxError("unindent does not match any outer indentation level",
                            ctx.loc(e.line, e.column)) from None
    except LarkError as e:
        raise DPSyntaxError(f"cannot parse: {e}", ctx.loc(1, 1)) from None
    try:
        return _Builder(ctx).transform(lt)
    except VisitError as e:
        if isinstance(e.orig_exc, DPError):
            raise e.orig_exc from None
        raise
    except RecursionError:
        raise DPSyntaxError("expression too deeply nested", ctx.loc(1, 1)) from None


def parse_module(source: str, filename: str) -> A.Module:
    """Parse a ``.dp`` module.  Raises DPSyntaxError / DPUnsupportedError, located."""
    ctx = _Ctx(filename, _normalize(source))
    imports: list[A.ImportFrom] = []
    consts: list[A.ConstDef] = []
    funcs: list[A.FuncDef] = []
    for item in _parse_items(ctx, "module"):
        if isinstance(item, A.ImportFrom):
            imports.append(item)
        elif isinstance(item, A.FuncDef):
            funcs.append(item)
        elif (isinstance(item, A.Assign) and item.annotation is None and len(item.targets) == 1
              and isinstance(item.targets[0], A.Name)):
            consts.append(A.ConstDef(item.loc, item.targets[0].id, item.value))
        elif isinstance(item, A.ExprStmt) and isinstance(item.value, A.Str):
            pass  # docstring
        else:
            raise DPUnsupportedError(_MODULE_LEVEL, item.loc)
    return A.Module(ctx.loc(1, 1), filename, source, imports, consts, funcs)


def parse_function(source: str, filename: str, line_offset: int = 0, col_offset: int = 0,
                   file_source: Optional[str] = None) -> A.FuncDef:
    """Parse the source of one Python ``def`` (a ``@dplang.jit`` function).

    ``source`` is the dedented text of the function, decorator lines included, as
    ``inspect.getsource`` gives it.  Locations are ``line_offset + line`` and
    ``col_offset + col`` so that they point into the user's file; ``file_source`` (the
    whole file's text) is used to show the source line under errors.
    """
    ctx = _Ctx(filename, _normalize(source), line_offset, col_offset, file_source)
    items = _parse_items(ctx, "function")
    funcs = [x for x in items if isinstance(x, A.FuncDef)]
    for item in items:
        if not isinstance(item, A.FuncDef):
            raise DPUnsupportedError("expected a single function definition", item.loc)
    if not funcs:
        raise DPSyntaxError("expected a function definition", ctx.loc(1, 1))
    if len(funcs) > 1:
        raise DPUnsupportedError("expected a single function definition", funcs[1].loc)
    return funcs[0]
