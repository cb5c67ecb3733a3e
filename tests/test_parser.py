"""Tests of the front end (dsl/parser.py, dsl/grammar.lark)."""
from __future__ import annotations

import ast as pyast
import dataclasses

import pytest

from dplang.dsl import ast as A
from dplang.dsl.parser import parse_function, parse_module
from dplang.errors import DPSyntaxError, DPUnsupportedError, Loc


# ----------------------------------------------------------------------------- helpers
def dump(node):
    """Our AST as nested tuples: (Kind, (line, col), fields...)."""
    if isinstance(node, list):
        return [dump(x) for x in node]
    if isinstance(node, tuple):
        return tuple(dump(x) for x in node)
    if isinstance(node, Loc):
        return (node.line, node.col)
    if dataclasses.is_dataclass(node):
        out = [type(node).__name__, (node.loc.line, node.loc.col)]
        for f in dataclasses.fields(node):
            if f.name != "loc":
                out.append(dump(getattr(node, f.name)))
        return tuple(out)
    return node


_PY_BIN = {pyast.Add: "+", pyast.Sub: "-", pyast.Mult: "*", pyast.Div: "/", pyast.FloorDiv: "//",
           pyast.Mod: "%", pyast.Pow: "**", pyast.MatMult: "@"}
_PY_CMP = {pyast.Lt: "<", pyast.LtE: "<=", pyast.Gt: ">", pyast.GtE: ">=", pyast.Eq: "==",
           pyast.NotEq: "!="}
_PY_UN = {pyast.USub: "-", pyast.UAdd: "+", pyast.Not: "not"}


def pos(n):
    return (n.lineno, n.col_offset + 1)


def pydump(n):
    """Python's AST of the same text, in the shape ``dump`` gives ours (ASCII sources)."""
    if n is None:
        return None
    if isinstance(n, list):
        return [pydump(x) for x in n]
    t = type(n)
    if t is pyast.Name:
        return ("Name", pos(n), n.id)
    if t is pyast.Constant:
        v = n.value
        kind = "Bool" if isinstance(v, bool) else "Str" if isinstance(v, str) else "Num"
        return (kind, pos(n), v)
    if t is pyast.BinOp:
        return ("BinOp", pos(n), _PY_BIN[type(n.op)], pydump(n.left), pydump(n.right))
    if t is pyast.UnaryOp:
        return ("UnaryOp", pos(n), _PY_UN[type(n.op)], pydump(n.operand))
    if t is pyast.Compare:
        return ("Compare", pos(n), pydump(n.left), [_PY_CMP[type(o)] for o in n.ops],
                pydump(n.comparators))
    if t is pyast.BoolOp:
        return ("BoolOp", pos(n), "and" if isinstance(n.op, pyast.And) else "or", pydump(n.values))
    if t is pyast.IfExp:
        return ("IfExp", pos(n), pydump(n.test), pydump(n.body), pydump(n.orelse))
    if t is pyast.Call:
        return ("Call", pos(n), pydump(n.func), pydump(n.args),
                [("Keyword", pos(k), k.arg, pydump(k.value)) for k in n.keywords])
    if t is pyast.Slice:
        return ("Slice", pos(n), pydump(n.lower), pydump(n.upper), pydump(n.step))
    if t is pyast.Subscript:
        sl = n.slice
        idx = sl.elts if isinstance(sl, pyast.Tuple) else [sl]
        return ("Subscript", pos(n), pydump(n.value), pydump(idx))
    if t is pyast.Attribute:
        return ("Attribute", pos(n), pydump(n.value), n.attr)
    if t is pyast.Tuple:
        return ("Tuple", pos(n), pydump(n.elts))
    if t is pyast.List:
        return ("List", pos(n), pydump(n.elts))
    # statements
    if t is pyast.Assign:
        return ("Assign", pos(n), pydump(n.targets), pydump(n.value), None)
    if t is pyast.AnnAssign:
        return ("Assign", pos(n), [pydump(n.target)], pydump(n.value), pydump(n.annotation))
    if t is pyast.AugAssign:
        return ("AugAssign", pos(n), pydump(n.target), _PY_BIN[type(n.op)], pydump(n.value))
    if t is pyast.If:
        return ("If", pos(n), pydump(n.test), pydump(n.body), pydump(n.orelse))
    if t is pyast.For:
        return ("For", pos(n), n.target.id, pos(n.target), pydump(n.iter), pydump(n.body))
    if t is pyast.While:
        return ("While", pos(n), pydump(n.test), pydump(n.body))
    if t in (pyast.Break, pyast.Continue, pyast.Pass):
        return (t.__name__, pos(n))
    if t is pyast.Return:
        return ("Return", pos(n), pydump(n.value))
    if t is pyast.Assert:
        return ("Assert", pos(n), pydump(n.test), pydump(n.msg))
    if t is pyast.Expr:
        return ("ExprStmt", pos(n), pydump(n.value))
    raise AssertionError(f"unexpected Python node {t.__name__}")


