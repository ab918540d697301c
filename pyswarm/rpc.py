"""JSON-lines request/response, the one framing of pyswarm's API.

The same framing runs over the manager's unix socket (the CLI on a manager
host), over an SSH channel to that socket (the CLI on the operator's machine,
through ``pyswarm system dial-stdio`` on the manager, docs/remote.md), and
over its SSH API port (joining hosts). A request is
``{"method": str, "params": {...}}``; the answer is ``{"result": ...}`` or
``{"error": {"type": str, "message": str}}``, and error types map back to
:mod:`pyswarm.errors` classes so the CLI can print them as they were meant.
A streaming answer is any number of ``{"stream": item}`` lines before that
final one. One connection carries any number of requests, one at a time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyswarm import errors

_ERROR_TYPES: dict[str, type[errors.PyswarmError]] = {
    cls.__name__: cls
    for cls in (
        errors.PyswarmError, errors.UsageError, errors.ClusterError, errors.NotInSwarmError,
        errors.NotManagerError, errors.AlreadyInSwarmError, errors.NoQuorumError,
        errors.NotFoundError, errors.ConnectionError_, errors.ElectionError, errors.UncertainWriteError,
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
# what only reads (by the method's verb); a request of any other method left
# without an answer may have changed the cluster all the same: the manager
# that died or was cut off meanwhile may have committed it first (the soak
# counted a config "refused" by a closed connection, and it was there)
READ_VERBS = frozenset({"ls", "inspect", "ps", "export", "chains", "shipments", "version", "info",
                        "metrics", "progress", "ping", "logs", "events", "stats", "top"})
UNANSWERED_WRITE = "the write may still be applied; check before repeating it"


def unanswered(method: str) -> str:
    """What a request of ``method`` left without an answer means for its
    write, if it is one ("" for a read): the CLI's words for Jepsen's :info."""
    return "" if method.rpartition(".")[2] in READ_VERBS else UNANSWERED_WRITE


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


class Connection:
    """A client's connection to one manager's API: many requests, one after
    another, over one byte stream.

    The stream is a socket: the manager's unix socket itself, or (for a
    remote manager, pyswarm/remote.py) one end of a socket pair whose other
    end an SSH channel carries to ``pyswarm system dial-stdio`` there. So a
    CLI invocation opens one connection (one SSH handshake) however many
    requests it makes, and everything above the byte stream is the same
    code for both. ``where`` names the manager in errors; ``explain`` says,
    when the stream ends early, what the far end said about it (e.g. the
    remote dial-stdio's stderr)."""

    def __init__(self, sock: socket.socket, where: str, explain: Callable[[], str] | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.where = where
        self._sock = sock
        self._buf = bytearray()
        self._explain = explain
        self._on_close = on_close
        self._closed = False
        self._write_lock = threading.Lock()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def _lost(self, method: str, what: str, why: str = "") -> errors.ConnectionError_:
        said = self._explain() if self._explain is not None else ""
        reasons = "; ".join(r for r in (why, said, unanswered(method)) if r)
        return errors.ConnectionError_(f"{what} the manager ({self.where}) during {method}"
                                       + (f": {reasons}" if reasons else ""))

    def _readline(self, method: str, timeout: float | None) -> bytes:
        self._sock.settimeout(timeout)
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end + 1])
                del self._buf[:end + 1]
                return line
            try:
                chunk = self._sock.recv(1 << 20)
            except socket.timeout:
                fate = unanswered(method)
                raise errors.ConnectionError_(
                    f"the manager ({self.where}) did not answer {method} within {timeout or 0:.0f}s"
                    + (f": {fate}" if fate else "")) from None
            except OSError as exc:
                raise self._lost(method, "lost the connection to", str(exc.strerror or exc)) from None
            if not chunk:
                if self._buf:
                    raise self._lost(method, "the answer was cut short by")
                said = self._explain() if self._explain is not None else ""
                reasons = "; ".join(r for r in (said or "see its log", unanswered(method)) if r)
                raise errors.ConnectionError_(
                    f"the manager ({self.where}) closed the connection without answering {method}: {reasons}")
            self._buf += chunk

    def _send(self, method: str, params: dict[str, Any] | None) -> None:
        request = encode_request(method, params or {})
        if len(request) > MAX_MESSAGE:
            raise too_large(f"the {method} request", len(request))
        try:
            self._sock.sendall(request)
        except OSError as exc:
            raise self._lost(method, "lost the connection to", str(exc.strerror or exc)) from None

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        """One request and its answer (a streaming answer's items are dropped).
        A :data:`RETRY_SAFE` write refused during a leader election is sent
        again for up to :data:`RETRY_FOR` seconds."""
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                return self._call_once(method, params, timeout)
            except errors.ElectionError:
                if method not in RETRY_SAFE or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def _call_once(self, method: str, params: dict[str, Any] | None, timeout: float) -> Any:
        gen = self.stream(method, params, timeout)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def stream(self, method: str, params: dict[str, Any] | None = None,
               timeout: float = 60.0) -> Generator[Any, None, Any]:
        """A request whose answer streams: yields each ``{"stream": item}``'s
        item as it arrives (``timeout`` is per line) and returns the final
        result (or raises its error)."""
        self._send(method, params)
        while True:
            line = self._readline(method, timeout)
            if line.startswith(b'{"stream"'):
                yield json.loads(line)["stream"]
                continue
            return decode_response(line)

    def duplex(self, method: str, params: dict[str, Any] | None = None) -> socket.socket:
        """Send a request and hand over the raw byte stream (exec with input:
        what both sides write after the request is theirs to frame). The
        connection carries nothing else after this; close it when done."""
        self._send(method, params)
        self._sock.settimeout(None)
        return self._sock

    # -- a line channel (readline, write, close), for a streaming call that
    # also sends input lines while it runs (exec): ``write`` is thread-safe

    def readline(self) -> bytes:
        """The next line, waiting as long as it takes; b"" once the far end closed."""
        try:
            return self._readline("a stream", None)
        except errors.ConnectionError_:
            if self._buf:
                raise
            return b""

    def write(self, data: bytes) -> None:
        with self._write_lock:
            self._sock.sendall(data)

    def pending(self) -> bytes:
        """Bytes already read past the last answer (for a duplex user)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


def connect_unix(path: Path) -> Connection:
    """A connection to the manager on this host; a clear error when there is none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise errors.NotManagerError(
            f"no pyswarm manager is running on this host ({path}: {exc.strerror}); "
            "run this on a manager, or start one with `pyswarm init`"
        ) from None
    except PermissionError:
        sock.close()
        raise errors.NotManagerError(
            f"permission denied on {path}: only root (or the API group given to `pyswarm init --api-group`) "
            "may use the manager's API") from None
    return Connection(sock, str(path))


def call_unix(path: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    """One request to the local manager on a connection of its own."""
    with connect_unix(path) as conn:
        return conn.call(method, params, timeout)


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
