"""``build:`` of a service: checked, normalised and typed (:class:`BuildSpec`).

Swarm cannot deploy a service that only has ``build:`` (moby/moby#29940);
pyswarm builds it with the engine of the machine the CLI runs on and ships
it to the nodes (pyswarm/build.py, manager/images.py). This module only
reads the key: both spellings, ``build: ./dir`` and the long mapping, become
one long mapping (what ``stack config`` prints, in Docker's field order:
context, dockerfile, args, labels, cache_from, extra_hosts, network, target,
then the compose-spec fields Docker's stack types lack), the context as
written (``docker stack config`` prints it so; :class:`BuildSpec` resolves
it against the first file's directory). Whether the context exists is checked when building, not by
``stack config`` (a file that only prints a stack need not have it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checker import _Invalid
from .errors import KeyPath
from .service import HANDLERS, ServiceChecker, environment, register

BUILD_KEYS = ("context", "dockerfile", "dockerfile_inline", "args", "labels", "cache_from", "extra_hosts",
              "network", "target", "shm_size", "secrets", "platforms", "no_cache", "pull")
# compose-spec build keys pyswarm's builder (the engine's classic /build) has no use for
BUILD_IGNORED = ("ssh", "tags", "ulimits", "isolation", "privileged", "additional_contexts", "entitlements",
                 "cache_to", "provenance", "sbom")
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@|github\.com/)", re.IGNORECASE)


@dataclass(frozen=True)
class BuildSpec:
    """How to build one service's image (the normalised ``build:``)."""

    context: str  # absolute directory
    dockerfile: str = ""  # relative to the context ("" = Dockerfile)
    dockerfile_inline: str = ""
    args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cache_from: tuple[str, ...] = ()
    extra_hosts: dict[str, str] = field(default_factory=dict)
    network: str = ""
    target: str = ""
    shm_size: int = 0
    secrets: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    no_cache: bool = False
    pull: bool = False

    @classmethod
    def from_config(cls, data: Mapping[str, Any], project_dir: Path) -> BuildSpec:
        """From the mapping :func:`build` returned; a relative context is the
        project directory's (the first file's), as compose resolves it."""
        context = os.path.expanduser(str(data["context"]))
        return cls(
            context=context if os.path.isabs(context) else str((project_dir / context).resolve()),
            dockerfile=str(data.get("dockerfile", "")),
            dockerfile_inline=str(data.get("dockerfile_inline", "")),
            args=dict(data.get("args", {})),
            labels=dict(data.get("labels", {})),
            cache_from=tuple(data.get("cache_from", ())),
            extra_hosts=dict(data.get("extra_hosts", {})),
            network=str(data.get("network", "")),
            target=str(data.get("target", "")),
            shm_size=int(data.get("shm_size", 0)),
            secrets=tuple(str(s["source"]) for s in data.get("secrets", ())),
            platforms=tuple(data.get("platforms", ())),
            no_cache=bool(data.get("no_cache", False)),
            pull=bool(data.get("pull", False)),
        )


@register(HANDLERS, "build")
def build(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    from .container import _file_refs, byte_size, extra_hosts

    if isinstance(value, str):
        value = {"context": value}
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    for key in m:
        if key in BUILD_IGNORED:
            c.warn(path + (key,), "not supported by pyswarm's builder; ignored")
    c.known_keys(path, {k: v for k, v in m.items() if k not in BUILD_IGNORED}, BUILD_KEYS)
    out: dict[str, Any] = {}
    context = c.string(path + ("context",), m.get("context", "."))
    if isinstance(context, str):
        if _REMOTE.match(context):
            c.error(path + ("context",), f"pyswarm builds from a local directory only, not {context!r}")
        else:
            out["context"] = context or "."  # as written, as Docker prints it; BuildSpec resolves it
    for key in ("dockerfile", "dockerfile_inline", "network", "target"):
        if key in m:
            s = c.string(path + (key,), m[key])
            if isinstance(s, str) and s:
                out[key] = s
    if "dockerfile" in out and "dockerfile_inline" in out:
        c.error(path + ("dockerfile_inline",), "use `dockerfile` or `dockerfile_inline`, not both")
    checks: dict[str, Any] = {
        "args": lambda p, v: environment(c, p, v),  # a bare KEY comes from the environment too
        "labels": lambda p, v: c.string_map(p, v),
        "cache_from": lambda p, v: c.string_list(p, v),
        "extra_hosts": lambda p, v: extra_hosts(c, p, v),
        "shm_size": lambda p, v: byte_size(c, p, v),
        "secrets": lambda p, v: _file_refs(c, p, v, "secrets"),
        "platforms": lambda p, v: c.string_list(p, v),
        "no_cache": lambda p, v: c.boolean(p, v),
        "pull": lambda p, v: c.boolean(p, v),
    }
    for key, check in checks.items():
        if key in m and m[key] is not None:
            result = check(path + (key,), m[key])
            if not isinstance(result, _Invalid) and result not in ({}, [], False, 0):
                out[key] = result
    order = {k: i for i, k in enumerate(BUILD_KEYS)}
    return {k: out[k] for k in sorted(out, key=lambda k: order[k])}
