"""The fallback for a primitive that has no compiled form in ``codegen.py``: generated
code calls its NumPy reference implementation (the interpreter's) inside a
``numba.objmode`` block.  Only the cached backend uses it; ``dplang compile`` refuses
such a primitive (a standalone module may import nothing but NumPy and Numba)."""
import numpy as np

from dplang.ir.primitives import REGISTRY

_NP = {"f64": np.float64, "f32": np.float32, "i64": np.int64, "bool": np.bool_}


def prim_call(spec, *args):
    """``spec = (name, attrs, [(dtype, ndim), ...])``: run the primitive, convert each
    result to its declared dtype."""
    name, attrs, types = spec
    with np.errstate(all="ignore"):
        out = REGISTRY[name].impl(*args, **attrs)
    outs = (out,) if len(types) == 1 else tuple(out)
    conv = []
    for v, (dt, nd) in zip(outs, types):
        if nd:
            conv.append(np.array(v, dtype=_NP[dt], copy=True).reshape(np.shape(v)))
        else:
            conv.append(_NP[dt](np.asarray(v).reshape(())[()]))
    return conv[0] if len(conv) == 1 else tuple(conv)
