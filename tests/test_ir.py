"""The IR: builder, printer, verifier, dot, analyses and the reference interpreter,
on IR built by hand."""
from __future__ import annotations

import math
import re

import networkx as nx
import numpy as np
import pytest

from dplang.errors import DPAssertionError, DPInternalError, DPRuntimeError, Loc
from dplang.ir import types as T
from dplang.ir.analysis import (analyze_inplace, call_graph, callees_first, def_use_graph,
                                inplace_setitems, loop_init_copies, uses, yield_copies)
from dplang.ir.builder import Builder, new_region
from dplang.ir.core import Func, Program
from dplang.ir.dot import func_to_dot, program_to_dot
from dplang.ir.printer import print_func, print_program
from dplang.ir.verify import verify_func, verify_program
from dplang.backends.interp import run_func

F64, I64, BOOL = T.F64, T.I64, T.BOOL
N, M = T.Sym.name("n"), T.Sym.name("m")


def loc(line, file="examples/dtw.dp"):
    return Loc(file, line, 1)


# ---------------------------------------------------------------------- helpers
def make_func(name, param_types, param_names, result_types, returns_tuple=False):
    body = new_region(param_types, hints=param_names)
    f = Func(name, body, list(result_types), param_names=list(param_names),
             returns_tuple=returns_tuple, filename="examples/dtw.dp")
    return f, Builder(body), body.args


def for_loop(b, lo, hi, step, inits, hints, body_fn, line=None, iv="i"):
    """``body_fn(i, *carried) -> list of yielded values``; returns the loop's results."""
    body = new_region([I64] + [v.type for v in inits], hints=[iv] + list(hints))
    with b.at(body):
        ys = body_fn(body.args[0], *body.args[1:])
        b.yield_(*ys)
    op = b.op("for", [lo, hi, step, *inits], [v.type for v in inits], regions=[body],
              hints=list(hints), loc=loc(line) if line else None)
    return op.results


def while_loop(b, inits, hints, cond_fn, body_fn):
    cond = new_region([v.type for v in inits], hints=hints)
    body = new_region([v.type for v in inits], hints=hints)
    with b.at(cond):
        b.yield_(cond_fn(*cond.args))
    with b.at(body):
        b.yield_(*body_fn(*body.args))
    op = b.op("while", list(inits), [v.type for v in inits], regions=[cond, body], hints=hints)
    return op.results


def if_op(b, c, result_types, hints, then_fn, else_fn):
    regs = []
    for fn in (then_fn, else_fn):
        r = new_region()
        with b.at(r):
            b.yield_(*fn())
        regs.append(r)
    op = b.op("if", [c], list(result_types), regions=regs, hints=hints)
    return op.results


def build_dtw():
    """The DTW of SPEC section 1, as the front end would lower it."""
    f, b, (D,) = make_func("dtw", [T.Array("f64", (N, M))], ["D"], [F64])
    with b.located(loc(2)):
        n = b.prim("dim", D, axis=0, hint="n")
        m = b.prim("dim", D, axis=1, hint="m")
        one = b.const(1)
        zero = b.const(0)
        n1 = b.prim("add", n, one, hint="n")
        m1 = b.prim("add", m, one, hint="m")
        R = b.prim("full", b.const(math.inf), n1, m1, hint="R",
                   _shape=(T.dim_add(N, 1), T.dim_add(M, 1)))
    with b.located(loc(3)):
        R1 = b.prim("setitem", R, b.const(0.0), zero, zero, hint="R")

    def outer(i, Ro):
        def inner(j, Ri):
            with b.located(loc(6)):
                im1 = b.prim("sub", i, one, hint="i")
                jm1 = b.prim("sub", j, one, hint="j")
                d = b.prim("getitem", D, im1, jm1)
                a = b.prim("getitem", Ri, im1, jm1)
                c = b.prim("getitem", Ri, im1, j)
                e = b.prim("getitem", Ri, i, jm1)
                mn = b.prim("minn", a, c, e)
                v = b.prim("add", d, mn)
                return [b.prim("setitem", Ri, v, i, j, hint="R")]
        return for_loop(b, one, m1, one, [Ro], ["R"], inner, line=5, iv="j")

    (R4,) = for_loop(b, one, n1, one, [R1], ["R"], outer, line=4)
    with b.located(loc(7)):
        t = b.prim("getitem", R4, n, m)
        b.return_(t)
    return f


