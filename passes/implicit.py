"""Implicit differentiation (SPEC 2.4): derivatives of a solver from its optimality
condition, never from its body.

A function ``f(theta...) -> x`` decorated ``@root(F)`` declares ``F(x, theta...) = 0`` at
its result; ``@fixed_point(T)`` declares ``x = T(x, theta...)`` (the condition
``G = T(x, theta) - x``), ``@argmin(obj)`` that ``x`` minimises ``obj(x, theta...)``
(the condition ``G = grad_x obj``).  Differentiating ``G(x(theta), theta) = 0``:

    A dx = -B dtheta            A = dG/dx,  B = dG/dtheta            (JVP)
    A^T w = xbar,  thetabar = -B^T w                                 (VJP)

so the JVP of ``f`` solves one linear system with ``A`` and the VJP one with ``A^T``.
Neither matrix is formed (but by ``solver="dense"``): ``A v`` is a JVP of the condition
with respect to ``x``, ``A^T w`` its VJP, ``B dtheta`` its JVP with respect to the
parameters and ``B^T w`` their VJP -- the compiler's own derivative functions of ``F``,
``T`` or ``obj`` (for ``argmin``: ``A`` is the Hessian, symmetric, applied as a
forward-over-reverse product, and ``B^T w`` is the JVP along ``w`` of the gradient with
respect to the parameters).

This module builds those functions as IR: ``jvp_func`` and ``vjp_func`` replace the AD
passes' own for a decorated function (``ad_forward.ForwardAD.jvp_func``,
``ad_reverse.ReverseAD.vjp_func`` call them).  The primal ``x`` comes from a call of the
decorated function itself (its body, any solver, runs as written and is never
differentiated); the linear solve is ordinary IR (``while`` loops, calls of the
condition's derivative functions, reductions), so every backend runs it and every
derivative of it is taken by the same passes: the derivative of an implicit function
is differentiable again (its second derivatives come from differentiating the solve's
iterations, exact to the solver's tolerance).

Solvers (``solver=``): ``cg`` (conjugate gradients: symmetric positive definite ``A``,
the default for ``argmin``), ``gmres`` (restarted GMRES(30) with Givens rotations, the
default otherwise), ``bicgstab``, ``dense`` (``A`` formed column by column, one JVP per
entry of ``x``, then ``solve``).  ``tol`` is the relative residual ``|A v - b| <= tol
|b|`` at which the iterations stop (default 1e-10); ``maxiter`` the most products with
``A`` (default ``10 * x.size``, at least 100).  A solve that stops short of the
tolerance (or a result that is not finite) raises ``DPConvergenceError`` with the
residual reached and the iterations done, located at the decorator.
Decisions: docs/ad.md, "Implicit differentiation".
"""
from __future__ import annotations

from dplang.errors import DPInternalError, DPTypeError
from dplang.ir.builder import Builder
from dplang.ir.core import Func, Region, Value
from dplang.ir.primitives.rules import (E, builder, emitting, full, lift, loop, maximum,
                                        minimum, prim, put, ravel, reshape_like, size, solve,
                                        sqrt, transpose, where)

RESTART = 30            # GMRES's Krylov dimension between restarts
_FULL = slice(None)


