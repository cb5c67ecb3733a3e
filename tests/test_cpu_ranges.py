"""Bounds checks hoisted out of 2-D nests and register carries (backends/cpu/ranges.py):
where the generated code uses them, that an index out of range is still the located
error the interpreter gives, that negative indices keep NumPy's meaning, and that the
results (values and gradients) agree with the interpreter bit for bit or to rounding."""
import numpy as np
import pytest

import dplang as dp

rng = np.random.default_rng(11)

# the body of an affine-gap recursion (Gotoh: three coupled tables); test_cpu_skew.py
# smooths it
GAPS = '''
    M = full((n + 1, m + 1), -inf)
    X = full((n + 1, m + 1), -inf)
    Y = full((n + 1, m + 1), -inf)
    M[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            M[i, j] = -D[i - 1, j - 1] + max(M[i - 1, j - 1], X[i - 1, j - 1], Y[i - 1, j - 1])
            X[i, j] = max(M[i - 1, j] - 1.0, X[i - 1, j] - 0.2)
            Y[i, j] = max(M[i, j - 1] - 1.0, Y[i, j - 1] - 0.2)
    return max(M[n, m], X[n, m], Y[n, m])
'''

SRC = '''
from std.align import dtw, soft_dtw

# reads one row too far at the last iteration (a wavefront nest: its gathers are
# unchecked after the hoisted test)
@smooth(entropy, gamma=g)
def overrun(D: f64[n, m], g: f64) -> f64:
    R = zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i, j - 1] + min(R[i - 1, j], 2.0 * D[i - 1, j - 1])
    return R[n, m]

# index -1 at the first row and column: NumPy's last row / column
@smooth(entropy, gamma=g)
def wraps(D: f64[n, m], g: f64) -> f64:
    R = ones((n, m))
    for i in range(n):
        for j in range(m):
            R[i, j] = D[i, j] + min(0.5 * R[i - 1, j], 0.25 * R[i, j - 1])
    return sum(R)

# its reverse sweep pops the soft-min weights and adds into the left neighbour, which
# the next (descending) iteration reads first: a register carry
@smooth(entropy, gamma=g)
def feed(D: f64[n, m], a: f64, g: f64) -> f64:
    R = ones((n + 1, m + 1))
    for k in range(1, n + 1):
        R[k, 0] = 0.5 * D[k - 1, 0]         # (the last carry of each row lands here)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = min(a * R[i, j - 1], D[i - 1, j - 1] * R[i - 1, j])
    return sum(R)

# a 4-D read inside a wavefront nest (no unchecked accessor of that rank: it keeps its
# checked form)
@smooth(entropy, gamma=g)
def four(D: f64[n, m, 2, 2], g: f64) -> f64:
    R = zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1, 1, 0] + min(R[i - 1, j], R[i, j - 1])
    return R[n, m]

# descending loops written by hand (no tape): the nest gets the hoisted test as a
# reverse sweep does; down_over reads one column too far at its first iteration
def down(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 1))
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            R[i - 1, j - 1] = D[i - 1, j - 1] * R[i, j - 1] + R[i, j] + 1.0
    return R[0, 0]

def down_over(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 1))
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            R[i - 1, j - 1] = D[i - 1, j] + R[i, j]
    return R[0, 0]

# the left neighbour is rewritten in the iteration too: its adjoint is read and
# written there as well, so it cannot travel in a local
def feed_back(D: f64[n, m], a: f64) -> f64:
    R = ones((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = a * R[i, j - 1] + D[i - 1, j - 1] * R[i - 1, j]
            R[i, j - 1] = 0.5 * R[i, j - 1] + 0.25 * R[i, j]
    return sum(R)

# three coupled tables (affine gaps, Gotoh): the reverse sweep adds into d_M[i, j - 1]
# (from Y's max) before it reads d_M[i, j] (for M's own max), so d_M cannot travel in a
# local; d_Y, read before its add, can (found by tests/fuzz_programs.py)
def gaps(D: f64[n, m]) -> f64:''' + GAPS


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="ranges.dp", backend="cpu"),
            dp.compile(SRC, filename="ranges.dp", backend="interp"))


