"""The Python API: ``load``, ``compile``, and compiled modules and functions."""
from __future__ import annotations

import os

import numpy as np

from dplang.errors import DPError, DPShapeError, DPTypeError, DPNameError
from dplang.ir import types as T

BACKENDS = ("interp", "cpu", "cuda")
# "cpu" (Numba) unless the environment says otherwise (DPLANG_BACKEND=interp: the
# reference interpreter, no compilation; the test suite runs on it by default)
DEFAULT_BACKEND = os.environ.get("DPLANG_BACKEND", "cpu")


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
        self._stages: dict = {}     # stage -> program (the pipeline runs once per module)

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
        if stage not in self._stages:
            self._stages.update(run_pipeline(self._program, until=stage))
        return self._stages[stage]


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
        fast = self.__dict__.get("_fast")
        if fast is not None and not kwargs:
            out = fast(args)
            if out is not None:
                return out
        args = bind_args(self.func, args, kwargs)
        vals = convert_args(self.func, args)
        results = self._run(vals)
        return self._finish(results)

    def _finish(self, results):
        return convert_results(self.func, results)

    def _staged(self):
        return getattr(self, "program", None) or self.module._stage_program("optimized")

    def _run(self, vals):
        backend = self.module._backend
        program = self._staged()
        if backend == "interp":
            from dplang.backends.interp import run_func
            return run_func(program, self.key, vals)
        import importlib
        mod = importlib.import_module(f"dplang.backends.{backend}")
        res = mod.run_func(program, self.key, vals)
        if "_fast" not in self.__dict__ and hasattr(mod, "fast_caller"):
            # later calls with arguments of the same kinds skip the checks above
            # (backends/cpu: fast_caller)
            self._fast = mod.fast_caller(program, self.key, self._finish)
        return res

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
        return "\n".join(print_func(prog.funcs[k]) for k in _with_derived(prog, self.key))

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
        prog = getattr(self, "program", None) or self.module._stage_program("optimized")
        return mod.source(prog, self.key)


DERIVED = ("smooth.", "grad_", "jvp_", "vjp_", "value_and_grad_")


def _with_derived(prog, key) -> list:
    """``key`` and the functions the passes made for it that it reaches (smoothed clones
    of its callees, materialised derivatives), in call order."""
    out, todo = [key], [key]
    while todo:
        f = prog.funcs[todo.pop()]
        for op in f.walk():
            if op.name == "call":
                k = prog.exports.get(op.attrs["callee"], op.attrs["callee"])
                if k not in out and k.startswith(DERIVED) and k in prog.funcs:
                    out.append(k)
                    todo.append(k)
    return out


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


def _arg_plan(func) -> list:
    """Per parameter: (NumPy dtype, rank, [(axis, size or dimension name)]) for arrays,
    the NumPy scalar type for scalars -- what the fast path of ``convert_args`` checks."""
    plan = func.__dict__.get("_arg_plan")
    if plan is None:
        plan = []
        for v in func.params:
            t = v.type
            if not isinstance(t, T.Array):
                plan.append(_NP[t.dtype])
                continue
            dims = []
            for ax, d in enumerate(t.shape):
                if isinstance(d, int):
                    dims.append((ax, d))
                elif isinstance(d, T.Sym) and len(d.terms) == 1 and d.const == 0 \
                        and d.terms[0][1] == 1:
                    dims.append((ax, d.terms[0][0]))
            plan.append((np.dtype(_NP[t.dtype]), t.ndim, dims))
        func.__dict__["_arg_plan"] = plan
    return plan


def convert_args(func, args) -> list:
    """NumPy/Python values -> the parameter types, checking dtypes and shapes; a mismatch
    is a DPShapeError naming the parameter (and both sizes, for a dimension)."""
    out = convert_fast(func, args)
    return out if out is not None else _convert_slow(func, args)