def dtw_ref(D):
    n, m = D.shape
    R = np.full((n + 1, m + 1), np.inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]


def prog(*funcs):
    return Program(funcs={f.name: f for f in funcs}, exports={f.name: f.name for f in funcs})


# ---------------------------------------------------------------------- interpreter
@pytest.mark.parametrize("lo,hi,step", [(0, 10, 1), (1, 10, 3), (10, 0, -1), (9, -3, -4),
                                        (5, 5, 1), (5, 0, 1)])
def test_for_scalar_sum(lo, hi, step):
    f, b, (x,) = make_func("sumsq", [F64], ["x"], [F64])
    c = [b.const(lo), b.const(hi), b.const(step)]
    (s,) = for_loop(b, *c, [b.const(0.0, hint="s")], ["s"],
                    lambda i, s: [b.prim("add", s, b.prim("mul", b.prim("cast", i, dtype="f64"), x))])
    b.return_(s)
    verify_func(f)
    (got,) = run_func(None, f, [2.0])
    assert isinstance(got, np.float64)
    assert got == sum(2.0 * i for i in range(lo, hi, step))


def test_for_zero_step_is_runtime_error():
    f, b, () = make_func("z", [], [], [I64])
    (s,) = for_loop(b, b.const(0), b.const(3), b.const(0), [b.const(0)], ["s"],
                    lambda i, s: [s], line=9)
    b.return_(s)
    with pytest.raises(DPRuntimeError, match="step"):
        run_func(None, f, [])


def test_dtw_interpreter_matches_numpy():
    f = build_dtw()
    verify_func(f)
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 5), (6, 4)]:
        D = rng.random(shape)
        D0 = D.copy()
        (got,) = run_func(prog(f), "dtw", [D])
        assert got == pytest.approx(dtw_ref(D))
        assert np.array_equal(D, D0)     # parameters are never written


def test_dtw_table_written_in_place():
    f = build_dtw()
    sets = [op for op in f.walk() if op.name == "setitem"]
    assert len(sets) == 2
    assert inplace_setitems(f) == set(sets)
    assert loop_init_copies(f) == set()
    assert yield_copies(f) == set()


def test_write_then_read_old_array_copies():
    # B = setitem(A, 1.0, 0); read A[0] afterwards: A must survive the write
    f, b, (n,) = make_func("g", [I64], ["n"], [F64, F64], returns_tuple=True)
    A = b.prim("zeros", n, hint="A")
    zero = b.const(0)
    B = b.prim("setitem", A, b.const(1.0), zero, hint="B")
    ta = b.prim("getitem", A, zero)
    tb = b.prim("getitem", B, zero)
    b.return_(ta, tb)
    verify_func(f)
    assert inplace_setitems(f) == set()
    assert run_func(None, f, [3]) == [0.0, 1.0]


def test_loop_init_copied_when_used_after_loop():
    f, b, (n,) = make_func("h", [I64], ["n"], [F64, F64], returns_tuple=True)
    A = b.prim("zeros", n, hint="A")
    one = b.const(1)
    (X,) = for_loop(b, b.const(0), n, one, [A], ["A"],
                    lambda i, a: [b.prim("setitem", a, b.prim("cast", i, dtype="f64"), i,
                                         hint="A")])
    s_old = b.prim("sum", A)
    s_new = b.prim("sum", X)
    b.return_(s_old, s_new)
    verify_func(f)
    loop = next(op for op in f.body.ops if op.name == "for")
    inner_set = next(op for op in loop.walk() if op.name == "setitem")
    info = analyze_inplace(f)
    assert inner_set in info.inplace            # the carried value is owned by the loop
    assert info.init_copies == {(loop, 3)}      # ... because its init is copied
    assert run_func(None, f, [4]) == [0.0, 6.0]


