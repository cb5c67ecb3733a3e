"""Wavefront schedules (ir/wavefront.py, backends/cpu/wavefront.py): which 2-D DP nests
may be visited by anti-diagonals, the kernels the CPU backend generates for them, and
results against the interpreter (which runs every nest in its written order) and against
the CPU backend with the schedule turned off."""
import numpy as np
import pytest

import dplang as dp
from dplang.backends.cpu import codegen, skew
from dplang.backends.cpu import wavefront as cpu_wavefront
from dplang.ir.wavefront import wavefront_nests

rng = np.random.default_rng(5)

SRC = '''
from std.align import soft_dtw, dtw

# a soft recursion with a second table and an extra read two columns back
@smooth(entropy, gamma=gamma)
def two_tables(D: f64[n, m], gamma: f64) -> f64:
    R = full((n + 1, m + 2), inf)
    S = zeros((n + 1, m + 2))
    R[0, 1] = 0.0
    for i in range(1, n + 1):
        for j in range(2, m + 2):
            s = log(1.0 + exp(-D[i - 1, j - 2] / gamma)) + 0.5 * S[i - 1, j]
            S[i, j] = s
            R[i, j] = D[i - 1, j - 2] + s + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1], R[i, j - 2])
    return R[n, m + 1] + sum(S)

# reads the row above, one column ahead: the skewed order keeps it, a diagonal does not
def ahead(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 2))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = exp(-D[i - 1, j - 1]) + 0.5 * R[i - 1, j + 1] + 0.25 * R[i, j - 1]
    return sum(R)

# reads two columns ahead in the row above: visiting by diagonals would read it too late
def too_far(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 3))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = exp(-D[i - 1, j - 1]) + 0.5 * R[i - 1, j + 2] + 0.25 * R[i, j - 1]
    return sum(R)

# DTW's symmetric P1 step pattern: moves two rows or columns back with the cost of the
# cell passed over; the constant 3 appears only in index expressions (a regression: the
# kernel computed `j - 3` but the gather loop, which needs it, did not)
@smooth(entropy, gamma=gamma)
def step_pattern(D: f64[n, m], gamma: f64) -> f64:
    R = full((n + 2, m + 2), inf)
    R[1, 1] = 0.0
    for i in range(2, n + 2):
        for j in range(2, m + 2):
            R[i, j] = D[i - 2, j - 2] + min(R[i - 1, j - 1], R[i - 1, j - 2] + D[i - 2, j - 3],
                                            R[i - 2, j - 1] + D[i - 3, j - 2])
    return R[n + 1, m + 1]

# loops from 0: at j = 0, R[i - 1, j - 1] is R[i - 1, m - 1] (NumPy's negative index),
# which rows compute before (i, 0) and diagonals after it: the nest keeps its order
@smooth(entropy, gamma=gamma)
def wrap_around(D: f64[n, m], gamma: f64) -> f64:
    R = ones((n, m))
    for i in range(n):
        for j in range(m):
            R[i, j] = D[i, j] + min(0.5 * R[i - 1, j - 1], 0.5 * R[i - 1, j], 0.25 * R[i, j - 1])
    return sum(R)

# hard DTW between two series: squared differences are multiplications, no kernel
def sq_dtw(x: f64[n], y: f64[m]) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = (x[i - 1] - y[j - 1]) ** 2 + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

# soft-DTW from the far corner: a descending nest reading i + 1 and j + 1, visited by
# mirrored diagonals (from the last row and column)
@smooth(entropy, gamma=gamma)
def backward(D: f64[n, m], gamma: f64) -> f64:
    R = full((n + 1, m + 1), inf)
    R[n, m] = 0.0
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            R[i, j] = D[i, j] + min(R[i + 1, j + 1], R[i + 1, j], R[i, j + 1])
    return R[0, 0]

# a scalar carried through the nest (a running sum): not a table, left alone
def running(D: f64[n, m]) -> f64:
    s = 0.0
    for i in range(n):
        for j in range(m):
            s = s + exp(-D[i, j]) * s * 0.001 + 1.0
    return s
'''


@pytest.fixture(scope="module")
def mods():
    return (dp.compile(SRC, filename="wave.dp", backend="cpu"),
            dp.compile(SRC, filename="wave.dp", backend="interp"))


