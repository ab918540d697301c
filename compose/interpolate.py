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
from collections import ChainMap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InterpolationError, KeyPath, Mark, Problem, StackFileError, format_path
from .source import Document, read_text

MAX_ENV_FILE_BYTES = 32 * 1024 * 1024
"""An env file (``.env``, ``--env-file``, a service's ``env_file``) is at most 32 MiB."""

_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_NAME_START = frozenset("_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OPS = (":-", ":?", ":+", "-", "?", "+")
_DOLLAR_OR_BRACE = re.compile(r"[$}]")
_COMMENT = re.compile(r"\s+#")

MAX_DEPTH = 32
"""How deep ``${A:-${B:-...}}`` may nest. Real files nest two or three levels;
the bound keeps hostile input (400 levels) from exhausting Python's stack."""


class _Unset(Exception):
    """Raised for ``${VAR?msg}`` / ``${VAR:?msg}`` when VAR is missing."""


class _Bad(Exception):
    """Raised for malformed substitution syntax."""


def substitute(text: str, env: Mapping[str, str], unset: list[str] | None = None) -> str:
    """Substitute variables in ``text``.

    ``$$`` is a literal ``$``; a ``$`` that starts no variable name (``$2y``,
    ``$.``, a trailing ``$``) is kept as written, as Docker keeps it. Inside a
    default (``${A:-word}``, and the words of ``:?`` and ``:+``) the word is
    interpolated as the compose-spec says (``${B}``, ``$$``), except that a
    bare ``$NAME`` naming an unset variable is kept as written: that is how a
    bcrypt hash (``${PASS:-$2y$05$oZcj...}``) reaches the container intact,
    as it does with ``docker stack deploy``, which takes defaults literally.

    Raises ``ValueError`` (with a message for people) for bad syntax, a
    required variable that is unset, or nesting deeper than ``MAX_DEPTH``.
    Names of variables used but unset (and without a default) are appended
    to ``unset``: they become empty strings.
    """
    try:
        out, pos = _scan(text, 0, env, unset, None, 0)
    except (_Unset, _Bad) as exc:
        raise ValueError(str(exc)) from None
    assert pos == len(text)
    return out


def _scan(text: str, pos: int, env: Mapping[str, str] | None, unset: list[str] | None,
          stop: str | None, depth: int) -> tuple[str, int]:
    """Substitute from ``pos`` until the end, or until an unmatched ``stop`` char.
    With ``env`` None, only find where the text ends (nothing is evaluated).
    ``depth`` > 0 means ``text`` is the word of a default (see :func:`substitute`).
    Plain runs are copied with ``str.find``, so long values cost C speed."""
    out: list[str] = []
    n = len(text)
    while pos < n:
        if stop is None:
            at = text.find("$", pos)
            at = n if at < 0 else at
        else:
            match = _DOLLAR_OR_BRACE.search(text, pos)
            at = match.start() if match else n
        if at > pos:
            out.append(text[pos:at])
            pos = at
        if pos >= n:
            break
        if text[pos] == "}":  # only searched for when stop is "}"
            return "".join(out), pos
        nxt = text[pos + 1] if pos + 1 < n else ""
        if nxt == "$":
            out.append("$")
            pos += 2
        elif nxt == "{":
            value, pos = _braced(text, pos + 2, env, unset, depth + 1)
            out.append(value)
        elif nxt in _NAME_START:
            name_match = _NAME.match(text, pos + 1)
            assert name_match is not None
            name = name_match.group(0)
            if depth and env is not None and name not in env:
                out.append(text[pos:name_match.end()])  # kept as written (see substitute)
            else:
                out.append(_lookup(name, env, unset))
            pos = name_match.end()
        else:
            out.append("$")  # starts no name: kept as written, as Docker does
            pos += 1
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
            unset: list[str] | None, depth: int) -> tuple[str, int]:
    if depth > MAX_DEPTH:
        raise _Bad(f"${{...}} nested {depth} deep; at most {MAX_DEPTH} levels are allowed")
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
    _, end = _scan(text, word_start, None, None, "}", depth)
    raw_word = text[word_start:end]
    pos = end + 1
    if env is None:
        return "", pos
    is_set = name in env
    non_empty = is_set and env[name] != ""
    present = non_empty if op.startswith(":") else is_set

    def word() -> str:
        return _scan(raw_word, 0, env, unset, None, depth)[0]

    if op in (":-", "-"):
        return (env[name] if present else word()), pos
    if op in (":+", "+"):
        return (word() if present else ""), pos
    if not present:  # :? and ?
        message = word()
        raise _Unset(f"required variable {name}: {message}" if message
                     else f"required variable {name} {'is empty' if is_set else 'is not set'}")
    return env[name], pos


def interpolate(doc: Document, env: Mapping[str, str]) -> tuple[list[Problem], list[Problem]]:
    """Substitute in every string of ``doc`` in place; return (problems, warnings)."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    seen_unset: set[str] = set()

    # A string's result depends only on the string: an alias repeats one
    # string object many times, and each distinct text is substituted once.
    memo: dict[str, tuple[str, list[str], str]] = {}

    def walk(value: Any, path: KeyPath) -> Any:
        if isinstance(value, str):
            if "$" not in value:
                return value
            known = memo.get(value)
            if known is None:
                unset: list[str] = []
                try:
                    known = (substitute(value, env, unset), unset, "")
                except ValueError as exc:
                    known = (value, [], str(exc))
                memo[value] = known
            result, unset, error = known
            if error:
                problems.append(Problem(doc.mark(path), format_path(path), error))
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
    text = read_text(path, MAX_ENV_FILE_BYTES, "env file")
    out: dict[str, str] = {}
    problems: list[Problem] = []
    # earlier lines, then ``env`` winning: a view, not a copy a line (that was
    # quadratic: 200,000 lines took 174 s; see bench/compose_env_file.py)
    scope: Mapping[str, str] = ChainMap(dict(env or {}), out)
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
        try:
            if value[:1] == "'" and value.rfind("'") > 0:
                value = value[1:value.rfind("'")]
            elif value[:1] == '"' and value.rfind('"') > 0:
                inner = value[1:value.rfind('"')]
                inner = (inner.replace("\\n", "\n").replace("\\t", "\t")
                         .replace('\\"', '"').replace("\\\\", "\\"))
                value = substitute(inner, scope)
            else:
                value = _COMMENT.split(value, maxsplit=1)[0].rstrip()
                value = substitute(value, scope) if "$" in value else value
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
        if not Path(path).exists():
            raise StackFileError(Problem(Mark(str(path)), "", "no such env file"))
        merged.update(parse_env_file(path, {**merged, **environ}))
    merged.update(environ)
    return merged