def test_interpreter_sees_ir_changed_after_a_run():
    f, b, (n,) = make_func("g", [I64], ["n"], [F64])
    A = b.prim("zeros", n, hint="A")
    B = b.prim("setitem", A, b.const(1.0), b.const(0), hint="B")
    sB = b.prim("sum", B)
    ret = b.return_(sB)
    assert run_func(None, f, [2]) == [1.0]
    # a pass adds a read of A after the write: the write must now copy
    f.body.ops.remove(ret)
    r = b.prim("sub", sB, b.prim("getitem", A, b.const(0)))
    f.body.append(ret)
    ret.operands = [r]
    verify_func(f)
    assert run_func(None, f, [2]) == [1.0]


def test_loop_init_not_copied_when_dead_after():
    f, b, (n,) = make_func("h", [I64], ["n"], [T.Array("f64", (None,))])
    A = b.prim("zeros", n, hint="A")
    (X,) = for_loop(b, b.const(0), n, b.const(1), [A], ["A"],
                    lambda i, a: [b.prim("setitem", a, b.const(2.0), i, hint="A")])
    b.return_(X)
    assert loop_init_copies(f) == set()
    assert yield_copies(f) == set()
    (r,) = run_func(None, f, [3])
    assert r.tolist() == [2.0, 2.0, 2.0]


def test_param_is_copied_before_write_in_loop():
    f, b, (P,) = make_func("k", [T.Array("f64", (N,))], ["P"], [T.Array("f64", (N,))])
    n = b.prim("dim", P, axis=0)
    (X,) = for_loop(b, b.const(0), n, b.const(1), [P], ["P"],
                    lambda i, a: [b.prim("setitem", a, b.const(7.0), i)])
    b.return_(X)
    loop = next(op for op in f.body.ops if op.name == "for")
    assert loop_init_copies(f) == {(loop, 3)}
    P0 = np.arange(3.0)
    (r,) = run_func(None, f, [P0])
    assert r.tolist() == [7.0] * 3 and P0.tolist() == [0.0, 1.0, 2.0]


def test_loop_yielding_outer_array_is_copied():
    # for i: carry (x = copy(A)) { x2 = setitem(x, ...); yield A }  -- A must stay intact
    f, b, (n,) = make_func("y", [I64], ["n"], [F64])
    A = b.prim("zeros", n, hint="A")
    A0 = b.prim("copy", A, hint="x")

    def body(i, x):
        x2 = b.prim("setitem", x, b.const(5.0), i)
        b.prim("sum", x2)
        return [A]
    (X,) = for_loop(b, b.const(0), n, b.const(1), [A0], ["x"], body)
    s = b.prim("add", b.prim("sum", X), b.prim("sum", A))
    b.return_(s)
    verify_func(f)
    y = next(op for op in f.walk() if op.name == "yield")
    assert (y, 0) in yield_copies(f)
    assert run_func(None, f, [4]) == [0.0]


def test_write_to_loop_result_that_passes_init_through():
    # B = for (zero trips) carry (x = A) { yield x };  C = setitem(B, ...);  read A
    f, b, (n,) = make_func("p", [I64], ["n"], [F64, F64], returns_tuple=True)
    A = b.prim("zeros", n, hint="A")
    (B,) = for_loop(b, b.const(0), b.const(0), b.const(1), [A], ["x"], lambda i, x: [x])
    C = b.prim("setitem", B, b.const(4.0), b.const(0))
    b.return_(b.prim("sum", C), b.prim("sum", A))
    loop = next(op for op in f.body.ops if op.name == "for")
    info = analyze_inplace(f)
    assert next(op for op in f.walk() if op.name == "setitem") in info.inplace
    assert info.init_copies == {(loop, 3)}
    assert run_func(None, f, [3]) == [4.0, 0.0]