def _nests(mod, name, stage="optimized"):
    prog = mod._stage_program(stage)
    key = prog.exports.get(name, name)
    return wavefront_nests(prog.funcs[key])


def test_analysis_accepts_dp_nests_and_rejects_what_it_must(mods):
    cpu, _ = mods
    (n,) = _nests(cpu, "two_tables")
    assert n.sign == 1 and n.parallel and len(n.tables) == 2
    offsets = sorted({a.offset for a in n.accesses if a.kind == "read"})
    assert (0, -2) in offsets and (-1, -1) in offsets
    (a,) = _nests(cpu, "ahead")
    assert not a.parallel and not a.keep_order  # (i - 1, j + 1): on the same diagonal
    # diagonals would read (i - 1, j + 2) before it is written: rows only
    (t,) = _nests(cpu, "too_far")
    assert t.keep_order and not t.parallel
    assert _nests(cpu, "running") == []
    (b,) = _nests(cpu, "backward")
    assert b.sign == -1 and b.parallel and not b.keep_order


def test_indices_that_wrap_around_keep_the_written_order(mods):
    cpu, interp = mods
    (n,) = _nests(cpu, "wrap_around")
    assert n.keep_order and not n.parallel
    (s,) = _nests(cpu, "step_pattern")        # (negative indices into D only)
    assert not s.keep_order and s.parallel
    assert "# wavefront" not in cpu.wrap_around.source()
    for shape in [(3, 5), (17, 9), (70, 40)]:
        D = rng.random(shape)
        want, got = interp.wrap_around(D, 0.4), cpu.wrap_around(D, 0.4)
        assert abs(got - want) <= 1e-12 * abs(want)
        gw = dp.grad(interp.wrap_around)(D, 0.4)
        gc = dp.grad(cpu.wrap_around)(D, 0.4)
        np.testing.assert_allclose(gc, gw, rtol=1e-11, atol=1e-14)
        # (second order: the reverse sweep's adjoint table must not be kept as two rows,
        # which cannot hold row -1; the hoisted test refused every call before session 16)
        V = rng.standard_normal(shape)
        np.testing.assert_allclose(dp.hvp(cpu.wrap_around)(D, 0.4, V),
                                   dp.hvp(interp.wrap_around)(D, 0.4, V), rtol=1e-10, atol=1e-13)


def test_a_reverse_sweep_that_must_keep_its_order_gets_the_row_order_code(mods):
    """two_tables' reverse sweep adds into d_R[i, j - 2] and d_R[i - 1, j], which
    diagonals would add in another order (other bits): a keep_order nest, which still
    gets the hoisted index test and the two-row adjoint table, and reads the forward's
    weights at their wavefront slots (no copy into row order), in row order."""
    cpu, interp = mods
    vg = dp.value_and_grad(cpu.two_tables)
    D = rng.random((70, 40)) * 2.0
    v, g = vg(D, 0.6)
    prog = vg.program
    back = [n for f in prog.funcs.values() for n in wavefront_nests(f) if n.pops]
    assert len(back) == 1 and back[0].keep_order and back[0].sign == -1
    src = vg.source()
    assert "index checks hoisted" in src and "rt_wave_rank" in src and "skewed rows" not in src
    assert "d_R keeps two rows" in src
    vi, gi = dp.value_and_grad(interp.two_tables)(D, 0.6)
    assert abs(v - vi) <= 1e-12 * abs(vi)
    np.testing.assert_allclose(g, gi, rtol=1e-11, atol=1e-14)


def test_reverse_sweep_is_recognised_as_a_descending_nest(mods):
    cpu, _ = mods
    vg = dp.value_and_grad(cpu.soft_dtw)
    vg(rng.random((4, 3)), 1.0)
    prog = vg.program
    nests = [n for f in prog.funcs.values() for n in wavefront_nests(f)]
    assert sorted(n.sign for n in nests if n.pushes or n.pops) == [-1, 1]
    assert all(n.pops and not n.parallel for n in nests if n.sign == -1 and (n.pushes or n.pops))


@pytest.mark.parametrize("name,kernel", [("soft_dtw", True), ("two_tables", True),
                                         ("backward", True),
                                         ("step_pattern", True), ("sq_dtw", False),
                                         ("dtw", False), ("ahead", False),
                                         ("too_far", False), ("running", False)])
