"""dp.vmap (SPEC 3, passes/vmap.py): a function mapped over a leading batch axis, against
a Python loop over the examples, on the interpreter and the CPU backend (where the
examples run in a parallel loop); in_axes, per-example gradients, derivatives through
the mapped function, @dp.jit functions, and located errors."""
import textwrap

import numpy as np
import pytest

import dplang as dp

rng = np.random.default_rng(31)

SRC = textwrap.dedent('''\
    from std.align import soft_dtw

    def layer(x: f64[n], W: f64[m, n], s: f64) -> f64[m]:
        assert s > 0.0, "the scale must be positive"
        return tanh(W @ x) * s

    def loss(x: f64[n], W: f64[m, n]) -> f64:
        return sum(tanh(W @ x) ** 2)

    def stats(x: f64[n]) -> (f64, f64[n], i64):
        return sum(x), x * x, argmax(x)

    def count(k: i64, x: f64) -> f64:
        s = 0.0
        for i in range(k):
            s = s + x
        return s
    ''')


@pytest.fixture(scope="module", params=["interp", "cpu"])
def mod(request):
    return dp.compile(SRC, filename="vmap.dp", backend=request.param)


def test_results_are_the_stacked_results_of_each_example(mod):
    X = rng.standard_normal((7, 3))
    W = rng.standard_normal((4, 3))
    s = rng.uniform(0.5, 2.0, 7)
    out = dp.vmap(mod.layer, in_axes=(0, None, 0))(X, W, s)
    want = np.stack([mod.layer(x, W, si) for x, si in zip(X, s)])
    assert out.shape == (7, 4)
    np.testing.assert_array_equal(out, want)
    # in_axes=0: every argument mapped (W one matrix per example)
    Ws = rng.standard_normal((7, 4, 3))
    out = dp.vmap(mod.layer)(X, Ws, s)
    np.testing.assert_array_equal(out, np.stack([mod.layer(x, w, si)
                                                 for x, w, si in zip(X, Ws, s)]))
    # several results of several dtypes, a batch of one
    for B in (1, 5):
        Y = rng.standard_normal((B, 6))
        tot, sq, am = dp.vmap(mod.stats)(Y)
        np.testing.assert_allclose(tot, Y.sum(axis=1), rtol=1e-14)
        np.testing.assert_array_equal(sq, Y * Y)
        np.testing.assert_array_equal(am, Y.argmax(axis=1))
        assert am.dtype == np.int64 and sq.shape == (B, 6)
    # integer arguments mapped too
    np.testing.assert_array_equal(dp.vmap(mod.count)(np.array([0, 3, 5]), np.array([1.0, 2.0, 0.5])),
                                  [0.0, 6.0, 2.5])


def test_per_example_gradients_and_derivatives_through_the_map(mod):
    """vmap(grad(f)) gives one gradient per example; jvp and vjp of vmap(f) differentiate
    through the mapped loop (checked against finite differences)."""
    X = rng.standard_normal((5, 3))
    W = rng.standard_normal((4, 3))
    pg = dp.vmap(dp.grad(mod.loss, wrt=1), in_axes=(0, None))(X, W)
    assert pg.shape == (5, 4, 3)
    for x, g in zip(X, pg):
        np.testing.assert_allclose(g, dp.grad(mod.loss, wrt=1)(x, W), rtol=1e-13, atol=1e-15)
    s = rng.uniform(0.5, 2.0, 5)
    v = dp.vmap(mod.layer, in_axes=(0, None, 0))
    U = rng.standard_normal(W.shape)
    eps = 1e-6
    fd = (v(X, W + eps * U, s) - v(X, W - eps * U, s)) / (2 * eps)
    _, tan = dp.jvp(v, wrt=1)(X, W, s, U)
    np.testing.assert_allclose(tan, fd, rtol=1e-6, atol=1e-9)
    C = rng.standard_normal((5, 4))
    _, (gX, gW) = dp.vjp(v, wrt=(0, 1))(X, W, s, C)
    assert np.sum(gW * U) == pytest.approx(np.sum(C * fd), rel=1e-6)
    np.testing.assert_allclose(gX[2], dp.vjp(mod.layer, wrt=0)(X[2], W, s[2], C[2])[1],
                               rtol=1e-13)


