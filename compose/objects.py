"""The stack's own cluster objects: named volumes, secrets and configs.

A stack file names these objects by their key (``secrets: [db_password]``);
on the cluster they are ``STACK_KEY`` (or the entry's ``name:``), and
``external: true`` ones are the name as written. Docker's ``stack deploy``
resolves the names the same way. This module does the resolution, so that
what reaches the store and the agents carries engine/store names, and reads
the data of the secrets and configs the stack defines (``file:``,
``environment:``, ``content:``), so that the CLI can create them on deploy.

Two additions to the normalised long syntax, in ``ContainerSpec.options``
only (``stack config`` prints the file as written):

- a ``volumes`` entry of ``type: volume`` whose source is a top-level volume
  gets the engine volume's name as ``source``, and, for a volume the stack
  defines, ``volume.driver`` / ``volume.driver_opts`` / ``volume.labels`` so
  the node's engine creates it as declared the first time a task uses it;
- ``secrets`` and ``configs`` entries get ``name``: the store object's name.

Pure: reads the files the stack names and nothing else.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyswarm.models import ServiceSpec

from .errors import KeyPath, Mark, Problem, StackFileError, format_path, raise_if
from .source import read_limited

MAX_OBJECT_BYTES = 500 * 1024
"""Swarm's limit for the data of a secret or a config (moby's
``MaxSecretSize`` / ``MaxConfigSize``, 500 KiB); the manager checks it too."""

STACK_LABEL = "com.docker.stack.namespace"
"""The label Docker puts on a stack's objects; pyswarm uses the same."""


@dataclass
class StackObject:
    """A secret or config the stack defines (or an external one it uses)."""

    key: str  # the name in the stack file
    name: str  # the name in the cluster
    external: bool = False
    data: bytes = b""
    labels: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show the data (secrets)
        return f"StackObject({self.key!r}, name={self.name!r}, external={self.external})"


def object_name(stack: str, key: str, entry: Mapping[str, Any]) -> str:
    """``STACK_KEY`` for what the stack defines, the key itself for external
    objects; an explicit ``name:`` wins in both cases."""
    if entry.get("name"):
        return str(entry["name"])
    if entry.get("external") or not stack:
        return key
    return f"{stack}_{key}"


def resolve_references(stack: str, services: list[ServiceSpec], config: Mapping[str, Any]) -> None:
    """Rewrite each service's ``options`` (a private copy) to cluster names."""
    volumes: Mapping[str, Any] = config.get("volumes", {})
    for spec in services:
        # copy what is rewritten (the rest is shared with Stack.config, read-only)
        options = dict(spec.container.options)
        for key in ("volumes", "secrets", "configs"):
            if key in options:
                options[key] = [copy.deepcopy(entry) for entry in options[key]]
        for entry in options.get("volumes", []):
            source = entry.get("source")
            if entry.get("type") != "volume" or not source or source not in volumes:
                continue
            decl = volumes[source] or {}
            entry["source"] = object_name(stack, source, decl)
            if decl.get("external"):
                continue
            vol = entry.setdefault("volume", {})
            labels = dict(decl.get("labels", {}))
            if stack:
                labels[STACK_LABEL] = stack
            if labels:
                vol["labels"] = labels
            if decl.get("driver"):
                vol["driver"] = decl["driver"]
            if decl.get("driver_opts"):
                vol["driver_opts"] = dict(decl["driver_opts"])
        for kind in ("secrets", "configs"):
            declared: Mapping[str, Any] = config.get(kind, {})
            for ref in options.get(kind, []):
                ref["name"] = object_name(stack, ref["source"], declared.get(ref["source"]) or {})
        spec.container.options = options


def read_objects(stack: str, config: Mapping[str, Any], environ: Mapping[str, str],
                 kind: str, mark: Callable[[KeyPath], Mark]) -> list[StackObject]:
    """The ``secrets`` or ``configs`` the stack declares, with their data.

    Called by deploy, not by ``stack config`` (as ``docker stack config``
    prints a stack whose files are elsewhere). Reads each ``file:`` with a
    bound: a missing file, a FIFO, a device or a directory, or data over
    Swarm's 500 KB limit is a :class:`StackFileError` naming the stack file's
    line and the path. ``environment:`` comes from ``environ`` and
    ``content:`` as written, under the same limit.
    """
    out: list[StackObject] = []
    problems: list[Problem] = []
    what = kind[:-1]
    for key, entry in (config.get(kind) or {}).items():
        entry = entry or {}
        obj = StackObject(key, object_name(stack, key, entry), bool(entry.get("external")))
        if not obj.external:
            obj.labels = dict(entry.get("labels", {}))
            if stack:
                obj.labels[STACK_LABEL] = stack
            # the checker made sure there is one (or it is external)
            source = next(k for k in ("file", "environment", "content") if k in entry)
            path: KeyPath = (kind, key, source)
            try:
                if source == "file":
                    obj.data = read_limited(entry["file"], MAX_OBJECT_BYTES)
                elif source == "environment":
                    obj.data = environ.get(str(entry["environment"]), "").encode()
                else:
                    obj.data = str(entry["content"]).encode()
                if len(obj.data) > MAX_OBJECT_BYTES:
                    raise ValueError("larger")
            except ValueError as exc:
                message = str(exc)
                if message.startswith("larger"):
                    message = (f"larger than Swarm's 500 KB limit for a {what} "
                               f"({MAX_OBJECT_BYTES:,} bytes)")
                if source == "file":
                    message = f"{what} file {entry['file']!r}: {message}"
                problems.append(Problem(mark(path), format_path(path), message))
        out.append(obj)
    raise_if(problems, StackFileError)
    return out


__all__ = ["MAX_OBJECT_BYTES", "STACK_LABEL", "StackObject", "object_name", "read_objects", "resolve_references"]
