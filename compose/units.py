"""Durations and byte sizes, as the compose spec writes them.

Durations are Go's ``time.ParseDuration`` syntax (``1m30s``, ``10s``,
``500ms``, ``1.5h``), because that is what Docker parses and what people copy
between files; a bare number means seconds, as in older compose files. Byte
sizes are ``{amount}{b|k|m|g}`` (``kb``/``mb``/``gb`` too), powers of 1024.
Both also have a canonical printed form, so ``stack config`` is stable.
"""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``; raises ``ValueError`` with a message for people."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s or 1m30s, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    sign = 1.0
    if text[:1] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"expected a duration like 10s, 1m30s or 500ms, got {value!r}")
    if sign < 0 and total:
        raise ValueError("a duration cannot be negative")
    return total


def format_duration(seconds: float) -> str:
    """The canonical spelling: ``1h2m3s``, ``1m30s``, ``500ms``, ``0s``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    out = ""
    hours, ns = divmod(ns, 3600 * 10**9)
    minutes, ns = divmod(ns, 60 * 10**9)
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if ns:
        if ns % 10**9 == 0:
            out += f"{ns // 10**9}s"
        elif not out and ns < 10**9:
            if ns % 10**6 == 0:
                out += f"{ns // 10**6}ms"
            elif ns % 10**3 == 0:
                out += f"{ns // 10**3}us"
            else:
                out += f"{ns}ns"
        else:
            out += f"{ns / 1e9:.9f}".rstrip("0") + "s"
    return out


def parse_bytes(value: str | int | float) -> int:
    """Bytes in ``value`` (``512m``, ``1g``, ``100k``, ``1.5gb``, ``1024``)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 512m or 1g, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    match = _SIZE.match(value)
    if not match or (match.group(3).lower().startswith("i") and not match.group(2)):
        raise ValueError(f"expected a size like 512m, 1g or 100k, got {value!r}")
    amount = float(match.group(1)) * 1024 ** _SIZE_POWER[match.group(2).lower()]
    return int(amount)


def format_bytes(size: int) -> str:
    """The canonical spelling: the largest unit that divides exactly (``1g``, ``512m``)."""
    for unit, power in (("g", 3), ("m", 2), ("k", 1)):
        if size and size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return f"{size}b"
