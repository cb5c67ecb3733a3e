"""Run-time helpers of the CPU backend: small ``numba.njit`` functions that generated code
calls where Numba has no NumPy function with the interpreter's exact semantics.

Every helper is a top-level function named ``rt_*``, decorated with ``@jit`` and using
only ``np``, ``math`` and other ``rt_*`` helpers, so that ``dplang compile`` can paste the
ones a module needs into a standalone file (``backends/cpu/codegen.py`` reads this file's
source for that).  They mirror the NumPy reference implementations of the primitives
(``ir/primitives/``) operation for operation, so that float64 results agree with the
interpreter to rounding, and most often bit for bit:

* sums use NumPy's pairwise summation (``rt_psum``) along a contiguous row, and a
  sequential sum along other axes, as NumPy's reductions do;
* ``max``/``min`` propagate NaN; ``argmax``/``argmin`` return the first maximiser (a NaN
  counts as the maximum, as in NumPy);
* the soft operators follow ``ir/primitives/soft.py`` (max-shifted, ``-inf`` entries
  weigh 0, a row whose maximum is infinite spreads its weight over the entries equal to
  it).

Reductions work on a 2-D C-contiguous array: ``rt_rows_*`` reduce each row (the last
axis), ``rt_cols_*`` each column (the first axis); generated code moves the reduced axes
there first.  Failures raise ``ValueError`` (the caller turns them into located errors).
"""
import math

import numba
import numpy as np

jit = numba.njit(cache=True, error_model="numpy")


# ---------------------------------------------------------------- vector width
@numba.extending.intrinsic
def rt_wide(typingctx):
    """``rt_wide()`` as a function's first statement lets LLVM vectorise its loops with
    512-bit registers where the CPU has them (8 float64 lanes instead of 4).  LLVM's own
    choice for AVX-512 Intel CPUs is 256 bits, made against the clock drop of early
    AVX-512 parts; the function attribute ``prefer-vector-width`` overrides it for this
    function alone, so Numba's other code (the user's included) keeps its settings.  On
    CPUs without AVX-512 it changes nothing (docs/backend_cpu.md, "Vector width")."""
    def codegen(context, builder, sig, args):
        # llvmlite checks attribute names against a list of keywords; a string
        # attribute is written as it is
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return numba.types.none(), codegen


# ---------------------------------------------------------------- vector-friendly math
# exp, expm1, tanh and log written as straight-line float arithmetic (Cody-Waite reduction
# x = k ln2 + r, |r| <= ln2/2, a degree-13 Taylor polynomial in Estrin form, 2^k built
# from its bits), so that LLVM vectorises the loops that call them; libm's functions are
# opaque calls, one element at a time.  Accuracy against a long-double reference over
# the whole float64 range: exp within 1 ulp, expm1 2 ulp, tanh 2.5 ulp (glibc's tanh:
# 2.1), log 1 ulp (rt_log: its own reduction, see there); inf, nan, signed zeros,
# overflow and gradual underflow are exact (tests: tests/test_cpu_vmath.py).  Arrays, the
# soft operators' inner loops and wavefront kernels use them; other scalar code keeps
# libm's calls, whose latency is lower (a DP recursion in row order waits on every exp).
# Decisions: docs/backend_cpu.md.
@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def rt_expm1_core(x):
    """(k, exp(r) - 1) for x = k ln2 + r, |r| <= ln2/2; x finite with |x| <= 746."""
    kf = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0
    r = (x - kf * 0.6931471803691238) - kf * 1.9082149292705877e-10
    r2 = r * r
    r4 = r2 * r2
    p = ((0.5 + r * 0.16666666666666666) + r2 * (0.041666666666666664 + r * 0.008333333333333333)
         + r4 * ((0.001388888888888889 + r * 0.0001984126984126984)
                 + r2 * (2.48015873015873e-05 + r * 2.7557319223985893e-06))
         + (r4 * r4) * ((2.755731922398589e-07 + r * 2.505210838544172e-08)
                        + r2 * (2.08767569878681e-09 + r * 1.6059043836821613e-10)))
    return np.int64(kf), r + r2 * p


