"""The node agent: ``pyswarm worker --stdio`` and its container runtime.

The leader's dispatcher keeps one SSH session per node whose forced command
runs the agent; the agent speaks :mod:`pyswarm.protocol` on stdin/stdout and
drives the local engine through the Docker Engine API (Podman's compatible
API too). Modules:

- :mod:`pyswarm.worker.docker`  async Engine API client over the unix socket
- :mod:`pyswarm.worker.network` the node's container network, routes, iptables
- :mod:`pyswarm.worker.agent`   the protocol loop and per-task reconciliation

Errors raised here, under the project's root (:mod:`pyswarm.errors`)::

    PyswarmError
    └── RuntimeError_               the container runtime or the host failed
        ├── EngineUnavailableError  cannot reach the engine's socket at all
        ├── EngineAPIError          the engine answered with an error status
        │   ├── EngineNotFoundError     404: no such container/image/network
        │   └── EngineConflictError     409: name in use, network busy, ...
        ├── ImageNotFoundError      image missing and cannot be pulled
        └── NetworkSetupError       ip / iptables / network create failed

Only ``RuntimeError_`` crosses the package boundary in practice: the agent
turns every one of these into a task state (``rejected``/``failed``) or an
``error`` message for the manager, never into a crash, because a dead agent
would make the whole node look down for one task's problem.
"""

from __future__ import annotations

from pyswarm.errors import PyswarmError


class RuntimeError_(PyswarmError):
    """The container runtime or the host failed (named with ``_`` so it does
    not shadow the builtin)."""


class EngineUnavailableError(RuntimeError_):
    """The engine's socket cannot be reached (dockerd not running, wrong
    DOCKER_HOST, permissions)."""


class EngineAPIError(RuntimeError_):
    """The engine answered with an error status; ``status`` is the HTTP code
    so callers can tell "missing" from "broken" without parsing text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class EngineNotFoundError(EngineAPIError):
    """404: the container, image or network does not exist."""


class EngineConflictError(EngineAPIError):
    """409: name already in use, network has active endpoints, ..."""


class ImageNotFoundError(RuntimeError_):
    """The image is not on the node and could not be pulled; the message is
    the one shown to the user in ``service ps``."""


class NetworkSetupError(RuntimeError_):
    """Creating the node's container network, a route or a firewall rule
    failed."""


__all__ = [
    "RuntimeError_",
    "EngineUnavailableError",
    "EngineAPIError",
    "EngineNotFoundError",
    "EngineConflictError",
    "ImageNotFoundError",
    "NetworkSetupError",
]
