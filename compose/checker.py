"""The small toolkit every key's check is written with.

A :class:`Checker` walks a (merged, interpolated) document, knows where each
key path came from, and collects problems and warnings instead of stopping at
the first: people fix a stack file faster when they see everything wrong with
it at once. The helpers return :data:`INVALID` after recording a problem, so
a check can go on with the rest of the service.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any, Final

from .errors import KeyPath, Mark, Problem, format_path
from .source import Document


class _Invalid:
    """The value of a key whose check failed (the problem is already recorded)."""

    def __repr__(self) -> str:
        return "INVALID"

    def __bool__(self) -> bool:
        return False


INVALID: Final = _Invalid()

INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
"""Docker's integers are Go int64s (replicas, ports, uid... each has tighter bounds too)."""


def describe(value: Any) -> str:
    """How a value reads in a message: ``'five'``, ``a list``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean `replicas`?)`` when ``word`` looks like a typo of a choice."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean `{close[0]}`?)" if close else ""


class Checker:
    """Collects problems and warnings with the mark of the key path they concern."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def mark(self, path: KeyPath, key: bool = False) -> Mark:
        return self.doc.mark(path, key)

    def error(self, path: KeyPath, message: str, key: bool = False) -> _Invalid:
        self.problems.append(Problem(self.mark(path, key), format_path(path), message))
        return INVALID

    def warn(self, path: KeyPath, message: str, key: bool = True) -> None:
        self.warnings.append(Problem(self.mark(path, key), format_path(path), message))

    # -- scalar types -------------------------------------------------------

    def string(self, path: KeyPath, value: Any, allow_numbers: bool = True) -> str | _Invalid:
        """A string; numbers are accepted and written as YAML would print them."""
        if isinstance(value, str):
            return value
        if allow_numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return self.error(path, f"expected a string, got {describe(value)}")

    def integer(
        self, path: KeyPath, value: Any, minimum: int | None = None, maximum: int | None = None
    ) -> int | _Invalid:
        """An integer; a string of digits also counts (it may come from ``${VAR}``)."""
        out: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            out = value
        elif isinstance(value, str):
            try:
                out = int(value.strip(), 10)
            except ValueError:
                out = None
        if out is None:
            return self.error(path, f"expected an integer, got {describe(value)}")
        if not INT64_MIN <= out <= INT64_MAX:
            return self.error(path, f"{out} is out of range: an integer is at most {INT64_MAX} (int64)")
        if minimum is not None and out < minimum:
            return self.error(path, f"must be at least {minimum}, got {out}")
        if maximum is not None and out > maximum:
            return self.error(path, f"must be at most {maximum}, got {out}")
        return out

    def number(self, path: KeyPath, value: Any, minimum: float | None = None,
               maximum: float | None = None) -> float | _Invalid:
        out: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                out = None
        if out is None or not math.isfinite(out):
            return self.error(path, f"expected a finite number, got {describe(value)}")
        if minimum is not None and out < minimum:
            return self.error(path, f"must be at least {minimum:g}, got {out:g}")
        if maximum is not None and out > maximum:
            return self.error(path, f"must be at most {maximum:g}, got {out:g}")
        return out

    def boolean(self, path: KeyPath, value: Any) -> bool | _Invalid:
        """true/false; the strings "true"/"false" too (they may come from ``${VAR}``)."""
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return self.error(path, f"expected true or false, got {describe(value)}")

    def choice(self, path: KeyPath, value: Any, choices: Iterable[str]) -> str | _Invalid:
        options = list(choices)
        if isinstance(value, str) and value in options:
            return value
        listed = ", ".join(options)
        hint = suggest(value, options) if isinstance(value, str) else ""
        return self.error(path, f"expected one of {listed}, got {describe(value)}{hint}")

    # -- containers ---------------------------------------------------------

    def mapping(self, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
        if isinstance(value, dict):
            return value
        return self.error(path, f"expected a mapping, got {describe(value)}")

    def sequence(self, path: KeyPath, value: Any) -> list[Any] | _Invalid:
        if isinstance(value, list):
            return value
        return self.error(path, f"expected a list, got {describe(value)}")

    def string_list(self, path: KeyPath, value: Any, single: bool = True) -> list[str] | _Invalid:
        """A list of strings; with ``single``, one string stands for a list of one."""
        if single and isinstance(value, str):
            return [value]
        items = self.sequence(path, value)
        if isinstance(items, _Invalid):
            return INVALID
        out: list[str] = []
        ok = True
        for i, item in enumerate(items):
            s = self.string(path + (i,), item)
            if isinstance(s, _Invalid):
                ok = False
            else:
                out.append(s)
        return out if ok else INVALID

    def string_map(self, path: KeyPath, value: Any, separator: str = "=") -> dict[str, str] | _Invalid:
        """``{k: v}`` or ``["k=v", ...]`` (labels, sysctls...): values as strings."""
        out: dict[str, str] = {}
        if isinstance(value, list):
            for i, item in enumerate(value):
                s = self.string(path + (i,), item)
                if isinstance(s, _Invalid):
                    continue
                key, _, val = s.partition(separator)
                out[key] = val
            return out
        m = self.mapping(path, value)
        if isinstance(m, _Invalid):
            return INVALID
        for key, val in m.items():
            if val is None:
                out[key] = ""
            elif isinstance(val, (dict, list)):
                self.error(path + (key,), f"expected a string, got {describe(val)}")
            else:
                out[key] = stringify(val)
        return out

    def known_keys(
        self,
        path: KeyPath,
        value: dict[str, Any],
        known: Iterable[str],
        what: str = "key",
    ) -> None:
        """Unknown keys of a nested mapping are errors (with a did-you-mean)."""
        names = list(known)
        for key in value:
            if key not in names and not key.startswith("x-"):
                self.error(path + (key,), f"unknown {what}{suggest(key, names)}", key=True)


def stringify(value: Any) -> str:
    """A scalar as an environment value or label: ``true``, ``3``, ``1.5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return repr(value)
    return str(value)
