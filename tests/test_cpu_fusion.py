"""Elementwise fusion (backends/cpu/fusion.py), BLAS calls on transposed operands and
the flat row sums: where the generated code uses them, and that values and gradients
agree with the interpreter (NumPy) -- bit for bit where the scalar forms are the array
forms element by element."""
import os

import numpy as np
import pytest

import dplang as dp

rng = np.random.default_rng(5)

SRC = '''
def mlp(W: f64[h, d], b: f64[h], X: f64[N, d], Y: f64[N, h]) -> f64:
    Z = tanh(X @ W.T + b)
    R = Z - Y
    return sum(R ** 2)

# every fusable op, a scalar of each dtype, a column broadcast (k: f64[n, 1])
def every(x: f64[n, m], y: f64[m], k: f64[n, 1], a: f64, i: i64) -> f64[n, m]:
    u = exp(x) * a - y / i
    v = maximum(u, k) + minimum(-u, y) + abs(x - 0.5)
    w = sigmoid(v) + softplus(-v) + log(1.0 + x * x) + sqrt(abs(y) + 1.0)
    z = expm1(0.1 * w) + sin(w) * cos(u) + tan(0.1 * x) + log1p(x * 0.5) ** 2
    return z * (v + w)

# outputs used inside and outside the group, in a loop body, rank 1 and rank 3
def loop(x: f64[n], t: f64[p, q, r]) -> f64:
    s = 0.0
    for it in range(3):
        e = exp(-x * it)
        f = e * e + 1.0
        s = s + sum(f) + sum(e)
    g = tanh(t) * 2.0 - t
    return s + sum(g * g)

# a value of the group written in place after it: the group runs where it stood
def written(x: f64[n]) -> f64[n]:
    y = exp(x) * 2.0
    z = y + 1.0
    y[0] = 5.0
    return z * y

# integer and boolean arrays, rank 4: not fused, still right
def unfused(x: f64[a, b, c, d], i: i64[n]) -> f64:
    j = i * 2 + 1
    u = exp(x) * 2.0 + 1.0
    return sum(u) + sum(j)

def mats(A: f64[n, k], B: f64[m, k], C: f64[k, p], v: f64[n], w: f64[k]) -> f64:
    P = A.T @ A + C @ C.T
    Q = A @ B.T
    r = A.T @ v
    s = w @ B.T
    T = C.T @ A.T
    return sum(P) + sum(Q * Q) + sum(r * r) + sum(s) + sum(T * T)

def rows(x: f64[n, m]) -> f64[n]:
    return sum(x * 2.0, axis=1)

# results written into a table after the loop: the loop writes them itself
def through(x: f64[n, m], v: f64[m]) -> f64:
    A = zeros((3, n, m))
    B = zeros((3, n, m))
    s = 0.0
    for t in range(3):
        w = exp(x * t) * v
        s += sum(w, axis=1)[0]
        A[t, :, :] += w
        u = x * v + 1.0
        B[t, :, :] = u
    return sum(A * A) + sum(B) + s

# its gradient adds each step's weights times the row cotangents into d_x[t]
def table(x: f64[T, n, m], v: f64[m]) -> f64:
    s = 0.0
    for t in range(T):
        s += sum(smax(x[t, :, :] + v, 1.0) * x[t, :, 0])
    return s

# A is read between the loop and the write: the write stays where it is
def blocked(x: f64[n, m]) -> f64:
    A = ones((2, n, m))
    w = exp(x) * 2.0
    r = A[0, 0, 0]
    A[0, :, :] = w
    return sum(A) + r

# sums of a loop's results over their last or first axis: done in the loop
def rowsum(x: f64[n, m], y: f64[n, m]) -> f64[n]:
    return sum(x * y + 1.0, axis=1)

def colsum(x: f64[n, m], y: f64[n, m]) -> f64[m]:
    return sum(x * y + 1.0, axis=0)

def sums3(x: f64[a, n, m]) -> (f64[a, n], f64[n, m], f64[a, n, m]):
    u = x * x - 0.5
    w = u * 3.0
    return sum(u, axis=2), sum(w, axis=0), u

# a user's A[t] += u reads the view it writes: the loop still writes it itself; a
# read of another row of A keeps the write after the loop
def accum(x: f64[T, n, m], w: f64[n, m]) -> f64[T, n, m]:
    A = zeros((T, n, m))
    for t in range(T):
        A[t, :, :] += w * x[t, :, :]
        A[t] += exp(x[t])
        if t > 0:
            A[t] += A[t - 1] * 0.5 + x[t]
    return A

# outputs written into the buffer of a product that dies in the loop, or not
def reuse(A: f64[n, k], B: f64[k, m]) -> (f64[n, m], f64[n, m]):
    P = A @ B
    u = exp(P * 0.5)
    v = u * P
    return u, v

def kept(A: f64[n, k], B: f64[k, m]) -> f64:
    P = A @ B
    u = exp(P) * 2.0
    return sum(u) + P[0, 1]

def looped(A: f64[n, k], B: f64[k, m]) -> f64:
    P = A @ B
    s = 0.0
    for t in range(3):
        s += sum(exp(P * 0.1) * t)
    return s

# a value of the view's rank that broadcasts (k: f64[1, m]) into it
def spread(x: f64[n, m], k: f64[1, m]) -> f64[n, m]:
    A = x * 1.0
    A[:, :] += k
    B = x * 2.0
    B[:, :] = k
    return A + B
'''


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="fusion.dp", backend="cpu"),
            dp.compile(SRC, filename="fusion.dp", backend="interp"))