def convert_fast(func, args, layout: list | None = None) -> list | None:
    """convert_args when every array argument is an ndarray of the parameter's dtype and
    rank, C-contiguous, and the named dimensions agree (what a call in a loop passes),
    and every scalar is of its type (or a Python float/int for f64/i64); else None.
    ``layout`` gets (dtype char, rank, NumPy flag bits 0x503) per array and the type
    per scalar (the compiled backend's dispatch key)."""
    out = []
    bound: dict = {}
    for a, p in zip(args, _arg_plan(func)):
        if type(p) is not tuple:
            if type(a) is p:
                pass
            elif (p is np.float64 and type(a) is float) or (
                    p is np.int64 and type(a) is int and -2**63 <= a < 2**63):
                a = p(a)
            else:
                return None
            out.append(a)
            if layout is not None:
                layout.append(p)
            continue
        if type(a) is not np.ndarray:
            return None
        dt = a.dtype
        flags = a.flags.num
        if (dt is not p[0] and dt != p[0]) or a.ndim != p[1] or not flags & 1:
            return None                 # (bit 1: C-contiguous)
        shape = a.shape
        for ax, d in p[2]:
            if type(d) is int:
                if shape[ax] != d:
                    return None
            elif bound.setdefault(d, shape[ax]) != shape[ax]:
                return None
        out.append(a)
        if layout is not None:
            layout.append((dt.char, p[1], flags & 0x503))
    return out if len(out) == len(func.params) else None


def _convert_slow(func, args) -> list:
    out = []
    bound = {}
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

    def _finish(self, results):
        return self.structure(list(_flat_results(self.func, results)))

    def ir(self, stage: str = "ad") -> str:
        from dplang.ir.printer import print_func
        return "\n".join(print_func(self.program.funcs[k])
                         for k in _with_derived(self.program, self.key))

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


def _base(f):
    """The program and key a transformation starts from."""
    prog = getattr(f, "program", None)
    if prog is None:
        prog = f.module._stage_program("optimized")
    return prog, f.key


def _lazy(f, what, build):
    """Transformations of a ``@dp.jit`` function: specialise on the first call."""
    if isinstance(f, Function):
        return build(f)
    if hasattr(f, "specialise") and hasattr(f, "param_names"):
        return LazyDerived(f, build, what)
    raise TypeError(f"dp.{what} takes a compiled dplang function, got {type(f).__name__}")


class LazyDerived:
    """A transformation of a function that specialises per argument signature
    (``@dp.jit``): built for the types of the first ``len(base.param_names)`` arguments."""

    def __init__(self, base, build, what):
        self.base, self.build, self.what = base, build, what
        self.param_names = list(base.param_names)
        self._cache: dict = {}
        self._last = None
        self.__name__ = f"{what}({getattr(base, '__name__', 'f')})"

    def _base_args(self, args):
        """The arguments the base function is specialised on."""
        return args[:len(self.param_names)]

    def specialise(self, *args):
        base = self.base.specialise(*self._base_args(args))
        key = id(base)
        if key not in self._cache:
            self._cache[key] = (base, self.build(base))
        self._last = self._cache[key][1]
        return self._last

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError(f"{self.__name__}: pass arguments by position")
        return self.specialise(*args)(*args)

    def _need_last(self):
        if self._last is None:
            raise DPError(f"{self.__name__} has not been called yet: its types come from "
                          f"the first call")
        return self._last

    def ir(self, stage: str = "ad") -> str:
        return self._need_last().ir(stage)

    def dot(self, stage: str = "ad") -> str:
        return self._need_last().dot(stage)

    def source(self) -> str:
        return self._need_last().source()


def jvp(f, wrt=0):
    """Forward mode: ``jvp(f, wrt)(*primals, *tangents) -> (value, tangent_out)``; one
    tangent per differentiated parameter."""
    def build(f):
        from dplang.passes.ad_forward import jvp_program
        idx, _ = _wrt(f, wrt, "jvp")
        base, key = _base(f)
        prog, key = jvp_program(base, key, idx)
        nres = len(f.func.result_types)
        tuple_out = f.func.returns_tuple

        def structure(flat):
            vals, tans = flat[:nres], flat[nres:]
            if tuple_out:
                return tuple(vals), tuple(tans)
            return vals[0], tans[0]
        return Derived(f.module, prog, key, f"jvp({f.__name__})", structure)
    return _lazy(f, "jvp", build)