def test_kernels_are_generated_where_they_pay(mods, name, kernel):
    cpu, _ = mods
    f = getattr(cpu, name)
    src = f.source()
    assert ("# wavefront" in src) == kernel
    assert ("@jit_kernel" in src) == kernel


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 9), (70, 3), (130, 129)])
@pytest.mark.parametrize("name", ["soft_dtw", "two_tables", "step_pattern", "ahead",
                                  "running", "backward"])
def test_values_and_gradients_match_the_interpreter(mods, name, shape):
    cpu, interp = mods
    D = rng.random(shape) * 3.0
    args = (D, 0.7) if name in ("soft_dtw", "two_tables", "step_pattern", "backward") else (D,)
    want = getattr(interp, name)(*args)
    got = getattr(cpu, name)(*args)
    # (the step pattern cannot reach the corner of a table much wider than tall)
    reachable = name != "step_pattern" or max(shape) <= 2 * min(shape)
    assert np.isfinite(want) == reachable
    assert got == want or abs(got - want) <= 1e-12 * max(1.0, abs(want))
    if shape[0] * shape[1] > 2000:
        return                      # the interpreter's reverse sweep is slow; values suffice
    gw = dp.grad(getattr(interp, name))(*args)
    gc = dp.grad(getattr(cpu, name))(*args)
    assert np.allclose(gc, gw, rtol=1e-11, atol=1e-14)


def test_tapes_are_read_back_in_order_across_strips(mods, monkeypatch):
    """More rows than a strip, a ragged last strip, long and short diagonals: the
    gradient with the schedule equals the one without (row order everywhere)."""
    cpu, _ = mods
    D = rng.random((cpu_wavefront.STRIP * 2 + 5, 37)) * 2.0
    v1, g1 = dp.value_and_grad(cpu.soft_dtw)(D, 0.3)
    monkeypatch.setenv("DPLANG_WAVEFRONT", "0")
    off = dp.compile(SRC, filename="wave_off.dp", backend="cpu")
    assert "# wavefront" not in off.soft_dtw.source()
    v0, g0 = dp.value_and_grad(off.soft_dtw)(D, 0.3)
    assert abs(v1 - v0) <= 1e-12 * abs(v0)
    assert np.allclose(g1, g0, rtol=1e-11, atol=1e-15)
    # the gradient of soft-DTW is a distribution over alignments: rows of the expected
    # alignment matrix each hold at least one unit of mass
    assert (g1.sum(axis=1) >= 1.0 - 1e-9).all()


def _visit_order(r0, r1, c0, c1, strip):
    """The cells in the order the schedule computes them (a test-side enumeration)."""
    out = []
    for s_lo in range(r0, r1, strip):
        s_hi = min(s_lo + strip, r1)
        for d in range(s_lo + c0, s_hi + c1 - 1):
            out += [(i, d - i) for i in range(max(s_lo, d - c1 + 1), min(s_hi, d - c0 + 1))]
    return out


@pytest.mark.parametrize("dims", [(1, 2, 1, 2), (1, 130, 1, 130), (0, 200, 3, 7),
                                  (2, 9, 1, 300), (1, 65, 1, 64), (5, 6, 0, 1)])
def test_wavefront_slots_are_the_order_of_the_kernels(dims):
    from dplang.backends.cpu.runtime import rt_wave_rank
    order = _visit_order(*dims, cpu_wavefront.STRIP)
    assert len(order) == (dims[1] - dims[0]) * (dims[3] - dims[2])
    got = [rt_wave_rank(i, j, *dims, cpu_wavefront.STRIP) for i, j in order]
    assert got == list(range(len(order)))


