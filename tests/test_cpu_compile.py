"""``dplang compile FILE.dp [-o OUT.py] [--grad FUNC[:WRT]]``: a standalone module that
imports only NumPy and Numba, imported in a subprocess where dplang cannot be imported,
gives the interpreter's values (and gradients)."""
import ast
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dplang as dp
from dplang.cli import main

HERE = os.path.dirname(__file__)
EX = os.path.join(HERE, "..", "examples")
DTW = os.path.join(EX, "dtw.dp")
CONTROL = os.path.join(HERE, "programs", "control.dp")

NAMES_SRC = '''
def np(x: f64) -> f64:
    return x * 2.0

def abs(v: f64[n]) -> f64:
    s = 0.0
    for i in range(n):
        s += np(v[i])
    return s

def jit(A: f64[n, n], b: f64[n]) -> f64:
    return sum(solve(A, b)) + abs(b)

def min(A: f64[n, m]) -> f64:
    return trace(A)

def rt_psum(v: f64[n]) -> f64:
    return sum(v) + 1.0

def math(v: f64[n]) -> f64:
    return logsumexp(v)

def check(v: f64[n], k: i64) -> f64:
    assert k < n, "k must be below n"
    return v[k]
'''

RUNNER = textwrap.dedent('''
    import importlib.util, json, sys
    sys.modules["dplang"] = None            # the module must not need dplang
    import numpy as np
    spec = importlib.util.spec_from_file_location("standalone_mod", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["standalone_mod"] = mod
    spec.loader.exec_module(mod)
    calls = json.loads(sys.argv[2])
    out = []
    for name, args in calls:
        args = [np.asarray(a) if isinstance(a, list) else a for a in args]
        try:
            r = getattr(mod, name)(*args)
        except Exception as e:
            out.append(["error", type(e).__name__, str(e)])
            continue
        if isinstance(r, tuple):
            out.append([np.asarray(x).tolist() for x in r])
        else:
            out.append(np.asarray(r).tolist())
    print(json.dumps(out))
''')


def compile_to(tmp_path, path, *extra):
    """Compile into tmp_path; return a copy at a stable place (under the dplang cache
    directory, rewritten only when its text changes) so that Numba's cache of the
    standalone module, which sits next to it, survives between test runs."""
    out = tmp_path / (os.path.splitext(os.path.basename(path))[0] + "_mod.py")
    assert main(["compile", path, "-o", str(out), *extra]) == 0
    from dplang.backends.cpu.cache import cache_root
    stable_dir = os.path.join(cache_root(), "standalone-tests")
    os.makedirs(stable_dir, exist_ok=True)
    stable = os.path.join(stable_dir, out.name)
    text = out.read_text()
    if not os.path.exists(stable) or open(stable).read() != text:
        tmp = stable + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, stable)
    return stable


