"""The CPU backend (backends/cpu): the generated source (readable, in place, mangled
names), run-time errors located as the interpreter locates them, dtypes, and the
objmode fallback for a primitive without a compiled form.

Compiled code is cached on disk (the user's cache directory, or $DPLANG_CACHE), so a
second run of this file compiles nothing."""
import os
import re

import numpy as np
import pytest

import dplang as dp
from dplang.backends import cpu

HERE = os.path.dirname(__file__)
EX = os.path.join(HERE, "..", "examples")
rng = np.random.default_rng(11)

SRC = '''
def f(v: f64[n], k: i64) -> f64:
    assert k < n, "k is too large"
    return v[k]

def g(v: f64[n], k: i64) -> f64:
    return v[k]

def lin(A: f64[n, n], b: f64[n]) -> f64[n]:
    return solve(A, b)

def soft(v: f64[n], gamma: f64) -> f64:
    return smax(v, gamma, "entropy")

def np(x: f64) -> f64:
    numba = x * 2.0
    range = numba + 1.0
    print = range * range
    jit = print - 1.0
    rt_psum = jit * 0.5
    return rt_psum

def len(x: f64[n]) -> f64:
    math = sum(x)
    return np(math)

def pair(a: f64[n], b: f64[n]) -> f64:
    return sum(a * b)

def single(x: f32[n], y: f32) -> f32:
    return sum(exp(x) * y) / y
'''


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="cpu_errs.dp", backend="interp"),
            dp.compile(SRC, filename="cpu_errs.dp", backend="cpu"))


@pytest.fixture(scope="module")
def dtw():
    return dp.load(os.path.join(EX, "dtw.dp"), backend="cpu")


def _loop_body(src: str, header: str) -> str:
    """The lines of the ``for`` loop starting at the line containing ``header``."""
    lines = src.splitlines()
    k = next(i for i, ln in enumerate(lines) if header in ln)
    ind = len(lines[k]) - len(lines[k].lstrip())
    body = []
    for ln in lines[k + 1:]:
        if ln.strip() and len(ln) - len(ln.lstrip()) <= ind:
            break
        body.append(ln)
    return "\n".join(body)


def test_dtw_source_is_readable_and_in_place(dtw):
    src = dtw.dtw.source()
    assert "@jit" in src and "def dtw(D):" in src
    # every statement of the function carries its .dp line
    body = src[src.index("def dtw(D):"):]
    stmts = [ln for ln in body.splitlines()[2:] if ln.strip()]
    assert stmts and all(re.search(r"# dtw\.dp:\d+$", ln) for ln in stmts)
    assert "for i in range(1, " in src and "for j in range(1, " in src
    # the DP table is written in place: no copy anywhere in the loop nest
    loop = _loop_body(src, "for i in range(")
    # (through the unchecked accessor: the nest's index ranges are tested before it)
    assert "R_3[i, j] = " in loop or "rt_put2(R_3, i, j, " in loop
    assert "copy" not in loop and "np.array(" not in loop and "np.full" not in loop
    assert src.count("np.full(") == 1           # the table is allocated once


def test_dtw_matches_interpreter(dtw):
    ref = dp.load(os.path.join(EX, "dtw.dp"), backend="interp")
    D = rng.random((9, 7))
    assert dtw.dtw(D) == pytest.approx(ref.dtw(D), rel=1e-14)
    assert isinstance(dtw.dtw(D), float)


def test_gradient_source_keeps_tables_in_place(dtw):
    g = dp.grad(dtw.dtw)
    src = cpu.source(g.program, g.key)
    for header in ("for i in range(1, ", "for i_1 in range("):
        loop = _loop_body(src, header)
        assert ".copy()" not in loop, loop
    D = rng.random((5, 6))
    ref = dp.grad(dp.load(os.path.join(EX, "dtw.dp"), backend="interp").dtw)(D)
    np.testing.assert_allclose(g(D), ref, rtol=1e-12)


