"""Every function of the shipped programs (examples/, tests/programs/) that maps floats
to a float scalar: reverse mode against finite differences, and the Hessian-vector
product (forward over reverse) against finite differences of the gradient."""
import glob
import os

import numpy as np
import pytest

import dplang as dp
from dplang.ir import types as T

HERE = os.path.dirname(__file__)
FILES = sorted(glob.glob(os.path.join(HERE, "programs", "*.dp")) +
               glob.glob(os.path.join(HERE, "..", "examples", "*.dp")))
EPS = 1e-6


def scalar_functions():
    out = []
    for fn in FILES:
        m = dp.load(fn)
        for name in m.functions:
            func = getattr(m, name).func
            rt = func.result_types
            if len(rt) == 1 and isinstance(rt[0], T.Scalar) and rt[0].dtype == "f64" \
                    and any(p.type.dtype == "f64" for p in func.params):
                out.append((os.path.basename(fn), name))
    return out


CASES = scalar_functions()
_mods = {}


def setup(fname, name, seed):
    path = [f for f in FILES if os.path.basename(f) == fname][0]
    if path not in _mods:
        _mods[path] = dp.load(path)
    f = getattr(_mods[path], name)
    rng = np.random.default_rng(seed)
    args = []
    for p in f.func.params:
        t = p.type
        if isinstance(t, T.Array):
            shape = tuple(d if isinstance(d, int) else 3 for d in t.shape)
            args.append(rng.standard_normal(shape) if t.dtype == "f64"
                        else np.ones(shape, dtype=np.int64))
        else:
            args.append(float(rng.random() + 0.5) if t.dtype == "f64" else
                        (2 if t.dtype == "i64" else True))
    wrt = tuple(k for k, p in enumerate(f.func.params) if p.type.dtype == "f64")
    return f, args, wrt, rng


def direction(rng, a):
    return rng.standard_normal(np.shape(a)) if np.ndim(a) else 1.0


def test_the_sweep_is_not_empty():
    assert len(CASES) >= 12


@pytest.mark.parametrize("fname,name", CASES)
def test_gradient(fname, name):
    f, args, wrt, rng = setup(fname, name, 1)
    g = dp.grad(f, wrt=wrt)(*args)
    for k, gk in zip(wrt, g):
        u = direction(rng, args[k])
        a1, a2 = list(args), list(args)
        a1[k] = args[k] + EPS * u
        a2[k] = args[k] - EPS * u
        want = (f(*a1) - f(*a2)) / (2 * EPS)
        assert np.sum(gk * u) == pytest.approx(want, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("fname,name", CASES)
def test_hvp(fname, name):
    f, args, wrt, rng = setup(fname, name, 2)
    k = wrt[0]
    v = direction(rng, args[k])
    hv = dp.hvp(f, wrt=k)(*args, v)
    g = dp.grad(f, wrt=k)
    a1, a2 = list(args), list(args)
    a1[k] = args[k] + EPS * v
    a2[k] = args[k] - EPS * v
    want = (np.asarray(g(*a1)) - np.asarray(g(*a2))) / (2 * EPS)
    np.testing.assert_allclose(hv, want, rtol=1e-4, atol=1e-6)
