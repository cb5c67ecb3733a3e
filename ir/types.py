"""IR types: scalars, arrays with symbolic dimensions.

A dimension is an ``int`` (known size), a ``Sym`` (an affine expression of dimension
names, such as ``n + 1``) or ``None`` (unknown until run time).  Dtypes follow NumPy:
``f64 f32 i64 bool``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

DTYPES = ("bool", "i64", "f32", "f64")
NP_DTYPES = {"bool": np.bool_, "i64": np.int64, "f32": np.float32, "f64": np.float64}


def dtype_of_numpy(dt) -> str:
    dt = np.dtype(dt)
    if dt == np.bool_:
        return "bool"
    if dt.kind in "iu":
        return "i64"
    if dt == np.float32:
        return "f32"
    if dt.kind == "f":
        return "f64"
    raise TypeError(f"unsupported dtype {dt}")


@dataclass(frozen=True)
class Sym:
    """An affine expression ``const + sum(coeff * name)`` over dimension names."""
    terms: tuple[tuple[str, int], ...]   # sorted (name, coeff), coeff != 0
    const: int = 0

    @staticmethod
    def name(n: str) -> "Sym":
        return Sym(((n, 1),), 0)

    @staticmethod
    def make(terms: dict, const: int) -> "Dim":
        t = tuple(sorted((k, v) for k, v in terms.items() if v != 0))
        if not t:
            return const
        return Sym(t, const)

    def __str__(self) -> str:
        parts = []
        for k, v in self.terms:
            if v == 1:
                parts.append(("+ ", k))
            elif v == -1:
                parts.append(("- ", k))
            elif v > 0:
                parts.append(("+ ", f"{v}*{k}"))
            else:
                parts.append(("- ", f"{-v}*{k}"))
        if self.const > 0:
            parts.append(("+ ", str(self.const)))
        elif self.const < 0:
            parts.append(("- ", str(-self.const)))
        s = ""
        for i, (sign, txt) in enumerate(parts):
            if i == 0:
                s = txt if sign == "+ " else "-" + txt
            else:
                s += " " + sign + txt
        return s


Dim = Union[int, Sym, None]


def dim_add(a: Dim, b: Dim, sign: int = 1) -> Dim:
    if a is None or b is None:
        return None
    ta = dict(a.terms) if isinstance(a, Sym) else {}
    ca = a.const if isinstance(a, Sym) else a
    tb = dict(b.terms) if isinstance(b, Sym) else {}
    cb = b.const if isinstance(b, Sym) else b
    for k, v in tb.items():
        ta[k] = ta.get(k, 0) + sign * v
    return Sym.make(ta, ca + sign * cb)


def dim_mul(a: Dim, b: Dim) -> Dim:
    if a is None or b is None:
        return None
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if isinstance(b, int):
        a, b = b, a
    if isinstance(a, int):
        return Sym.make({k: v * a for k, v in b.terms}, b.const * a)
    return None


def dim_str(d: Dim) -> str:
    return "?" if d is None else str(d)


def dims_conflict(a: Dim, b: Dim) -> bool:
    """True when two dims are known to differ (both integers and unequal)."""
    return isinstance(a, int) and isinstance(b, int) and a != b


def dims_equal(a: Dim, b: Dim) -> bool:
    return a is not None and a == b


class Type:
    pass


@dataclass(frozen=True)
class Scalar(Type):
    dtype: str

    def __str__(self) -> str:
        return self.dtype

    @property
    def ndim(self) -> int:
        return 0

    @property
    def shape(self) -> tuple:
        return ()


@dataclass(frozen=True)
class Array(Type):
    dtype: str
    shape: tuple  # of Dim

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(dim_str(d) for d in self.shape)}]"

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class FuncType(Type):
    """The type of a function value (only as the argument of a transformation)."""
    name: str

    def __str__(self) -> str:
        return f"fn {self.name}"


@dataclass(frozen=True)
class Tape(Type):
    """A stack of values of type ``elem``, written by reverse mode's forward sweep
    (``tape_push``) and read back in reverse order by its reverse sweep (``tape_pop``)."""
    elem: Type

    def __str__(self) -> str:
        return f"tape[{self.elem}]"

    @property
    def dtype(self):
        return None


F64, F32, I64, BOOL = Scalar("f64"), Scalar("f32"), Scalar("i64"), Scalar("bool")


def make(dtype: str, shape: tuple) -> Type:
    """A scalar when ``shape == ()``, else an array."""
    return Scalar(dtype) if len(shape) == 0 else Array(dtype, tuple(shape))


def with_dtype(t: Type, dtype: str) -> Type:
    return make(dtype, t.shape)


def is_float(t: Type) -> bool:
    return getattr(t, "dtype", None) in ("f32", "f64")


def is_int(t: Type) -> bool:
    return getattr(t, "dtype", None) in ("i64", "bool")


# dtype promotion (NumPy 2 rules for the four dtypes we have)
_RANK = {"bool": 0, "i64": 1, "f32": 2, "f64": 3}


def promote(a: str, b: str) -> str:
    if {a, b} == {"i64", "f32"}:
        return "f64"          # NumPy: int64 + float32 -> float64
    return a if _RANK[a] >= _RANK[b] else b


def promote_weak(strong: str, weak: str) -> str:
    """Promotion with a Python literal (``weak``), as NEP 50: the literal adopts the
    array's precision within the same kind."""
    if weak == "f64" and strong in ("bool", "i64"):
        return "f64"
    if weak == "i64" and strong == "bool":
        return "i64"
    return strong


def float_of(dtype: str) -> str:
    """The float dtype an operation like ``exp`` or ``/`` gives for ``dtype``."""
    return "f32" if dtype == "f32" else "f64"


class BroadcastError(Exception):
    pass


def broadcast_shapes(*shapes: tuple) -> tuple:
    """NumPy broadcasting on symbolic shapes; raises BroadcastError on a known conflict."""
    nd = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(nd):
        d_out: Dim = 1
        for s in shapes:
            i = k - (nd - len(s))
            if i < 0:
                continue
            d = s[i]
            if d == 1:
                continue
            if d_out == 1:
                d_out = d
            elif dims_conflict(d_out, d):
                raise BroadcastError(f"cannot broadcast shapes {fmt_shape(shapes[0])} and {fmt_shape(shapes[-1])}")
            elif d_out != d:
                # symbolic and different: runtime decides; prefer the known one
                d_out = d_out if isinstance(d_out, int) else (d if isinstance(d, int) else d_out)
        out.append(d_out)
    return tuple(out)


def fmt_shape(s: tuple) -> str:
    return "(" + ", ".join(dim_str(d) for d in s) + ("," if len(s) == 1 else "") + ")"


def join(a: Type, b: Type) -> Type | None:
    """The type both ``a`` and ``b`` convert to (at if-merges and loop carries), or None."""
    if a == b:
        return a
    if isinstance(a, Scalar) and isinstance(b, Scalar):
        return Scalar(promote(a.dtype, b.dtype))
    if isinstance(a, Array) and isinstance(b, Array) and a.ndim == b.ndim:
        shape = tuple(x if x == y else None for x, y in zip(a.shape, b.shape))
        return Array(promote(a.dtype, b.dtype), shape)
    return None