def py_funcs(source):
    return [s for s in pyast.parse(source).body if isinstance(s, pyast.FunctionDef)]


def assert_same_as_python(ours: A.FuncDef, py: pyast.FunctionDef):
    assert ours.name == py.name
    assert (ours.loc.line, ours.loc.col) == pos(py)
    assert [(p.name, (p.loc.line, p.loc.col), dump(p.annotation)) for p in ours.params] == \
        [(a.arg, pos(a), pydump(a.annotation)) for a in py.args.args]
    assert dump(ours.returns) == pydump(py.returns)
    assert [dump(d.expr) for d in ours.decorators] == [pydump(d) for d in py.decorator_list]
    for mine, theirs in zip(ours.body, py.body):
        assert dump(mine) == pydump(theirs)
    assert len(ours.body) == len(py.body)


def expr_of(src: str) -> A.Expr:
    """Parse one expression (as the value of a constant)."""
    mod = parse_module(f"X = {src}\n", "e.dp")
    return mod.consts[0].value


# ----------------------------------------------------------------------------- a full module
MODULE = '''\
"""A module using every construct of SPEC section 1."""
from std.align import soft_dtw, helper as h
from helpers import (a1,
                     a2)   # implicit continuation

K = 3
EPS = 1e-3 * 2.5
BIG = 1_000
HALF = .5
LABEL = 'single' "implicit"


def dtw(D: f64[n, m]) -> f64:
    """Hard DTW."""
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

@smooth(entropy, gamma=gamma)
def soft_dtw(D: f64[n, m], gamma: f64) -> f64:
    return dtw(D)


@argmin(obj, solver="cg", tol=1e-10)
@dp.jit
def solve_it(theta: f64[k], k: i64, flag: bool) -> (f64, f64[k]):
    x: f64[k] = zeros(k)
    a = b = c = 0
    a, b = f(x)
    (c, d) = b, a
    x[i, :] += 1.0
    x[:, j] -= 2
    x *= 3; x /= 4
    x //= 2
    x %= 5
    x **= 2
    x @= y
    count = 0
    while count < 10 and not done or flag:
        count += 1
        if count == 3:
            continue
        elif count >= 8:
            break
        elif count != 5:
            pass
        else:
            count = count
    assert 0 <= i < n
    assert x > 0, "x must be positive"
    y = a if c else b
    z = -x ** 2 + +y * (a - b) / c // d % e @ f
    w = (not a) == b
    v = A.T @ A.shape[0] + np.linalg.solve(A, b)
    u = v[1:n] + v[::-1] + v[-1] + v[:] + v[1:] + v[:n:2]
    t = [a, b, c]
    s = ()
    r = (a,)
    q = \\
        1 + (2 +
             3)
    print("hello", x, sep='')
    if flag: return
    return x
    return a, b
'''


@pytest.fixture(scope="module")
def module():
    return parse_module(MODULE, "all.dp")


