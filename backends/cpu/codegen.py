"""IR -> readable Python source for ``numba.njit`` (the CPU backend's code generator).

``generate(program, keys, standalone=False, public=None)`` returns a ``Generated``:
the text of one Python module holding a jitted function for each function in
``keys`` and every function they call, and the name each got in the module.

The text is meant to be read (``f.source()``): one statement per line, each ending
with the ``# file.dp:LINE`` of the op it comes from; IR names (``R_3``, ``%5`` printed
``t5``), structured loops as Python ``for``/``while`` loops, ``if`` as ``if``.  Scalars
are plain Python/Numba scalar code (``math.exp``), arrays NumPy calls that Numba
compiles, and the rest calls the helpers of ``runtime.py`` (imported, or pasted in for
a standalone module).

Names.  Every name the generated code itself uses (``np``, ``math``, ``numba``, ``jit``,
the ``rt_*`` helpers, Python's keywords and built-ins, the module's functions and
constants) is reserved; a name from the program that equals a reserved or already
taken name gets ``_`` appended until it is free (``np`` -> ``np_``, ``range`` ->
``range_``), and non-ASCII characters become ``_``.  So no program name can shadow or
replace generated code.  In a standalone module the public names of the file's
functions are reserved too: they are bound, last, to thin Python wrappers.

In place.  ``ir.analysis.analyze_inplace`` decides which ``setitem``/``scatter_add``
write into their operand (the result then keeps the operand's Python name: no copy)
and which loop inits, yields and returns need a copy.  The members of a loop-carried
slot share one Python variable.  Ops that Numba evaluates as views (slices, transpose,
reshape) copy only when the view could be written or outlive a write.
"""
from __future__ import annotations

import ast
import builtins
import keyword
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from dplang.errors import DPInternalError
from dplang.ir import types as T
from dplang.ir.analysis import analyze_inplace, calls_of
from dplang.ir.core import Func, Op, Program, Region, Value
from dplang.ir.printer import Namer, is_inlined_const
from dplang.ir.primitives import REGISTRY, soft
from dplang.ir.primitives.reductions import norm_axes
from dplang.backends.cpu import fusion, ranges, skew, wavefront, window

CODEGEN_VERSION = "1"

NPDT = {"f64": "np.float64", "f32": "np.float32", "i64": "np.int64", "bool": "np.bool_"}
NBDT = {"f64": "float64", "f32": "float32", "i64": "int64", "bool": "boolean"}

_RUNTIME_PATH = os.path.join(os.path.dirname(__file__), "runtime.py")
_BAD = re.compile(r"[^0-9A-Za-z_]")
PREFETCH = 8        # a reverse sweep prefetches wavefront-order tape entries this far ahead
_DBL_MAX = 1.7976931348623157e308          # the largest float64 (a reciprocal of gamma is capped at it)


def _rank(v: Value) -> int:
    return v.type.ndim if isinstance(v.type, T.Array) else 1     # (a scalar tape: 1-D)


# ---------------------------------------------------------------------- runtime helpers
_HELPERS: dict | None = None


def runtime_helpers() -> dict:
    """``{name: (source text, names of the helpers it calls)}`` for the ``rt_*``
    functions of runtime.py."""
    global _HELPERS
    if _HELPERS is None:
        # parsing runtime.py takes 0.05 s, a fifth of a warm start: the table is saved in
        # the cache directory, whose name holds runtime.py's hash (cache.versions)
        from dplang.backends.cpu import cache as _cache
        saved = _cache.read_json("runtime_helpers")
        if isinstance(saved, dict):
            _HELPERS = {k: (v[0], set(v[1])) for k, v in saved.items()}
            return _HELPERS
        with open(_RUNTIME_PATH) as fh:
            text = fh.read()
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        out = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("rt_"):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
                src = "".join(lines[start:node.end_lineno])
                deps = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                        and n.id.startswith("rt_") and n.id != node.name}
                out[node.name] = (src, deps)
        _HELPERS = out
        _cache.write_json("runtime_helpers", {k: [v[0], sorted(v[1])] for k, v in out.items()})
    return _HELPERS


def helper_closure(names) -> list[str]:
    """The helpers named and every helper they call, in runtime.py's order."""
    helpers = runtime_helpers()
    todo, seen = list(names), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(helpers[n][1])
    return [n for n in helpers if n in seen]


# ---------------------------------------------------------------------- names
_RESERVED_BASE = set(keyword.kwlist) | set(getattr(keyword, "softkwlist", [])) | \
    set(dir(builtins)) | {"np", "math", "numba", "jit", "jit_kernel", "jit_inline", "self",
                          "prim_call", "jit_parallel"}


def _sanitize(name: str) -> str:
    s = _BAD.sub("_", name) or "v"
    if s[0].isdigit():
        s = "v" + s
    return s


class Names:
    """A set of taken names; ``take(base)`` returns a free name derived from base."""

    def __init__(self, reserved=()):
        self.used = set(reserved)

    def take(self, base: str) -> str:
        name = _sanitize(base)
        while name in self.used or keyword.iskeyword(name):
            name += "_"
        self.used.add(name)
        return name


# ---------------------------------------------------------------------- literals
def literal(value, t: T.Type) -> str:
    """Python source of a scalar constant of type ``t``."""
    if isinstance(value, np.ndarray):
        value = value[()]
    if isinstance(value, np.generic):
        value = value.item()
    dt = getattr(t, "dtype", "f64")
    if dt == "bool":
        return "True" if bool(value) else "False"
    if dt == "i64":
        v = int(value)
        return str(v) if v >= 0 else f"({v})"
    v = float(value)
    if math.isnan(v):
        s = "np.nan"
    elif math.isinf(v):
        s = "np.inf" if v > 0 else "(-np.inf)"
    else:
        s = repr(v) if v >= 0 or v != v else f"({v!r})"
        if v == 0 and math.copysign(1.0, v) < 0:
            s = "(-0.0)"
    return f"np.float32({s})" if dt == "f32" else s


def _comment(loc) -> str:
    if loc is None:
        return ""
    try:
        text = f"{os.path.basename(loc.file)}:{int(loc.line)}"
    except Exception:
        return ""
    return re.sub(r"[^\x20-\x7e]", "?", text)


def _blas_available() -> bool:
    """Numba's np.dot calls BLAS through SciPy's wrappers: use it when SciPy is installed
    (the generated code then differs, so the cache keeps both variants apart), plain
    loops otherwise and in standalone modules (which import only NumPy and Numba)."""
    global _BLAS
    if _BLAS is None:
        import importlib.util
        _BLAS = importlib.util.find_spec("scipy") is not None
    return _BLAS


_BLAS = None


def _shape_tuple(items: list[str]) -> str:
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


def _prod(items: list[str]) -> str:
    return " * ".join(items) if items else "1"


class CodegenError(DPInternalError):
    pass


@dataclass
class ForwardCarry:
    """A register carry of an ascending row-order nest (FuncGen._plan_forward_carries):
    ``name`` holds ``table[i + row, j - 1]``, which ``source`` was the iteration before."""
    name: str
    table: Value                    # the inner loop's slot of the table
    row: int
    source: Value


# ---------------------------------------------------------------------- module
@dataclass
class Generated:
    text: str
    names: dict                     # func key -> name of its jitted function in the module
    helpers: list = field(default_factory=list)
    objmode: bool = False           # some op falls back to the NumPy reference (objmode)
    digest: str = ""                # set by the backend: the cache key of ``text``


class ModuleGen:
    def __init__(self, program: Program, keys: list[str], standalone: bool = False,
                 public: dict | None = None, boundscheck: bool = True, title: str = ""):
        self.program = program
        self.standalone = standalone
        self.public = dict(public or {})         # public name -> key (standalone)
        self.boundscheck = boundscheck
        self.title = title
        self.roots = [self._key(k) for k in keys]
        self.keys = self._closure(self.roots)
        self.inline = self._inlinable()
        self.inlined = False                    # some function is emitted as @jit_inline
        self.globals = Names(_RESERVED_BASE | set(runtime_helpers()) | set(self.public))
        self.fnames = {k: self.globals.take(k.replace(".", "_")) for k in self.keys}
        self.helpers_used: set = set()
        self.consts: list[str] = []
        self.objmode = False
        self.kernels = False                    # some function has wavefront kernels
        self.parallel = False                   # some function has a parallel loop (vmap)

    def _key(self, name: str) -> str:
        key = self.program.exports.get(name, name)
        if key not in self.program.funcs:
            raise CodegenError(f"cpu backend: no function {name!r} in the program")
        return key

    def _closure(self, keys):
        g = calls_of(self.program)
        out = []
        seen = set()
        todo = list(keys)
        while todo:
            k = todo.pop(0)
            if k in seen:
                continue
            seen.add(k)
            out.append(k)
            for callee in g.get(k, ()):
                if callee in self.program.funcs:
                    todo.append(callee)
        return out

    def _inlinable(self) -> set:
        """Callees that Numba inlines into their caller (``@jit_inline``): those called
        from one place in the module and not asked for themselves. Numba compiles every
        dispatcher on its own and then again, linked into each caller, every level of
        the call tree; inlining a callee with one call site costs nothing at run time
        and halves the cold compile of a program built from small functions (such as a
        stdlib wrapper around a smoothed recursion: docs/backend_cpu.md, "Inlined
        callees")."""
        sites: dict = {}
        for k in self.keys:
            for op in self.program.funcs[k].walk():
                if op.name == "call":
                    callee = op.attrs.get("callee")
                    callee = self.program.exports.get(callee, callee)
                    sites[callee] = sites.get(callee, 0) + 1
        return {k for k in self.keys if sites.get(k, 0) == 1 and k not in self.roots}

    def helper(self, name: str) -> str:
        if name not in runtime_helpers():
            raise CodegenError(f"cpu backend: unknown runtime helper {name}")
        self.helpers_used.add(name)
        return name

    def const_global(self, text: str, hint: str) -> str:
        name = self.globals.take(hint)
        self.consts.append(f"{name} = {text}")
        return name

    def generate(self) -> Generated:
        bodies = []
        for k in reversed(self.keys):           # callees before callers (for reading)
            bodies.append(FuncGen(self, self.program.funcs[k], self.fnames[k], k).emit())
        out = []
        head = self.title or "functions"
        out.append(f"# Generated by dplang (cpu backend {CODEGEN_VERSION}): {head}.")
        out.append("# Readable on purpose: names and '# file.dp:LINE' comments come from the "
                   "program.")
        out.append("import math")
        out.append("")
        out.append("import numba")
        out.append("import numpy as np")
        helpers = helper_closure(self.helpers_used)
        if helpers and not self.standalone:
            out.append("from dplang.backends.cpu.runtime import (")
            for h in [h for h in helpers if h in self.helpers_used]:
                out.append(f"    {h},")
            out.append(")")
        if self.objmode and not self.standalone:
            out.append("from dplang.backends.cpu.objmode import prim_call")
        out.append("")
        opts = "cache=True, error_model=\"numpy\""
        if self.boundscheck:
            opts += ", boundscheck=True"
        out.append(f"jit = numba.njit({opts})")
        if self.inlined:        # callees with one call site, compiled into their caller
            out.append(f"jit_inline = numba.njit({opts}, inline=\"always\")")
        if self.kernels:        # wavefront kernels index only their own buffers, below size
            out.append("jit_kernel = numba.njit(cache=True, error_model=\"numpy\")")
        if self.parallel:       # functions with a loop of independent iterations (dp.vmap)
            out.append(f"jit_parallel = numba.njit({opts}, parallel=True)")
        if self.consts:
            out.append("")
            out.extend(self.consts)
        if helpers and self.standalone:
            out.append("")
            out.append("")
            out.append("# ---- run-time helpers (from dplang/backends/cpu/runtime.py)")
            for h in helpers:
                out.append("")
                out.append(runtime_helpers()[h][0].rstrip("\n"))
                out.append("")
        for b in bodies:
            out.append("")
            out.append("")
            out.extend(b)
        if not self.standalone:
            return Generated("\n".join(out) + "\n", dict(self.fnames), helpers,
                             self.objmode or self.parallel)
        text = "\n".join(out) + "\n"
        # public names that equal a name the generated code uses (np, range, jit, rt_psum,
        # ...) would replace it in the module's namespace: such uses get an alias
        clash = sorted(set(self.public) & (_RESERVED_BASE | set(runtime_helpers())))
        if clash:
            alias = {n: self.globals.take(n) for n in clash}
            text = _rename_names(text, alias)
            extra = []
            bmod = None
            for n in clash:
                if n in ("np", "math", "numba"):
                    continue
                if n in ("jit", "jit_kernel", "jit_inline", "jit_parallel", "prim_call") or \
                        n in runtime_helpers():
                    continue
                if bmod is None:
                    bmod = self.globals.take("builtins_mod")
                    extra.append(f"import builtins as {bmod}")
                extra.append(f"{alias[n]} = {bmod}.{n}")
            lines = text.split("\n")
            k = next(i for i, ln in enumerate(lines) if ln.startswith("jit") or
                     ln.startswith(alias.get("jit", "jit") + " = "))
            text = "\n".join(lines[:k] + extra + lines[k:])
        else:
            alias = {}
        wr = _rename_names("\n".join(self.wrappers()) + "\n", alias, keep_defs=set(self.public))
        return Generated(text + wr, dict(self.fnames), helpers, self.objmode)

    def wrappers(self) -> list[str]:
        """Plain Python entry points of a standalone module, one per public name: they
        convert the arguments to the declared dtypes (so Numba compiles the intended
        specialisation) and turn a failed ``assert`` into a readable message."""
        call = self.globals.take("dp_call")
        check = self.globals.take("dp_arg")
        out = ["", "", "# ---- entry points (the functions of the file, under their own names)", "",
               f"def {check}(x, dtype, ndim, name):",
               "    a = np.asarray(x)",
               "    if a.ndim != ndim:",
               "        raise ValueError(\"argument '\" + name + \"' must have \" + str(ndim) +",
               "                         \" dimension(s), got shape \" + str(a.shape))",
               "    if ndim == 0:",
               "        return dtype(a[()])",
               "    return np.ascontiguousarray(a, dtype=dtype)",
               "", "",
               f"def {call}(fn, args):",
               "    try:",
               "        return fn(*args)",
               "    except AssertionError as e:",
               "        a = e.args",
               "        if len(a) >= 2 and isinstance(a[0], str) and isinstance(a[1], str):",
               "            try:",
               "                msg = a[1].format(False, *a[2:])",
               "            except (IndexError, KeyError, ValueError):",
               "                msg = a[1]",
               "            raise AssertionError(a[0] + msg) from None",
               "        raise"]
        for pub, key in self.public.items():
            func = self.program.funcs[key]
            loc = Names(self.globals.used)
            params = [loc.take(n) for n in (func.param_names or
                                            [f"p{k}" for k in range(len(func.params))])]
            conv = []
            for n, p, v in zip(params, func.param_names or params, func.params):
                t = v.type
                conv.append(f"{check}({n}, {NPDT[t.dtype]}, {t.ndim}, {_ascii(p)!r})")
            sig = ", ".join(f"{_ascii(n)}: {v.type}" for n, v in zip(func.param_names or params,
                                                                     func.params))
            res = ", ".join(str(t) for t in func.result_types)
            args = "(" + ", ".join(conv) + ("," if len(conv) == 1 else "") + ")"
            out += ["", "", f"def {pub}({', '.join(params)}):",
                    f'    """{_safe_doc(pub)}({_safe_doc(sig)}) -> {_safe_doc(res)}"""',
                    f"    return {call}({self.fnames[key]}, {args})"]
        out += ["", "", "__all__ = [" + ", ".join(repr(p) for p in self.public) + "]"]
        return out


