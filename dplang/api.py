"""The Python API: ``load``, ``compile``, and compiled modules and functions."""
from __future__ import annotations

import os

import numpy as np

from dplang.errors import DPError, DPShapeError, DPTypeError, DPNameError
from dplang.ir import types as T

BACKENDS = ("interp", "cpu", "cuda")
DEFAULT_BACKEND = "interp"


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend != "interp":
        try:
            import importlib
            importlib.import_module(f"dplang.backends.{backend}")
        except ImportError:
            raise DPError(f"backend {backend!r} is not available in this build "
                          f"(use backend='interp')")
    return backend


def load(path: str, backend: str | None = None) -> "Module":
    """Load a ``.dp`` file (and what it imports) as a module of compiled functions."""
    try:
        with open(path) as fh:
            source = fh.read()
    except OSError as exc:
        raise DPError(f"cannot read {path}: {exc.strerror}") from None
    return compile(source, filename=path, backend=backend)


def compile(source: str, filename: str = "<string>", backend: str | None = None) -> "Module":
    """Compile ``.dp`` source text into a module."""
    from dplang.dsl.program import load_program
    backend = _check_backend(backend or DEFAULT_BACKEND)
    program = load_program(source, filename)
    return Module(program, source, filename, backend)


class Module:
    """A compiled ``.dp`` module: its functions are attributes."""

    def __init__(self, program, source, filename, backend):
        self._program = program
        self._source = source
        self._filename = filename
        self._backend = backend
        self._funcs: dict = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._program.exports:
            raise AttributeError(f"module {self._filename!r} has no function {name!r}")
        if name not in self._funcs:
            self._funcs[name] = Function(self, self._program.exports[name], name)
        return self._funcs[name]

    def __dir__(self):
        return sorted(self._program.exports)

    @property
    def functions(self) -> list:
        return sorted(self._program.exports)

    def ir(self, stage: str = "ssa") -> str:
        from dplang.ir.printer import print_program
        return print_program(self._stage_program(stage))

    def _stage_program(self, stage):
        from dplang.passes.pipeline import STAGES, run_pipeline
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
        if stage == "parsed":
            raise ValueError("the 'parsed' stage is shown per function: f.ir('parsed')")
        return run_pipeline(self._program, until=stage)[stage]


class Function:
    """A compiled function: call it with NumPy arrays and Python scalars."""

    def __init__(self, module: Module, key: str, name: str):
        self.module = module
        self.key = key
        self.__name__ = name
        self.func = module._program.funcs[key]

    def __repr__(self):
        return f"<dplang function {self.__name__} ({self.module._backend})>"

    @property
    def param_names(self):
        return list(self.func.param_names)

    def __call__(self, *args, **kwargs):
        args = bind_args(self.func, args, kwargs)
        vals = convert_args(self.func, args)
        results = self._run(vals)
        return convert_results(self.func, results)

    def _run(self, vals):
        backend = self.module._backend
        program = self.module._stage_program("optimized")
        if backend == "interp":
            from dplang.backends.interp import run_func
            return run_func(program, self.key, vals)
        import importlib
        mod = importlib.import_module(f"dplang.backends.{backend}")
        return mod.run_func(program, self.key, vals)

    # -- inspection ----------------------------------------------------------
    def ir(self, stage: str = "ssa") -> str:
        from dplang.passes.pipeline import STAGES
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
        if stage == "parsed":
            from dplang.dsl.unparse import unparse_function
            ctx_f = self.module._program.loader.defs[self.key][1]
            return unparse_function(ctx_f)
        from dplang.ir.printer import print_func
        prog = self.module._stage_program(stage)
        return print_func(prog.funcs[self.key])

    def dot(self, stage: str = "ssa") -> str:
        from dplang.ir.dot import func_to_dot
        prog = self.module._stage_program(stage)
        return func_to_dot(prog.funcs[self.key])

    def source(self) -> str:
        backend = self.module._backend
        if backend == "interp":
            raise DPError("the interp backend generates no source; use backend='cpu'")
        import importlib
        mod = importlib.import_module(f"dplang.backends.{backend}")
        return mod.source(self.module._stage_program("optimized"), self.key)


# ----------------------------------------------------------------- conversions
def bind_args(func, args, kwargs):
    names = func.param_names
    if len(args) > len(names):
        raise DPTypeError(f"{func.name}() takes {len(names)} argument(s) but {len(args)} were "
                          f"given", func.loc)
    out = list(args)
    for k in range(len(args), len(names)):
        if names[k] in kwargs:
            out.append(kwargs.pop(names[k]))
        else:
            raise DPTypeError(f"{func.name}() missing argument '{names[k]}'", func.loc)
    for k in kwargs:
        if k in names:
            raise DPTypeError(f"{func.name}() got argument '{k}' twice", func.loc)
        raise DPTypeError(f"{func.name}() has no parameter '{k}'", func.loc)
    return out


_NP = {"f64": np.float64, "f32": np.float32, "i64": np.int64, "bool": np.bool_}