def test_module_structure(module):
    assert module.filename == "all.dp"
    assert module.source == MODULE
    assert [(i.module, [(n, a) for n, a, _ in i.names]) for i in module.imports] == [
        ("std.align", [("soft_dtw", None), ("helper", "h")]),
        ("helpers", [("a1", None), ("a2", None)]),
    ]
    imp = module.imports[0]
    assert (imp.loc.line, imp.loc.col) == (2, 1)
    assert [(loc.line, loc.col) for _, _, loc in imp.names] == [(2, 23), (2, 33)]
    consts = {c.name: c.value for c in module.consts}
    assert list(consts) == ["K", "EPS", "BIG", "HALF", "LABEL"]
    assert consts["K"] == A.Num(consts["K"].loc, 3) and type(consts["K"].value) is int
    assert isinstance(consts["EPS"], A.BinOp) and consts["EPS"].left.value == 1e-3
    assert consts["BIG"].value == 1000 and consts["HALF"].value == 0.5
    assert consts["LABEL"].value == "singleimplicit"
    assert [f.name for f in module.funcs] == ["dtw", "soft_dtw", "solve_it"]


def test_module_matches_python_ast(module):
    """Structure, operators, precedence and every location agree with Python's parser."""
    for ours, py in zip(module.funcs, py_funcs(MODULE), strict=True):
        assert_same_as_python(ours, py)


def test_dtw_shapes(module):
    dtw = module.funcs[0]
    assert (dtw.loc.line, dtw.loc.col) == (13, 1)
    (D,) = dtw.params
    assert D.name == "D" and (D.loc.line, D.loc.col) == (13, 9)
    assert isinstance(D.annotation, A.Subscript) and D.annotation.value.id == "f64"
    assert [x.id for x in D.annotation.index] == ["n", "m"]
    assert isinstance(dtw.returns, A.Name) and dtw.returns.id == "f64"
    doc, r_init, r_write, loop, ret = dtw.body
    assert isinstance(doc, A.ExprStmt) and doc.value.value == "Hard DTW."
    assert isinstance(r_write.targets[0], A.Subscript) and len(r_write.targets[0].index) == 2
    assert isinstance(loop, A.For) and loop.var == "i" and (loop.var_loc.line, loop.var_loc.col) == (17, 9)
    assert isinstance(loop.iter, A.Call) and loop.iter.func.id == "range"
    inner = loop.body[0]
    assert isinstance(inner, A.For) and inner.var == "j"
    assert isinstance(ret, A.Return) and isinstance(ret.value, A.Subscript)
    # the caret display of a location shows its line
    assert r_init.loc.source_line == "    R = full((n + 1, m + 1), inf)"


def test_decorators(module):
    soft, solve = module.funcs[1], module.funcs[2]
    (d,) = soft.decorators
    assert (d.loc.line, d.loc.col) == (22, 1)
    assert isinstance(d.expr, A.Call) and d.expr.func.id == "smooth"
    assert [a.id for a in d.expr.args] == ["entropy"]
    assert [(k.name, k.value.id) for k in d.expr.keywords] == [("gamma", "gamma")]
    assert (soft.loc.line, soft.loc.col) == (23, 1)     # the `def`, as Python does
    d1, d2 = solve.decorators
    assert [(k.name, type(k.value).__name__) for k in d1.expr.keywords] == [("solver", "Str"), ("tol", "Num")]
    assert d1.expr.keywords[0].value.value == "cg" and d1.expr.keywords[1].value.value == 1e-10
    assert isinstance(d2.expr, A.Attribute) and d2.expr.attr == "jit" and d2.expr.value.id == "dp"
    assert isinstance(solve.returns, A.Tuple) and len(solve.returns.elts) == 2


