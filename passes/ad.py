"""The "ad" stage: materialise the transformations a program applies to its own
functions (``grad(f)(x)``, ``jvp(f, wrt=1)(x, y, dy)``, ``grad(grad(f))(x)`` ...).

The front end lowers such a call to ``call`` with ``attrs["transform"]``, the chain of
transformations applied to the callee (innermost first).  This pass builds each derived
function once (forward mode: passes/ad_forward.py, reverse mode: passes/ad_reverse.py),
adds it to the program under a readable key (``grad_f_0``, ``jvp_grad_f_0_0`` ...) and
points the call at it.  The result is an ordinary program every backend runs.
"""
from __future__ import annotations

from dplang.ir.core import Program
from dplang.passes.simplify import clone_func, simplify_func


def derive(program: Program, key: str, transforms) -> str:
    """Add to ``program`` (in place) the function ``transforms`` applied to ``key``;
    returns its key."""
    from dplang.passes.ad_forward import ForwardAD
    from dplang.passes.ad_reverse import ReverseAD
    for kind, (idx, _as_tuple) in transforms:
        idx = tuple(idx)
        if kind == "jvp":
            name = f"jvp_{key}_" + "_".join(map(str, idx))
        else:
            name = f"{kind}_{key}_" + "_".join(map(str, idx))
        if name not in program.funcs:
            before = set(program.funcs)
            program.funcs[name] = None
            f = program.funcs[key]
            if kind == "jvp":
                new = ForwardAD(program).jvp_func(f, idx, name)
            else:
                new = ReverseAD(program).vjp_func(f, idx, kind, name)
            program.funcs[name] = new
            for k in set(program.funcs) - before:
                simplify_func(program.funcs[k])
        key = name
    return key


def run(program: Program) -> Program:
    calls = [(k, f) for k, f in program.funcs.items()
             if any(op.name == "call" and "transform" in op.attrs for op in f.walk())]
    if not calls:
        return program
    prog = Program(dict(program.funcs), dict(program.exports), program.filename)
    if hasattr(program, "loader"):
        prog.loader = program.loader
    for k, f in calls:
        prog.funcs[k] = clone_func(f)
    for k, _ in calls:
        for op in prog.funcs[k].walk():
            if op.name == "call" and "transform" in op.attrs:
                callee = prog.exports.get(op.attrs["callee"], op.attrs["callee"])
                op.attrs["callee"] = derive(prog, callee, op.attrs.pop("transform"))
    return prog
