"""The pass pipeline: one ordered, printable list of IR -> IR stages.

``STAGES`` names what ``f.ir(stage)`` and ``dplang ir --stage`` can show:

    parsed     the program as the parser read it (the AST, printed back as source)
    ssa        after checking and lowering into structured SSA (dsl/lower.py)
    smoothed   after the smoothing pass (passes/smooth.py: @smooth, dp.smooth)
    ad         after transpose sinking (passes/layout.py: reductions of a transposed
               matrix reduce the matrix), small soft choices as scalar code
               (passes/scalarize.py), index-set splitting (passes/peel.py: loops
               that test for their first iteration lose the test), loop interchange
               (passes/interchange.py: tables filled column by column are filled row
               by row) and forward/reverse differentiation (passes/ad_forward,
               ad_reverse)
    optimized  after simplification (passes/simplify.py: DCE, CSE, folding, arrays
               that are only written)

Each pass is a function ``program -> program`` that does not modify its input.  A pass
that has nothing to do on a program returns it unchanged.
"""
from __future__ import annotations

from dplang.ir.core import Program

STAGES = ("parsed", "ssa", "smoothed", "ad", "optimized")


def _identity(program: Program) -> Program:
    return program


def _smooth(program: Program) -> Program:
    try:
        from dplang.passes import smooth
    except ImportError:
        return program
    return smooth.run(program)


def _ad(program: Program) -> Program:
    from dplang.passes import ad, interchange, layout, peel, scalarize
    return ad.run(interchange.run(peel.run(scalarize.small_choices(layout.run(program)))))


def _simplify(program: Program) -> Program:
    from dplang.passes import scalarize, simplify
    return simplify.run(scalarize.run(program))


PIPELINE = [("smoothed", _smooth), ("ad", _ad), ("optimized", _simplify)]


def run_pipeline(program: Program, until: str = "optimized", verify: bool = False) -> dict:
    """Run the passes in order; returns {stage: program} for 'ssa' and every later stage
    up to ``until``.  With ``verify=True`` the verifier checks the IR after every pass."""
    out = {"ssa": program}
    if verify:
        from dplang.ir.verify import verify_program
        verify_program(program, pass_name="lower")
    cur = program
    if until == "ssa":
        return out
    for name, fn in PIPELINE:
        cur = fn(cur)
        if verify:
            from dplang.ir.verify import verify_program
            verify_program(cur, pass_name=name)
        out[name] = cur
        if name == until:
            break
    return out