def test_statement_shapes(module):
    body = module.funcs[2].body
    ann, chain, unpack, paren_unpack = body[0:4]
    assert ann.annotation is not None and isinstance(ann.targets[0], A.Name)
    assert [t.id for t in chain.targets] == ["a", "b", "c"]
    assert isinstance(unpack.targets[0], A.Tuple) and [t.id for t in unpack.targets[0].elts] == ["a", "b"]
    assert isinstance(paren_unpack.targets[0], A.Tuple) and isinstance(paren_unpack.value, A.Tuple)
    augs = [s for s in body if isinstance(s, A.AugAssign)]
    assert [s.op for s in augs] == ["+", "-", "*", "/", "//", "%", "**", "@"]
    sl = augs[0].target.index
    assert isinstance(sl[0], A.Name) and sl[1] == A.Slice(sl[1].loc, None, None, None)
    loop = next(s for s in body if isinstance(s, A.While))
    assert isinstance(loop.test, A.BoolOp) and loop.test.op == "or"
    assert isinstance(loop.test.values[0], A.BoolOp) and loop.test.values[0].op == "and"
    assert isinstance(loop.test.values[0].values[1], A.UnaryOp) and loop.test.values[0].values[1].op == "not"
    if_ = loop.body[1]
    assert isinstance(if_.body[0], A.Continue)
    elif1 = if_.orelse[0]
    assert isinstance(elif1, A.If) and len(if_.orelse) == 1 and (elif1.loc.line, elif1.loc.col) == (46, 9)
    elif2 = elif1.orelse[0]
    assert isinstance(elif2.body[0], A.Pass) and isinstance(elif2.orelse[0], A.Assign)
    asserts = [s for s in body if isinstance(s, A.Assert)]
    assert asserts[0].msg is None
    cmp = asserts[0].test
    assert isinstance(cmp, A.Compare) and cmp.ops == ["<=", "<"] and len(cmp.comparators) == 2
    assert isinstance(asserts[1].msg, A.Str)
    rets = [s for s in body if isinstance(s, A.Return)] + [body[-3].body[0]]
    assert isinstance(rets[-1].value, type(None))
    assert isinstance(rets[1].value, A.Tuple) and len(rets[1].value.elts) == 2


def test_expression_details(module):
    body = {s.targets[0].id: s.value for s in module.funcs[2].body
            if isinstance(s, A.Assign) and isinstance(s.targets[0], A.Name)}
    z = body["z"]        # -x ** 2 + ((+y * (a - b)) / c // d % e @ f)
    assert z.op == "+" and z.left == A.UnaryOp(z.left.loc, "-", z.left.operand)
    assert z.left.operand.op == "**"
    assert z.right.op == "@" and z.right.left.op == "%"
    v = body["v"]
    assert v.left.op == "@" and v.left.left == A.Attribute(v.left.left.loc, v.left.left.value, "T")
    shape0 = v.left.right
    assert isinstance(shape0, A.Subscript) and shape0.value.attr == "shape"
    solve = v.right
    assert isinstance(solve.func, A.Attribute) and solve.func.attr == "solve"
    assert solve.func.value.attr == "linalg" and solve.func.value.value.id == "np"
    u = body["u"]
    parts = []
    while isinstance(u, A.BinOp):
        parts.append(u.right)
        u = u.left
    parts.append(u)
    s1n, srev, sneg, sall, sfrom, sstep = [p.index[0] for p in reversed(parts)]
    assert s1n.lower.value == 1 and s1n.upper.id == "n" and s1n.step is None
    assert srev.lower is None and srev.upper is None and srev.step.op == "-"
    assert isinstance(sneg, A.UnaryOp) and sneg.operand.value == 1
    assert (sall.lower, sall.upper, sall.step) == (None, None, None)
    assert sfrom.lower.value == 1 and sfrom.upper is None
    assert sstep.lower is None and sstep.upper.id == "n" and sstep.step.value == 2
    assert isinstance(body["t"], A.List) and len(body["t"].elts) == 3
    assert body["s"] == A.Tuple(body["s"].loc, [])
    assert isinstance(body["r"], A.Tuple) and len(body["r"].elts) == 1
    assert body["q"].op == "+" and body["q"].right.op == "+"
    w = body["w"]
    assert isinstance(w, A.Compare) and w.left.op == "not"
    y = body["y"]
    assert isinstance(y, A.IfExp) and y.test.id == "c" and y.body.id == "a" and y.orelse.id == "b"
    call = next(s for s in module.funcs[2].body if isinstance(s, A.ExprStmt)).value
    assert call.func.id == "print" and len(call.args) == 2 and call.keywords[0].name == "sep"


@pytest.mark.parametrize("src,expected", [
    ("1", 1), ("2.5", 2.5), ("1e-3", 1e-3), (".5", 0.5), ("1_000", 1000), ("1.", 1.0),
    ("0", 0), ("0x10", 16), ("2E3", 2000.0),
])
def test_number_literals(src, expected):
    e = expr_of(src)
    assert isinstance(e, A.Num) and e.value == expected and type(e.value) is type(expected)