def test_soft_dtw_over_a_batch_of_cost_matrices(mod):
    Ds = rng.random((6, 9, 7))
    v = dp.vmap(mod.soft_dtw, in_axes=(0, None))(Ds, 0.5)
    np.testing.assert_allclose(v, [mod.soft_dtw(D, 0.5) for D in Ds], rtol=1e-13)
    G = dp.vmap(dp.grad(mod.soft_dtw), in_axes=(0, None))(Ds, 0.5)
    for D, g in zip(Ds, G):
        np.testing.assert_allclose(g, dp.grad(mod.soft_dtw)(D, 0.5), rtol=1e-12, atol=1e-15)


def test_errors_are_located(mod):
    X = rng.standard_normal((6, 3))
    W = rng.standard_normal((4, 3))
    s = np.array([1.0, 2.0, 3.0, -4.0, 5.0, 6.0])
    v = dp.vmap(mod.layer, in_axes=(0, None, 0))
    # an assert that fails for one example (on the CPU inside a parallel loop)
    with pytest.raises(dp.DPAssertionError) as e:
        v(X, W, s)
    assert str(e.value).startswith("vmap.dp:4:5: the scale must be positive")
    # batched arguments of different lengths
    with pytest.raises(dp.DPShapeError) as e:
        v(X, W, s[:3])
    assert "dimension batch is 3 but argument 'x' gives batch = 6" in str(e.value)
    with pytest.raises(dp.DPShapeError) as e:
        v(X[:0], W, s[:0])
    assert "the batch is empty" in str(e.value)
    with pytest.raises(ValueError):
        dp.vmap(mod.layer, in_axes=(0, 1, 0))
    with pytest.raises(ValueError):
        dp.vmap(mod.layer, in_axes=(0, None))
    with pytest.raises(dp.DPTypeError):
        dp.vmap(mod.layer, in_axes=None)


def test_the_cpu_backend_runs_the_examples_in_a_parallel_loop():
    m = dp.compile(SRC, filename="vmap_cpu.dp", backend="cpu")
    src = dp.vmap(m.layer, in_axes=(0, None, 0)).source()
    assert "@jit_parallel" in src and "in numba.prange(1, batch):" in src
    assert "if not done.all():" in src
    # reverse mode's forward sweep pushes each example's values on tapes: in order
    assert "prange" not in dp.vjp(dp.vmap(m.layer, in_axes=(0, None, 0))).source()
    # backend= runs the mapped function elsewhere
    vi = dp.vmap(m.layer, in_axes=(0, None, 0), backend="interp")
    X, W, s = rng.standard_normal((3, 3)), rng.standard_normal((2, 3)), np.ones(3)
    np.testing.assert_allclose(vi(X, W, s), dp.vmap(m.layer, in_axes=(0, None, 0))(X, W, s),
                               rtol=1e-14)          # (tanh: the runtime's and NumPy's)
    with pytest.raises(dp.DPError):
        vi.source()


def test_jitted_functions_specialise_on_one_example(tmp_path):
    path = tmp_path / "jit_vmap_mod.py"
    path.write_text(textwrap.dedent('''\
        import numpy as np
        import dplang as dp

        @dp.jit
        def predict(x, W):
            return np.tanh(W @ x)

        @dp.jit
        def sq(x, W):
            return np.sum(predict(x, W) ** 2)
        '''))
    import importlib.util
    spec = importlib.util.spec_from_file_location("jit_vmap_mod", path)
    jm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jm)
    X, W = rng.standard_normal((4, 3)), rng.standard_normal((2, 3))
    out = dp.vmap(jm.predict, in_axes=(0, None))(X, W)
    np.testing.assert_allclose(out, np.tanh(X @ W.T), rtol=1e-14)
    pg = dp.vmap(dp.grad(jm.sq, wrt=1), in_axes=(0, None))(X, W)
    for x, g in zip(X, pg):
        np.testing.assert_allclose(g, dp.grad(jm.sq, wrt=1)(x, W), rtol=1e-13)