def run_standalone(path, calls):
    p = subprocess.run([sys.executable, "-c", RUNNER, str(path), json.dumps(calls)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def imports_of(path):
    tree = ast.parse(open(path).read())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add((node.module or "").split(".")[0])
    return mods


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tmp_path_factory.mktemp("standalone")


def test_dtw_module_with_gradient(outdir):
    path = compile_to(outdir, DTW, "--grad", "dtw", "--grad", "dtw_series:y")
    assert imports_of(path) <= {"math", "numba", "numpy", "builtins"}
    text = open(path).read()
    for name in ("def dtw(", "def sqeuclidean(", "def dtw_series(", "def grad_dtw(",
                 "def grad_dtw_series("):
        assert name in text
    compile(text, str(path), "exec")
    rng = np.random.default_rng(3)
    D = rng.random((5, 4))
    x, y = rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    got = run_standalone(path, [["dtw", [D.tolist()]], ["grad_dtw", [D.tolist()]],
                                ["dtw_series", [x.tolist(), y.tolist()]],
                                ["grad_dtw_series", [x.tolist(), y.tolist()]],
                                ["sqeuclidean", [x.tolist(), y.tolist()]]])
    m = dp.load(DTW, backend="interp")
    assert got[0] == pytest.approx(m.dtw(D), rel=1e-12)
    np.testing.assert_allclose(got[1], dp.grad(m.dtw)(D), rtol=1e-12, atol=1e-14)
    assert got[2] == pytest.approx(m.dtw_series(x, y), rel=1e-12)
    np.testing.assert_allclose(got[3], dp.grad(m.dtw_series, wrt="y")(x, y), rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_allclose(got[4], m.sqeuclidean(x, y), rtol=1e-12)


def test_stdlib_callees_are_inlined_in_a_standalone_module(outdir):
    """The stdlib functions a file calls (not its own: those are entry points) are
    compiled into their one caller (``@jit_inline``, docs/backend_cpu.md)."""
    from dplang.backends.cpu.cache import cache_root
    src_text = ("from std.align import soft_dtw_series\n\n"
                "def loss(x: f64[n, d], y: f64[m, d]) -> f64:\n"
                "    return soft_dtw_series(x, y, 0.5)\n")
    src = os.path.join(cache_root(), "standalone-tests", "sdtw_loss.dp")
    os.makedirs(os.path.dirname(src), exist_ok=True)
    if not os.path.exists(src) or open(src).read() != src_text:
        with open(src, "w") as fh:
            fh.write(src_text)
    path = compile_to(outdir, src, "--grad", "loss")
    text = open(path).read()
    assert "jit_inline = numba.njit(" in text
    for callee in ("std_align_soft_dtw", "std_align_sqeuclidean"):
        assert f"@jit_inline\ndef {callee}(" in text
    # soft_dtw_series is imported into the file, so it is one of its entry points
    assert "@jit\ndef std_align_soft_dtw_series(" in text
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((6, 2)), rng.standard_normal((5, 2))
    got = run_standalone(path, [["loss", [x.tolist(), y.tolist()]],
                                ["grad_loss", [x.tolist(), y.tolist()]]])
    m = dp.compile(src_text, filename=src, backend="interp")
    assert got[0] == pytest.approx(m.loss(x, y), rel=1e-12)
    np.testing.assert_allclose(got[1], dp.grad(m.loss)(x, y), rtol=1e-11, atol=1e-14)

def test_control_flow_module(outdir):
    path = compile_to(outdir, CONTROL)
    m = dp.load(CONTROL, backend="interp")
    v = [0.5, -1.0, 2.0]
    A = (np.eye(3) * 4 + np.arange(9).reshape(3, 3) / 10).tolist()
    calls = [["early", [2.0]], ["find_first", [v, 1.0]], ["loop_ret", [v]], ["skip_odd", [7]],
             ["accum", [v]], ["pair", [v]], ["use_pair", [v]], ["swap", [5]],
             ["mat", [A, v]], ["chained", [0.5]], ["ifexp", [2.0, 0]], ["newton", [2.0]]]
    got = run_standalone(path, calls)
    for (name, args), g in zip(calls, got):
        ref = getattr(m, name)(*[np.asarray(a) if isinstance(a, list) else a for a in args])
        if isinstance(ref, tuple):
            for a, b in zip(g, ref):
                np.testing.assert_allclose(a, b, rtol=1e-12)
        else:
            np.testing.assert_allclose(g, ref, rtol=1e-12)


def test_names_that_shadow_generated_code(outdir):
    """Public names equal to names the generated code uses (numpy's alias, builtins the
    run-time helpers call, the helpers, the jit decorator) still work."""
    from dplang.backends.cpu.cache import cache_root
    src = os.path.join(cache_root(), "standalone-tests", "names.dp")   # a stable path: it
    os.makedirs(os.path.dirname(src), exist_ok=True)                   # is in the messages
    if not os.path.exists(src) or open(src).read() != NAMES_SRC:
        with open(src, "w") as fh:
            fh.write(NAMES_SRC)
    path = compile_to(outdir, src, "--grad", "abs")
    m = dp.compile(NAMES_SRC, filename=str(src), backend="interp")
    v = [0.25, -1.5, 2.0]
    A = (np.eye(3) * 3 + np.arange(9).reshape(3, 3) / 10).tolist()
    got = run_standalone(path, [["np", [1.5]], ["abs", [v]], ["jit", [A, v]], ["min", [A]],
                                ["rt_psum", [v]], ["math", [v]], ["grad_abs", [v]],
                                ["check", [v, 1]], ["check", [v, 5]]])
    va, Aa = np.asarray(v), np.asarray(A)
    assert got[0] == m.np(1.5)
    assert got[1] == pytest.approx(m.abs(va), rel=1e-14)
    assert got[2] == pytest.approx(m.jit(Aa, va), rel=1e-12)
    assert got[3] == pytest.approx(m.min(Aa), rel=1e-14)
    assert got[4] == pytest.approx(m.rt_psum(va), rel=1e-14)
    assert got[5] == pytest.approx(m.math(va), rel=1e-14)
    np.testing.assert_allclose(got[6], [2.0, 2.0, 2.0])
    assert got[7] == -1.5
    assert got[8][0] == "error" and got[8][1] == "AssertionError"
    line = NAMES_SRC.splitlines().index('    assert k < n, "k must be below n"') + 1
    assert f"names.dp:{line}:" in got[8][2] and "k must be below n" in got[8][2]


def test_default_output_and_errors(tmp_path, capsys):
    src = tmp_path / "small.dp"
    src.write_text("def f(x: f64) -> f64:\n    return x * x\n")
    assert main(["compile", str(src)]) == 0
    assert (tmp_path / "small.py").exists()
    capsys.readouterr()
    assert main(["compile", str(src), "--grad", "nope"]) == 1
    assert "has no function 'nope'" in capsys.readouterr().err
    assert main(["compile", str(src), "--grad", "f:z"]) == 1
    assert "z" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "missing.dp")]) == 1
    assert "cannot read" in capsys.readouterr().err