def test_user_names_cannot_collide_with_generated_code(mods):
    mi, mc = mods
    assert mc.np(2.0) == mi.np(2.0) == 12.0
    v = rng.standard_normal(4)
    assert mc.len(v) == pytest.approx(mi.len(v), rel=1e-14)
    src = mc.len.source()
    assert "def np_(x):" in src and "def len_(x):" in src
    assert "numba_ = " in src and "range_ = " in src and "print_ = " in src
    assert "jit_ = " in src and "rt_psum_ = " in src and "math_ = " in src
    assert "import numpy as np\n" in src


def test_located_runtime_errors_match_the_interpreter(mods):
    mi, mc = mods
    cases = [("f", (np.ones(3), 5)), ("g", (np.ones(3), 7)), ("g", (np.ones(3), -4)),
             ("lin", (np.zeros((2, 2)), np.ones(2))), ("soft", (np.ones(3), -1.0)),
             ("pair", (np.ones(3), np.ones(4)))]
    for name, args in cases:
        with pytest.raises(dp.DPError) as ei:
            getattr(mi, name)(*args)
        with pytest.raises(type(ei.value)) as ec:
            getattr(mc, name)(*args)
        assert str(ec.value) == str(ei.value)
        assert str(ec.value).startswith("cpu_errs.dp:")
    with pytest.raises(dp.DPAssertionError, match="k is too large"):
        mc.f(np.ones(3), 5)
    assert mc.g(np.arange(3.0), -1) == 2.0          # negative indices count from the end


def test_float32(mods):
    mi, mc = mods
    x, y = rng.standard_normal(5).astype(np.float32), np.float32(1.5)
    a, b = mi.single(x, y), mc.single(x, y)
    assert isinstance(b, np.float32)
    assert b == pytest.approx(a, rel=1e-6)


def test_a_view_never_sees_a_later_write():
    """IR (the front end refuses this aliasing in source): r = B[0, :]; B[0, 0] = 100 in
    place (B is dead after it); then r is read.  The generated code must copy r."""
    from dplang.backends import interp
    from dplang.ir import types as T
    from dplang.ir.builder import Builder, new_region
    from dplang.ir.core import Func, Program
    body = new_region([T.Array("f64", (3, 4))], hints=["A"])
    b = Builder(body)
    (A,) = body.args
    B = b.prim("copy", A, hint="B")
    zero = b.const(0, T.I64)
    one = b.const(1, T.I64)
    r = b.prim("getitem", A if False else B, zero, index=("i", ("slice", False, False, False)),
               hint="r")
    B1 = b.prim("setitem", B, b.const(100.0, T.F64), zero, zero, hint="B")
    s = b.prim("add", b.prim("getitem", r, zero), b.prim("getitem", r, one))
    b.return_(B1, s)
    fn = Func("views", body, [B1.type, s.type], param_names=["A"], returns_tuple=True)
    prog = Program(funcs={"views": fn}, exports={"views": "views"})
    x = rng.standard_normal((3, 4))
    ref = interp.run_func(prog, "views", [x])
    got = cpu.run_func(prog, "views", [x])
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[1] == ref[1] == x[0, 0] + x[0, 1]
    assert "B[0].copy()" in cpu.source(prog, "views")


def _transpose_prog(write_source):
    """IR: a = A * 2 (a new array); t = a.T; then an in-place write to a (write_source)
    or to a copy C of A; then t is read."""
    from dplang.ir import types as T
    from dplang.ir.builder import Builder, new_region
    from dplang.ir.core import Func, Program
    body = new_region([T.Array("f64", (3, 3))], hints=["A"])
    b = Builder(body)
    (A,) = body.args
    a = b.prim("mul", A, b.const(2.0, T.F64), hint="a")
    t = b.prim("transpose", a, hint="t")
    zero, one = b.const(0, T.I64), b.const(1, T.I64)
    target = a if write_source else b.prim("copy", A, hint="C")
    w = b.prim("setitem", target, b.const(100.0, T.F64), zero, one, hint="w")
    out = b.prim("add", t, w)
    b.return_(out)
    fn = Func("tr", body, [out.type], param_names=["A"])
    return Program(funcs={"tr": fn}, exports={"tr": "tr"})


