"""User-facing errors.  Every error a user can cause is a ``DPError`` carrying a
source location; ``str(err)`` is ``file:line:col: message`` followed by the source
line and a caret under the column (SPEC section 3)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A source position.  ``line`` and ``col`` are 1-based (as compilers print them)."""
    file: str
    line: int
    col: int
    source_line: str | None = None   # the text of that line, for the caret display

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def short(self) -> str:
        import os
        return f"{os.path.basename(self.file)}:{self.line}"


class DPError(Exception):
    """Base class of every error a dplang user can cause."""

    kind = "error"

    def __init__(self, message: str, loc: Loc | None = None, note: str | None = None):
        if loc is not None and not isinstance(loc, Loc):
            loc = getattr(loc, "loc", None)     # an AST node was passed: use its location
        self.message = message
        self.loc = loc
        self.note = note
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.loc}: {self.message}" if self.loc else self.message
        lines = [head]
        if self.loc is not None and self.loc.source_line is not None:
            text = self.loc.source_line.rstrip("\n")
            lines.append("    " + text)
            # keep tabs so the caret lines up under the column
            pad = "".join(c if c == "\t" else " " for c in text[: max(self.loc.col - 1, 0)])
            lines.append("    " + pad + "^")
        if self.note:
            lines.append("note: " + self.note)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class DPSyntaxError(DPError):
    """The text does not parse."""


class DPUnsupportedError(DPError):
    """Valid Python that the dplang language does not have (lambda, class, ...)."""


class DPTypeError(DPError):
    """Names, types, scopes, decorators, misuse of a transformation."""


class DPNameError(DPTypeError):
    """An unknown or possibly-unassigned name."""


class DPShapeError(DPError):
    """Sizes disagree (at a call, or between operands)."""


class DPConvergenceError(DPError):
    """A numerical method did not converge; the message says what was reached."""


class DPRuntimeError(DPError):
    """A program failed while running (an index out of range, an assert)."""


class DPAssertionError(DPRuntimeError):
    """An ``assert`` in a program failed."""


class DPInternalError(DPError):
    """A bug in dplang itself: names the pass and the op."""


def make_loc(file: str, source: str | None, line: int, col: int) -> Loc:
    text = None
    if source is not None:
        lines = source.splitlines()
        if 1 <= line <= len(lines):
            text = lines[line - 1]
    return Loc(file, line, col, text)
