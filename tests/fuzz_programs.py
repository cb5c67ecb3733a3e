"""Random differentiable programs for differential testing of the CPU backend.

``make(seed)`` writes a ``.dp`` module whose function ``f(D, x, y, s) -> f64`` strings
together blocks of the kinds users write and the CPU backend treats specially: DP
tables filled by a 2-D nest (forward or descending, row or column order, a band, hard
or smoothed min/max: wavefront schedules, two-row windows, register carries, hoisted
index checks; also written the textbook way, with branches on the indices for the
borders), backtracking through a weight table, chain recursions over rows
(Viterbi-like), scalar and small-array recurrences (tapes, while loops), elementwise
runs with reductions and products (fusion, BLAS), branches, and calls of helpers
(inlining).  Each block adds a finite scalar term to the result.  The sizes n and m
are drawn with the program: mostly small, sometimes past the 64-row strips and the
8-lane vectors of the wavefront kernels, or 512 and 1024 columns (rows near a multiple
of 4 KB apart: the wavefront's strip buffers copy them).

``tests/test_fuzz.py`` checks a fixed set of seeds: values and gradients on ``cpu``
against the interpreter, the JVP against the gradient (dot-product test) and central
differences.  ``python tests/fuzz_programs.py --seeds 0 500`` runs a longer campaign
with the same checks and prints each failing seed with its program.
"""
from __future__ import annotations

import contextlib
import os
import random
import re

import numpy as np

SMALL = [1, 2, 3, 4, 5, 7, 8, 9, 12]
LARGE = [17, 33, 65, 70]
WIDE = [512, 1024]


class Program:
    def __init__(self, seed: int, source: str, n: int, m: int, smooth_kinks: bool,
                 inf_costs: bool = False):
        self.seed, self.source, self.n, self.m = seed, source, n, m
        # D may hold inf entries (forbidden cells) off one monotone path
        self.inf_costs = inf_costs
        # True when every kink (hard min/max, branch, abs) is away from the sample
        # point with probability one: central differences apply
        self.smooth_kinks = smooth_kinks

    def args(self, seed: int = 0):
        rng = np.random.default_rng(seed + 1000 * self.seed)
        n, m = self.n, self.m
        D = rng.uniform(0.1, 2.0, (n, m))
        x = rng.standard_normal(n)
        y = rng.standard_normal(m)
        s = float(rng.uniform(0.4, 1.2))
        if self.inf_costs:
            keep = np.zeros((n, m), bool)
            i = j = 0
            while True:                 # a monotone path from (0, 0) to (n - 1, m - 1)
                keep[i, j] = True
                if i == n - 1 and j == m - 1:
                    break
                i, j = min(i + 1, n - 1), min(j + 1, m - 1)
            D[(rng.random((n, m)) < 0.2) & ~keep] = np.inf
        return [D, x, y, s]


def _from_zero(lines: list[str]) -> list[str]:
    """The nest in ``lines`` with loops from 0 (``range(n)``, ``range(m)``) and every
    index shifted to match: ``i - 1`` becomes ``i``, ``i`` becomes ``i + 1``.  Its
    reverse sweep then descends to -1 (a first column that is an expression)."""
    def shift(mt):
        c = int(mt.group(3)) * (1 if mt.group(2) == "+" else -1) if mt.group(2) else 0
        c += 1
        return mt.group(1) + ("" if c == 0 else f" + {c}" if c > 0 else f" - {-c}")
    out = []
    for ln in lines:
        ln = ln.replace("range(1, n + 1)", "range(n)").replace("range(1, m + 1)", "range(m)")
        if "for " not in ln and "abs(i - j)" not in ln:     # (a band: the same either way)
            ln = re.sub(r"\b([ij])\b(?: ([+-]) (\d+))?", shift, ln)
        out.append(ln)
    return out