def test_weights_stay_in_wavefront_order_on_their_tapes(mods, monkeypatch):
    """soft-DTW's three weights: the kernel writes them into the tapes (no strip buffer,
    no copy into row order).  A row-order reverse sweep (skewed blocks off, skew.py)
    reads them at their cells' slot, computed once a cell, and prefetches each tape's
    entry PREFETCH slots back."""
    cpu, _ = mods
    src = dp.value_and_grad(cpu.soft_dtw).source()
    for t in ("tape", "tape_1", "tape_2"):
        assert f"{t}[{t}_n + done:]" in src
    assert "rank = (" not in src and "np.empty((64 + " not in src
    monkeypatch.setattr(skew, "ROWS", 0)
    rows = dp.compile(SRC + "\n# row order\n", filename="wave_rows.dp", backend="cpu")
    src = dp.value_and_grad(rows.soft_dtw).source()
    assert src.count("slot = rt_wave_rank(i_1, j_1, ") == 1
    for t in ("tape", "tape_1", "tape_2"):
        assert f"{t}[{t}_n + done:]" in src
        assert f"rt_at1({t}, {t}_n + slot)" in src
        assert f"rt_prefetch({t}, {t}_n + slot - {codegen.PREFETCH})" in src


def test_inf_borders_and_tiny_gamma_stay_finite(mods):
    cpu, interp = mods
    D = rng.random((40, 33)) * 100.0
    for gamma in (1e-8, 1e-3, 10.0):
        v, g = dp.value_and_grad(cpu.soft_dtw)(D, gamma)
        vi = interp.soft_dtw(D, gamma)
        assert np.isfinite(v) and np.isfinite(g).all()
        assert abs(v - vi) <= 1e-12 * abs(vi)
    assert abs(cpu.soft_dtw(D, 1e-8) - cpu.dtw(D)) <= 1e-6


@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan")])
def test_nonpositive_gamma_is_a_located_error_in_value_and_gradient(mods, gamma):
    cpu, _ = mods
    D = rng.random((6, 5))
    for f in (cpu.soft_dtw, dp.value_and_grad(cpu.soft_dtw)):
        with pytest.raises(dp.DPError) as e:
            f(D, gamma)
        assert "gamma must be positive" in str(e.value)
        assert "align.dp:25" in str(e.value)



def test_generated_source_does_not_depend_on_addresses():
    """The cache key is the generated source: it must not depend on where IR objects
    live (the tapes' order came from a set once, and another process recompiled).
    Compiled several times with different heaps, the source is the same."""
    srcs = set()
    keep = []
    for k in range(6):
        keep.append([object() for _ in range(37 * k + 1)])     # shift the addresses
        m = dp.compile("from std.align import soft_dtw\n", filename=f"det{k}.dp",
                       backend="cpu")
        vg = dp.value_and_grad(m.soft_dtw)
        vg(np.ones((3, 3)), 1.0)
        srcs.add(vg.source().split("\n", 1)[1])
    assert len(srcs) == 1


# ----------------------------------------------------------- row pitch (rt_wave_pad)
def test_l1_sets_and_pitch():
    """A 4 KB row pitch starts every row in one L1 set; rt_pitch moves such rows one
    cache line and one entry apart (64 + 8 bytes past a multiple of 4 KB for float64), and
    leaves pitches that already spread over the sets alone."""
    from dplang.backends.cpu import runtime as rt
    assert rt.rt_l1_sets(64, 4096) == 1
    assert rt.rt_l1_sets(64, 8192) == 1
    assert rt.rt_l1_sets(64, 4104) == 8          # 513 float64: a set every 8 rows
    assert rt.rt_l1_sets(64, 4000) >= 32         # 500 float64
    assert rt.rt_l1_sets(3, 4096) == 1 and rt.rt_l1_sets(64, 64) == 64
    for m, w in ((512, 8), (513, 8), (1024, 8), (1025, 8), (1024, 4), (4096, 1)):
        p = rt.rt_pitch(m, w)
        assert p >= m * w and p % 4096 == 64 + w and p % w == 0
        assert rt.rt_l1_sets(64, p) >= 32
    for m in (500, 1000, 7, 100):
        assert rt.rt_pitch(m, 8) == m * 8


def test_wave_pad_copies_only_tables_with_a_bad_pitch():
    from dplang.backends.cpu import runtime as rt
    x = rng.random((40, 512))
    y = rt.rt_wave_pad(x, x.size)
    assert y.ctypes.data != x.ctypes.data and y.strides[0] % 4096 == 72
    assert np.array_equal(y[:, :512], x)
    y[3, 5] = -1.0
    rt.rt_wave_unpad(x, y)
    assert x[3, 5] == -1.0 and np.array_equal(y[:, :512], x)
    for z, cells in ((rng.random((40, 500)), 40 * 500),      # a good pitch
                     (rng.random((40, 512)), 100),            # a nest much smaller
                     (rng.random((8, 512)), 8 * 512)):        # few rows
        w = rt.rt_wave_pad(z, cells)
        assert w.ctypes.data == z.ctypes.data
        before = z.copy()
        rt.rt_wave_unpad(z, w)
        assert np.array_equal(z, before)