def _args(name, shapes=None):
    n, m, d, h, N = 5, 7, 3, 4, 9
    return {
        "mlp": [rng.standard_normal((h, d)), rng.standard_normal(h),
                rng.standard_normal((N, d)), rng.standard_normal((N, h))],
        "every": [rng.random((n, m)), rng.standard_normal(m), rng.standard_normal((n, 1)),
                  1.5, 3],
        "loop": [rng.standard_normal(6), rng.standard_normal((2, 3, 4))],
        "written": [rng.standard_normal(5)],
        "unfused": [rng.standard_normal((2, 3, 2, 2)), np.arange(4)],
        "mats": [rng.standard_normal((6, 4)), rng.standard_normal((5, 4)),
                 rng.standard_normal((4, 3)), rng.standard_normal(6),
                 rng.standard_normal(4)],
        "through": [rng.standard_normal((n, m)), rng.standard_normal(m)],
        "blocked": [rng.standard_normal((n, m))],
        "table": [rng.standard_normal((3, n, m)), rng.standard_normal(m)],
        "spread": [rng.standard_normal((n, m)), rng.standard_normal((1, m))],
    }[name]


def test_the_mlp_layer_is_one_loop(mods):
    cpu, _ = mods
    src = cpu.mlp.source()
    # X @ W.T goes to BLAS (when Numba has one: SciPy installed) with W as it is; bias,
    # tanh, the residual and its square are one loop, in which Z and R are scalars
    # (nothing else uses them)
    from dplang.backends.cpu.codegen import _blas_available
    assert ("rt_fmm22_nt(X, W)" in src) == _blas_available()
    # (and W.T itself is then not made: BLAS is its only reader)
    assert ("np.transpose(W)" in src) != _blas_available()
    assert "Z = rt_tanh(" in src and "rt_tanh_a" not in src
    assert src.count("raise ValueError('elementwise operands") == 1
    assert "Z = np.empty" not in src and "R = np.empty" not in src
    # the squared residuals go into the product's buffer (nothing else reads it)
    import re
    prod = re.search(r"(\w+) = rt_f?mm22\w*\(X, ", src).group(1)
    assert re.search(rf"\n\s+\w+ = {prod}\s+#", src) and "np.empty(" not in src
    assert "for i1 in range(n1):" in src
    compile(src, "<generated>", "exec")


