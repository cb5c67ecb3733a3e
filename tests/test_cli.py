"""The command line: check, run (numbers, JSON arrays, .npy paths), ir (text, dot), exit
codes.  Most cases call dplang.cli.main in-process; one runs the installed command."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dplang.cli import main

HERE = os.path.dirname(__file__)
DTW = os.path.join(HERE, "..", "examples", "dtw.dp")
VIT = os.path.join(HERE, "..", "examples", "viterbi.dp")


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_ok(capsys):
    assert run(capsys, "check", DTW) == (0, "", "")


def test_run_json_and_numbers(capsys):
    code, out, err = run(capsys, "run", DTW, "dtw", "[[0, 1, 2], [1, 0, 1]]")
    assert code == 0 and err == ""
    assert float(out) == 1.0


def test_run_npy_and_array_result(capsys, tmp_path):
    theta = np.random.default_rng(0).standard_normal((5, 3, 3))
    p = tmp_path / "theta.npy"
    np.save(p, theta)
    code, out, err = run(capsys, "run", VIT, "viterbi_path", str(p))
    assert code == 0
    path = json.loads(out)
    assert len(path) == 5 and all(isinstance(k, int) for k in path)


def test_run_tuple_result(capsys, tmp_path):
    src = tmp_path / "t.dp"
    src.write_text("def f(x: f64, k: i64) -> (f64, i64):\n    return x * 2.0, k + 1\n")
    code, out, err = run(capsys, "run", str(src), "f", "1.5", "2")
    assert code == 0 and out.split() == ["3.0", "3"]


@pytest.mark.parametrize("args, needle", [
    (("run", DTW, "nope", "1"), "has no function 'nope'"),
    (("run", DTW, "dtw", "[[1, 2], [3]]"), "not a rectangular array"),
    (("run", DTW, "dtw", "abc"), "cannot read argument 'abc'"),
    (("run", DTW, "dtw", "missing.npy"), "no such file"),
    (("run", DTW, "dtw"), "takes 1 argument"),
    (("run", DTW, "dtw", "[1, 2, 3]"), "argument 'D' must be f64[n, m]"),
    (("check", "does/not/exist.dp"), "cannot read"),
    (("ir", DTW, "nope"), "has no function 'nope'"),
])
def test_user_errors_exit_1_without_traceback(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 1
    assert needle in err
    assert "Traceback" not in err


def test_located_error(capsys, tmp_path):
    src = tmp_path / "bad.dp"
    src.write_text("def f(x: f64) -> f64:\n    return y\n")
    code, out, err = run(capsys, "check", str(src))
    assert code == 1
    assert err.startswith(f"{src}:2:12: ")
    assert "    return y" in err and err.splitlines()[2].endswith("^")


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["ir", DTW, "--format", "png"])
    assert e.value.code == 2


def test_ir_text_and_dot(capsys):
    code, out, err = run(capsys, "ir", DTW, "dtw")
    assert code == 0
    assert out.startswith("func dtw(D: f64[n, m]) -> f64 {")
    assert "for i in range(1, " in out and "# dtw.dp:7" in out
    code, out, err = run(capsys, "ir", DTW, "dtw", "--format", "dot")
    assert code == 0 and out.startswith("digraph") and out.count("{") == out.count("}")
    code, out, err = run(capsys, "ir", DTW, "dtw", "--stage", "parsed")
    assert code == 0 and "R[i, j] = D[i - 1, j - 1] + min(" in out


def test_installed_command(tmp_path):
    src = tmp_path / "bad.dp"
    src.write_text("def f(x: f64) -> f64:\n    return lambda: x\n")
    exe = [sys.executable, "-m", "dplang.cli"]
    r = subprocess.run(exe + ["check", str(src)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith(f"{src}:2:12:")
    assert "Traceback" not in r.stderr
    r = subprocess.run(exe + ["run", DTW, "dtw", "[[0, 1], [1, 0]]"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and float(r.stdout) == 0.0


def test_ir_of_derivatives(capsys):
    code, out, err = run(capsys, "ir", DTW, "dtw", "--grad")
    assert code == 0 and out.startswith("func grad_dtw_0(D: f64[n, m]) -> f64[n, m] {")
    assert "for j_1 in range(" in out and "scatter_add(d_D" in out and "# dtw.dp:7" in out
    code, out, err = run(capsys, "ir", DTW, "dtw", "--jvp")
    assert code == 0 and out.startswith("func jvp_dtw_0(D: f64[n, m], d_D: f64[n, m])")
    # the gradient of a function without a float scalar result is a user error
    code, out, err = run(capsys, "ir", VIT, "viterbi_path", "--grad")
    assert code == 1 and "one float scalar result" in err and "Traceback" not in err