@pytest.mark.parametrize("src,expected", [
    ("'a'", "a"), ('"b"', "b"), ("'''c\nd'''", "c\nd"), ('"""e"""', "e"), ("r'\\n'", "\\n"),
    ("'x' 'y'", "xy"), ("'it\\'s'", "it's"), ("''", ""), ('""', ""), ("'a\\\\'", "a\\"),
    ("'a\\\nb'", "ab"), ("('x'\n 'y')", "xy"),
])
def test_string_literals(src, expected):
    e = expr_of(src)
    assert isinstance(e, A.Str) and e.value == expected


def test_constants_and_special_names():
    assert expr_of("True") == A.Bool(expr_of("True").loc, True)
    assert expr_of("False").value is False
    for n in ("inf", "nan", "pi", "e"):
        assert isinstance(expr_of(n), A.Name) and expr_of(n).id == n


def test_expression_precedence_against_python():
    exprs = [
        "a or b and not c", "not a == b", "a < b < c <= d", "a if b else c if d else e",
        "-a ** -b", "a - b - c", "a ** b ** c", "a / b * c // d % e @ f", "(a + b) * c",
        "f(a, b=1)[i, :].T.shape[0]", "a[1:n, ::2, -1]", "[a, (b, c), []]", "x[i,]",
        "(f)(x)", "g()(h)", "-(a)", "+a - -b", "a @ b.T", "np.linalg.solve(A, b)",
        "(a if b else c)", "a and (b or c)", "f(\n  a,\n  b,\n)",
    ]
    for src in exprs:
        text = f"X = {src}\n"
        ours = parse_module(text, "e.dp").consts[0]
        py = pyast.parse(text).body[0]
        assert dump(ours.value) == pydump(py.value), src


def test_subscript_forms():
    e = expr_of("x[i]")
    assert isinstance(e, A.Subscript) and len(e.index) == 1 and e.index[0].id == "i"
    e = expr_of("x[(i, j)]")
    assert len(e.index) == 1 and isinstance(e.index[0], A.Tuple)
    e = expr_of("x[i, j]")
    assert [n.id for n in e.index] == ["i", "j"]


def test_misc_statements():
    src = ("def f(x: f64, k: i64,) -> f64:\n"
           "    if x: return x\n"
           "    [a, b] = g(x)\n"
           "    a = 1; b = 2;\n"
           "    while True: pass\n"
           "    for i in range(0, k, -1): continue\n"
           "    y = f(\n"
           "        x,   # comment inside brackets\n"
           "\n"
           "        k)\n"
           "    # trailing comment\n"
           "    return y\n")
    f = parse_module(src, "m.dp").funcs[0]
    assert [p.name for p in f.params] == ["x", "k"]
    assert isinstance(f.body[0], A.If) and isinstance(f.body[0].body[0], A.Return)
    assert isinstance(f.body[1].targets[0], A.Tuple)          # [a, b] = ... read as a tuple
    assert isinstance(f.body[2], A.Assign) and isinstance(f.body[3], A.Assign)
    assert isinstance(f.body[4], A.While) and f.body[4].test.value is True
    assert isinstance(f.body[5], A.For) and isinstance(f.body[5].body[0], A.Continue)
    assert len(f.body) == 8 and isinstance(f.body[-1], A.Return)


def test_tabs_and_crlf():
    f = parse_module("def f(x):\r\n\tif x:\r\n\t\ty = 1\r\n\treturn x\r\n", "t.dp").funcs[0]
    assert isinstance(f.body[0], A.If) and (f.body[1].loc.line, f.body[1].loc.col) == (4, 2)
    assert f.body[1].loc.source_line == "\treturn x"


def test_empty_module_and_unannotated_params():
    m = parse_module("", "e.dp")
    assert m.imports == [] and m.consts == [] and m.funcs == []
    m = parse_module("# nothing here\n\n", "e.dp")
    assert m.funcs == []
    f = parse_module("def f(a, b):\n    return a\n", "e.dp").funcs[0]
    assert [(p.name, p.annotation) for p in f.params] == [("a", None), ("b", None)]
    assert f.returns is None and f.decorators == []


