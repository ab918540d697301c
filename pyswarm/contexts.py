"""Contexts: named clusters the operator's CLI talks to, as ``docker context``.

A context is a name and the SSH addresses of some of a cluster's managers
(``ssh://[user@]host[:port]``, tried in order). They live in one file,
``$XDG_CONFIG_HOME/pyswarm/contexts.json`` (``~/.config/pyswarm/``), mode
0600 in a 0700 directory, with the name of the current one. Which manager a
CLI invocation talks to (:func:`select`): ``--host``, else ``--context``,
else ``PYSWARM_HOST``, else ``PYSWARM_CONTEXT``, else the current context,
else the manager on this host (its unix socket).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyswarm.errors import NotFoundError, UsageError
from pyswarm.remote import SSHTarget, parse_target

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LOCAL = "default"
"""The built-in context: the manager on this host. It cannot be removed or changed."""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pyswarm"


def store_path() -> Path:
    return config_dir() / "contexts.json"


@dataclass
class Context:
    name: str
    hosts: list[str]
    cluster_id: str = ""
    description: str = ""
    machines: dict[str, str] = field(default_factory=dict)
    """node hostname → the ``[user@]host[:port]`` ``pyswarm machine`` reached it at"""

    def targets(self) -> list[SSHTarget]:
        return [parse_target(h) for h in self.hosts]


@dataclass
class Contexts:
    current: str = LOCAL
    items: dict[str, Context] = field(default_factory=dict)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"invalid context name {name!r}: letters, digits, '_', '.', '-' (up to 63), "
                         "starting with a letter or digit")
    return name


def load() -> Contexts:
    path = store_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Contexts()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts", {}), dict):
        raise UsageError(f"{path}: expected an object with 'current' and 'contexts'")
    items: dict[str, Context] = {}
    for name, raw in data.get("contexts", {}).items():
        hosts = raw.get("hosts") if isinstance(raw, dict) else None
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
            raise UsageError(f"{path}: context {name!r}: 'hosts' must be a non-empty list of ssh:// addresses")
        for h in hosts:
            try:
                parse_target(h)
            except UsageError as exc:
                raise UsageError(f"{path}: context {name!r}: {exc}") from None
        machines = raw.get("machines") or {}
        if not isinstance(machines, dict) or not all(isinstance(v, str) for v in machines.values()):
            raise UsageError(f"{path}: context {name!r}: 'machines' must map hostnames to SSH destinations")
        items[name] = Context(name=name, hosts=list(hosts), cluster_id=str(raw.get("cluster_id", "")),
                              description=str(raw.get("description", "")),
                              machines={str(k): v for k, v in machines.items()})
    current = data.get("current") or LOCAL
    if not isinstance(current, str) or (current != LOCAL and current not in items):
        current = LOCAL
    return Contexts(current=current, items=items)


def save(contexts: Contexts) -> None:
    """Write the file atomically, 0600 in a 0700 directory."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    data: dict[str, Any] = {"current": contexts.current, "contexts": {
        c.name: {"hosts": c.hosts, "cluster_id": c.cluster_id, "description": c.description,
                 "machines": c.machines}
        for c in contexts.items.values()}}
    path = store_path()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def create(name: str, hosts: list[str], description: str = "", cluster_id: str = "",
           replace: bool = False) -> Context:
    check_name(name)
    if name == LOCAL:
        raise UsageError(f"context {LOCAL!r} is the manager on this host and cannot be redefined")
    if not hosts:
        raise UsageError("a context needs at least one --host ssh://[USER@]HOST[:PORT]")
    for h in hosts:
        parse_target(h)
    contexts = load()
    if name in contexts.items and not replace:
        raise UsageError(f"context {name!r} already exists (remove it first, or use --force)")
    ctx = Context(name=name, hosts=[parse_target(h).url for h in hosts], cluster_id=cluster_id,
                  description=description)
    contexts.items[name] = ctx
    save(contexts)
    return ctx


def names() -> list[str]:
    """Every context's name, ``default`` first (shell completion)."""
    return [LOCAL, *sorted(load().items)]


def get(name: str) -> Context:
    check_name(name)
    contexts = load()
    if name not in contexts.items:
        raise NotFoundError(f"no context named {name!r} (see `pyswarm context ls`)")
    return contexts.items[name]


def use(name: str) -> None:
    contexts = load()
    if name != LOCAL:
        get(name)
    contexts.current = name
    save(contexts)


def remove(name: str, force: bool = False) -> None:
    contexts = load()
    if name == LOCAL:
        raise UsageError(f"context {LOCAL!r} is built in and cannot be removed")
    if name not in contexts.items:
        raise NotFoundError(f"no context named {name!r} (see `pyswarm context ls`)")
    if contexts.current == name and not force:
        raise UsageError(f"context {name!r} is the current one: `pyswarm context use default` first, or use --force")
    del contexts.items[name]
    if contexts.current == name:
        contexts.current = LOCAL
    save(contexts)


def update(ctx: Context) -> None:
    """Store ``ctx`` (changed hosts or cluster id) under its name."""
    contexts = load()
    contexts.items[ctx.name] = ctx
    save(contexts)


@dataclass(frozen=True)
class Selection:
    """Where this invocation's API requests go: ``targets`` empty = this host."""

    targets: tuple[SSHTarget, ...]
    context: str  # the context's name, or "" for --host / PYSWARM_HOST

    @property
    def local(self) -> bool:
        return not self.targets


def select(host: str | None, context: str | None, env: dict[str, str] | None = None) -> Selection:
    """The order Docker uses: flag, then environment, then the current context."""
    env = dict(os.environ) if env is None else env
    if host and context:
        raise UsageError("give --host or --context, not both")
    if host:
        return Selection((parse_target(host),), "")
    if context:
        return _of_context(context)
    if env.get("PYSWARM_HOST"):
        try:
            return Selection((parse_target(env["PYSWARM_HOST"]),), "")
        except UsageError as exc:
            raise UsageError(f"PYSWARM_HOST: {exc}") from None
    if env.get("PYSWARM_CONTEXT"):
        return _of_context(env["PYSWARM_CONTEXT"])
    return _of_context(load().current)


def _of_context(name: str) -> Selection:
    if name == LOCAL:
        return Selection((), LOCAL)
    return Selection(tuple(get(name).targets()), name)
