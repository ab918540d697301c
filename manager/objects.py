"""Secrets and configs in the store: create, list, remove, deliver.

Both are small named blobs with Swarm's rules: the data is immutable (a new
version is a new name), a name in use by a service cannot be removed, and a
stack's own objects (label ``com.docker.stack.namespace``) are created by
``stack deploy`` and removed by ``stack rm``. The difference is who may see
the data: a config's ``inspect`` shows it, a secret's never does; only the
dispatcher reads a secret's data, to put it in the assignments of the nodes
that run a task using it (:func:`task_files`).

Functions here read a :class:`Snapshot` and return store operations or
answers; :mod:`.api` wires them to method names and commits.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pyswarm.compose.objects import MAX_OBJECT_BYTES
from pyswarm.errors import NotFoundError, UsageError
from pyswarm.models import Config, ContainerSpec, Secret, Service, new_id

from .sealing import reveal
from .store import Op, Snapshot

KINDS = ("secret", "config")
STACK_LABEL = "com.docker.stack.namespace"
MAX_SIZE = MAX_OBJECT_BYTES  # Swarm's limit for secrets and configs: 500 KiB
_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]*[a-zA-Z0-9])?$")
_MODEL: dict[str, type[Secret] | type[Config]] = {"secret": Secret, "config": Config}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UsageError(f"unknown object kind {kind!r}")


def objects(snap: Snapshot, kind: str) -> list[Secret | Config]:
    """Every secret (or config) in the store, by name."""
    _check_kind(kind)
    model = _MODEL[kind]
    return sorted((model.from_dict(d) for d in snap.raw.get(kind, {}).values()), key=lambda o: o.name)


def by_name(snap: Snapshot, kind: str) -> dict[str, Secret | Config]:
    return {o.name: o for o in objects(snap, kind)}


def find(snap: Snapshot, kind: str, ref: str) -> Secret | Config:
    """By name, id, or unique id prefix."""
    objs = objects(snap, kind)
    for o in objs:
        if ref in (o.name, o.id):
            return o
    matches = [o for o in objs if o.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    raise NotFoundError(f"{kind} {ref} not found")


def decode_data(kind: str, name: str, data: Any) -> bytes:
    """Base64 from the wire, within Swarm's size limit (checked on the text
    before decoding it, and on the bytes after)."""
    text = str(data)
    too_big = (f"{kind} {name}: larger than Swarm's 500 KB limit for a {kind} "
               f"({MAX_SIZE:,} bytes)")
    if len(text) > 4 * -(-MAX_SIZE // 3):
        raise UsageError(too_big)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{kind} {name}: data is not valid base64") from None
    if len(raw) > MAX_SIZE:
        raise UsageError(too_big)
    return raw


def check_name(kind: str, name: str) -> None:
    if not _NAME.match(name) or len(name) > 64:
        raise UsageError(f"invalid {kind} name {name!r}: use letters, digits, '-', '_' and '.', "
                         "starting and ending with a letter or digit, at most 64 characters")


def create_ops(snap: Snapshot, kind: str, name: str, data: bytes,
               labels: Mapping[str, str] | None = None) -> tuple[list[Op], str]:
    """Operations that create a new object; an existing name is an error."""
    _check_kind(kind)
    check_name(kind, name)
    if name in by_name(snap, kind):
        raise UsageError(f"{kind} {name} already exists; {kind}s cannot change: "
                         f"create one with a new name, or remove it first")
    now = time.time()
    obj = _MODEL[kind](id=new_id(), name=name, data=base64.b64encode(data).decode(),
                       labels=dict(labels or {}), created_at=now, updated_at=now)
    # the name is the unique key: two creates racing cannot both win
    return [["expect", f"{kind}-name", name, None, None], ["put", f"{kind}-name", name, {"id": obj.id}],
            ["put", kind, obj.id, obj.to_dict()]], obj.id


def delete_ops(obj: Secret | Config, kind: str) -> list[Op]:
    return [["delete", kind, obj.id], ["delete", f"{kind}-name", obj.name]]


def users(services: Iterable[Service], kind: str, name: str) -> list[str]:
    """Names of the services whose tasks mount ``name``."""
    key = kind + "s"
    return sorted(s.name for s in services
                  if any(ref.get("name") == name for ref in s.spec.container.options.get(key, [])))


def row(obj: Secret | Config, *, with_data: bool = False) -> dict[str, Any]:
    """What ``ls``/``inspect`` show: never a secret's data."""
    out: dict[str, Any] = {"id": obj.id, "name": obj.name, "labels": dict(obj.labels),
                           "created_at": obj.created_at, "updated_at": obj.updated_at,
                           "size": len(base64.b64decode(reveal(obj.data))) if obj.data else 0}
    if with_data:
        out["data"] = obj.data
    return out