# ---------------------------------------------------------------------- functions
_VIEW_OPS = ("getitem", "transpose", "reshape")


class FuncGen:
    def __init__(self, mod: ModuleGen, func: Func, name: str, key: str = ""):
        self.mod = mod
        self.func = func
        self.name = name
        self.key = key
        self.objmode_used = False
        self.ana = analyze_inplace(func)
        self.inplace = self.ana.inplace
        self.names: dict[Value, str] = {}
        self.literals: dict[Value, str] = {}
        self.locals = Names(mod.globals.used)
        self.tape_counts: dict = {}
        self.tape_caps: dict = {}
        self.tape_steal: dict = {}
        self._name_values()
        self._scan_uses()
        self.lines: list[str] = []
        self.lu_plan = self._plan_lu()
        self.lu_names: dict = {}
        self.kernels: list = []                 # wavefront kernels (backends/cpu/wavefront.py)
        self.kernel_mode = False                # emitting a kernel: vector-friendly math
        self.wave_tapes: dict = {}              # tapes kept in wavefront order (plan)
        self.wave_slots: dict = {}              # reverse inner loop -> its cell's slot local
        self.waves = wavefront.plan(self)
        # accesses whose indices a hoisted test proved in range (backends/cpu/ranges.py),
        # and the nests that keep row order but get such a test: reverse sweeps (they
        # pop a tape, or descend); ascending nests measured faster with Numba's
        # per-access checks
        self.unchecked: set = set()
        self.early: set = set()                 # ops emitted before their loop
        self.carry_of: dict = {}                # read/add op -> its Carry's local
        self.carry_loops: dict = {}             # inner for -> [(local, Carry)]
        nests = wavefront.wavefront_nests(func)
        self.rows = {} if not mod.boundscheck else {
            n.outer: n for n in nests
            if n.outer not in self.waves and (n.pops or n.sign == -1)}
        # register carries of ascending row-order nests (_plan_forward_carries)
        self.fwd_carry_of: dict = {}            # read op -> the local that holds it
        self.fwd_carries: dict = {}             # inner for -> [ForwardCarry]
        for n in nests:
            if n.outer not in self.waves and n.outer not in self.rows:
                self._plan_forward_carries(n)
        # (a reverse nest reads wavefront-order tapes by slot: it needs its bounds, which
        # the hoisted emission of self.rows computes before its loops)
        self.wave_tapes = {t: b for t, b in self.wave_tapes.items() if b.outer in self.rows}
        # adjoint tables of reverse sweeps kept as two rows (window.py)
        self.windows = window.plan(self)
        self.window_turns: dict = {}            # outer loop -> its windows
        for w in {id(w): w for w in self.windows.values()}.values():
            self.window_turns.setdefault(w.nest.outer, []).append(w)
        # reverse sweeps that run several rows at once (skew.py; their windows are rings)
        self.skews = skew.plan(self)
        # column soft operators that read their operand's two parts (_plan_offsets)
        self.offsets, self.absorbed = self._plan_offsets()
        # runs of elementwise array ops emitted as one loop nest each (fusion.py)
        self.fused = fusion.plan(self) if fusion.enabled() else {}
        self.fused_ops = {op for g in self.fused.values()
                          for op in g.ops + g.writes + g.sums + g.pushes}
        # arrays computed straight into their tape entry (take_dest)
        self.dest_cands = self._plan_dests()
        # transposes that only matrix products read, in place (p_matmul): not emitted
        self.absorbed |= {op for op in func.walk() if op.name == "transpose" and all(
            self._blas_reads_transposed(u, op.results[0])
            for u in self.users.get(op.results[0], ())) and self.users.get(op.results[0])}
        self.dest_taken: set = set()

    def _plan_forward_carries(self, n) -> None:
        """Register carries of an ascending row-order nest that writes each table once a
        cell, at ``[i, j]``, and reads it back at ``[i, j - 1]`` (the cell written by
        the previous iteration) or at ``[i + a, j - 1]`` next to a read at ``[i + a, j]``
        (a != 0: a row the nest does not write, read by the previous iteration): such
        reads take the value in a local instead of loading it, and the local takes the
        written (read) value at the end of the iteration.  The store-to-load round trip
        through memory left the critical path of hard DTW, and tables whose rows are a
        multiple of 4 KB apart lost their false store-to-load dependences (a textbook
        hard DTW at 512 x 512: 1.05 -> 0.68 ms, the padded form's time).  Before each
        row the locals load the entries
        at ``j = lo - 1`` (when the row runs).  Only where no index may be negative
        (``Nest.wraps``), so that no row or column is another one's."""
        if n.sign != 1 or n.wraps:
            return
        by_table: dict = {}
        for a in n.accesses:
            by_table.setdefault(a.table, []).append(a)
        slots = n.inner.regions[0].args[1:]
        out = []
        for k, accs in by_table.items():
            writes = [a for a in accs if a.kind != "read"]
            if len(writes) != 1 or writes[0].kind != "write" or writes[0].offset != (0, 0) \
                    or writes[0].op not in self.inplace:
                continue
            rows = {a.offset[0] for a in accs if a.kind == "read" and a.offset[1] == -1}
            for r in sorted(rows):
                reads = [a.op for a in accs if a.kind == "read" and a.offset == (r, -1)]
                if r == 0:
                    source = writes[0].op.operands[1]
                else:
                    same = [a.op for a in accs if a.kind == "read" and a.offset == (r, 0)]
                    if not same:
                        continue
                    source = same[0].results[0]
                if not isinstance(source.type, T.Scalar) or \
                        source.type.dtype != slots[k].type.dtype:
                    continue
                name = self.fresh("carry")
                for op in reads:
                    self.fwd_carry_of[op] = name
                out.append(ForwardCarry(name, slots[k], r, source))
        if out:
            self.fwd_carries[n.inner] = out

    # -- naming ------------------------------------------------------------------
    def _name_values(self):
        namer = Namer().name_func(self.func)
        # definition order: parameters, then ops in the printer's order
        order = list(self.func.params)

        def walk(region):
            for op in region.ops:
                if is_inlined_const(op):
                    self.literals[op.results[0]] = literal(op.attrs.get("value"),
                                                           op.results[0].type)
                    continue
                for reg in op.regions:
                    order.extend(reg.args)
                    walk(reg)
                order.extend(op.results)
        walk(self.func.body)
        self._printed = {}
        for v in order:
            if v in self.names or v in self.literals:
                continue
            p = namer.names.get(v) or (v.hint or "t")
            if p.startswith("%"):
                p = "t" + p[1:]
            self._printed[v] = p
        # slot members share the body argument's Python name; in-place results their
        # operand's name (resolved lazily through self.alias)
        self.alias: dict[Value, Value] = {}
        for op in self.func.walk():
            if op.name == "for" and op.regions:
                body = op.regions[0]
                for k, r in enumerate(op.results):
                    if 1 + k < len(body.args):
                        self.alias[r] = body.args[1 + k]
            elif op.name == "while" and len(op.regions) == 2:
                cond, body = op.regions
                for k in range(len(body.args)):
                    if k < len(cond.args):
                        self.alias[cond.args[k]] = body.args[k]
                    if k < len(op.results):
                        self.alias[op.results[k]] = body.args[k]
            elif op.name in ("setitem", "scatter_add") and op in self.inplace:
                self.alias[op.results[0]] = op.operands[0]

    def root(self, v: Value) -> Value:
        seen = 0
        while v in self.alias and seen < 100000:
            v = self.alias[v]
            seen += 1
        return v

    def ref(self, v: Value) -> str:
        lit = self.literals.get(v)
        if lit is not None:
            return lit
        r = self.root(v)
        n = self.names.get(r)
        if n is None:
            n = self.locals.take(self._printed.get(r) or r.hint or "t")
            self.names[r] = n
        return n

    def fresh(self, base: str) -> str:
        return self.locals.take(base)

    # -- uses and views ----------------------------------------------------------------
    def _scan_uses(self):
        self.pos: dict[Op, int] = {}
        self.last_use: dict[tuple, int] = {}
        self.contains_write: dict[Op, bool] = {}
        self.escapes: set = set()

        self.users: dict = {}

        def scan(region: Region) -> set:
            used_all = set()
            for idx, op in enumerate(region.ops):
                self.pos[op] = idx
                used = set(op.operands)
                for v in used:
                    self.users.setdefault(v, []).append(op)
                w = op in self.inplace
                for reg in op.regions:
                    used |= scan(reg)
                    w = w or any(self.contains_write.get(o, False) for o in reg.ops)
                self.contains_write[op] = w
                for v in used:
                    self.last_use[(id(region), v)] = idx
                used_all |= used
                if op.name in ("yield", "return"):
                    self.escapes.update(op.operands)
                elif op.name == "for":
                    self.escapes.update(op.operands[3:])
                elif op.name == "while":
                    self.escapes.update(op.operands)
                elif op.name in ("setitem", "scatter_add") and op in self.inplace:
                    self.escapes.add(op.operands[0])
            return used_all
        scan(self.func.body)

    # groups of primitives whose array results are new arrays (the soft operators' may be
    # transposed views of one), and that only read their operands
    FRESH = ("arithmetic", "math", "comparison", "logic", "selection", "soft")
    READS = FRESH + ("reduction",)

    def private_source(self, op: Op) -> bool:
        """The array that view ``op`` looks at is a new array that nothing but this view
        looks at or writes: no write can reach the view through it."""
        return self.private_value(op.operands[0], op)

    def private_value(self, x: Value, op: Op) -> bool:
        """``x`` is a new array of an elementwise or soft operator, and its uses other
        than ``op`` only read it (or store it as a value)."""
        p = REGISTRY.get(x.owner.name) if isinstance(x.owner, Op) else None
        if p is None or p.group not in self.FRESH or x in self.escapes:
            return False
        for u in self.users.get(x, ()):
            if u is op:
                continue
            q = REGISTRY.get(u.name)
            if q is not None and (q.group in self.READS or u.name == "sum_to"):
                continue
            if u.name in ("setitem", "scatter_add") and x not in (u.operands[0],) + tuple(
                    u.operands[2:]):
                continue
            return False
        return True

    # soft operators along columns whose operand is ``A + v[:, None]``
    COLS_OFFSET = ("smax", "smax_arg", "softmax", "sargmax")

    def _plan_offsets(self):
        """({soft op: (A, v)}, the ops it absorbs).  A column soft operator (entropy,
        over axis 0 of a matrix) whose operand is ``add(A, broadcast_to(v, A,
        axis=(1,)))`` -- a forward-algorithm step ``alpha[:, None] + theta[t]``, the form
        transpose sinking gives the CRF -- passes ``A`` and ``v`` to the kernel, which
        adds them as it reads (no matrix is written and read back).  Only when nothing
        else uses the sum or the broadcast and nothing is written between them and the
        soft operator (the kernel reads ``A`` and ``v`` where the operator stood)."""
        offsets, absorbed = {}, set()
        for op in self.func.walk():
            if op.name not in self.COLS_OFFSET or op.attrs.get("reg", "entropy") != "entropy":
                continue
            x = op.operands[0]
            add = x.owner
            if not (isinstance(x.type, T.Array) and x.type.ndim == 2 and x.type.dtype == "f64"
                    and norm_axes(op.attrs.get("axis", -1), 2, op.name) == (0,)
                    and isinstance(add, Op) and add.name == "add" and add.parent is op.parent
                    and self.users.get(x) == [op]):
                continue
            for a, b in (add.operands, add.operands[::-1]):
                bc = b.owner
                if not (isinstance(a.type, T.Array) and a.type.dtype == "f64"
                        and tuple(a.type.shape) == tuple(x.type.shape)
                        and isinstance(bc, Op) and bc.name == "broadcast_to"
                        and bc.parent is op.parent and self.users.get(b) == [add]
                        and norm_axes(bc.attrs.get("axis") or (), 2, "broadcast_to") == (1,)):
                    continue
                v = bc.operands[0]
                if not (isinstance(v.type, T.Array) and v.type.ndim == 1
                        and v.type.dtype == "f64"):
                    continue
                region = op.parent
                lo = min(self.pos[bc], self.pos[add])
                if any(self.contains_write.get(o, False) or o.regions
                       for o in region.ops[lo + 1:self.pos[op]]):
                    continue
                offsets[op] = (a, v)
                absorbed |= {add, bc}
                break
        return offsets, absorbed

    def view_needs_copy(self, op: Op) -> bool:
        v = op.results[0]
        if v in self.escapes:
            return True
        if self.private_source(op):
            return False
        region = op.parent
        start = self.pos.get(op, 0)
        end = self.last_use.get((id(region), v), start)
        for o in region.ops[start + 1:end + 1]:
            if self.contains_write.get(o, False):
                return True
        return False

    # -- emission ----------------------------------------------------------------------
    def emit(self) -> list[str]:
        f = self.func
        params = [self.ref(p) for p in f.params]
        sig = ", ".join(f"{n}: {p.type}" for n, p in zip(f.param_names or params, f.params))
        res = ", ".join(str(t) for t in f.result_types)
        if len(f.result_types) != 1:
            res = f"({res})"
        self.lines = []
        parallel = any(op.name == "for" and op.attrs.get("parallel") for op in f.walk())
        if parallel:
            self.mod.parallel = True
        head = ["@jit_parallel" if parallel else "@jit", f"def {self.name}({', '.join(params)}):"]
        doc = f'    """{_safe_doc(f.name)}({_safe_doc(sig)}) -> {_safe_doc(res)}"""'
        self.region(f.body, 1)
        c = _comment(f.loc)
        head[1] = _with_comment(head[1], c)
        if any(ln.lstrip().startswith("for ") for ln in self.lines):
            doc = [doc, _with_comment(f"    {self.mod.helper('rt_wide')}()", c)]
        else:
            doc = [doc]
        if self.key in self.mod.inline and not self.objmode_used:
            head[0] = "@jit_inline"
            self.mod.inlined = True
        kernels = []
        for k in self.kernels:
            kernels += k + ["", ""]
        return kernels + head + doc + self.lines

    def line(self, indent: int, text: str, op: Op | None = None):
        self.lines.append(_with_comment("    " * indent + text, _comment(op.loc) if op else ""))

    def region(self, region: Region, indent: int):
        n0 = len(self.lines)
        for op in region.ops:
            if op.name in ("yield", "return"):
                if op.name == "return":
                    self.emit_return(op, indent)
                break
            if is_inlined_const(op) or op in self.early:
                continue
            try:
                g = self.fused.get(op)
                if g is not None:
                    fusion.emit(self, g, indent)
                elif op not in self.fused_ops and op not in self.absorbed:
                    self.op(op, indent)
            except CodegenError:
                raise
            except Exception as e:      # a bug here: name the op
                raise CodegenError(f"cpu backend: cannot generate code for {op.name} in "
                                   f"{self.func.name}: {type(e).__name__}: {e}", op.loc) from e
        return len(self.lines) > n0

    def emit_return(self, op: Op, indent: int):
        vals = []
        for k, v in enumerate(op.operands):
            t = self.ref(v)
            if (op, k) in self.ana.yield_copies and isinstance(v.type, T.Array):
                t = f"{t}.copy()"
            vals.append(t)
        self.line(indent, "return " + ", ".join(vals) if vals else "return", op)

    def assign_slots(self, indent: int, op: Op, dsts: list[str], srcs: list[Value],
                     copies: set, first_index: int, src_op: Op):
        """dst_k = src_k for every k (simultaneously), copying where asked."""
        pairs = []
        for k, (d, v) in enumerate(zip(dsts, srcs)):
            s = self.ref(v)
            if (src_op, first_index + k) in copies and isinstance(v.type, T.Array):
                s = f"{s}.copy()"
            if s != d:
                pairs.append((d, s))
        if not pairs:
            return
        dst_set = {d for d, _ in pairs}
        hazard = any(s in dst_set for _, s in pairs)
        if hazard and len(pairs) > 1:
            self.line(indent, ", ".join(d for d, _ in pairs) + " = " +
                      ", ".join(s for _, s in pairs), op)
        else:
            for d, s in pairs:
                self.line(indent, f"{d} = {s}", op)

    # -- structural ops ------------------------------------------------------------------
    def op(self, op: Op, ind: int):
        name = op.name
        w = self.windows.get(op)
        if w is not None and op is w.base:
            return window.emit_base(self, w, ind)
        if w is not None and op in w.seed_rows:
            return window.emit_seed(self, w, op, ind)
        if name == "for":
            return self.emit_for(op, ind)
        if name == "while":
            return self.emit_while(op, ind)
        if name == "if":
            return self.emit_if(op, ind)
        if name == "call":
            callee = self.mod.program.exports.get(op.attrs.get("callee"), op.attrs.get("callee"))
            fname = self.mod.fnames.get(callee)
            if fname is None:
                raise CodegenError(f"cpu backend: call to unknown function {callee!r}", op.loc)
            args = ", ".join(self.ref(v) for v in op.operands)
            if not op.results:
                return self.line(ind, f"{fname}({args})", op)
            outs = ", ".join(self.ref(r) for r in op.results)
            return self.line(ind, f"{outs} = {fname}({args})", op)
        if name == "const":
            r = op.results[0]
            val = np.asarray(op.attrs.get("value"))
            if isinstance(r.type, T.Array):
                dt = r.type.dtype
                flat = ", ".join(literal(x, T.Scalar(dt)) for x in val.reshape(-1).tolist())
                shape = _shape_tuple([str(d) for d in val.shape]) if val.ndim else "(1,)"
                g = self.mod.const_global(f"np.array([{flat}], dtype={NPDT[dt]})"
                                          f".reshape({shape})", f"C_{self.name}")
                return self.line(ind, f"{self.ref(r)} = {g}.copy()", op)
            return self.line(ind, f"{self.ref(r)} = {literal(val, r.type)}", op)
        if name == "undef":
            r = op.results[0]
            t = r.type
            if isinstance(t, T.Array):
                z = _shape_tuple(["0"] * t.ndim)
                return self.line(ind, f"{self.ref(r)} = np.zeros({z}, {NPDT[t.dtype]})", op)
            return self.line(ind, f"{self.ref(r)} = {literal(0, t)}", op)
        if name == "assert":
            cond = self.ref(op.operands[0])
            msg = str(op.attrs.get("msg") or "assertion failed")
            where = op.loc
            prefix = f"{where.file}:{where.line}:{where.col}: " if where is not None else ""
            extra = [self.ref(v) for v in op.operands[1:]]
            exc = "AssertionError"
            args = ", ".join([repr(_ascii(prefix)), repr(_ascii(msg))] + extra)
            self.line(ind, f"if not {cond}:", op)
            self.line(ind + 1, f"raise {exc}({args})", op)
            return
        if name in ("tape_new", "tape_push", "tape_pop"):
            return self.tape_op(op, ind)
        prim = REGISTRY.get(name)
        if prim is None:
            raise CodegenError(f"cpu backend: unknown op {name!r}", op.loc)
        return self.primitive(op, ind)

    def tape_op(self, op: Op, ind: int):
        """Tapes of scalars are a growable NumPy buffer and a count (two locals); tapes of
        arrays of one shape a buffer with one more axis (allocated at the first push with
        a capacity, growable without one); other tapes of arrays a typed list (docs/
        backend_cpu.md, "Tapes")."""
        tape = op.results[0] if op.name == "tape_new" else op.operands[0]
        elem = tape.type.elem
        t = self.ref(tape)
        sized = bool(tape.owner.operands) if isinstance(tape.owner, Op) else False
        steal = self.tape_steals(tape)
        if self.shape_tape(tape):
            return self.shape_tape_op(op, ind, tape, elem)
        if self.fixed_tape(tape) and (not steal or any(
                u.operands[1] in self.dest_cands for u in self.users.get(tape, ())
                if u.name == "tape_push")):
            return self.array_tape_op(op, ind, tape, elem)
        if self.growable_fixed_tape(tape):
            return self.array_tape_op(op, ind, tape, elem)
        if isinstance(elem, T.Array):
            if op.name == "tape_new":
                item = numba_item_type(elem)
                return self.line(ind, f"{t} = numba.typed.List.empty_list({item})", op)
            if op.name == "tape_push":
                x = self.ref(op.operands[1])
                x = f"np.ascontiguousarray({x})" if steal else f"{x}.copy()"
                return self.line(ind, f"{t}.append({x})", op)
            return self.line(ind, f"{self.ref(op.results[0])} = {t}.pop()", op)
        n = self.tape_count(tape)
        # a tape with a capacity (reverse mode knows the trip counts) is allocated once
        # and never grows: no reassignment of the buffer inside the loops
        if op.name == "tape_new":
            size = f"max({self.ref(op.operands[0])}, 1)" if sized else "256"
            if tape in self.wave_tapes and wavefront.LANES:   # (kernels write whole vectors)
                size += f" + {wavefront.LANES}"
            self.line(ind, f"{t} = np.empty({size}, {NPDT[elem.dtype]})", op)
            return self.line(ind, f"{n} = 0", op)
        if op.name == "tape_push":
            v = self.val(op.operands[1], elem.dtype)
            if not sized:
                self.line(ind, f"if {n} == {t}.shape[0]:", op)
                self.line(ind + 1, f"{t} = {self.mod.helper('rt_grow')}({t})", op)
            self.line(ind, f"{t}[{n}] = {v}", op)
            return self.line(ind, f"{n} += 1", op)
        b = self.wave_tapes.get(tape)
        if b is not None:
            slot = f"{n} + {self.wave_slots[b.inner]}"
            if op in self.unchecked:
                return self.line(ind, f"{self.ref(op.results[0])} = "
                                      f"{self.unchecked_load(tape, slot)}", op)
            return self.line(ind, f"{self.ref(op.results[0])} = {t}[{slot}]", op)
        self.line(ind, f"{n} -= 1", op)
        if op in self.unchecked:
            return self.line(ind, f"{self.ref(op.results[0])} = "
                                  f"{self.unchecked_load(tape, n)}", op)
        return self.line(ind, f"{self.ref(op.results[0])} = {t}[{n}]", op)

    def _plan_dests(self) -> dict:
        """{array: its tape_push} for arrays that can be computed straight into their
        entry of a tape of one shape (array_tape_op): outputs of a fused loop and the
        weights of an entropy soft operator (along rows or columns, in x's layout),
        pushed in their region with no other use of the tape in between, and that
        nothing writes afterwards."""
        made = {}                           # array -> the op where its code is emitted
        for g in self.fused.values():
            for r in g.outputs:
                made[r] = g.ops[-1]
        for op in self.func.walk():
            if op.name in self.WEIGHTS and (self.cols_fit(op, op.operands[0])
                                            or self.rows_fit(op, op.operands[0])):
                made[op.results[-1]] = op
        out = {}
        for push in self.func.walk():
            if push.name != "tape_push" or not self.fixed_tape(push.operands[0]) \
                    or self.shape_tape(push.operands[0]):
                continue
            tape, x = push.operands[:2]
            at = made.get(x)
            if at is None or at.parent is not push.parent or not self.private_value(x, push) \
                    or sum(1 for u in self.users.get(x, ()) if u.name == "tape_push") != 1:
                continue
            region = push.parent.ops
            if any(tape in o.operands for o in region[self.pos[at] + 1:self.pos[push]]):
                continue
            out[x] = push
        return out

    # ops that read only the shape (and dtype) of their operand at these positions
    SHAPE_READERS = {"broadcast_to": 1, "zeros_like": 0, "ones_like": 0, "full_like": 0,
                     "dim": 0}

    def shape_tape(self, tape: Value) -> bool:
        """A tape of arrays with a capacity whose popped arrays only give shapes (the
        cotangent of ``sum(x)`` is ``broadcast_to(ct, x)``): it keeps the shapes, not
        the arrays."""
        if not (isinstance(tape.type.elem, T.Array) and isinstance(tape.owner, Op)
                and tape.owner.operands):
            return False
        pops = [u.results[0] for u in self.users.get(tape, ()) if u.name == "tape_pop"]
        return bool(pops) and all(
            self.SHAPE_READERS.get(u.name) is not None
            and [k for k, v in enumerate(u.operands) if v is x] == [self.SHAPE_READERS[u.name]]
            for x in pops for u in self.users.get(x, ()))

    def shape_tape_op(self, op: Op, ind: int, tape: Value, elem: T.Array):
        """shape_tape's tape: one row of dimensions per entry; a pop is an uninitialised
        array of the shape (only its shape is read)."""
        t, n = self.ref(tape), self.tape_count(tape)
        if op.name == "tape_new":
            self.line(ind, f"{t} = np.empty((max({self.ref(op.operands[0])}, 1), "
                           f"{max(elem.ndim, 1)}), np.int64)", op)
            return self.line(ind, f"{n} = 0", op)
        if op.name == "tape_push":
            x = self.ref(op.operands[1])
            for a in range(elem.ndim):
                self.line(ind, f"{t}[{n}, {a}] = {x}.shape[{a}]", op)
            return self.line(ind, f"{n} += 1", op)
        self.line(ind, f"{n} -= 1", op)
        dims = _shape_tuple([f"{t}[{n}, {a}]" for a in range(elem.ndim)])
        return self.line(ind, f"{self.ref(op.results[0])} = np.empty({dims}, "
                              f"{NPDT[elem.dtype]})", op)

    def fixed_tape(self, tape: Value) -> bool:
        """A tape of arrays whose shape the types fix, with a capacity."""
        elem = tape.type.elem
        return isinstance(elem, T.Array) and isinstance(tape.owner, Op) and \
            bool(tape.owner.operands) and all(isinstance(d, (int, T.Sym)) for d in elem.shape)

    def take_dest(self, x: Value, ind: int, op: Op, shape: str) -> str | None:
        """For an array of dest_cands: emit its tape entry (allocating the tape at the
        first one) as ``x``'s local and return its name: the code computing ``x`` writes
        into it, and its push only counts it.  Else None."""
        push = self.dest_cands.get(x)
        if push is None:
            return None
        tape = push.operands[0]
        t, n = self.ref(tape), self.tape_count(tape)
        self.line(ind, f"if {t}.shape[0] == 0:", op)
        dt = NPDT[tape.type.elem.dtype]
        self.line(ind + 1, f"{t} = np.empty(({self.tape_caps[tape]},) + {shape}, {dt})", op)
        self.dest_taken.add(x)
        self.line(ind, f"{self.ref(x)} = {t}[{n}]", op)
        return self.ref(x)

    def tape_steals(self, tape: Value) -> bool:
        """A tape of arrays that nothing writes after their push: it holds the arrays
        themselves (no copy).  Decided once per tape."""
        if tape not in self.tape_steal:
            self.tape_steal[tape] = isinstance(tape.type.elem, T.Array) and all(
                self.private_value(u.operands[1], u)
                for u in self.users.get(tape, ()) if u.name == "tape_push")
        return self.tape_steal[tape]

    def growable_fixed_tape(self, tape: Value) -> bool:
        """A tape of arrays whose shape the types fix, without a capacity (pushed in a
        loop whose trip count reverse mode does not know): a growable buffer with one
        more axis (array_tape_op) instead of a ``numba.typed.List``, whose compile costs
        a second or two per element type and module."""
        elem = tape.type.elem
        return isinstance(elem, T.Array) and isinstance(tape.owner, Op) and \
            not tape.owner.operands and 1 <= elem.ndim <= 3 and \
            all(isinstance(d, (int, T.Sym)) for d in elem.shape)

    def tape_store(self, t: str, n: str, x: str, elem: T.Array) -> str:
        """``t[n] = x`` for an array entry, through the runtime's copy (``rt_set_into1``
        ...``3``, compiled once in its own cache): Numba's array assignment brings its
        broadcasting checks and their messages into every module, about 1.8 s of cold
        compile each."""
        if 1 <= elem.ndim <= 3:
            return f"{self.mod.helper(f'rt_set_into{elem.ndim}')}({t}[{n}], {x})"
        return f"{t}[{n}] = {x}"

    def array_tape_op(self, op: Op, ind: int, tape: Value, elem: T.Array):
        """A tape of arrays whose shape the types fix (dimensions are numbers or the
        parameters' symbols, checked on entry): the entries in one buffer with one more
        axis, of the tape's capacity (allocated at the first push) or, without one
        (growable_fixed_tape), doubled when full (``rt_grow_rows``); no list, no
        allocation per push, a pop is a view of its entry."""
        t, n = self.ref(tape), self.tape_count(tape)
        dt = NPDT[elem.dtype]
        sized = bool(tape.owner.operands)
        if op.name == "tape_new":
            if sized:
                self.tape_caps[tape] = cap = self.fresh(t + "_cap")
                self.line(ind, f"{cap} = max({self.ref(op.operands[0])}, 1)", op)
            self.line(ind, f"{t} = np.empty({_shape_tuple(['0'] * (elem.ndim + 1))}, {dt})", op)
            return self.line(ind, f"{n} = 0", op)
        if op.name == "tape_push" and op.operands[1] in self.dest_taken:
            return self.line(ind, f"{n} += 1", op)      # (computed in its entry)
        if op.name == "tape_push":
            x = self.ref(op.operands[1])
            if sized:
                self.line(ind, f"if {t}.shape[0] == 0:", op)
                self.line(ind + 1, f"{t} = np.empty(({self.tape_caps[tape]},) + {x}.shape, "
                                   f"{dt})", op)
            else:
                self.line(ind, f"if {n} == {t}.shape[0]:", op)
                self.line(ind + 1, f"{t} = {self.mod.helper('rt_grow_rows')}({t}, {n}, {x})",
                          op)
            self.line(ind, self.tape_store(t, n, x, elem), op)
            return self.line(ind, f"{n} += 1", op)
        self.line(ind, f"{n} -= 1", op)
        return self.line(ind, f"{self.ref(op.results[0])} = {t}[{n}]", op)

    def unchecked_load(self, x: Value, idx: str, name: str | None = None) -> str:
        """``x[idx]`` through the runtime's unchecked accessor (indices proved in range
        by backends/cpu/ranges.py); ``x`` an array or a scalar tape (a 1-D buffer), read
        from ``name`` if given (a copy of it with wider rows)."""
        return f"{self.mod.helper(f'rt_at{_rank(x)}')}({name or self.ref(x)}, {idx})"

    def window_access(self, op: Op, idx: str, sym: str = "", val: str = "") -> str:
        """Access ``op`` (indices ``idx``: row, column) of a table kept as two rows
        (window.py): a read (no ``sym``) or the statement ``row[col] sym val``, unchecked
        (the nest's hoisted test covers it)."""
        if op not in self.unchecked:
            raise CodegenError("cpu backend: an access of a two-row table is not covered "
                               "by its nest's index test", op.loc)
        w = self.windows[op]
        col = idx.split(", ")[1]
        buf = window.row_buffer(w, op)
        if not sym:
            return f"{self.mod.helper('rt_at1')}({buf}, {col})"
        acc = self.mod.helper("rt_put1" if sym == "=" else "rt_inc1")
        return f"{acc}({buf}, {col}, {val})"

    def unchecked_store(self, x: Value, idx: str, sym: str, val: str,
                        name: str | None = None) -> str:
        """The statement ``x[idx] = val`` (``sym`` "=") or ``x[idx] += val`` ("+="),
        unchecked; into ``name`` if given."""
        acc = self.mod.helper(("rt_put" if sym == "=" else "rt_inc") + str(_rank(x)))
        return f"{acc}({name or self.ref(x)}, {idx}, {val})"

    def wave_cell(self, op: Op, ind: int):
        """At the top of the inner loop of a reverse nest that reads tapes in wavefront
        order: the cell's slot (rt_wave_rank; the nest runs the forward nest's rows and
        columns backwards), and a prefetch of each such tape's entry PREFETCH slots
        earlier.  A row-order sweep reads those tapes across the diagonals, one cache
        line a cell per tape, and each line serves the next eight rows; the entry
        PREFETCH slots back lies further up the same diagonal, in the line that the
        sweep reaches about eight rows later, so the line is on its way before it is
        needed (docs/performance.md, session 11: 31 -> 28 ms for a 1024 x 1024 soft-DTW
        gradient)."""
        tapes = [t for t, b in self.wave_tapes.items() if b.inner is op]
        if not tapes:
            return
        b = self.wave_tapes[tapes[0]]
        i, j = (self.ref(loop.regions[0].args[0]) for loop in (b.outer, b.inner))
        r0, r1, _ = ranges.bounds(self, b.outer, -1)
        c0, c1, _ = ranges.bounds(self, b.inner, -1)
        slot = self.wave_slots[op] = self.fresh("slot")
        cols = ranges.minus(ranges.plus(c1, 1), c0)
        self.line(ind, f"{slot} = {self.mod.helper('rt_wave_rank')}({i}, {j}, {r0}, "
                       f"{ranges.plus(r1, 1)}, {c0}, {ranges.plus(c1, 1)}, "
                       f"{self.mod.helper('rt_wave_strip')}({cols}))", op)
        for t in tapes:
            self.line(ind, f"{self.mod.helper('rt_prefetch')}({self.ref(t)}, "
                           f"{self.tape_count(t)} + {slot} - {PREFETCH})", op)

    def tape_count(self, tape: Value) -> str:
        """The local that counts a scalar tape's entries."""
        n = self.tape_counts.get(tape)
        if n is None:
            n = self.tape_counts[tape] = self.fresh(self.ref(tape) + "_n")
        return n

    def emit_for(self, op: Op, ind: int):
        plan = self.waves.get(op)
        if plan is not None:
            return wavefront.emit(self, plan, ind)
        nest = self.rows.get(op)
        if nest is not None:
            # the nest's invariant scalars first, then one test of its index ranges
            for h in nest.hoisted:
                if not is_inlined_const(h):
                    self.op(h, ind)
            self.early.update(nest.hoisted)
            self.unchecked |= ranges.guard(self, nest, ind)
            for c in ranges.carries(self, nest):
                name = self.fresh("carry")
                self.carry_of[c.read] = self.carry_of[c.add] = name
                self.carry_loops.setdefault(nest.inner, []).append((name, c))
            # tapes in wavefront order: the nest reads them at count - cells + slot
            for t, b in self.wave_tapes.items():
                if b.outer is nest.outer:
                    rows = ranges.trip_count(self, nest.outer, -1)
                    cols = ranges.trip_count(self, nest.inner, -1)
                    self.line(ind, f"{self.tape_count(t)} -= max({rows}, 0) * max({cols}, 0)",
                              op)
            if op in self.skews:
                return skew.emit(self, nest, ind)
        carry = self.carry_loops.get(op, ())
        for name, c in carry:
            self.line(ind, f"{name} = -0.0", c.add)
        body = op.regions[0]
        # a row's values that passes/interchange.py moved into this (inner) loop: once a
        # row, before the loop, where the program computed them
        for h in body.ops:
            if not h.attrs.get("_per_row"):
                break
            self.op(h, ind)
            self.early.add(h)
        lo, hi, step = (self.ref(v) for v in op.operands[:3])
        iv = self.ref(body.args[0])
        slots = [self.ref(a) for a in body.args[1:]]
        self.assign_slots(ind, op, slots, op.operands[3:], self.ana.init_copies, 3, op)
        fwd = self.fwd_carries.get(op, ())
        for c in fwd:                   # the entries the row's first cell reads
            outer_iv = self.ref(op.parent.parent.regions[0].args[0])
            zero = f"np.{NBDT[c.table.type.dtype]}(0.0)"
            self.line(ind, f"{c.name} = {self.ref(c.table)}[{ranges.plus(outer_iv, c.row)}, "
                           f"{ranges.plus(lo, -1)}] if {lo} < {hi} else {zero}", op)
        done = None
        if step == "1" and self._parallel_ok(op):
            # independent iterations (passes/vmap.py): across cores.  An exception raised
            # in a worker thread is lost by Numba's parallel loops (the iteration just
            # stops), so each iteration marks its end, and a missing mark raises after
            # the loop: the backend then replays the call on the interpreter, which
            # raises the located error of the failing iteration
            done = self.fresh("done")
            self.line(ind, f"{done} = np.zeros(max({hi} - {lo}, 0), np.bool_)", op)
            self.line(ind, f"for {iv} in numba.prange({lo}, {hi}):", op)
        else:
            self.line(ind, f"for {iv} in range({lo}, {hi}, {step}):", op)
        n = len(self.lines)
        self.wave_cell(op, ind + 1)
        self.region(body, ind + 1)
        if fwd:                         # what the next cell reads (all at once: a
            # source may be another carry's read)
            self.line(ind + 1, f"{', '.join(c.name for c in fwd)} = "
                               f"{', '.join(self.ref(c.source) for c in fwd)}", op)
        y = body.terminator
        if y is not None:
            self.assign_slots(ind + 1, y, slots, y.operands, self.ana.yield_copies, 0, y)
        for w in self.window_turns.get(op, ()):
            window.emit_turn(self, w, ind + 1)
        if done is not None:
            self.line(ind + 1, f"{done}[{iv} - {lo}] = True", op)
            self.line(ind, f"if not {done}.all():", op)
            self.line(ind + 1, "raise AssertionError('an iteration of a parallel loop failed')",
                      op)
        if len(self.lines) == n:
            self.line(ind + 1, "pass", op)
        for name, c in carry:           # the last iteration's add, where it goes
            x = c.add.operands[0]
            i = self.ref(c.add.operands[2])
            last = ranges.last_value(self, op, c.sign)
            self.line(ind, f"if {ranges.trip_count(self, op, c.sign)} > 0:", c.add)
            idx = f"{i}, {ranges.plus(last, c.sign)}"
            self.line(ind + 1, self.window_access(c.add, idx, "+=", name)
                      if c.add in self.windows else self.unchecked_store(x, idx, "+=", name),
                      c.add)

    def _parallel_ok(self, op: Op) -> bool:
        """Whether ``for`` op (marked ``parallel``: its iterations are independent) can
        run as ``numba.prange``: it carries arrays only, each updated in place (no copy
        at entry or exit), and pushes or pops no tape (reverse mode's forward sweep of a
        mapped loop pushes each iteration's values in order: it stays sequential)."""
        if not op.attrs.get("parallel"):
            return False
        body = op.regions[0]
        if any(not isinstance(a.type, T.Array) for a in body.args[1:]):
            return False
        if any((op, k) in self.ana.init_copies for k in range(len(op.operands))):
            return False
        y = body.terminator
        if y is None or any((y, k) in self.ana.yield_copies for k in range(len(y.operands))):
            return False
        return not any(o.name in ("tape_push", "tape_pop", "tape_new") for o in body.walk())

    def emit_while(self, op: Op, ind: int):
        cond, body = op.regions
        slots = [self.ref(a) for a in body.args]
        self.assign_slots(ind, op, slots, op.operands, self.ana.init_copies, 0, op)
        self.line(ind, "while True:", op)
        self.region(cond, ind + 1)
        flag = cond.terminator.operands[0]
        self.line(ind + 1, f"if not {self.ref(flag)}:", cond.terminator)
        self.line(ind + 2, "break", cond.terminator)
        self.region(body, ind + 1)
        y = body.terminator
        if y is not None:
            self.assign_slots(ind + 1, y, slots, y.operands, self.ana.yield_copies, 0, y)

    def emit_if(self, op: Op, ind: int):
        outs = [self.ref(r) for r in op.results]
        self.line(ind, f"if {self.ref(op.operands[0])}:", op)
        for k, reg in enumerate(op.regions):
            if k == 1:
                self.line(ind, "else:", op)
            n = len(self.lines)
            self.region(reg, ind + 1)
            y = reg.terminator
            if y is not None:
                self.assign_slots(ind + 1, y, outs, y.operands, self.ana.yield_copies, 0, y)
            if len(self.lines) == n:
                self.line(ind + 1, "pass", op)

    # -- primitives ---------------------------------------------------------------------------
    def primitive(self, op: Op, ind: int):
        handler = getattr(self, "p_" + op.name, None)
        if handler is None:
            return self.objmode_call(op, ind)
        out = handler(op, ind)
        if out is None:
            return
        r = op.results[0]
        out = self.fit(out, self.natural, r.type)
        self.line(ind, f"{self.ref(r)} = {out}", op)

    def fit(self, expr: str, natural, t: T.Type) -> str:
        """``expr`` (of dtype ``natural``, or None when already right) cast to ``t``."""
        self.natural = None
        if natural is None or natural == getattr(t, "dtype", None):
            return expr
        return cast_expr(expr, t)

    natural = None

    def objmode_call(self, op: Op, ind: int):
        if self.mod.standalone:
            raise CodegenError(f"cpu backend: primitive {op.name!r} has no compiled form, so "
                               f"it cannot go into a standalone module", op.loc)
        attrs = {k: v for k, v in op.attrs.items() if not str(k).startswith("_")}
        if not _plain(attrs):
            raise CodegenError(f"cpu backend: cannot pass the attrs of {op.name!r}", op.loc)
        self.mod.objmode = True
        self.objmode_used = True        # (Numba lifts the block out: no inlining then)
        types = [(r.type.dtype, r.type.ndim) for r in op.results]
        g = self.mod.const_global(repr((op.name, attrs, types)), f"P_{op.name}")
        outs = [self.ref(r) for r in op.results]
        decl = ", ".join(f'{o}="{numba_type(r.type)}"' for o, r in zip(outs, op.results))
        args = ", ".join(self.ref(v) for v in op.operands)
        self.line(ind, f"with numba.objmode({decl}):", op)
        self.line(ind + 1, f"{', '.join(outs)} = prim_call({g}, {args})", op)

    # helpers for primitive handlers
    def t(self, v: Value) -> T.Type:
        return v.type

    def arr(self, v: Value) -> bool:
        return isinstance(v.type, T.Array)

    def val(self, v: Value, dtype: str | None = None) -> str:
        """The operand's text, cast to ``dtype`` when its dtype differs."""
        s = self.ref(v)
        if dtype is not None and getattr(v.type, "dtype", None) != dtype:
            return cast_expr(s, T.make(dtype, v.type.shape))
        return s

    def tmp(self, ind: int, op: Op, base: str, expr: str) -> str:
        n = self.fresh(base)
        self.line(ind, f"{n} = {expr}", op)
        return n

    # elementwise ----------------------------------------------------------------------------
    def _binary(self, op, sym):
        a, b = op.operands
        r = op.results[0]
        dts = [a.type.dtype, b.type.dtype]
        nat = _promote(dts)
        if op.name in ("add", "sub", "mul", "floordiv", "mod", "pow") and nat == "bool":
            nat = "i64"
        if op.name == "div":
            nat = T.float_of(nat)
        self.natural = nat
        return f"{_paren(self.ref(a))} {sym} {_paren(self.ref(b))}"

    def p_add(self, op, ind): return self._binary(op, "+")
    def p_sub(self, op, ind): return self._binary(op, "-")
    def p_mul(self, op, ind): return self._binary(op, "*")
    def p_div(self, op, ind): return self._binary(op, "/")
    def p_floordiv(self, op, ind): return self._binary(op, "//")
    def p_mod(self, op, ind): return self._binary(op, "%")
    def p_pow(self, op, ind):
        a, b = op.operands
        bo = b.owner
        if isinstance(bo, Op) and bo.name == "const" and bo.attrs.get("value") == 2 \
                and a.type.dtype in ("f64", "f32") and op.results[0].type == a.type:
            self.natural = a.type.dtype            # x ** 2 -> x * x (as NumPy's square)
            x = _paren(self.ref(a))
            return f"{x} * {x}"
        return self._binary(op, "**")

    def _cmp(self, op, sym):
        a, b = op.operands
        return f"{_paren(self.ref(a))} {sym} {_paren(self.ref(b))}"

    def p_eq(self, op, ind): return self._cmp(op, "==")
    def p_ne(self, op, ind): return self._cmp(op, "!=")
    def p_lt(self, op, ind): return self._cmp(op, "<")
    def p_le(self, op, ind): return self._cmp(op, "<=")
    def p_gt(self, op, ind): return self._cmp(op, ">")
    def p_ge(self, op, ind): return self._cmp(op, ">=")

    def _minmax2(self, op, helper, ufunc):
        r = op.results[0]
        dt = r.type.dtype
        a, b = op.operands
        if not self.arr(r):
            return f"{self.mod.helper(helper)}({self.val(a, dt)}, {self.val(b, dt)})"
        self.natural = _promote([a.type.dtype, b.type.dtype])
        return f"np.{ufunc}({self.ref(a)}, {self.ref(b)})"

    def p_maximum(self, op, ind): return self._minmax2(op, "rt_max2", "maximum")
    def p_minimum(self, op, ind): return self._minmax2(op, "rt_min2", "minimum")

    def p_neg(self, op, ind):
        (a,) = op.operands
        self.natural = a.type.dtype
        return f"-{_paren(self.ref(a))}"

    def _logic(self, op, word, ufunc):
        a, b = op.operands
        if not self.arr(op.results[0]):
            return f"{self.truth(a)} {word} {self.truth(b)}"
        return f"np.{ufunc}({self.ref(a)}, {self.ref(b)})"

    def truth(self, v):
        if v.type.dtype == "bool":
            return _paren(self.ref(v))
        return f"({_paren(self.ref(v))} != 0)"

    def p_logical_and(self, op, ind): return self._logic(op, "and", "logical_and")
    def p_logical_or(self, op, ind): return self._logic(op, "or", "logical_or")

    def p_logical_not(self, op, ind):
        (a,) = op.operands
        if not self.arr(op.results[0]):
            return f"not {self.truth(a)}"
        return f"np.logical_not({self.ref(a)})"

    def _float_fn(self, op, scalar_fn, array_fn):
        (x,) = op.operands
        r = op.results[0]
        if self.arr(x):
            src = self.ref(x) if x.type.dtype in ("f64", "f32", "i64") else self.val(x, "f64")
            out = array_fn(src)
            self.natural = "f32" if x.type.dtype == "f32" and out.startswith("np.") else "f64"
            return out
        src = self.val(x, "f64") if x.type.dtype != "f64" else self.ref(x)
        self.natural = "f64"
        return scalar_fn(src)

    def _math(name, vectorised=False):
        # exp, expm1, tanh of arrays: the runtime's vectorisable versions (runtime.py,
        # "vector-friendly math"); scalars keep libm, whose latency is lower
        def h(self, op, ind):
            return self._float_fn(
                op, lambda s: (f"{self.mod.helper('rt_' + name)}({s})" if self.kernel_mode
                               and name in ("exp", "log", "expm1", "tanh")
                               else f"math.{name}({s})"),
                (lambda s: f"{self.mod.helper('rt_' + name + '_a')}({s})") if vectorised
                else (lambda s: f"np.{name}({s})"))
        return h

    p_exp = _math("exp", True)
    p_log = _math("log")
    p_log1p = _math("log1p")
    p_expm1 = _math("expm1", True)
    p_sqrt = _math("sqrt")
    p_sin = _math("sin")
    p_cos = _math("cos")
    p_tan = _math("tan")
    p_tanh = _math("tanh", True)
    del _math

    def p_sigmoid(self, op, ind):
        return self._float_fn(op, lambda s: f"{self.mod.helper('rt_sigmoid_s')}({s})",
                              lambda s: f"{self.mod.helper('rt_sigmoid_a')}({s})")

    def p_softplus(self, op, ind):
        return self._float_fn(op, lambda s: f"{self.mod.helper('rt_softplus_s')}({s})",
                              lambda s: f"{self.mod.helper('rt_softplus_a')}({s})")

    def p_abs(self, op, ind):
        (x,) = op.operands
        self.natural = x.type.dtype
        return f"np.abs({self.ref(x)})" if self.arr(x) else f"abs({self.ref(x)})"

    def p_sign(self, op, ind):
        (x,) = op.operands
        self.natural = x.type.dtype
        return f"np.sign({self.ref(x)})"

    def _rounding(self, op, fn):
        (x,) = op.operands
        if x.type.dtype in ("f64", "f32"):
            self.natural = x.type.dtype
            return f"np.{fn}({self.ref(x)})"
        return f"{self.ref(x)}.copy()" if self.arr(x) else self.ref(x)

    def p_floor(self, op, ind): return self._rounding(op, "floor")
    def p_ceil(self, op, ind): return self._rounding(op, "ceil")
    def p_round(self, op, ind): return self._rounding(op, "rint")

    def p_where(self, op, ind):
        c, x, y = op.operands
        r = op.results[0]
        dt = r.type.dtype
        if not self.arr(r):
            return f"{self.val(x, dt)} if {self.ref(c)} else {self.val(y, dt)}"
        self.natural = _promote([x.type.dtype, y.type.dtype])
        return f"np.where({self.ref(c)}, {self.ref(x)}, {self.ref(y)})"

    def p_clip(self, op, ind):
        x, lo, hi = op.operands
        r = op.results[0]
        dt = r.type.dtype
        if not self.arr(r):
            mx, mn = self.mod.helper("rt_max2"), self.mod.helper("rt_min2")
            return f"{mn}({mx}({self.val(x, dt)}, {self.val(lo, dt)}), {self.val(hi, dt)})"
        self.natural = _promote([x.type.dtype, lo.type.dtype, hi.type.dtype])
        return f"np.minimum(np.maximum({self.ref(x)}, {self.ref(lo)}), {self.ref(hi)})"

    def p_cast(self, op, ind):
        (x,) = op.operands
        r = op.results[0]
        if x.type.dtype == r.type.dtype:
            return f"{self.ref(x)}.copy()" if self.arr(x) else self.ref(x)
        return cast_expr(self.ref(x), r.type)

    # reductions --------------------------------------------------------------------------------
    def reduce_axes(self, op, ind, x: Value, axes: tuple, kind: str, src: str | None = None):
        """Emit the reduction ``kind`` of array ``x`` over ``axes``; returns the result
        text (a scalar expression, or the name of a fresh array)."""
        nd = x.type.ndim
        src = src or self.ref(x)
        if tuple(sorted(axes)) == tuple(range(nd)):
            flat = f"{src}.ravel()" if nd != 1 else src
            fn = {"sum": "rt_psum", "prod": "rt_prod1", "max": "rt_max1", "min": "rt_min1",
                  "argmax": "rt_argmax1", "argmin": "rt_argmin1", "lse": "rt_lse1",
                  "norm": "rt_norm1", "mean": "rt_psum"}[kind]
            if nd != 1 and kind in ("argmax", "argmin"):
                flat = f"np.ascontiguousarray({src}).ravel()"
            e = f"{self.mod.helper(fn)}({flat})"
            if kind == "mean":
                e = f"{e} / {src}.size"
            return e
        kept = [k for k in range(nd) if k not in axes]
        red = [k for k in range(nd) if k in axes]
        rows = nd - 1 in axes
        perm = kept + red if rows else red + kept
        t = src if perm == list(range(nd)) else f"np.transpose({src}, {_shape_tuple([str(p) for p in perm])})"
        kdims = [f"{src}.shape[{k}]" for k in kept]
        rdims = [f"{src}.shape[{k}]" for k in red]
        shape2 = _shape_tuple([_prod(kdims), _prod(rdims)] if rows else [_prod(rdims), _prod(kdims)])
        z = self.tmp(ind, op, "z", f"np.ascontiguousarray({t}).reshape({shape2})")
        fn = {"sum": "sum", "prod": "prod", "max": "max", "min": "min", "argmax": "argmax",
              "argmin": "argmin", "lse": "lse", "norm": "norm", "mean": "sum"}[kind]
        fn = self.mod.helper(f"rt_{'rows' if rows else 'cols'}_{fn}")
        e = f"{fn}({z})"
        if kind == "mean":
            e = f"({e} / ({_prod(rdims)}))"
        return f"{e}.reshape({_shape_tuple(kdims)})"

    def _reduction(self, op, ind, kind):
        (x,) = op.operands
        r = op.results[0]
        dt = r.type.dtype
        if not self.arr(x):
            s = self.ref(x)
            if kind in ("argmax", "argmin"):
                return "0"
            if kind == "norm":
                return f"math.sqrt({_paren(self.val(x, dt))} * {_paren(self.val(x, dt))})"
            return self.val(x, dt)
        axes = norm_axes(op.attrs.get("axis"), x.type.ndim, op.name)
        src = self.ref(x)
        if kind in ("sum", "prod") and x.type.dtype == "bool":
            src = f"{src}.astype(np.int64)"
        if kind in ("mean", "lse", "norm") and x.type.dtype in ("bool", "i64"):
            src = f"{src}.astype(np.float64)"
        if src != self.ref(x):
            src = self.tmp(ind, op, "x", src)
        e = self.reduce_axes(op, ind, x, axes, kind, src)
        if kind in ("argmax", "argmin"):
            self.natural = "i64"
        elif kind in ("mean", "lse", "norm"):
            self.natural = T.float_of(x.type.dtype)
        else:
            self.natural = "i64" if x.type.dtype == "bool" else x.type.dtype
        return e

    def p_sum(self, op, ind): return self._reduction(op, ind, "sum")
    def p_mean(self, op, ind): return self._reduction(op, ind, "mean")
    def p_prod(self, op, ind): return self._reduction(op, ind, "prod")
    def p_max(self, op, ind): return self._reduction(op, ind, "max")
    def p_min(self, op, ind): return self._reduction(op, ind, "min")
    def p_logsumexp(self, op, ind): return self._reduction(op, ind, "lse")
    def p_norm(self, op, ind): return self._reduction(op, ind, "norm")
    def p_argmax(self, op, ind): return self._reduction(op, ind, "argmax")
    def p_argmin(self, op, ind): return self._reduction(op, ind, "argmin")

    def _scalars_n(self, op, helper):
        dt = op.results[0].type.dtype
        h = self.mod.helper(helper)
        vals = [self.val(v, dt) for v in op.operands]
        e = vals[0]
        for v in vals[1:]:
            e = f"{h}({e}, {v})"
        return e

    def p_maxn(self, op, ind): return self._scalars_n(op, "rt_max2")
    def p_minn(self, op, ind): return self._scalars_n(op, "rt_min2")

    def p_sum_to(self, op, ind):
        x, like = op.operands
        r = op.results[0]
        if not self.arr(x):
            return self.ref(x)
        src = self.ref(x)
        if x.type.dtype == "bool":
            src = self.tmp(ind, op, "x", f"{src}.astype(np.int64)")
        self.natural = "i64" if x.type.dtype == "bool" else x.type.dtype
        if not self.arr(like):
            return self.reduce_axes(op, ind, x, tuple(range(x.type.ndim)), "sum", src)
        lead = x.type.ndim - like.type.ndim
        static, unsure = list(range(lead)), []
        for k, dl in enumerate(like.type.shape):
            dx = x.type.shape[lead + k]
            if dl == 1:
                if dx != 1:
                    static.append(lead + k)
            elif isinstance(dl, int) or (dl is not None and dl == dx) or dx == 1:
                continue
            else:
                unsure.append(lead + k)
        lk = self.ref(like)
        if unsure:
            part = src
            if lead:
                part = self.tmp(ind, op, "s", self.reduce_axes(op, ind, x, tuple(range(lead)),
                                                               "sum", src))
            out = self.tmp(ind, op, "acc", f"np.zeros({lk}.shape, {NPDT[self.natural]})")
            self.line(ind, f"{self.mod.helper('rt_sum_into')}({part}, {out})", op)
            return out
        if not static:
            return f"{src}.copy()"
        e = self.reduce_axes(op, ind, x, tuple(static), "sum", src)
        if len(static) == x.type.ndim:
            return f"np.full({lk}.shape, {e})"
        s = self.tmp(ind, op, "s", e)
        return f"np.ascontiguousarray({s}).reshape({lk}.shape)"

    def p_broadcast_to(self, op, ind):
        x, like = op.operands
        r = op.results[0]
        if not self.arr(like):
            return self.ref(x)
        lk = self.ref(like)
        self.natural = x.type.dtype
        if not self.arr(x):
            return f"np.full({lk}.shape, {self.ref(x)})"
        src = self.ref(x)
        axis = op.attrs.get("axis")
        if axis is not None:
            axes = norm_axes(axis, like.type.ndim, "broadcast_to")
            dims, k = [], 0
            for a in range(like.type.ndim):
                if a in axes:
                    dims.append("1")
                else:
                    dims.append(f"{src}.shape[{k}]")
                    k += 1
            src = self.tmp(ind, op, "x", f"np.ascontiguousarray({src}).reshape({_shape_tuple(dims)})")
        return f"np.broadcast_to({src}, {lk}.shape).copy()"

    # linear algebra -------------------------------------------------------------------------
    def p_matmul(self, op, ind):
        a, b = op.operands
        r = op.results[0]
        dt = r.type.dtype
        wdt = "i64" if dt == "bool" else dt
        self.natural = wdt
        A, B = self.val(a, wdt), self.val(b, wdt)
        na, nb = a.type.ndim, b.type.ndim
        if na <= 2 and nb <= 2:
            blas = self._blas(op) is not None
            if blas:
                # a transposed matrix operand goes to BLAS as it is stored (BLAS reads
                # it transposed): no strided copy
                ta, tb = self._transposed(a, wdt), self._transposed(b, wdt)
                if ta is not None or tb is not None:
                    flags = ("t" if ta is not None else "n") * (na == 2) + \
                            ("t" if tb is not None else "n") * (nb == 2)
                    h = self.mod.helper(f"rt_fmm{na}{nb}_{flags}")
                    return f"{h}({A if ta is None else ta}, {B if tb is None else tb})"
            h = self.mod.helper(f"rt_{'f' if blas else ''}mm{na}{nb}")
            return f"{h}({A}, {B})"
        # batched: promote 1-D operands, broadcast the batch axes, (B, n, k) @ (B, k, m)
        if na == 1:
            A = self.tmp(ind, op, "a", f"{A}.reshape((1, {A}.shape[0]))")
        if nb == 1:
            B = self.tmp(ind, op, "b", f"{B}.reshape(({B}.shape[0], 1))")
        ra, rb = max(na, 2), max(nb, 2)
        nbatch = max(ra, rb) - 2
        bdims = []
        for k in range(nbatch):
            ia, ib = k - (nbatch - (ra - 2)), k - (nbatch - (rb - 2))
            da = f"{A}.shape[{ia}]" if ia >= 0 else None
            db = f"{B}.shape[{ib}]" if ib >= 0 else None
            bdims.append(da if db is None else db if da is None else f"max({da}, {db})")
        bs = self.tmp(ind, op, "bshape", _shape_tuple(bdims) if bdims else "()")
        A3 = self.tmp(ind, op, "a3", f"np.ascontiguousarray(np.broadcast_to({A}, {bs} + "
                                     f"({A}.shape[-2], {A}.shape[-1]))).reshape((-1, {A}.shape[-2], {A}.shape[-1]))")
        B3 = self.tmp(ind, op, "b3", f"np.ascontiguousarray(np.broadcast_to({B}, {bs} + "
                                     f"({B}.shape[-2], {B}.shape[-1]))).reshape((-1, {B}.shape[-2], {B}.shape[-1]))")
        R3 = self.tmp(ind, op, "r3", f"{self.mod.helper('rt_mm33')}({A3}, {B3})")
        tail = ([] if na == 1 else [f"{R3}.shape[1]"]) + ([] if nb == 1 else [f"{R3}.shape[2]"])
        shape = f"{bs} + {_shape_tuple(tail)}" if tail else bs
        return f"{R3}.reshape({shape})"

    p_dot = p_matmul

    def _blas(self, op: Op) -> str | None:
        """The dtype in which matrix product ``op`` goes to BLAS, or None."""
        a, b = op.operands
        dt = op.results[0].type.dtype
        wdt = "i64" if dt == "bool" else dt
        if wdt in ("f64", "f32") and (a.type.ndim, b.type.ndim) in ((2, 2), (2, 1), (1, 2)) \
                and _blas_available() and not self.mod.standalone:
            return wdt
        return None

    def _blas_reads_transposed(self, u: Op, v: Value) -> bool:
        """Matrix product ``u`` hands BLAS the matrix that ``v`` transposes."""
        wdt = self._blas(u) if u.name in ("matmul", "dot") else None
        return wdt is not None and self._transposed(v, wdt) is not None

    def _transposed(self, v: Value, dtype: str):
        """The text of ``x`` when ``v`` is ``transpose(x)`` of a 2-D ``x`` of ``dtype``."""
        x = _transpose_source(v)
        if x is None or v.type.dtype != dtype or x.type.dtype != dtype:
            return None
        if _transpose_source(x) is not None:
            return None         # transpose(transpose(y)): a C-contiguous view already
        return self.ref(x)

    def p_outer(self, op, ind):
        a, b = op.operands
        dt = op.results[0].type.dtype
        self.natural = dt
        parts = []
        for v in (a, b):
            s = self.val(v, dt)
            parts.append(f"{s}.ravel()" if self.arr(v) else f"np.full(1, {s})")
        return f"{self.mod.helper('rt_outer')}({parts[0]}, {parts[1]})"

    def p_transpose(self, op, ind):
        (x,) = op.operands
        if not self.arr(x):
            return self.ref(x)
        axes = op.attrs.get("axes")
        if axes is None:
            e = f"np.transpose({self.ref(x)})"
        else:
            perm = [int(a) % x.type.ndim for a in axes]
            e = f"np.transpose({self.ref(x)}, {_shape_tuple([str(p) for p in perm])})"
        return f"{e}.copy()" if self.view_needs_copy(op) else e

    @staticmethod
    def _solve_matrix(op: Op):
        """(X, transposed) for ``solve(X, b)`` or ``solve(X.T, b)``."""
        A = op.operands[0]
        X = _transpose_source(A)
        return (A, False) if X is None else (X, True)

    def _plan_lu(self) -> dict:
        """Solves in one region with the same float64 matrix X or its transpose (the
        reverse sweep of ``solve(X, b)`` solves with X.T) share one LU factorisation:
        ``{solve op: (X, transposed)}`` for every such group of two or more."""
        plan = {}

        def walk(region: Region):
            groups: dict = {}
            for op in region.ops:
                for r in op.regions:
                    walk(r)
                if op.name == "solve":
                    X, tr = self._solve_matrix(op)
                    if X.type.dtype == "f64":
                        groups.setdefault(X, []).append((op, tr))
            for X, members in groups.items():
                if len(members) > 1:
                    for op, tr in members:
                        plan[op] = (X, tr)
        walk(self.func.body)
        return plan

    def p_solve(self, op, ind):
        A, b = op.operands
        self.natural = "f64"
        plan = self.lu_plan.get(op)
        if plan is not None:
            X, tr = plan
            if X not in self.lu_names:
                lu, piv = self.fresh("lu"), self.fresh("piv")
                self.line(ind, f"# one LU factorisation of {self.ref(X)} for its solves "
                          f"(with {self.ref(X)} and its transpose)")
                self.line(ind, f"{lu}, {piv} = {self.mod.helper('rt_lu')}({self.ref(X)})", op)
                self.lu_names[X] = (lu, piv)
            lu, piv = self.lu_names[X]
            h = self.mod.helper("rt_lu_solve1" if b.type.ndim == 1 else "rt_lu_solve2")
            return f"{h}({lu}, {piv}, {self.val(b, 'f64')}, {tr})"
        h = self.mod.helper("rt_solve1" if b.type.ndim == 1 else "rt_solve2")
        return f"{h}({self.val(A, 'f64')}, {self.val(b, 'f64')})"

    def p_trace(self, op, ind):
        (x,) = op.operands
        dt = op.results[0].type.dtype
        self.natural = dt
        return f"{self.mod.helper('rt_trace')}({self.val(x, dt)})"

    def p_diag(self, op, ind):
        (x,) = op.operands
        self.natural = x.type.dtype
        h = "rt_diag_from" if x.type.ndim == 1 else "rt_diag_of"
        return f"{self.mod.helper(h)}({self.ref(x)})"

    # constructors ---------------------------------------------------------------------------
    def _fill(self, op, fn):
        r = op.results[0]
        dims = [self.ref(v) for v in op.operands]
        if not self.arr(r):
            return literal(0 if fn != "ones" else 1, r.type)
        return f"np.{fn}({_shape_tuple(dims)}, {NPDT[r.type.dtype]})"

    def p_zeros(self, op, ind): return self._fill(op, "zeros")
    def p_ones(self, op, ind): return self._fill(op, "ones")
    def p_empty(self, op, ind): return self._fill(op, "empty")

    def p_full(self, op, ind):
        r = op.results[0]
        fill = op.operands[0]
        dims = [self.ref(v) for v in op.operands[1:]]
        dt = r.type.dtype
        if not self.arr(r):
            return self.val(fill, dt)
        return f"np.full({_shape_tuple(dims)}, {self.val(fill, dt)}, {NPDT[dt]})"

    def p_eye(self, op, ind):
        r = op.results[0]
        n = self.ref(op.operands[0])
        return f"np.eye({n}, {n}, 0, {NPDT[r.type.dtype]})"

    def p_arange(self, op, ind):
        r = op.results[0]
        dts = [v.type.dtype for v in op.operands]
        self.natural = "i64" if all(d in ("i64", "bool") for d in dts) else "f64"
        return "np.arange(" + ", ".join(self.ref(v) for v in op.operands) + ")"

    def p_linspace(self, op, ind):
        s, e, n = op.operands
        self.natural = "f64"
        return f"{self.mod.helper('rt_linspace')}({self.ref(s)}, {self.ref(e)}, {self.ref(n)})"

    def _like(self, op, value):
        (x,) = op.operands[:1]
        r = op.results[0]
        if not self.arr(r):
            return literal(value, r.type)
        return f"np.full_like({self.ref(x)}, {literal(value, r.type)})"

    def p_zeros_like(self, op, ind): return self._like(op, 0)
    def p_ones_like(self, op, ind): return self._like(op, 1)

    def p_full_like(self, op, ind):
        x, fill = op.operands
        r = op.results[0]
        dt = r.type.dtype
        if not self.arr(r):
            return self.val(fill, dt)
        return f"np.full_like({self.ref(x)}, {self.val(fill, dt)})"

    def p_copy(self, op, ind):
        (x,) = op.operands
        return f"{self.ref(x)}.copy()" if self.arr(x) else self.ref(x)

    def p_array(self, op, ind):
        r = op.results[0]
        dt = r.type.dtype
        if not op.operands:
            return f"np.zeros(0, {NPDT[dt]})"
        elems = [self.val(v, dt) for v in op.operands]
        tup = "(" + ", ".join(elems) + ("," if len(elems) == 1 else "") + ")"
        if self.arr(op.operands[0]):
            return f"np.stack({tup})"
        return f"np.array({tup})"

    # indexing ----------------------------------------------------------------------------------
    def index_text(self, op, idx_vals) -> str:
        index = op.attrs.get("index")
        texts = [self.ref(v) for v in idx_vals]
        entries = ("i",) * len(texts) if index is None else tuple(index)
        out, k = [], 0
        for e in entries:
            if e == "i":
                out.append(texts[k])
                k += 1
            else:
                parts = []
                for has in e[1:]:
                    if has:
                        parts.append(texts[k])
                        k += 1
                    else:
                        parts.append("")
                s = f"{parts[0]}:{parts[1]}" + (f":{parts[2]}" if parts[2] else "")
                out.append(s)
        # x[t, :, :] is x[t]; Numba types the first as a strided ("A") view of a C
        # array and the second as C-contiguous, so loops over it vectorise
        while len(out) > 1 and out[-1] == ":":
            out.pop()
        return ", ".join(out)

    def p_getitem(self, op, ind):
        x = op.operands[0]
        r = op.results[0]
        if op in self.fwd_carry_of:
            return self.fwd_carry_of[op]
        idx = self.index_text(op, op.operands[1:])
        if op in self.windows:
            e = self.window_access(op, idx)
            c = self.carry_of.get(op)
            return e if c is None else f"{e} + {c}"
        if op in self.unchecked:
            e = self.unchecked_load(x, idx)
            c = self.carry_of.get(op)
            return e if c is None else f"{e} + {c}"
        e = f"{self.ref(x)}[{idx}]" if idx else self.ref(x)
        if self.arr(r) and self.view_needs_copy(op):
            return f"{e}.copy()"
        return e

    def _write(self, op, ind, sym):
        x, v = op.operands[:2]
        r = op.results[0]
        idx = self.index_text(op, op.operands[2:]) or "..."
        val = self.val(v, x.type.dtype) if not self.arr(v) else self.ref(v)
        if op in self.inplace:
            if op in self.carry_of:
                self.line(ind, f"{self.carry_of[op]} = {val}", op)
                return None
            if op in self.windows:
                self.line(ind, self.window_access(op, idx, sym, val), op)
                return None
            if op in self.unchecked:
                self.line(ind, self.unchecked_store(x, idx, sym, val), op)
                return None
            rank = self.view_rank(op)
            if self.arr(v) and rank == v.type.ndim and 1 <= rank <= 3:
                h = self.mod.helper(f"rt_{'add' if sym == '+=' else 'set'}_into{rank}")
                self.line(ind, f"{h}({self.ref(x)}[{idx}], {val})", op)
                return None
            self.line(ind, f"{self.ref(x)}[{idx}] {sym} {val}", op)
            return None
        name = self.ref(r)
        self.line(ind, f"{name} = {self.ref(x)}.copy()", op)
        self.line(ind, f"{name}[{idx}] {sym} {val}", op)
        return None

    def view_rank(self, op) -> int | None:
        """The rank of the view ``x[index]`` that setitem/scatter_add ``op`` writes, when
        its indices are integers and slices (else None)."""
        x = op.operands[0]
        if any(self.arr(v) for v in op.operands[2:]):
            return None
        index = op.attrs.get("index")
        entries = ("i",) * len(op.operands[2:]) if index is None else tuple(index)
        if not entries:
            return None
        return sum(1 for e in entries if e != "i") + x.type.ndim - len(entries)

    def p_setitem(self, op, ind): return self._write(op, ind, "=")
    def p_scatter_add(self, op, ind): return self._write(op, ind, "+=")

    def p_reshape(self, op, ind):
        x = op.operands[0]
        r = op.results[0]
        dims = [self.ref(v) for v in op.operands[1:]]
        if not self.arr(x):
            return f"np.full({_shape_tuple(dims)}, {self.ref(x)})" if self.arr(r) else self.ref(x)
        if not self.arr(r):
            return f"{self.ref(x)}.ravel()[0]"
        e = f"np.ascontiguousarray({self.ref(x)}).reshape({_shape_tuple(dims)})"
        return f"{e}.copy()" if self.view_needs_copy(op) else e

    def p_dim(self, op, ind):
        (x,) = op.operands
        return f"{self.ref(x)}.shape[{int(op.attrs.get('axis', 0))}]"

    # soft operators --------------------------------------------------------------------------
    def rows_of(self, op, ind, x: Value, axis, negate=False):
        """x's ``axis`` moved last and flattened: (name of the 2-D rows array, axes,
        perm, name of the transposed shape or None)."""
        nd = x.type.ndim
        axes = norm_axes(axis, nd, op.name)
        kept = [k for k in range(nd) if k not in axes]
        perm = kept + list(axes)
        src = self.val(x, "f64")
        if negate:
            src = f"-{_paren(src)}"
        t = src if perm == list(range(nd)) else \
            f"np.transpose({src}, {_shape_tuple([str(p) for p in perm])})"
        xs = self.ref(x)
        kd = [f"{xs}.shape[{k}]" for k in kept]
        rd = [f"{xs}.shape[{k}]" for k in axes]
        z = self.tmp(ind, op, "z", f"np.ascontiguousarray({t}).reshape(({_prod(kd)}, {_prod(rd)}))")
        return z, axes, perm, kd

    def cols_of(self, op, ind, x: Value, negate=False):
        """When ``op`` (entropy, or no regulariser) reduces over x's leading axes and
        keeps others: the arguments of the rt_cols_* kernels (no transpose): (x as a
        2-D array, reduced axes down the rows, kept axes along the columns; the kept
        dims; the row offsets or "None"; x's shape), with ``A`` and ``v`` for an operand
        ``A + v[:, None]`` (_plan_offsets).  Else None."""
        if op.attrs.get("reg", "entropy") != "entropy":
            return None
        off = self.offsets.get(op)
        if off is not None:
            assert not negate
            a, v = map(self.ref, off)
            return a, [f"{a}.shape[1]"], v, f"{a}.shape"
        if not self.cols_fit(op, x):
            return None
        nd = x.type.ndim
        axes = norm_axes(op.attrs.get("axis", -1), nd, op.name)
        src = self.val(x, "f64")
        if negate:
            src = f"-{_paren(src)}"
        xs = self.ref(x)
        kd = [f"{xs}.shape[{k}]" for k in range(len(axes), nd)]
        rd = [f"{xs}.shape[{k}]" for k in axes]
        z = self.tmp(ind, op, "z", f"np.ascontiguousarray({src}).reshape(({_prod(rd)}, {_prod(kd)}))")
        return z, kd, "None", f"{xs}.shape"

    # soft operators whose (last) result is the weights
    WEIGHTS = ("smax_arg", "smin_arg", "softmax", "sargmax", "sargmin")

    def rows_fit(self, op, x: Value) -> bool:
        """``op`` (entropy) reduces over x's trailing axes: its rows are x's own."""
        if op.attrs.get("reg", "entropy") != "entropy" or not isinstance(x.type, T.Array):
            return False
        nd = x.type.ndim
        axes = norm_axes(op.attrs.get("axis", -1), nd, op.name)
        return list(axes) == list(range(nd - len(axes), nd))

    def rows_weights(self, op, ind, helper, z: str, gamma: str, perm):
        """The call of ``rt_rows_<helper>_into`` writing the weights into their tape
        entry (take_dest), and the entry's name; (None, None) when they have none."""
        x = op.operands[0]
        if perm != list(range(x.type.ndim)) or not self.rows_fit(op, x):
            return None, None
        dest = self.take_dest(op.results[-1], ind, op, f"{self.ref(x)}.shape")
        if dest is None:
            return None, None
        d = dest if x.type.ndim == 2 else f"{dest}.reshape({z}.shape)"
        return f"{self.mod.helper(f'rt_rows_{helper}_into')}({z}, {gamma}, {d})", dest

    def cols_fit(self, op, x: Value) -> bool:
        """``op`` (entropy) reduces over x's leading axes and keeps others."""
        if op.attrs.get("reg", "entropy") != "entropy" or not isinstance(x.type, T.Array):
            return False
        nd = x.type.ndim
        axes = norm_axes(op.attrs.get("axis", -1), nd, op.name)
        return len(axes) < nd and list(axes) == list(range(len(axes)))

    def cols_weights(self, op, ind, helper, c, gamma: str):
        """(the call of ``rt_cols_<helper>``, a kernel that also gives the weights, on
        cols_of's ``c``; None) or, when the weights are pushed on a tape (take_dest),
        (the call of its ``_into`` form, which writes them into their tape entry; the
        entry's name).  The ``_into`` form of smax_arg returns the values only."""
        x = op.operands[0]
        dest = self.take_dest(op.results[-1], ind, op, c[3])
        if dest is None:
            return f"{self.mod.helper('rt_cols_' + helper)}({c[0]}, {c[2]}, {gamma})", None
        d = dest if x.type.ndim == 2 else f"{dest}.reshape({c[0]}.shape)"
        return f"{self.mod.helper(f'rt_cols_{helper}_into')}({c[0]}, {c[2]}, {gamma}, {d})", dest

    def _soft_map(self, op, ind, helper_call, negate=False, cols_helper=None):
        x = op.operands[0]
        c = self.cols_of(op, ind, x, negate) if cols_helper is not None else None
        g = self._gamma(op.operands[1]) if len(op.operands) > 1 else "1.0"
        if c is not None:
            call, dest = self.cols_weights(op, ind, cols_helper, c, g)
            q = self.tmp(ind, op, "q", call)
            self.natural = "f64"
            return q if dest is not None else f"{q}.reshape({c[3]})"
        z, axes, perm, kd = self.rows_of(op, ind, x, op.attrs.get("axis", -1), negate)
        if cols_helper is not None:
            call, dest = self.rows_weights(op, ind, cols_helper, z, g, perm)
            if dest is not None:
                self.line(ind, call, op)
                self.natural = "f64"
                return dest
        q = self.tmp(ind, op, "q", helper_call(z))
        self.natural = "f64"
        return self.from_rows(q, x, perm)

    def from_rows(self, q: str, x: Value, perm) -> str:
        """The rows array ``q`` (from ``rows_of``) back in ``x``'s shape."""
        xs = self.ref(x)
        e = f"{q}.reshape({_shape_tuple([f'{xs}.shape[{p}]' for p in perm])})"
        if perm != list(range(x.type.ndim)):
            inv = [int(k) for k in np.argsort(perm)]
            e = f"np.transpose({e}, {_shape_tuple([str(k) for k in inv])})"
        return e

    def _gamma(self, v):
        return self.val(v, "f64")

    def p_softmax(self, op, ind):
        h = self.mod.helper("rt_rows_softmax")
        return self._soft_map(op, ind, lambda z: f"{h}({z}, 1.0, False)",
                              cols_helper="softmax")

    def p_sparsemax(self, op, ind):
        h = self.mod.helper("rt_rows_softmax")
        return self._soft_map(op, ind, lambda z: f"{h}({z}, 1.0, True)")

    def _sarg(self, op, ind, negate):
        h = self.mod.helper("rt_rows_softmax")
        g = self._gamma(op.operands[1])
        l2 = op.attrs.get("reg", "entropy") == "l2"
        return self._soft_map(op, ind, lambda z: f"{h}({z}, {g}, {l2})", negate, "softmax")

    def p_sargmax(self, op, ind): return self._sarg(op, ind, False)
    def p_sargmin(self, op, ind): return self._sarg(op, ind, True)

    def _onehot(self, op, ind, pick_min):
        h = self.mod.helper("rt_rows_onehot")
        return self._soft_map(op, ind, lambda z: f"{h}({z}, {pick_min})")

    def p_onehot_argmax(self, op, ind): return self._onehot(op, ind, False)
    def p_onehot_argmin(self, op, ind): return self._onehot(op, ind, True)

    def _smax(self, op, ind, sign):
        """smax/smin of x: ``rt_rows_smax`` on x's rows, or ``rt_cols_smax`` down its
        columns when it reduces leading axes (cols_of)."""
        x, gamma = op.operands
        g = self._gamma(gamma)
        c = self.cols_of(op, ind, x, sign < 0)
        if c is not None:
            e, kd = f"{self.mod.helper('rt_cols_smax')}({c[0]}, {c[2]}, {g})", c[1]
        else:
            l2 = op.attrs.get("reg", "entropy") == "l2"
            z, axes, perm, kd = self.rows_of(op, ind, x, op.attrs.get("axis", -1), sign < 0)
            e = f"{self.mod.helper('rt_rows_smax')}({z}, {g}, {l2})"
        if sign < 0:
            e = f"-{e}"
        self.natural = "f64"
        if not kd:
            return f"({e})[0]"
        return f"({e}).reshape({_shape_tuple(kd)})"

    def p_smax(self, op, ind): return self._smax(op, ind, 1)
    def p_smin(self, op, ind): return self._smax(op, ind, -1)

    def _smax_arg(self, op, ind, sign):
        """(smax, sargmax) from one rt_rows/cols_smax_arg call (reverse mode's residual
        form); with the ``_into`` form when the weights go on a tape (take_dest)."""
        x = op.operands[0]
        g = self._gamma(op.operands[1])
        c = self.cols_of(op, ind, x, sign < 0)
        if c is not None:
            call, dest = self.cols_weights(op, ind, "smax_arg", c, g)
            perm, kd, shape = None, c[1], c[3]
        else:
            z, axes, perm, kd = self.rows_of(op, ind, x, op.attrs.get("axis", -1), sign < 0)
            call, dest = self.rows_weights(op, ind, "smax_arg", z, g, perm)
            l2 = op.attrs.get("reg", "entropy") == "l2"
            call = call or f"{self.mod.helper('rt_rows_smax_arg')}({z}, {g}, {l2})"
            shape = f"{self.ref(x)}.shape"
        if dest is not None:            # the weights are in their tape entry
            v = self.tmp(ind, op, "v", call)
        else:
            v, q = self.fresh("v"), self.fresh("q")
            self.line(ind, f"{v}, {q} = {call}", op)
        val = f"{v}[0]" if not kd else f"{v}.reshape({_shape_tuple(kd)})"
        self.line(ind, f"{self.ref(op.results[0])} = {'-' if sign < 0 else ''}{val}", op)
        if dest is None:
            qx = f"{q}.reshape({shape})" if perm is None else self.from_rows(q, x, perm)
            self.line(ind, f"{self.ref(op.results[1])} = {qx}", op)

    def p_smax_arg(self, op, ind): return self._smax_arg(op, ind, 1)
    def p_smin_arg(self, op, ind): return self._smax_arg(op, ind, -1)

    def _smaxn(self, op, ind, sign):
        g = self._gamma(op.operands[0])
        l2 = op.attrs.get("reg", "entropy") == "l2"
        xs = [self.val(v, "f64") for v in op.operands[1:]]
        if self.kernel_mode and not l2 and len(xs) < 8:
            return self._smaxn_lanes(op, ind, sign, g, xs)
        tup = "(" + ", ".join(xs) + ("," if len(xs) == 1 else "") + ")"
        self.natural = "f64"
        return f"{self.mod.helper('rt_smaxn')}({g}, {l2}, {sign}, {tup})"

    def _smaxn_lanes(self, op, ind, sign, g, xs):
        """rt_smaxn's arithmetic for entropy, branch-free (a wavefront kernel's lane; its
        gamma is checked before the kernel): the same operations in the same order."""
        neg = "-" if sign < 0 else ""
        mx = self.mod.helper("rt_max2")
        m = f"{neg}{_paren(xs[0])}"
        for x in xs[1:]:
            m = f"{mx}({m}, {neg}{_paren(x)})"
        m = self.tmp(ind, op, "m", m)
        fin = self.tmp(ind, op, "fin", f"abs({m}) < np.inf")
        mf = self.tmp(ind, op, "mf", f"{m} if {fin} else 0.0")
        rg = self.tmp(ind, op, "rg", f"min(1.0 / {_paren(g)}, {_DBL_MAX!r})")
        ex = self.mod.helper('rt_exp')
        if len(xs) in (2, 3) and soft.ONE_EXP_FEWER:
            # the first extreme entry's exp is exp(0) = 1 (ir/primitives/soft.py,
            # _first_extreme_free): the others go through the exps, the sum keeps its order
            ys = [f"{neg}{_paren(x)}" for x in xs]
            f0 = self.tmp(ind, op, "f0", f"{ys[0]} == {m}")
            if len(xs) == 2:
                ya = self.tmp(ind, op, "ya", f"{ys[1]} if {f0} else {ys[0]}")
                e = self.tmp(ind, op, "e", f"{ex}(({ya} - {mf}) * {rg})")
                terms = [f"(1.0 if {f0} else {e})", f"({e} if {f0} else 1.0)"]
            else:
                f1 = self.tmp(ind, op, "f1", f"({ys[1]} == {m}) & ({ys[0]} != {m})")
                f2 = self.tmp(ind, op, "f2", f"({ys[2]} == {m}) & ({ys[0]} != {m}) & ({ys[1]} != {m})")
                ya = self.tmp(ind, op, "ya", f"{ys[1]} if {f0} else {ys[0]}")
                yb = self.tmp(ind, op, "yb", f"{ys[1]} if {f2} else {ys[2]}")
                ea = self.tmp(ind, op, "ea", f"{ex}(({ya} - {mf}) * {rg})")
                eb = self.tmp(ind, op, "eb", f"{ex}(({yb} - {mf}) * {rg})")
                terms = [f"(1.0 if {f0} else {ea})",
                         f"(1.0 if {f1} else ({ea} if {f0} else {eb}))",
                         f"(1.0 if {f2} else {eb})"]
        else:
            terms = [f"{ex}(({neg}{_paren(x)} - {mf}) * {rg})" for x in xs]
        s = self.tmp(ind, op, "s", " + ".join(terms))
        lg = self.tmp(ind, op, "lg", f"{self.mod.helper('rt_log')}({s})")
        self.natural = "f64"
        out = f"({m} + {_paren(g)} * {lg}) if {fin} else {m}"
        return f"-({out})" if sign < 0 else out

    def p_smaxn(self, op, ind): return self._smaxn(op, ind, 1)
    def p_sminn(self, op, ind): return self._smaxn(op, ind, -1)

    def _spair(self, op, ind, sign):
        x, y, gamma = op.operands
        r = op.results[0]
        g = self._gamma(gamma)
        l2 = op.attrs.get("reg", "entropy") == "l2"
        self.natural = "f64"
        X, Y = self.val(x, "f64"), self.val(y, "f64")
        if not self.arr(r):
            return f"{self.mod.helper('rt_smaxn')}({g}, {l2}, {sign}, ({X}, {Y}))"
        nd = r.type.ndim
        dims = []
        for k in range(nd):
            parts = []
            for v, s in ((x, X), (y, Y)):
                i = k - (nd - v.type.ndim)
                if self.arr(v) and i >= 0:
                    parts.append(f"{s}.shape[{i}]")
            dims.append(parts[0] if len(parts) == 1 else f"max({parts[0]}, {parts[1]})")
        shp = self.tmp(ind, op, "shape", _shape_tuple(dims))
        xb = f"np.broadcast_to({X}, {shp})" if self.arr(x) else f"np.full({shp}, {X})"
        yb = f"np.broadcast_to({Y}, {shp})" if self.arr(y) else f"np.full({shp}, {Y})"
        return f"{self.mod.helper('rt_spair')}({xb}, {yb}, {g}, {l2}, {sign})"

    def p_smaximum(self, op, ind): return self._spair(op, ind, 1)
    def p_sminimum(self, op, ind): return self._spair(op, ind, -1)