def test_duplicate_carry_gets_own_buffer():
    f, b, (n,) = make_func("d", [I64], ["n"], [F64, F64], returns_tuple=True)
    A = b.prim("zeros", n, hint="A")
    (X, Y) = for_loop(b, b.const(0), n, b.const(1), [A, A], ["x", "y"],
                      lambda i, x, y: [b.prim("setitem", x, b.const(1.0), i), y])
    b.return_(b.prim("sum", X), b.prim("sum", Y))
    assert run_func(None, f, [3]) == [3.0, 0.0]


def test_if_result_aliasing_outer_array():
    # y = if c { yield A } else { yield B };  y2 = setitem(y, ...);  read A afterwards
    f, b, (c, n) = make_func("a", [BOOL, I64], ["c", "n"], [F64, F64], returns_tuple=True)
    A = b.prim("zeros", n, hint="A")
    B = b.prim("ones", n, hint="B")
    (y,) = if_op(b, c, [A.type], ["y"], lambda: [A], lambda: [B])
    y2 = b.prim("setitem", y, b.const(9.0), b.const(0))
    b.return_(b.prim("sum", y2), b.prim("sum", A))
    verify_func(f)
    info = analyze_inplace(f)
    sets = [op for op in f.walk() if op.name == "setitem"]
    assert sets[0] in info.inplace
    then_yield = next(op for op in f.walk() if op.name == "yield")
    assert (then_yield, 0) in info.yield_copies          # A is read after the if
    assert run_func(None, f, [True, 3]) == [9.0, 0.0]
    assert run_func(None, f, [False, 3]) == [11.0, 0.0]


def test_setitem_in_if_branch_consumes_outer_value():
    f, b, (c, n) = make_func("a", [BOOL, I64], ["c", "n"], [T.Array("f64", (None,))])
    A = b.prim("zeros", n, hint="A")
    (y,) = if_op(b, c, [A.type], ["y"],
                 lambda: [b.prim("setitem", A, b.const(1.0), b.const(0))], lambda: [A])
    b.return_(y)
    sets = [op for op in f.walk() if op.name == "setitem"]
    assert inplace_setitems(f) == set(sets)
    assert run_func(None, f, [True, 2])[0].tolist() == [1.0, 0.0]
    assert run_func(None, f, [False, 2])[0].tolist() == [0.0, 0.0]


def test_returned_param_is_copied_and_caller_may_write():
    # ident(P) = P;  main(P): Q = ident(P); Q2 = setitem(Q, ...); return sum(P) + sum(Q2)
    g, bg, (P,) = make_func("ident", [T.Array("f64", (N,))], ["P"], [T.Array("f64", (N,))])
    (X,) = for_loop(bg, bg.const(0), bg.const(0), bg.const(1), [P], ["P"], lambda i, p: [p])
    bg.return_(X)
    f, b, (A,) = make_func("main", [T.Array("f64", (N,))], ["A"], [F64])
    A2 = b.prim("copy", A, hint="A")
    (Q,) = b.call("ident", [A2], [A.type], hints=["Q"]).results
    Q2 = b.prim("setitem", Q, b.const(5.0), b.const(0))
    b.return_(b.prim("add", b.prim("sum", A2), b.prim("sum", Q2)))
    p = prog(g, f)
    verify_program(p)
    ret = g.body.ops[-1]
    assert (ret, 0) in yield_copies(g)
    assert run_func(p, "main", [np.zeros(2)]) == [5.0]


