"""Print an AST back as source: the ``parsed`` stage of ``f.ir("parsed")``.

It shows the program exactly as the parser understood it (explicit parentheses around
every compound subexpression, ``elif`` as nested ``if``), which makes precedence
questions easy to answer.
"""
from __future__ import annotations

from dplang.dsl import ast as A


def expr(e: A.Expr, top=True) -> str:
    def sub(x):
        return expr(x, top=False)
    if isinstance(e, A.Name):
        return e.id
    if isinstance(e, A.Num):
        return repr(e.value)
    if isinstance(e, A.Str):
        return repr(e.value)
    if isinstance(e, A.Bool):
        return "True" if e.value else "False"
    if isinstance(e, A.BinOp):
        s = f"{sub(e.left)} {e.op} {sub(e.right)}"
    elif isinstance(e, A.UnaryOp):
        s = f"not {sub(e.operand)}" if e.op == "not" else f"{e.op}{sub(e.operand)}"
    elif isinstance(e, A.Compare):
        s = sub(e.left) + "".join(f" {op} {sub(c)}" for op, c in zip(e.ops, e.comparators))
    elif isinstance(e, A.BoolOp):
        s = f" {e.op} ".join(sub(v) for v in e.values)
    elif isinstance(e, A.IfExp):
        s = f"{sub(e.body)} if {sub(e.test)} else {sub(e.orelse)}"
    elif isinstance(e, A.Call):
        parts = [expr(a) for a in e.args] + [f"{k.name}={expr(k.value)}" for k in e.keywords]
        return f"{sub(e.func)}({', '.join(parts)})"
    elif isinstance(e, A.Slice):
        s = (expr(e.lower) if e.lower else "") + ":" + (expr(e.upper) if e.upper else "")
        if e.step is not None:
            s += ":" + expr(e.step)
        return s
    elif isinstance(e, A.Subscript):
        return f"{sub(e.value)}[{', '.join(expr(i) for i in e.index)}]"
    elif isinstance(e, A.Attribute):
        return f"{sub(e.value)}.{e.attr}"
    elif isinstance(e, A.Tuple):
        inner = ", ".join(expr(x) for x in e.elts)
        return f"({inner}{',' if len(e.elts) == 1 else ''})"
    elif isinstance(e, A.List):
        return "[" + ", ".join(expr(x) for x in e.elts) + "]"
    else:
        return f"<{type(e).__name__}>"
    return s if top else f"({s})"


def stmts(body, indent: int) -> list:
    pad = "    " * indent
    out = []
    for s in body:
        if isinstance(s, A.Assign):
            ann = f": {expr(s.annotation)}" if s.annotation is not None else ""
            out.append(pad + " = ".join(expr(t) for t in s.targets) + ann + " = " +
                       expr(s.value) if not ann else
                       pad + expr(s.targets[0]) + ann + " = " + expr(s.value))
        elif isinstance(s, A.AugAssign):
            out.append(f"{pad}{expr(s.target)} {s.op}= {expr(s.value)}")
        elif isinstance(s, A.If):
            out.append(f"{pad}if {expr(s.test)}:")
            out += stmts(s.body, indent + 1) or [pad + "    pass"]
            if s.orelse:
                out.append(f"{pad}else:")
                out += stmts(s.orelse, indent + 1)
        elif isinstance(s, A.For):
            out.append(f"{pad}for {s.var} in {expr(s.iter)}:")
            out += stmts(s.body, indent + 1) or [pad + "    pass"]
        elif isinstance(s, A.While):
            out.append(f"{pad}while {expr(s.test)}:")
            out += stmts(s.body, indent + 1) or [pad + "    pass"]
        elif isinstance(s, A.Return):
            v = s.value
            if isinstance(v, A.Tuple):
                out.append(f"{pad}return {', '.join(expr(x) for x in v.elts)}")
            else:
                out.append(f"{pad}return" + (f" {expr(v)}" if v is not None else ""))
        elif isinstance(s, A.Assert):
            out.append(f"{pad}assert {expr(s.test)}" + (f", {expr(s.msg)}" if s.msg else ""))
        elif isinstance(s, A.Break):
            out.append(pad + "break")
        elif isinstance(s, A.Continue):
            out.append(pad + "continue")
        elif isinstance(s, A.Pass):
            out.append(pad + "pass")
        elif isinstance(s, A.ExprStmt):
            out.append(pad + expr(s.value))
    return out


def unparse_function(f: A.FuncDef) -> str:
    lines = [f"@{expr(d.expr)}" for d in f.decorators]
    params = ", ".join(p.name + (f": {expr(p.annotation)}" if p.annotation is not None else "")
                       for p in f.params)
    ret = f" -> {expr(f.returns)}" if f.returns is not None else ""
    lines.append(f"def {f.name}({params}){ret}:")
    lines += stmts(f.body, 1) or ["    pass"]
    return "\n".join(lines) + "\n"
