"""Where a stack-file problem is, and the errors that carry such problems.

A person fixing a stack file needs the file, the line, the column and the key
path of *every* problem at once, not a traceback for the first one. So every
check records a :class:`Problem`, and the stage that found problems raises one
:class:`ComposeError` (or a subclass naming the stage) holding all of them.
The CLI prints ``str(error)``: one problem a line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyswarm.errors import UsageError

KeyPath = tuple[str | int, ...]
"""A key path inside a document: ``("services", "web", "ports", 0)``."""


def format_path(path: KeyPath) -> str:
    """``services.web.ports[0]``: how people write a key path."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


@dataclass(frozen=True, order=True)
class Mark:
    """A place in a file; line and column count from 1, as editors do."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if not self.line:
            return self.file
        if not self.column:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a stack file (or a warning about one)."""

    mark: Mark | None
    path: str
    message: str

    def __str__(self) -> str:
        parts = [str(self.mark)] if self.mark else []
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)


MAX_SHOWN = 100
"""Problems printed at most (all are kept in ``problems``): a file with 200,000
bad lines should say so in a screenful, not 200,000 lines."""


class ComposeError(UsageError):
    """A stack file could not be loaded; ``problems`` lists every reason."""

    exit_code = 2  # issue 4: "no traceback, exit 2, nothing deployed"

    def __init__(self, problems: Sequence[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(None, "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = sorted(problems, key=_order)
        lines = [str(p) for p in self.problems[:MAX_SHOWN]]
        if len(self.problems) > MAX_SHOWN:
            lines.append(f"... and {len(self.problems) - MAX_SHOWN} more problems")
        super().__init__("\n".join(lines))


def _order(problem: Problem) -> tuple[str, int, int]:
    m = problem.mark
    return (m.file, m.line, m.column) if m else ("", 0, 0)


class StackFileError(ComposeError):
    """A stack file is missing, unreadable or not valid YAML."""


class InterpolationError(ComposeError):
    """A ``${...}`` could not be substituted (bad syntax, or ``:?`` on an unset variable)."""


class ValidationError(ComposeError):
    """Keys or values that the stack-file format does not allow."""


class StackNameError(ComposeError):
    """The stack name itself breaks Docker's naming rules."""


def raise_if(problems: Iterable[Problem], kind: type[ComposeError]) -> None:
    """Raise ``kind`` with all ``problems``, if there are any."""
    found = list(problems)
    if found:
        raise kind(found)