def test_while_loop():
    # collatz steps
    f, b, (x,) = make_func("collatz", [I64], ["x"], [I64])
    one, two, three = b.const(1), b.const(2), b.const(3)

    def cond(v, k):
        return b.prim("ne", v, one)

    def body(v, k):
        even = b.prim("eq", b.prim("mod", v, two), b.const(0))
        (nv,) = if_op(b, even, [I64], ["x"], lambda: [b.prim("floordiv", v, two)],
                      lambda: [b.prim("add", b.prim("mul", three, v), one)])
        return [nv, b.prim("add", k, one, hint="k")]
    (_, k) = while_loop(b, [x, b.const(0)], ["x", "k"], cond, body)
    b.return_(k)
    verify_func(f)

    def ref(v):
        k = 0
        while v != 1:
            v = v // 2 if v % 2 == 0 else 3 * v + 1
            k += 1
        return k
    for v in [1, 6, 27]:
        (got,) = run_func(None, f, [v])
        assert isinstance(got, np.int64) and got == ref(v)


def test_while_with_array_carry():
    f, b, (n,) = make_func("fill", [I64], ["n"], [T.Array("f64", (None,))])
    A = b.prim("zeros", n, hint="A")
    (k, Af) = while_loop(b, [b.const(0), A], ["k", "A"],
                         lambda k, a: b.prim("lt", k, n),
                         lambda k, a: [b.prim("add", k, b.const(1)),
                                       b.prim("setitem", a, b.prim("cast", k, dtype="f64"), k)])
    b.return_(Af)
    verify_func(f)
    assert loop_init_copies(f) == set()
    assert len(inplace_setitems(f)) == 1
    assert run_func(None, f, [4])[0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_call_between_functions():
    g, bg, (x,) = make_func("sq", [F64], ["x"], [F64])
    bg.return_(bg.prim("mul", x, x))
    f, b, (y,) = make_func("main", [F64], ["y"], [F64])
    (t,) = b.call("sq", [y], [F64]).results
    b.return_(b.prim("add", t, b.const(1.0)))
    p = prog(g, f)
    verify_program(p)
    assert run_func(p, "main", [3.0]) == [10.0]
    assert list(call_graph(p).edges) == [("main", "sq")]
    assert callees_first(p) == ["sq", "main"]


def test_const_array_and_undef():
    f, b, () = make_func("c", [], [], [F64, T.Array("f64", (None,))], returns_tuple=True)
    C = b.op("const", [], [T.Array("f64", (3,))], {"value": np.array([1.0, 2.0, 3.0])},
             hints=["C"]).result
    C2 = b.prim("setitem", C, b.const(0.0), b.const(0))
    u = b.op("undef", [], [T.Array("f64", (None,))], hints=["u"]).result
    b.return_(b.prim("sum", C2), u)
    verify_func(f)
    assert "C = const([1.0, 2.0, 3.0])" in print_func(f)
    for _ in range(2):     # the constant's array is never written
        s, u_ = run_func(None, f, [])
        assert s == 5.0 and u_.shape == (0,)


# ---------------------------------------------------------------------- runtime errors
def test_index_error_is_located():
    f, b, (A,) = make_func("bad", [T.Array("f64", (N,))], ["A"], [F64])
    with b.located(loc(12, "x.dp")):
        t = b.prim("getitem", A, b.const(10))
    b.return_(t)
    with pytest.raises(DPRuntimeError) as ei:
        run_func(None, f, [np.zeros(3)])
    assert ei.value.loc == loc(12, "x.dp")
    assert "index" in str(ei.value)


def test_assert_op():
    f, b, (x,) = make_func("pos", [F64], ["x"], [F64])
    ok = b.prim("gt", x, b.const(0.0))
    b.op("assert", [ok], [], {"msg": "x must be positive"}, loc=loc(3, "p.dp"))
    b.return_(x)
    verify_func(f)
    assert run_func(None, f, [1.0]) == [1.0]
    with pytest.raises(DPAssertionError, match="x must be positive") as ei:
        run_func(None, f, [-1.0])
    assert ei.value.loc.line == 3
    assert 'assert %1, "x must be positive"' in print_func(f)


def test_shape_assert_formats_its_operands():
    from dplang.errors import DPShapeError
    f, b, (A,) = make_func("sh", [T.Array("f64", (N,))], ["A"], [F64])
    k = b.prim("dim", A, axis=0, hint="k")
    ok = b.prim("eq", k, b.const(3))
    b.op("assert", [ok, k], [], {"msg": "axis 0 has size {1}, expected 3", "kind": "shape"},
         loc=loc(4, "s.dp"))
    b.return_(b.prim("sum", A))
    verify_func(f)
    assert 'assert %1, "axis 0 has size {1}, expected 3", args=(k,), kind="shape"' \
        in print_func(f)
    assert run_func(None, f, [np.ones(3)]) == [3.0]
    with pytest.raises(DPShapeError, match="axis 0 has size 2, expected 3"):
        run_func(None, f, [np.ones(2)])


def test_float_errors_are_ieee():
    f, b, (x,) = make_func("r", [F64], ["x"], [F64])
    b.return_(b.prim("div", b.const(1.0), x))
    assert run_func(None, f, [0.0]) == [math.inf]


# ---------------------------------------------------------------------- printer
DTW_TEXT = """\
func dtw(D: f64[n, m]) -> f64 {
  n = dim(D, axis=0)                                   # dtw.dp:2
  m = dim(D, axis=1)                                   # dtw.dp:2
  n_1 = n + 1                                          # dtw.dp:2
  m_1 = m + 1                                          # dtw.dp:2
  R = full(inf, n_1, m_1)                              # dtw.dp:2
  R_1 = setitem(R, [0, 0], 0.0)                        # dtw.dp:3
  R_6 = for i in range(1, n_1, 1) carry (R_2 = R_1) {  # dtw.dp:4
    R_5 = for j in range(1, m_1, 1) carry (R_3 = R_2) {  # dtw.dp:5
      i_1 = i - 1                                      # dtw.dp:6
      j_1 = j - 1                                      # dtw.dp:6
      %1 = D[i_1, j_1]                                 # dtw.dp:6
      %2 = R_3[i_1, j_1]                               # dtw.dp:6
      %3 = R_3[i_1, j]                                 # dtw.dp:6
      %4 = R_3[i, j_1]                                 # dtw.dp:6
      %5 = minn(%2, %3, %4)                            # dtw.dp:6
      %6 = %1 + %5                                     # dtw.dp:6
      R_4 = setitem(R_3, [i, j], %6)                   # dtw.dp:6
      yield R_4
    }
    yield R_5
  }
  %7 = R_6[n, m]                                       # dtw.dp:7
  return %7                                            # dtw.dp:7
}
"""


def test_printer_golden_dtw():
    assert print_func(build_dtw()) == DTW_TEXT


def test_printer_is_deterministic_and_never_prints_ids():
    f = build_dtw()
    a, b_ = print_func(f), print_func(f)
    assert a == b_
    assert "#" not in re.sub(r"# \w+\.dp:\d+", "", a)
    assert not re.search(r"#\d", a)


def test_printer_structures():
    f, b, (c, x) = make_func("s", [BOOL, F64], ["c", "x"], [F64, F64], returns_tuple=True)
    f.attrs = {"smooth": {"reg": "entropy", "gamma": "gamma"}}
    (y,) = if_op(b, c, [F64], ["y"], lambda: [b.prim("neg", x)], lambda: [b.const(-math.inf)])
    (a, k) = while_loop(b, [x, b.const(0)], ["x", "k"],
                        lambda v, k: b.prim("lt", v, b.const(10.0)),
                        lambda v, k: [b.prim("mul", v, b.const(2.0), hint="x"),
                                      b.prim("add", k, b.const(1), hint="k")])
    A = b.prim("zeros", b.const(4), hint="A")
    s = b.prim("getitem", A, b.const(1), b.const(3), index=(("slice", True, True, False),))
    s2 = b.prim("getitem", A, index=(("slice", False, False, False),))
    b.return_(b.prim("add", y, b.prim("sum", b.prim("add", s, b.prim("sum", s2, axis=0)))), a)
    verify_func(f)
    text = print_func(f)
    expected = [
        '@smooth(reg="entropy", gamma="gamma")',
        "func s(c: bool, x: f64) -> (f64, f64) {",
        "  y = if c {",
        "    %1 = -x",
        "    yield %1",
        "  } else {",
        "    yield -inf",
        "  x_4, k_3 = while carry (x_1 = x, k = 0) cond {",
        "    %2 = x_1 < 10.0",
        "    yield %2",
        "  } do (x_2, k_1) {",
        "    x_3 = x_2 * 2.0",
        "    k_2 = k_1 + 1",
        "    yield x_3, k_2",
        "  A = zeros(4, dtype=\"f64\")",
        "  %3 = A[1:3]",
        "  %4 = A[:]",
        "  %5 = sum(%4, axis=0)",
    ]
    lines = text.splitlines()
    for e in expected:
        assert e in lines, (e, text)
    assert run_func(None, f, [True, 3.0]) == [-3.0 + 0.0, 12.0]


def test_print_program_and_call():
    g, bg, (x,) = make_func("sq", [F64], ["x"], [F64])
    bg.return_(bg.prim("mul", x, x))
    f, b, (y,) = make_func("main", [F64], ["y"], [F64])
    (t,) = b.call("sq", [y], [F64]).results
    b.return_(t)
    text = print_program(prog(g, f))
    assert "  %1 = call sq(y)" in text.splitlines()
    assert "}\n\nfunc main(y: f64) -> f64 {" in text


# ---------------------------------------------------------------------- verifier
def _simple():
    f, b, (x,) = make_func("f", [F64], ["x"], [F64])
    return f, b, x


def test_verifier_accepts_good_ir():
    verify_func(build_dtw())


def test_verifier_use_before_definition():
    f, b, x = _simple()
    y = b.prim("exp", x, hint="y")
    z = b.prim("exp", y, hint="z")
    b.return_(z)
    f.body.ops[0], f.body.ops[1] = f.body.ops[1], f.body.ops[0]
    with pytest.raises(DPInternalError, match="before its definition") as ei:
        verify_func(f, pass_name="simplify")
    assert "simplify" in str(ei.value) and "z = exp(y)" in str(ei.value)


def test_verifier_use_outside_region():
    f, b, (n,) = make_func("f", [I64], ["n"], [I64])
    leak = []

    def body(i, s):
        v = b.prim("add", s, i, hint="v")
        leak.append(v)
        return [v]
    for_loop(b, b.const(0), n, b.const(1), [b.const(0)], ["s"], body)
    b.return_(leak[0])
    with pytest.raises(DPInternalError, match="not visible"):
        verify_func(f)


def test_verifier_yield_type_mismatch():
    f, b, (n,) = make_func("f", [I64], ["n"], [F64])
    (s,) = for_loop(b, b.const(0), n, b.const(1), [b.const(0.0)], ["s"],
                    lambda i, s: [i])          # yields i64 into an f64 carry
    b.return_(s)
    with pytest.raises(DPInternalError, match="for body yield.*i64.*f64"):
        verify_func(f)


def test_verifier_wrong_primitive_result_type():
    f, b, x = _simple()
    y = b.prim("exp", x)
    y.type = T.I64
    b.return_(x)
    with pytest.raises(DPInternalError, match="result types of exp"):
        verify_func(f)


def test_verifier_missing_terminator():
    f, b, x = _simple()
    b.prim("exp", x)
    with pytest.raises(DPInternalError, match="without terminator"):
        verify_func(f)
    f2, b2, (n,) = make_func("g", [I64], ["n"], [I64])
    body = new_region([I64], hints=["i"])
    b2.op("for", [b2.const(0), n, b2.const(1)], [], regions=[body])
    b2.return_(n)
    with pytest.raises(DPInternalError, match="without terminator"):
        verify_func(f2)


def test_verifier_value_defined_twice():
    f, b, x = _simple()
    y = b.prim("exp", x)
    op2 = b.op("exp", [x], [F64])
    op2.results = [y]
    b.return_(y)
    with pytest.raises(DPInternalError, match="defined twice"):
        verify_func(f)


def test_verifier_call_unknown_function():
    f, b, x = _simple()
    (t,) = b.call("nope", [x], [F64]).results
    b.return_(t)
    verify_func(f)                      # without a program, callees are not checked
    with pytest.raises(DPInternalError, match="unknown function 'nope'"):
        verify_program(prog(f))


def test_verifier_call_argument_types():
    g, bg, (x,) = make_func("sq", [F64], ["x"], [F64])
    bg.return_(x)
    f, b, (y,) = make_func("main", [I64], ["y"], [F64])
    (t,) = b.call("sq", [y], [F64]).results
    b.return_(t)
    with pytest.raises(DPInternalError, match="arguments of call to sq"):
        verify_program(prog(g, f))


def test_verifier_return_and_if_types():
    f, b, x = _simple()
    b.return_(b.const(1))
    with pytest.raises(DPInternalError, match="return of f"):
        verify_func(f)
    f, b, x = _simple()
    (y,) = if_op(b, b.prim("gt", x, x), [F64], ["y"], lambda: [x], lambda: [b.const(True)])
    b.return_(y)
    with pytest.raises(DPInternalError, match="if else yield"):
        verify_func(f)
    f, b, x = _simple()
    (y,) = if_op(b, x, [F64], ["y"], lambda: [x], lambda: [x])
    b.return_(y)
    with pytest.raises(DPInternalError, match="if condition"):
        verify_func(f)


def test_verifier_yield_in_function_body_and_return_inside_loop():
    f, b, x = _simple()
    b.yield_(x)
    with pytest.raises(DPInternalError, match="expected return"):
        verify_func(f)
    f, b, (n,) = make_func("g", [I64], ["n"], [I64])
    body = new_region([I64], hints=["i"])
    with b.at(body):
        b.return_(n)
    b.op("for", [b.const(0), n, b.const(1)], [], regions=[body])
    b.return_(n)
    with pytest.raises(DPInternalError, match="expected yield"):
        verify_func(f)


# ---------------------------------------------------------------------- dot, use-def
def test_dot_output():
    f = build_dtw()
    text = func_to_dot(f)
    assert text.startswith("digraph")
    assert text.count("{") == text.count("}")
    assert "subgraph cluster_" in text
    assert "R_1 = setitem(R, [0, 0], 0.0)" in text
    g, bg, (x,) = make_func("sq", [F64], ["x"], [F64])
    bg.return_(bg.prim("mul", x, x))
    ptext = program_to_dot(prog(f, g))
    assert ptext.startswith("digraph") and ptext.count("{") == ptext.count("}")
    # node ids are unique across functions
    ids = re.findall(r"^\s*(f\d+_n\d+) \[", ptext, re.M)
    assert len(ids) == len(set(ids)) > 0


def test_def_use_graph_and_uses():
    f = build_dtw()
    g = def_use_graph(f)
    assert isinstance(g, nx.DiGraph)
    ops = list(f.walk())
    assert set(g.nodes) == set(ops)
    full = next(op for op in ops if op.name == "full")
    first_set = next(op for op in ops if op.name == "setitem")
    assert g.has_edge(full, first_set)
    assert nx.is_directed_acyclic_graph(g)
    u = uses(f)
    D = f.params[0]
    assert [op.name for op in u[D]] == ["dim", "dim", "getitem"]
    assert u[full.result] == [first_set]