# ----------------------------------------------------------------------- conditions
class _Condition:
    """The optimality condition G(x, theta) = 0 of an implicit function and the products
    with its Jacobians, emitted as calls of derivative functions it adds to the
    program (named like the AD passes' own: ``jvp_F_0``, ``vjp_F_1_2``, ...)."""

    def __init__(self, program, func: Func):
        self.program = program
        self.func = func
        imp = func.attrs["implicit"]
        self.kind = imp["kind"]
        key = program.exports.get(imp["fn"], imp["fn"])
        self.fn = program.funcs.get(key)
        if self.fn is None:
            raise DPInternalError(f"implicit differentiation of '{func.name}': condition "
                                  f"function {imp['fn']!r} is not in the program", func.loc)
        self.opts = imp

    # -- derivative functions of the condition's function ------------------------------
    def _jvp(self, f: Func, active: tuple) -> str:
        from dplang.passes.ad_forward import ForwardAD
        key = f"jvp_{f.name}_" + "_".join(map(str, active))
        if key not in self.program.funcs:
            self.program.funcs[key] = None
            self.program.funcs[key] = ForwardAD(self.program).jvp_func(f, active, key)
        return key

    def _rev(self, f: Func, active: tuple, mode: str) -> str:
        from dplang.passes.ad_reverse import ReverseAD
        key = f"{mode}_{f.name}_" + "_".join(map(str, active))
        if key not in self.program.funcs:
            self.program.funcs[key] = None
            self.program.funcs[key] = ReverseAD(self.program).vjp_func(f, active, mode, key)
        return key

    def _grad_obj(self, active: tuple) -> Func:
        return self.program.funcs[self._rev(self.fn, active, "grad")]

    def _call(self, key: str, args) -> list:
        f = self.program.funcs[key]
        b = builder()
        op = b.op("call", [lift(a).v for a in args], list(f.result_types), {"callee": key})
        return [E(r) for r in op.results]

    # -- the products -------------------------------------------------------------------
    def jx(self, x, th, v):
        """A v = dG/dx v."""
        if self.kind == "argmin":
            g = self._grad_obj((0,))
            return self._call(self._jvp(g, (0,)), [x, *th, v])[-1]
        out = self._call(self._jvp(self.fn, (0,)), [x, *th, v])[-1]
        return out - v if self.kind == "fixed_point" else out

    def jtheta(self, x, th, active, dth):
        """B dtheta = dG/dtheta dtheta (tangents ``dth`` of the parameters ``active``)."""
        act = tuple(k + 1 for k in active)
        f = self._grad_obj((0,)) if self.kind == "argmin" else self.fn
        return self._call(self._jvp(f, act), [x, *th, *dth])[-1]

    def jxT(self, x, th, w):
        """A^T w."""
        if self.kind == "argmin":
            return self.jx(x, th, w)            # (the Hessian)
        out = self._call(self._rev(self.fn, (0,), "vjp"), [x, *th, w])[-1]
        return out - w if self.kind == "fixed_point" else out

    def jthetaT(self, x, th, active, w) -> list:
        """B^T w, one cotangent per parameter in ``active``."""
        act = tuple(k + 1 for k in active)
        if self.kind == "argmin":               # d/de grad_theta obj(x + e w, theta)
            g = self._grad_obj(act)
            outs = self._call(self._jvp(g, (0,)), [x, *th, w])
            return outs[len(act):]
        outs = self._call(self._rev(self.fn, act, "vjp"), [x, *th, w])
        return outs[1:]


# ----------------------------------------------------------------------- the functions
def jvp_func(program, func: Func, active: tuple, name: str) -> Func:
    """``name(theta..., dtheta_active...) -> (x, dx)``: the JVP of implicit ``func``."""
    cond = _Condition(program, func)
    params = [Value(p.type, p.hint, p.loc) for p in func.params]
    tparams = [Value(func.params[k].type, "d_" + (func.params[k].hint or f"x{k}"),
                     func.params[k].loc) for k in active]
    body = Region(params + tparams)
    b = Builder(body, func.loc)
    with emitting(b):
        x = _primal(b, func, params)
        rhs = -cond.jtheta(x, params, active, tparams)
        dx = _linsolve(cond, lambda v: cond.jx(x, params, v), rhs, "A")
        b.return_(x.v, _fit(dx, x).v)
    pnames = list(func.param_names) + ["d_" + func.param_names[k] for k in active]
    xt = func.result_types[0]
    return Func(name, body, [xt, xt], func.loc, {}, pnames, True, func.filename)


def vjp_func(program, func: Func, active: tuple, mode: str, name: str) -> Func:
    """The VJP ("vjp": ``(theta..., xbar) -> (x, thetabar...)``), gradient ("grad") or
    value and gradient of implicit ``func`` with respect to the parameters ``active``."""
    cond = _Condition(program, func)
    xt = func.result_types[0]
    params = [Value(p.type, p.hint, p.loc) for p in func.params]
    cts = [Value(xt, "d_out", func.loc)] if mode == "vjp" else []
    body = Region(params + cts)
    b = Builder(body, func.loc)
    with emitting(b):
        x = _primal(b, func, params)
        xbar = E(cts[0]) if cts else lift(1.0, xt.dtype)
        w = _linsolve(cond, lambda v: cond.jxT(x, params, v), xbar, "A^T")
        grads = [_fit(-g, E(params[k])) for g, k in
                 zip(cond.jthetaT(x, params, active, w), active)]
        outs = {"vjp": [x], "grad": [], "value_and_grad": [x]}[mode] + grads
        b.return_(*[o.v for o in outs])
    rtypes = {"vjp": [xt], "grad": [], "value_and_grad": [xt]}[mode] + \
        [func.params[k].type for k in active]
    pnames = list(func.param_names) + (["d_out"] if mode == "vjp" else [])
    return Func(name, body, rtypes, func.loc, {}, pnames, True, func.filename)


