"""dplang: a compiler for differentiable programs.

    import dplang as dp
    mod = dp.load("examples/dtw.dp")
    mod.dtw(D)
"""
from dplang.errors import (DPError, DPSyntaxError, DPUnsupportedError, DPTypeError,  # noqa: F401
                           DPNameError, DPShapeError, DPConvergenceError, DPRuntimeError,
                           DPAssertionError, DPInternalError)
from dplang.api import load, compile, jvp, Module, Function  # noqa: F401

__version__ = "0.1.0"
