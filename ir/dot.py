"""Graphviz text of the IR.

``func_to_dot(func)`` gives a ``digraph``: one box node per op labelled with its printed
line (the header line for ``for``/``while``/``if``; scalar constants are inlined as in
the text dump and get no node), one node per parameter, and def-use edges from the
defining op (a region argument is defined by the op holding the region) to each user.
The regions of an op are ``subgraph cluster_...`` boxes labelled ``body``, ``cond``,
``then``, ``else``; a region's terminator has a dashed edge back to its op.
``program_to_dot(program)`` puts every function in its own cluster of one digraph.
"""
from __future__ import annotations

from dplang.ir.core import Func, Op, Program, Region
from dplang.ir.printer import FuncPrinter, is_inlined_const, loc_comment


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_REGION_LABELS = {"for": ("body",), "while": ("cond", "body"), "if": ("then", "else")}


class _Dot:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.ids: dict = {}
        self.lines: list[str] = []
        self.edges: list[str] = []
        self.nclusters = 0

    def node_id(self, key) -> str:
        nid = self.ids.get(key)
        if nid is None:
            nid = f"{self.prefix}n{len(self.ids)}"
            self.ids[key] = nid
        return nid

    def func(self, func: Func, indent: str) -> None:
        pr = FuncPrinter(func)
        for p in func.params:
            self.lines.append(f"{indent}{self.node_id(p)} [label={_q(f'param {pr.name(p)}: {p.type}')}"
                              f", shape=ellipse];")
        self.region(func.body, pr, indent)
        # def-use edges
        for op in func.walk():
            if is_inlined_const(op):
                continue
            dst = self.node_id(op)
            seen = set()
            for v in op.operands:
                owner = v.owner
                if isinstance(owner, Op):
                    if is_inlined_const(owner):
                        continue
                    src = self.node_id(owner)
                elif isinstance(owner, Region) and isinstance(owner.parent, Op):
                    src = self.node_id(owner.parent)
                elif v in self.ids:
                    src = self.ids[v]
                else:
                    continue
                if (src, dst) in seen:
                    continue
                seen.add((src, dst))
                self.edges.append(f"{indent}{src} -> {dst};")
            if op.regions:
                for reg in op.regions:
                    t = reg.terminator
                    if t is not None:
                        self.edges.append(f"{indent}{self.node_id(t)} -> {dst} "
                                          f"[style=dashed, constraint=false];")

    def region(self, region: Region, pr: FuncPrinter, indent: str) -> None:
        for op in region.ops:
            if is_inlined_const(op):
                continue
            label = pr.op_line(op)
            if label.endswith(" {"):
                label = label[:-2]
            loc = loc_comment(op.loc)
            if loc:
                label += f"   # {loc}"
            self.lines.append(f"{indent}{self.node_id(op)} [label={_q(label)}];")
            names = _REGION_LABELS.get(op.name, ())
            for k, reg in enumerate(op.regions):
                self.nclusters += 1
                cname = f"cluster_{self.prefix}{self.nclusters}"
                rl = names[k] if k < len(names) else f"region {k}"
                self.lines.append(f"{indent}subgraph {cname} {{")
                self.lines.append(f"{indent}  label={_q(f'{op.name} {rl}')};")
                self.lines.append(f"{indent}  style=rounded;")
                self.region(reg, pr, indent + "  ")
                self.lines.append(f"{indent}}}")


_HEAD = ['  node [shape=box, fontname="monospace", fontsize=10];',
         '  edge [fontname="monospace", fontsize=9];']


def func_to_dot(func: Func) -> str:
    d = _Dot("")
    d.func(func, "  ")
    out = [f"digraph {_q(func.name)} {{", *_HEAD, f"  label={_q('func ' + func.name)};"]
    out += d.lines + d.edges + ["}"]
    return "\n".join(out) + "\n"


def program_to_dot(program: Program) -> str:
    out = ["digraph program {", *_HEAD, "  compound=true;"]
    for k, func in enumerate(program.funcs.values()):
        d = _Dot(f"f{k}_")
        d.func(func, "    ")
        out.append(f"  subgraph cluster_f{k} {{")
        out.append(f"    label={_q('func ' + func.name)};")
        out += d.lines + d.edges
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


__all__ = ["func_to_dot", "program_to_dot"]
