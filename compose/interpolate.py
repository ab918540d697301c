"""``${VAR}`` substitution and ``.env`` files, as the compose spec defines them.

Substitution runs on every string value of each parsed file (keys are left
alone), before files are merged and checked, so a variable can stand in for
any value: ``replicas: ${N:-1}`` is checked as the integer it becomes.
The variables are the ``.env`` beside the first stack file, then any
``--env-file`` (later wins), then the process environment, which wins over
both (Swarm itself reads no env file: moby/moby#29133).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InterpolationError, KeyPath, Mark, Problem, StackFileError, format_path
from .source import Document

_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")


class _Unset(Exception):
    """Raised for ``${VAR?msg}`` / ``${VAR:?msg}`` when VAR is missing."""


class _Bad(Exception):
    """Raised for malformed substitution syntax."""


def substitute(text: str, env: Mapping[str, str], unset: list[str] | None = None) -> str:
    """Substitute variables in ``text``.

    Raises ``ValueError`` (with a message for people) for bad syntax or a
    required variable that is unset. Names of variables used but unset (and
    without a default) are appended to ``unset``: they become empty strings.
    """
    try:
        out, pos = _scan(text, 0, env, unset, stop=None)
    except _Unset as exc:
        raise ValueError(str(exc)) from None
    except _Bad as exc:
        raise ValueError(str(exc)) from None
    assert pos == len(text)
    return out


def _scan(text: str, pos: int, env: Mapping[str, str] | None, unset: list[str] | None,
          stop: str | None) -> tuple[str, int]:
    """Substitute from ``pos`` until the end, or until an unmatched ``stop`` char.
    With ``env`` None, only find where the text ends (nothing is evaluated)."""
    out: list[str] = []
    n = len(text)
    while pos < n:
        ch = text[pos]
        if stop is not None and ch == stop:
            return "".join(out), pos
        if ch != "$":
            out.append(ch)
            pos += 1
            continue
        nxt = text[pos + 1] if pos + 1 < n else ""
        if nxt == "$":
            out.append("$")
            pos += 2
        elif nxt == "{":
            value, pos = _braced(text, pos + 2, env, unset)
            out.append(value)
        else:
            match = _NAME.match(text, pos + 1)
            if not match:
                raise _Bad(f"invalid interpolation at {text[pos:pos + 10]!r}: "
                           "write $$ for a literal $")
            name = match.group(0)
            out.append(_lookup(name, env, unset))
            pos = match.end()
    if stop is not None:
        raise _Bad("missing closing '}' in ${...}")
    return "".join(out), pos


def _lookup(name: str, env: Mapping[str, str] | None, unset: list[str] | None) -> str:
    if env is None:
        return ""
    if name in env:
        return env[name]
    if unset is not None:
        unset.append(name)
    return ""


def _braced(text: str, pos: int, env: Mapping[str, str] | None,
            unset: list[str] | None) -> tuple[str, int]:
    match = _NAME.match(text, pos)
    if not match:
        raise _Bad(f"invalid variable name in ${{...}} at {text[pos - 2:pos + 10]!r}")
    name = match.group(0)
    pos = match.end()
    if text.startswith("}", pos):
        return _lookup(name, env, unset), pos + 1
    op = next((o for o in _OPS if text.startswith(o, pos)), None)
    if op is None:
        raise _Bad(f"invalid ${{{name}...}}: expected }}, :-, -, :?, ?, :+ or +")
    # the word after the operator may itself hold ${...}; substitute it lazily
    # (only when used), but scan it now to find the closing brace
    word_start = pos + len(op)
    _, end = _scan(text, word_start, None, None, stop="}")
    raw_word = text[word_start:end]
    pos = end + 1
    if env is None:
        return "", pos
    is_set = name in env
    non_empty = is_set and env[name] != ""
    present = non_empty if op.startswith(":") else is_set

    def word() -> str:
        return _scan(raw_word, 0, env, unset, stop=None)[0]

    if op in (":-", "-"):
        return (env[name] if present else word()), pos
    if op in (":+", "+"):
        return (word() if present else ""), pos
    if not present:  # :? and ?
        message = word() or ("is not set" if not is_set else "is empty")
        raise _Unset(f"required variable {name} {message}" if not word()
                     else f"required variable {name}: {message}")
    return env[name], pos


def interpolate(doc: Document, env: Mapping[str, str]) -> tuple[list[Problem], list[Problem]]:
    """Substitute in every string of ``doc`` in place; return (problems, warnings)."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    seen_unset: set[str] = set()

    def walk(value: Any, path: KeyPath) -> Any:
        if isinstance(value, str):
            if "$" not in value:
                return value
            unset: list[str] = []
            try:
                result = substitute(value, env, unset)
            except ValueError as exc:
                problems.append(Problem(doc.mark(path), format_path(path), str(exc)))
                return value
            for name in unset:
                if name not in seen_unset:
                    seen_unset.add(name)
                    warnings.append(Problem(doc.mark(path), format_path(path),
                                            f"variable {name} is not set; using an empty string"))
            return result
        if isinstance(value, dict):
            for key in value:
                value[key] = walk(value[key], path + (key,))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                value[i] = walk(item, path + (i,))
        return value

    doc.data = walk(doc.data, ())
    return problems, warnings


def parse_env_file(path: str | Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Read a ``.env``-style file: ``KEY=VALUE`` lines, ``export`` allowed, ``#``
    comments, single quotes literal, double quotes with ``\\n``-style escapes;
    unquoted and double-quoted values are interpolated (earlier lines and ``env``)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise StackFileError(Problem(Mark(name), "", f"cannot read env file: {exc.strerror}")) from None
    out: dict[str, str] = {}
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not _NAME.fullmatch(key):
            problems.append(Problem(Mark(name, number, 1), "", f"expected KEY=VALUE, got {raw.strip()!r}"))
            continue
        if not eq:
            if env is not None and key in env:
                out[key] = env[key]
            continue
        value = value.strip()
        scope = {**out, **(env or {})}
        try:
            if value[:1] == "'" and value.rfind("'") > 0:
                value = value[1:value.rfind("'")]
            elif value[:1] == '"' and value.rfind('"') > 0:
                inner = value[1:value.rfind('"')]
                inner = (inner.replace("\\n", "\n").replace("\\t", "\t")
                         .replace('\\"', '"').replace("\\\\", "\\"))
                value = substitute(inner, scope)
            else:
                value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
                value = substitute(value, scope)
        except ValueError as exc:
            problems.append(Problem(Mark(name, number, 1), key, str(exc)))
            continue
        out[key] = value
    if problems:
        raise InterpolationError(problems)
    return out


def build_environment(
    first_file: str | Path,
    env_files: Sequence[str | Path],
    environ: Mapping[str, str],
) -> dict[str, str]:
    """The variables for substitution: .env, then env files, then ``environ`` (wins)."""
    merged: dict[str, str] = {}
    dotenv = Path(first_file).resolve().parent / ".env"
    if dotenv.is_file():
        merged.update(parse_env_file(dotenv, environ))
    for path in env_files:
        if not Path(path).is_file():
            raise StackFileError(Problem(Mark(str(path)), "", "no such env file"))
        merged.update(parse_env_file(path, {**merged, **environ}))
    merged.update(environ)
    return merged
