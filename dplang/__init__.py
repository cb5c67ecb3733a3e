"""dplang: a compiler for differentiable programs."""
from dplang.errors import (DPError, DPSyntaxError, DPUnsupportedError, DPTypeError,  # noqa: F401
                           DPNameError, DPShapeError, DPConvergenceError, DPRuntimeError,
                           DPAssertionError, DPInternalError)
