"""``@dp.jit``: compile a Python function written in the dplang language.

    import numpy as np
    import dplang as dp

    @dp.jit
    def dtw(D):
        n, m = D.shape
        R = np.full((n + 1, m + 1), np.inf)
        ...

The decorated function's source (``inspect.getsource``) is parsed by the same parser as
``.dp`` files (``dsl.parser.parse_function``), with line and column offsets so that every
error points at the Python file.  Types come from the arguments of each call: one
specialisation per argument signature (the dtype and rank of every argument; sizes are
free), compiled once and cached.  Names the body does not assign are resolved in the
function's globals (and closure) when a specialisation is compiled:

* another ``@dp.jit`` function becomes a callee in the same program (specialised on the
  argument types of the call);
* a number (``int``, ``float``, ``bool``, a NumPy scalar) is inlined as a constant;
* the modules ``numpy``, ``numpy.linalg``, ``math``, ``scipy``, ``scipy.special`` and
  ``dplang`` under any name (``import numpy as onp``), NumPy dtypes, and the functions
  that are dplang built-ins (``from numpy import exp``, ``from dplang import smax``,
  ``dp.grad``) mean the built-ins;
* anything else (an array, a plain Python function, a string, ...) is a located
  ``DPTypeError`` at its first use.

The object returned is a ``JitFunction``.  The protocol the transformations of
``dplang.api`` rely on: ``param_names``, ``specialise(*args) -> dplang.api.Function``,
``__call__``, and ``ir(stage)`` / ``source()`` / ``dot()`` of the latest specialisation.
See ``docs/jit.md``.
"""
from __future__ import annotations

import builtins
import dataclasses
import functools
import inspect
import linecache
import math
import sys
import types as pytypes

import numpy as np

from dplang.api import Module
from dplang.errors import DPError, DPTypeError
from dplang.ir import types as T

LANGUAGE_DECORATORS = ("smooth", "argmin", "root", "fixed_point")


def jit(fn=None, *, backend: str | None = None):
    """Compile a Python function written in the dplang language (SPEC section 3).

    Usable as ``@dp.jit`` and ``@dp.jit(backend="cpu")``.  ``backend`` is one of
    ``dplang.api.BACKENDS``; by default ``dplang.api.DEFAULT_BACKEND`` when a
    specialisation is compiled."""
    if backend is not None:
        from dplang.api import BACKENDS
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if fn is None:
        return lambda f: jit(f, backend=backend)
    if isinstance(fn, JitFunction):
        return fn if backend is None or backend == fn._backend else \
            JitFunction(fn.py_func, backend)
    if not isinstance(fn, pytypes.FunctionType):
        raise TypeError(f"dp.jit takes a Python function, got {type(fn).__name__}")
    return JitFunction(fn, backend)


