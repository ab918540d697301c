"""Typed parsing of what crosses a process boundary.

An API request, a join, a message between the dispatcher and an agent: each
arrives as decoded JSON from a process that may be buggy, old or hostile.
:func:`parse` turns it into a dataclass instance or raises
:class:`BadRequest` naming the field (``services[0].replicas``) and what was
wrong with it, before any handler or the store sees it. The dataclass's
annotations are the schema; a field's ``metadata=rule(...)`` adds ranges,
lengths and choices. Unknown fields are refused (a misspelt field is a bug
on the sender's side, not something to ignore), missing required ones are
named, and every string, list and mapping is bounded, so one request cannot
make the manager build something huge.

One checker for every boundary keeps the rules in one place: a type the
checker does not know is a programming error (``TypeError`` at the first
parse), never a silently accepted value.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, TypeVar, Union

from pyswarm.errors import UsageError

T = TypeVar("T")

MAX_STR = 1 << 20  # 1 MiB: secrets and configs (500 KiB of data, base64) fit
MAX_ITEMS = 100_000
MAX_DEPTH = 32


class BadRequest(UsageError):
    """A field of a request or message has the wrong type, range or size."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


@dataclass(frozen=True)
class Rule:
    """Limits beyond the type: numeric range, length, choices, pattern."""

    min: float | None = None
    max: float | None = None
    max_len: int | None = None  # characters of a str, items of a list or mapping
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None  # a str must match it whole


def rule(**limits: Any) -> dict[str, Rule]:
    """``field(metadata=rule(min=0))``: the limits :func:`parse` enforces."""
    if "choices" in limits:
        limits["choices"] = tuple(limits["choices"])
    return {"wire": Rule(**limits)}


_NO_RULE = Rule()
_HINTS: dict[type, dict[str, Any]] = {}


def parse(cls: type[T], data: Any, where: str = "") -> T:
    """``data`` (decoded JSON) as a ``cls``, or :class:`BadRequest`."""
    return typing.cast(T, _value(cls, data, where, _NO_RULE, 0))


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _value(tp: Any, value: Any, path: str, limits: Rule, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise BadRequest(path, f"nested deeper than {MAX_DEPTH} levels")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"wire.parse: unsupported union {tp!r}")
        return _value(rest[0], value, path, limits, depth)
    if tp is Any:
        _check_json(value, path, depth)
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise BadRequest(path, f"expected one of {', '.join(map(repr, allowed))}, got {_describe(value)}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        return _sequence(tp, origin, value, path, limits, depth)
    if origin is dict or tp is dict:
        return _mapping(tp, value, path, limits, depth)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, path, depth)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            names = ", ".join(repr(m.value) for m in tp)
            raise BadRequest(path, f"expected one of {names}, got {_describe(value)}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise BadRequest(path, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(path, f"expected an integer, got {_describe(value)}")
        _range(value, path, limits)
        _choice(value, path, limits)
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadRequest(path, f"expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise BadRequest(path, f"expected a finite number, got {value!r}")
        _range(value, path, limits)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise BadRequest(path, f"expected a string, got {_describe(value)}")
        most = limits.max_len if limits.max_len is not None else MAX_STR
        if len(value) > most:
            raise BadRequest(path, f"longer than {most} characters ({len(value)})")
        if limits.pattern is not None and not re.fullmatch(limits.pattern, value):
            raise BadRequest(path, f"{value[:60]!r} is not valid here (expected {limits.pattern})")
        _choice(value, path, limits)
        return value
    raise TypeError(f"wire.parse: unsupported type {tp!r} at {path or 'top level'}")


def _range(value: float, path: str, limits: Rule) -> None:
    if limits.min is not None and value < limits.min:
        raise BadRequest(path, f"{value} is below the minimum {limits.min:g}")
    if limits.max is not None and value > limits.max:
        raise BadRequest(path, f"{value} is above the maximum {limits.max:g}")


def _choice(value: Any, path: str, limits: Rule) -> None:
    if limits.choices is not None and value not in limits.choices:
        raise BadRequest(path, f"expected one of {', '.join(map(repr, limits.choices))}, got {_describe(value)}")


def _sequence(tp: Any, origin: Any, value: Any, path: str, limits: Rule, depth: int) -> Any:
    if not isinstance(value, list):
        raise BadRequest(path, f"expected a list, got {_describe(value)}")
    most = limits.max_len if limits.max_len is not None else MAX_ITEMS
    if len(value) > most:
        raise BadRequest(path, f"more than {most} items ({len(value)})")
    args = typing.get_args(tp)
    item = args[0] if args else Any
    if item is str and depth + 1 <= MAX_DEPTH:
        # the common big case (a DNS name's 100,000 addresses): two passes
        # that run in C (the types, the longest); only when an item fails
        # does each go the general way, for the error that names it. Item by
        # item it was 1.4 million calls for one DNS update.
        if not (set(map(type, value)) <= {str} and max(map(len, value), default=0) <= MAX_STR):
            for i, v in enumerate(value):
                _value(str, v, _join(path, i), _NO_RULE, depth + 1)
        out = list(value)
    else:
        out = [_value(item, v, _join(path, i), _NO_RULE, depth + 1) for i, v in enumerate(value)]
    return tuple(out) if (origin or tp) is tuple else out


def _mapping(tp: Any, value: Any, path: str, limits: Rule, depth: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(path, f"expected a mapping, got {_describe(value)}")
    most = limits.max_len if limits.max_len is not None else MAX_ITEMS
    if len(value) > most:
        raise BadRequest(path, f"more than {most} entries ({len(value)})")
    args = typing.get_args(tp)
    item = args[1] if len(args) == 2 else Any
    out: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str) or len(key) > 4096:
            raise BadRequest(path, f"key {str(key)[:40]!r} is not a string of at most 4096 characters")
        out[key] = _value(item, v, _join(path, key), _NO_RULE, depth + 1)
    return out


def _dataclass(cls: type, value: Any, path: str, depth: int) -> Any:
    if not isinstance(value, Mapping):
        raise BadRequest(path, f"expected a mapping, got {_describe(value)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        where = _join(path, str(unknown[0]))
        raise BadRequest(where, f"unknown field (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BadRequest(_join(path, name), "missing (required)")
            continue
        limits = f.metadata.get("wire", _NO_RULE)
        kwargs[name] = _value(hints[name], value[name], _join(path, name), limits, depth + 1)
    return cls(**kwargs)


def _check_json(value: Any, path: str, depth: int) -> None:
    """A free-form value: JSON types only, bounded in depth and size."""
    if depth > MAX_DEPTH:
        raise BadRequest(path, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(path, f"expected a finite number, got {value!r}")
        return
    if isinstance(value, str):
        if len(value) > MAX_STR:
            raise BadRequest(path, f"longer than {MAX_STR} characters ({len(value)})")
        return
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise BadRequest(path, f"more than {MAX_ITEMS} items ({len(value)})")
        for i, v in enumerate(value):
            _check_json(v, _join(path, i), depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise BadRequest(path, f"more than {MAX_ITEMS} entries ({len(value)})")
        for k, v in value.items():
            if not isinstance(k, str):
                raise BadRequest(path, f"key {k!r} is not a string")
            _check_json(v, _join(path, k), depth + 1)
        return
    raise BadRequest(path, f"{type(value).__name__} is not a JSON value")