def stack_ops(snap: Snapshot, stack: str, wanted: Mapping[str, list[dict[str, Any]]],
              specs: Iterable[Any]) -> tuple[list[Op], list[dict[str, Any]]]:
    """What ``stack deploy`` does with the stack's secrets and configs.

    ``wanted[kind]`` lists ``{"name", "external", "data" (base64), "labels"}``.
    A defined object is created when missing and left alone when its data is
    the same; different data is an error (objects are immutable, as in
    Swarm). An external one must exist. Every reference of every service
    must resolve. Raises ``UsageError`` naming the object before anything
    is committed.
    """
    ops: list[Op] = []
    report: list[dict[str, Any]] = []
    problems: list[str] = []
    for kind in KINDS:
        existing = by_name(snap, kind)
        known = set(existing)
        for item in wanted.get(kind + "s", []):
            name = str(item["name"])
            if item.get("external"):
                if name not in existing:
                    problems.append(f"external {kind} {name} not found: create it first "
                                    f"with `pyswarm {kind} create {name} FILE`")
                continue
            data = decode_data(kind, name, item.get("data", ""))
            old = existing.get(name)
            if old is None:
                labels = {str(k): str(v) for k, v in dict(item.get("labels") or {}).items()}
                labels[STACK_LABEL] = stack
                new_ops, oid = create_ops(snap, kind, name, data, labels)
                ops.extend(new_ops)
                known.add(name)
                report.append({kind: name, "action": "created", "id": oid})
            elif base64.b64decode(reveal(old.data)) != data:
                problems.append(f"{kind} {name} exists with other content; {kind}s cannot change: "
                                f"give the new version another name (`name: {name}_v2`), "
                                "or remove the stack first")
        for spec in specs:
            container: ContainerSpec = spec.container
            for ref in container.options.get(kind + "s", []):
                ref_name = str(ref.get("name") or ref.get("source"))
                if ref_name not in known:
                    problems.append(f"service {spec.name}: {kind} {ref_name} not found")
    if problems:
        raise UsageError("; ".join(dict.fromkeys(problems)))
    return ops, report


def stack_rm_ops(snap: Snapshot, stack: str) -> list[Op]:
    """Delete the objects ``stack deploy`` created for ``stack``."""
    ops: list[Op] = []
    for kind in KINDS:
        for obj in objects(snap, kind):
            if obj.labels.get(STACK_LABEL) == stack:
                ops.extend(delete_ops(obj, kind))
    return ops


def task_files(snap: Snapshot, spec: ContainerSpec) -> dict[str, list[dict[str, Any]]]:
    """The secret and config files one task needs, with their data, for its
    node's assignment. A reference whose object is gone is left out (the
    API refuses to remove objects in use, so that is a race with ``rm``)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        refs = spec.options.get(kind + "s") or []
        if not refs:
            continue
        stored = by_name(snap, kind)
        files = []
        for ref in refs:
            obj = stored.get(str(ref.get("name") or ref.get("source")))
            if obj is None:
                continue
            files.append({
                "name": obj.name, "target": file_target(kind, ref),
                "uid": str(ref.get("uid", "0")), "gid": str(ref.get("gid", "0")),
                "mode": int(ref.get("mode", 0o444)), "data": reveal(obj.data),
            })
        out[kind + "s"] = files
    return out


def file_target(kind: str, ref: Mapping[str, Any]) -> str:
    """Where the file appears in the container: secrets under /run/secrets
    (an absolute ``target`` as given), configs at ``target`` or ``/SOURCE``."""
    target = str(ref.get("target") or ref.get("source") or "")
    if target.startswith("/"):
        return target
    return f"/run/secrets/{target}" if kind == "secret" else f"/{target}"


__all__ = [
    "KINDS", "MAX_SIZE", "by_name", "check_name", "create_ops", "decode_data", "delete_ops",
    "file_target", "find", "objects", "row", "stack_ops", "stack_rm_ops", "task_files", "users",
]
