"""Golden dumps of derivative IR, so that it stays readable: source names, one statement
per line, comments pointing at the primal source lines, no dead code.  Regenerate with
``DPLANG_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_ad.py`` after an intended
change, and read the diff."""
import os

import pytest

import dplang as dp

HERE = os.path.dirname(__file__)
GOLDEN = os.path.join(HERE, "golden")

SRC = '''\
def dtw(D: f64[n, m]) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]


def energy(x: f64[n], c: f64) -> f64:
    s = 0.0
    for i in range(n):
        s = s + c * sin(x[i]) * x[i]
    return s


def newton(a: f64) -> f64:
    x = a
    while abs(x * x - a) > 1e-13:
        x = x - (x * x - a) / (2.0 * x)
    return x
'''


def dumps():
    m = dp.compile(SRC, filename="golden.dp")
    return {
        "grad_dtw.txt": dp.grad(m.dtw).ir(),
        "grad_energy.txt": dp.grad(m.energy, wrt=(0, 1)).ir(),
        "jvp_newton.txt": dp.jvp(m.newton).ir(),
    }


@pytest.mark.parametrize("name", ["grad_dtw.txt", "grad_energy.txt", "jvp_newton.txt"])
def test_golden_derivative_ir(name):
    text = dumps()[name]
    path = os.path.join(GOLDEN, name)
    if os.environ.get("DPLANG_UPDATE_GOLDEN"):
        with open(path, "w") as fh:
            fh.write(text)
    with open(path) as fh:
        assert text == fh.read()
