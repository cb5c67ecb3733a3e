"""Implicit differentiation (SPEC 2.4, passes/implicit.py): derivatives of @root,
@argmin and @fixed_point functions from their optimality conditions, checked against
closed forms (linear systems, ridge regression, a cubic), finite differences, the
dot-product test between JVP and VJP, and Hessian-vector products; every solver on the
interpreter and the CPU backend; convergence failures are located DPConvergenceErrors."""
import textwrap

import numpy as np
import pytest

import dplang as dp

rng = np.random.default_rng(24)
EPS = 1e-6

SRC = textwrap.dedent('''\
    def F(x: f64[n], A: f64[n, n], b: f64[n]) -> f64[n]:
        return A @ x - b

    # x = A^-1 b, by a solver the implicit derivative never looks into
    @root(F, solver=SOLVER)
    def lin(A: f64[n, n], b: f64[n]) -> f64[n]:
        return solve(A, b)

    def lin_loss(A: f64[n, n], b: f64[n], c: f64[n]) -> f64:
        return sum(sin(lin(A, b)) * c)

    def obj(x: f64[d], X: f64[N, d], y: f64[N], lam: f64) -> f64:
        r = X @ x - y
        return 0.5 * sum(r * r) + 0.5 * lam * sum(x * x)

    # ridge regression by gradient descent: the iterations are not differentiated
    @argmin(obj, solver=SOLVER)
    def ridge(X: f64[N, d], y: f64[N], lam: f64) -> f64[d]:
        x = zeros(d)
        for it in range(3000):
            x = x - 0.02 * (X.T @ (X @ x - y) + lam * x)
        return x

    def ridge_loss(X: f64[N, d], y: f64[N], lam: f64) -> f64:
        return sum(sin(ridge(X, y, lam)))

    def T(x: f64[n], W: f64[n, n], u: f64[n]) -> f64[n]:
        return tanh(W @ x + u)

    # a contraction's fixed point, by iteration
    @fixed_point(T, solver=SOLVER)
    def eq(W: f64[n, n], u: f64[n]) -> f64[n]:
        x = zeros_like(u)
        for it in range(200):
            x = tanh(W @ x + u)
        return x

    def eq_loss(W: f64[n, n], u: f64[n]) -> f64:
        z = eq(W, u)
        return sum(z * z * z)

    def G(x: f64, a: f64) -> f64:
        return x * x * x + x - a

    # the real root of x^3 + x = a by bisection: a body with zero derivative
    @root(G)
    def cubic(a: f64) -> f64:
        lo = -abs(a) - 1.0
        hi = abs(a) + 1.0
        for it in range(200):
            mid = 0.5 * (lo + hi)
            if mid * mid * mid + mid > a:
                hi = mid
            else:
                lo = mid
        return 0.5 * (lo + hi)
    ''')

SOLVERS = ["cg", "gmres", "bicgstab", "dense"]


def _mod(solver, backend):
    # (cg needs a symmetric A: T's Jacobian less the identity is not; gmres there)
    src = SRC.replace("@fixed_point(T, solver=SOLVER)",
                      '@fixed_point(T, solver="gmres")' if solver == "cg" else
                      "@fixed_point(T, solver=SOLVER)")
    src = src.replace("solver=SOLVER", f'solver="{solver}"')
    return dp.compile(src, filename=f"implicit_{solver}.dp", backend=backend)