def _primal(b: Builder, func: Func, params) -> E:
    op = b.op("call", list(params), list(func.result_types), {"callee": func.name},
              hints=["x"])
    return E(op.results[0])


def _fit(v, like):
    """``v`` with exactly ``like``'s type (dtype; the shape is the same)."""
    v, like = lift(v), lift(like)
    if v.dtype != like.dtype:
        v = v.astype(like.dtype)
    return v


# ----------------------------------------------------------------------- linear solves
def _dot(a, b):
    return (a * b).sum() if a.ndim else a * b


def _norm(a):
    return sqrt(_dot(a, a))


def _linsolve(cond: _Condition, matvec, rhs, what: str):
    """The solution ``v`` of ``matvec(v) = rhs`` (``rhs`` shaped like ``x``) with the
    condition's solver; emits the convergence check."""
    opts = cond.opts
    solver, tol = opts["solver"], float(opts["tol"])
    rhs = lift(rhs)
    if rhs.ndim == 0:                           # one unknown: a division
        a = matvec(lift(1.0, rhs.dtype))
        v = rhs / a
        res = _abs(a * v - rhs)
        _check(cond, res, _abs(rhs), lift(1), what, exact=True)
        return v
    n = size(rhs)
    maxiter = opts.get("maxiter")
    if maxiter is None:
        maxiter = maximum(lift(n) * 10, lift(100))
    else:
        maxiter = lift(int(maxiter))
    if solver == "dense":
        return _dense(cond, matvec, rhs, n, tol, what)
    fn = {"cg": _cg, "bicgstab": _bicgstab, "gmres": _gmres}.get(solver)
    if fn is None:
        raise DPTypeError(f"unknown solver {solver!r}", cond.func.loc)
    return fn(cond, matvec, rhs, n, tol, maxiter, what)


def _abs(a):
    return prim("abs", a)


def _check(cond, res, bnorm, iters, what, exact=False):
    """The convergence check: ``res <= tol * |b|`` (a finite ``res``), else
    DPConvergenceError with what was reached."""
    tol = float(cond.opts["tol"])
    f = cond.func
    fname = getattr(f, "display_name", None) or f.name.rsplit(".", 1)[-1]
    ok = (res <= bnorm * tol) | (res <= 0.0)
    b = builder()
    rel = res / where(bnorm > 0.0, bnorm, 1.0)
    msg = (f"implicit differentiation of '{fname}' (@{cond.kind}): the linear solve with "
           f"{what} ({cond.opts['solver']}, tol={tol:g}) did not converge: relative residual "
           f"{{1}} after {{2}} iteration(s)")
    if exact:
        msg = (f"implicit differentiation of '{fname}' (@{cond.kind}): the condition's "
               f"derivative in x is singular (relative residual {{1}} after {{2}} "
               f"division)")
    b.op("assert", [lift(ok).v, lift(rel).v, lift(iters).v], [],
         {"msg": msg, "kind": "convergence"}, loc=cond.opts.get("_loc") or f.loc)


def _cg(cond, matvec, b, n, tol, maxiter, what):
    """Conjugate gradients from v = 0."""
    bnorm = _norm(b)
    v0 = b * 0.0
    rs0 = _dot(b, b)

    def test(v, r, p, rs, k):
        return (sqrt(rs) > bnorm * tol) & (k < maxiter)

    def step(v, r, p, rs, k):
        Ap = matvec(p)
        alpha = rs / _dot(p, Ap)
        v = v + alpha * p
        r = r - alpha * Ap
        rs1 = _dot(r, r)
        p = r + (rs1 / rs) * p
        return [v, r, p, rs1, k + 1]
    v, r, p, rs, k = loop("while", [v0, b, b, rs0, lift(0)], step, test)
    _check(cond, sqrt(rs), bnorm, k, what)
    return v


