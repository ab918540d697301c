"""What both of the node's Engine API clients share, importing nothing heavy.

The agent's client (:mod:`pyswarm.worker.docker`, aiohttp, async) and the
image channel's (:mod:`pyswarm.worker.channel`, blocking, one request per
process) speak to the same socket with the same API version and turn the
same statuses into the same errors. The channel starts once per node per
shipment, so this module must stay cheap to import: no aiohttp, no asyncio.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pyswarm.worker import EngineAPIError, EngineConflictError, EngineNotFoundError, EngineUnavailableError

DEFAULT_SOCKET = "/var/run/docker.sock"
# The API version we write against: Docker 20.10's. Newer engines still accept
# it (or tell us their minimum, which we then use); Podman answers 1.41 too.
API_VERSION = "1.41"


def socket_path(docker_host: str | None = None) -> str:
    """The engine's unix socket path from ``DOCKER_HOST`` or the default."""
    host = docker_host if docker_host is not None else os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://"):]
    if host.startswith("/"):
        return host
    raise EngineUnavailableError(f"DOCKER_HOST={host!r}: only unix:// sockets are supported by the agent")


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


def pick_version(version: Mapping[str, Any]) -> str:
    """The API version to speak, from the engine's ``GET /version``: ours
    unless the engine's minimum is higher (Docker >= 25 raised it) or its
    maximum lower (old engines)."""
    server = str(version.get("ApiVersion") or API_VERSION)
    minimum = str(version.get("MinAPIVersion") or "1.12")
    chosen = API_VERSION
    if _version_tuple(server) < _version_tuple(chosen):
        chosen = server
    if _version_tuple(minimum) > _version_tuple(chosen):
        chosen = minimum
    return chosen


def api_error(status: int, raw: bytes, what: str) -> EngineAPIError:
    """The error for an engine's answer of ``status`` (its JSON ``message``)."""
    text = raw.decode(errors="replace").strip()
    try:
        decoded = json.loads(text)
        if isinstance(decoded, dict) and "message" in decoded:
            text = str(decoded["message"])
    except ValueError:
        pass
    message = text or f"{what}: HTTP {status}"
    if status == 404:
        return EngineNotFoundError(status, message)
    if status == 409:
        return EngineConflictError(status, message)
    return EngineAPIError(status, message)


def loaded_refs(text: str) -> list[str]:
    """What ``docker load`` says it loaded (its stream, or the CLI's output)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        for prefix in ("Loaded image: ", "Loaded image ID: "):
            if line.startswith(prefix):
                out.append(line[len(prefix):].strip())
    return out
