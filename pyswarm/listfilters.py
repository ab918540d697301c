"""``--filter KEY=VALUE`` for the lists, with Docker's keys and matching.

As in Docker, values of one key are alternatives (any may match) and
different keys must all match; ``id`` and ``name`` match a prefix (names of
nodes match their hostname), labels match ``KEY`` (present) or
``KEY=VALUE``. A key the list does not know is an error naming the keys it
does know. Pure: the rows are those the manager answered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyswarm.errors import UsageError

Filters = dict[str, list[str]]
Row = Mapping[str, Any]


def parse(items: Sequence[str] | None, known: Sequence[str]) -> Filters:
    out: Filters = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise UsageError(f"invalid filter {item!r}: expected KEY=VALUE")
        if key not in known:
            raise UsageError(f"invalid filter {key!r}: this list filters on {', '.join(known)}")
        out.setdefault(key, []).append(value)
    return out


def _prefix(value: str, *candidates: str) -> bool:
    return any(c.startswith(value) for c in candidates if c)


def _labels(wanted: str, labels: Mapping[str, str]) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _apply(rows: list[dict[str, Any]], filters: Filters,
           tests: Mapping[str, Callable[[str, Row], bool]]) -> list[dict[str, Any]]:
    return [r for r in rows if all(any(tests[k](v, r) for v in values) for k, values in filters.items())]


TASK_KEYS = ("id", "name", "node", "desired-state")


def tasks(rows: list[dict[str, Any]], filters: Filters) -> list[dict[str, Any]]:
    """``service ps`` / ``stack ps`` / ``node ps``: desired-state running,
    shutdown or accepted (Docker's ``accepted`` also means ready)."""
    for state in filters.get("desired-state", []):
        if state not in ("running", "shutdown", "accepted"):
            raise UsageError(f"invalid filter desired-state={state!r}: use running, shutdown or accepted")
    tests: dict[str, Callable[[str, Row], bool]] = {
        "id": lambda v, r: _prefix(v, r["id"]),
        "name": lambda v, r: _prefix(v, r["name"], r.get("service", "")),
        "node": lambda v, r: v in (r.get("node"), r.get("node_id")) or (len(v) >= 3 and _prefix(v, r.get("node_id", ""))),
        "desired-state": lambda v, r: r["desired_state"] == v or (v == "accepted" and r["desired_state"] == "ready"),
    }
    return _apply(rows, filters, tests)


NODE_KEYS = ("id", "name", "role", "membership", "label", "node.label")


def nodes(rows: list[dict[str, Any]], filters: Filters) -> list[dict[str, Any]]:
    tests: dict[str, Callable[[str, Row], bool]] = {
        "id": lambda v, r: _prefix(v, r["id"]),
        "name": lambda v, r: _prefix(v, r["hostname"]),
        "role": lambda v, r: r["role"] == v,
        "membership": lambda v, r: v == "accepted",
        "label": lambda v, r: _labels(v, r.get("engine_labels") or {}),
        "node.label": lambda v, r: _labels(v, r.get("labels") or {}),
    }
    return _apply(rows, filters, tests)


SERVICE_KEYS = ("id", "name", "mode", "label")


def services(rows: list[dict[str, Any]], filters: Filters) -> list[dict[str, Any]]:
    tests: dict[str, Callable[[str, Row], bool]] = {
        "id": lambda v, r: _prefix(v, r["id"]),
        "name": lambda v, r: _prefix(v, r["name"]),
        "mode": lambda v, r: r["mode"] == v,
        "label": lambda v, r: _labels(v, r.get("labels") or {}),
    }
    return _apply(rows, filters, tests)


STACK_KEYS = ("name",)


def stacks(rows: list[dict[str, Any]], filters: Filters) -> list[dict[str, Any]]:
    return _apply(rows, filters, {"name": lambda v, r: _prefix(v, r["name"])})


__all__ = ["NODE_KEYS", "SERVICE_KEYS", "STACK_KEYS", "TASK_KEYS", "nodes", "parse", "services", "stacks", "tasks"]
