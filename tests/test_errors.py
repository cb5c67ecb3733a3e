"""Located user errors (SPEC section 3): every malformed program raises the right
``DPError`` subclass at the right ``line:col``, and renders as

    FILE:LINE:COL: message
        <the source line>
        <spaces>^            (the caret under column COL)

through the API, through ``dplang.cli.main`` (exit 1, message on stderr, no traceback)
and, for a handful of cases, through ``dplang check`` in a subprocess.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dplang as dp
from dplang import cli
from dplang.errors import (DPAssertionError, DPError, DPNameError, DPRuntimeError,
                           DPShapeError, DPSyntaxError, DPTypeError, DPUnsupportedError)


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# (id, class, line, col, a fragment of the message, source)
CASES = [
    # ------------------------------------------------------------------ syntax
    ("syntax_bad_indent", DPSyntaxError, 3, 7, "unexpected indent", src("""
        def f(x: f64) -> f64:
            y = x
              return y
        """)),
    ("syntax_missing_colon", DPSyntaxError, 1, 21, "expected ':'", src("""
        def f(x: f64) -> f64
            return x
        """)),
    ("syntax_if_missing_colon", DPSyntaxError, 2, 15, "expected ':'", src("""
        def f(x: f64) -> f64:
            if x > 0.0
                return x
            return 0.0
        """)),
    ("syntax_unbalanced_paren", DPSyntaxError, 2, 12, "'(' was never closed", src("""
        def f(x: f64) -> f64:
            return (x + 1.0
        """)),
    ("syntax_extra_paren", DPSyntaxError, 2, 13, "unexpected token ')'", src("""
        def f(x: f64) -> f64:
            return x)
        """)),
    ("syntax_unexpected_eof", DPSyntaxError, 4, 22, "expected an indented block", src("""
        def f(x: f64) -> f64:
            return x

        def g(x: f64) -> f64:
        """)),
    ("syntax_unexpected_eol", DPSyntaxError, 2, 15, "unexpected end of line", src("""
        def f(x: f64) -> f64:
            return x +
        """)),
    # ------------------------------------------------------------- unsupported
    ("unsupported_lambda", DPUnsupportedError, 2, 9, "lambda", src("""
        def f(x: f64) -> f64:
            g = lambda y: y
            return x
        """)),
    ("unsupported_class", DPUnsupportedError, 1, 1, "class", src("""
        class C:
            pass
        """)),
    ("unsupported_listcomp", DPUnsupportedError, 2, 9, "list comprehensions", src("""
        def f(x: f64[n]) -> f64:
            y = [x[i] for i in range(n)]
            return 0.0
        """)),
    ("unsupported_with", DPUnsupportedError, 2, 5, "'with'", src("""
        def f(x: f64) -> f64:
            with x:
                pass
            return x
        """)),
    ("unsupported_try", DPUnsupportedError, 2, 5, "'try'", src("""
        def f(x: f64) -> f64:
            try:
                y = x
            except:
                y = 0.0
            return y
        """)),
    ("unsupported_fstring", DPUnsupportedError, 2, 21, "f-strings", src("""
        def f(x: f64) -> f64:
            assert x > 0.0, f"bad {x}"
            return x
        """)),
    ("unsupported_global", DPUnsupportedError, 2, 5, "'global'", src("""
        def f(x: f64) -> f64:
            global y
            return x
        """)),
    ("unsupported_for_over_array", DPUnsupportedError, 3, 14, "range(...)", src("""
        def f(v: f64[n]) -> f64:
            s = 0.0
            for x in v:
                s += x
            return s
        """)),
    ("unsupported_fancy_indexing", DPUnsupportedError, 2, 11, "fancy indexing", src("""
        def f(v: f64[n], idx: i64[k]) -> f64:
            w = v[idx]
            return 0.0
        """)),
    ("unsupported_import_numpy", DPUnsupportedError, 1, 1, "'import' statements", src("""
        import numpy

        def f(x: f64) -> f64:
            return x
        """)),
    ("unsupported_dict", DPUnsupportedError, 2, 9, "dict literals", src("""
        def f(x: f64) -> f64:
            d = {1: 2}
            return x
        """)),
    ("unsupported_nested_def", DPUnsupportedError, 2, 5, "nested function", src("""
        def f(x: f64) -> f64:
            def g(y):
                return y
            return x
        """)),
    ("unsupported_walrus", DPUnsupportedError, 2, 9, ":=", src("""
        def f(x: f64) -> f64:
            if (y := x) > 0.0:
                return y
            return x
        """)),
    ("unsupported_chained_write", DPUnsupportedError, 3, 5, "named array", src("""
        def f(n: i64) -> f64:
            B = zeros((n, n))
            B[0][1] = 1.0
            return B[0, 1]
        """)),
    # ------------------------------------------------------------------- names
    ("name_unknown", DPNameError, 2, 16, "unknown name 'yy'", src("""
        def f(x: f64) -> f64:
            return x + yy
        """)),
    ("name_unknown_function", DPNameError, 2, 12, "unknown name 'foo'", src("""
        def f(x: f64) -> f64:
            return foo(x)
        """)),
    ("name_unassigned_on_a_path", DPNameError, 4, 12, "'x' may be unassigned", src("""
        def f(c: bool) -> f64:
            if c:
                x = 1.0
            return x
        """)),
    ("name_loop_variable_after_loop", DPNameError, 4, 12, "loop variable", src("""
        def f(n: i64) -> i64:
            for i in range(n):
                pass
            return i
        """)),
    ("name_assigned_only_in_loop", DPNameError, 4, 12, "only inside the loop", src("""
        def f(n: i64) -> f64:
            for i in range(n):
                t = 1.0
            return t
        """)),
    ("name_root_unknown_function", DPNameError, 1, 7, "unknown function 'G'", src("""
        @root(G)
        def f(a: f64[n]) -> f64[n]:
            return copy(a)
        """)),
    # ------------------------------------------------------------------- types
    ("type_write_into_parameter", DPTypeError, 2, 5, "parameter 'A'", src("""
        def f(A: f64[n]) -> f64:
            A[0] = 1.0
            return A[0]
        """)),
    ("type_write_through_alias", DPTypeError, 4, 5, "also reachable as 'A'", src("""
        def f(n: i64) -> f64:
            A = zeros(n)
            B = A
            B[0] = 1.0
            return A[0]
        """)),
    ("type_augassign_parameter", DPTypeError, 2, 5, "parameter 'A'", src("""
        def f(A: f64[n]) -> f64:
            A += 1.0
            return A[0]
        """)),
    ("type_wrong_arity", DPTypeError, 5, 12, "g() takes 2 argument(s) but 1 were given", src("""
        def g(x: f64, y: f64) -> f64:
            return x + y

        def f(x: f64) -> f64:
            return g(x)
        """)),
    ("type_keyword_twice", DPTypeError, 5, 21, "parameter 'x' twice", src("""
        def g(x: f64, y: f64) -> f64:
            return x + y

        def f(x: f64) -> f64:
            return g(x=1.0, x=2.0)
        """)),
    ("type_recursion", DPTypeError, 2, 12, "recursion is not allowed (f -> f)", src("""
        def f(x: f64) -> f64:
            return f(x)
        """)),
    ("type_mutual_recursion", DPTypeError, 2, 12, "recursion is not allowed (f -> g -> f)", src("""
        def f(x: f64) -> f64:
            return g(x)

        def g(x: f64) -> f64:
            return f(x)
        """)),
    ("type_recursion_cycle_of_three", DPTypeError, 5, 12, "recursion is not allowed (f -> g -> h -> f)",
     src("""
        def main(x: f64) -> f64:
            return h(x) + 1.0

        def f(x: f64) -> f64:
            return g(x)

        def g(x: f64) -> f64:
            return h(x)

        def h(x: f64) -> f64:
            return f(x)
        """)),
    ("type_duplicate_function", DPTypeError, 4, 1, "defined twice", src("""
        def f(x: f64) -> f64:
            return x

        def f(x: f64) -> f64:
            return x
        """)),
    ("type_missing_annotation", DPTypeError, 1, 7, "parameter 'x' needs a type annotation", src("""
        def f(x) -> f64:
            return x
        """)),
    ("type_missing_result_type", DPTypeError, 1, 1, "needs a result type", src("""
        def f(x: f64):
            return x
        """)),
    ("type_unknown_type_name", DPTypeError, 1, 10, "unknown type 'float128'", src("""
        def f(x: float128) -> f64:
            return x
        """)),
    ("type_bad_return_type", DPTypeError, 2, 12, "declared f64 but the value is f64[n]", src("""
        def f(x: f64[n]) -> f64:
            return x
        """)),
    ("type_tuple_for_scalar", DPTypeError, 2, 12, "returns one value but this returns a tuple",
     src("""
        def f(x: f64) -> f64:
            return x, x
        """)),
    ("type_float_into_int_array", DPTypeError, 3, 5, "f64 value into 'A'", src("""
        def f(n: i64) -> i64:
            A = zeros(n, dtype=i64)
            A[0] = 1.5
            return A[0]
        """)),
    ("type_max_of_arrays", DPTypeError, 2, 13, "maximum(a, b)", src("""
        def f(a: f64[n], b: f64[n]) -> f64:
            c = max(a, b)
            return 0.0
        """)),
    ("type_array_condition", DPTypeError, 2, 8, "truth value of an array", src("""
        def f(a: f64[n]) -> f64:
            if a > 0.0:
                return 1.0
            return 0.0
        """)),
    ("type_range_of_float", DPTypeError, 3, 20, "range() needs integer bounds", src("""
        def f(x: f64) -> f64:
            s = 0.0
            for i in range(1.5):
                s += x
            return s
        """)),
    ("type_string_as_value", DPTypeError, 2, 9, "a string can only be", src("""
        def f(x: f64) -> f64:
            y = "abc"
            return x
        """)),
    ("type_break_outside_loop", DPTypeError, 2, 5, "'break' outside a loop", src("""
        def f(x: f64) -> f64:
            break
            return x
        """)),
    # -------------------------------------------------------------- decorators
    ("deco_smooth_unknown_regulariser", DPTypeError, 1, 9, "unknown regulariser 'foo'", src("""
        @smooth(foo, gamma=g)
        def f(x: f64[n], g: f64) -> f64:
            return max(x)
        """)),
    ("deco_smooth_without_gamma", DPTypeError, 1, 1, "needs gamma=NAME", src("""
        @smooth(entropy)
        def f(x: f64[n], g: f64) -> f64:
            return max(x)
        """)),
    ("deco_smooth_gamma_not_a_parameter", DPTypeError, 1, 24, "no parameter 'nope'", src("""
        @smooth(entropy, gamma=nope)
        def f(x: f64[n], g: f64) -> f64:
            return max(x)
        """)),
    ("deco_smooth_integer_gamma", DPTypeError, 1, 24, "must be a float scalar parameter", src("""
        @smooth(entropy, gamma=k)
        def f(x: f64[n], k: i64) -> f64:
            return max(x)
        """)),
    ("deco_argmin_unknown_solver", DPTypeError, 4, 21, "solver= must be one of", src("""
        def obj(x: f64[n], a: f64[n]) -> f64:
            return sum((x - a) ** 2)

        @argmin(obj, solver="newton")
        def f(a: f64[n]) -> f64[n]:
            return copy(a)
        """)),
    ("deco_argmin_array_objective", DPTypeError, 4, 9, "must return a float scalar", src("""
        def obj(x: f64[n], a: f64[n]) -> f64[n]:
            return x - a

        @argmin(obj)
        def f(a: f64[n]) -> f64[n]:
            return copy(a)
        """)),
    ("deco_root_wrong_arity", DPTypeError, 4, 7, "'F' must take (x, a)", src("""
        def F(x: f64[n]) -> f64[n]:
            return x

        @root(F)
        def f(a: f64[n]) -> f64[n]:
            return copy(a)
        """)),
    ("deco_unknown", DPTypeError, 1, 2, "unknown decorator '@memoize'", src("""
        @memoize
        def f(x: f64) -> f64:
            return x
        """)),
    # ---------------------------------------------------------- transformations
    ("grad_of_non_scalar_function", DPTypeError, 5, 17, "one float scalar result", src("""
        def g(x: f64[n]) -> f64[n]:
            return x * 2.0

        def f(x: f64[n]) -> f64[n]:
            return grad(g)(x)
        """)),
    ("grad_wrt_integer_parameter", DPTypeError, 5, 24, "'k': it is i64", src("""
        def g(x: f64, k: i64) -> f64:
            return x * k

        def f(x: f64) -> f64:
            return grad(g, wrt=1)(x, 2)
        """)),
    ("grad_wrt_unknown_name", DPTypeError, 5, 24, "no parameter named 'zz'", src("""
        def g(x: f64, k: f64) -> f64:
            return x * k

        def f(x: f64) -> f64:
            return grad(g, wrt="zz")(x, 2.0)
        """)),
    ("grad_wrt_out_of_range", DPTypeError, 5, 24, "wrt=3", src("""
        def g(x: f64) -> f64:
            return x * x

        def f(x: f64) -> f64:
            return grad(g, wrt=3)(x)
        """)),
    # ------------------------------------------------------------------ shapes
    ("shape_matmul_mismatch", DPShapeError, 2, 12, "inner dimensions differ (3 and 2)", src("""
        def f(A: f64[2, 3], b: f64[2]) -> f64[2]:
            return A @ b
        """)),
    ("shape_too_many_indices", DPShapeError, 2, 17, "too many indices", src("""
        def f(A: f64[n]) -> f64:
            return A[0, 1]
        """)),
    ("shape_call_sizes_disagree", DPShapeError, 5, 17, "dimension n is 4 but argument 'x' gives "
     "n = 3", src("""
        def g(x: f64[n], y: f64[n]) -> f64:
            return sum(x * y)

        def f(a: f64[3], b: f64[4]) -> f64:
            return g(a, b)
        """)),
    ("shape_broadcast", DPShapeError, 2, 9, "cannot broadcast shapes (3,) and (4,)", src("""
        def f(x: f64) -> f64:
            w = zeros(3) + zeros(4)
            return x
        """)),
    ("shape_augassign_changes_shape", DPShapeError, 3, 5, "would change the shape", src("""
        def f(x: f64) -> f64:
            B = zeros(3)
            B += zeros((3, 3))
            return x
        """)),
]

IDS = [c[0] for c in CASES]
# the cases also run through `dplang check` in a subprocess (one or two per class)
SUBPROCESS = {"syntax_missing_colon", "unsupported_lambda", "name_unknown",
              "type_write_through_alias", "deco_smooth_without_gamma", "shape_matmul_mismatch"}


def check_rendering(text: str, fname: str, line: int, col: int, source: str) -> None:
    """``text`` is ``fname:line:col: ...``, then the source line, then a caret at ``col``."""
    lines = text.splitlines()
    assert lines[0].startswith(f"{fname}:{line}:{col}: "), lines[0]
    src_line = source.splitlines()[line - 1]
    assert lines[1].rstrip() == ("    " + src_line).rstrip(), lines[1]
    assert lines[2].rstrip() == "    " + " " * (col - 1) + "^", (lines[1], lines[2])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_api_error(case):
    _, cls, line, col, fragment, source = case
    with pytest.raises(DPError) as info:
        dp.compile(source, filename="bad.dp")
    exc = info.value
    assert type(exc) is cls, f"{type(exc).__name__}: {exc}"
    assert (exc.loc.file, exc.loc.line, exc.loc.col) == ("bad.dp", line, col), str(exc)
    assert fragment in exc.message
    check_rendering(str(exc), "bad.dp", line, col, source)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cli_check_in_process(case, tmp_path, capsys):
    _, cls, line, col, fragment, source = case
    path = tmp_path / "bad.dp"
    path.write_text(source)
    rc = cli.main(["check", str(path)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    assert "Traceback" not in err
    assert fragment in err
    check_rendering(err, str(path), line, col, source)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in SUBPROCESS],
                         ids=sorted(SUBPROCESS, key=IDS.index))
def test_cli_check_subprocess(case, tmp_path):
    _, cls, line, col, fragment, source = case
    path = tmp_path / "bad.dp"
    path.write_text(source)
    r = subprocess.run([sys.executable, "-m", "dplang.cli", "check", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"{path}:{line}:{col}: ")
    assert "Traceback" not in r.stderr
    check_rendering(r.stderr, str(path), line, col, source)


@pytest.mark.skipif(shutil.which("dplang") is None, reason="console script not installed")
def test_console_script(tmp_path):
    good = tmp_path / "good.dp"
    good.write_text("def f(x: f64) -> f64:\n    return x\n")
    bad = tmp_path / "bad.dp"
    bad.write_text("def f(x: f64) -> f64:\n    return x + yy\n")
    r = subprocess.run(["dplang", "check", str(good)], capture_output=True, text=True,
                       timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
    r = subprocess.run(["dplang", "check", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith(f"{bad}:2:16: unknown name 'yy'")
    assert "Traceback" not in r.stderr


def test_cli_check_ok_and_missing_file(tmp_path, capsys):
    good = tmp_path / "good.dp"
    good.write_text("def f(x: f64) -> f64:\n    return x\n")
    assert cli.main(["check", str(good)]) == 0
    assert cli.main(["check", str(tmp_path / "nope.dp")]) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err and "Traceback" not in err


# ----------------------------------------------------------------------- imports
HELPERS = src("""
    def square(x: f64) -> f64:
        return x * x
    """)


def test_import_unknown_function(tmp_path, capsys):
    (tmp_path / "helpers.dp").write_text(HELPERS)
    source = src("""
        from helpers import square, nope

        def f(x: f64) -> f64:
            return square(x)
        """)
    path = tmp_path / "bad.dp"
    path.write_text(source)
    with pytest.raises(DPNameError) as info:
        dp.compile(source, filename=str(path))
    exc = info.value
    assert (exc.loc.line, exc.loc.col) == (1, 29)
    assert "module 'helpers' has no function 'nope'" in exc.message
    check_rendering(str(exc), str(path), 1, 29, source)
    assert cli.main(["check", str(path)]) == 1
    check_rendering(capsys.readouterr().err, str(path), 1, 29, source)


def test_import_missing_module(tmp_path):
    source = "from nowhere import g\n\ndef f(x: f64) -> f64:\n    return g(x)\n"
    path = tmp_path / "bad.dp"
    with pytest.raises(DPNameError) as info:
        dp.compile(source, filename=str(path))
    assert (info.value.loc.line, info.value.loc.col) == (1, 1)
    assert "cannot find module 'nowhere'" in info.value.message


def test_error_inside_imported_module_is_located_there(tmp_path):
    (tmp_path / "helpers.dp").write_text("def square(x: f64) -> f64:\n    return x * yy\n")
    source = "from helpers import square\n\ndef f(x: f64) -> f64:\n    return square(x)\n"
    with pytest.raises(DPNameError) as info:
        dp.compile(source, filename=str(tmp_path / "bad.dp"))
    loc = info.value.loc
    assert (os.path.basename(loc.file), loc.line, loc.col) == ("helpers.dp", 2, 16)


def test_recursion_across_modules(tmp_path):
    (tmp_path / "helpers.dp").write_text(src("""
        from bad import f

        def h(x: f64) -> f64:
            return f(x)
        """))
    source = "from helpers import h\n\ndef f(x: f64) -> f64:\n    return h(x)\n"
    with pytest.raises(DPTypeError) as info:
        dp.compile(source, filename=str(tmp_path / "bad.dp"))
    loc = info.value.loc
    assert "circular import of module 'bad'" in info.value.message
    assert (os.path.basename(loc.file), loc.line, loc.col) == ("helpers.dp", 1, 1)


# ------------------------------------------------------------- errors at call time
PAIR = src("""
    def f(x: f64[n], y: f64[n]) -> f64:
        return sum(x * y)
    """)


def test_call_sizes_disagree_names_parameter_and_sizes():
    mod = dp.compile(PAIR, filename="bad.dp")
    with pytest.raises(DPShapeError) as info:
        mod.f(np.ones(3), np.ones(4))
    exc = info.value
    assert "'y'" in exc.message and "4" in exc.message and "3" in exc.message
    assert (exc.loc.line, exc.loc.col) == (1, 18)          # the parameter y
    check_rendering(str(exc), "bad.dp", 1, 18, PAIR)


@pytest.mark.parametrize("arg", [np.ones((3, 2)), 1.0], ids=["matrix", "scalar"])
def test_call_wrong_rank_names_parameter(arg):
    mod = dp.compile(PAIR, filename="bad.dp")
    with pytest.raises(DPShapeError) as info:
        mod.f(np.ones(3), arg)
    assert "argument 'y' must be f64[n]" in info.value.message
    assert (info.value.loc.line, info.value.loc.col) == (1, 18)


def test_call_fixed_size_mismatch():
    source = "def f(x: f64[3]) -> f64:\n    return sum(x)\n"
    mod = dp.compile(source, filename="bad.dp")
    with pytest.raises(DPShapeError) as info:
        mod.f(np.ones(4))
    assert "axis 0 has size 4, expected 3" in info.value.message
    assert (info.value.loc.line, info.value.loc.col) == (1, 7)


def test_call_too_many_arguments():
    mod = dp.compile(PAIR, filename="bad.dp")
    with pytest.raises(DPTypeError) as info:
        mod.f(np.ones(3), np.ones(3), 1.0)
    assert "takes 2 argument(s) but 3 were given" in info.value.message


def test_call_sizes_disagree_in_callee_at_run_time():
    source = src("""
        def g(x: f64[n], y: f64[n]) -> f64:
            return sum(x * y)

        def f(a: f64[k], b: f64[m]) -> f64:
            return g(a, b)
        """)
    for backend in ("interp", "cpu"):
        mod = dp.compile(source, filename="bad.dp", backend=backend)
        with pytest.raises(DPShapeError) as info:
            mod.f(np.ones(3), np.ones(4))
        # located at the call whose arguments do not fit, with g's parameter as a note
        assert info.value.message == ("in this call of g: parameter 'y': dimension n is 4 "
                                      "but parameter 'x' gives n = 3")
        assert (info.value.loc.line, info.value.loc.col) == (5, 12)
        assert "bad.dp:1:18" in info.value.note                     # g's parameter y
        # called directly, g itself reports its argument
        with pytest.raises(DPShapeError) as info:
            mod.g(np.ones(3), np.ones(4))
        assert (info.value.loc.line, info.value.loc.col) == (1, 18)


# ---------------------------------------------------------------- runtime errors
def test_index_out_of_range_is_located_runtime_error():
    source = "def f(x: f64[n], k: i64) -> f64:\n    return x[k]\n"
    mod = dp.compile(source, filename="bad.dp")
    with pytest.raises(DPRuntimeError) as info:
        mod.f(np.ones(3), 5)
    exc = info.value
    assert not isinstance(exc, IndexError)
    assert "out of" in exc.message and "5" in exc.message
    assert (exc.loc.line, exc.loc.col) == (2, 12)
    check_rendering(str(exc), "bad.dp", 2, 12, source)


def test_write_out_of_range_is_located_runtime_error():
    source = src("""
        def f(n: i64) -> f64:
            A = zeros(n)
            A[n] = 1.0
            return A[0]
        """)
    mod = dp.compile(source, filename="bad.dp")
    with pytest.raises(DPRuntimeError) as info:
        mod.f(3)
    assert (info.value.loc.line, info.value.loc.col) == (3, 5)


ASSERT_SRC = src("""
    def f(x: f64) -> f64:
        assert x > 0.0, "x must be positive"
        return sqrt(x)
    """)


def test_assert_failure():
    mod = dp.compile(ASSERT_SRC, filename="bad.dp")
    assert mod.f(4.0) == 2.0
    with pytest.raises(DPAssertionError) as info:
        mod.f(-1.0)
    exc = info.value
    assert isinstance(exc, DPRuntimeError)
    assert exc.message == "x must be positive"
    assert (exc.loc.line, exc.loc.col) == (2, 5)
    check_rendering(str(exc), "bad.dp", 2, 5, ASSERT_SRC)


def test_cli_run_reports_runtime_errors(tmp_path, capsys):
    path = tmp_path / "bad.dp"
    path.write_text(ASSERT_SRC)
    assert cli.main(["run", str(path), "f", "-1.0"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    check_rendering(err, str(path), 2, 5, ASSERT_SRC)
    p2 = tmp_path / "pair.dp"
    p2.write_text(PAIR)
    assert cli.main(["run", str(p2), "f", "[1, 2, 3]", "[1, 2, 3, 4]"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{p2}:1:18: argument 'y'") and "Traceback" not in err


def test_integer_argmax_under_smooth():
    source = src("""
        @smooth(entropy, gamma=g)
        def f(x: f64[n], g: f64) -> f64:
            return x[argmax(x)]
        """)
    with pytest.raises(DPTypeError) as info:
        dp.compile(source, filename="bad.dp")
    assert "onehot_argmax" in info.value.message
    assert (info.value.loc.line, info.value.loc.col) == (3, 14)


# (Differentiating an @argmin/@root/@fixed_point function whose linear solve does not
# converge: tests/test_implicit.py::test_a_solve_that_does_not_converge_is_a_located_error.)