# ===================================================================== the object
class JitFunction:
    """A Python function compiled by dplang, one specialisation per argument signature."""

    def __init__(self, fn, backend: str | None = None):
        self.py_func = fn
        self._backend = backend
        functools.update_wrapper(self, fn)
        sig = inspect.signature(fn)
        self.param_names = list(sig.parameters)
        self._parsed = None                 # (FuncDef, filename, file_source)
        self._specs: dict = {}              # signature key -> dplang.api.Function
        self._last = None                   # the latest specialisation used
        self._extra: tuple = ()             # decorators added by decorate()
        self._info_cache = None

    def __repr__(self):
        return f"<dplang jit function {self.__qualname__}>"

    @property
    def backend(self) -> str:
        from dplang import api
        return self._backend or api.DEFAULT_BACKEND

    @property
    def specialisations(self) -> dict:
        """The compiled specialisations: ``{parameter types as text: Function}``."""
        out = {}
        for f in self._specs.values():
            text = ", ".join(f"{n}: {v.type}" for n, v in zip(f.func.param_names, f.func.params))
            out[f"({text})"] = f
        return out

    # -- calling ----------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        args = self._bind(args, kwargs)
        return self._specialise(args)(*args)

    def specialise(self, *args, **kwargs):
        """The compiled ``dplang.api.Function`` for these arguments' signature (dtype and
        rank of each), compiled on first use and cached."""
        return self._specialise(self._bind(args, kwargs))

    def _bind(self, args, kwargs) -> list:
        self._fdef()        # the source is parsed first: unsupported signatures are located
        names = self.param_names
        name = self.__name__
        if len(args) > len(names):
            raise DPTypeError(f"{name}() takes {len(names)} argument(s) but {len(args)} were "
                              f"given", self._def_loc())
        for k in kwargs:
            if k not in names:
                raise DPTypeError(f"{name}() has no parameter '{k}'", self._def_loc())
            if names.index(k) < len(args):
                raise DPTypeError(f"{name}() got argument '{k}' twice", self._def_loc())
        out = list(args)
        for k in range(len(args), len(names)):
            if names[k] not in kwargs:
                raise DPTypeError(f"{name}() missing argument '{names[k]}'", self._def_loc())
            out.append(kwargs[names[k]])
        return out

    def _specialise(self, args):
        fdef = self._fdef()
        types = []
        key = []
        for p, a in zip(fdef.params, args):
            t = arg_type(a, p.name, p.loc)
            types.append(t)
            # an annotated parameter has one type whatever the argument: it is converted
            key.append(None if p.annotation is not None else (t.dtype, getattr(t, "ndim", 0)))
        backend = self.backend
        key = (backend, tuple(key))
        f = self._specs.get(key)
        if f is None:
            f = self._compile(types, backend)
            self._specs[key] = f
        self._last = f
        return f

    def _compile(self, types, backend):
        from dplang import api
        from dplang.dsl.program import Loader
        api._check_backend(backend)
        fdef, filename, file_source = self._info()
        loader = Loader(jit_mode=True)
        key = register(loader, self)
        try:
            lw = loader.lower_specialised(key, types, fdef)
        except DPError as exc:
            if exc.note is None:
                shown = ", ".join(f"{p.name}: {_show(t)}" for p, t in zip(fdef.params, types))
                exc.note = f"while compiling {fdef.name}({shown}) for the types of its arguments"
                exc.args = (exc.render(),)
            raise
        func = lw.func
        _check_result_annotation(fdef, func)
        prog = loader.program
        prog.filename = filename
        prog.exports[fdef.name] = func.name
        prog.loader = loader
        module = JitModule(prog, file_source, filename, backend)
        fn = api.Function(module, func.name, fdef.name)
        fn.__name__ = fdef.name
        return fn

    def decorate(self, kind: str, fn, **options) -> "JitFunction":
        """This function with the implicit-differentiation decorator ``@kind(fn, **options)``
        of SPEC 2.4 (``kind`` one of ``argmin``, ``root``, ``fixed_point``; ``fn`` a jitted
        function; options ``solver``, ``tol``, ``maxiter``), as if it were written above the
        ``def``.  For the API's ``dp.argmin(obj, ...)`` applied to a jitted function.  When
        the source already has a ``@kind(...)`` decorator the compiler reads that one, and
        this returns ``self``."""
        if kind not in ("argmin", "root", "fixed_point"):
            raise ValueError(f"decorate: unknown decorator {kind!r} (argmin, root, fixed_point)")
        if not isinstance(fn, JitFunction):
            raise TypeError(f"@{kind} needs a @dp.jit function, got {type(fn).__name__}")
        for k in options:
            if k not in ("solver", "tol", "maxiter"):
                raise TypeError(f"@{kind} has no option '{k}' (solver, tol, maxiter)")
        fdef = self._fdef()
        if any(_decorator_name(d.expr) == kind for d in fdef.decorators):
            return self
        out = JitFunction(self.py_func, self._backend)
        out._parsed = self._parsed
        out._extra = self._extra + ((kind, fn, dict(options)),)
        return out

    # -- inspection (the latest specialisation) --------------------------------------
    def _latest(self):
        if self._last is None:
            raise DPError(f"'{self.__name__}' has not been compiled yet: its types come from "
                          f"the arguments of a call; call it first, or use "
                          f"{self.__name__}.specialise(*args)")
        return self._last

    def ir(self, stage: str = "ssa") -> str:
        """The IR of the latest specialisation after ``stage`` (SPEC section 3)."""
        return self._latest().ir(stage)

    def source(self) -> str:
        """The generated code of the latest specialisation (backends that generate code)."""
        return self._latest().source()

    def dot(self, stage: str = "ssa") -> str:
        """Graphviz text of the IR of the latest specialisation."""
        return self._latest().dot(stage)

    # -- source -------------------------------------------------------------------
    def _def_loc(self):
        try:
            return self._fdef().loc
        except DPError:
            return None

    def _fdef(self):
        return self._info()[0]

    def _info(self):
        if self._parsed is None:
            self._parsed = parse_py_function(self.py_func)
        if not self._extra:
            return self._parsed
        if self._info_cache is None:
            fdef, filename, file_source = self._parsed
            self._info_cache = (dataclasses.replace(fdef, decorators=list(fdef.decorators) + [
                _synth_decorator(fdef.loc, kind, fn, opts) for kind, fn, opts in self._extra]),
                filename, file_source)
        return self._info_cache