@pytest.mark.parametrize("write_source", [True, False])
def test_a_transposed_view_is_copied_only_when_its_array_is_written(write_source):
    from dplang.backends import interp
    prog = _transpose_prog(write_source)
    x = rng.standard_normal((3, 3))
    ref = interp.run_func(prog, "tr", [x])
    got = cpu.run_func(prog, "tr", [x])
    np.testing.assert_array_equal(got[0], ref[0])
    copied = "np.transpose(a).copy()" in cpu.source(prog, "tr")
    assert copied == write_source


def test_arguments_are_not_modified(dtw):
    x, y = rng.standard_normal((5, 2)), rng.standard_normal((4, 2))
    x0, y0 = x.copy(), y.copy()
    dtw.dtw_series(x, y)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_source_of_a_function_lists_its_callees(dtw):
    src = dtw.dtw_series.source()
    assert "def dtw_series(x, y):" in src and "def dtw(D):" in src and "def sqeuclidean(" in src
    compile(src, "<generated>", "exec")         # valid Python


INLINE_SRC = '''
def leaf(x: f64[n]) -> f64:
    return sum(x * x)

def once(x: f64[n]) -> f64:
    return leaf(x) + 1.0

def sq(x: f64[n]) -> f64:
    return sum(x) ** 2

def twice(x: f64[n]) -> f64:
    return sq(x) * sq(x + 1.0)

def jit_inline(x: f64[n]) -> f64:
    return max(x)

def top(x: f64[n]) -> f64:
    return once(x) + twice(x) - jit_inline(x)
'''


def _decorators(src: str) -> dict:
    return dict((f, d) for d, f in re.findall(r"^@(\w+)\ndef (\w+)\(", src, re.M))


def test_callees_with_one_call_site_are_inlined():
    """Numba inlines a callee called from one place (``@jit_inline``); one called from
    two places, and the function asked for, stay dispatchers (``@jit``)."""
    mc = dp.compile(INLINE_SRC, filename="inline.dp", backend="cpu")
    mi = dp.compile(INLINE_SRC, filename="inline.dp", backend="interp")
    dec = _decorators(mc.top.source())
    assert dec.pop("top") == "jit" and dec.pop("sq") == "jit"
    assert sorted(dec.values()) == ["jit_inline"] * 4, dec     # leaf, once, twice, jit_inline
    assert "jit_inline = numba.njit(" in mc.top.source()
    assert _decorators(mc.once.source()) == {"leaf": "jit_inline", "once": "jit"}
    assert "jit_inline = " not in mc.sq.source()
    x = rng.standard_normal(7)
    for name in ("top", "once", "twice", "jit_inline"):
        assert getattr(mc, name)(x) == pytest.approx(getattr(mi, name)(x), rel=1e-13)
    g_cpu, g_ref = dp.grad(mc.top)(x), dp.grad(mi.top)(x)
    np.testing.assert_allclose(g_cpu, g_ref, rtol=1e-12)


def test_a_callee_with_an_objmode_block_is_not_inlined(monkeypatch):
    from dplang.backends.cpu import codegen
    monkeypatch.delattr(codegen.FuncGen, "p_softplus")
    src = ("def h(x: f64[n]) -> f64[n]:\n    return softplus(x) * 2.0\n\n"
           "def k(x: f64[n]) -> f64:\n    return sum(h(x))\n")
    mc = dp.compile(src, filename="fallback_inline.dp", backend="cpu")
    assert _decorators(mc.k.source()) == {"h": "jit", "k": "jit"}
    x = rng.standard_normal(5)
    assert mc.k(x) == pytest.approx(2.0 * np.log1p(np.exp(x)).sum(), rel=1e-14)

