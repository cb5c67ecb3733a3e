"""The ``dplang`` command: check, run, ir, compile (SPEC section 4).

Exit codes: 0 success, 1 a user error (message on stderr, no traceback), 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from dplang.errors import DPError


class UserError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dplang", description="A compiler for differentiable "
                                                           "programs.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="parse and type-check a .dp file")
    c.add_argument("file")

    r = sub.add_parser("run", help="run a function of a .dp file and print its result")
    r.add_argument("file")
    r.add_argument("func")
    r.add_argument("args", nargs="*", metavar="ARG",
                   help="a number, a JSON array, or a path to a .npy file")
    r.add_argument("--backend", default=None, choices=("interp", "cpu", "cuda"))

    i = sub.add_parser("ir", help="print the IR of a .dp file")
    i.add_argument("file")
    i.add_argument("func", nargs="?")
    i.add_argument("--stage", default="ssa",
                   choices=("parsed", "ssa", "smoothed", "ad", "optimized"))
    g = i.add_mutually_exclusive_group()
    g.add_argument("--grad", action="store_true", help="show the gradient's IR")
    g.add_argument("--jvp", action="store_true", help="show the forward derivative's IR")
    i.add_argument("--smooth", metavar="REG", choices=("entropy", "l2"),
                   help="smooth the function first")
    i.add_argument("--format", default="text", choices=("text", "dot"))

    k = sub.add_parser("compile", help="write a standalone Python/Numba module")
    k.add_argument("file")
    k.add_argument("-o", "--output", default=None)
    k.add_argument("--grad", action="append", default=[], metavar="FUNC[:WRT]")
    return p


def parse_arg(text: str):
    """A command-line argument: a number, a JSON array, or a .npy path."""
    if text.endswith(".npy"):
        if not os.path.isfile(text):
            raise UserError(f"no such file: {text}")
        try:
            return np.load(text, allow_pickle=False)
        except Exception as exc:
            raise UserError(f"cannot read {text}: {exc}")
    if text in ("true", "True"):
        return True
    if text in ("false", "False"):
        return False
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"cannot read argument {text!r}: expected a number, a JSON array or "
                        f"a .npy file")
    if isinstance(v, list):
        try:
            arr = np.array(v)
        except ValueError:
            raise UserError(f"argument {text!r} is not a rectangular array")
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise UserError(f"argument {text!r} is not an array of numbers")
        return arr
    if isinstance(v, (int, float)):
        return v
    raise UserError(f"cannot read argument {text!r}: expected a number, a JSON array or a "
                    f".npy file")


def format_result(r) -> str:
    if isinstance(r, tuple):
        return "\n".join(format_result(x) for x in r)
    if isinstance(r, np.ndarray):
        return json.dumps(r.tolist())
    if isinstance(r, float):
        return repr(r)
    return str(r)


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}")


def _func(mod, name, path):
    if name not in mod.functions:
        raise UserError(f"{path} has no function '{name}' (it has: "
                        f"{', '.join(mod.functions) or 'none'})")
    return getattr(mod, name)


def main(argv=None) -> int:
    import dplang.api as dp
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "check":
            dp.compile(_read(args.file), filename=args.file)
            return 0
        if args.cmd == "run":
            mod = dp.compile(_read(args.file), filename=args.file, backend=args.backend)
            f = _func(mod, args.func, args.file)
            vals = [parse_arg(a) for a in args.args]
            if len(vals) != len(f.param_names):
                raise UserError(f"{args.func} takes {len(f.param_names)} argument(s) "
                                f"({', '.join(f.param_names)}), got {len(vals)}")
            print(format_result(f(*vals)))
            return 0
        if args.cmd == "ir":
            return _cmd_ir(dp, args)
        if args.cmd == "compile":
            from dplang import compile_cmd
            return compile_cmd.main(args)
    except DPError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"dplang: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, NotImplementedError) as exc:
        print(f"dplang: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in dplang: say so, without a traceback
        if os.environ.get("DPLANG_DEBUG"):
            raise
        print(f"dplang: internal error: {type(exc).__name__}: {exc} (set DPLANG_DEBUG=1 for "
              f"a traceback)", file=sys.stderr)
        return 1
    return 0


def _cmd_ir(dp, args) -> int:
    mod = dp.compile(_read(args.file), filename=args.file)
    names = [args.func] if args.func else mod.functions
    f = None
    for n in names:
        _func(mod, n, args.file)
    out = []
    for n in names:
        f = getattr(mod, n)
        if args.smooth:
            f = dp.smooth(f, args.smooth)
        if args.grad:
            f = dp.grad(f)
        elif args.jvp:
            f = dp.jvp(f)
        if args.format == "dot":
            out.append(f.dot(stage=args.stage if args.stage != "parsed" else "ssa"))
        else:
            out.append(f.ir(args.stage))
    print("\n".join(out).rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