def test_strip_buffers_hold_the_rows_of_a_strip():
    from dplang.backends.cpu import runtime as rt
    x = rng.random((40, 512))
    b = rt.rt_strip_buf(x, x.size, 11)
    assert b.shape[0] == 11 and b.strides[0] % 4096 == 72
    rt.rt_strip_in(b, x, 7, 11)
    assert np.array_equal(b[:, :512], x[7:18])
    b[2:5, :512] = -1.0                 # rows 9 .. 11 of x, written
    before = x.copy()
    rt.rt_strip_out(x, b, 9, 3, 7)
    assert (x[9:12] == -1.0).all() and np.array_equal(x[:9], before[:9])
    assert np.array_equal(x[12:], before[12:])
    for z, cells in ((rng.random((40, 500)), 40 * 500),      # a good pitch
                     (rng.random((40, 512)), 100),            # a nest much smaller
                     (rng.random((40, 512)), 0),              # an empty nest
                     (rng.random((8, 512)), 8 * 512)):        # few rows
        assert rt.rt_strip_buf(z, cells, 65).ctypes.data == z.ctypes.data


def test_tables_with_a_4k_pitch_give_the_same_bits(mods, monkeypatch):
    """512 columns: D's rows are 4 KB apart and R's 4 KB + 8 bytes, so the nest works on
    strip buffers with wider rows (or, where strips do not apply, whole copies); values
    and gradients are those of the nest on the tables themselves, to the bit, and the
    interpreter's to 1e-12."""
    cpu, interp = mods
    src = cpu.soft_dtw.source()
    assert "D_s = rt_strip_buf(D, " in src and "rt_strip_out(R" in src
    assert "rt_wave_pad" not in src
    monkeypatch.setattr(cpu_wavefront, "STRIP_BUFFERS", False)
    whole = dp.compile(SRC + "\n# whole copies\n", filename="wave_whole.dp", backend="cpu")
    wsrc = whole.soft_dtw.source()
    assert "D_w = rt_wave_pad(D, " in wsrc and "rt_wave_unpad(" in wsrc
    monkeypatch.setattr(cpu_wavefront, "PAD", False)
    off = dp.compile(SRC + "\n# no padded copies\n", filename="wave_nopad.dp", backend="cpu")
    assert "rt_wave_pad" not in off.soft_dtw.source()
    assert "rt_strip_buf" not in off.soft_dtw.source()
    for shape in ((40, 512), (70, 1024), (20, 513), (130, 512), (129, 1025)):
        D = rng.random(shape) * 2.0
        for name in ("soft_dtw", "two_tables", "backward"):
            v1, g1 = dp.value_and_grad(getattr(cpu, name))(D, 0.5)
            v2, g2 = dp.value_and_grad(getattr(whole, name))(D, 0.5)
            v0, g0 = dp.value_and_grad(getattr(off, name))(D, 0.5)
            assert v1 == v0 and np.array_equal(g1, g0)
            assert v2 == v0 and np.array_equal(g2, g0)
        want = interp.soft_dtw(D[:20, :], 0.5)
        assert abs(cpu.soft_dtw(D[:20, :], 0.5) - want) <= 1e-12 * abs(want)


@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (64, 64), (65, 130), (200, 37),
                                   (70, 512)])
