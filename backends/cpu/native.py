"""Warm starts without Numba: call Numba-compiled machine code in a process that never
imports ``numba`` (``import numba`` and the first cached load through a dispatcher cost
about 0.5 s; this path about 0.02 s for a module of five functions).  The backend
(``__init__.py``) saves each overload it compiles next to its cache entry and, in a
later process, loads it from there before it would import the generated module.

Two halves:

``save(disp, sig, path)``   (the compiling process; Numba is loaded there)
    Takes the compiled overload ``disp.overloads[sig]`` of a ``numba.njit`` dispatcher
    and writes one self-contained file: the ELF object code of the overload (the
    nopython function, its callees, and Numba's C-Python wrapper, all linked into one
    library by Numba), the name of the wrapper symbol, the constants of every Numba
    Environment the object refers to, how each undefined symbol of the object is
    resolved, the argument signature, and what the code depends on (CPU, extension
    module files, versions).

``load(path) -> callable``  (a fresh process; imports numpy, llvmlite.binding, ctypes)
    Loads Numba's three C extension modules straight from their files (no
    ``numba/__init__.py``), registers the symbols Numba's generated code calls
    (``numba_*`` helpers, ``NRT_*`` runtime, ``PyExc_*`` / ``_Py_NoneStruct`` object
    addresses) with LLVM's process-wide symbol table, adds the object file to a fresh
    MCJIT engine, points each ``_ZN08NumbaEnv...`` global at an Environment object
    holding the saved constants, and makes the wrapper a builtin function exactly as
    Numba does (``_dynfunc.make_function``).  A generated Python guard in front of it
    checks the argument types, because Numba's C wrapper does no type dispatch (the
    dispatcher does, and it is not there): an array of the wrong dtype would be read
    as garbage.

Any problem found before machine code runs is a ``LoadError``: the caller falls back to
the ordinary Numba path.  Nothing here can abort the process on a missing symbol (LLVM
would: "Program used external function ... which could not be resolved"), because
every undefined symbol is checked to be resolvable before the object is added.

Not handled (``save`` refuses with ``SaveError``; the caller keeps the Numba path):
arguments other than NumPy arrays and int/float/bool scalars (tuples, typed lists,
records, strings, optional); keyword arguments; object-mode or lifted code; code with
dynamic globals (Numba cannot cache that either); ``.numba.unresolved$`` symbols
(recursive functions compiled in pieces); Environment constants whose pickle needs the
``numba`` package (e.g. returning a ``numba.typed.List`` to Python).  Also not handled:
objects other than 64-bit little-endian ELF (macOS Mach-O, Windows COFF; only x86-64
Linux was tried); ``parallel=True`` (the threading layer is not loaded); generators and
cfuncs.  ``load`` is not thread-safe (call it under the backend's lock); loaded code is
never unloaded.  The dynamic-exception path leaks ~0.6 kB per raise, exactly as Numba's
own dispatcher does.
"""
from __future__ import annotations

import builtins
import ctypes
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import pickle
import struct
import sys
import tempfile

FORMAT = 2
MAGIC = b"DPLANG-NRTOBJ\n"

# Numba's extension modules this loader uses, by import name and path below the package.
_EXTS = {
    "numba._helperlib": ("_helperlib",),
    "numba._dynfunc": ("_dynfunc",),
    "numba.core.runtime._nrt_python": ("core", "runtime", "_nrt_python"),
}

# Helpers of _helperlib that call back into ``numba.core.serialize`` (importing the
# whole of Numba) to build an exception; the loader substitutes its own (see _Runtime).
_SERIALIZE_HELPERS = ("unpickle", "runtime_build_excinfo_struct")

# _helperlib's BLAS/LAPACK wrappers (they fetch function pointers from SciPy's Cython
# modules on first use)
_LINALG_HELPERS = ("xx", "ez_", "xgesv")
_BLAS_HELPERS = {"xxdot", "xxgemv", "xxgemm", "xxnrm2"}     # the rest need LAPACK


