"""Parity of the CPU backend with the reference interpreter: the repository's programs
(examples/*.dp, tests/programs/*.dp, the forward-mode test program) run on both
backends, and values, dp.jvp and dp.grad agree to 1e-12 (relative to the size of the
values); errors agree too.  Then a sweep of the primitive registry (tests/test_rules.py's
argument sets).

Each program is compiled once per test module (module-scoped), and compiled code is
cached on disk, so a second run compiles nothing.  Set DPLANG_FULL_SWEEP=1 to run the
sweep on every argument set of every primitive, with the JVP and VJP functions of each
primitive's rules (several minutes the first time, seconds once cached)."""
import glob
import os
import zlib

import numpy as np
import pytest

import dplang as dp
from dplang.errors import DPError
from dplang.ir import types as T

HERE = os.path.dirname(__file__)
ROOT = os.path.join(HERE, "..")
RTOL = 1e-12
FULL = bool(os.environ.get("DPLANG_FULL_SWEEP"))


def _programs():
    files = sorted(glob.glob(os.path.join(ROOT, "examples", "*.dp"))) + \
        sorted(glob.glob(os.path.join(HERE, "programs", "*.dp")))
    out = {os.path.relpath(f, ROOT): ("file", f) for f in files}
    from test_ad_forward import SRC
    out["fwd.dp (test_ad_forward)"] = ("src", SRC)
    return out


PROGRAMS = _programs()
_loaded: dict = {}


def load(prog, backend):
    key = (prog, backend)
    if key not in _loaded:
        kind, what = PROGRAMS[prog]
        if kind == "file":
            _loaded[key] = dp.load(what, backend=backend)
        else:
            _loaded[key] = dp.compile(what, filename="fwd.dp", backend=backend)
    return _loaded[key]


def _functions():
    out = []
    for prog in PROGRAMS:
        m = load(prog, "interp")
        for name in m.functions:
            out.append((prog, name))
    return out


FUNCS = _functions()


def make_args(func, seed):
    rng = np.random.default_rng(seed)
    sizes: dict = {}
    pick = iter([3, 4, 2, 5, 3, 4, 2, 5, 3, 3, 3, 3])
    args = []
    for p in func.params:
        t = p.type
        if isinstance(t, T.Array):
            shape = []
            for d in t.shape:
                if isinstance(d, int):
                    shape.append(d)
                elif isinstance(d, T.Sym) and len(d.terms) == 1 and d.terms[0][1] == 1:
                    n = d.terms[0][0]
                    if n not in sizes:
                        sizes[n] = next(pick)
                    shape.append(sizes[n] + d.const)
                else:
                    shape.append(3)
            if t.dtype in ("f64", "f32"):
                a = rng.standard_normal(tuple(shape)).astype(T.NP_DTYPES[t.dtype])
            elif t.dtype == "i64":
                a = rng.integers(0, 2, tuple(shape))
            else:
                a = rng.integers(0, 2, tuple(shape)).astype(bool)
        elif t.dtype in ("f64", "f32"):
            a = float(rng.uniform(0.3, 1.5))
        elif t.dtype == "i64":
            a = 3
        else:
            a = True
        args.append(a)
    return args


def _flat(x):
    if isinstance(x, tuple):
        for y in x:
            yield from _flat(y)
    else:
        yield x


def assert_close(got, ref, rtol=RTOL):
    g, r = list(_flat(got)), list(_flat(ref))
    assert len(g) == len(r)
    scale = max([1.0] + [float(np.max(np.abs(np.asarray(v)[np.isfinite(v)]), initial=0.0))
                         for v in r if np.asarray(v).dtype.kind == "f"])
    for a, b in zip(g, r):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        if b.dtype.kind == "f":
            tol = rtol if b.dtype == np.float64 else 1e-5
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, equal_nan=True)
        else:
            np.testing.assert_array_equal(a, b)


def outcome(f, args):
    try:
        return "ok", f(*args)
    except DPError as e:
        return "error", (type(e), str(e))


def check(fi, fc, args):
    ri = outcome(fi, args)
    rc = outcome(fc, args)
    assert ri[0] == rc[0], (ri, rc)
    if ri[0] == "ok":
        assert_close(rc[1], ri[1])
    else:
        assert rc[1] == ri[1]


def _float_params(func):
    return [k for k, p in enumerate(func.params) if getattr(p.type, "dtype", None) == "f64"]