@pytest.mark.parametrize("name", ["mlp", "every", "loop", "written", "unfused", "mats",
                                  "through", "table", "blocked", "spread"])
def test_values_and_gradients_agree_with_the_interpreter(mods, name):
    cpu, interp = mods
    xs = _args(name)
    fc, fi = getattr(cpu, name), getattr(interp, name)
    vc, vi = fc(*xs), fi(*xs)
    np.testing.assert_allclose(vc, vi, rtol=1e-13, atol=1e-14)
    if name in ("written", "spread"):
        return
    if name == "every":                     # a vector result: a VJP
        ct = rng.standard_normal(vi.shape)
        gc = dp.vjp(fc, wrt=(0, 1, 2))(*xs, ct)
        gi = dp.vjp(fi, wrt=(0, 1, 2))(*xs, ct)
    else:
        wrt = tuple(k for k, a in enumerate(xs)
                    if isinstance(a, np.ndarray) and a.dtype == float)
        gc, gi = dp.grad(fc, wrt=wrt)(*xs), dp.grad(fi, wrt=wrt)(*xs)
    for a, b in zip(_flat(gc), _flat(gi)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def _flat(x):
    if isinstance(x, (tuple, list)):
        return [y for e in x for y in _flat(e)]
    return [np.asarray(x)]


def test_what_is_fused_and_what_is_not(mods):
    cpu, _ = mods
    every = cpu.every.source()
    # every op is in some loop (a cast, and ops of y's shape between those of x's,
    # end a run); y is read along the rows and k along the columns of the loop
    assert "np.maximum" not in every and "np.abs" not in every and "rt_exp_a" not in every
    assert "rt_at1(y, i1)" in every and "rt_at2(k, i0, 0)" in every
    assert "k.shape[1] != 1" in every
    assert "rt_sigmoid_v(" in every and "rt_softplus_v(" in every
    loop = cpu.loop.source()
    # the loop body's run goes on past the cast of the index (a scalar op: it is
    # emitted first); e is also summed after the loop, so it is stored, f too
    assert "it_1 = np.float64(it)" in loop and "t2 = t1 * it_1" in loop
    assert "e = np.empty((n0,), np.float64)" in loop and "rt_put1(e, i0, e_e)" in loop
    assert "for i2 in range(n2):" in loop and "rt_tanh(rt_at3(t, i0, i1, i2))" in loop
    assert "elementwise operands" not in loop   # every operand is the loop's shape
    unfused = cpu.unfused.source()
    assert "elementwise operands" not in unfused and "rt_exp_a(" in unfused


def test_writes_into_a_table_happen_in_the_loop(mods):
    import re
    cpu, _ = mods
    src = cpu.through.source()
    # B[t] = u: element by element in the loop, after a test of the view's shape; u is
    # never an array (a scalar in the loop)
    assert re.search(r"rt_put2\(B\w*_v, i0, i1, u\)", src)
    assert "u = np.empty" not in src
    assert re.search(r"B\w*_v\.shape\[1\] != n1", src)
    # reverse mode's d_x[t] += exp(x[t]) * v * ds likewise
    g = dp.grad(cpu.table, wrt=0)
    g(*_args("table"))
    assert re.search(r"rt_inc2\(d_x_v\w*, i0, i1, \w+\)", g.source())
    assert "rt_add_into" not in g.source()
    # the scalar A[0, 0, 0] is read between the loop and A's update: the update stays
    # after it, as one pass over the view (rt_set_into2)
    blocked = cpu.blocked.source()
    assert "_v = " not in blocked and "rt_set_into2(A[0], w)" in blocked
    # the same-rank helper broadcasts a size-1 axis as NumPy does (B[:, :] = k, written
    # B[:]; the values are compared with the interpreter's)
    assert re.search(r"rt_set_into2\(B\w*\[:\], k\)", cpu.spread.source())


def test_the_shape_test_raises_before_any_element_is_read(mods):
    """Parameters' named dimensions are checked on entry, so a mismatch cannot reach
    the loop through the API; without those checks, the generated function still
    refuses it before the loop."""
    cpu, _ = mods
    src = cpu.mlp.source().replace("cache=True", "cache=False")
    src = "\n".join(ln[:len(ln) - len(ln.lstrip())] + "pass" if "raise AssertionError" in ln
                    else ln for ln in src.splitlines())
    ns: dict = {}
    exec(compile(src, "<generated>", "exec"), ns)
    W, b, X, Y = _args("mlp")
    assert np.isfinite(ns["mlp"](W, b, X, Y))
    with pytest.raises(ValueError, match="could not be broadcast"):
        ns["mlp"](W, b, X, Y[:, :2].copy())


def test_fusion_can_be_turned_off(monkeypatch):
    xs, ws = _args("every"), _args("mlp")
    monkeypatch.setenv("DPLANG_FUSION", "0")        # (read when the code is generated)
    off = dp.compile(SRC, filename="fusion.dp", backend="cpu")
    src_off, every_off, mlp_off = off.every.source(), off.every(*xs), off.mlp(*ws)
    monkeypatch.delenv("DPLANG_FUSION")
    on = dp.compile(SRC, filename="fusion.dp", backend="cpu")
    assert "elementwise operands" not in src_off and "np.maximum(" in src_off
    assert "elementwise operands" in on.every.source()
    # the scalar forms are the array forms element by element: the same bits
    assert np.array_equal(every_off, on.every(*xs))
    assert mlp_off == on.mlp(*ws)


@pytest.mark.parametrize("shape", [(3, 0), (4, 1), (6, 7), (5, 8), (4, 37), (5, 128), (3, 129),
                                   (2, 1000)])
def test_row_sums_are_numpy_sums(mods, shape):
    cpu, _ = mods
    x = rng.standard_normal(shape) * 10.0 ** rng.integers(-5, 5, shape)
    # NumPy's pairwise order, bit for bit
    assert np.array_equal(cpu.rows(x), np.sum(x * 2.0, axis=1))


def test_blas_helpers_read_transposed_operands():
    from dplang.backends.cpu import codegen
    from dplang.backends.cpu import runtime as rt
    if not codegen._blas_available():
        pytest.skip("Numba finds no BLAS (SciPy is not installed): products are loops")
    A, B = rng.standard_normal((6, 4)), rng.standard_normal((5, 4))
    v, w = rng.standard_normal(6), rng.standard_normal(4)
    np.testing.assert_allclose(rt.rt_fmm22_nt(A, B), A @ B.T, rtol=1e-14)
    np.testing.assert_allclose(rt.rt_fmm22_tn(A, A), A.T @ A, rtol=1e-14)
    C = rng.standard_normal((5, 6))
    np.testing.assert_allclose(rt.rt_fmm22_tt(A, C), A.T @ C.T, rtol=1e-14)
    np.testing.assert_allclose(rt.rt_fmm21_t(A, v), A.T @ v, rtol=1e-14)
    np.testing.assert_allclose(rt.rt_fmm12_t(w, B), w @ B.T, rtol=1e-14)
    with pytest.raises(ValueError, match="inner dimensions"):
        rt.rt_fmm22_nt(A, A.T.copy())


def _in_order(rows):
    """Each row's entries added one after the other (Python floats: no NumPy order)."""
    out = []
    for row in rows:
        acc = 0.0
        for e in row.tolist():
            acc += e
        out.append(acc)
    return np.array(out)


@pytest.mark.parametrize("m", [3, 37, 128, 129, 300])
def test_sums_of_a_loop_result_are_done_in_the_loop(mods, m):
    """A row of up to 128 entries is added in order in the loop (NumPy's pairwise order
    needs eight accumulators; as accurate for such rows); longer rows, and columns, sum
    exactly as NumPy does."""
    cpu, interp = mods
    n = 6
    x, y = rng.standard_normal((n, m)), rng.standard_normal((n, m))
    u = x * y + 1.0                         # (exactly rounded: the same bits everywhere)
    r = cpu.rowsum(x, y)
    if m <= 128:
        np.testing.assert_array_equal(r, _in_order(u))
    else:
        np.testing.assert_array_equal(r, np.sum(u, axis=1))
    np.testing.assert_allclose(r, interp.rowsum(x, y), rtol=1e-14)
    np.testing.assert_array_equal(cpu.colsum(x, y), np.sum(u, axis=0))
    x3 = rng.standard_normal((2, n, m))
    s2, s0, u3 = cpu.sums3(x3)
    w = x3 * x3 - 0.5
    np.testing.assert_array_equal(u3, w)
    np.testing.assert_array_equal(s0, np.sum(w * 3.0, axis=0))
    ref2 = np.sum(w, axis=2) if m > 128 else _in_order(w.reshape(-1, m)).reshape(2, n)
    np.testing.assert_array_equal(s2, ref2)
    for name in ("rowsum", "colsum", "sums3"):
        src = getattr(cpu, name).source()
        assert "rt_rows_sum" not in src and "rt_cols_sum" not in src, name
        assert src.count("for i0 in range(n0):") == 1, name
    assert "np.empty((n0, n1)" not in cpu.rowsum.source()     # x * y + 1 is no array
    # gradients through the fused sums
    ct = rng.standard_normal(n)
    for a, b in zip(_flat(dp.vjp(cpu.rowsum, wrt=(0, 1))(x, y, ct)),
                    _flat(dp.vjp(interp.rowsum, wrt=(0, 1))(x, y, ct))):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_an_output_takes_the_buffer_of_an_operand_that_dies(mods):
    """A loop's output may be written into the buffer of a new operand of its shape that
    nothing else reads, when every element is read before it is overwritten."""
    import re
    cpu, _ = mods
    A, B = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    P = A @ B
    u, v = cpu.reuse(A, B)
    np.testing.assert_allclose(u, np.exp(P * 0.5), rtol=1e-14)
    np.testing.assert_allclose(v, np.exp(P * 0.5) * P, rtol=1e-14)
    assert not np.shares_memory(u, v)
    src = cpu.reuse.source()
    prod = re.search(r"(\w+) = rt_f?mm22\w*\(A, B\)", src).group(1)
    # u's op reads P before v's op does: only v (the last reader) takes P's buffer
    assert re.search(rf"\bv = {prod}\s+#", src) and re.search(r"\bu = np.empty", src)
    assert cpu.kept(A, B) == pytest.approx(np.sum(np.exp(P) * 2.0) + P[0, 1], rel=1e-14)
    assert re.search(r"\w+ = np.empty", cpu.kept.source())      # P is read later
    ref = sum(np.sum(np.exp(P * 0.1) * t) for t in range(3))
    assert cpu.looped(A, B) == pytest.approx(ref, rel=1e-14)     # P is read every step


def test_a_users_accumulation_into_a_row_happens_in_the_loop(mods):
    import re
    cpu, interp = mods
    x, w = rng.standard_normal((4, 3, 5)), rng.standard_normal((3, 5))
    ref = np.zeros((4, 3, 5))
    for t in range(4):
        ref[t] += w * x[t]
        ref[t] += np.exp(x[t])
        if t > 0:
            ref[t] += ref[t - 1] * 0.5 + x[t]
    np.testing.assert_allclose(cpu.accum(x, w), ref, rtol=1e-14)
    np.testing.assert_allclose(interp.accum(x, w), ref, rtol=1e-14)
    src = cpu.accum.source()
    assert len(re.findall(r"rt_put2\(A\w*_v\w*, i0, i1, ", src)) == 2
    assert src.count("rt_set_into2(") == 1          # the row that reads A[t - 1]
    ct = rng.standard_normal(ref.shape)
    for a, b in zip(_flat(dp.vjp(cpu.accum, wrt=(0, 1))(x, w, ct)),
                    _flat(dp.vjp(interp.accum, wrt=(0, 1))(x, w, ct))):
        np.testing.assert_allclose(a, b, rtol=1e-12)