def test_a_dp_that_runs_backwards_is_the_forward_dp_of_the_flipped_costs(mods, shape):
    """``backward`` (mirrored diagonals: from the last strip of rows, each diagonal from
    the highest) on D is ``soft_dtw`` on D flipped in both axes, value and gradient; the
    forward sweep of its gradient gets the mirrored kernel too, and its reverse sweep
    (ascending) reads the weights at their row-order slots."""
    cpu, _ = mods
    assert "mirrored" in cpu.backward.source()
    vsrc = dp.value_and_grad(cpu.backward).source()
    assert "mirrored" in vsrc and "@jit_kernel" in vsrc
    D = rng.random(shape) * 2.0
    F = np.ascontiguousarray(D[::-1, ::-1])
    for gamma in (1.0, 0.05):
        v, g = dp.value_and_grad(cpu.backward)(D, gamma)
        vf, gf = dp.value_and_grad(cpu.soft_dtw)(F, gamma)
        assert v == pytest.approx(vf, rel=1e-13)
        np.testing.assert_allclose(g, gf[::-1, ::-1], rtol=1e-11, atol=1e-15)
        assert cpu.backward(D, gamma) == v


def test_kernels_run_whole_vectors_with_the_same_bits(mods, monkeypatch):
    """Diagonals are computed in whole vectors of LANES cells (the lanes past the
    diagonal are never read; tapes written by the kernel have LANES entries of slack):
    values and gradients are those of kernels that stop at the last cell, to the bit."""
    cpu, _ = mods
    assert cpu_wavefront.LANES == 8
    src = dp.value_and_grad(cpu.soft_dtw).source()
    assert "lanes = (cells + 7) & -8" in src and ", lanes, " in src
    assert "tape = np.empty(max(" in src and ", 1) + 8, np.float64)" in src
    monkeypatch.setattr(cpu_wavefront, "LANES", 0)
    off = dp.compile(SRC + "\n# exact cell counts\n", filename="wave_cells.dp", backend="cpu")
    assert "lanes = (" not in dp.value_and_grad(off.soft_dtw).source()
    for shape in ((1, 1), (1, 9), (9, 2), (7, 7), (13, 70), (65, 66), (130, 41)):
        D = rng.random(shape) * 2.0
        for name in ("soft_dtw", "two_tables", "backward"):
            for gamma in (0.5, 0.01):
                v1, g1 = dp.value_and_grad(getattr(cpu, name))(D, gamma)
                v0, g0 = dp.value_and_grad(getattr(off, name))(D, gamma)
                assert v1 == v0 and np.array_equal(g1, g0)



IJ_SRC = '''
# a kernel that computes with the cell's indices (lanes past the diagonal get indices
# past it too: harmless, nothing reads them)
def by_index(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = exp(-D[i - 1, j - 1] ** (j - m - 1)) + 0.5 * max(R[i - 1, j], R[i, j - 1]) / i
    return R[n, m]

# the same from the far corner (mirrored diagonals: the kernel's i and j count down)
def by_index_back(D: f64[n, m]) -> f64:
    R = zeros((n + 1, m + 1))
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            R[i, j] = exp(-D[i, j] ** (-j - 1)) + 0.5 * max(R[i + 1, j], R[i, j + 1]) / (n - i)
    return R[0, 0]
'''


def test_whole_vectors_in_a_kernel_that_uses_the_indices(monkeypatch):
    on = dp.compile(IJ_SRC, filename="wave_ij.dp", backend="cpu")
    interp = dp.compile(IJ_SRC, filename="wave_ij.dp", backend="interp")
    assert "lanes = (cells + 7) & -8" in on.by_index.source()
    assert "i = lo + k" in on.by_index.source().split("@jit\n")[0]      # (in the kernel)
    monkeypatch.setattr(cpu_wavefront, "LANES", 0)
    off = dp.compile(IJ_SRC + "# exact\n", filename="wave_ij_off.dp", backend="cpu")
    assert "i = -(lo + k)" in on.by_index_back.source().split("@jit\n")[0]
    for shape in ((1, 1), (5, 3), (9, 11), (70, 20)):
        D = rng.random(shape) + 0.5
        for name in ("by_index", "by_index_back"):
            f_on, f_off, f_in = (getattr(m, name) for m in (on, off, interp))
            assert f_on(D) == f_off(D)
            assert f_on(D) == pytest.approx(f_in(D), rel=1e-13)
            np.testing.assert_array_equal(dp.grad(f_on)(D), dp.grad(f_off)(D))
        np.testing.assert_allclose(on.by_index_back(D), on.by_index(D[::-1, ::-1].copy()),
                                   rtol=1e-13)


