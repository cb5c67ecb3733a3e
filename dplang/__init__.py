"""dplang: a compiler for differentiable programs.

    import dplang as dp
    mod = dp.load("examples/dtw.dp")
    mod.dtw(D)
"""
from dplang.errors import (DPError, DPSyntaxError, DPUnsupportedError, DPTypeError,  # noqa: F401
                           DPNameError, DPShapeError, DPConvergenceError, DPRuntimeError,
                           DPAssertionError, DPInternalError)
from dplang.eager import *  # noqa: F401,F403  (dp.exp, dp.smax, ...: eager built-ins)
from dplang.api import (load, compile, jvp, vjp, grad, value_and_grad, hvp, smooth,  # noqa: F401
                        vmap, Module, Function)
from dplang.jit import jit, JitFunction  # noqa: F401
from dplang.api import root, fixed_point  # noqa: F401  (SPEC 2.4 decorators of jitted functions)
from dplang.eager import argmin  # noqa: F401  (the reduction, or the API's @argmin(obj))

__version__ = "0.1.0"