class JitModule(Module):
    """The module of one specialisation; its pipeline stages are computed once."""

    def _stage_program(self, stage):
        cache = self.__dict__.setdefault("_stage_cache", {})
        if stage not in cache:
            cache[stage] = Module._stage_program(self, stage)
        return cache[stage]


def _synth_decorator(loc, kind, fn, opts):
    """The AST of ``@kind(fn, solver=..., tol=..., maxiter=...)`` (located at the def)."""
    from dplang.dsl import ast as A
    kws = []
    for k, v in opts.items():
        if v is None:
            continue
        if isinstance(v, str):
            val = A.Str(loc, v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            val = A.Num(loc, v)
        else:
            raise TypeError(f"@{kind}: {k}= must be a string or a number, got {v!r}")
        kws.append(A.Keyword(loc, k, val))
    return A.Decorator(loc, A.Call(loc, A.Name(loc, kind), [A.Name(loc, fn.__name__)], kws))


def _show(t) -> str:
    if isinstance(t, T.Array):
        return f"{t.dtype}[{', '.join(':' for _ in t.shape)}]"
    return str(t)


def _check_result_annotation(fdef, func):
    if fdef.returns is None:
        return
    from dplang.dsl.lower import annotation_type
    rt = annotation_type(fdef.returns, "the result type")
    rts = rt if isinstance(rt, list) else [rt]
    got = func.result_types
    kind = {"f64": "f", "f32": "f", "i64": "i", "bool": "b"}
    # the kind (float, integer, bool) and the rank must agree: ``-> float`` also fits an
    # f32 result, as the annotation is Python's too
    ok = len(rts) == len(got) and (isinstance(rt, list) == func.returns_tuple or len(rts) == 1) \
        and all(kind[a.dtype] == kind[b.dtype] and getattr(a, "ndim", 0) == getattr(b, "ndim", 0)
                for a, b in zip(rts, got))
    if not ok:
        shown = ", ".join(str(t) for t in got)
        raise DPTypeError(f"'{fdef.name}' returns {shown}, which does not match its result "
                          f"annotation", fdef.returns)


# ===================================================================== argument types
def arg_type(a, name: str, loc=None):
    """The dplang type of a Python argument: ``float`` -> ``f64``, ``int`` -> ``i64``,
    ``bool``; NumPy scalars and arrays keep their dtype (``float32`` -> ``f32``, any integer
    dtype -> ``i64``, ``float16`` -> ``f32``); lists become arrays."""
    if isinstance(a, (bool, np.bool_)):
        return T.Scalar("bool")
    if isinstance(a, int):
        return T.Scalar("i64")
    if isinstance(a, float):
        return T.Scalar("f64")
    if isinstance(a, (np.ndarray, np.generic, list, tuple)):
        try:
            arr = np.asarray(a)
        except Exception:
            arr = None
        if arr is not None and arr.dtype != object and arr.dtype.kind in "biuf":
            kind = arr.dtype.kind
            if kind == "b":
                dt = "bool"
            elif kind in "iu":
                dt = "i64"
            elif arr.dtype.itemsize <= 4:
                dt = "f32"
            else:
                dt = "f64"
            return T.Array(dt, (None,) * arr.ndim) if arr.ndim else T.Scalar(dt)
    what = type(a).__name__
    if isinstance(a, np.ndarray):
        what = f"an array of {a.dtype}"
    raise DPTypeError(f"argument '{name}': dplang takes numbers and arrays of bool, integers "
                      f"and floats, got {what}", loc)


# ===================================================================== parsing
def parse_py_function(fn):
    """Parse a Python function's source with the dplang parser; returns
    ``(FuncDef, filename, file_source)``.  Decorators other than the language's
    (``smooth``, ``argmin``, ``root``, ``fixed_point``, spelled bare or ``dp.X``) are
    Python's business and are dropped; ``jit`` is one of them."""
    from dplang.dsl.parser import parse_function
    try:
        lines, lnum = inspect.getsourcelines(fn)
    except (OSError, TypeError) as exc:
        raise DPError(f"@dp.jit needs the source of '{fn.__qualname__}' and cannot get it "
                      f"({exc}); define the function in a file") from None
    filename = inspect.getsourcefile(fn) or fn.__code__.co_filename
    file_lines = linecache.getlines(filename, fn.__globals__)
    file_source = "".join(file_lines) if file_lines else None
    indent = lines[0][:len(lines[0]) - len(lines[0].lstrip(" \t"))]
    text = []
    for ln in lines:
        if ln.startswith(indent):
            text.append(ln[len(indent):])
        else:
            # a continuation line indented less than the def (inside brackets)
            stripped = ln.lstrip(" \t")
            text.append(ln[min(len(indent), len(ln) - len(stripped)):])
    text = _blank_foreign_decorators(text)
    source = "".join(text)
    fdef = parse_function(source, filename, line_offset=lnum - 1, col_offset=len(indent),
                          file_source=file_source)
    kept = [d for d in fdef.decorators if _decorator_name(d.expr) in LANGUAGE_DECORATORS]
    params = [dataclasses.replace(p, annotation=None) if _python_annotation(p.annotation) else p
              for p in fdef.params]
    returns = None if _python_annotation(fdef.returns) else fdef.returns
    fdef = dataclasses.replace(fdef, decorators=kept, params=params, returns=returns)
    return fdef, filename, file_source


PYTHON_ANNOTATIONS = ("ndarray", "NDArray", "ArrayLike", "Any", "Array", "Sequence", "list",
                      "tuple", "Tuple", "Optional", "Union")


def _python_annotation(e) -> bool:
    """An annotation for Python's type checkers (``np.ndarray``, ``npt.NDArray[np.float64]``,
    ``Any``, a string), not a dplang type: the parameter's type is inferred instead."""
    from dplang.dsl import ast as A
    if e is None:
        return False
    if isinstance(e, A.Str):
        return True
    if isinstance(e, A.Subscript):
        e = e.value
    if isinstance(e, A.Name):
        return e.id in PYTHON_ANNOTATIONS
    if isinstance(e, A.Attribute):
        return e.attr in PYTHON_ANNOTATIONS
    return False


def _blank_foreign_decorators(lines: list) -> list:
    """Blank (keeping line numbers) the lines of decorators that are not the language's,
    so that any Python decorator expression may sit above ``@dp.jit``."""
    import ast as pyast
    try:
        tree = pyast.parse("".join(lines))
    except SyntaxError:
        return lines
    defs = [n for n in tree.body if isinstance(n, (pyast.FunctionDef, pyast.AsyncFunctionDef))]
    if not defs:
        return lines
    out = list(lines)
    for d in defs[0].decorator_list:
        if _py_decorator_name(d) in LANGUAGE_DECORATORS:
            continue
        for k in range(d.lineno - 1, d.end_lineno):
            out[k] = "\n"
    return out


def _py_decorator_name(d):
    import ast as pyast
    if isinstance(d, pyast.Call):
        d = d.func
    if isinstance(d, pyast.Name):
        return d.id
    if isinstance(d, pyast.Attribute) and isinstance(d.value, pyast.Name) and \
            d.value.id in ("dp", "dplang"):
        return d.attr
    return None


def _decorator_name(e):
    from dplang.dsl import ast as A
    if isinstance(e, A.Call):
        e = e.func
    if isinstance(e, A.Name):
        return e.id
    if isinstance(e, A.Attribute) and isinstance(e.value, A.Name) and \
            e.value.id in ("dp", "dplang"):
        return e.attr
    return None


# ===================================================================== programs
def register(loader, jf: JitFunction) -> str:
    """Register a jitted function (and, lazily, what it calls) in a Loader; its key."""
    keys = loader.__dict__.setdefault("jit_keys", {})
    if id(jf) in keys:
        return keys[id(jf)][0]
    fdef, filename, file_source = jf._info()
    key = fdef.name
    if key in loader.defs:
        base = f"{jf.__module__}.{fdef.name}"
        key, n = base, 1
        while key in loader.defs:
            key = f"{base}_{n}"
            n += 1
    ctx = _make_ctx(loader, jf, fdef, key, filename, file_source)
    loader.defs[key] = (ctx, fdef)
    keys[id(jf)] = (key, jf)           # the object is kept so its id stays unique
    return key


def _make_ctx(loader, jf, fdef, key, filename, file_source):
    from dplang.dsl import ast as A
    from dplang.dsl.program import ModuleCtx

    class JitCtx(ModuleCtx):
        """The scope of a jitted function: its Python globals and closure."""

        def __init__(self):
            mod = A.Module(fdef.loc, filename, file_source or "", [], [], [fdef])
            super().__init__(loader, mod, key[:len(key) - len(fdef.name)],
                             require_annotations=False)
            self.funcs[fdef.name] = fdef
            self.jf = jf
            self.locals = _assigned_names(fdef)
            self.name_locs = _name_locs(fdef)
            self.resolved: dict = {}
            self.extra = {f.__name__: f for _, f, _ in jf._extra}   # decorate()'s functions

        def const_value(self, name):
            r = self.resolve_global(name)
            if r is None:
                return None
            kind, v = r
            from dplang.dsl.lower import DtypeVal, FuncRef, ModRef
            if kind == "const":
                return v
            if kind == "module":
                return ModRef(v)
            if kind == "dtype":
                return DtypeVal(v)
            if kind == "builtin":
                return FuncRef("builtin:" + v, v)
            return None                  # a jitted function: func_key gives it

        def func_key(self, name):
            if name in self.extra:
                return register(loader, self.extra[name])
            if name in self.locals:
                return None
            r = self.resolve_global(name)
            if r is not None and r[0] == "jit":
                return register(loader, r[1])
            return None

        def resolve_global(self, name):
            if name in self.locals:
                return None
            if name not in self.resolved:
                found, value = _lookup(jf.py_func, name)
                self.resolved[name] = classify(name, value, self.name_locs.get(name)) \
                    if found else None
            return self.resolved[name]

    return JitCtx()


def _lookup(fn, name):
    """``(found, value)`` of a free name of ``fn``: its closure, then its globals."""
    code = fn.__code__
    if fn.__closure__ and name in code.co_freevars:
        cell = fn.__closure__[code.co_freevars.index(name)]
        try:
            return True, cell.cell_contents
        except ValueError:               # an empty cell: the name is not bound yet
            return False, None
    if name in fn.__globals__:
        return True, fn.__globals__[name]
    return False, None


_MODULES = {"numpy": "np", "numpy.linalg": "np.linalg", "math": "math", "scipy": "scipy",
            "scipy.special": "scipy.special", "dplang": "dp"}


def classify(name: str, value, loc):
    """What a global means inside a jitted function: ``("jit", JitFunction)``,
    ``("const", number)``, ``("module", path)``, ``("dtype", dt)``, ``("builtin", name)``;
    a located error for anything else."""
    if isinstance(value, JitFunction):
        return ("jit", value)
    if isinstance(value, (bool, np.bool_)):
        return ("const", bool(value))
    if isinstance(value, (int, np.integer)):
        return ("const", int(value))
    if isinstance(value, (float, np.floating)):
        return ("const", float(value))
    if isinstance(value, pytypes.ModuleType):
        path = _MODULES.get(value.__name__)
        if path is None:
            raise DPTypeError(f"module '{name}' ({value.__name__}) cannot be used in a jitted "
                              f"function: only numpy, math, scipy.special and dplang spellings "
                              f"of the built-ins are known", loc)
        return ("module", path)
    dt = _dtype_of(value)
    if dt is not None:
        return ("dtype", dt)
    b = builtin_objects().get(id(value))
    if b is not None and b[0] is value:
        return ("builtin", b[1])
    if isinstance(value, np.ndarray):
        raise DPTypeError(f"'{name}' is a global NumPy array; a jitted function reads only "
                          f"numbers from its globals: pass the array as an argument", loc)
    from dplang import api
    if hasattr(value, "specialise") and hasattr(value, "param_names"):
        raise DPTypeError(f"'{name}' is a transformed function ({type(value).__name__}); inside "
                          f"a jitted function write the transformation where it is called, as "
                          f"in dp.grad(f)(x)", loc)
    if isinstance(value, api.Function):
        raise DPTypeError(f"'{name}' is a function of a compiled .dp module; a jitted "
                          f"function can call other @dp.jit functions only", loc)
    if isinstance(value, (pytypes.FunctionType, pytypes.BuiltinFunctionType, np.ufunc)) or \
            callable(value):
        what = "a Python function" if isinstance(value, pytypes.FunctionType) else \
            f"a Python callable ({type(value).__name__})"
        raise DPTypeError(f"'{name}' is {what}, not a dplang built-in or a @dp.jit function: "
                          f"decorate it with @dp.jit to call it from a jitted function", loc)
    raise DPTypeError(f"'{name}' is a global of type {type(value).__name__}, which a jitted "
                      f"function cannot use (it reads numbers, @dp.jit functions and "
                      f"numpy/math/dplang names from its globals)", loc)


def _dtype_of(value):
    if value is float:
        return "f64"
    if value is int:
        return "i64"
    if value is bool:
        return "bool"
    try:
        if isinstance(value, type) and issubclass(value, np.generic):
            dt = np.dtype(value)
            if dt.kind in "biuf":
                return T.dtype_of_numpy(dt)
    except TypeError:
        return None
    return None


def builtin_objects() -> dict:
    """``id(obj) -> (obj, built-in name)`` for the Python objects that are dplang
    built-ins: ``np.exp``, ``math.exp``, ``dp.smax``, ``np.linalg.solve``, ``dp.grad``...
    (scipy.special's when scipy is already imported)."""
    from dplang import eager
    from dplang.dsl.builtins import ALIASES, BUILTINS
    sources = [np, math, eager]
    if "scipy.special" in sys.modules:
        sources.append(sys.modules["scipy.special"])
    table: dict = {}
    for name in sorted(BUILTINS) + sorted(ALIASES):
        target = ALIASES.get(name, name)
        if target in ("len", "float", "int", "bool"):
            continue
        for mod in sources:
            obj = getattr(mod, name, None)
            if obj is not None and callable(obj) and not isinstance(obj, type):
                table.setdefault(id(obj), (obj, target))
    for obj, target in [(np.linalg.solve, "solve"), (np.linalg.norm, "norm"),
                        (builtins.min, "min"), (builtins.max, "max"), (builtins.abs, "abs"),
                        (builtins.len, "len"), (builtins.range, "range")]:
        table.setdefault(id(obj), (obj, target))
    if "scipy.special" in sys.modules:
        obj = getattr(sys.modules["scipy.special"], "expit", None)
        if obj is not None:
            table.setdefault(id(obj), (obj, "sigmoid"))
    import dplang
    for name in ("grad", "value_and_grad", "jvp", "vjp"):
        obj = getattr(dplang, name, None)
        if obj is not None:
            table.setdefault(id(obj), (obj, name))
    return table


# ===================================================================== AST helpers
def _assigned_names(fdef) -> set:
    """The names a function binds (parameters, assignment targets, loop variables): as
    in Python, they are local everywhere in the function."""
    from dplang.dsl import ast as A
    out = {p.name for p in fdef.params}

    def target(t):
        if isinstance(t, A.Name):
            out.add(t.id)
        elif isinstance(t, (A.Tuple, A.List)):
            for x in t.elts:
                target(x)

    def walk(stmts):
        for s in stmts:
            if isinstance(s, A.Assign):
                for t in s.targets:
                    target(t)
            elif isinstance(s, A.AugAssign):
                target(s.target)
            elif isinstance(s, A.For):
                out.add(s.var)
            for k in ("body", "orelse"):
                if isinstance(getattr(s, k, None), list):
                    walk(getattr(s, k))
    walk(fdef.body)
    return out


def _name_locs(fdef) -> dict:
    """The first location of every name read in a function (decorators included)."""
    from dplang.dsl import ast as A
    out: dict = {}

    def walk(x):
        if isinstance(x, A.Name):
            out.setdefault(x.id, x.loc)
        if isinstance(x, A.Node):
            for k, v in vars(x).items():
                if k != "loc" and isinstance(v, (A.Node, list)):
                    walk(v)
        elif isinstance(x, list):
            for y in x:
                walk(y)
    walk([d.expr for d in fdef.decorators])
    walk(fdef.body)
    return out
