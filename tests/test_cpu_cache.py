"""The CPU backend's on-disk cache (backends/cpu/cache.py), in subprocesses with their
own $DPLANG_CACHE: a second process compiles nothing, two processes compiling at once
both succeed, and a truncated or corrupt entry is detected and rebuilt."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

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
    """
    m = dp.compile(src, filename="cache_probe.dp", backend="cpu")
    v = m.norm2(np.arange(4.0))
    st = cpu.stats()
    st["value"] = v
    print(json.dumps(st))
''')


def run(cache, check=True):
    env = dict(os.environ, DPLANG_CACHE=str(cache))
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])
    return p


def module_files(cache):
    return glob.glob(os.path.join(str(cache), "cpu-*", "m_*.py"))


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    first = run(cache)
    return cache, first


def test_second_process_does_not_recompile(warm):
    cache, first = warm
    assert first["value"] == pytest.approx(14 ** 0.5)
    assert first["written"] == 1 and first["cache_misses"] >= 1
    second = run(cache)
    assert second["value"] == first["value"]
    assert second["written"] == 0
    assert second["cache_misses"] == 0 and second["cache_hits"] >= 1
    (path,) = module_files(cache)
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
    assert len(module_files(tmp_path)) == 1
    assert not glob.glob(os.path.join(str(tmp_path), "cpu-*", ".*tmp"))
    third = run(tmp_path)
    assert third["written"] == 0 and third["cache_misses"] == 0


def test_truncated_module_is_detected_and_rebuilt(warm):
    cache, _ = warm
    (path,) = module_files(cache)
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
    run(cache)                                   # make sure the entry is complete
    files = glob.glob(os.path.join(str(cache), "cpu-*", "__pycache__", "m_*.nb*"))
    assert files
    for f in files:
        with open(f, "wb") as fh:
            fh.write(b"\x80\x04garbage")
    again = run(cache)
    assert again["value"] == pytest.approx(14 ** 0.5)
    after = run(cache)                           # and the rebuilt entry is used again
    assert after["value"] == pytest.approx(14 ** 0.5)


def test_unwritable_cache_falls_back_to_a_temporary_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = run(blocker / "sub")
    assert out["value"] == pytest.approx(14 ** 0.5)