def _scalar_result(f, what):
    rt = f.func.result_types
    if len(rt) != 1 or not isinstance(rt[0], T.Scalar) or rt[0].dtype not in ("f64", "f32"):
        shown = ", ".join(str(t) for t in rt) or "nothing"
        raise DPTypeError(f"dp.{what}() needs a function with one float scalar result; "
                          f"'{f.__name__}' returns {shown} (use dp.vjp for other results)",
                          f.func.loc)


def _reverse(f, wrt, mode, what):
    def build(f):
        from dplang.passes.ad_reverse import reverse_program
        idx, as_tuple = _wrt(f, wrt, what)
        if mode != "vjp":
            _scalar_result(f, what)
        base, key = _base(f)
        prog, key = reverse_program(base, key, idx, mode)
        if mode == "grad":
            # grad(f) of one parameter returns one value (so jvp(grad(f)) does too)
            import dataclasses
            prog.funcs[key] = dataclasses.replace(prog.funcs[key],
                                                  returns_tuple=as_tuple or len(idx) > 1)
        nres = len(f.func.result_types)
        tuple_out = f.func.returns_tuple

        def grads(gs):
            return tuple(gs) if as_tuple else gs[0]

        def structure(flat):
            if mode == "grad":
                return grads(flat)
            if mode == "value_and_grad":
                return flat[0], grads(flat[1:])
            vals = flat[:nres]
            return (tuple(vals) if tuple_out else vals[0]), grads(flat[nres:])
        return Derived(f.module, prog, key, f"{what}({f.__name__})", structure)
    return _lazy(f, what, build)


def grad(f, wrt=0):
    """The gradient of a scalar-valued ``f`` w.r.t. parameter ``wrt`` (an index, a name,
    or a tuple of them: then a tuple of gradients)."""
    return _reverse(f, wrt, "grad", "grad")


def value_and_grad(f, wrt=0):
    """``(f(x), grad(f)(x))`` in one reverse pass."""
    return _reverse(f, wrt, "value_and_grad", "value_and_grad")


def vjp(f, wrt=0):
    """Reverse mode: ``vjp(f, wrt)(*primals, *cotangents) -> (value, cotangents_in)``; one
    cotangent per float result of ``f``."""
    return _reverse(f, wrt, "vjp", "vjp")


def hvp(f, wrt=0):
    """Hessian-vector product: ``hvp(f, wrt)(*args, v) -> H v`` (forward over reverse)."""
    def build(f):
        _scalar_result(f, "hvp")
        idx, as_tuple = _wrt(f, wrt, "hvp")
        g = grad(f, wrt=tuple(idx))
        j = jvp(g, wrt=tuple(idx))

        def structure(flat):
            tans = flat[len(idx):]
            return tuple(tans) if as_tuple else tans[0]
        return Derived(f.module, j.program, j.key, f"hvp({f.__name__})", structure)
    return _lazy(f, "hvp", build)


def smooth(f, reg, gamma=None):
    """``f`` with max/min/maximum/minimum/onehot_argmax/onehot_argmin (in it and in what
    it calls) replaced by their ``reg``-smoothed versions (SPEC 2.2); without ``gamma``
    the temperature is a new last parameter."""
    def build(f):
        from dplang.passes.pipeline import PIPELINE
        from dplang.passes.smooth import smooth_program
        key = f.key
        if getattr(f, "program", None) is None:
            # a compiled function: smoothed where @smooth is (before the "ad" stage,
            # whose rewrites of hard choices would hide them from smoothing), then
            # through the rest of the pipeline
            prog, key = smooth_program(f.module._stage_program("ssa"), key, reg, gamma)
            for stage, fn in PIPELINE:
                if stage != "smoothed":
                    prog = fn(prog)
        else:
            prog, key = smooth_program(f.program, key, reg, gamma)
        func = prog.funcs[key]
        return Derived(f.module, prog, key, f"smooth({f.__name__})",
                       lambda flat: tuple(flat) if func.returns_tuple else flat[0])
    return _lazy(f, "smooth", build)