class Gen:
    def __init__(self, seed: int):
        self.r = random.Random(seed)
        # choices added later draw from their own stream, so that the programs of the
        # older choices stay the same for a seed
        self.r2 = random.Random(seed * 7919 + 17)
        self.seed = seed
        self.body: list[str] = []
        self.helpers: list[str] = []
        self.terms: list[str] = []
        self.k = 0
        big = self.r.random() < 0.2
        self.n = self.r.choice(LARGE if big else SMALL)
        self.m = self.r.choice(LARGE if big and self.r.random() < 0.5 else SMALL)
        if big and self.r.random() < 0.25:     # rows near a multiple of 4 KB apart: the
            self.n, self.m = self.r.choice([17, 33]), self.r.choice(WIDE)  # strip buffers

    # ------------------------------------------------------------------ helpers
    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def emit(self, line: str, indent: int = 1):
        self.body.append("    " * indent + line)

    def scalar_fn(self, e: str) -> str:
        """A smooth, bounded-growth function of a scalar or elementwise expression."""
        return self.r.choice([
            f"tanh({e})", f"sin({e})", f"log(1.0 + ({e}) * ({e}))",
            f"sqrt(1.0 + ({e}) * ({e}))", f"({e}) / (1.0 + ({e}) * ({e}))",
            f"exp(-({e}) * ({e}))", f"sigmoid({e})", f"0.5 * ({e})",
        ])

    def cost(self, i: str, j: str) -> str:
        """A cell cost for row i, column j (1-based table indices)."""
        c = self.r.choice([
            f"D[{i} - 1, {j} - 1]",
            f"(x[{i} - 1] - y[{j} - 1]) ** 2",
            f"D[{i} - 1, {j} - 1] * s",
            f"D[{i} - 1, {j} - 1] + 0.01 * float({i} * {j})",
            f"{self.scalar_fn(f'D[{i} - 1, {j} - 1] + x[{i} - 1]')} + 1.0",
        ])
        return c

    # ------------------------------------------------------------------ blocks
    def dp_table(self, out: list[str], descending: bool):
        """Lines of a 2-D DP over T (n + 1) x (m + 1) appended to out; returns the
        expression of its result.  In inf mode: a min over all three neighbours with an
        inf border, and costs that stay inf where D is inf."""
        r = self.r
        kind = "min" if self.inf_mode else r.choice(["min", "max", "sum"])
        border = r.choice(["corner", "edges"]) if kind != "sum" else "edges"
        if self.inf_mode:
            border = "corner"
        nb_all = ["d", "u", "l"]
        if border == "corner":
            subset = ["d", "u", "l"]        # (1, 1) is reached from (0, 0) only diagonally
        else:
            subset = [z for z in nb_all if r.random() < 0.6] or ["d"]
        r.shuffle(subset)
        fill = {"min": "inf", "max": "-inf", "sum": "0.0"}[kind]
        T = self.name("T")
        col_major = r.random() < 0.25
        band = r.random() < 0.2
        if descending:
            I, J = "i + 1", "j + 1"
            nbs = {"d": f"{T}[i + 1, j + 1]", "u": f"{T}[i + 1, j]", "l": f"{T}[i, j + 1]"}
            cost = self.cost("i + 1", "j + 1")
            if self.inf_mode:
                cost = "D[i, j]"        # (D[i, j] * s: its s-derivative is 0 * inf)
            if border == "corner":
                out.append(f"{T} = full((n + 1, m + 1), {fill})")
                out.append(f"{T}[n, m] = 0.0")
            else:
                out.append(f"{T} = zeros((n + 1, m + 1))")
            loops = [("i", "range(n - 1, -1, -1)"), ("j", "range(m - 1, -1, -1)")]
            result = f"{T}[0, 0]"
        else:
            nbs = {"d": f"{T}[i - 1, j - 1]", "u": f"{T}[i - 1, j]", "l": f"{T}[i, j - 1]"}
            cost = self.cost("i", "j")
            if self.inf_mode:
                cost = "D[i - 1, j - 1]"
            if border == "corner":
                out.append(f"{T} = full((n + 1, m + 1), {fill})")
                out.append(f"{T}[0, 0] = 0.0")
            else:
                out.append(f"{T} = zeros((n + 1, m + 1))")
            loops = [("i", "range(1, n + 1)"), ("j", "range(1, m + 1)")]
            result = f"{T}[n, m]"
        if col_major:
            loops.reverse()
        start = len(out)
        terms = [nbs[z] for z in subset]
        if kind == "sum":
            ws = [r.choice(["0.5", "0.25", "0.3", "s * 0.2"]) for _ in terms]
            comb = " + ".join(f"{w} * {t}" for w, t in zip(ws, terms))
            rhs = f"{self.scalar_fn(cost)} + {comb}"
        elif len(terms) == 1:
            rhs = f"{cost} + {terms[0]}"
        else:
            rhs = f"{cost} + {kind}({', '.join(terms)})"
        out.append(f"for {loops[0][0]} in {loops[0][1]}:")
        out.append(f"    for {loops[1][0]} in {loops[1][1]}:")
        if band and border == "corner":
            w = abs(self.n - self.m) + r.choice([0, 1, 2])
            out.append(f"        if abs(i - j) <= {w}:")
            out.append(f"            {T}[i, j] = {rhs}")
        else:
            out.append(f"        {T}[i, j] = {rhs}")
        if not descending and self.r2.random() < 0.3:
            out[start:] = _from_zero(out[start:])
        elif not descending and border == "edges" and self.r2.random() < 0.15:
            # loops from 0 with the indices as they are: at i = 0 or j = 0 the reads wrap
            # around to the last row or column (NumPy's negative indices)
            out[start:] = [ln.replace("range(1, n + 1)", "range(n)")
                           .replace("range(1, m + 1)", "range(m)") for ln in out[start:]]
        if (loops[0][0] == "i" and not descending and "x[i - 1]" in out[-1]
                and self.r2.random() < 0.4):
            # the row's value hoisted out of the inner loop, as programs do (the pass
            # moves it back: passes/interchange.py)
            k = next(k for k in range(start, len(out)) if out[k].startswith("for i"))
            out.insert(k + 1, f"    x{T} = x[i - 1]")
            out[-1] = out[-1].replace("x[i - 1]", f"x{T}")
        if self.r2.random() < 0.15:
            # the table stored transposed (T[j, i]): row-order loops then walk its
            # columns, which passes/interchange.py may turn around
            swap = re.compile(rf"\b{T}\[([^,\]]+), ([^\]]+)\]")
            for k in range(len(out)):
                if out[k].startswith(f"{T} = "):
                    out[k] = out[k].replace("(n + 1, m + 1)", "(m + 1, n + 1)")
                out[k] = swap.sub(rf"{T}[\2, \1]", out[k])
            result = swap.sub(rf"{T}[\2, \1]", result)
        # the whole table matters, not only the corner, now and then
        if r.random() < 0.3 and border == "edges":
            result = f"{result} + 0.01 * sum({T})"
        return result

    def block_dp(self):
        r = self.r
        descending = r.random() < 0.3
        lines: list[str] = []
        res = self.dp_table(lines, descending)
        text = "\n".join(lines)
        hard = "min(" in text or "max(" in text
        smooth = hard and r.random() < 0.5
        h = self.name("dp")
        v = self.name("v")
        if smooth:
            reg = r.choice(["entropy", "entropy", "l2"])
            self.helpers.append(self.helper(h, lines + [f"return {res}"], reg))
            g = r.choice(["s", "0.5 * s + 0.1", "s * s + 0.05"])
            self.emit(f"{v} = {h}(D, x, y, s, {g})")
        elif r.random() < 0.5:
            self.helpers.append(self.helper(h, lines + [f"return {res}"], None))
            self.emit(f"{v} = {h}(D, x, y, s)")
        else:
            for ln in lines:
                self.emit(ln)
            self.emit(f"{v} = {res}")
        self.kinky = self.kinky or (hard and not smooth)
        self.terms.append(v)

    def helper(self, name, lines, reg):
        """Source of helper ``name(D, x, y, s[, gamma]) -> f64`` with body ``lines``
        (its last a return), smoothed with ``reg`` unless that is None."""
        head = ""
        if reg:
            head = f"@smooth({reg}, gamma=gamma)\n"
            sig = f"def {name}(D: f64[n, m], x: f64[n], y: f64[m], s: f64, gamma: f64) -> f64:"
        else:
            sig = f"def {name}(D: f64[n, m], x: f64[n], y: f64[m], s: f64) -> f64:"
        body = "\n".join("    " + ln for ln in lines)
        return f"{head}{sig}\n{body}\n"

    def block_alignment(self):
        """Forward DP that records onehot_argmin weights, then a backtracking sweep."""
        r = self.r
        name = self.name("align")
        reg = r.choice([None, "entropy", "l2"])
        cost = self.cost("i", "j")
        src = []
        if reg:
            src.append(f"@smooth({reg}, gamma=gamma)")
            src.append(f"def {name}(D: f64[n, m], x: f64[n], y: f64[m], s: f64, gamma: f64) -> f64[n, m]:")
        else:
            src.append(f"def {name}(D: f64[n, m], x: f64[n], y: f64[m], s: f64) -> f64[n, m]:")
        src += [
            "    R = full((n + 1, m + 1), inf)",
            "    R[0, 0] = 0.0",
            "    W = zeros((n + 2, m + 2, 3))",
            "    for i in range(1, n + 1):",
            "        for j in range(1, m + 1):",
            "            q = array([R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]])",
            "            W[i, j, :] = onehot_argmin(q)",
            f"            R[i, j] = {cost} + min(q)",
            "    A = zeros((n + 2, m + 2))",
            "    A[n, m] = 1.0",
            "    for i in range(n, 0, -1):",
            "        for j in range(m, 0, -1):",
            "            if i < n or j < m:",
            "                A[i, j] = (A[i + 1, j + 1] * W[i + 1, j + 1, 0] + A[i + 1, j] * W[i + 1, j, 1]",
            "                           + A[i, j + 1] * W[i, j + 1, 2])",
            "    return A[1:n + 1, 1:m + 1]",
        ]
        self.helpers.append("\n".join(src) + "\n")
        a = self.name("a")
        g = ", s * 0.5 + 0.2" if reg else ""
        self.emit(f"{a} = {name}(D, x, y, s{g})")
        v = self.name("v")
        self.emit(f"{v} = sum({a} * {self.r.choice(['D', 'tanh(D) * s', 'D * D'])})")
        if not reg:
            self.kinky = True
        self.terms.append(v)

    def helper_term(self, base, lines, rng=None, regs=(None, "entropy", "l2")):
        """Helper ``lines`` (hard or smoothed with one of ``regs``, drawn from ``rng``,
        else the first stream; named from ``base``), its call on (D, x, y, s) and the
        call's result as a term of f."""
        name = self.name(base)
        reg = (rng or self.r).choice(list(regs))
        self.kinky = self.kinky or reg is None
        self.helpers.append(self.helper(name, lines, reg))
        v = self.name("v")
        g = ", 0.3 + 0.5 * s" if reg else ""
        self.emit(f"{v} = {name}(D, x, y, s{g})")
        self.terms.append(v)

    def block_gotoh(self):
        """Three coupled tables (affine gaps): match, gap in x, gap in y."""
        o = self.r.choice(["1.0", "0.5 * s"])
        e = self.r.choice(["0.1", "0.2"])
        lines = [
            "M = full((n + 1, m + 1), -inf)",
            "X = full((n + 1, m + 1), -inf)",
            "Y = full((n + 1, m + 1), -inf)",
            "M[0, 0] = 0.0",
            "for i in range(1, n + 1):",
            "    for j in range(1, m + 1):",
            f"        M[i, j] = -{self.cost('i', 'j')} + max(M[i - 1, j - 1], X[i - 1, j - 1], Y[i - 1, j - 1])",
            f"        X[i, j] = max(M[i - 1, j] - {o}, X[i - 1, j] - {e})",
            f"        Y[i, j] = max(M[i, j - 1] - {o}, Y[i, j - 1] - {e})",
            "return max(M[n, m], X[n, m], Y[n, m])",
        ]
        self.helper_term("gotoh", lines)

    def block_knapsack(self):
        """Integer weights (t % 3) + 1 make index offsets that depend on the row."""
        lines = [
            "V = zeros((n + 1, m + 1))",
            "for t in range(1, n + 1):",
            "    for c in range(m + 1):",
            "        w = (t % 3) + 1",
            "        if c >= w:",
            "            V[t, c] = max(V[t - 1, c], V[t - 1, c - w] + D[t - 1, c - w] * s)",
            "        else:",
            "            V[t, c] = V[t - 1, c]",
            "return V[n, m] + 0.1 * sum(V[n, :])",
        ]
        self.helper_term("knap", lines)

    def block_knight(self):
        """Dependences two rows up: cells of a diagonal d = i + j need diagonal d - 3."""
        kind = self.r.choice(["min", "max"])
        lines = [
            "T = zeros((n + 2, m + 1))",
            "for i in range(2, n + 2):",
            "    for j in range(1, m + 1):",
            f"        T[i, j] = {self.cost('i - 1', 'j')} + {kind}(T[i - 2, j - 1], T[i - 1, j - 1], T[i, j - 1])",
            "return T[n + 1, m] + 0.01 * sum(T)",
        ]
        self.helper_term("knight", lines)

    def block_irregular(self):
        """Nests whose inner range depends on the row, strided rows, and a column picked
        by the data: no rectangular schedule, range tests that depend on i."""
        r = self.r
        kind = r.choice(["min", "max"])
        inner = r.choice(["range(1 + i % 2, m + 1)", "range(1, min(i + 2, m) + 1)",
                          "range(m, i % 3, -1)"])
        outer = r.choice(["range(1, n + 1)", "range(1, n + 1, 2)"])
        up = "T[i - 1, j]" if "2)" not in outer else "T[i - 1, j - 1]"
        lines = [
            "T = zeros((n + 1, m + 1))",
            f"for i in {outer}:",
            f"    for j in {inner}:",
            f"        T[i, j] = {self.cost('i', 'j')} + {kind}({up}, T[i, j - 1])",
            "    k = m if x[i - 1] > 0.0 else 1",
            "    T[i, 0] = 0.5 * T[i, k]",
            "return sum(T) * 0.1 + T[n, m]",
        ]
        self.helper_term("irr", lines)

    def block_chain(self):
        """v_t = D[t, :] + op over the previous row (Viterbi-like)."""
        r = self.r
        v = self.name("c")
        M = self.name("M")
        reg = r.choice([None, "smax"])
        self.emit(f"{M} = tanh(outer(y, y)) * s")
        self.emit(f"{v} = copy(D[0, :])")
        self.emit("for t in range(1, n):")
        if reg:
            op = f"logsumexp({M} + {v}, axis=1)"
        else:
            op = r.choice([f"max({M} + {v}, axis=1)", f"min({M} + {v}, axis=1)"])
            self.kinky = True
        self.emit(f"{v} = D[t, :] + {op}", 2)
        out = self.name("v")
        self.emit(f"{out} = {r.choice([f'max({v})', f'sum({v} * {v}) * 0.01', f'logsumexp({v})'])}")
        if f"max({v})" in self.body[-1]:
            self.kinky = True
        self.terms.append(out)

    def block_recurrence(self):
        r = self.r
        K = r.choice([3, 7, 20, 50])
        c = self.name("r")
        kind = r.choice(["for", "while", "cells", "reverse"])
        if kind == "for":
            self.emit(f"{c} = s")
            self.emit(f"for k in range({K}):")
            self.emit(f"{c} = 0.6 * {self.scalar_fn(c)} + 0.3 * x[k % n] * {c} + 0.1", 2)
        elif kind == "reverse":
            self.emit(f"{c} = 0.0")
            self.emit("for k in range(n - 1, -1, -1):")
            self.emit(f"{c} = {c} * 0.5 + {self.scalar_fn('x[k] * s')}", 2)
        elif kind == "while":
            k = self.name("k")
            self.emit(f"{c} = s")
            self.emit(f"{k} = 0")
            self.emit(f"while {k} < {K}:")
            self.emit(f"{c} = 0.5 * {self.scalar_fn(c + ' + x[' + k + ' % n]')} + 0.2 * {c}", 2)
            self.emit(f"{k} += 1", 2)
        else:
            a = self.name("cells")
            self.emit(f"{a} = zeros(3)")
            self.emit(f"{a}[0] = s")
            self.emit(f"for k in range({K}):")
            self.emit(f"{a}[k % 3] = 0.5 * {a}[(k + 1) % 3] + {self.scalar_fn(f'{a}[k % 3] + x[k % n]')}", 2)
            self.emit(f"{c} = sum({a} * {a})")
        self.terms.append(c)

    def block_array(self):
        r = self.r
        A = self.name("E")
        base = r.choice(["D * s + y", "D - x[0]", "D * D", "tanh(D) + y * y"])
        self.emit(f"{A} = {self.scalar_fn(base)}")
        v = self.name("v")
        form = r.choice(["sumsq", "axis", "matmul", "gram", "transposed", "mean"])
        if form == "sumsq":
            self.emit(f"{v} = sum({A} * {A})")
        elif form == "axis":
            self.emit(f"{v} = sum(sum({A}, axis=1) * x) + sum(sum({A}, axis=0) * y)")
        elif form == "matmul":
            self.emit(f"{v} = sum(({A} @ y) * x)")
        elif form == "gram":
            self.emit(f"{v} = sum(({A} @ {A}.T) ** 2) * 0.01")
        elif form == "transposed":
            self.emit(f"{v} = sum(tanh({A}.T @ x + y))")
        else:
            self.emit(f"{v} = mean({A}) + max(sum({A}, axis=0))")
            self.kinky = True
        self.terms.append(v)

    def block_early_exit(self):
        """A loop left by break, or a function left by return from inside a loop."""
        c = self.name("e")
        if self.r.random() < 0.5:
            self.emit(f"{c} = s")
            self.emit("for k in range(n):")
            self.emit("if x[k] > 1.2:", 2)
            self.emit("break", 3)
            self.emit("if x[k] < -1.5:", 2)
            self.emit("continue", 3)
            self.emit(f"{c} = {c} * 0.8 + {self.scalar_fn('x[k] * s')}", 2)
        else:
            h = self.name("first")
            self.helpers.append(
                f"def {h}(x: f64[n], s: f64) -> f64:\n"
                "    acc = 0.0\n"
                "    for k in range(n):\n"
                "        acc = acc * 0.5 + x[k] * s\n"
                "        if acc > 1.0:\n"
                "            return acc * s\n"
                "    return acc - s\n")
            self.emit(f"{c} = {h}(x, s)")
            self.kinky = True
        self.terms.append(c)

    def block_rows(self):
        """A table filled a row at a time (V[t, :] = ...), read back by a second sweep."""
        r = self.r
        V = self.name("V")
        op = r.choice(["max", "logsumexp", "min"])
        self.kinky = self.kinky or op != "logsumexp"
        self.emit(f"{V} = zeros((n, m))")
        self.emit(f"{V}[0, :] = D[0, :] * s")
        self.emit("for t in range(1, n):")
        self.emit(f"{V}[t, :] = D[t, :] + {op}(tanh(outer(y, y)) + {V}[t - 1, :], axis=1)", 2)
        u = self.name("u")
        self.emit(f"{u} = {r.choice(['softmax', 'sparsemax'])}({V}[n - 1, :])")
        self.emit("for t in range(n - 1, 0, -1):")
        self.emit(f"{u} = 0.5 * {u} + 0.5 * softmax({V}[t - 1, :] * 0.1)", 2)
        v = self.name("v")
        self.emit(f"{v} = sum({u} * y) + 0.01 * sum({V})")
        if "sparsemax" in self.body[-4]:
            self.kinky = True
        self.terms.append(v)

    def block_soft(self):
        """Soft operators straight on rows of arrays."""
        r = self.r
        v = self.name("v")
        reg = r.choice(['"entropy"', '"l2"'])
        form = r.choice(["smax", "smin", "softmax", "sparsemax", "where", "clip"])
        if form in ("smax", "smin"):
            self.emit(f"{v} = sum({form}(D * s, 0.5 + 0.1 * s, {reg}) * x)")
        elif form == "softmax":
            self.emit(f"{v} = sum(softmax(D * s) * D)")
        elif form == "sparsemax":
            self.emit(f"{v} = sum(sparsemax(D * s) * D)")
            self.kinky = True
        elif form == "where":
            self.emit(f"{v} = sum(where(D > 1.0, D * s, 0.5 * D * D))")
            self.kinky = True
        else:
            self.emit(f"{v} = sum(clip(D * s, 0.3, 1.1) * D) + sum(maximum(x, y[0] * s))")
            self.kinky = True
        self.terms.append(v)

    def block_inplace(self):
        """Augmented assignment into arrays and cells."""
        A = self.name("P")
        v = self.name("v")
        self.emit(f"{A} = copy(D)")
        self.emit(f"{A} += y * s")
        self.emit("for k in range(n):")
        self.emit(f"{A}[k, :] *= tanh(x[k])", 2)
        self.emit(f"{A}[k, 0] += {A}[k, m - 1] * 0.5", 2)
        self.emit(f"{v} = sum({A} * {A}) * 0.1")
        self.terms.append(v)

    def block_inner_grad(self):
        """grad of a helper taken inside the program (the outer derivative then
        differentiates a reverse sweep: second order through a loop and its tape)."""
        h = self.name("hq")
        self.helpers.append(
            f"def {h}(x: f64[n], s: f64) -> f64:\n"
            "    acc = 0.0\n"
            "    for k in range(n):\n"
            f"        acc = acc * 0.5 + {self.scalar_fn('x[k] * s')}\n"
            f"    return acc + sum({self.scalar_fn('x')} * x) * s\n")
        g, v = self.name("gq"), self.name("v")
        self.emit(f"{g} = grad({h})(x, s)")
        self.emit(f"{v} = sum({g} * x) + 0.5 * grad({h}, wrt=1)(x, s)")
        self.terms.append(v)

    def block_steps(self):
        """A DP with step patterns that reach two rows or columns back (DTW's step
        patterns, e.g. symmetric P1): reads at offsets -2 and -3, whose constants are used
        only in index expressions, and (at the first columns) negative indices into D.
        Draws from the second stream only."""
        r = self.r2
        T = self.name("S")
        kind = r.choice(["min", "max"])
        fill = "inf" if kind == "min" else "-inf"
        sgn = "" if kind == "min" else "-"
        moves = {"a": f"{T}[i - 1, j - 2] + {sgn}D[i - 2, j - 3]",
                 "b": f"{T}[i - 2, j - 1] + {sgn}D[i - 3, j - 2]",
                 "c": f"{T}[i - 2, j - 2]", "e": f"{T}[i, j - 2] + 0.5"}
        terms = [f"{T}[i - 1, j - 1]", f"{T}[i - 1, j]", f"{T}[i, j - 1]"]
        terms += [moves[z] for z in r.sample(sorted(moves), r.randint(1, 2))]
        r.shuffle(terms)
        cost = r.choice([f"D[i - 2, j - 2]", f"(x[i - 2] - y[j - 2]) ** 2",
                         f"D[i - 2, j - 2] * s"])
        lines = [f"{T} = full((n + 2, m + 2), {fill})",
                 f"{T}[1, 1] = 0.0",
                 "for i in range(2, n + 2):",
                 "    for j in range(2, m + 2):",
                 f"        {T}[i, j] = {sgn}{cost} + {kind}({', '.join(terms)})",
                 f"return {T}[n + 1, m + 1]"]
        if r.random() < 0.3:            # the same backwards: from (n - 1, m - 1) to (0, 0)
            back = {f"{T}[i - 1, j - 1]": f"{T}[i + 1, j + 1]", f"{T}[i - 1, j]": f"{T}[i + 1, j]",
                    f"{T}[i, j - 1]": f"{T}[i, j + 1]",
                    moves["a"]: f"{T}[i + 1, j + 2] + {sgn}0.5 * D[i, j]",
                    moves["b"]: f"{T}[i + 2, j + 1] + {sgn}0.25 * D[i, j]",
                    moves["c"]: f"{T}[i + 2, j + 2]", moves["e"]: f"{T}[i, j + 2] + 0.5"}
            cost = cost.replace("i - 2", "i").replace("j - 2", "j")
            lines = [f"{T} = full((n + 2, m + 2), {fill})",
                     f"{T}[n, m] = 0.0",
                     "for i in range(n - 1, -1, -1):",
                     "    for j in range(m - 1, -1, -1):",
                     f"        {T}[i, j] = {sgn}{cost} + {kind}({', '.join(back[t] for t in terms)})",
                     f"return {T}[0, 0]"]
        self.helper_term("steps", lines, rng=r, regs=(None, "entropy", "entropy", "l2"))

    def block_borders(self, r):
        """A DP written the textbook way: loops from 0 and branches on the indices for
        the first row and column (passes/peel.py takes the branches out), row or column
        order, forwards or from the last cell backwards."""
        kind = r.choice(["min", "max", "sum"])
        fill = {"min": "inf", "max": "-inf", "sum": "0.0"}[kind]
        back = r.random() < 0.3
        T = self.name("B")
        c = r.choice(["D[i, j]", "(x[i] - y[j]) ** 2", "D[i, j] * s",
                      f"{self.scalar_fn('D[i, j] + x[i]')} + 1.0"])
        if back:
            e, o, first_i, first_j = "+", "n - 1", "i == n - 1", "j == m - 1"
            loops = ["for i in range(n - 1, -1, -1):", "for j in range(m - 1, -1, -1):"]
            result = f"{T}[0, 0]"
        else:
            e, o, first_i, first_j = "-", "0", r.choice(["i == 0", "0 == i"]), "j == 0"
            loops = ["for i in range(n):", "for j in range(m):"]
            result = f"{T}[n - 1, m - 1]"
        up, left, diag = f"{T}[i {e} 1, j]", f"{T}[i, j {e} 1]", f"{T}[i {e} 1, j {e} 1]"
        if r.random() < 0.25:
            loops.reverse()                         # column order
        if kind == "sum":
            ws = [r.choice(["0.5", "0.25", "0.3 * s"]) for _ in range(3)]
            comb = lambda *ts: " + ".join(f"{w} * {t}" for w, t in ts)   # noqa: E731
            body = [f"if {first_i} and {first_j}:",
                    f"    {T}[i, j] = {c}",
                    f"elif {first_i}:",
                    f"    {T}[i, j] = {c} + {comb((ws[1], left))}",
                    f"elif {first_j}:",
                    f"    {T}[i, j] = {c} + {comb((ws[0], up))}",
                    "else:",
                    f"    {T}[i, j] = {c} + {comb((ws[0], up), (ws[1], left), (ws[2], diag))}"]
        elif r.random() < 0.5:
            body = [f"if {first_i} and {first_j}:",
                    f"    {T}[i, j] = {c}",
                    f"elif {first_i}:",
                    f"    {T}[i, j] = {c} + {left}",
                    f"elif {first_j}:",
                    f"    {T}[i, j] = {c} + {up}",
                    "else:",
                    f"    {T}[i, j] = {c} + {kind}({diag}, {up}, {left})"]
        else:                                       # a best-so-far, guarded reads
            gi = f"i > 0" if not back else "i < n - 1"
            gj = f"j >= 1" if not back else "j <= m - 2"
            body = [f"best = {fill}",
                    f"if {gi}:",
                    f"    best = {kind}(best, {up})",
                    f"if {gj}:",
                    f"    best = {kind}(best, {left})",
                    f"if not ({first_i} or {first_j}):",
                    f"    best = {kind}(best, {diag})",
                    f"if {first_i} and {first_j}:",
                    "    best = 0.0",
                    f"{T}[i, j] = {c} + best"]
        lines = [f"{T} = zeros((n, m))", loops[0], "    " + loops[1]]
        lines += ["        " + ln for ln in body]
        if r.random() < 0.3:
            result = f"{result} + 0.01 * sum({T})"
        lines.append(f"return {result}")
        regs = (None,) if kind == "sum" else (None, "entropy", "entropy", "l2")
        self.helper_term("borders", lines, rng=r, regs=regs)

    def block_branch(self):
        v = self.name("b")
        t = self.r.choice(["0.3", "0.8", "1.1"])
        self.emit(f"if s > {t}:")
        self.emit(f"{v} = sum(tanh(x * s))", 2)
        self.emit("else:")
        self.emit(f"{v} = sum(x * x) * s", 2)
        self.terms.append(v)

    def build(self) -> Program:
        self.kinky = False
        self.inf_mode = self.r.random() < 0.15
        blocks = [self.block_dp, self.block_dp, self.block_alignment, self.block_chain,
                  self.block_recurrence, self.block_array, self.block_branch,
                  self.block_gotoh, self.block_knapsack, self.block_knight,
                  self.block_early_exit, self.block_rows, self.block_soft, self.block_inplace,
                  self.block_irregular, self.block_inner_grad]
        if self.inf_mode:
            blocks = [self.block_dp]
        k = self.r.choice([1, 1, 2, 3])
        for _ in range(k):
            self.r.choice(blocks)()
        if not self.inf_mode and self.r2.random() < 0.15:
            self.block_steps()
        r3 = random.Random(self.seed * 104729 + 5)
        if not self.inf_mode and r3.random() < 0.2:
            self.block_borders(r3)
        if not self.terms:
            self.block_array()
        coefs = [self.r.choice(["1.0", "0.5", "0.25", "2.0"]) for _ in self.terms]
        ret = " + ".join(f"{c} * {t}" for c, t in zip(coefs, self.terms))
        src = [f"# fuzz program, seed {self.seed}, n = {self.n}, m = {self.m}"]
        src += self.helpers
        src.append("def f(D: f64[n, m], x: f64[n], y: f64[m], s: f64) -> f64:")
        src += self.body
        src.append(f"    return {ret}")
        return Program(self.seed, "\n".join(src) + "\n", self.n, self.m, not self.kinky,
                       self.inf_mode)