def test_nests_get_one_hoisted_test_and_unchecked_accesses(mods):
    cpu, _ = mods
    # the wavefront nest (gathers, scatters, the kernel's writes into the tapes) and the
    # reverse sweep (its accesses and its reads of the tapes at wavefront slots) of
    # soft-DTW's gradient
    vg = dp.value_and_grad(cpu.soft_dtw).source()
    assert vg.count("index checks hoisted out of the nest") == 2
    # (and the test of the seed's row of the two-row adjoint table, window.py)
    assert vg.count("raise IndexError(") == 3
    # (the gathers read the nest's strip buffer of D, rt_strip_buf: D itself or a strip
    # of its rows with wider rows, whose row 0 is row D_b of D)
    # (the reverse sweep, in skewed blocks of rows, skew.py, reads a step's cells
    # at consecutive slots from base)
    assert "rt_at2(D_s, t8 - D_b, " in vg and "= rt_at1(tape, tape_n + base)" in vg
    # forward nests in row order keep their per-access checks (measured faster)
    assert "index checks hoisted" not in cpu.dtw.source()


def test_out_of_range_is_still_the_located_error(mods):
    cpu, interp = mods
    D = rng.random((5, 4))
    assert "index checks hoisted" in cpu.overrun.source()
    for f_cpu, f_int in ((cpu.overrun, interp.overrun),
                         (dp.grad(cpu.overrun), dp.grad(interp.overrun))):
        with pytest.raises(dp.DPError) as e_cpu:
            f_cpu(D, 0.5)
        with pytest.raises(dp.DPError) as e_int:
            f_int(D, 0.5)
        assert "ranges.dp:" in str(e_cpu.value)
        assert str(e_int.value).splitlines()[0] in str(e_cpu.value)
    # an empty nest runs nothing, so it cannot fail
    assert cpu.overrun(np.zeros((0, 4)), 0.5) == interp.overrun(np.zeros((0, 4)), 0.5)


def test_descending_nests_without_a_tape(mods):
    cpu, interp = mods
    D = rng.random((6, 5))
    assert "index checks hoisted" in cpu.down.source()
    assert cpu.down(D) == pytest.approx(interp.down(D), rel=1e-14)
    np.testing.assert_allclose(dp.grad(cpu.down)(D), dp.grad(interp.down)(D), rtol=1e-13)
    with pytest.raises(dp.DPError) as e_cpu:
        cpu.down_over(D)
    with pytest.raises(dp.DPError) as e_int:
        interp.down_over(D)
    assert "ranges.dp:" in str(e_cpu.value)
    assert str(e_int.value).splitlines()[0] in str(e_cpu.value)


def test_negative_indices_keep_their_numpy_meaning(mods):
    cpu, interp = mods
    for shape in [(1, 1), (3, 5), (17, 9)]:
        D = rng.random(shape)
        v_cpu, v_int = cpu.wraps(D, 0.3), interp.wraps(D, 0.3)
        assert abs(v_cpu - v_int) <= 1e-13 * abs(v_int)
        g_cpu, g_int = dp.grad(cpu.wraps)(D, 0.3), dp.grad(interp.wraps)(D, 0.3)
        np.testing.assert_allclose(g_cpu, g_int, rtol=1e-12, atol=1e-15)
    assert "index checks hoisted" in dp.grad(cpu.wraps).source()