# ------------------------------------------------------------- implicit differentiation
def _implicit_decorator(kind: str):
    what = {"argmin": "obj", "root": "F", "fixed_point": "T"}[kind]

    def decorator(fn, solver=None, tol=None, maxiter=None):
        options = {k: v for k, v in (("solver", solver), ("tol", tol), ("maxiter", maxiter))
                   if v is not None}

        def apply(f):
            from dplang.jit import JitFunction
            if not isinstance(f, JitFunction):
                raise TypeError(f"dp.{kind}({what}, ...) decorates a @dp.jit function (put it "
                                f"above @dp.jit), got {type(f).__name__}")
            return f.decorate(kind, fn, **options)
        return apply
    decorator.__name__ = kind
    decorator.__doc__ = (f"``@dp.{kind}({what}, solver=..., tol=..., maxiter=...)`` above "
                         f"``@dp.jit``: SPEC 2.4's ``@{kind}({what})`` for a jitted function "
                         f"(derivatives by implicit differentiation, passes/implicit.py).")
    return decorator


argmin = _implicit_decorator("argmin")
root = _implicit_decorator("root")
fixed_point = _implicit_decorator("fixed_point")


# ------------------------------------------------------------------------------- vmap
def _in_axes(in_axes, names, where) -> tuple:
    """SPEC 3's ``in_axes`` as one bool per parameter (True: mapped over axis 0)."""
    def one(a, what):
        if a is None:
            return False
        if isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a == 0:
            return True
        raise ValueError(f"dp.vmap: {what} must be 0 (the leading axis) or None, got {a!r}")
    if isinstance(in_axes, (list, tuple)):
        if len(in_axes) != len(names):
            raise ValueError(f"dp.vmap: in_axes has {len(in_axes)} entries but '{where}' takes "
                             f"{len(names)} argument(s) ({', '.join(names)})")
        return tuple(one(a, f"in_axes entry for '{n}'") for a, n in zip(in_axes, names))
    return (one(in_axes, "in_axes"),) * len(names)


def vmap(f, in_axes=0, backend=None):
    """``f`` mapped over a leading batch axis (SPEC 3): ``in_axes`` is 0 (every argument
    mapped) or a tuple with 0 or None per argument; the results are stacked along a new
    leading axis.  On "cpu" the examples run in parallel across cores
    (passes/vmap.py); ``backend`` runs the mapped function on another backend than
    ``f``'s module."""
    if backend is not None:
        _check_backend(backend)

    def build(f):
        import copy
        from dplang.passes.vmap import vmap_program
        batched = _in_axes(in_axes, list(f.func.param_names), f.__name__)
        base, key = _base(f)
        prog, key = vmap_program(base, key, batched)
        module = f.module
        if backend is not None and backend != module._backend:
            module = copy.copy(module)
            module._backend = backend
            module._funcs = {}
        func = prog.funcs[key]
        return Derived(module, prog, key, f"vmap({f.__name__})",
                       lambda flat: tuple(flat) if func.returns_tuple else flat[0])
    if isinstance(f, Function):
        return build(f)
    if hasattr(f, "specialise") and hasattr(f, "param_names"):
        return _LazyVmap(f, build, in_axes)
    raise TypeError(f"dp.vmap takes a compiled dplang function, got {type(f).__name__}")


class _LazyVmap(LazyDerived):
    """``dp.vmap`` of a ``@dp.jit`` function (or of a transformation of one): specialised
    on the types of one example (the first entry of each mapped argument)."""

    def __init__(self, base, build, in_axes):
        super().__init__(base, build, "vmap")
        self.in_axes = in_axes

    def _base_args(self, args):
        mapped = _in_axes(self.in_axes, self.param_names, self.__name__)
        return [np.asarray(a)[0] if m and np.ndim(a) and len(a) else a
                for a, m in zip(args[:len(self.param_names)], mapped)]
