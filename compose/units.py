"""Durations and byte sizes, as the compose spec writes them.

Durations are Go's ``time.ParseDuration`` syntax (``1m30s``, ``10s``,
``500ms``, ``1.5h``), because that is what Docker parses and what people copy
between files; a bare number means seconds, as in older compose files. Byte
sizes are ``{amount}{b|k|m|g}`` (``kb``/``mb``/``gb`` too), powers of 1024.
Both also have a canonical printed form, so ``stack config`` is stable.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Decimal

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


MAX_NS = 2**63 - 1
"""Docker keeps durations as Go's ``time.Duration``: int64 nanoseconds, at most
2562047h47m16.854775807s (292 years). Larger ones are refused, as Go's
``time.ParseDuration`` refuses them, rather than garbled."""

MAX_BYTES = 2**63 - 1
"""Docker's byte sizes are int64 too."""


def parse_duration_ns(value: str | int | float) -> int:
    """Exact nanoseconds in ``value``; raises ``ValueError`` with a message for people.

    Computed in decimal, not binary floating point, so ``1.1s`` is 1100000000
    ns and a value near the int64 limit is not rounded into a different one.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s or 1m30s, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite duration, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _bounded_ns(Decimal(str(value)) * 10**9, value)
    text = value.strip()
    if len(text) > 64:
        raise ValueError(f"expected a duration like 10s, 1m30s or 500ms, got {value[:64]!r}...")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return _bounded_ns(Decimal(text) * 10**9, value)
    negative = text[:1] == "-"
    if text[:1] in "+-":
        text = text[1:]
    pos, total = 0, Decimal(0)
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"expected a duration like 10s, 1m30s or 500ms, got {value!r}")
    if negative and total:
        raise ValueError("a duration cannot be negative")
    return _bounded_ns(total, value)


def _bounded_ns(ns: Decimal, value: object) -> int:
    if ns > MAX_NS:
        raise ValueError(f"duration {value!r} is too large: at most {format_duration_ns(MAX_NS)} "
                         "(Docker's int64 nanoseconds)")
    return int(ns.to_integral_value(ROUND_HALF_EVEN))


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value`` (see :func:`parse_duration_ns`)."""
    return parse_duration_ns(value) / 1e9


def format_duration(seconds: float) -> str:
    """The canonical spelling: ``1h2m3s``, ``1m30s``, ``500ms``, ``0s``."""
    if not math.isfinite(seconds) or not 0 <= seconds * 1e9 <= MAX_NS:
        raise ValueError(f"not a duration Docker can hold: {seconds!r} seconds")
    return format_duration_ns(round(seconds * 1e9))


def format_duration_ns(ns: int) -> str:
    """:func:`format_duration` from exact nanoseconds."""
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
            whole, frac = divmod(ns, 10**9)
            out += f"{whole}.{frac:09d}".rstrip("0") + "s"
    return out


def parse_bytes(value: str | int | float) -> int:
    """Bytes in ``value`` (``512m``, ``1g``, ``100k``, ``1.5gb``, ``1024``), at most int64."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 512m or 1g, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite size, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a size cannot be negative")
        amount = Decimal(str(value))
    else:
        match = _SIZE.match(value) if len(value) <= 64 else None
        if not match or (match.group(3).lower().startswith("i") and not match.group(2)):
            raise ValueError(f"expected a size like 512m, 1g or 100k, got {value[:64]!r}")
        amount = Decimal(match.group(1)) * 1024 ** _SIZE_POWER[match.group(2).lower()]
    if amount > MAX_BYTES:
        raise ValueError(f"size {value!r} is too large: at most {MAX_BYTES} bytes (Docker's int64)")
    return int(amount)


def format_bytes(size: int) -> str:
    """The canonical spelling: the largest unit that divides exactly (``1g``, ``512m``)."""
    for unit, power in (("g", 3), ("m", 2), ("k", 1)):
        if size and size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return f"{size}b"