@pytest.mark.parametrize("prog,name", FUNCS, ids=[f"{p}::{n}" for p, n in FUNCS])
def test_values(prog, name):
    fi, fc = getattr(load(prog, "interp"), name), getattr(load(prog, "cpu"), name)
    args = make_args(fi.func, zlib.crc32(name.encode()))
    check(fi, fc, args)


def with_special_entries(args, seed):
    """The float arrays of ``args`` with about a quarter of their entries (and about a
    quarter of the float scalars) replaced by inf, -inf, nan, -0.0 or 0.0 (DP tables have inf borders: sums, minima and soft
    operators must treat them as NumPy does)."""
    rng = np.random.default_rng(seed)
    specials = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0])
    out = []
    for a in args:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.size:
            a = a.copy()
            flat = a.reshape(-1)
            hit = rng.random(flat.size) < 0.25
            flat[hit] = specials[rng.integers(0, len(specials), int(hit.sum()))]
        elif isinstance(a, (float, np.floating)) and rng.random() < 0.25:
            a = type(a)(specials[rng.integers(0, len(specials))])
        out.append(a)
    return out


@pytest.mark.parametrize("prog,name", FUNCS, ids=[f"{p}::{n}" for p, n in FUNCS])
def test_values_with_inf_nan_and_signed_zeros(prog, name):
    fi, fc = getattr(load(prog, "interp"), name), getattr(load(prog, "cpu"), name)
    seed = zlib.crc32(name.encode())
    args = with_special_entries(make_args(fi.func, seed), seed)
    with np.errstate(all="ignore"):
        check(fi, fc, args)


# derivatives of these by default (every function with DPLANG_FULL_SWEEP=1): each
# derivative is a new function for Numba to compile (seconds each, the first time)
DERIVED = {"examples/dtw.dp::dtw", "examples/dtw.dp::dtw_series", "examples/mlp.dp::loss",
           "examples/mlp.dp::loss_batched", "examples/viterbi.dp::viterbi",
           "examples/softdtw_barycenter.dp::barycenter_loss",
           "tests/programs/control.dp::mat", "tests/programs/control.dp::accum",
           "tests/programs/control.dp::loop_ret", "tests/programs/control.dp::newton",
           "tests/programs/uses_import.dp::total", "fwd.dp (test_ad_forward)::newton",
           "fwd.dp (test_ad_forward)::branchy", "fwd.dp (test_ad_forward)::early",
           "fwd.dp (test_ad_forward)::overwrite"}


def _differentiable(kind):
    out = []
    for prog, name in FUNCS:
        if not FULL and f"{prog}::{name}" not in DERIVED:
            continue
        func = getattr(load(prog, "interp"), name).func
        rt = func.result_types
        if not _float_params(func) or not rt or any(getattr(t, "dtype", None) != "f64" for t in rt):
            continue
        if kind == "grad" and (len(rt) != 1 or not isinstance(rt[0], T.Scalar)):
            continue
        out.append((prog, name))
    return out


JVP_FUNCS = _differentiable("jvp")
GRAD_FUNCS = _differentiable("grad")


@pytest.mark.parametrize("prog,name", JVP_FUNCS, ids=[f"{p}::{n}" for p, n in JVP_FUNCS])
def test_jvp(prog, name):
    fi, fc = getattr(load(prog, "interp"), name), getattr(load(prog, "cpu"), name)
    k = _float_params(fi.func)[0]
    args = make_args(fi.func, zlib.crc32(name.encode()))
    tangent = np.random.default_rng(1).standard_normal(np.shape(args[k]))[()]
    check(dp.jvp(fi, wrt=k), dp.jvp(fc, wrt=k), args + [tangent])


@pytest.mark.skipif(not hasattr(dp, "grad"), reason="reverse mode not available")
@pytest.mark.parametrize("prog,name", GRAD_FUNCS, ids=[f"{p}::{n}" for p, n in GRAD_FUNCS])
def test_grad(prog, name):
    fi, fc = getattr(load(prog, "interp"), name), getattr(load(prog, "cpu"), name)
    k = _float_params(fi.func)[0]
    args = make_args(fi.func, zlib.crc32(name.encode()))
    check(dp.grad(fi, wrt=k), dp.grad(fc, wrt=k), args)


