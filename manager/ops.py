"""Store operations, built by typed constructors and checked against the model.

A transaction is a list of operations (the format is manager/store.py's):
these constructors are the way to build them, and :func:`check` is what the
store's apply function runs on every operation of every transaction, on
every replica, before it applies any. A misspelt field, a field the model
does not have, or a task ``state`` written by ``patch`` (which would bypass
the forward-only rule that ``advance`` enforces) aborts the whole
transaction, so no component can write what the model cannot read back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pyswarm.models import KINDS, Model, TaskState

Op = list[Any]

# beside the model's objects the store keeps unique keys: subnet claims
# (subnet -> {"node_id"}) and secret/config names (name -> {"id"})
FIELDS: dict[str, frozenset[str]] = {
    **{kind: frozenset(f.name for f in dataclasses.fields(cls)) for kind, cls in KINDS.items()},  # type: ignore[arg-type]
    "subnet": frozenset({"node_id"}),
    "secret-name": frozenset({"id"}),
    "config-name": frozenset({"id"}),
}
_KIND_OF: dict[type, str] = {cls: kind for kind, cls in KINDS.items()}
# written only by the apply function's own rules, never patched
_PROTECTED: dict[str, frozenset[str]] = {"task": frozenset({"id", "state"})}


class InvalidOperation(ValueError):
    """An operation names a kind or field the model does not have."""


def put(obj: Model, kind: str | None = None) -> Op:
    """Create or replace ``obj`` (its kind from its class)."""
    kind = kind or _KIND_OF[type(obj)]
    return ["put", kind, getattr(obj, "id"), obj.to_dict()]


def put_raw(kind: str, oid: str, data: dict[str, Any]) -> Op:
    """Create or replace an object given as its dict (subnet claims, copies)."""
    return check(["put", kind, oid, data])


def patch(kind: str, oid: str, **fields: Any) -> Op:
    """Merge ``fields`` into an existing object (nothing if it is gone)."""
    return check(["patch", kind, oid, fields])


def advance(task_id: str, state: TaskState | None, **fields: Any) -> Op:
    """Move a task's state forward (never back; terminal is final), with fields."""
    return check(["advance", task_id, state.value if state is not None else None, fields])


def delete(kind: str, oid: str) -> Op:
    return check(["delete", kind, oid])


def expect(kind: str, oid: str, field: str, value: Any) -> Op:
    """Precondition: abort the transaction unless ``field`` of the object is ``value``."""
    return check(["expect", kind, oid, field, value])


def expect_absent(kind: str, oid: str) -> Op:
    """Precondition: abort the transaction if the object exists."""
    return check(["expect", kind, oid, None, None])


def check(op: Any) -> Op:
    """``op`` as it is, or :class:`InvalidOperation` saying what is wrong with it."""
    if not isinstance(op, list) or not op or not isinstance(op[0], str):
        raise InvalidOperation(f"not an operation: {str(op)[:80]}")
    verb = op[0]
    shape = {"put": 4, "patch": 4, "advance": 4, "delete": 3, "expect": 5}.get(verb)
    if shape is None:
        raise InvalidOperation(f"unknown operation {verb!r}")
    if len(op) != shape:
        raise InvalidOperation(f"{verb} takes {shape - 1} arguments, got {len(op) - 1}")
    if verb == "advance":
        _, _task_id, state, fields = op
        if state is not None and state not in TaskState._value2member_map_:
            raise InvalidOperation(f"advance: unknown task state {state!r}")
        _fields("task", fields, verb)
        return op
    kind = op[1]
    if kind not in FIELDS:
        raise InvalidOperation(f"{verb}: unknown kind {kind!r}")
    if verb == "put":
        if not isinstance(op[3], dict):
            raise InvalidOperation(f"put {kind}: the object is not a mapping")
        unknown = set(op[3]) - FIELDS[kind]
        if unknown:
            raise InvalidOperation(f"put {kind}: unknown field {sorted(unknown)[0]!r}")
    elif verb == "patch":
        _fields(kind, op[3], verb)
    elif verb == "expect":
        if op[3] is not None and op[3] not in FIELDS[kind]:
            raise InvalidOperation(f"expect {kind}: unknown field {op[3]!r}")
    return op


def _fields(kind: str, fields: Any, verb: str) -> None:
    if not isinstance(fields, dict):
        raise InvalidOperation(f"{verb} {kind}: the fields are not a mapping")
    unknown = set(fields) - FIELDS[kind]
    if unknown:
        raise InvalidOperation(f"{verb} {kind}: unknown field {sorted(unknown)[0]!r}")
    protected = set(fields) & _PROTECTED.get(kind, frozenset())
    if protected:
        field = sorted(protected)[0]
        why = " (a task's state moves only forward, by advance)" if field == "state" else ""
        raise InvalidOperation(f"{verb} {kind}: field {field!r} cannot be written{why}")