def test_objmode_fallback_for_a_primitive_without_compiled_form(monkeypatch):
    """A primitive the code generator does not know (one added later) still runs: its
    NumPy reference is called from compiled code."""
    from dplang.backends.cpu import codegen
    monkeypatch.delattr(codegen.FuncGen, "p_softplus")
    src = "def h(x: f64[n]) -> f64[n]:\n    return softplus(x) * 2.0\n"
    mc = dp.compile(src, filename="fallback.dp", backend="cpu")
    mi = dp.compile(src, filename="fallback.dp", backend="interp")
    x = rng.standard_normal(6)
    assert "numba.objmode(" in mc.h.source()
    np.testing.assert_allclose(mc.h(x), mi.h(x), rtol=1e-15)


def test_compiled_once_per_process(dtw):
    D = rng.random((4, 4))
    dtw.dtw(D)
    before = cpu.stats()
    for _ in range(3):
        dtw.dtw(D)
    after = cpu.stats()
    assert after["compiled"] == before["compiled"]
    assert after["imported"] == before["imported"]


def test_api_source_and_backend_name(dtw):
    assert "cpu" in repr(dtw.dtw)
    with pytest.raises(dp.DPError):
        dp.load(os.path.join(EX, "dtw.dp"), backend="interp").dtw.source()


def test_cpu_is_the_default_backend():
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "DPLANG_BACKEND"}
    code = ("import dplang as dp, numpy as np; m = dp.compile('def f(x: f64) -> f64:\\n"
            "    return x * 2.0\\n'); print(dp.api.DEFAULT_BACKEND, repr(m.f), m.f(1.5))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cpu", "<dplang", "function", "f", "(cpu)>", "3.0"]


def _tuned_and_untuned(code):
    """stdout of ``code`` in a fresh Python with the allocator settings, and without
    (DPLANG_MALLOPT=0); both must succeed."""
    import subprocess
    import sys
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "DPLANG_MALLOPT": "0"})
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    return on.stdout, off.stdout


def test_allocator_tuning_applies_once_and_can_be_turned_off():
    code = ("import numpy as np, dplang as dp\n"
            "from dplang.backends.cpu import memory\n"
            "m = dp.compile('def f(x: f64) -> f64:\\n    return x * 2.0\\n', backend='cpu')\n"
            "assert m.f(1.5) == 3.0\n"
            "print(memory.applied, memory._done)\n")
    import platform
    on, off = _tuned_and_untuned(code)
    glibc = platform.libc_ver()[0] == "glibc"
    assert on.split() == [str(glibc), "True"]
    assert off.split() == ["False", "True"]


