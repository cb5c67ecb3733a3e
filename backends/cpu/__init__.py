"""The CPU backend: IR -> readable Python source -> ``numba.njit``, cached on disk.

``run_func(program, key, args) -> list`` runs a function of ``program`` (a key or
export name) on converted arguments (as ``dplang.api.convert_args`` gives them) and
returns its results as a list, each of its declared type, like the interpreter.
``source(program, key) -> str`` is the generated module text for that function and the
functions it calls.

How a call runs:

1. ``codegen.generate`` prints the function and its callees as one Python module
   (memoised per program object);
2. the module text is hashed (``cache.digest_of``) and, once per process and digest,
   written to the cache directory (``cache.write_module``: atomic, checked) and
   imported from there, so Numba's ``cache=True`` stores and finds its machine code
   next to it: a second process loading the same program compiles nothing;
3. the jitted function is compiled for the argument types (``dispatcher.compile``; a
   failure there is a ``DPInternalError``, after one retry with Numba's cache files
   of that module removed, in case they were corrupt) and called;
4. its machine code is also saved next to the module (``native.save``,
   ``m_<digest>.<function>.<argument layout>.nrtobj``): a later process that finds
   that file calls it through ``native.load`` without importing Numba at all (a warm
   start), and falls back to steps 2-3 if the file cannot be used
   (``DPLANG_NATIVE=0`` turns this path off).

A run-time failure inside compiled code (a failed ``assert``, an index out of range,
a singular matrix, a non-positive ``gamma``) is reported as the interpreter reports it:
the same call is replayed on the reference interpreter, which raises the located
``DPError``; compiled code never raises bare Python exceptions at a user.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading

import numpy as np

from dplang.errors import DPError, DPInternalError, DPRuntimeError
from dplang.ir import types as T
from dplang.ir.core import Func, Program

from dplang.backends.cpu import cache as _cache
from dplang.backends.cpu import memory as _memory
from dplang.backends.cpu import native as _native
from dplang.backends.cpu.codegen import Generated, generate

__all__ = ["run_func", "source", "stats", "compiled_function"]

_lock = threading.RLock()
_modules: dict = {}          # digest -> imported module
_compiled: dict = {}         # (digest, fname, signature) -> dispatcher known compiled
_STATS = {"generated": 0, "written": 0, "imported": 0, "compiled": 0, "native": 0,
          "saved": 0}

_PROG_ATTR = "_dplang_cpu_gen"


def stats() -> dict:
    """Counters of this process: modules generated, written to the cache, imported,
    signatures compiled through Numba, signatures loaded without Numba (``native``) and
    saved for that; plus Numba's cache hits and misses summed over the jitted functions
    of the imported modules."""
    out = dict(_STATS)
    hits = misses = 0
    for mod in list(_modules.values()):
        for v in vars(mod).values():
            st = getattr(v, "stats", None)
            if st is not None and hasattr(st, "cache_hits"):
                hits += sum(st.cache_hits.values())
                misses += sum(st.cache_misses.values())
    out["cache_hits"] = hits
    out["cache_misses"] = misses
    return out


def _func_signature(func: Func):
    """A cheap fingerprint of a function object's identity (programs are not modified
    once a pass has returned them; this catches a function replaced under a key)."""
    body = func.body
    return (id(func), id(body), len(body.ops), id(body.ops[-1]) if body.ops else 0)


def _generated(program: Program, key: str) -> tuple[str, Generated]:
    """(key, generated module) for ``key`` of ``program``, memoised on the program."""
    key = program.exports.get(key, key)
    if key not in program.funcs:
        raise DPRuntimeError(f"no function named {key!r}")
    memo = program.__dict__.setdefault(_PROG_ATTR, {})
    sig = tuple((k, _func_signature(f)) for k, f in program.funcs.items())
    sig = (sig, boundscheck())
    hit = memo.get(key)
    if hit is not None and hit[0] == sig:
        return key, hit[1]
    title = f"{program.funcs[key].name} from {os.path.basename(program.filename or '<dp>')}"
    gen = generate(program, [key], title=_printable(title), boundscheck=boundscheck())
    _STATS["generated"] += 1
    memo[key] = (sig, gen)
    return key, gen


def _printable(s: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in s)


def boundscheck() -> bool:
    """Index checks in compiled code (on unless ``DPLANG_BOUNDSCHECK=0``): an index out
    of range is then a located error, as in the interpreter, instead of undefined
    behaviour; turning them off makes tight loops up to about twice as fast."""
    return os.environ.get("DPLANG_BOUNDSCHECK", "1").strip().lower() not in ("0", "false",
                                                                           "no", "off")


def source(program: Program, key: str) -> str:
    """The generated module text for function ``key`` and the functions it calls."""
    return _generated(program, key)[1].text


def _import(digest: str, text: str, fresh: bool = False):
    with _lock:
        mod = _modules.get(digest)
        if mod is not None and not fresh:
            return mod
        path, written = _cache.write_module(digest, text)
        if written:
            _STATS["written"] += 1
        name = f"dplang_cpu_m_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception:
            # the file changed under us (or is corrupt in a way the hash missed): rewrite
            sys.modules.pop(name, None)
            _cache.write_module(digest, text)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        _STATS["imported"] += 1
        _modules[digest] = mod
        return mod


def _typeof(vals):
    import numba
    return tuple(numba.typeof(v) for v in vals)


def compiled_function(program: Program, key: str, vals: list):
    """The Numba dispatcher of ``key`` in its generated module, compiled for the types
    of ``vals``."""
    key, gen = _generated(program, key)
    digest = gen.digest
    if not digest:
        digest = gen.digest = _cache.digest_of(gen.text)
    fname = gen.names[key]
    # (a module with an objmode block stays on Numba's path: the block calls back into
    # the module's Python globals, which saved machine code does not carry)
    spec = None if gen.objmode else _native.spec_of_values(vals)
    nat = _native_path(digest, fname, spec)
    if nat is not None:
        with _lock:
            fn = _native_load(digest, gen.text, nat, fname)
        if fn is not None:
            return fn
    sig = _typeof(vals)
    ck = (digest, fname, sig)
    disp = _compiled.get(ck)
    if disp is not None:
        return disp
    with _lock:
        _memory.tune()
        mod = _import(digest, gen.text)
        disp = getattr(mod, fname)
        try:
            disp.compile(sig)
        except Exception as first:
            if isinstance(first, DPError):
                raise
            # possibly a corrupt Numba cache entry: drop it, re-import, compile again
            _cache.purge_numba(os.path.dirname(mod.__file__), digest)
            mod = _import(digest, gen.text, fresh=True)
            disp = getattr(mod, fname)
            try:
                disp.compile(sig)
            except Exception as e:
                msg = str(e).strip().splitlines()
                short = "\n".join(msg[:12])
                raise DPInternalError(
                    f"cpu backend: Numba could not compile {program.funcs[key].name} "
                    f"for {', '.join(str(s) for s in sig)}: {type(e).__name__}: {short}",
                    program.funcs[key].loc) from None
        _STATS["compiled"] += 1
        _compiled[ck] = disp
        if nat is not None and tuple(sig) in disp.overloads:
            try:
                _native.save(disp, sig, nat)
                _STATS["saved"] += 1
            except Exception:       # SaveError, or anything unforeseen: Numba's path stays
                pass
    return disp


def native_enabled() -> bool:
    return os.environ.get("DPLANG_NATIVE", "1").strip().lower() not in ("0", "false", "no",
                                                                        "off")


def _native_path(digest: str, fname: str, spec):
    """Where the machine code of ``fname`` for arguments ``spec`` is saved (None: not
    for this kind of arguments, or the path is off)."""
    if spec is None or not native_enabled() or not _native.supported():
        return None
    return os.path.join(_cache.module_dir(),
                        f"m_{digest}.{fname}.{_native.spec_key(spec)}.nrtobj")


_native_loaded: dict = {}


def _native_load(digest: str, text: str, path: str, fname: str):
    """The saved overload at ``path`` as a callable, or None (no file, or one that cannot
    be used here: it is then removed and rebuilt by the Numba path)."""
    fn = _native_loaded.get(path)
    if fn is not None:
        return fn
    if not os.path.exists(path):
        return None
    # the module entry is checked (and repaired) as the Numba path would
    _, written = _cache.write_module(digest, text)
    if written:
        _STATS["written"] += 1
        return None
    _memory.tune()
    try:
        fn = _native.load(path, fname)
    except Exception:
        try:
            os.unlink(path)
        except OSError:
            pass
        return None
    _STATS["native"] += 1
    _native_loaded[path] = fn
    return fn


def run_func(program: Program, name_or_func, args: list) -> list:
    """Run a function of ``program`` on ``args`` (converted as the API converts them);
    returns the list of its results, each of its declared type."""
    if isinstance(name_or_func, Func):
        key = next((k for k, f in program.funcs.items() if f is name_or_func), None)
        if key is None:
            raise DPRuntimeError(f"function {name_or_func.name!r} is not in the program")
    else:
        key = program.exports.get(name_or_func, name_or_func)
        if key not in program.funcs:
            raise DPRuntimeError(f"no function named {name_or_func!r}")
    func = program.funcs[key]
    vals = [_to_param(a, p.type) for a, p in zip(args, func.params)]
    if len(vals) != len(func.params) or len(args) != len(func.params):
        raise DPRuntimeError(f"{func.name} takes {len(func.params)} argument(s), got {len(args)}",
                             func.loc)
    # fast path: the dispatcher found for this function and these argument layouts
    # before (programs are not modified once a pass returned them)
    fast = program.__dict__.setdefault("_cpu_fast", {})
    # (flags: C- and F-contiguous, aligned, writeable: NumPy's flag bits 0x503)
    layout = (key, _func_signature(func), boundscheck(), tuple(
        (v.dtype.char, v.ndim, v.flags.num & 0x503) if isinstance(v, np.ndarray)
        else type(v) for v in vals))
    disp = fast.get(layout)
    if disp is None:
        disp = fast[layout] = compiled_function(program, key, vals)
    try:
        out = disp(*vals)
    except Exception as e:
        _replay_error(program, key, args, func, e)
    res = list(out) if len(func.result_types) != 1 else [out]
    return [_to_result(v, t) for v, t in zip(res, func.result_types)]


def fast_caller(program: Program, key: str, finish):
    """The API's shortcut for later calls of ``key``: ``call(args)`` converts the
    arguments only when they already have their parameters' kinds (api.convert_fast),
    finds the dispatcher run_func found for the same layouts, and returns ``finish`` of
    the results; None (take the ordinary path) whenever any of that does not apply.
    About 5 us a call instead of 14 for six array arguments."""
    from dplang.api import convert_fast
    key = program.exports.get(key, key)
    func = program.funcs[key]
    fast = program.__dict__.setdefault("_cpu_fast", {})
    head = (key, _func_signature(func))
    nparams, types = len(func.params), func.result_types
    bc = boundscheck()
    mine: dict = {}                     # layout -> the callable, for this function

    def call(args):
        if len(args) != nparams:
            return None
        layout: list = []
        vals = convert_fast(func, args, layout)
        if vals is None:
            return None
        lay = tuple(layout)
        fn = mine.get(lay)
        if fn is None:
            disp = fast.get(head + (bc, lay))
            if disp is None:
                return None
            # a natively loaded function's C wrapper without its Python guard, which
            # checks what the layout key already says (native._guarded)
            fn = mine[lay] = getattr(disp, "cfunc", disp)
        if boundscheck() != bc:
            return None
        try:
            out = fn(*vals)
        except Exception as e:
            _replay_error(program, key, args, func, e)
        res = list(out) if len(types) != 1 else [out]
        return finish([_to_result(v, t) for v, t in zip(res, types)])
    return call


def _replay_error(program, key, args, func, e):
    """Compiled code raised: let the reference interpreter raise the located error."""
    from dplang.backends.interp import run_func as interp_run
    interp_run(program, key, list(args))
    detail = e.args[0] if isinstance(e, AssertionError) and e.args else str(e)
    raise DPRuntimeError(f"{func.name}: compiled code failed: {type(e).__name__}: {detail}",
                         func.loc) from None


_NP = T.NP_DTYPES


def _to_param(a, t):
    if isinstance(t, T.Scalar):
        dt = _NP[t.dtype]
        return a if type(a) is dt else dt(np.asarray(a).reshape(())[()])
    if isinstance(t, T.Array):
        dt = _NP[t.dtype]
        if isinstance(a, np.ndarray) and a.dtype == dt:
            return a
        return np.asarray(a, dtype=dt)
    return a


def _to_result(v, t):
    if isinstance(t, T.Scalar):
        return _NP[t.dtype](v)
    if isinstance(t, T.Array):
        return v if isinstance(v, np.ndarray) else np.asarray(v, dtype=_NP[t.dtype])
    return v