# ---------------------------------------------------------------- the primitive registry
# Beyond the first argument set of each primitive, the default sweep keeps those whose
# generated code takes another path (axes of reductions and soft operators, slices,
# batched products, the l2 regulariser, sum_to with unknown sizes).
EXTRA = {"sum": (2, 4, 10), "logsumexp": (1, 12), "argmax": (1,), "softmax": (4, 6),
         "smax": (6, 9), "sargmin": (13,), "broadcast_to": (2, 3), "sum_to": (0, 3),
         "getitem": (3, 5, 8), "setitem": (3, 5), "matmul": (1, 4, 6), "reshape": (3,),
         "smaxn": (4,), "smaximum": (5,), "transpose": (4,)}


def _sweep_cases():
    import test_rules as TR
    out = []
    for name in sorted(TR.CASES):
        cases = TR.CASES[name]()
        for k in range(len(cases)):
            if FULL or k == 0 or k in EXTRA.get(name, ()):
                out.append(pytest.param(name, k, id=f"{name}-{k}"))
    return out


def _program_of(fn):
    from dplang.ir.core import Program
    return Program(funcs={fn.name: fn}, exports={fn.name: fn.name})


def _run_both(fn, args):
    from dplang.backends import cpu, interp
    prog = _program_of(fn)
    try:
        ref = interp.run_func(prog, fn.name, list(args))
    except DPError:
        return None
    got = cpu.run_func(prog, fn.name, list(args))
    assert_close(tuple(got), tuple(ref))
    return ref


@pytest.mark.parametrize("name,k", _sweep_cases())
def test_primitive(name, k):
    import test_rules as TR
    args, attrs, fixed, order2 = TR.CASES[name]()[k]
    c = TR.Case(name, args, attrs, fixed, order2)
    _run_both(c.primal(), args)
    if not FULL or c.prim.zero_derivative:
        return
    rng = np.random.default_rng(k)
    tans = [np.asarray(rng.standard_normal(np.shape(a)), dtype=np.asarray(a).dtype)[()]
            for a, act in zip(args, c.active) if act]
    _run_both(c.jvp(), list(args) + tans)
    z = c.prim.impl(*args, **attrs)
    z = z[-1] if c.prim.nresults > 1 else z        # the packed result has the last's shape
    w = np.asarray(rng.standard_normal(np.shape(z)), dtype=np.asarray(z).dtype)[()]
    _run_both(c.vjp(), list(args) + [w])


def _all_first_cases():
    import test_rules as TR
    return [pytest.param(name, id=name) for name in sorted(TR.CASES)]


@pytest.mark.parametrize("name", _all_first_cases())
def test_primitive_with_inf_nan_and_signed_zeros(name):
    # every primitive's first argument set with special entries in its float arrays
    import test_rules as TR
    args, attrs, fixed, order2 = TR.CASES[name]()[0]
    c = TR.Case(name, args, attrs, fixed, order2)
    special = with_special_entries(list(args), zlib.crc32(name.encode()))
    with np.errstate(all="ignore"):
        _run_both(c.primal(), special)


# ---------------------------------------------------------------- the standard library
def _stdlib_source():
    import re
    lines = []
    for mod in ("align", "select", "sequence"):
        with open(os.path.join(ROOT, "stdlib", "std", f"{mod}.dp")) as fh:
            names = re.findall(r"^def (\w+)", fh.read(), re.M)
        lines.append(f"from std.{mod} import {', '.join(names)}")
    return "\n".join(lines) + "\n"


_STD = {}


def std(backend):
    if backend not in _STD:
        _STD[backend] = dp.compile(_stdlib_source(), filename="std_all.dp", backend=backend)
    return _STD[backend]


def _std_functions():
    import re
    out = []
    for mod in ("align", "select", "sequence"):
        with open(os.path.join(ROOT, "stdlib", "std", f"{mod}.dp")) as fh:
            out += re.findall(r"^def (\w+)", fh.read(), re.M)
    return out


@pytest.mark.parametrize("name", _std_functions())
def test_stdlib_values(name):
    # every stdlib function on both backends, on plain data and with inf/nan/-0.0 entries
    fi, fc = getattr(std("interp"), name), getattr(std("cpu"), name)
    for seed in range(2):
        args = make_args(fi.func, seed)
        check(fi, fc, args)
        with np.errstate(all="ignore"):
            check(fi, fc, with_special_entries(args, seed))