def test_large_tables_are_reused_without_page_faults():
    """Blocks of 32 MiB and more come from the heap once tuned (M_MMAP_MAX = 0), so a
    second call does not fault its 40 MB table in again; untuned, every call does."""
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator settings are glibc's")
    code = ("import resource, numpy as np, dplang as dp\n"
            "m = dp.compile('def f(n: i64) -> f64:\\n    a = zeros(n)\\n    a[n - 1] = 1.0\\n"
            "    return sum(a)\\n', backend='cpu')\n"
            "m.f(5_000_000); m.f(5_000_000)\n"
            "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "assert m.f(5_000_000) == 1.0\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n")
    on, off = _tuned_and_untuned(code)
    assert int(on) < 1000 < 5000 < int(off)    # 40 MB: 9766 pages


def test_trim_threshold_bounds():
    from dplang.backends.cpu import memory
    t = memory.trim_threshold()
    assert 256 << 20 <= t <= 1 << 30


def test_lu_solve_with_the_factorisation_and_its_transpose():
    from dplang.backends.cpu import runtime as rt
    rng = np.random.default_rng(3)
    A = rng.standard_normal((7, 7))          # pivoting swaps rows here
    B = rng.standard_normal((7, 3))
    LU, piv = rt.rt_lu(A)
    assert not np.array_equal(piv, np.arange(7))
    np.testing.assert_allclose(rt.rt_lu_solve2(LU, piv, B, False), np.linalg.solve(A, B),
                               rtol=1e-12)
    np.testing.assert_allclose(rt.rt_lu_solve2(LU, piv, B, True), np.linalg.solve(A.T, B),
                               rtol=1e-12)
    np.testing.assert_allclose(rt.rt_lu_solve1(LU, piv, B[:, 0], True),
                               np.linalg.solve(A.T, B[:, 0]), rtol=1e-12)


def test_gradient_of_solve_factorises_once():
    # the reverse sweep of solve(M, b) solves with M.T: one LU serves both
    src = ("def f(A: f64[n, n], b: f64[n]) -> f64:\n"
           "    M = A @ A.T + eye(n)\n"
           "    x = solve(M, b)\n"
           "    return sum(x * x)\n")
    cpu = dp.compile(src, filename="lu.dp", backend="cpu")
    ref = dp.compile(src, filename="lu.dp", backend="interp")
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((9, 9)), rng.standard_normal(9)
    for wrt in (0, 1):
        g = dp.grad(cpu.f, wrt=wrt)
        np.testing.assert_allclose(g(A, b), dp.grad(ref.f, wrt=wrt)(A, b), rtol=1e-11)
        body = g.source().split("def grad_f", 1)[1]
        assert body.count("rt_lu(") == 1 and body.count("rt_lu_solve1(") == 2
        assert "rt_solve1(" not in body
    # a singular matrix is still a located error
    src2 = src.replace("A @ A.T + eye(n)", "A @ A.T")
    bad = dp.compile(src2, filename="lu.dp", backend="cpu")
    with pytest.raises(dp.DPError) as ei:
        dp.grad(bad.f)(np.zeros((3, 3)), np.ones(3))
    assert "lu.dp:3:" in str(ei.value)


def test_sums_with_infinite_and_signed_zero_entries_match_numpy():
    # a short sum used to start from x[0] * 0, which is nan when x[0] is infinite
    src = ("def f(x: f64[n]) -> f64:\n    return sum(x)\n\n"
           "def g(z: f64[n, m]) -> f64[n]:\n    return sum(z, axis=1)\n")
    cpu = dp.compile(src, filename="sums.dp", backend="cpu")
    cases = [[np.inf, 1.0], [1.0, -np.inf, 2.0], [-0.0], [-0.0, -0.0], [np.inf] * 9,
             [-np.inf] + [1.0] * 20, [np.inf, -np.inf]]
    for c in cases:
        x = np.array(c)
        with np.errstate(invalid="ignore"):
            want = np.sum(x)
        got = cpu.f(x)
        assert (np.isnan(got) and np.isnan(want)) or \
            (got == want and np.signbit(got) == np.signbit(want)), (c, got, want)
    z = np.array([[np.inf, 1.0, 2.0], [-0.0, -0.0, -0.0], [1.0, -np.inf, 3.0]])
    np.testing.assert_array_equal(cpu.g(z), z.sum(axis=1))
    assert not np.signbit(cpu.g(z)[1])


def test_repeated_calls_take_a_short_path_that_keeps_every_check(mods, monkeypatch):
    """After a first call, calls whose arguments have the same kinds (dtype, rank,
    C-contiguous, writeable, matching dimensions) go straight to the compiled code
    (backends/cpu: fast_caller); any other call takes the ordinary path."""
    mi, mc = mods
    v = np.arange(4.0)
    assert mc.pair(v, v) == 14.0                    # compiles; sets up the short path

    def ordinary(*a, **k):
        raise RuntimeError("the ordinary path")
    monkeypatch.setattr(cpu, "run_func", ordinary)
    assert mc.pair(v, v + 1.0) == float(np.dot(v, v + 1.0))
    with pytest.raises(RuntimeError, match="ordinary path"):
        mc.pair(a=v, b=v)
    ro = v.copy()
    ro.flags.writeable = False
    for args in ((ro, v), (np.arange(8.0)[::2], v), (np.arange(4), v)):
        with pytest.raises(RuntimeError, match="ordinary path"):
            mc.pair(*args)
    monkeypatch.undo()
    assert mc.pair(ro, v) == 14.0 and mc.pair(np.arange(8.0)[::2], v) == float(
        np.dot(np.arange(0, 8, 2.0), v))
    with pytest.raises(dp.DPShapeError, match="dimension n is 5"):
        mc.pair(v, np.ones(5))
    # an error in compiled code called by the short path is located as before
    assert mc.g(v, 1) == 1.0
    monkeypatch.setattr(cpu, "run_func", ordinary)
    with pytest.raises(dp.DPError) as ec:
        mc.g(v, 9)
    with pytest.raises(dp.DPError) as ei:
        mi.g(v, 9)
    assert str(ec.value) == str(ei.value)
    assert mc.g(v, 2) == 2.0 and mc.g(v, np.int64(3)) == 3.0


def _host_has_avx512():
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


def test_loops_ask_for_512_bit_vectors_and_other_numba_code_is_left_alone(tmp_path):
    """rt_wide(): functions with loops (generated code, wavefront kernels, the runtime's
    loop kernels) carry the LLVM attribute prefer-vector-width=512; a function without a
    loop does not call it, and the user's own Numba functions keep Numba's settings."""
    import importlib.util

    import numba
    from dplang.backends.cpu import runtime as rt
    src = ('def loop(x: f64[n]) -> f64[n]:\n    return tanh(x * 2.0) + 1.0\n\n'
           'def scalar(a: f64, b: f64) -> f64:\n    return a * b + 1.0\n')
    mod = dp.compile(src, filename="wide.dp", backend="cpu")
    x = rng.standard_normal(100)
    np.testing.assert_allclose(mod.loop(x), np.tanh(x * 2.0) + 1.0, rtol=0, atol=1e-15)
    text = mod.loop.source()
    assert re.search(r"^    rt_wide\(\)", text, re.M)
    assert "for " in text
    assert "rt_wide()" not in mod.scalar.source()
    # the generated module itself: its LLVM IR carries the attribute
    path = tmp_path / "wide_gen.py"
    path.write_text(text.replace("cache=True", "cache=False"))
    spec = importlib.util.spec_from_file_location("wide_gen", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    disp = [v for k, v in vars(m).items() if isinstance(v, numba.core.registry.CPUDispatcher)
            and "loop" in k][0]
    np.testing.assert_array_equal(disp(x), mod.loop(x))
    sig = disp.signatures[0]
    assert '"prefer-vector-width"="512"' in disp.inspect_llvm(sig)
    # a runtime kernel (compiled afresh: Numba cannot show the IR of cached code)
    kernel = numba.njit(error_model="numpy")(rt.rt_tanh_a.py_func)
    np.testing.assert_array_equal(kernel(x), rt.rt_tanh_a(x))
    assert '"prefer-vector-width"="512"' in kernel.inspect_llvm(kernel.signatures[0])

    @numba.njit
    def user_loop(v):
        out = np.empty_like(v)
        for i in range(v.size):
            out[i] = v[i] * 3.0
        return out
    user_loop(x)
    ir = user_loop.inspect_llvm(user_loop.signatures[0])
    assert "prefer-vector-width" not in ir
    if _host_has_avx512():      # the machine code uses the 512-bit registers
        assert "zmm" in disp.inspect_asm(sig)


def test_prefetch_is_an_llvm_prefetch_that_changes_nothing():
    """rt_prefetch (wavefront-order tapes, codegen.wave_cell): LLVM's prefetch of the
    entry's address, for indices in range, negative (raised to 0) or past the end (a
    prefetch never faults); the buffer and the caller's results are unchanged."""
    import numba
    from dplang.backends.cpu import runtime as rt

    def touch(buf, ks):
        s = 0.0
        for k in ks:
            rt.rt_prefetch(buf, k)
            s += buf[min(max(k, 0), buf.shape[0] - 1)]
        return s
    f = numba.njit(error_model="numpy")(touch)
    buf = rng.standard_normal(1000)
    before = buf.copy()
    ks = np.array([0, 5, 999, -8, -1 << 40, 1000, 1 << 20], np.int64)
    assert f(buf, ks) == touch(buf, ks)
    np.testing.assert_array_equal(buf, before)
    ir = f.inspect_llvm(f.signatures[0])
    assert "llvm.prefetch" in ir


def test_sparse_max_of_two_or_three_scalars_has_the_array_paths_bits():
    """rt_smaxn's scalar path for l2 with at most three entries (rt_sparse_small: a DP
    cell's sparse max without arrays) gives rt_smax1's bits: random entries over many
    scales, ties, infinities, NaN and signed zeros, gamma from 1e-9 to 1e3."""
    import numba
    from dplang.backends.cpu import runtime as rt

    @numba.njit
    def small(g, s, z):
        if z.size == 1:
            return rt.rt_smaxn(g, True, s, (z[0],))
        if z.size == 2:
            return rt.rt_smaxn(g, True, s, (z[0], z[1]))
        return rt.rt_smaxn(g, True, s, (z[0], z[1], z[2]))

    @numba.njit
    def by_array(g, s, z):
        return s * rt.rt_smax1(s * z, g, True)

    r = np.random.default_rng(17)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, 1e-300, 5e-324, 1e300])
    for _ in range(20000):
        n = int(r.integers(1, 4))
        kind = r.random()
        if kind < 0.6:
            z = r.standard_normal(n) * 10.0 ** r.uniform(-3, 3)
        elif kind < 0.8:
            z = r.choice([0.0, 1.0, 2.0, -1.0], n)
        else:
            z = np.where(r.random(n) < 0.5, r.choice(special, n), r.standard_normal(n))
        g, s = 10.0 ** r.uniform(-9, 3), float(r.choice([1.0, -1.0]))
        got, want = small(g, s, z), by_array(g, s, z)
        assert (got != got and want != want) or \
            np.float64(got).view(np.int64) == np.float64(want).view(np.int64), (z, g, s)


