"""Shared helpers of the benchmarks: best-of-N wall-clock timing and table printing."""
from __future__ import annotations

import platform
import time


def best(fn, *args, repeat=7, number=None, budget=1.0):
    """Best time of one call of ``fn(*args)`` in seconds (after one warm-up call)."""
    fn(*args)
    if number is None:
        t0 = time.perf_counter()
        fn(*args)
        one = max(time.perf_counter() - t0, 1e-7)
        number = max(1, min(1000, int(budget / repeat / one)))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn(*args)
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def machine() -> str:
    import os
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[k])) for r in rows)) for k, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def fmt(t):
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"