def test_non_ascii_columns():
    f = parse_module("def f(x):\n    é = x + 1  # é\n    return é\n", "u.dp").funcs[0]
    assert (f.body[0].value.loc.line, f.body[0].value.loc.col) == (2, 9)
    with pytest.raises(DPUnsupportedError) as ei:
        parse_module("def f(é):\n    return é + [i for i in é]\n", "u.dp")
    assert (ei.value.loc.line, ei.value.loc.col) == (2, 16)


# ----------------------------------------------------------------------------- parse_function
JIT_FILE = '''\
import numpy as np
import dplang as dp


class Holder:
    @dp.jit(backend="cpu")
    def f(x, n: i64):
        """doc"""
        n, m = x.shape
        y = np.zeros(n) + np.inf
        return y
'''


def test_parse_function_offsets():
    src = '@dp.jit(backend="cpu")\ndef f(x, n: i64):\n    """doc"""\n    n, m = x.shape\n' \
          '    y = np.zeros(n) + np.inf\n    return y\n'
    f = parse_function(src, "user.py", line_offset=5, col_offset=4, file_source=JIT_FILE)
    assert f.name == "f" and [p.name for p in f.params] == ["x", "n"]
    assert f.params[0].annotation is None and f.params[1].annotation.id == "i64"
    (d,) = f.decorators
    assert isinstance(d.expr, A.Call) and d.expr.func.attr == "jit"
    assert d.expr.keywords[0].name == "backend" and d.expr.keywords[0].value.value == "cpu"
    assert (d.loc.file, d.loc.line, d.loc.col) == ("user.py", 6, 5)
    assert (f.loc.line, f.loc.col) == (7, 5)
    unpack = f.body[1]
    assert isinstance(unpack.targets[0], A.Tuple) and unpack.value.attr == "shape"
    y = f.body[2]
    assert (y.loc.line, y.loc.col) == (10, 9)
    assert y.loc.source_line == "        y = np.zeros(n) + np.inf"
    assert y.value.right.attr == "inf"


def test_parse_function_errors_point_into_file():
    src = '@dp.jit\ndef f(x):\n    return [v for v in x]\n'
    with pytest.raises(DPUnsupportedError) as ei:
        parse_function(src, "user.py", line_offset=20, col_offset=4)
    err = ei.value
    assert (err.loc.line, err.loc.col) == (23, 16)
    text = str(err)
    assert text.startswith("user.py:23:16: list comprehensions are not supported")
    lines = text.splitlines()
    assert lines[1] == "    " + "        return [v for v in x]"      # re-indented by col_offset
    assert lines[2].index("^") == lines[1].index("[")
    with pytest.raises(DPSyntaxError) as ei:
        parse_function("def f(x):\nreturn x\n", "user.py", line_offset=9)
    assert (ei.value.loc.line, ei.value.loc.col) == (11, 1)
    assert "on line 10" in ei.value.message


def test_parse_function_requires_one_def():
    with pytest.raises(DPUnsupportedError) as ei:
        parse_function("def f(x):\n    pass\ndef g(x):\n    pass\n", "u.py")
    assert (ei.value.loc.line, ei.value.loc.col) == (3, 1)
    with pytest.raises(DPUnsupportedError):
        parse_function("f = 1\n", "u.py")
    with pytest.raises(DPSyntaxError):
        parse_function("# only a comment\n", "u.py")


def test_parse_function_matches_python():
    src = "@dp.jit\ndef g(a, b: f64[n]) -> f64:\n    s = 0.0\n    for i in range(len(a)):\n" \
          "        s += a[i] * b[i] if a[i] > 0 else -a[i]\n    return max(s, 0.0)\n"
    assert_same_as_python(parse_function(src, "u.py"), py_funcs(src)[0])


