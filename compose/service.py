"""Checking one service definition and normalising it to long syntax.

The normalised form is what ``stack config`` prints and what the rest of
pyswarm reads: every short syntax expanded (command as a list, environment as
a mapping, ports and volumes as long-form mappings), so that no consumer
needs to know the shortcuts, and so that loading the printed form again
gives the very same thing.

Each key has a handler ``(checker, path, value) -> normalised | INVALID``;
keys without one are sorted into Swarm-ignored (warning), Swarm-rejected
(error with what to write instead) and unknown (warning with a did-you-mean;
``strict`` loading makes every warning an error).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .checker import INVALID, Checker, _Invalid, describe, stringify, suggest
from .errors import KeyPath
from .keys import SERVICE_KEYS, SWARM_IGNORED, SWARM_REJECTED

Handler = Callable[["ServiceChecker", KeyPath, Any], Any]

SERVICE_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_.]*[a-zA-Z0-9]+)*$")
"""Swarm's rule for service names (it must also work as a DNS label)."""

MAX_NAME = 63


class ServiceChecker(Checker):
    """A checker that also knows the environment (for bare ``KEY`` entries)."""

    def __init__(self, doc: Any, environ: Mapping[str, str], project_dir: Path | None = None) -> None:
        super().__init__(doc)
        self.environ = environ
        self.project_dir = project_dir or Path.cwd()
        # names declared at the top level, which services may refer to
        self.declared: dict[str, set[str]] = {
            "networks": set(), "volumes": set(), "secrets": set(), "configs": set(),
        }


def command(c: ServiceChecker, path: KeyPath, value: Any) -> list[str] | None | _Invalid:
    """A string is split like a shell would (Docker does the same); a list is kept."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            return c.error(path, f"cannot split into words: {exc}")
    return c.string_list(path, value, single=False)


def environment(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, str] | _Invalid:
    """``["K=V", "K"]`` or ``{K: V}``; a bare ``K`` or ``K: null`` comes from the
    environment and is left out when the environment does not have it."""
    out: dict[str, str] = {}
    if isinstance(value, list):
        for i, item in enumerate(value):
            s = c.string(path + (i,), item)
            if isinstance(s, _Invalid):
                continue
            key, eq, val = s.partition("=")
            if not key:
                c.error(path + (i,), f"expected KEY=VALUE or KEY, got {describe(s)}")
            elif eq:
                out[key] = val
            elif key in c.environ:
                out[key] = c.environ[key]
        return out
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    for key, val in m.items():
        if val is None:
            if key in c.environ:
                out[key] = c.environ[key]
        elif isinstance(val, (dict, list)):
            c.error(path + (key,), f"expected a string, number or boolean, got {describe(val)}")
        else:
            out[key] = stringify(val)
    return out


def image(c: ServiceChecker, path: KeyPath, value: Any) -> str | _Invalid:
    s = c.string(path, value, allow_numbers=False)
    if isinstance(s, str) and (not s.strip() or any(ch.isspace() for ch in s)):
        return c.error(path, f"not an image reference: {describe(s)}")
    return s


def deploy(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    if value is None:
        return {}
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    out: dict[str, Any] = {}
    for key, val in m.items():
        handler = DEPLOY_HANDLERS.get(key)
        if handler is not None:
            result = handler(c, path + (key,), val)
            if not isinstance(result, _Invalid):
                out[key] = result
        elif not key.startswith("x-"):
            _unsupported(c, path + (key,), key, tuple(DEPLOY_HANDLERS) + _DEPLOY_LATER)
    return out


def replicas(c: ServiceChecker, path: KeyPath, value: Any) -> int | _Invalid:
    return c.integer(path, value, minimum=0)


_DEPLOY_LATER: tuple[str, ...] = (
    "labels", "placement", "resources", "restart_policy", "update_config",
    "rollback_config", "endpoint_mode",
)

DEPLOY_HANDLERS: dict[str, Handler] = {"replicas": replicas}
"""Handlers for ``deploy.*``; other modules register more (see ``register``)."""

HANDLERS: dict[str, Handler] = {
    "image": image,
    "command": command,
    "entrypoint": command,
    "environment": environment,
    "deploy": deploy,
}
"""Handlers for service keys; other modules register more (see ``register``)."""


def register(table: dict[str, Handler], key: str) -> Callable[[Handler], Handler]:
    """Decorator: make a function the handler for ``key`` in ``table``."""

    def wrap(fn: Handler) -> Handler:
        table[key] = fn
        return fn

    return wrap


def _unsupported(c: ServiceChecker, path: KeyPath, key: str, known: tuple[str, ...]) -> None:
    if key in known:
        c.warn(path, "not supported by pyswarm yet; ignored")
    else:
        c.warn(path, f"unknown key, ignored{suggest(key, known)}")


def check_service(c: ServiceChecker, name: str, value: Any) -> dict[str, Any] | _Invalid:
    """Check ``services.<name>`` and return its normalised mapping."""
    path: KeyPath = ("services", name)
    if not SERVICE_NAME.match(name) or len(name) > MAX_NAME:
        c.error(path, "invalid service name: use letters, digits, and '-', '_' or '.' "
                f"between them, at most {MAX_NAME} characters", key=True)
    if value is None:
        return c.error(path, "the service is empty: it needs at least an `image` or a `build`")
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    out: dict[str, Any] = {}
    for key, val in m.items():
        kpath = path + (key,)
        handler = HANDLERS.get(key)
        if handler is not None:
            result = handler(c, kpath, val)
            if not isinstance(result, _Invalid):
                out[key] = result
        elif key.startswith("x-"):
            continue
        elif key in SWARM_IGNORED:
            c.warn(kpath, f"ignored: {SWARM_IGNORED[key]}")
        elif key in SWARM_REJECTED:
            c.error(kpath, f"not supported by Swarm: {SWARM_REJECTED[key]}", key=True)
        else:
            _unsupported(c, kpath, key, SERVICE_KEYS)
    if "env_file" in out:
        out["environment"] = {**out.pop("env_file"), **out.get("environment", {})}
    if "image" not in m and "build" not in m:
        c.error(path, "no `image` and no `build`: a service runs an image, given or built", key=True)
    return out if out.get("image") or out.get("build") else INVALID