# The Numba releases whose internals (extension modules, helper tables, Environment
# layout, object caching) this loader was written and tested against; with any other,
# ``supported()`` is False and the backend keeps Numba's own path.
TESTED_NUMBA = ("0.68",)


def numba_version() -> str:
    from importlib.metadata import version
    return version("numba")


@functools.lru_cache(maxsize=None)
def supported() -> bool:
    """Whether this process can use saved machine code (a tested Numba, ELF x86-64)."""
    import platform
    try:
        v = numba_version()
    except Exception:
        return False
    return (any(v == t or v.startswith(t + ".") for t in TESTED_NUMBA)
            and sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
            and sys.byteorder == "little")


class SaveError(Exception):
    """This overload cannot be saved for loading without Numba."""


class LoadError(Exception):
    """This file cannot be loaded here (stale, other CPU, other Numba build, ...)."""


# ---------------------------------------------------------------------------------------
# ELF symbol table (enough of the format to list a relocatable object's symbols)
# ---------------------------------------------------------------------------------------

SHN_UNDEF, SHN_COMMON = 0, 0xFFF2


def elf_symbols(obj: bytes):
    """Yield (name, section_index, binding) for every named symbol of an ELF64 LE object."""
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        raise SaveError("object code is not 64-bit little-endian ELF")
    e_shoff, = struct.unpack_from("<Q", obj, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", obj, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", obj, e_shoff + i * e_shentsize)
            for i in range(e_shnum)]
    for sh in secs:
        if sh[1] != 2:                                  # SHT_SYMTAB
            continue
        off, size, link, entsize = sh[4], sh[5], sh[6], sh[9]
        stroff = secs[link][4]
        for k in range(size // entsize):
            st_name, st_info, _o, st_shndx, _v, _s = struct.unpack_from(
                "<IBBHQQ", obj, off + k * entsize)
            if not st_name:
                continue
            end = obj.index(b"\0", stroff + st_name)
            yield obj[stroff + st_name:end].decode(), st_shndx, st_info >> 4


# ---------------------------------------------------------------------------------------
# Argument signatures: a plain description that both halves can compute
# ---------------------------------------------------------------------------------------
# ("array", dtype_str, ndim, layout, mutable)  or  ("scalar", dtype_str)
# dtype_str is NumPy's, e.g. "<f8"; layout is Numba's "C", "F" or "A".

def spec_of_numba_types(sig) -> tuple:
    """The spec of a tuple of Numba types (compiling process)."""
    import numpy as np
    from numba.core import types
    out = []
    for ty in sig:
        if isinstance(ty, types.Array) and isinstance(ty.dtype, (types.Float, types.Integer,
                                                                   types.Boolean)):
            if not ty.aligned:
                raise SaveError(f"unaligned array argument {ty}")
            out.append(("array", np.dtype(str(ty.dtype)).str, ty.ndim, ty.layout,
                        bool(ty.mutable)))
        elif isinstance(ty, (types.Float, types.Integer, types.Boolean)):
            out.append(("scalar", np.dtype(str(ty)).str))
        else:
            raise SaveError(f"unsupported argument type {ty}")
    return tuple(out)


def spec_of_values(vals) -> tuple:
    """The spec Numba's ``typeof`` would give these values (any process; no Numba).
    Returns None for a value this loader does not handle."""
    import numpy as np
    out = []
    for v in vals:
        if isinstance(v, np.ndarray):
            fl = v.flags
            if not fl.aligned or not v.dtype.isnative:
                return None
            lay = "C" if fl.c_contiguous else "F" if fl.f_contiguous else "A"
            out.append(("array", v.dtype.str, v.ndim, lay, bool(fl.writeable)))
        elif type(v) is bool or type(v) is np.bool_:
            out.append(("scalar", "|b1"))
        elif type(v) is int:
            out.append(("scalar", "<i8"))
        elif type(v) is float:
            out.append(("scalar", "<f8"))
        elif isinstance(v, np.generic) and v.dtype.kind in "fiu":
            out.append(("scalar", v.dtype.str))
        else:
            return None
    return tuple(out)


def spec_key(spec) -> str:
    """A short file-name-safe key of a spec."""
    parts = []
    for s in spec:
        if s[0] == "array":
            parts.append(f"{s[1][1:]}{s[2]}{s[3]}{'w' if s[4] else 'r'}")
        else:
            parts.append(s[1][1:])
    return "_".join(parts) or "noargs"


# ---------------------------------------------------------------------------------------
# save (compiling process)
# ---------------------------------------------------------------------------------------

def _object_code(disp, sig, cres) -> bytes:
    """The final object code of the overload.  Numba keeps it on the library after a
    fresh compile; after a load from its own cache the object-cache hook has handed it
    to MCJIT and dropped it, so it is read back from Numba's cache file instead."""
    lib = cres.library
    try:
        return bytes(lib._get_compiled_object())
    except (RuntimeError, ValueError):
        pass
    cache = getattr(disp, "_cache", None)
    if cache is None or not hasattr(cache, "_cache_file"):
        raise SaveError("no object code on the library and the dispatcher has no cache")
    key = cache._index_key(sig, disp.targetctx.codegen())
    data = cache._cache_file.load(key)
    if data is None:
        raise SaveError("object code not in Numba's cache")
    libdata = data[0]                       # CompileResult._reduce(): (name, kind, data)
    if libdata[1] != "object":
        raise SaveError(f"Numba cache holds {libdata[1]!r}, not object code")
    return bytes(libdata[2][0])


def _pickle_checked(obj) -> bytes:
    """Pickle ``obj``; refuse if unpickling it would import Numba (checked by unpickling
    it with an unpickler that rejects any class from the ``numba`` package)."""
    import io

    class _NoNumba(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "numba" or module.startswith("numba."):
                raise SaveError(f"an Environment constant needs {module}.{name}")
            return super().find_class(module, name)

    data = pickle.dumps(obj, protocol=4)
    _NoNumba(io.BytesIO(data)).load()
    return data


def _resolution_table(undefined) -> dict:
    """How Numba's process resolves each undefined symbol: by address, against the
    helper tables of Numba's extension modules, the exception classes and None (which
    Numba registers with ``llvmlite.binding.add_symbol``), or the process's own symbols
    (libpython, libc, libm).  An address matching none of these means Numba registered
    something this loader does not know how to recreate: refuse."""
    import llvmlite.binding as ll
    from numba import _dynfunc, _helperlib
    from numba.core.runtime import _nrt_python
    known = {id(None): ("none", "")}
    for name, obj in vars(builtins).items():
        if isinstance(obj, type) and issubclass(obj, BaseException):
            known[id(obj)] = ("pyexc", name)
    for src, mod in (("helperlib", _helperlib), ("dynfunc", _dynfunc), ("nrt", _nrt_python)):
        for k, addr in mod.c_helpers.items():
            known.setdefault(addr, (src, k))
    proc = ctypes.CDLL(None)
    table = {}
    for name in sorted(undefined):
        addr = ll.address_of_symbol(name)
        if not addr:
            raise SaveError(f"symbol {name} is not resolvable even under Numba")
        if addr in known:
            table[name] = known[addr]
            continue
        try:
            paddr = ctypes.cast(getattr(proc, name), ctypes.c_void_p).value
        except AttributeError:
            paddr = None
        if paddr != addr:
            raise SaveError(f"symbol {name} is registered by Numba in a way not handled")
        table[name] = ("process", "")
    return table


def _ext_files() -> dict:
    """Numba's extension module files with (size, mtime): a reinstall changes them."""
    import numba
    root = os.path.dirname(numba.__file__)
    out = {}
    for modname, parts in _EXTS.items():
        path = _find_ext(root, parts)
        st = os.stat(path)
        out[modname] = (os.path.relpath(path, root), st.st_size, st.st_mtime_ns)
    return out


def _find_ext(root, parts):
    d = os.path.join(root, *parts[:-1])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = os.path.join(d, parts[-1] + suffix)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(os.path.join(d, parts[-1]))


def save(disp, sig, path: str) -> dict:
    """Write the overload ``disp.overloads[sig]`` (``sig``: a tuple of Numba types, as
    ``disp.compile`` took) to ``path``, atomically.  Returns the metadata written.
    Raises ``SaveError`` for what ``load`` could not run faithfully."""
    import llvmlite
    import numpy as np
    from numba.core.environment import lookup_environment

    sig = tuple(sig)
    cres = disp.overloads[sig]
    if cres.objectmode or cres.lifted:
        raise SaveError("object-mode or lifted code")
    if cres.library.has_dynamic_globals:
        raise SaveError("code with dynamic globals")
    spec = spec_of_numba_types(sig)
    obj = _object_code(disp, sig, cres)

    undefined, envs = set(), {}
    for name, shndx, _bind in elf_symbols(obj):
        if shndx == SHN_UNDEF:
            undefined.add(name)
        elif name.startswith("_ZN08NumbaEnv"):
            envs[name] = None
        if name.startswith(".numba.unresolved$"):
            raise SaveError("unresolved recursive symbol")
    fndesc = cres.fndesc
    main_env = fndesc.env_name
    if main_env not in envs:
        raise SaveError("the wrapper's Environment is not defined in the object")
    # constants of every Environment the object refers to (callees' too: Numba itself
    # only sets the main one after a cache load; we set all we know)
    for name in envs:
        env = cres.environment if name == main_env else lookup_environment(name)
        if env is not None:
            envs[name] = list(env.consts)
    envs = {k: v for k, v in envs.items() if v is not None}

    codegen = disp.targetctx.codegen()
    meta = {
        "format": FORMAT,
        "wrapper": fndesc.llvm_cpython_wrapper_name,
        "qualname": fndesc.qualname,
        "modname": fndesc.modname,
        "main_env": main_env,
        "envs": _pickle_checked(envs),
        "symbols": _resolution_table(undefined),
        "spec": spec,
        "restype": str(cres.signature.return_type),
        "magic": codegen.magic_tuple(),          # (triple, cpu name, features)
        "python": sys.version,
        "numpy": np.__version__,
        "llvmlite": llvmlite.__version__,
        "exts": _ext_files(),
    }
    blob = pickle.dumps(meta, protocol=4)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".nrtobj.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            body = struct.pack("<QQ", len(blob), len(obj)) + blob + obj
            fh.write(MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    return meta


# ---------------------------------------------------------------------------------------
# load (fresh process, no Numba)
# ---------------------------------------------------------------------------------------

class _Runtime:
    """Per-process state: Numba's extension modules, LLVM, the registered symbols."""

    def __init__(self):
        import llvmlite.binding as ll
        spec = importlib.util.find_spec("numba")     # locates; does not execute __init__
        if spec is None or not spec.submodule_search_locations:
            raise LoadError("numba is not installed")
        self.root = spec.submodule_search_locations[0]
        self.mods = {}
        self.paths = {}
        for modname, parts in _EXTS.items():
            path = _find_ext(self.root, parts)
            self.paths[modname] = path
            mod = sys.modules.get(modname)
            if mod is None:
                # Single-phase extension modules: if Numba is imported later in this
                # process, Python hands it the same module state (one NRT memory system).
                loader = importlib.machinery.ExtensionFileLoader(modname, path)
                mspec = importlib.util.spec_from_file_location(modname, path, loader=loader)
                mod = importlib.util.module_from_spec(mspec)   # runs PyInit_*: NRT_MemSys_init
                loader.exec_module(mod)
            self.mods[modname] = mod
        self.helperlib = self.mods["numba._helperlib"]
        self.dynfunc = self.mods["numba._dynfunc"]
        self.nrt = self.mods["numba.core.runtime._nrt_python"]
        if "numba" not in sys.modules:
            # what numba.core.runtime.nrt does on import: allocate with PyMem_Raw*
            self.nrt.memsys_use_cpython_allocator()
        ll.initialize_native_target()
        ll.initialize_native_asmprinter()
        self.ll = ll
        self.tm = ll.Target.from_default_triple().create_target_machine()
        # Creating an MCJIT engine makes LLVM load the process's own symbols (libpython,
        # libc, libm) for lookup; before that, address_of_symbol("PyArg_UnpackTuple")
        # is None, and the check in register() would fail.
        self._first_engine = ll.create_mcjit_compiler(ll.parse_assembly(""), self.tm)
        self.host = (ll.get_process_triple(), ll.get_host_cpu_name(),
                     set(ll.get_host_cpu_features().flatten().split(",")))
        self.registered = {}
        self._callbacks = self._make_serialize_helpers()

    # -- the two _helperlib functions that would import numba.core.serialize ----------
    def _make_serialize_helpers(self):
        """Replacements for numba_unpickle / numba_runtime_build_excinfo_struct, used
        only when compiled code raises.  Numba's versions import numba.core.serialize
        (i.e. all of Numba, ~0.5 s); plain pickle reads the same data (cloudpickle's
        output of builtin exception classes and llvmlite.ir constants)."""
        # A ctypes callback that raises would hand NULL back with no Python error set;
        # both return an exception description Numba's numba_do_raise understands
        # instead: (class, args, location).
        # numba_unpickle is not only for errors: boxing an array result unpickles
        # ``numpy.ndarray`` on every call.  Memoised per address of the static
        # pickle, as Numba does (the code is never unloaded, so addresses are stable).
        memo = {}

        def unpickle(data, n, hashed):
            try:
                return memo[data]
            except KeyError:
                pass
            try:
                obj = pickle.loads(ctypes.string_at(data, n))
                memo[data] = obj
                return obj
            except Exception as e:
                return (RuntimeError, (f"compiled code raised; its exception could not "
                                       f"be rebuilt: {e!r}",), None)

        def build_excinfo(static_exc, exc_args):
            try:
                from llvmlite import ir
                exc, static_args, locinfo = pickle.loads(static_exc)
                it = iter(exc_args)
                args = tuple(next(it) if isinstance(a, ir.Value) else a for a in static_args)
                return (exc, args, locinfo)
            except Exception as e:
                return (RuntimeError, (f"compiled code raised; its exception could not "
                                       f"be rebuilt: {e!r}",), None)

        f1 = ctypes.CFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_int,
                              ctypes.c_void_p)(unpickle)
        f2 = ctypes.CFUNCTYPE(ctypes.py_object, ctypes.py_object,
                              ctypes.py_object)(build_excinfo)
        return {"unpickle": f1, "runtime_build_excinfo_struct": f2}   # kept alive here

    def address(self, name, how):
        src, key = how
        if src == "none":
            return id(None)
        if src == "pyexc":
            obj = getattr(builtins, key, None)
            if not (isinstance(obj, type) and issubclass(obj, BaseException)):
                raise LoadError(f"no exception class {key}")
            return id(obj)
        if src == "helperlib" and key in _SERIALIZE_HELPERS and "numba" not in sys.modules:
            return ctypes.cast(self._callbacks[key], ctypes.c_void_p).value
        table = {"helperlib": self.helperlib, "dynfunc": self.dynfunc,
                 "nrt": self.nrt}.get(src)
        if table is None:
            raise LoadError(f"unknown symbol source {src}")
        addr = table.c_helpers.get(key)
        if not addr:
            raise LoadError(f"{src} has no helper {key}")
        return addr

    def register(self, table: dict):
        """Register (once per process) the symbols an object needs; check the process
        resolves the rest.  Raises LoadError before LLVM could abort on a missing one."""
        ll = self.ll
        for name, how in table.items():
            if how[0] == "process":
                if not ll.address_of_symbol(name):
                    raise LoadError(f"symbol {name} not found in this process")
                continue
            addr = self.address(name, how)
            if self.registered.get(name) != addr:
                ll.add_symbol(name, addr)
                self.registered[name] = addr

    def preload_scipy_linalg(self, lapack: bool):
        """Numba's BLAS/LAPACK helpers (numba_xxgemv, ...) import
        ``scipy.linalg.cython_blas`` / ``cython_lapack`` on their first call for the
        function pointers in ``__pyx_capi__``; importing them through ``scipy.linalg``
        costs ~0.23 s.  Loading the extension files directly (only the light ``scipy``
        package itself gets imported) costs ~10 ms (BLAS) / ~25 ms (both), and the
        helpers then find them in sys.modules.  A later ``import scipy.linalg`` reuses
        them."""
        want = ["scipy.linalg.cython_blas"] + (["scipy.linalg.cython_lapack"] if lapack else [])
        if "scipy.linalg" in sys.modules or all(m in sys.modules for m in want):
            return
        spec = importlib.util.find_spec("scipy")
        if spec is None or not spec.submodule_search_locations:
            return                         # the helper will report the missing SciPy
        root = spec.submodule_search_locations[0]
        for modname in want:
            if modname in sys.modules:
                continue
            try:
                path = _find_ext(root, ("linalg", modname.rsplit(".", 1)[1]))
                loader = importlib.machinery.ExtensionFileLoader(modname, path)
                mspec = importlib.util.spec_from_file_location(modname, path, loader=loader)
                mod = importlib.util.module_from_spec(mspec)
                sys.modules[modname] = mod
                loader.exec_module(mod)
            except Exception:
                sys.modules.pop(modname, None)   # let the helper import it the slow way

    def check_compatible(self, meta):
        if meta.get("format") != FORMAT:
            raise LoadError("format")
        import llvmlite
        import numpy as np
        if meta["python"] != sys.version or meta["numpy"] != np.__version__ \
                or meta["llvmlite"] != llvmlite.__version__:
            raise LoadError("Python, NumPy or llvmlite version changed")
        for modname, (rel, size, mtime) in meta["exts"].items():
            st = os.stat(self.paths[modname])
            if os.path.join(self.root, rel) != self.paths[modname] or \
                    (st.st_size, st.st_mtime_ns) != (size, mtime):
                raise LoadError(f"{modname} changed since the code was saved")
        triple, cpu, feats = meta["magic"]
        htriple, hcpu, hfeats = self.host
        if triple != htriple:
            raise LoadError(f"target {triple}, host {htriple}")
        if cpu not in (hcpu, "generic"):
            raise LoadError(f"compiled for CPU {cpu}, host is {hcpu}")
        need = {f for f in feats.split(",") if f.startswith("+")}
        if not need <= hfeats:
            raise LoadError("compiled for CPU features this host lacks")


_RT: _Runtime | None = None
_ENGINES: list = []


def runtime() -> _Runtime:
    global _RT
    if _RT is None:
        _RT = _Runtime()
    return _RT


def read(path: str):
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.startswith(MAGIC):
        raise LoadError("not a saved object")
    n = len(MAGIC)
    # a damaged file must never reach the machine: the whole body is hashed
    if len(data) < n + 48 or hashlib.sha256(data[n + 32:]).digest() != data[n:n + 32]:
        raise LoadError("damaged (checksum)")
    n += 32
    lm, lo = struct.unpack_from("<QQ", data, n)
    n += 16
    if len(data) != n + lm + lo:
        raise LoadError("truncated")
    meta = pickle.loads(data[n:n + lm])
    return meta, data[n + lm:]


def load(path: str, name: str | None = None):
    """A callable running the saved overload.  Raises LoadError if it cannot be used
    here; TypeError (from the guard) for arguments of other types than saved."""
    rt = runtime()
    ll = rt.ll
    meta, obj = read(path)
    rt.check_compatible(meta)
    rt.register(meta["symbols"])
    linalg = {how[1] for how in meta["symbols"].values()
              if how[0] == "helperlib" and how[1].startswith(_LINALG_HELPERS)}
    if linalg:
        rt.preload_scipy_linalg(lapack=bool(linalg - _BLAS_HELPERS))

    # One engine per object: the object's common symbols (the _ZN08NumbaEnv... slots,
    # also defined by other objects for shared callees) and weak ones (NRT_incref) stay
    # private to it, and get_global_value_address finds this object's copy.
    ee = ll.create_mcjit_compiler(ll.parse_assembly(""), rt.tm)
    ee.add_object_file(ll.ObjectFileRef.from_data(obj))
    ee.finalize_object()

    # The engine is never freed: NRT meminfo destructors of objects the code returned
    # may point into it (Numba never frees code either).
    _ENGINES.append(ee)

    # Environments: the wrapper reads the constants (e.g. NumPy dtypes for boxing arrays)
    # from env.consts; nopython code only reaches its globals in object mode.
    keep = [ee]
    consts = pickle.loads(meta["envs"])
    main = None
    for env_name, values in consts.items():
        env = rt.dynfunc.Environment({"__name__": meta["modname"]})
        env.consts[:] = values
        slot = ee.get_global_value_address(env_name)
        if not slot:
            raise LoadError(f"Environment slot {env_name} not found")
        ctypes.c_void_p.from_address(slot).value = id(env)
        keep.append(env)
        if env_name == meta["main_env"]:
            main = env
    if main is None:
        raise LoadError("main Environment missing")
    fnptr = ee.get_function_address(meta["wrapper"])
    if not fnptr:
        raise LoadError("wrapper symbol not found")
    qual = meta["qualname"].split(".")[-1]
    # the wrapper is a METH_VARARGS|METH_KEYWORDS C function taking the Environment as
    # ``self``; ``keep`` holds the engine (the code) and the Environments alive
    import types
    cfunc = rt.dynfunc.make_function(types.ModuleType(meta["modname"]), qual, f"compiled {qual}", fnptr,
                                     main, tuple(keep))
    return _guarded(cfunc, meta["spec"], name or qual)


def _guarded(cfunc, spec, name):
    """A Python function checking that its arguments have the saved types (what Numba's
    dispatcher would have decided) before calling the C wrapper."""
    import numpy as np
    ns = {"_c": cfunc, "_nd": np.ndarray, "_bad": _bad_args, "_spec": spec}
    params = [f"a{i}" for i in range(len(spec))]
    checks = []
    for i, s in enumerate(spec):
        a = params[i]
        if s[0] == "array":
            ns[f"_dt{i}"] = np.dtype(s[1])
            c = [f"type({a}) is _nd", f"{a}.ndim == {s[2]}",
                 f"({a}.dtype is _dt{i} or {a}.dtype == _dt{i})"]
            fl = []
            if s[3] == "C":
                fl.append("c_contiguous")
            elif s[3] == "F":
                fl.append("f_contiguous")
            if s[4]:
                fl.append("writeable")
            fl.append("aligned")
            checks.append(" and ".join(c))
            checks.append(" and ".join(f"{a}.flags.{f}" for f in fl))
        else:
            kind = np.dtype(s[1]).kind
            pytype = {"f": "float", "i": "int", "u": "int", "b": "bool"}[kind]
            ns[f"_st{i}"] = np.dtype(s[1]).type
            if kind == "i" or kind == "u":
                checks.append(f"(type({a}) is _st{i} or (type({a}) is int))")
            else:
                checks.append(f"(type({a}) is _st{i} or type({a}) is {pytype})")
    arglist = ", ".join(params)
    cond = " and ".join(checks) or "True"
    src = (f"def {name}({arglist}):\n"
           f"    if not ({cond}):\n"
           f"        _bad(({arglist}{',' if len(params) == 1 else ''}), _spec)\n"
           f"    return _c({arglist})\n")
    exec(compile(src, f"<nrtobj {name}>", "exec"), ns)
    fn = ns[name]
    fn.spec = spec
    fn.cfunc = cfunc
    return fn


def _bad_args(vals, spec):
    raise TypeError(f"arguments {spec_of_values(vals)} do not match the compiled "
                    f"signature {spec}")


def nrt_stats():
    """(alloc, free, mi_alloc, mi_free) of Numba's memory system (stats must have been
    enabled with runtime().nrt.memsys_enable_stats() before the first allocation)."""
    n = runtime().nrt
    return (n.memsys_get_stats_alloc(), n.memsys_get_stats_free(),
            n.memsys_get_stats_mi_alloc(), n.memsys_get_stats_mi_free())