# ----------------------------------------------------------------------------- errors
S, U = DPSyntaxError, DPUnsupportedError
ERRORS = [
    # --- not Python at all
    ("def f(x):\n    return f(x))\n", S, 2, 16, "unexpected token ')'"),
    ("def f(x):\n    return x +\n", S, 2, 15, "unexpected end of line"),
    ("def f(x)\n    return x\n", S, 1, 9, "expected ':'"),
    ("def f(x):\nreturn x\n", S, 2, 1, "expected an indented block"),
    ("def f(x):\n", S, 1, 10, "expected an indented block"),
    ("def f(x):\n    y = 1\n      z = 2\n", S, 3, 7, "unexpected indent"),
    ("def f(x):\n    if x:\n        y = 1\n      z = 2\n", S, 4, 7, "unindent does not match"),
    ("  K = 1\n", S, 1, 3, "unexpected indent"),
    ("def f(x):\n    return x $ 2\n", S, 2, 14, "unexpected character '$'"),
    ("def f(x):\n    y = (x + 1\n    return y\n", S, 2, 9, "'(' was never closed"),
    ("def f(x):\n    y = 'abc\n", S, 2, 9, "unterminated string literal"),
    ("def f(x):\n    return x else\n", S, 2, 14, "unexpected token 'else'"),
    ("def f(x):\n    return (x,\n            y z)\n", S, 3, 15, "unexpected token 'z'"),
    ("def f(x):\n    print x\n", S, 2, 11, "unexpected token 'x'"),
    ("def f(x):\n\tif x:\n        pass\n\tpass\n", S, 3, 1, "inconsistent use of tabs"),
    ("def f(x):\n    return f(a=1, 2)\n", S, 2, 20, "positional argument follows keyword argument"),
    ("def f(x):\n    1 = x\n", S, 2, 5, "cannot assign to literal"),
    ("def f(x):\n    y = lambda z: z\n    return (\n", S, 3, 12, "'(' was never closed"),
    ("def f(x, x):\n    pass\n", S, 1, 10, "duplicate parameter 'x'"),
    # --- valid Python outside the language
    ("def f(x):\n    y = lambda z: z\n", U, 2, 9, "lambda"),
    ("class A:\n    pass\n", U, 1, 1, "class"),
    ("def f(x):\n    return [i for i in x]\n", U, 2, 12, "list comprehension"),
    ("def f(x):\n    return {i for i in x}\n", U, 2, 12, "set comprehension"),
    ("def f(x):\n    return {i: i for i in x}\n", U, 2, 12, "dict comprehension"),
    ("def f(x):\n    return sum(i for i in x)\n", U, 2, 15, "generator expression"),
    ("def f(x):\n    with open(x) as g:\n        pass\n", U, 2, 5, "'with'"),
    ("def f(x):\n    try:\n        pass\n    except E:\n        pass\n", U, 2, 5, "'try'"),
    ("def f(x):\n    raise ValueError(x)\n", U, 2, 5, "'raise'"),
    ("def f(x):\n    return f'{x}'\n", U, 2, 12, "f-string"),
    ("def f(x):\n    global y\n", U, 2, 5, "'global'"),
    ("def f(x):\n    nonlocal x\n", U, 2, 5, "'nonlocal'"),
    ("def f(x):\n    del x\n", U, 2, 5, "'del'"),
    ("def f(x):\n    yield x\n", U, 2, 5, "'yield'"),
    ("async def f(x):\n    return x\n", U, 1, 1, "async"),
    ("def f(x):\n    return await x\n", U, 2, 12, "await"),
    ("import numpy\n", U, 1, 1, "'import'"),
    ("def f(x):\n    from m import g\n", U, 2, 5, "module level"),
    ("def f(*args):\n    pass\n", U, 1, 7, "*args"),
    ("def f(x, **kw):\n    pass\n", U, 1, 10, "**kwargs"),
    ("def f(x, y=1):\n    pass\n", U, 1, 12, "default parameter values"),
    ("def f(x, *, y):\n    pass\n", U, 1, 13, "keyword-only"),
    ("def f(x):\n    return {1: 2}\n", U, 2, 12, "dict literal"),
    ("def f(x):\n    return {1, 2}\n", U, 2, 12, "set literal"),
    ("def f(x):\n    if (y := x):\n        pass\n", U, 2, 9, ":="),
    ("def f(x):\n    @dec\n    def g(y):\n        pass\n", U, 3, 5, "nested function"),
    ("def f(x):\n    def g(y):\n        pass\n", U, 2, 5, "nested function"),
    ("def f(x):\n    for a, b in x:\n        pass\n", U, 2, 9, "single name"),
    ("def f(x):\n    for a in x:\n        pass\n    else:\n        pass\n", U, 4, 5, "'for ... else'"),
    ("def f(x):\n    while x:\n        pass\n    else:\n        pass\n", U, 4, 5, "'while ... else'"),
    ("def f(x):\n    return x is y\n", U, 2, 14, "'is'"),
    ("def f(x):\n    return a is not b\n", U, 2, 14, "'is not'"),
    ("def f(x):\n    return 1 in x\n", U, 2, 14, "'in'"),
    ("def f(x):\n    return a not in x\n", U, 2, 14, "'not in'"),
    ("def f(x):\n    return (a\n            not in x)\n", U, 3, 13, "'not in'"),
    ("for i in range(3):\n    pass\n", U, 1, 1, "module level"),
    ("K = 1\nK += 1\n", U, 2, 1, "module level"),
    ("x: i64 = 3\n", U, 1, 1, "module level"),
    ("def f(x):\n    x: f64\n", U, 2, 5, "annotation without a value"),
    ("def f(x):\n    return x | 1\n", U, 2, 14, "bitwise operator '|'"),
    ("def f(x):\n    x <<= 1\n", U, 2, 7, "'<<='"),
    ("def f(x):\n    return ~x\n", U, 2, 12, "'~'"),
    ("def f(x):\n    return None\n", U, 2, 12, "None"),
    ("def f(x):\n    return 1j\n", U, 2, 12, "complex"),
    ("def f(x):\n    return b'x'\n", U, 2, 12, "bytes"),
    ("def f(x):\n    return ...\n", U, 2, 12, "'...'"),
    ("def f(x):\n    x.y = 1\n", U, 2, 5, "attribute"),
    ("def f(x):\n    a, *b = x\n", U, 2, 8, "starred"),
    ("def f(x):\n    return g(*x)\n", U, 2, 14, "starred"),
    ("def f(x):\n    return g(**x)\n", U, 2, 14, "**kwargs"),
    ("@a[0]\ndef f(x):\n    pass\n", U, 1, 2, "decorator"),
    ("def f(x, /, y):\n    pass\n", U, 1, 7, "positional-only"),
    ("def f(x):\n    match x:\n        case 1:\n            pass\n", U, 2, 5, "'match'"),
    ("from . import g\n", U, 1, 1, "relative import"),
    ("from m import *\n", U, 1, 15, "import *"),
    # the first unsupported construct in source order wins
    ("def f(x):\n    y = [i for i in x]\n    z = lambda: 1\n", U, 2, 9, "list comprehension"),
    ("def f(x, y=lambda: 1):\n    pass\n", U, 1, 12, "default parameter values"),
]