def make(seed: int) -> Program:
    return Gen(seed).build()


# ---------------------------------------------------------------------- checks
def close(a, b, rtol):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rtol * scale))


@contextlib.contextmanager
def _written_order():
    """The reference (the interpreter) runs the program as written: without
    passes/interchange.py, passes/peel.py and the small choices of passes/scalarize.py,
    so that the comparison also checks them."""
    names = ("DPLANG_INTERCHANGE", "DPLANG_PEEL", "DPLANG_SMALL_CHOICES")
    old = {k: os.environ.get(k) for k in names}
    os.environ.update({k: "0" for k in names})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def check(prog: Program, rtol: float = 1e-12, second_order: bool = False) -> list[str]:
    """Problems found with one program (empty when it passes).  ``second_order`` adds
    Hessian-vector products: cpu against the interpreter and against central differences
    of the gradient."""
    import dplang as dp
    problems = []
    mi = dp.compile(prog.source, filename=f"fuzz{prog.seed}.dp", backend="interp")
    mc = dp.compile(prog.source, filename=f"fuzz{prog.seed}.dp", backend="cpu")
    fi, fc = mi.f, mc.f
    args = prog.args()
    with np.errstate(all="ignore"), _written_order():
        vi = fi(*args)
    with np.errstate(all="ignore"):
        vc = fc(*args)
    if not np.isfinite(vi):
        problems.append(f"value not finite: {vi}")
        return problems
    if not close(vc, vi, rtol):
        problems.append(f"value: cpu {vc!r} interp {vi!r}")
    wrt = (0, 1, 2, 3)
    with _written_order():
        gi = dp.grad(fi, wrt=wrt)(*args)
    gc = dp.grad(fc, wrt=wrt)(*args)
    for k, (a, b) in enumerate(zip(gc, gi)):
        if not np.all(np.isfinite(b)):
            problems.append(f"interp gradient {k} not finite")
        elif not close(a, b, rtol * 100):
            problems.append(f"gradient {k}: max diff {np.max(np.abs(np.asarray(a) - b)):.3e}")
    rng = np.random.default_rng(prog.seed)
    tans = [rng.standard_normal(np.shape(a)) for a in args[:3]] + [float(rng.standard_normal())]
    val, tan = dp.jvp(fc, wrt=wrt)(*args, *tans)
    dot = sum(float(np.sum(np.asarray(g) * t)) for g, t in zip(gc, tans))
    if not close(val, vi, rtol):
        problems.append(f"jvp value {val!r} against {vi!r}")
    if not close(tan, dot, 1e-10):
        problems.append(f"dot-product test: jvp {tan!r}, <grad, v> {dot!r}")
    # central differences along the tangent; hard min/max make kinks, which a step of
    # 1e-6 crosses with tiny probability: retry with a smaller step before failing
    fd_ok = False
    for h in (1e-6, 1e-7):
        shifted = [fc(*[a + sign * h * t for a, t in zip(args, tans)]) for sign in (1, -1)]
        fd = (shifted[0] - shifted[1]) / (2 * h)
        if abs(fd - dot) <= 1e-5 * max(1.0, abs(dot)):
            fd_ok = True
            break
    if not fd_ok:
        problems.append(f"finite differences {fd!r} against <grad, v> {dot!r}")
    if second_order:
        with _written_order():
            hi = dp.hvp(fi, wrt=wrt)(*args, *tans)
        hc = dp.hvp(fc, wrt=wrt)(*args, *tans)
        gfun = dp.grad(fc, wrt=wrt)
        h = 1e-6
        gp = gfun(*[a + h * t for a, t in zip(args, tans)])
        gm = gfun(*[a - h * t for a, t in zip(args, tans)])
        for k, (a, b, p, q) in enumerate(zip(hc, hi, gp, gm)):
            fdh = (np.asarray(p) - np.asarray(q)) / (2 * h)
            if not close(a, b, 1e-10):
                problems.append(f"hvp {k}: cpu and interp differ by {np.max(np.abs(np.asarray(a) - b)):.3e}")
            elif prog.smooth_kinks and not close(a, fdh, 1e-5):
                problems.append(f"hvp {k}: differs from differences of the gradient by "
                                f"{np.max(np.abs(np.asarray(a) - fdh)):.3e}")
    return problems