@pytest.fixture(scope="module", params=[(s, b) for s in SOLVERS for b in ("interp", "cpu")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def mod(request):
    return _mod(*request.param)


def _lin_data(n=5):
    A = rng.standard_normal((n, n)) + n * np.eye(n)
    A = A @ A.T                             # (symmetric positive definite: cg applies)
    return A, rng.standard_normal(n), rng.standard_normal(n)


def test_linear_system_gradients_are_the_closed_form(mod):
    """x = A^-1 b: dL/db = A^-T (dL/dx), dL/dA = -(A^-T dL/dx) x^T."""
    A, b, c = _lin_data()
    x = np.linalg.solve(A, b)
    gx = np.cos(x) * c
    w = np.linalg.solve(A.T, gx)
    gA, gb, gc = dp.grad(mod.lin_loss, wrt=(0, 1, 2))(A, b, c)
    np.testing.assert_allclose(gb, w, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(gA, -np.outer(w, x), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(gc, np.sin(x), rtol=1e-12)
    _, dx = dp.jvp(mod.lin, wrt=1)(A, b, c)
    np.testing.assert_allclose(dx, np.linalg.solve(A, c), rtol=1e-8, atol=1e-12)


def test_ridge_regression_derivatives_are_the_closed_form(mod):
    """x = (X^T X + lam I)^-1 X^T y, with H that matrix and w = H^-1 cos(x):
    dL/dlam = -w.x, dL/dy = X w, dL/dX = -(X x - y) w^T - (X w) x^T."""
    X, y, lam = rng.standard_normal((20, 3)), rng.standard_normal(20), 0.7
    H = X.T @ X + lam * np.eye(3)
    x = np.linalg.solve(H, X.T @ y)
    np.testing.assert_allclose(mod.ridge(X, y, lam), x, rtol=1e-9)
    w = np.linalg.solve(H, np.cos(x))
    gX, gy, glam = dp.grad(mod.ridge_loss, wrt=(0, 1, 2))(X, y, lam)
    assert glam == pytest.approx(-w @ x, rel=1e-8)
    np.testing.assert_allclose(gy, X @ w, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(gX, -(np.outer(X @ x - y, w) + np.outer(X @ w, x)),
                               rtol=1e-8, atol=1e-12)
    _, dx = dp.jvp(mod.ridge, wrt=2)(X, y, lam, 1.0)
    np.testing.assert_allclose(dx, -np.linalg.solve(H, x), rtol=1e-8, atol=1e-12)


def test_fixed_point_against_finite_differences_and_the_dot_product_test(mod):
    n = 4
    W = rng.standard_normal((n, n)) * 0.3
    u = rng.standard_normal(n)
    for k, arg in ((0, W), (1, u)):
        g = dp.grad(mod.eq_loss, wrt=k)(W, u)
        U = rng.standard_normal(arg.shape)
        a1, a2 = [W, u], [W, u]
        a1[k], a2[k] = arg + EPS * U, arg - EPS * U
        fd = (mod.eq_loss(*a1) - mod.eq_loss(*a2)) / (2 * EPS)
        assert np.sum(g * U) == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # JVP and VJP of the implicit function itself agree: <v, J t> = <J^T v, t>
    tW, tu = rng.standard_normal((n, n)), rng.standard_normal(n)
    v = rng.standard_normal(n)
    _, dx = dp.jvp(mod.eq, wrt=(0, 1))(W, u, tW, tu)
    _, (cW, cu) = dp.vjp(mod.eq, wrt=(0, 1))(W, u, v)
    assert v @ dx == pytest.approx(np.sum(cW * tW) + cu @ tu, rel=1e-9)


def test_hessian_vector_products_against_finite_differences_of_the_gradient(mod):
    """Second derivatives: the gradient's own derivative goes through the implicit
    function again and through the linear solve's iterations."""
    X, y, lam = rng.standard_normal((12, 3)), rng.standard_normal(12), 0.5
    v = rng.standard_normal(12)
    got = dp.hvp(mod.ridge_loss, wrt=1)(X, y, lam, v)
    g = dp.grad(mod.ridge_loss, wrt=1)
    eps = 1e-5
    fd = (g(X, y + eps * v, lam) - g(X, y - eps * v, lam)) / (2 * eps)
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", ["interp", "cpu"])
def test_a_solver_with_zero_derivative_gets_the_implicit_one(backend):
    """Bisection's output does not depend smoothly on a (differentiating its iterations
    gives 0): the implicit derivative is 1 / (3 x^2 + 1), here a scalar solve."""
    m = _mod("gmres", backend)
    for a in (-2.0, 0.3, 5.0):
        x = m.cubic(a)
        assert x ** 3 + x == pytest.approx(a, abs=1e-12)
        assert dp.grad(m.cubic)(a) == pytest.approx(1.0 / (3 * x * x + 1), rel=1e-12)
        # second derivative: d/da (3x^2 + 1)^-1 = -6x x' / (3x^2 + 1)^2
        h = dp.hvp(m.cubic)(a, 1.0)
        assert h == pytest.approx(-6 * x / (3 * x * x + 1) ** 3, rel=1e-9)


CUBIC = textwrap.dedent('''\
    def F(x: f64[n], a: f64[n]) -> f64[n]:
        return x * x * x + x - a

    @root(F, solver="gmres", maxiter=1)
    def solve_cubic(a: f64[n]) -> f64[n]:
        x = zeros_like(a)
        for it in range(50):
            x = x - (x * x * x + x - a) / (3.0 * x * x + 1.0)
        return x

    def loss(a: f64[n]) -> f64:
        return sum(solve_cubic(a))

    def H(x: f64, a: f64) -> f64:
        return (x - a) * (x - a)

    @root(H)
    def double(a: f64) -> f64:
        return a
    ''')


@pytest.mark.parametrize("backend", ["interp", "cpu"])
def test_a_solve_that_does_not_converge_is_a_located_error(backend):
    """One GMRES iteration cannot solve a diagonal system with three different entries:
    DPConvergenceError at the decorator, with the residual reached; a condition
    whose derivative in x vanishes (a double root) is singular.  Values are unaffected."""
    m = dp.compile(CUBIC, filename="cubic.dp", backend=backend)
    a = np.array([1.0, 2.0, 3.0])
    assert m.loss(a) == pytest.approx(2.8957394665902, rel=1e-12)
    for run in (lambda: dp.grad(m.loss)(a), lambda: dp.jvp(m.solve_cubic)(a, a)):
        with pytest.raises(dp.DPConvergenceError) as e:
            run()
        msg = str(e.value)
        assert msg.startswith("cubic.dp:4:1: implicit differentiation of 'solve_cubic' "
                              "(@root): the linear solve with A")
        assert "(gmres, tol=1e-10) did not converge: relative residual 0." in msg
        assert "after 1 iteration(s)" in msg
    assert m.double(2.0) == 2.0
    with pytest.raises(dp.DPConvergenceError) as e:
        dp.grad(m.double)(2.0)
    assert "singular" in str(e.value) and str(e.value).startswith("cubic.dp:17:1:")


def test_decorators_of_jitted_functions(tmp_path):
    """dp.root / dp.argmin / dp.fixed_point above @dp.jit (SPEC 3), unannotated
    functions specialised at the first call."""
    path = tmp_path / "jit_implicit_mod.py"
    path.write_text(textwrap.dedent('''\
        import numpy as np
        import dplang as dp

        @dp.jit
        def F(x, a):
            return x * x * x + x - a

        @dp.root(F)
        @dp.jit
        def cubic(a):
            x = np.zeros_like(a)
            for it in range(60):
                x = x - (x * x * x + x - a) / (3.0 * x * x + 1.0)
            return x

        @dp.jit
        def loss(a):
            return np.sum(cubic(a) ** 2)

        @dp.jit
        def obj(x, a):
            return np.sum((x - a) ** 2) + 0.1 * np.sum(x ** 4)

        @dp.argmin(obj, solver="dense")
        @dp.jit
        def smallest(a):
            x = np.copy(a)
            for it in range(300):
                x = x - 0.1 * (2.0 * (x - a) + 0.4 * x ** 3)
            return x

        @dp.jit
        def T(x, a):
            return np.cos(a * x)

        @dp.fixed_point(T, solver="bicgstab")
        @dp.jit
        def fp(a):
            x = 0.5
            for it in range(300):
                x = np.cos(a * x)
            return x
        '''))
    import importlib.util
    spec = importlib.util.spec_from_file_location("jit_implicit_mod", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = np.array([1.0, 2.0, 3.0])
    x = mod.cubic(a)
    np.testing.assert_allclose(dp.grad(mod.loss)(a), 2 * x / (3 * x * x + 1), rtol=1e-12)
    xs, dx = dp.jvp(mod.smallest)(a, np.ones(3))
    np.testing.assert_allclose(dx, 2.0 / (2.0 + 1.2 * xs ** 2), rtol=1e-10)
    z = mod.fp(0.8)
    # x = cos(a x): dx/da = -x sin(a x) / (1 + a sin(a x))
    assert dp.grad(mod.fp)(0.8) == pytest.approx(-z * np.sin(0.8 * z) / (1 + 0.8 * np.sin(0.8 * z)),
                                                 rel=1e-10)
    with pytest.raises(TypeError):
        dp.root(mod.F)(lambda a: a)


EDGES = '''
def F(X: f64[n, n], A: f64[n, n]) -> f64[n, n]:
    return X @ X - A

# matrix square root by Newton (Denman-Beavers would do too)
@root(F)
def sqrtm(A: f64[n, n]) -> f64[n, n]:
    Y = A
    Z = eye(n)
    for it in range(40):
        Y1 = 0.5 * (Y + solve(Z, eye(n)))
        Z = 0.5 * (Z + solve(Y, eye(n)))
        Y = Y1
    return Y

def tr_sqrt(A: f64[n, n]) -> f64:
    return trace(sqrtm(A))

def G(x: f32[n], a: f32[n], k: i64) -> f32[n]:
    return x * x * x + f32(k) * x - a

@root(G, solver="bicgstab", tol=1e-5)
def cub32(a: f32[n], k: i64) -> f32[n]:
    x = zeros_like(a)
    for it in range(60):
        x = x - (x * x * x + f32(k) * x - a) / (3.0 * x * x + f32(k))
    return x

def s32(a: f32[n], k: i64) -> f32:
    return sum(cub32(a, k))

def H(x: f64, a: f64) -> f64:
    return x * x * x + x - a

@root(H)
def cubic(a: f64) -> f64:
    x = 0.0
    for it in range(60):
        x = x - (x * x * x + x - a) / (3.0 * x * x + 1.0)
    return x

def chain(a: f64[n]) -> f64:
    s = 0.0
    for i in range(n):
        s = s + cubic(a[i] + s)
    return s
'''


@pytest.mark.parametrize("backend", ["interp", "cpu"])
def test_matrix_solutions_float32_and_calls_inside_loops(backend):
    """A matrix-valued solution (the square root of an SPD matrix: d tr(sqrt A) = 0.5
    A^-1/2), a float32 solution with an integer parameter (bicgstab at tol=1e-5), and an
    implicit function called in a loop of a function differentiated in reverse mode."""
    m = dp.compile(EDGES, filename="edges.dp", backend=backend)
    B = rng.standard_normal((4, 4))
    A = B @ B.T + 4 * np.eye(4)
    w, V = np.linalg.eigh(A)
    np.testing.assert_allclose(dp.grad(m.tr_sqrt)(A), 0.5 * V @ np.diag(w ** -0.5) @ V.T,
                               rtol=1e-10, atol=1e-13)
    a = np.array([1.0, 2.0, 3.0], np.float32)
    g = dp.grad(m.s32)(a, 2)
    x = m.cub32(a, 2)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, 1 / (3 * x * x + 2), rtol=1e-5)
    av = np.array([0.5, 1.0, -0.3])
    fd = [(m.chain(av + EPS * e) - m.chain(av - EPS * e)) / (2 * EPS) for e in np.eye(3)]
    np.testing.assert_allclose(dp.grad(m.chain)(av), fd, rtol=1e-7)