@pytest.mark.parametrize("src,cls,line,col,msg", ERRORS)
def test_errors(src, cls, line, col, msg):
    with pytest.raises(cls) as ei:
        parse_module(src, "bad.dp")
    err = ei.value
    assert type(err) is cls
    assert (err.loc.file, err.loc.line, err.loc.col) == ("bad.dp", line, col), str(err)
    assert msg in err.message
    text = str(err)
    assert text.startswith(f"bad.dp:{line}:{col}: ")
    lines = text.splitlines()
    src_line = src.split("\n")[line - 1]
    assert lines[1] == "    " + src_line
    caret = lines[2]
    assert caret.endswith("^") and len(caret) == 4 + col


def test_errors_never_leak_other_exceptions():
    junk = ["(", ")", "]", "def", "def f(", "@", "@\n", "if x:\n", "x = [1, 2", "\\", "'''",
            "def f(x):\n    return )", "\x00", "x = 1 +* 2", "def f(x):\n  \tpass\n", "\t\tK = 1",
            "from", "from x import", "from x import (a, b", "f(x) = 1", "def f(x): return (\n)",
            "a[1:2:3:4]", "\n\n\n   ", "x = 'a' 'b", "def f(x):\n    return x\n  y = 1\n"]
    for src in junk:
        try:
            parse_module(src, "j.dp")
        except (DPSyntaxError, DPUnsupportedError) as e:
            assert e.loc is not None and e.loc.line >= 1 and e.loc.col >= 1
            assert str(e).startswith("j.dp:")


def test_parser_is_built_once():
    from dplang.dsl import parser
    parse_module("K = 1\n", "a.dp")
    assert parser._lark() is parser._lark()