def _bicgstab(cond, matvec, b, n, tol, maxiter, what):
    """BiCGSTAB (van der Vorst) from v = 0, with r0 = b as the shadow residual."""
    bnorm = _norm(b)
    zero = b * 0.0
    one = lift(1.0, b.dtype)

    def test(v, r, p, q, rho, alpha, omega, k):
        return (_norm(r) > bnorm * tol) & (k < maxiter)

    def step(v, r, p, q, rho, alpha, omega, k):
        rho1 = _dot(b, r)
        beta = (rho1 / rho) * (alpha / omega)
        p = r + beta * (p - omega * q)
        q = matvec(p)
        alpha = rho1 / _dot(b, q)
        s = r - alpha * q
        t = matvec(s)
        omega = _dot(t, s) / _dot(t, t)
        v = v + alpha * p + omega * s
        r = s - omega * t
        return [v, r, p, q, rho1, alpha, omega, k + 1]
    v, r, *_, k = loop("while", [zero, b, zero, zero, one, one, one, lift(0)], step, test)
    _check(cond, _norm(r), bnorm, k, what)
    return v


def _gmres(cond, matvec, b, n, tol, maxiter, what):
    """Restarted GMRES(RESTART) from v = 0: Arnoldi with modified Gram-Schmidt, the
    Hessenberg matrix reduced by Givens rotations as it grows (the residual's norm is
    then |g[j + 1]|), the true residual recomputed at each restart."""
    b1 = ravel(b)
    bnorm = _norm(b1)
    m = minimum(lift(n), lift(RESTART))
    dt = b.dtype

    def mv(u):
        return ravel(matvec(reshape_like(u, b)))

    def outer_test(v, res, total):
        return (res > bnorm * tol) & (total < maxiter)

    def outer(v, res, total):
        r = b1 - mv(v)
        beta = _norm(r)
        V = put(full(lift(0.0, dt), m + 1, n), r / where(beta > 0.0, beta, 1.0), 0, _FULL)
        H = full(lift(0.0, dt), m + 1, m)
        g = put(full(lift(0.0, dt), m + 1), beta, 0)
        cs = full(lift(0.0, dt), m)
        sn = full(lift(0.0, dt), m)

        def inner_test(V, H, g, cs, sn, j, res, total):
            return (j < m) & (res > bnorm * tol) & (total < maxiter)

        def inner(V, H, g, cs, sn, j, res, total):
            w0 = mv(V[j, _FULL])

            def gs(i, w, H):                    # modified Gram-Schmidt
                vi = V[i, _FULL]
                h = _dot(w, vi)
                return [w - h * vi, put(H, h, i, j)]
            w, H = loop("for", [w0, H], gs, bounds=[lift(0), j + 1, lift(1)])
            hn = _norm(w)
            H = put(H, hn, j + 1, j)
            V = put(V, w / where(hn > 0.0, hn, 1.0), j + 1, _FULL)

            def rot(i, H):                      # the earlier rotations on column j
                a, c = H[i, j], H[i + 1, j]
                H = put(H, cs[i] * a + sn[i] * c, i, j)
                return [put(H, cs[i] * c - sn[i] * a, i + 1, j)]
            (H,) = loop("for", [H], rot, bounds=[lift(0), j, lift(1)])
            a, c = H[j, j], H[j + 1, j]
            d = sqrt(a * a + c * c)
            dd = where(d > 0.0, d, 1.0)
            ci, si = where(d > 0.0, a / dd, 1.0), c / dd
            cs = put(cs, ci, j)
            sn = put(sn, si, j)
            H = put(put(H, d, j, j), 0.0, j + 1, j)
            gj = g[j]
            g = put(put(g, -si * gj, j + 1), ci * gj, j)
            return [V, H, g, cs, sn, j + 1, _abs(-si * gj), total + 1]
        V, H, g, cs, sn, j, _, total = loop(
            "while", [V, H, g, cs, sn, lift(0), res, total], inner, inner_test)
        y = solve(H[:j, :j], g[:j])
        v = v + transpose(V[:j, _FULL]) @ y
        return [v, _norm(b1 - mv(v)), total]
    v, res, total = loop("while", [b1 * 0.0, bnorm, lift(0)], outer, outer_test)
    _check(cond, res, bnorm, total, what)
    return reshape_like(v, b)


def _dense(cond, matvec, b, n, tol, what):
    """``A`` formed row by row of its transpose (one product per unknown), then
    ``solve``."""
    b1 = ravel(b)
    dt = b.dtype

    def col(k, At):
        e = put(full(lift(0.0, dt), n), 1.0, k)
        return [put(At, ravel(matvec(reshape_like(e, b))), k, _FULL)]
    (At,) = loop("for", [full(lift(0.0, dt), n, n)], col, bounds=[lift(0), n, lift(1)])
    A = transpose(At)
    v = solve(A, b1)
    _check(cond, _norm(A @ v - b1), _norm(b1), n, what)
    return reshape_like(v, b)
