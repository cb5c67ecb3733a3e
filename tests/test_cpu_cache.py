"""The CPU backend's on-disk cache (backends/cpu/cache.py), in subprocesses with their
own $DPLANG_CACHE: a second process compiles nothing, two processes compiling at once
both succeed, and a truncated or corrupt entry is detected and rebuilt."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dplang.backends.cpu import native

# the native warm path runs where the loader was tested (a Numba release it knows);
# elsewhere the same tests check that Numba's path serves instead
NATIVE = native.supported()

SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import dplang as dp
    from dplang.backends import cpu
    src = """
    def sq(x: f64[n]) -> f64:
        s = 0.0
        for i in range(n):
            s += x[i] * x[i]
        return s

    def norm2(x: f64[n]) -> f64:
        return sqrt(sq(x))

    def root(x: f64) -> f64:
        assert x >= 0.0, "root of a negative number"
        return sqrt(x)
    """
    m = dp.compile(src, filename="cache_probe.dp", backend="cpu")
    v = m.norm2(np.arange(4.0))
    try:
        m.root(-1.0)
        err = None
    except dp.DPError as e:
        err = str(e)
    st = cpu.stats()
    st["value"] = v
    st["error"] = err
    st["numba_imported"] = "numba" in sys.modules
    st["networkx_imported"] = "networkx" in sys.modules
    print(json.dumps(st))
''')


def run(cache, check=True, native=True):
    env = dict(os.environ, DPLANG_CACHE=str(cache), DPLANG_NATIVE="1" if native else "0")
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])
    return p


def module_files(cache):
    return glob.glob(os.path.join(str(cache), "cpu-*", "m_*.py"))


def norm2_module(cache):
    (path,) = [p for p in module_files(cache) if "def norm2(" in open(p).read()]
    return path


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    first = run(cache)
    return cache, first


def test_second_process_does_not_recompile(warm):
    cache, first = warm
    assert first["value"] == pytest.approx(14 ** 0.5)
    assert first["written"] == 2 and first["cache_misses"] >= 1    # norm2's and root's
    assert (first["saved"] >= 2) == NATIVE      # norm2 and root, for the native path
    # the second process runs the saved machine code without importing Numba
    second = run(cache)
    assert second["value"] == first["value"]
    assert second["written"] == 0
    if NATIVE:
        assert second["compiled"] == 0
        assert second["native"] >= 2 and not second["numba_imported"]
    else:
        assert second["cache_misses"] == 0 and second["cache_hits"] >= 1
    assert not second["networkx_imported"]       # (0.09 s of a warm start)
    # the error raised inside that code is still the located one
    assert second["error"] == first["error"]
    assert "cache_probe.dp:" in first["error"] and "root of a negative number" in first["error"]
    # without the native path, Numba's own cache serves the same entry
    third = run(cache, native=False)
    assert third["value"] == first["value"] and third["numba_imported"]
    assert third["cache_misses"] == 0 and third["cache_hits"] >= 1
    path = norm2_module(cache)
    with open(path) as fh:
        assert fh.readline().startswith("# dplang-cache sha256=")
    # Numba's own cache files live next to the module
    assert glob.glob(os.path.join(os.path.dirname(path), "__pycache__", "m_*.nbi"))


def test_two_processes_compiling_at_once(tmp_path):
    env = dict(os.environ, DPLANG_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["value"] == pytest.approx(14 ** 0.5)
    assert len(module_files(tmp_path)) == 2
    assert not glob.glob(os.path.join(str(tmp_path), "cpu-*", ".*tmp"))
    third = run(tmp_path)
    assert third["written"] == 0 and third["cache_misses"] == 0


def test_truncated_module_is_detected_and_rebuilt(warm):
    cache, _ = warm
    path = norm2_module(cache)
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text[: len(text) // 2])
    again = run(cache)
    assert again["value"] == pytest.approx(14 ** 0.5)
    assert again["written"] == 1
    with open(path) as fh:
        assert fh.read() == text


def test_corrupt_numba_cache_is_rebuilt(warm):
    cache, _ = warm
    run(cache, native=False)                     # make sure the entry is complete
    files = glob.glob(os.path.join(str(cache), "cpu-*", "__pycache__", "m_*.nb*"))
    assert files
    for f in files:
        with open(f, "wb") as fh:
            fh.write(b"\x80\x04garbage")
    again = run(cache, native=False)
    assert again["value"] == pytest.approx(14 ** 0.5)
    after = run(cache, native=False)             # and the rebuilt entry is used again
    assert after["value"] == pytest.approx(14 ** 0.5)
    assert after["cache_misses"] == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip"])
def test_damaged_native_code_is_replaced(warm, damage):
    cache, _ = warm
    run(cache)
    files = glob.glob(os.path.join(str(cache), "cpu-*", "m_*.nrtobj"))
    if not NATIVE:                  # nothing saved, nothing to damage
        assert files == []
        return
    assert len(files) >= 2
    for f in files:
        data = open(f, "rb").read()
        with open(f, "wb") as fh:
            flip = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]   # in the code
            fh.write({"truncate": data[: len(data) // 2], "garbage": b"DPLANG-NRTOBJ\n" + b"x" * 64,
                      "empty": b"", "flip": flip}[damage])
    again = run(cache)                           # Numba's path, and the files saved again
    assert again["value"] == pytest.approx(14 ** 0.5) and again["native"] == 0
    assert again["saved"] >= 2 and "root of a negative number" in again["error"]
    after = run(cache)
    assert after["native"] >= 2 and not after["numba_imported"]
    assert after["value"] == pytest.approx(14 ** 0.5)


def test_unwritable_cache_falls_back_to_a_temporary_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = run(blocker / "sub")
    assert out["value"] == pytest.approx(14 ** 0.5)


OBJMODE_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import dplang as dp
    from dplang.backends import cpu
    from dplang.backends.cpu import codegen
    del codegen.FuncGen.p_softplus          # softplus then runs in an objmode block
    src = """
    def h(x: f64[n]) -> f64[n]:
        return softplus(x) * 2.0

    def k(x: f64[n]) -> f64:
        return sum(h(x))
    """
    m = dp.compile(src, filename="objmode_callee.dp", backend="cpu")
    st = cpu.stats()
    st["value"] = m.k(np.arange(3.0))
    print(json.dumps(cpu.stats() | {"value": st["value"]}))
''')


def test_a_callee_with_an_objmode_block_runs_in_a_second_process(tmp_path):
    """The objmode block calls the module's Python globals, which saved machine code does
    not carry: such a module stays on Numba's path (it once failed with a NameError in
    every process after the first)."""
    env = dict(os.environ, DPLANG_CACHE=str(tmp_path), DPLANG_NATIVE="1")
    want = 2.0 * float(np.log1p(np.exp(np.arange(3.0))).sum())
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", OBJMODE_SCRIPT], env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        st = json.loads(p.stdout.strip().splitlines()[-1])
        assert abs(st["value"] - want) <= 1e-14 * want
        assert st["native"] == 0


def test_runtime_helper_table_is_saved_and_a_torn_copy_rebuilt(tmp_path, monkeypatch):
    # the table of runtime.py's helpers (0.05 s of parsing) is read back in later processes
    from dplang.backends.cpu import cache, codegen
    monkeypatch.setenv("DPLANG_CACHE", str(tmp_path))
    monkeypatch.setattr(codegen, "_HELPERS", None)
    built = codegen.runtime_helpers()
    assert "rt_exp" in built and built["rt_exp"][0].lstrip().startswith(("@", "def"))
    path = os.path.join(cache.module_dir(), "runtime_helpers.json")
    assert cache.check_file(path)
    monkeypatch.setattr(codegen, "_HELPERS", None)
    with monkeypatch.context() as m:
        m.setattr(codegen.ast, "parse", lambda *a, **k: pytest.fail("parsed again"))
        assert codegen.runtime_helpers() == built
        assert list(codegen.runtime_helpers()) == list(built)      # runtime.py's order
    with open(path, "r+") as fh:                   # torn: half of it
        data = fh.read()
        fh.seek(0)
        fh.write(data[:len(data) // 2])
        fh.truncate()
    monkeypatch.setattr(codegen, "_HELPERS", None)
    assert codegen.runtime_helpers() == built
    assert cache.check_file(path)