PAIRS = '''
from std.align import soft_dtw

# soft max of two scalars per cell (Gotoh's gap tables have such cells)
@smooth(entropy, gamma=g)
def pairs(D: f64[n, m], g: f64) -> f64:
    R = full((n + 1, m + 1), -inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = -D[i - 1, j - 1] + max(R[i - 1, j - 1], R[i - 1, j] - 0.5)
    return R[n, m] + R[n, m - 1]
'''


def _pairs_results(mods, cases):
    out = []
    for D, V in cases:
        for b in ("cpu", "interp"):
            for name in ("soft_dtw", "pairs"):
                f = getattr(mods[b], name)
                for g in (1.0, 0.05):
                    v, gr = dp.value_and_grad(f)(D, g)
                    out.append((b, name, D.shape, g, f(D, g), v, gr,
                                dp.hvp(f)(D, g, V) if D.shape[0] < 40 else None))
    return out


def test_one_exp_fewer_gives_the_same_bits(monkeypatch):
    """Soft max/min of two or three scalars skip the exp of their first extreme entry
    (ir/primitives/soft.py, _first_extreme_free; codegen._smaxn_lanes): values,
    gradients and Hessian-vector products are those of one exp per entry, to the bit,
    with ties (integer costs) and infinite entries, on both backends.  (Derivatives are
    built at their first call, so each side's are computed before the switch changes.)"""
    from dplang.ir.primitives import soft
    assert soft.ONE_EXP_FEWER
    cases = []
    for shape, ints in (((9, 7), True), ((70, 20), True), ((33, 40), False)):
        D = rng.integers(0, 3, shape).astype(float) if ints else rng.random(shape) * 3.0
        D[0, 3] = np.inf
        cases.append((D, rng.standard_normal(shape)))
    on = {b: dp.compile(PAIRS, filename="pairs.dp", backend=b) for b in ("cpu", "interp")}
    assert "eb = rt_exp((yb - mf) * rg)" in on["cpu"].soft_dtw.source()
    assert dp.value_and_grad(on["cpu"].soft_dtw).source().count("rt_exp(") == 2
    got = _pairs_results(on, cases)
    monkeypatch.setattr(soft, "ONE_EXP_FEWER", False)
    off = {b: dp.compile(PAIRS + "\n# one exp per entry\n", filename="pairs.dp", backend=b)
           for b in ("cpu", "interp")}
    assert "eb = rt_exp" not in off["cpu"].soft_dtw.source()
    want = _pairs_results(off, cases)
    for a, b in zip(got, want):
        assert a[:4] == b[:4]
        assert a[4] == b[4] == b[5] and a[5] == b[5], a[:4]
        assert np.array_equal(a[6], b[6]), a[:4]
        if b[7] is not None:
            assert np.array_equal(a[7], b[7]) and np.all(np.isfinite(a[7])), a[:4]


def test_wide_tables_get_shorter_strips(mods):
    """Nests whose tapes the reverse sweep reads in wavefront order take strips of 64
    rows, halved while a strip holds more than 65,536 cells (rt_wave_strip), so that a
    strip's tape entries stay in L2 and the TLB; the reverse sweep finds the entries
    with the same height.  Values and gradients against Cuturi & Blondel's recursions
    written in NumPy (tests/test_stdlib.py), across strip heights 8 to 64."""
    from dplang.backends.cpu import runtime as rt
    from test_stdlib import sdtw_backward, sdtw_forward
    assert [rt.rt_wave_strip(c) for c in (0, 500, 1024, 1025, 2048, 4096, 8192, 10**6)] == \
        [64, 64, 64, 32, 32, 16, 8, 8]
    cpu, _ = mods
    vg = dp.value_and_grad(cpu.soft_dtw)
    assert "strip_h = rt_wave_strip(" in vg.source()
    assert "strip_h" not in cpu.soft_dtw.source()       # (values keep 64-row strips)
    # (40, 2048): rows 16 KB apart, so D and R also go through strip buffers of 32 rows
    for shape in ((70, 1100), (20, 2100), (9, 8200), (40, 2048)):
        D = rng.random(shape)
        v, G = vg(D, 0.7)
        R = sdtw_forward(D, 0.7)
        assert abs(v - R[shape]) <= 1e-11 * abs(R[shape])
        np.testing.assert_allclose(G, sdtw_backward(D, R, 0.7), rtol=1e-9, atol=1e-13)