def test_register_carry_where_it_applies_and_not_otherwise(mods):
    cpu, interp = mods
    # (feed's reverse sweep runs skewed blocks of rows, backends/cpu/skew.py: a carry a
    # row of the block)
    assert "carry_0 = carry_1 = " in dp.grad(cpu.feed, wrt=0).source()
    assert "carry" not in cpu.feed.source()             # (nothing to carry forwards)
    back = dp.grad(cpu.feed_back, wrt=0).source()
    assert "index checks hoisted" in back and "carry" not in back
    # soft-DTW's reverse sweep carries the left neighbour's adjoint (one carry a row of
    # its skewed blocks, skew.py)
    assert "carry_0 = carry_1 = " in dp.value_and_grad(cpu.soft_dtw).source()
    gaps = dp.grad(cpu.gaps).source()
    assert gaps.count("= -0.0") == 1                    # d_Y's carry only
    for f, extra in (("feed", (0.75, 0.2)), ("feed_back", (0.75,)), ("gaps", ())):
        for shape in [(1, 1), (4, 7), (9, 2), (2, 8), (70, 5)]:
            D = rng.random(shape) + 0.5
            vc, vi = getattr(cpu, f)(D, *extra), getattr(interp, f)(D, *extra)
            assert abs(vc - vi) <= 1e-13 * abs(vi)
            gc = dp.grad(getattr(cpu, f), wrt=0)(D, *extra)
            gi = dp.grad(getattr(interp, f), wrt=0)(D, *extra)
            np.testing.assert_allclose(gc, gi, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", [(1, 1), (2, 9), (65, 3), (70, 70)])
def test_dtw_and_soft_dtw_gradients_agree_with_the_interpreter(mods, shape):
    cpu, interp = mods
    D = rng.random(shape)
    for f in ("dtw", "soft_dtw"):
        args = (D,) if f == "dtw" else (D, 0.3)
        vc, gc = dp.value_and_grad(getattr(cpu, f))(*args)
        vi, gi = dp.value_and_grad(getattr(interp, f))(*args)
        assert abs(vc - vi) <= 1e-12 * abs(vi)
        np.testing.assert_allclose(gc, gi, rtol=1e-11, atol=1e-14)


def test_reads_of_any_rank_inside_a_nest(mods):
    cpu, interp = mods
    D = rng.random((9, 7, 2, 2))
    assert "index checks hoisted" in cpu.four.source()
    vc, gc = dp.value_and_grad(cpu.four)(D, 0.4)
    vi, gi = dp.value_and_grad(interp.four)(D, 0.4)
    assert abs(vc - vi) <= 1e-13 * abs(vi)
    np.testing.assert_allclose(gc, gi, rtol=1e-12, atol=1e-15)


CARRY = '''
# hard DTW written the textbook way on a table whose rows are 4 KB apart at m = 512:
# its nest reads R[i, j - 1] and R[i - 1, j - 1] from locals (forward register carries)
def textbook(D: f64[n, m]) -> f64:
    R = zeros((n, m))
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                R[i, j] = D[i, j]
            elif i == 0:
                R[i, j] = D[i, j] + R[i, j - 1]
            elif j == 0:
                R[i, j] = D[i, j] + R[i - 1, j]
            else:
                R[i, j] = D[i, j] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n - 1, m - 1]

# two tables, reads below and beside, a table written twice a cell (no carry for it),
# and a nest whose rows may be empty (m = 1: the carries' first loads must not run)
def several(D: f64[n, m]) -> f64:
    A = zeros((n + 2, m + 1))
    B = zeros((n + 2, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m):
            A[i, j] = 0.5 * A[i, j - 1] + 0.25 * A[i - 1, j] + 0.125 * A[i - 1, j - 1] + D[i - 1, j]
            B[i, j] = A[i, j - 1] * 0.5 + B[i + 1, j - 1] + B[i + 1, j] * 0.1
            B[i, j] = B[i, j] + A[i, j]
    return sum(A) + sum(B * B)
'''


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 4), (5, 7), (9, 512)])
def test_forward_register_carries(shape):
    """Ascending row-order nests read the cell they wrote one iteration before, and the
    row above's previous cell, from locals: the same bits as the interpreter."""
    cpu = dp.compile(CARRY, filename="carry.dp", backend="cpu")
    interp = dp.compile(CARRY, filename="carry.dp", backend="interp")
    src = cpu.textbook.source()
    assert "carry = " in src and "carry_ = " in src
    assert "carry" in cpu.several.source()
    D = rng.random(shape)
    for name in ("textbook", "several"):
        assert getattr(cpu, name)(D) == getattr(interp, name)(D), name
        np.testing.assert_allclose(dp.grad(getattr(cpu, name))(D),
                                   dp.grad(getattr(interp, name))(D), rtol=1e-13, atol=0)