# ---------------------------------------------------------------------- small helpers
def _promote(dts):
    out = dts[0]
    for d in dts[1:]:
        out = T.promote(out, d)
    return out


def _paren(s: str) -> str:
    """Parenthesise an operand text unless it is a plain name or a non-negative number."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*|[0-9.]+(e[-+]?[0-9]+)?|\(.*\)", s):
        if s.startswith("(") and not _balanced_outer(s):
            return f"({s})"
        return s
    return f"({s})"


def _transpose_source(v: Value):
    """``x`` when ``v`` is the 2-D transpose ``transpose(x)``, else None."""
    o = v.owner
    if isinstance(o, Op) and o.name == "transpose" and v.type.ndim == 2 and \
            [int(a) % 2 for a in (o.attrs.get("axes") or (1, 0))] == [1, 0]:
        return o.operands[0]
    return None


def _balanced_outer(s: str) -> bool:
    depth = 0
    for i, c in enumerate(s):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0 and i != len(s) - 1:
                return False
    return True


def cast_expr(expr: str, t: T.Type) -> str:
    dt = t.dtype
    if isinstance(t, T.Array):
        if dt == "bool":
            return f"({_paren(expr)} != 0)"
        return f"{_paren(expr)}.astype({NPDT[dt]})"
    if dt == "bool":
        return f"({_paren(expr)} != 0)"
    return f"{NPDT[dt]}({expr})"


def numba_type(t: T.Type) -> str:
    if isinstance(t, T.Array):
        return f"{NBDT[t.dtype]}[{', '.join([':'] * t.ndim)}]"
    return NBDT[t.dtype]


def _rename_names(text: str, alias: dict, keep_defs=frozenset()) -> str:
    """Rename the names ``alias`` maps wherever they are read or bound as plain names
    (not attributes ``x.name``, keyword arguments ``name=`` or the names of the functions
    in ``keep_defs``); ``import M`` of a renamed module becomes ``import M as alias``."""
    if not alias:
        return text
    import io
    import tokenize
    toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in (tokenize.NL, tokenize.COMMENT)]
    edits = []
    for k, tok in enumerate(toks):
        if tok.type != tokenize.NAME or tok.string not in alias:
            continue
        prev = toks[k - 1] if k else None
        nxt = toks[k + 1] if k + 1 < len(toks) else None
        if prev is not None and prev.string == "." and prev.type == tokenize.OP:
            continue
        if nxt is not None and nxt.string == "=" and prev is not None and prev.string in ("(", ","):
            continue
        if prev is not None and prev.string == "def" and tok.string in keep_defs:
            continue
        new = alias[tok.string]
        if prev is not None and prev.string == "import":
            new = f"{tok.string} as {new}"
        edits.append((tok.start[0], tok.start[1], tok.end[1], new))
    lines = text.splitlines(keepends=True)
    for row, c0, c1, new in sorted(edits, reverse=True):
        ln = lines[row - 1]
        lines[row - 1] = ln[:c0] + new + ln[c1:]
    return "".join(lines)


def numba_item_type(t: T.Type) -> str:
    """The Numba type (as source) of the items of a tape of ``t`` (arrays pushed as
    C-contiguous copies)."""
    if isinstance(t, T.Array):
        dims = [":"] * (t.ndim - 1) + ["::1"]
        return f"numba.{NBDT[t.dtype]}[{', '.join(dims)}]"
    if isinstance(t, T.Scalar):
        return f"numba.{NBDT[t.dtype]}"
    raise CodegenError(f"cpu backend: a tape of {t} is not supported")


def _with_comment(line: str, comment: str) -> str:
    if not comment:
        return line
    width = 55
    if len(line) <= width - 2:
        return line.ljust(width) + "# " + comment
    return line + "  # " + comment


def _ascii(s: str) -> str:
    return s.encode("ascii", "backslashreplace").decode("ascii")


def _safe_doc(s: str) -> str:
    return _ascii(s).replace("\\", "\\\\").replace('"', "'")


def _plain(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def generate(program: Program, keys, standalone: bool = False, public: dict | None = None,
             boundscheck: bool = True, title: str = "") -> Generated:
    """The module text for the functions ``keys`` of ``program`` and their callees."""
    if isinstance(keys, str):
        keys = [keys]
    return ModuleGen(program, list(keys), standalone=standalone, public=public,
                     boundscheck=boundscheck, title=title).generate()