def test_row_sparsemax_is_the_numpy_reference_bit_for_bit():
    """rt_sparsemax1 and rt_smax1 (l2) sort short rows by insertion (rt_sort_small): the
    weights and values are still exactly those of the NumPy reference (the
    interpreter's sparsemax_rows, smax_rows), over lengths 1 to 80, -inf entries, ties."""
    from dplang.backends.cpu import runtime as rt
    from dplang.ir.primitives.soft import smax_rows, sparsemax_rows
    r = np.random.default_rng(23)
    for _ in range(1500):
        K = int(r.integers(1, 81))
        z = r.standard_normal(K) * 10.0 ** r.uniform(-2, 2)
        if r.random() < 0.3:
            z[r.random(K) < 0.2] = -np.inf
        if r.random() < 0.3:
            z = np.floor(z)
        g = 10.0 ** r.uniform(-6, 2)
        assert np.array_equal(rt.rt_sparsemax1(z, g), sparsemax_rows(z[None, :], g)[0])
        assert rt.rt_smax1(z, g, True) == smax_rows(z[None, :], g, "l2")[0]
    for n in (0, 1, 2, 5, 64, 65, 100):
        a = r.choice([0.0, -0.0, 1.0, -np.inf, np.inf, 2.5], n)
        if n > 3:
            a[1] = np.nan
        b = a.copy()
        rt.rt_sort_small(b)
        assert np.array_equal(b, np.sort(a), equal_nan=True)
        c = r.standard_normal(n)
        d = c.copy()
        rt.rt_sort_small(d)
        assert np.array_equal(d, np.sort(c))
