"""Compile time on the "cpu" backend: a cold compile (empty cache) of each example and of
a module of five functions, then a warm start of the same module in a new process that
finds everything in the on-disk cache.

Each measurement runs in a fresh subprocess with ``DPLANG_CACHE`` pointing at a
temporary directory; it times ``dp.load`` plus the first call of every function (the
first call is what compiles), and separately the whole process (imports included).
The children run with Python's default bytecode caching (see ``child``).
Target (issue 4): warm start under 0.3 s for the five-function module.

Run:  python benchmarks/compile_time.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _timing import fmt, machine, table  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")

FIVE = '''
def sqdist(x: f64[n, d], y: f64[m, d]) -> f64[n, m]:
    C = zeros((n, m))
    for i in range(n):
        C[i, :] = sum((y - x[i, :]) ** 2, axis=1)
    return C

def dtw(D: f64[n, m]) -> f64:
    R = full((n + 1, m + 1), inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i, j] = D[i - 1, j - 1] + min(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1])
    return R[n, m]

def dtw_series(x: f64[n, d], y: f64[m, d]) -> f64:
    return dtw(sqdist(x, y))

def mlp(W: f64[h, d], b: f64[h], x: f64[d]) -> f64:
    return sum(tanh(W @ x + b) ** 2)

def newton(a: f64) -> f64:
    x = a
    while abs(x * x - a) > 1e-12:
        x = x - (x * x - a) / (2.0 * x)
    return x
'''

CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import dplang as dp
from dplang.ir import types as T
t1 = time.perf_counter()
mod = dp.load(sys.argv[1], backend="cpu")
rng = np.random.default_rng(0)
for name in mod.functions:
    f = getattr(mod, name)
    args = []
    for p in f.func.params:
        t = p.type
        if isinstance(t, T.Array):
            shape = tuple(d if isinstance(d, int) else 3 for d in t.shape)
            args.append(rng.random(shape) if t.dtype == "f64" else np.ones(shape, np.int64))
        else:
            args.append(1.5 if t.dtype == "f64" else 2)
    try:
        f(*args)
    except dp.DPError:
        pass          # a function whose random arguments are invalid still compiled
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load_and_first_calls": t2 - t1}))
'''


def child(path, cache):
    env = dict(os.environ, DPLANG_CACHE=cache)
    # Python's default: modules' bytecode is cached in __pycache__, as in an installed
    # dplang (with PYTHONDONTWRITEBYTECODE set, as on some CI machines, every process
    # compiles dplang's and networkx's sources again: about 0.1 s more)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, path], env=env, capture_output=True,
                       text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"child failed for {path}:\n{r.stderr}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process"] = wall
    return out


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        five = os.path.join(tmp, "five.dp")
        with open(five, "w") as fh:
            fh.write(FIVE)
        files = [five] + sorted(os.path.join(ROOT, "examples", f)
                                for f in os.listdir(os.path.join(ROOT, "examples"))
                                if f.endswith(".dp"))
        for path in files:
            cache = tempfile.mkdtemp(dir=tmp)
            cold = child(path, cache)
            warm = child(path, cache)
            rows.append([os.path.basename(path), fmt(cold["load_and_first_calls"]),
                         fmt(warm["load_and_first_calls"]), fmt(warm["import"]),
                         fmt(warm["process"])])
    print(f"machine: {machine()}")
    table(rows, ["module", "cold: load + first calls", "warm: load + first calls",
                 "warm: import dplang", "warm: whole process"])


if __name__ == "__main__":
    main()