def convert_args(func, args) -> list:
    """NumPy/Python values -> the parameter types, checking dtypes and shapes; a mismatch
    is a DPShapeError naming the parameter (and both sizes, for a dimension)."""
    out = []
    bound: dict = {}
    for k, (a, v) in enumerate(zip(args, func.params)):
        name = func.param_names[k]
        t = v.type
        loc = v.loc
        try:
            arr = np.asarray(a)
        except Exception:
            raise DPShapeError(f"argument '{name}': cannot convert {type(a).__name__} to "
                               f"{t}", loc) from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise DPShapeError(f"argument '{name}' must be {t}, got a value of type "
                               f"{type(a).__name__}", loc)
        if arr.ndim != t.ndim:
            what = "a scalar" if arr.ndim == 0 else f"an array of shape {arr.shape}"
            raise DPShapeError(f"argument '{name}' must be {t}, got {what}", loc)
        kind = arr.dtype.kind
        if t.dtype in ("i64",) and kind == "f":
            if arr.ndim == 0 and float(arr) == int(arr):
                arr = arr.astype(np.int64)
            else:
                raise DPShapeError(f"argument '{name}' must be {t}, got float values", loc)
        if t.dtype == "bool" and kind != "b":
            raise DPShapeError(f"argument '{name}' must be bool, got {arr.dtype}", loc)
        if isinstance(t, T.Array):
            for ax, (d, n) in enumerate(zip(t.shape, arr.shape)):
                if isinstance(d, int) and d != n:
                    raise DPShapeError(f"argument '{name}': axis {ax} has size {n}, expected {d}",
                                       loc)
                if isinstance(d, T.Sym) and len(d.terms) == 1 and d.const == 0 \
                        and d.terms[0][1] == 1:
                    dn = d.terms[0][0]
                    if dn in bound and bound[dn][0] != n:
                        raise DPShapeError(f"argument '{name}': dimension {dn} is {n} but "
                                           f"argument '{bound[dn][1]}' gives {dn} = "
                                           f"{bound[dn][0]}", loc)
                    bound.setdefault(dn, (n, name))
            arr = np.ascontiguousarray(arr, dtype=_NP[t.dtype])
            out.append(arr)
        else:
            out.append(_NP[t.dtype](arr[()]))
    return out


def convert_results(func, results):
    conv = []
    for r, t in zip(results, func.result_types):
        if isinstance(t, T.Scalar):
            r = np.asarray(r)[()]
            conv.append({"f64": float, "f32": float, "i64": int, "bool": bool}[t.dtype](r)
                        if t.dtype != "f32" else np.float32(r))
        else:
            conv.append(np.asarray(r))
    if func.returns_tuple:
        return tuple(conv)
    return conv[0]


# ----------------------------------------------------------------- transformations
class Derived(Function):
    """A function derived from a compiled one by a transformation (``dp.jvp``)."""

    def __init__(self, module: Module, program, key: str, name: str, structure):
        self.module = module
        self.program = program
        self.key = key
        self.__name__ = name
        self.func = program.funcs[key]
        self.structure = structure          # how flat results are grouped for the caller

    def __call__(self, *args, **kwargs):
        args = bind_args(self.func, args, kwargs)
        vals = convert_args(self.func, args)
        backend = self.module._backend
        if backend == "interp":
            from dplang.backends.interp import run_func
            res = run_func(self.program, self.key, vals)
        else:
            import importlib
            res = importlib.import_module(f"dplang.backends.{backend}").run_func(
                self.program, self.key, vals)
        flat = list(_flat_results(self.func, res))
        return self.structure(flat)

    def ir(self, stage: str = "ad") -> str:
        from dplang.ir.printer import print_func
        return print_func(self.func)

    def dot(self, stage: str = "ad") -> str:
        from dplang.ir.dot import func_to_dot
        return func_to_dot(self.func)


def _flat_results(func, results):
    for r, t in zip(results, func.result_types):
        if isinstance(t, T.Scalar):
            r = np.asarray(r)[()]
            yield {"f64": float, "f32": np.float32, "i64": int, "bool": bool}[t.dtype](r)
        else:
            yield np.asarray(r)


def _wrt(f: Function, wrt, what):
    from dplang.dsl.builtins import resolve_wrt
    if not isinstance(f, Function):
        raise TypeError(f"dp.{what} takes a compiled dplang function")
    return resolve_wrt(wrt, f.func.param_names, [v.type for v in f.func.params],
                       f.func.loc, what)


def jvp(f: Function, wrt=0) -> Derived:
    """Forward mode: ``jvp(f, wrt)(*primals, *tangents) -> (value, tangent_out)``; one
    tangent per differentiated parameter."""
    from dplang.passes.ad_forward import jvp_program
    idx, _ = _wrt(f, wrt, "jvp")
    base = getattr(f, "program", None) or f.module._stage_program("optimized")
    prog, key = jvp_program(base, f.key, idx)
    nres = len(f.func.result_types)
    tuple_out = f.func.returns_tuple

    def structure(flat):
        vals, tans = flat[:nres], flat[nres:]
        if tuple_out:
            return tuple(vals), tuple(tans)
        return vals[0], tans[0]
    return Derived(f.module, prog, key, f"jvp({f.__name__})", structure)