# dplang built-ins the generator uses, imported by name into a @dp.jit module (the
# Python built-ins min, max, sum, abs, float and range are the language's there too)
JIT_NAMES = ("full", "zeros", "inf", "tanh", "sin", "log", "sqrt", "exp", "sigmoid",
             "outer", "copy", "logsumexp", "softmax", "sparsemax", "smax", "smin", "where",
             "clip", "maximum", "array", "onehot_argmin", "mean")


def jit_source(prog: Program) -> str | None:
    """The program as a Python module of ``@dp.jit`` functions (None if it smooths: a
    ``@smooth`` decorator would need Python names for its arguments)."""
    if "@smooth" in prog.source:
        return None
    used = [n for n in JIT_NAMES if re.search(rf"\b{n}\b", prog.source)]
    head = ["from __future__ import annotations", "import dplang as dp"]
    if used:
        head.append(f"from dplang import {', '.join(used)}")
    body = re.sub(r"(?m)^def ", "@dp.jit\ndef ", prog.source)
    return "\n".join(head) + "\n\n" + body


def check_jit(prog: Program, rtol: float = 1e-12) -> list[str]:
    """The program as @dp.jit Python functions ("cpu") against the .dp module on the
    interpreter: value and gradients."""
    import importlib.util
    import os
    import tempfile
    import dplang as dp
    text = jit_source(prog)
    if text is None:
        return []
    d = tempfile.mkdtemp(prefix="dpfuzz")
    path = os.path.join(d, f"fuzz_jit_{prog.seed}.py")
    with open(path, "w") as fh:
        fh.write(text)
    spec = importlib.util.spec_from_file_location(f"fuzz_jit_{prog.seed}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mi = dp.compile(prog.source, filename=f"fuzz{prog.seed}.dp", backend="interp")
    args = prog.args()
    problems = []
    with np.errstate(all="ignore"):
        vi, vj = mi.f(*args), mod.f(*args)
    if not close(vj, vi, rtol):
        problems.append(f"jit value {vj!r} against {vi!r}")
    wrt = (0, 1, 2, 3)
    gi, gj = dp.grad(mi.f, wrt=wrt)(*args), dp.grad(mod.f, wrt=wrt)(*args)
    for k, (a, b) in enumerate(zip(gj, gi)):
        if not close(a, b, rtol * 100):
            problems.append(f"jit gradient {k}: max diff {np.max(np.abs(np.asarray(a) - b)):.3e}")
    return problems


def main(argv=None):
    import argparse
    import sys
    import time
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs=2, default=[0, 50], metavar=("FIRST", "END"))
    ap.add_argument("--show", action="store_true", help="print each program")
    ap.add_argument("--hvp", action="store_true", help="check Hessian-vector products too")
    ap.add_argument("--jit", action="store_true",
                    help="also run each program without smoothing as @dp.jit functions")
    a = ap.parse_args(argv)
    bad = 0
    for seed in range(*a.seeds):
        prog = make(seed)
        t = time.perf_counter()
        try:
            problems = check(prog, second_order=a.hvp)
            if a.jit:
                problems += check_jit(prog)
        except Exception as e:          # noqa: BLE001 (a campaign reports everything)
            problems = [f"{type(e).__name__}: {e}"]
        dt = time.perf_counter() - t
        status = "ok" if not problems else "FAIL"
        print(f"seed {seed}: {status} ({dt:.1f} s, n = {prog.n}, m = {prog.m})", flush=True)
        if problems or a.show:
            print(prog.source)
            for p in problems:
                print("   ", p)
            sys.stdout.flush()
        bad += bool(problems)
    print(f"{bad} failing of {a.seeds[1] - a.seeds[0]}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
