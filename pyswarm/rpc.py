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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyswarm import errors

_ERROR_TYPES: dict[str, type[errors.PyswarmError]] = {
    cls.__name__: cls
    for cls in (
        errors.PyswarmError, errors.UsageError, errors.ClusterError, errors.NotInSwarmError,
        errors.NotManagerError, errors.AlreadyInSwarmError, errors.NoQuorumError,
        errors.NotFoundError, errors.ConnectionError_, errors.ElectionError,
    )
}

# the largest request or answer the API takes or gives (a line of JSON):
# a 1,000-service stack is a few MiB; asyncio's default of 64 KiB refused
# a 150-service stack with "closed the connection without answering"
MAX_MESSAGE = 32 * 2**20
# writes the CLI may send again while a leader is elected: each sets a state
# (the same request twice ends as once), none creates something new twice
RETRY_SAFE = frozenset({
    "stack.deploy", "service.scale", "service.update", "node.update", "cluster.update",
})
RETRY_FOR = 5.0  # seconds


def too_large(what: str, size: int | None = None) -> errors.UsageError:
    of = "" if size is None else f" of {size / 2**20:.1f} MiB"
    return errors.UsageError(f"{what}{of} exceeds the API's limit of {MAX_MESSAGE // 2**20} MiB")


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
    """One request to the local manager; a clear error when there is none.
    A :data:`RETRY_SAFE` write refused during a leader election is sent
    again for up to :data:`RETRY_FOR` seconds."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        try:
            return _call_unix_once(path, method, params, timeout)
        except errors.ElectionError:
            if method not in RETRY_SAFE or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _call_unix_once(path: Path, method: str, params: dict[str, Any] | None, timeout: float) -> Any:
    request = encode_request(method, params or {})
    if len(request) > MAX_MESSAGE:
        raise too_large(f"the {method} request", len(request))
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
            sock.sendall(request)
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


# -- streaming answers ---------------------------------------------------------
#
# A streaming method (``service.logs``, ``service.exec``, ``stats``, ``events``)
# answers with any number of ``{"stream": item}`` lines and ends with one
# ``{"result": ...}`` or ``{"error": ...}`` line, as a plain call does. While
# it runs the client may send ``{"input": {...}}`` lines on the same
# connection (exec's stdin and window size); closing the connection cancels
# the call. A client sends its next request only after the final line.
#
# The client side needs only a :class:`LineChannel` (read a line, write
# bytes, close): a unix socket here, an SSH channel for a remote CLI, so a
# transport that carries plain calls carries streams too.


@dataclass(frozen=True)
class Final:
    """Yielded last by a streaming handler: the call's ``result``."""

    value: Any


def encode_item(item: Any) -> bytes:
    return (json.dumps({"stream": item}, separators=(",", ":")) + "\n").encode()


def encode_input(data: dict[str, Any]) -> bytes:
    return (json.dumps({"input": data}, separators=(",", ":")) + "\n").encode()


class LineChannel(Protocol):
    """What a streaming call needs of a transport."""

    def readline(self) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class UnixChannel:
    """A :class:`LineChannel` over the manager's unix socket."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise errors.NotManagerError(
                f"no pyswarm manager is running on this host ({path}: {exc.strerror}); "
                "run this on a manager, or start one with `pyswarm init`"
            ) from None
        self._file = self._sock.makefile("rb")
        self._lock = threading.Lock()

    def readline(self) -> bytes:
        try:
            return bytes(self._file.readline())
        except OSError as exc:
            raise errors.ConnectionError_(f"lost the connection to the manager: {exc.strerror or exc}") from None

    def write(self, data: bytes) -> None:
        with self._lock:
            self._sock.sendall(data)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._file.close()
        self._sock.close()


class StreamCall:
    """One streaming request: iterate for its items; then ``result`` holds
    its answer (an error line raises, as :func:`decode_response` does).
    :meth:`send` (thread-safe) writes an input line while it runs."""

    def __init__(self, channel: LineChannel, method: str, params: dict[str, Any]) -> None:
        self._channel = channel
        self.method = method
        self.result: Any = None
        channel.write(encode_request(method, params))

    def __iter__(self) -> Iterator[Any]:
        while True:
            line = self._channel.readline()
            if not line:
                raise errors.ConnectionError_(f"the manager closed the connection during {self.method} (see its log)")
            data = json.loads(line)
            if "stream" in data:
                yield data["stream"]
                continue
            self.result = decode_response(line)
            return

    def send(self, data: dict[str, Any]) -> None:
        try:
            self._channel.write(encode_input(data))
        except OSError:
            pass  # the call is over; its end is read by the iteration

    def close(self) -> None:
        self._channel.close()


def stream_unix(path: Path, method: str, params: dict[str, Any] | None = None) -> StreamCall:
    """A streaming request to the local manager."""
    return StreamCall(UnixChannel(path), method, params or {})
