"""JSON-lines request/response, the one framing of pyswarm's API.

The same framing runs over the manager's unix socket (the CLI on a manager
host) and over its SSH API port (joining hosts). A request is
``{"method": str, "params": {...}}``; the answer is ``{"result": ...}`` or
``{"error": {"type": str, "message": str}}``, and error types map back to
:mod:`pyswarm.errors` classes so the CLI can print them as they were meant.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pyswarm import errors

_ERROR_TYPES: dict[str, type[errors.PyswarmError]] = {
    cls.__name__: cls
    for cls in (
        errors.PyswarmError, errors.UsageError, errors.ClusterError, errors.NotInSwarmError,
        errors.NotManagerError, errors.AlreadyInSwarmError, errors.NoQuorumError,
        errors.NotFoundError, errors.ConnectionError_,
    )
}


def encode_request(method: str, params: dict[str, Any]) -> bytes:
    return (json.dumps({"method": method, "params": params}) + "\n").encode()


def encode_result(result: Any) -> bytes:
    return (json.dumps({"result": result}) + "\n").encode()


def encode_error(exc: BaseException) -> bytes:
    kind = type(exc).__name__ if type(exc).__name__ in _ERROR_TYPES else "PyswarmError"
    return (json.dumps({"error": {"type": kind, "message": str(exc)}}) + "\n").encode()


def decode_response(line: bytes) -> Any:
    if not line:
        raise errors.ConnectionError_("the manager closed the connection without answering (see its log)")
    data = json.loads(line)
    if "error" in data:
        err = data["error"]
        raise _ERROR_TYPES.get(err.get("type", ""), errors.PyswarmError)(err.get("message", "unknown error"))
    return data.get("result")


def call_unix(path: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    """One request to the local manager; a clear error when there is none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise errors.NotManagerError(
                f"no pyswarm manager is running on this host ({path}: {exc.strerror}); "
                "run this on a manager, or start one with `pyswarm init`"
            ) from None
        buf = bytearray()
        try:
            sock.sendall(encode_request(method, params or {}))
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except socket.timeout:
            raise errors.ConnectionError_(f"the manager did not answer {method} within {timeout:.0f}s") from None
        except OSError as exc:
            raise errors.ConnectionError_(f"lost the connection to the manager during {method}: {exc.strerror or exc}") from None
        if buf and not buf.endswith(b"\n"):
            raise errors.ConnectionError_(f"the manager's answer to {method} was cut short (did it stop?)")
        return decode_response(bytes(buf))
    finally:
        sock.close()
