"""``dplang compile FILE.dp [-o OUT.py] [--grad FUNC[:WRT]]...`` (SPEC section 4).

Writes one standalone, readable Python module that imports only NumPy and Numba: the
CPU backend's generated code for every function of the file (under its own name, as a
plain Python entry point that converts its arguments and calls the jitted function),
``grad_FUNC`` for each ``--grad`` (``grad(FUNC, wrt=WRT)``, WRT a parameter name or
index, default 0), and the run-time helpers they use pasted in.  Without ``-o`` the
module goes next to the input, with the extension ``.py``.
"""
from __future__ import annotations

import os
import sys


class CompileUsageError(ValueError):
    """A user error of ``dplang compile`` (the CLI prints it and exits with 1).  A
    ``ValueError`` so that ``dplang.cli`` reports it however the CLI was started."""


def _parse_grad(spec: str):
    UserError = CompileUsageError
    name, sep, wrt = spec.partition(":")
    name = name.strip()
    if not name or (sep and not wrt.strip()):
        raise UserError(f"--grad {spec!r}: expected FUNC or FUNC:WRT")
    if not sep:
        return name, 0
    wrt = wrt.strip()
    try:
        return name, int(wrt)
    except ValueError:
        return name, wrt


def build(path: str, grads=(), source: str | None = None) -> str:
    """The text of the standalone module for the ``.dp`` file at ``path``."""
    import dplang.api as dp
    UserError = CompileUsageError
    from dplang.ir.core import Program
    from dplang.ir.printer import print_func
    from dplang.backends.cpu.codegen import generate

    if source is None:
        try:
            with open(path, encoding="utf-8") as fh:
                source = fh.read()
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}")
    mod = dp.compile(source, filename=path, backend="interp")
    base = mod._stage_program("optimized")
    programs = [base]
    public = dict(base.exports)
    grad_keys = {}
    for spec in grads:
        name, wrt = _parse_grad(spec)
        if not hasattr(dp, "grad"):
            raise UserError("--grad is not available yet (dplang.grad is not implemented)")
        if name not in mod.functions:
            raise UserError(f"--grad {spec}: {path} has no function '{name}' (it has: "
                            f"{', '.join(mod.functions) or 'none'})")
        pub = f"grad_{name}"
        if pub in public and pub not in grad_keys:
            raise UserError(f"--grad {spec}: the file already has a function named '{pub}'")
        d = dp.grad(getattr(mod, name), wrt=wrt)
        programs.append(d.program)
        grad_keys[pub] = (d.program, d.key)
    # one program holding everything: derived programs repeat the base functions
    funcs = dict(base.funcs)
    texts = {}
    for prog in programs[1:]:
        for k, f in prog.funcs.items():
            if k not in funcs:
                funcs[k] = f
            elif funcs[k] is not f:
                if k not in texts:
                    texts[k] = print_func(funcs[k])
                if print_func(f) != texts[k]:
                    from dplang.errors import DPInternalError
                    raise DPInternalError(f"dplang compile: two different functions named {k!r}")
    for pub, (prog, key) in grad_keys.items():
        public[pub] = key
    combined = Program(funcs, dict(public), base.filename)
    gen = generate(combined, list(public.values()), standalone=True, public=public,
                   title=f"module {os.path.basename(path)} (dplang compile; imports only "
                         f"NumPy and Numba)")
    return gen.text


def main(args) -> int:
    UserError = CompileUsageError
    out = args.output
    if out is None:
        stem, _ = os.path.splitext(args.file)
        out = stem + ".py"
    if os.path.abspath(out) == os.path.abspath(args.file):
        raise UserError(f"the output {out} would overwrite the input")
    text = build(args.file, args.grad or ())
    tmp = out + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}")
    print(f"wrote {out}", file=sys.stderr)
    return 0