@numba.njit(cache=True, error_model="numpy")
def rt_pow2(k):
    """2.0 ** k for -1022 <= k <= 1023, from its bits."""
    return np.int64((k + 1023) << 52).view(np.float64)


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def rt_exp_join(k, q):
    """2^k (1 + q), -1076 <= k <= 1024: 2^k in two factors, so that overflow and
    subnormal results round exactly once."""
    k1 = k >> 1
    return ((1.0 + q) * rt_pow2(k1)) * rt_pow2(k - k1)


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def rt_exp(x):
    """exp x = p 2^k, p = 1 + q, built from bits with no operation on a subnormal number:
    results below 2^-1022 (x < -708.4: a soft-min's far entries, -inf borders) rounded
    through a subnormal product, which x86 handles in microcode (7 ns an element instead
    of 0.8).  The bits are those of rt_exp_join(k, q) (tests/test_cpu_vmath.py)."""
    xc = x if x < 710.0 else 710.0              # nan -> 710 (the comparison is false)
    xc = xc if xc > -746.0 else -746.0
    k, q = rt_expm1_core(xc)
    p = 1.0 + q                                 # in [0.7, 1.42]
    # k added to p's exponent field: the exact product when it is normal, and an
    # exponent field <= 0 (as a signed integer: b < 2^52) when it is not
    b = np.float64(p).view(np.int64) + (k << 52)
    # then the bit pattern is the integer nearest p 2^(k + 1074) = a (a normal number
    # below 2^52): adding 2^52 rounds it to even, as the product would
    a = np.int64(b + (1074 << 52)).view(np.float64)
    t = np.float64(a + 4503599627370496.0).view(np.int64) - 0x4330000000000000
    y = np.int64(t if b < 0x0010000000000000 else b).view(np.float64)
    y = np.inf if x > 709.782712893384 else y   # the largest x whose product is finite
    return x if x != x else y


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def rt_expm1_join(k, q):
    """2^k (1 + q) - 1 without cancellation, -60 <= k <= 1023: 2^k - 1 is exact up to
    k = 53 (below an ulp of the result after that), and k = 0 gives q + 0 exactly."""
    k1 = k >> 1
    s1 = rt_pow2(k1)
    s2 = rt_pow2(k - k1)
    return (s1 * q) * s2 + ((s1 * s2) - 1.0)


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def rt_expm1(x):
    xc = 710.0 if x > 710.0 else x
    xc = -60.0 if xc < -60.0 else xc
    xc = 0.0 if x != x else xc
    k, q = rt_expm1_core(xc)
    big = rt_exp_join(k, q) - 1.0     # the -1 is below an ulp
    y = big if k > 53 else rt_expm1_join(k, q)
    return x if (x != x or x == 0.0) else y


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def rt_tanh(x):
    a = abs(x)
    a = 20.0 if a > 20.0 else a       # tanh(20) rounds to 1
    k, q = rt_expm1_core(2.0 * a)
    # expm1(2a) = 2^k (1 + q) - 1 with 0 <= k <= 58: 2^k is one normal factor (what
    # rt_expm1_join splits in two for the whole range), and s - 1 is exact up to k = 53
    # (below an ulp of the result after that).  The same numbers, 13% faster
    s = rt_pow2(k)
    e = s * q + (s - 1.0)
    t = e / (e + 2.0)
    t = -t if x < 0.0 else t
    return x if (x != x or x == 0.0) else t


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def rt_log(x):
    """log x: x = 2^e (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)), log(1 + f) = 2 atanh(s)
    for s = f / (2 + f), written as f - s (f - R) with R = 2 (s^3/3 + s^5/5 + ...) / s
    (|s| <= 0.172, eleven terms), plus e ln2 in two parts.  Subnormals are scaled by
    2^54 first; 0 gives -inf, negatives nan, inf and nan themselves."""
    sub = x < 2.2250738585072014e-308
    xs = x * 18014398509481984.0 if sub else x
    bits = np.float64(xs).view(np.int64)
    e = (bits >> 52) - (1077 if sub else 1023)
    mb = (bits & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000
    big = mb > 0x3FF6A09E667F3BCD                   # 1 + f > sqrt(2): halve it
    mb = mb - 0x0010000000000000 if big else mb
    e = e + 1 if big else e
    f = np.int64(mb).view(np.float64) - 1.0
    s = f / (2.0 + f)
    z = s * s
    r = z * (0.6666666666666666 + z * (0.4 + z * (0.2857142857142857 + z * (
        0.2222222222222222 + z * (0.18181818181818182 + z * (0.15384615384615385 + z * (
            0.13333333333333333 + z * (0.11764705882352941 + z * (
                0.10526315789473684 + z * (0.09523809523809523
                                           + z * 0.08695652173913043))))))))))
    ef = np.float64(e)
    y = ef * 0.6931471803691238 + (f - (s * (f - r) - ef * 1.9082149292705877e-10))
    y = -np.inf if x == 0.0 else y
    y = np.nan if x < 0.0 else y
    return x if (x != x or x == np.inf) else y


@jit
def rt_exp_a(x):
    rt_wide()
    out = np.empty(x.shape, np.float64)
    xf = x.ravel()
    of = out.reshape(-1)
    for k in range(xf.size):
        of[k] = rt_exp(np.float64(xf[k]))
    return out


@jit
def rt_expm1_a(x):
    rt_wide()
    out = np.empty(x.shape, np.float64)
    xf = x.ravel()
    of = out.reshape(-1)
    for k in range(xf.size):
        of[k] = rt_expm1(np.float64(xf[k]))
    return out


@jit
def rt_tanh_a(x):
    rt_wide()
    out = np.empty(x.shape, np.float64)
    xf = x.ravel()
    of = out.reshape(-1)
    for k in range(xf.size):
        of[k] = rt_tanh(np.float64(xf[k]))
    return out


# ---------------------------------------------------------------- scalars
@jit
def rt_max2(a, b):
    """NumPy's max of two scalars: NaN if either is NaN, else the larger (a on ties)."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@jit
def rt_min2(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b


@jit
def rt_sigmoid_s(x):
    ex = math.exp(-abs(x))
    if x >= 0:
        return 1.0 / (1.0 + ex)
    return ex / (1.0 + ex)


@jit
def rt_sigmoid_v(v):
    """The sigmoid of one element of an array (rt_sigmoid_a, fused loops)."""
    ex = rt_exp(-abs(v))
    return (1.0 if v >= 0 else ex) / (1.0 + ex)


@jit
def rt_sigmoid_a(x):
    rt_wide()
    out = np.empty(x.shape, np.float64)
    xf = x.ravel()
    of = out.reshape(-1)
    for k in range(xf.size):
        of[k] = rt_sigmoid_v(xf[k])
    return out


@jit
def rt_softplus_s(x):
    return (x if x > 0.0 else (x if x != x else 0.0)) + math.log1p(math.exp(-abs(x)))


@jit
def rt_softplus_v(v):
    """The softplus of one element of an array (rt_softplus_a, fused loops)."""
    return (v if v > 0.0 else (v if v != v else 0.0)) + math.log1p(rt_exp(-abs(v)))


@jit
def rt_softplus_a(x):
    rt_wide()
    out = np.empty(x.shape, np.float64)
    xf = x.ravel()
    of = out.reshape(-1)
    for k in range(xf.size):
        of[k] = rt_softplus_v(xf[k])
    return out


# ---------------------------------------------------------------- 1-D reductions
@numba.njit(cache=True, error_model="numpy", inline="always")
def rt_pwblock(a, lo, n):
    """NumPy's pairwise sum of a block ``a[lo:lo + n]``, ``n <= 128``: sequential below
    8 entries, else 8 accumulators."""
    rt_wide()
    if n < 8:
        # NumPy: res = 0; res += a[i]...  Starting from a[lo] gives the same sums (a
        # zero becomes +0, as 0 + -0 does) without a typed zero: a[lo] * 0 would be nan
        # for an infinite a[lo]
        res = a[lo]
        if res == 0:
            res = res - res
        for i in range(1, n):
            res += a[lo + i]
        return res
    r0 = a[lo]
    r1 = a[lo + 1]
    r2 = a[lo + 2]
    r3 = a[lo + 3]
    r4 = a[lo + 4]
    r5 = a[lo + 5]
    r6 = a[lo + 6]
    r7 = a[lo + 7]
    i = 8
    top = n - (n % 8)
    while i < top:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@jit
def rt_pw(a, lo, n):
    """NumPy's pairwise sum of ``a[lo:lo + n]``: blocks of at most 128 entries, split in
    halves (multiples of 8) above that.  The recursion runs on an explicit stack (Numba
    cannot cache recursive functions)."""
    rt_wide()
    if n <= 128:
        return rt_pwblock(a, lo, n)
    f_lo = np.empty(128, np.int64)
    f_n = np.empty(128, np.int64)
    f_state = np.zeros(128, np.int64)
    f_left = np.empty(128, a.dtype)
    sp = 0
    f_lo[0] = lo
    f_n[0] = n
    while True:
        if f_n[sp] <= 128:
            ret = rt_pwblock(a, f_lo[sp], f_n[sp])
            while True:
                if sp == 0:
                    return ret
                sp -= 1
                if f_state[sp] == 0:
                    f_left[sp] = ret
                    f_state[sp] = 1
                    h = f_n[sp] // 2
                    h -= h % 8
                    sp += 1
                    f_lo[sp] = f_lo[sp - 1] + h
                    f_n[sp] = f_n[sp - 1] - h
                    f_state[sp] = 0
                    break
                ret = f_left[sp] + ret
        else:
            h = f_n[sp] // 2
            h -= h % 8
            f_state[sp] = 0
            sp += 1
            f_lo[sp] = f_lo[sp - 1]
            f_n[sp] = h
            f_state[sp] = 0


@jit
def rt_psum(a):
    """Sum of a 1-D array as NumPy computes it (pairwise for floats)."""
    if a.size == 0:
        return np.zeros(1, a.dtype)[0]
    if a.size <= 128:                   # the common case, one call cheaper
        return rt_pwblock(a, 0, a.size)
    return rt_pw(a, 0, a.size)


@jit
def rt_prod1(a):
    rt_wide()
    res = np.ones(1, a.dtype)[0]
    for i in range(a.size):
        res *= a[i]
    return res


@jit
def rt_max1(a):
    rt_wide()
    if a.size == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    m = a[0]
    bad = m != m
    for i in range(1, a.size):          # branch-free: a NaN is looked up afterwards
        v = a[i]
        bad |= v != v
        m = v if v > m else m
    if bad:
        for i in range(a.size):
            if a[i] != a[i]:
                return a[i]
    return m


@jit
def rt_min1(a):
    rt_wide()
    if a.size == 0:
        raise ValueError("zero-size array to reduction operation minimum which has no identity")
    m = a[0]
    bad = m != m
    for i in range(1, a.size):          # branch-free: a NaN is looked up afterwards
        v = a[i]
        bad |= v != v
        m = v if v < m else m
    if bad:
        for i in range(a.size):
            if a[i] != a[i]:
                return a[i]
    return m


@jit
def rt_argmax1(a):
    rt_wide()
    if a.size == 0:
        raise ValueError("attempt to get argmax of an empty sequence")
    k = 0
    m = a[0]
    if m != m:
        return 0
    for i in range(1, a.size):
        v = a[i]
        if v != v:
            return i
        if v > m:
            m = v
            k = i
    return k


@jit
def rt_argmin1(a):
    rt_wide()
    if a.size == 0:
        raise ValueError("attempt to get argmin of an empty sequence")
    k = 0
    m = a[0]
    if m != m:
        return 0
    for i in range(1, a.size):
        v = a[i]
        if v != v:
            return i
        if v < m:
            m = v
            k = i
    return k


@jit
def rt_lse1(a):
    """Stable log(sum(exp(a))): exact at -inf and +inf entries."""
    rt_wide()
    m = rt_max1(a)
    if not np.isfinite(m):
        return m
    e = np.empty(a.size, a.dtype)
    for i in range(a.size):
        e[i] = rt_exp(a[i] - m)
    return math.log(rt_psum(e)) + m


@jit
def rt_norm1(a):
    rt_wide()
    sq = np.empty(a.size, a.dtype)
    for i in range(a.size):
        sq[i] = a[i] * a[i]
    return math.sqrt(rt_psum(sq))


# ---------------------------------------------------------------- row / column reductions
@jit
def rt_rows_sum(z):
    # on the flat array: a row view per row costs more than a short row's sum.
    # rt_pwblock is inlined by Numba (LLVM did not inline it, and through calls 2048
    # rows of 8 took 46 us instead of 11; inlined, the out-of-order core also overlaps
    # the rows)
    rt_wide()
    n, m = z.shape
    out = np.zeros(n, z.dtype)
    if m == 0:
        return out
    zf = z.ravel()
    if m <= 128:
        for r in range(n):
            out[r] = rt_pwblock(zf, r * m, m)
    else:
        for r in range(n):
            out[r] = rt_pw(zf, r * m, m)
    return out


@jit
def rt_rows_prod(z):
    rt_wide()
    out = np.empty(z.shape[0], z.dtype)
    for r in range(z.shape[0]):
        out[r] = rt_prod1(z[r])
    return out


@jit
def rt_rows_max(z):
    rt_wide()
    out = np.empty(z.shape[0], z.dtype)
    for r in range(z.shape[0]):
        out[r] = rt_max1(z[r])
    return out


@jit
def rt_rows_min(z):
    rt_wide()
    out = np.empty(z.shape[0], z.dtype)
    for r in range(z.shape[0]):
        out[r] = rt_min1(z[r])
    return out


@jit
def rt_rows_argmax(z):
    rt_wide()
    out = np.empty(z.shape[0], np.int64)
    for r in range(z.shape[0]):
        out[r] = rt_argmax1(z[r])
    return out


@jit
def rt_rows_argmin(z):
    rt_wide()
    out = np.empty(z.shape[0], np.int64)
    for r in range(z.shape[0]):
        out[r] = rt_argmin1(z[r])
    return out


@jit
def rt_rows_lse(z):
    rt_wide()
    out = np.empty(z.shape[0], z.dtype)
    for r in range(z.shape[0]):
        out[r] = rt_lse1(z[r])
    return out


@jit
def rt_rows_norm(z):
    rt_wide()
    out = np.empty(z.shape[0], z.dtype)
    for r in range(z.shape[0]):
        out[r] = rt_norm1(z[r])
    return out


@jit
def rt_cols_sum(z):
    rt_wide()
    out = np.zeros(z.shape[1], z.dtype)
    for k in range(z.shape[0]):
        for c in range(z.shape[1]):
            out[c] += z[k, c]
    return out


@jit
def rt_cols_prod(z):
    rt_wide()
    out = np.ones(z.shape[1], z.dtype)
    for k in range(z.shape[0]):
        for c in range(z.shape[1]):
            out[c] *= z[k, c]
    return out


@jit
def rt_cols_max(z):
    rt_wide()
    if z.shape[0] == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    out = z[0].copy()
    for k in range(1, z.shape[0]):
        for c in range(z.shape[1]):
            m = out[c]
            v = z[k, c]
            if m == m and (v != v or v > m):
                out[c] = v
    return out


@jit
def rt_cols_min(z):
    rt_wide()
    if z.shape[0] == 0:
        raise ValueError("zero-size array to reduction operation minimum which has no identity")
    out = z[0].copy()
    for k in range(1, z.shape[0]):
        for c in range(z.shape[1]):
            m = out[c]
            v = z[k, c]
            if m == m and (v != v or v < m):
                out[c] = v
    return out


@jit
def rt_cols_argmax(z):
    rt_wide()
    out = np.empty(z.shape[1], np.int64)
    for c in range(z.shape[1]):
        out[c] = rt_argmax1(z[:, c].copy())
    return out


@jit
def rt_cols_argmin(z):
    rt_wide()
    out = np.empty(z.shape[1], np.int64)
    for c in range(z.shape[1]):
        out[c] = rt_argmin1(z[:, c].copy())
    return out


@jit
def rt_cols_lse(z):
    rt_wide()
    m = rt_cols_max(z)
    out = np.zeros(z.shape[1], z.dtype)
    for k in range(z.shape[0]):
        for c in range(z.shape[1]):
            shift = m[c] if np.isfinite(m[c]) else 0.0
            out[c] += rt_exp(z[k, c] - shift)
    for c in range(z.shape[1]):
        if np.isfinite(m[c]):
            out[c] = math.log(out[c]) + m[c]
        else:
            out[c] = m[c]
    return out


@jit
def rt_cols_norm(z):
    rt_wide()
    out = np.zeros(z.shape[1], z.dtype)
    for k in range(z.shape[0]):
        for c in range(z.shape[1]):
            out[c] += z[k, c] * z[k, c]
    for c in range(z.shape[1]):
        out[c] = math.sqrt(out[c])
    return out


@jit
def rt_sum_into(x, out):
    """Add every entry of ``x`` into ``out`` (same rank; an axis of size 1 in ``out``
    collects the whole axis of ``x``): the reverse of broadcasting, in C order."""
    rt_wide()
    xs = x.shape
    os = out.shape
    nd = x.ndim
    xf = np.ascontiguousarray(x).reshape(-1)
    of = out.reshape(-1)
    for f in range(xf.size):
        rem = f
        o = 0
        stride = 1
        for k in range(nd - 1, -1, -1):
            ik = rem % xs[k]
            rem = rem // xs[k]
            if os[k] != 1:
                o += ik * stride
            stride *= os[k]
        of[o] += xf[f]
    return out


# ---------------------------------------------------------------- elementwise on arrays
@jit
def rt_maximum_a(x, y):
    return np.maximum(x, y)


@numba.extending.intrinsic
def rt_prefetch_at(typingctx, buf, k):
    """A hint to bring the cache line of ``buf[k]`` toward the core (LLVM's
    ``llvm.prefetch``: read, temporal locality 2, data cache); it changes no value and a
    prefetch never faults (x86 PREFETCHh, AArch64 PRFM).  Generated code calls
    ``rt_prefetch``."""
    def codegen(context, builder, sig, args):
        cg = numba.core.cgutils
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), cg.voidptr_t)
        fnty = cg.ir.FunctionType(cg.ir.VoidType(), [cg.voidptr_t] + [cg.int32_t] * 3)
        fn = cg.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, cg.int32_t(0), cg.int32_t(2), cg.int32_t(1)])
        return context.get_dummy_value()
    return numba.types.none(buf, k), codegen


@jit
def rt_prefetch(buf, k):
    """Prefetch ``buf[k]`` of a 1-D buffer, ``buf[0]`` for a negative k.  No test of the
    upper end: a prefetch past the end reads nothing and never faults, and a branch
    here cost 2% of a soft-DTW gradient."""
    rt_prefetch_at(buf, max(k, 0))


@jit
def rt_wave_strip(cols):
    """Rows per strip of a wavefront nest whose tapes a reverse sweep reads in wavefront
    order: 64, halved down to 8 while a strip holds more than 65,536 cells.  The sweep
    crosses all of a strip's diagonals in every row, so a strip's tape entries (three
    tapes of soft-min weights: 1.5 MB) must stay in L2 and the TLB: at 4096 columns
    strips of 64 rows made a soft-DTW value + gradient 700 ms, of 16 rows 450."""
    h = 64
    while h > 8 and h * cols > 65536:
        h //= 2
    return h


@jit
def rt_wave_rank(i, j, r0, r1, c0, c1, strip):
    """The position of cell (i, j) in the order a wavefront schedule visits the rows
    r0 <= i < r1 and columns c0 <= j < c1: strips of ``strip`` rows, each strip by
    anti-diagonals d = i + j, a diagonal by ascending i (backends/cpu/wavefront.py).  A
    reverse sweep reads the soft-min weights its forward sweep taped in that order at
    these slots.  Within a strip of h rows, diagonal t (from 0) has min(h, t + 1) -
    max(0, t - m + 1) cells for m columns; the sums of both terms are closed forms."""
    s = (i - r0) // strip
    s_lo = r0 + s * strip
    h = min(strip, r1 - s_lo)
    m = c1 - c0
    u = i + j - s_lo - c0               # diagonals of the strip before (i, j)'s
    a = u * (u + 1) // 2 if u <= h else h * (h + 1) // 2 + (u - h) * h
    v = u - m
    b = v * (v + 1) // 2 if v > 0 else 0
    return s * strip * m + a - b + (i - s_lo) - max(0, u - m + 1)


@jit
def rt_l1_sets(rows, pitch):
    """How many of the 64 sets of a 48 KB, 12-way L1 data cache (64-byte lines) the
    first min(rows, 64) rows of a table start in, for rows ``pitch`` bytes apart."""
    seen = np.uint64(0)
    for r in range(min(rows, 64)):
        seen |= np.uint64(1) << np.uint64(((r * pitch) >> 6) & 63)
    count = 0
    while seen:
        seen &= seen - np.uint64(1)
        count += 1
    return count


@jit
def rt_pitch(m, w):
    """Bytes between the rows of a table of ``m`` entries of ``w`` bytes a row, for a
    table visited by anti-diagonals: the row itself if the first 64 rows start in at
    least 32 of the 64 sets of the L1 data cache, else the least multiple of 4 KB plus
    ``64 + w`` that holds a row (the cells of a diagonal are then exactly one cache line
    apart, in 64 different sets).  With a pitch near a multiple of 4 KB (512 or 1024
    float64 columns) every line a strip of rows touches competes for one set and comes
    from L2 (docs/performance.md, session 12)."""
    if rt_l1_sets(64, m * w) >= 32:
        return m * w
    return (m * w + 4095 - 64 - w) // 4096 * 4096 + 64 + w


@jit
def rt_wave_keeps(x, cells):
    """Whether a wavefront nest of ``cells`` cells visits the 2-D array ``x`` itself:
    its rows are far enough apart in the L1 cache's sets (rt_pitch), or the nest is
    empty, much smaller than ``x`` (a copy would cost more than it saves) or has few
    rows; else rt_wave_pad and rt_strip_buf give it wider rows."""
    n, m = x.shape
    return cells <= 0 or n < 16 or 2 * cells < n * m or rt_l1_sets(n, x.strides[0]) >= 32


@jit
def rt_wave_pad(x, cells):
    """The 2-D array a wavefront nest of ``cells`` cells reads (and writes) along
    anti-diagonals: ``x`` itself if its rows are far enough apart in the L1 cache's
    sets (rt_pitch), else a C-contiguous copy with rt_pitch's row pitch (columns past
    ``x``'s are never touched: the nest's indices are ``x``'s).  Tables much larger than
    the nest keep their layout (the copy would cost more than it saves)."""
    if rt_wave_keeps(x, cells):
        return x
    n, m = x.shape
    w = x.itemsize
    buf = np.empty((n, rt_pitch(m, w) // w), x.dtype)
    buf[:, :m] = x
    return buf


@jit
def rt_strip_buf(x, cells, rows):
    """Where ``rt_wave_pad`` would copy all of ``x``: an empty buffer of ``rows`` rows
    with rt_pitch's row pitch, which a wavefront nest fills a strip at a time
    (rt_strip_in, rt_strip_out); else ``x`` itself.  A strip's rows stay in L2 between
    the copy and the nest, where a copy of the whole table streams it through memory
    twice more (40 of 85 ms for a 2048 x 2048 soft-DTW value)."""
    if rt_wave_keeps(x, cells):
        return x
    w = x.itemsize
    return np.empty((rows, rt_pitch(x.shape[1], w) // w), x.dtype)


@jit
def rt_strip_in(buf, x, r0, count):
    """Rows r0 .. r0 + count - 1 of ``x`` into the first ``count`` rows of ``buf``."""
    m = x.shape[1]
    for r in range(count):
        for c in range(m):
            buf[r, c] = x[r0 + r, c]


@jit
def rt_strip_out(x, buf, r0, count, base):
    """Rows r0 .. r0 + count - 1 of ``x`` back from ``buf``, whose row 0 is row ``base``."""
    m = x.shape[1]
    for r in range(count):
        for c in range(m):
            x[r0 + r, c] = buf[r0 - base + r, c]


@jit
def rt_wave_unpad(x, xw):
    """After the nest: the entries written into ``xw`` (rt_wave_pad's copy) back in
    ``x``; nothing when ``xw`` is ``x`` itself."""
    if xw.ctypes.data != x.ctypes.data:
        x[:, :] = xw[:, :x.shape[1]]


@jit
def rt_grow(buf):
    """A tape buffer twice as long, holding the entries of ``buf``."""
    out = np.empty(2 * buf.shape[0] + 1, buf.dtype)
    out[:buf.shape[0]] = buf
    return out


@jit
def rt_grow_rows(buf, n, x):
    """A tape buffer of arrays (entries along axis 0) with room for twice as many, the
    first ``n`` entries copied; ``x`` (the array about to be pushed) gives the entries'
    shape (the buffer starts empty, with zero-length axes)."""
    out = np.empty((2 * n + 8,) + x.shape, buf.dtype)
    if n > 0:
        out[:n] = buf[:n]
    return out


# ---------------------------------------------------------------- linear algebra
# float products go to BLAS (np.dot on contiguous operands); agreement with NumPy's @ is
# to rounding, as between any two BLAS calls
@jit
def rt_blas(A, B):
    """A @ B by np.dot (BLAS), for C- or F-contiguous operands (a ``.T`` of a C-contiguous
    matrix is read in place)."""
    if B.shape[0] != A.shape[-1]:
        raise ValueError("matmul: inner dimensions differ")
    return np.dot(A, B)


@jit
def rt_fmm22(a, b):
    return rt_blas(np.ascontiguousarray(a), np.ascontiguousarray(b))


@jit
def rt_fmm21(a, v):
    return rt_blas(np.ascontiguousarray(a), np.ascontiguousarray(v))


@jit
def rt_fmm12(v, b):
    return rt_blas(np.ascontiguousarray(v), np.ascontiguousarray(b))


# ``_t``/``_n``: the matrix operand comes transposed or not: ``a.T`` for ``_t..``
@jit
def rt_fmm22_tn(a, b):
    return rt_blas(np.ascontiguousarray(a).T, np.ascontiguousarray(b))


@jit
def rt_fmm22_nt(a, b):
    return rt_blas(np.ascontiguousarray(a), np.ascontiguousarray(b).T)


@jit
def rt_fmm22_tt(a, b):
    return rt_blas(np.ascontiguousarray(a).T, np.ascontiguousarray(b).T)


@jit
def rt_fmm21_t(a, v):
    return rt_blas(np.ascontiguousarray(a).T, np.ascontiguousarray(v))


@jit
def rt_fmm12_t(v, b):
    return rt_blas(np.ascontiguousarray(v), np.ascontiguousarray(b).T)


@jit
def rt_mm22(a, b):
    rt_wide()
    n, k = a.shape
    m = b.shape[1]
    if b.shape[0] != k:
        raise ValueError("matmul: inner dimensions differ")
    out = np.zeros((n, m), a.dtype)
    for i in range(n):
        for p in range(k):
            aip = a[i, p]
            for j in range(m):
                out[i, j] += aip * b[p, j]
    return out


@jit
def rt_mm21(a, v):
    rt_wide()
    n, k = a.shape
    if v.shape[0] != k:
        raise ValueError("matmul: inner dimensions differ")
    out = np.zeros(n, a.dtype)
    for i in range(n):
        s = out[i]
        for p in range(k):
            s += a[i, p] * v[p]
        out[i] = s
    return out


@jit
def rt_mm12(v, b):
    rt_wide()
    k, m = b.shape
    if v.shape[0] != k:
        raise ValueError("matmul: inner dimensions differ")
    out = np.zeros(m, b.dtype)
    for p in range(k):
        vp = v[p]
        for j in range(m):
            out[j] += vp * b[p, j]
    return out


@jit
def rt_mm11(u, v):
    rt_wide()
    if u.shape[0] != v.shape[0]:
        raise ValueError("matmul: inner dimensions differ")
    s = np.zeros(1, u.dtype)[0]
    for p in range(u.shape[0]):
        s += u[p] * v[p]
    return s


@jit
def rt_mm33(a, b):
    """Batched matmul of (B, n, k) and (B, k, m)."""
    rt_wide()
    out = np.zeros((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
    for t in range(a.shape[0]):
        out[t] = rt_mm22(a[t], b[t])
    return out


@jit
def rt_outer(a, b):
    rt_wide()
    out = np.empty((a.size, b.size), a.dtype)
    for i in range(a.size):
        for j in range(b.size):
            out[i, j] = a[i] * b[j]
    return out


@jit
def rt_lu(A):
    """LU factorisation with partial pivoting (first largest |pivot|, as LAPACK)."""
    rt_wide()
    n = A.shape[0]
    if A.shape[1] != n:
        raise ValueError("solve: the matrix must be square")
    LU = A.astype(np.float64)
    piv = np.arange(n)
    for j in range(n):
        p = j
        best = abs(LU[j, j])
        for i in range(j + 1, n):
            if abs(LU[i, j]) > best:
                best = abs(LU[i, j])
                p = i
        if LU[p, j] == 0.0:
            raise ValueError("Singular matrix")
        if p != j:
            for c in range(n):
                t = LU[j, c]
                LU[j, c] = LU[p, c]
                LU[p, c] = t
            t2 = piv[j]
            piv[j] = piv[p]
            piv[p] = t2
        inv = 1.0 / LU[j, j]
        for i in range(j + 1, n):
            LU[i, j] *= inv
        for i in range(j + 1, n):
            lij = LU[i, j]
            if lij != 0.0:
                for c in range(j + 1, n):
                    LU[i, c] -= lij * LU[j, c]
    return LU, piv


@jit
def rt_lu_solve2(LU, piv, B, trans):
    """X with A X = B (``trans``: A^T X = B) from rt_lu's factorisation P A = L U
    (row i of P A is row piv[i] of A); A^T = U^T L^T P."""
    rt_wide()
    n = LU.shape[0]
    if B.shape[0] != n:
        raise ValueError("solve: the right-hand side has the wrong number of rows")
    m = B.shape[1]
    X = np.empty((n, m), np.float64)
    if not trans:
        for i in range(n):
            for c in range(m):
                X[i, c] = B[piv[i], c]
        for c in range(m):
            for i in range(n):
                s = X[i, c]
                for p in range(i):
                    s -= LU[i, p] * X[p, c]
                X[i, c] = s
            for i in range(n - 1, -1, -1):
                s = X[i, c]
                for p in range(i + 1, n):
                    s -= LU[i, p] * X[p, c]
                X[i, c] = s / LU[i, i]
        return X
    Z = np.empty((n, m), np.float64)
    for c in range(m):
        for i in range(n):              # U^T y = b
            s = B[i, c]
            for p in range(i):
                s -= LU[p, i] * Z[p, c]
            Z[i, c] = s / LU[i, i]
        for i in range(n - 1, -1, -1):  # L^T z = y (unit diagonal)
            s = Z[i, c]
            for p in range(i + 1, n):
                s -= LU[p, i] * Z[p, c]
            Z[i, c] = s
    for i in range(n):                  # x = P^T z
        for c in range(m):
            X[piv[i], c] = Z[i, c]
    return X


@jit
def rt_lu_solve1(LU, piv, b, trans):
    B = np.ascontiguousarray(b).reshape((b.shape[0], 1))
    return rt_lu_solve2(LU, piv, B, trans)[:, 0].copy()


@jit
def rt_solve2(A, B):
    LU, piv = rt_lu(A)
    return rt_lu_solve2(LU, piv, B, False)


@jit
def rt_solve1(A, b):
    return rt_solve2(A, np.ascontiguousarray(b).reshape((b.shape[0], 1)))[:, 0].copy()


@jit
def rt_trace(x):
    rt_wide()
    k = min(x.shape[0], x.shape[1])
    d = np.empty(k, x.dtype)
    for i in range(k):
        d[i] = x[i, i]
    return rt_psum(d)


@jit
def rt_diag_from(v):
    rt_wide()
    n = v.shape[0]
    out = np.zeros((n, n), v.dtype)
    for i in range(n):
        out[i, i] = v[i]
    return out


@jit
def rt_diag_of(a):
    rt_wide()
    k = min(a.shape[0], a.shape[1])
    out = np.empty(k, a.dtype)
    for i in range(k):
        out[i] = a[i, i]
    return out


# ---------------------------------------------------------------- constructors
@jit
def rt_linspace(start, stop, num):
    """np.linspace(start, stop, num) for scalars, computed as NumPy does."""
    if num < 0:
        raise ValueError("Number of samples must be non-negative.")
    start = float(start)
    stop = float(stop)
    y = np.arange(0, num).astype(np.float64)
    div = num - 1
    delta = stop - start
    if div > 0:
        step = delta / div
        if step == 0:
            y = y / div * delta
        else:
            y = y * step
    else:
        y = y * delta
    y = y + start
    if num > 1:
        y[num - 1] = stop
    return y


# ---------------------------------------------------------------- writes into views
# ``A[t, :] += v`` and ``A[t, :] = v`` for an array v of the view's rank.  Numba's slice
# assignment goes through a generic broadcasting loop several times slower than a plain
# nest (0.34 against 0.06 ms for 256 updates of 32 x 32); the nest runs when the shapes
# are equal, Numba's assignment (which broadcasts, or raises) otherwise.  The generated
# code copies a value that is a view of the array it is written into (the in-place
# rule), so source and destination never overlap.
@jit
def rt_add_into1(dst, src):
    rt_wide()
    if dst.shape[0] == src.shape[0]:
        for i in range(dst.shape[0]):
            dst[i] += src[i]
    else:
        dst[:] += src


@jit
def rt_add_into2(dst, src):
    rt_wide()
    if dst.shape[0] == src.shape[0] and dst.shape[1] == src.shape[1]:
        for i in range(dst.shape[0]):
            for j in range(dst.shape[1]):
                dst[i, j] += src[i, j]
    else:
        dst[:, :] += src


@jit
def rt_add_into3(dst, src):
    rt_wide()
    if dst.shape == src.shape:
        for i in range(dst.shape[0]):
            for j in range(dst.shape[1]):
                for k in range(dst.shape[2]):
                    dst[i, j, k] += src[i, j, k]
    else:
        dst[:, :, :] += src


@jit
def rt_set_into1(dst, src):
    rt_wide()
    if dst.shape[0] == src.shape[0]:
        for i in range(dst.shape[0]):
            dst[i] = src[i]
    else:
        dst[:] = src


@jit
def rt_set_into2(dst, src):
    rt_wide()
    if dst.shape[0] == src.shape[0] and dst.shape[1] == src.shape[1]:
        for i in range(dst.shape[0]):
            for j in range(dst.shape[1]):
                dst[i, j] = src[i, j]
    else:
        dst[:, :] = src


@jit
def rt_set_into3(dst, src):
    rt_wide()
    if dst.shape == src.shape:
        for i in range(dst.shape[0]):
            for j in range(dst.shape[1]):
                for k in range(dst.shape[2]):
                    dst[i, j, k] = src[i, j, k]
    else:
        dst[:, :, :] = src


# ---------------------------------------------------------------- unchecked accessors
# Element access without Numba's bounds check, for accesses whose indices a test hoisted
# out of their loop nest proved in range (backends/cpu/ranges.py); LLVM inlines them.
@jit
def rt_at1(a, i):
    return a[i]


@jit
def rt_at2(a, i, j):
    return a[i, j]


@jit
def rt_at3(a, i, j, k):
    return a[i, j, k]


@jit
def rt_put1(a, i, v):
    a[i] = v


@jit
def rt_put2(a, i, j, v):
    a[i, j] = v


@jit
def rt_put3(a, i, j, k, v):
    a[i, j, k] = v


@jit
def rt_inc1(a, i, v):
    a[i] += v


@jit
def rt_inc2(a, i, j, v):
    a[i, j] += v


@jit
def rt_inc3(a, i, j, k, v):
    a[i, j, k] += v


# ---------------------------------------------------------------- soft operators
@jit
def rt_check_gamma(gamma):
    if not gamma > 0:
        raise ValueError("gamma must be positive")
    return gamma


@jit
def rt_ties(z, m):
    """Uniform weights over the entries equal to the (infinite) maximum m."""
    rt_wide()
    q = np.zeros(z.size, np.float64)
    cnt = 0
    for i in range(z.size):
        if z[i] == m:
            cnt += 1
    for i in range(z.size):
        if z[i] == m:
            q[i] = 1.0 / cnt if cnt > 0 else np.nan
        elif cnt == 0:
            q[i] = np.nan
    return q


@jit
def rt_sort_small(a):
    """Sort the 1-D float array ``a`` in place, ascending, as np.sort orders it:
    insertion sort up to 64 entries without NaN (Numba's np.sort costs about 300 ns of
    set-up per call, most of a short row's sparsemax), else Numba's sort."""
    n = a.size
    if n > 64:
        a.sort()
        return
    for i in range(n):
        if a[i] != a[i]:
            a.sort()
            return
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@jit
def rt_sparsemax1(z, gamma):
    rt_wide()
    K = z.size
    m = rt_max1(z)
    if not np.isfinite(m):
        return rt_ties(z, m)
    w = np.empty(K, np.float64)
    ws = np.empty(K, np.float64)
    for i in range(K):
        w[i] = (z[i] - m) / gamma
        ws[i] = -w[i]
    rt_sort_small(ws)
    for i in range(K):                  # -np.sort(-w): w in descending order
        ws[i] = -ws[i]
    cs = np.empty(K, np.float64)
    acc = 0.0
    for i in range(K):
        acc += ws[i]
        cs[i] = acc
    kz = 0
    for i in range(K):
        if 1.0 + (i + 1.0) * ws[i] > cs[i]:
            kz = i + 1
    if kz < 1:
        kz = 1
    tau = (cs[kz - 1] - 1.0) / kz
    q = np.empty(K, np.float64)
    for i in range(K):
        d = w[i] - tau
        q[i] = d if d > 0.0 else (d if d != d else 0.0)
    return q


@jit
def rt_smax1(z, gamma, l2):
    rt_wide()
    m = rt_max1(z)
    if not np.isfinite(m):
        return m
    K = z.size
    if not l2:
        e = np.empty(K, np.float64)
        for i in range(K):
            e[i] = rt_exp((z[i] - m) / gamma)
        return m + gamma * math.log(rt_psum(e))
    q = rt_sparsemax1(z, gamma)
    lin = np.empty(K, np.float64)
    sq = np.empty(K, np.float64)
    for i in range(K):
        lin[i] = q[i] * (z[i] - m) if q[i] > 0 else 0.0
        sq[i] = q[i] * q[i]
    return m + rt_psum(lin) - gamma / 2 * rt_psum(sq)


@jit
def rt_onehot1(z, pick_min):
    q = np.zeros(z.size, np.float64)
    if pick_min:
        q[rt_argmin1(z)] = 1.0
    else:
        q[rt_argmax1(z)] = 1.0
    return q


@jit
def rt_row_max(z, r):
    """(max of row r of the 2-D z, whether it has a NaN), branch-free: eight independent
    maxima (the maximum does not depend on the order; a serial chain waits about 4
    cycles an entry, and rows are often short)."""
    rt_wide()
    k = z.shape[1]
    if k < 8:
        m = z[r, 0]
        bad = m != m
        for i in range(1, k):
            v = z[r, i]
            bad |= v != v
            m = v if v > m else m
        return m, bad
    m0, m1, m2, m3 = z[r, 0], z[r, 1], z[r, 2], z[r, 3]
    m4, m5, m6, m7 = z[r, 4], z[r, 5], z[r, 6], z[r, 7]
    bad = (m0 != m0) | (m1 != m1) | (m2 != m2) | (m3 != m3) | \
        (m4 != m4) | (m5 != m5) | (m6 != m6) | (m7 != m7)
    for j in range(1, k // 8):
        i = 8 * j
        v0, v1, v2, v3 = z[r, i], z[r, i + 1], z[r, i + 2], z[r, i + 3]
        v4, v5, v6, v7 = z[r, i + 4], z[r, i + 5], z[r, i + 6], z[r, i + 7]
        bad |= (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3) | \
            (v4 != v4) | (v5 != v5) | (v6 != v6) | (v7 != v7)
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        m4 = v4 if v4 > m4 else m4
        m5 = v5 if v5 > m5 else m5
        m6 = v6 if v6 > m6 else m6
        m7 = v7 if v7 > m7 else m7
    for i in range(k - k % 8, k):
        v = z[r, i]
        bad |= v != v
        m0 = v if v > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return (m4 if m4 > m0 else m0), bad


@jit
def rt_rows_entropy(z, gamma, value, w):
    """Entropy smax of each row of the 2-D z into ``value`` and, when ``w`` has z's shape,
    its maximiser (softmax of the row / gamma) into ``w``; else ``w`` (one row) is
    scratch.  Rows with a NaN give NaN, rows whose maximum is infinite that maximum and
    uniform weights over the entries equal to it.  A power-of-2 gamma multiplies by its
    reciprocal (the same numbers, and no division per entry: the CRF's gamma = 1)."""
    rt_wide()
    n, k = z.shape
    if n and k == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    full = w.shape[0] == n
    wf = w.reshape(-1)
    rg = 1.0 / gamma
    pow2 = math.frexp(gamma)[0] == 0.5
    for r in range(n):
        m, bad = rt_row_max(z, r)
        if bad or not np.isfinite(m):
            value[r] = np.nan if bad else m
            if full:
                w[r] = rt_ties(z[r], np.nan if bad else m)
            continue
        wr = r if full else 0
        if pow2:
            for i in range(k):
                w[wr, i] = rt_exp((z[r, i] - m) * rg)
        else:
            for i in range(k):
                w[wr, i] = rt_exp((z[r, i] - m) / gamma)
        # (the row's sum on the flat array: a row view costs more than a short row)
        s = rt_pwblock(wf, wr * k, k) if k <= 128 else rt_pw(wf, wr * k, k)
        value[r] = m + gamma * math.log(s)
        if full:
            for i in range(k):
                w[r, i] = w[r, i] / s


@jit
def rt_rows_softmax_into(z, gamma, q):
    """softmax (entropy) of each row of z / gamma, into q (z's shape: a tape's entry,
    backend_cpu.md "Tapes")."""
    rt_check_gamma(gamma)
    if q.shape != z.shape:
        raise ValueError("soft operator: the weights' destination has the wrong shape")
    rt_rows_entropy(z, gamma, np.empty(z.shape[0], np.float64), q)
    return q


@jit
def rt_rows_softmax(z, gamma, l2):
    """softmax (entropy) or sparsemax (l2) of each row of z / gamma."""
    rt_wide()
    out = np.empty(z.shape, np.float64)
    if not l2:
        return rt_rows_softmax_into(z, gamma, out)
    rt_check_gamma(gamma)
    for r in range(z.shape[0]):
        out[r] = rt_sparsemax1(z[r], gamma)
    return out


@jit
def rt_rows_smax(z, gamma, l2):
    rt_wide()
    rt_check_gamma(gamma)
    out = np.empty(z.shape[0], np.float64)
    if l2:
        for r in range(z.shape[0]):
            out[r] = rt_smax1(z[r], gamma, l2)
        return out
    rt_rows_entropy(z, gamma, out, np.empty((1, z.shape[1]), np.float64))
    return out


@jit
def rt_rows_smax_arg_into(z, gamma, q):
    """rt_rows_smax (entropy) of z, with rt_rows_softmax's weights written into q (z's
    shape), from one pass."""
    rt_check_gamma(gamma)
    if q.shape != z.shape:
        raise ValueError("soft operator: the weights' destination has the wrong shape")
    out = np.empty(z.shape[0], np.float64)
    rt_rows_entropy(z, gamma, out, q)
    return out


@jit
def rt_rows_smax_arg(z, gamma, l2):
    """(rt_rows_smax, rt_rows_softmax) of z from one pass (entropy; l2 from the
    sparsemax weights)."""
    if l2:
        return rt_rows_smax(z, gamma, l2), rt_rows_softmax(z, gamma, l2)
    q = np.empty(z.shape, np.float64)
    return rt_rows_smax_arg_into(z, gamma, q), q


@jit
def rt_cols_entropy(z, off, gamma, value, w, full):
    """rt_rows_entropy down the columns of the 2-D z (a reduction over axis 0): the
    columns are the vector lanes, so nothing is transposed.  ``off`` is None or a vector
    with one entry per row: the kernel then reduces ``z + off[:, None]`` (a forward-
    algorithm step, ``theta[t] + alpha[:, None]``, never materialised).  ``value`` gets
    one entry per column; with ``full`` the weights go into ``w`` (z's shape).  Sums run
    down each column in row order, as NumPy sums over axis 0.  Columns whose maximum is
    not finite (a NaN first, an infinite entry) get what rt_rows_entropy gives such a
    row: NaN when any entry is NaN (a NaN after a finite maximum already makes the sum
    NaN), else the maximum and its ties."""
    rt_wide()
    n, k = z.shape
    if off is not None and off.shape[0] != n:
        raise ValueError("elementwise operands could not be broadcast together")
    if full and (w.shape[0] != n or w.shape[1] != k):
        raise ValueError("soft operator: the weights' destination has the wrong shape")
    if k and n == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    if n == 0:
        return
    rg = 1.0 / gamma
    pow2 = math.frexp(gamma)[0] == 0.5
    m = np.empty(k, np.float64)
    o = -0.0 if off is None else off[0]
    for j in range(k):
        m[j] = z[0, j] + o
    for r in range(1, n):
        o = -0.0 if off is None else off[r]
        for j in range(k):
            x = z[r, j] + o
            m[j] = x if x > m[j] else m[j]
    s = np.zeros(k, np.float64)
    if full and pow2:
        for r in range(n):
            o = -0.0 if off is None else off[r]
            for j in range(k):
                e = rt_exp((z[r, j] + o - m[j]) * rg)
                w[r, j] = e
                s[j] += e
    elif full:
        for r in range(n):
            o = -0.0 if off is None else off[r]
            for j in range(k):
                e = rt_exp((z[r, j] + o - m[j]) / gamma)
                w[r, j] = e
                s[j] += e
    else:
        for r in range(n):
            o = -0.0 if off is None else off[r]
            for j in range(k):
                x = z[r, j] + o - m[j]
                s[j] += rt_exp(x * rg if pow2 else x / gamma)
    for j in range(k):
        value[j] = m[j] + gamma * math.log(s[j])
    if full:
        for j in range(k):
            s[j] = 1.0 / s[j]
        for r in range(n):
            for j in range(k):
                w[r, j] = w[r, j] * s[j]
    for j in range(k):
        if not np.isfinite(m[j]):
            # as rt_rows_entropy does such a row: NaN anywhere gives NaN, else the
            # infinite maximum with the weight spread over its ties
            col = np.empty(n, np.float64)
            bad = False
            for r in range(n):
                col[r] = z[r, j] + (-0.0 if off is None else off[r])
                bad = bad or col[r] != col[r]
            value[j] = np.nan if bad else m[j]
            if full:
                w[:, j] = rt_ties(col, np.nan if bad else m[j])


# The column kernels' entry points.  ``off`` as in rt_cols_entropy; the ``_into`` forms
# write the weights into ``q`` (a tape's entry: backend_cpu.md, "Tapes").
@jit
def rt_cols_smax(z, off, gamma):
    """Entropy smax of each column of z (+ off[:, None]) (over axis 0)."""
    rt_check_gamma(gamma)
    out = np.empty(z.shape[1], np.float64)
    rt_cols_entropy(z, off, gamma, out, z, False)
    return out


@jit
def rt_cols_softmax_into(z, off, gamma, q):
    """softmax of each column of (z + off[:, None]) / gamma (over axis 0), into q."""
    rt_check_gamma(gamma)
    rt_cols_entropy(z, off, gamma, np.empty(z.shape[1], np.float64), q, True)
    return q


@jit
def rt_cols_softmax(z, off, gamma):
    return rt_cols_softmax_into(z, off, gamma, np.empty(z.shape, np.float64))


@jit
def rt_cols_smax_arg_into(z, off, gamma, q):
    """rt_cols_smax of z, with rt_cols_softmax's weights written into q, from one pass."""
    rt_check_gamma(gamma)
    out = np.empty(z.shape[1], np.float64)
    rt_cols_entropy(z, off, gamma, out, q, True)
    return out


@jit
def rt_cols_smax_arg(z, off, gamma):
    q = np.empty(z.shape, np.float64)
    return rt_cols_smax_arg_into(z, off, gamma, q), q


@jit
def rt_rows_onehot(z, pick_min):
    rt_wide()
    out = np.empty(z.shape, np.float64)
    for r in range(z.shape[0]):
        out[r] = rt_onehot1(z[r], pick_min)
    return out


@jit
def rt_smaxn(gamma, l2, sign, xs):
    """sign * smax(sign * xs) of a tuple of scalars (smaxn: sign 1, sminn: sign -1)."""
    rt_wide()
    rt_check_gamma(gamma)
    n = len(xs)
    if l2 and n <= 3 and gamma < np.inf:
        return sign * rt_sparse_small(gamma, sign * xs[0], sign * xs[n // 2],
                                      sign * xs[n - 1], n)
    if l2 or n >= 8:
        z = np.empty(n, np.float64)
        k = 0
        for x in xs:
            z[k] = sign * x
            k += 1
        return sign * rt_smax1(z, gamma, l2)
    m = sign * xs[0]
    for x in xs:
        v = sign * x
        if m == m and (v != v or v > m):
            m = v
    if not np.isfinite(m):
        return sign * m
    s = 0.0
    rg = min(1.0 / gamma, 1.7976931348623157e308)     # one division (as _entropy_cell)
    for x in xs:
        s += math.exp((sign * x - m) * rg)
    return sign * (m + gamma * math.log(s))


@jit
def rt_sparse_small(gamma, z0, z1, z2, n):
    """rt_smax1(z, gamma, l2=True) of the n <= 3 entries z0, (z1,) z2 (n = 2: z0, z2;
    n = 1: z0), in scalars: no array per call (a DP cell's sparse max took about 480
    ns in allocations and a sort).  The same operations in the same order as
    rt_sparsemax1 and rt_smax1 (the sort a three-entry network, the cumulative and
    pairwise sums sequential), so the same bits (tests/test_cpu_backend.py)."""
    if n == 1:
        z1 = z0
        z2 = z0
    elif n == 2:
        z1 = z2
    m = z0                                  # rt_max1, NaN first
    m = z1 if z1 > m else m
    m = z2 if z2 > m else m
    if z0 != z0:
        m = z0
    elif z1 != z1:
        m = z1
    elif z2 != z2:
        m = z2
    if not np.isfinite(m):
        return m
    w0 = (z0 - m) / gamma
    w1 = (z1 - m) / gamma
    w2 = (z2 - m) / gamma
    # descending a >= b >= c
    a, b = (w0, w1) if w0 >= w1 else (w1, w0)
    if n == 3:
        c = w2
        if c > b:
            b, c = c, b
            if b > a:
                a, b = b, a
    c1 = 0.0 + a
    c2 = c1 + b
    kz = 1
    if 1.0 + 2.0 * b > c2:
        kz = 2
    tau = (c1 - 1.0) / 1
    if n == 3:
        c3 = c2 + c
        if 1.0 + 3.0 * c > c3:
            kz = 3
    if n == 1:
        kz = 1
    if kz == 2:
        tau = (c2 - 1.0) / 2
    elif kz == 3:
        tau = (c3 - 1.0) / 3
    d0 = w0 - tau
    q0 = d0 if d0 > 0.0 else 0.0
    lin = q0 * (z0 - m) if q0 > 0 else 0.0
    lin = lin - lin if lin == 0 else lin
    sq = q0 * q0
    sq = sq - sq if sq == 0 else sq
    if n >= 2:
        d2 = w2 - tau
        q2 = d2 if d2 > 0.0 else 0.0
        if n == 3:
            d1 = w1 - tau
            q1 = d1 if d1 > 0.0 else 0.0
            lin += q1 * (z1 - m) if q1 > 0 else 0.0
            sq += q1 * q1
        lin += q2 * (z2 - m) if q2 > 0 else 0.0
        sq += q2 * q2
    return m + lin - gamma / 2 * sq


@jit
def rt_spair(x, y, gamma, l2, sign):
    """Elementwise smax (sign 1) / smin (-1) of two broadcast arrays of one shape."""
    rt_wide()
    out = np.empty(x.shape, np.float64)
    xf = np.ascontiguousarray(x).reshape(-1)
    yf = np.ascontiguousarray(y).reshape(-1)
    of = out.reshape(-1)
    for k in range(of.size):
        of[k] = rt_smaxn(gamma, l2, sign, (xf[k], yf[k]))
    return out
