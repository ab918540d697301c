"""Tables for people, JSON arrays for scripts: one printer for every list."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO


def print_rows(rows: list[dict[str, Any]], fmt: str, columns: Sequence[tuple[str, str]],
               drop: Iterable[str] = (), out: TextIO | None = None) -> None:
    """Print ``rows`` as aligned columns (like docker's) or as a JSON array;
    ``drop`` names display-only keys that JSON output leaves out."""
    out = out or sys.stdout
    if fmt == "json":
        hidden = set(drop)
        json.dump([{k: v for k, v in row.items() if k not in hidden} for row in rows], out, indent=2)
        out.write("\n")
        return
    cells = [[h for h, _ in columns]] + [["" if row.get(k) is None else str(row.get(k)) for _, k in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        out.write("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def since(ts: float, now: float | None = None) -> str:
    """``5 seconds ago``, as docker prints a task's state age."""
    seconds = max(0, int((now or time.time()) - ts))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "less than a second ago" if seconds < 1 else f"{seconds} second{'s' if seconds != 1 else ''} ago"
