"""The image channel's process: one request, blocking I/O, in the kernel where it can be.

sshd starts this for a second session on the node's connection (the forced
command with ``SSH_ORIGINAL_COMMAND`` = :data:`pyswarm.images.CHANNEL_COMMAND`;
the wire is in :mod:`pyswarm.images`). It answers one request — which layer
chains this engine has, its image inventory, removing images, or sending
one of its images to the leader — and for ``have`` passes the tar that
follows to the engine's ``/images/load``.

Why blocking and small: a shipment to five nodes starts five of these at
once, on the cores the five engines then load with. Started through the
agent's modules (asyncio, aiohttp, the task code) it cost ~0.4 s of CPU
each before it answered, and the tar went on through the docker CLI (another
~0.17 s per 100 MB): a sixth of a first ship's CPU on the lab
(bench/RESULTS.md, issue 15). This process imports no more than the wire's
types and ``http.client``, and moves the tar with ``splice`` from sshd's
pipe to the engine's socket, so its bytes never enter Python: the sender
says the length first (:class:`pyswarm.images.LoadHeader`), which becomes
the request's ``Content-Length``. A sender that does not (an older
manager) gets the same load, copied through here in chunked encoding.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

from pyswarm.images import (
    CHANNEL_COMMAND,
    CHANNEL_ENV,
    MAX_LINE,
    ChannelRequest,
    ExportReply,
    HaveReply,
    LoadHeader,
    LoadReply,
    MessageError,
    NodeImage,
    encode_line,
    held_chains,
    inventory_line,
)
from pyswarm.worker import EngineAPIError, EngineNotFoundError, EngineUnavailableError, RuntimeError_
from pyswarm.worker.engine_api import api_error, loaded_refs, pick_version, socket_path

CHUNK = 1 << 20
REQUEST_TIMEOUT = 60.0  # a small call the engine has not answered by then has failed


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Engine:
    """The channel's few Engine API calls, blocking, over one kept connection."""

    def __init__(self, docker_host: str | None = None) -> None:
        self.socket = socket_path(docker_host)
        self._conn: _UnixHTTP | None = None
        self._version = ""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self, timeout: float | None) -> _UnixHTTP:
        conn = _UnixHTTP(self.socket, timeout)
        try:
            conn.connect()
        except OSError as exc:
            raise EngineUnavailableError(f"cannot reach the engine at {self.socket}: {exc}") from None
        return conn

    def _url(self, path: str) -> str:
        """``path`` under the API version agreed with the engine (asked once)."""
        if not self._version:
            self._version = pick_version(self._call("GET", "/version", versioned=False))
        return f"/v{self._version}{path}"

    def _call(self, method: str, path: str, versioned: bool = True) -> Any:
        url = self._url(path) if versioned else path
        if self._conn is None:
            self._conn = self._open(REQUEST_TIMEOUT)
        try:
            self._conn.request(method, url)
            resp = self._conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise EngineUnavailableError(f"{method} {path}: {exc}") from None
        if resp.status >= 400:
            raise api_error(resp.status, raw, f"{method} {path}")
        return json.loads(raw) if raw.strip() else None

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        try:
            data = self._call("GET", f"/images/{quote(ref, safe='/:@')}/json")
        except EngineNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def list_images(self) -> list[dict[str, Any]]:
        data = self._call("GET", "/images/json")
        return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []

    def remove_image(self, ref: str) -> None:
        self._call("DELETE", f"/images/{quote(ref, safe='/:@')}")

    def save(self, ref: str, write: Callable[[bytes], None]) -> None:
        """``GET /images/{ref}/get``: the archive's bytes to ``write`` as they come."""
        url = self._url(f"/images/{quote(ref, safe='/:@')}/get")
        conn = self._open(None)
        try:
            conn.request("GET", url)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise api_error(resp.status, resp.read(), f"save {ref}")
            while chunk := resp.read(CHUNK):
                write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            raise EngineUnavailableError(f"save {ref}: {exc}") from None
        finally:
            conn.close()

    def load(self, fd: int, size: int | None, first: bytes = b"") -> list[str]:
        """``POST /images/load`` of the tar on ``fd``: exactly ``size`` bytes
        moved in the kernel, or (``size`` None) ``first`` and all that follows
        to EOF, copied in chunked encoding. What the engine says it loaded;
        its in-band error raises."""
        url = self._url("/images/load?quiet=1")
        conn = self._open(None)  # the engine reads the whole tar before it answers
        try:
            conn.putrequest("POST", url)
            conn.putheader("Content-Type", "application/x-tar")
            if size is None:
                conn.putheader("Transfer-Encoding", "chunked")
            else:
                conn.putheader("Content-Length", str(size))
            conn.endheaders()
            assert conn.sock is not None
            if size is None:
                _copy_chunked(fd, first, conn.sock)
            else:
                _move(fd, conn.sock, size)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineUnavailableError(f"load: {exc}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise api_error(resp.status, raw, "load")
        loaded: list[str] = []
        for line in raw.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                if msg.get("error"):
                    raise EngineAPIError(500, str(msg["error"]))
                loaded += loaded_refs(str(msg.get("stream") or ""))
        return loaded


def _move(fd: int, sock: socket.socket, size: int) -> None:
    """Exactly ``size`` bytes from ``fd`` into ``sock``: ``splice`` when
    ``fd`` is a pipe (sshd's stdin for a session without a terminal), else a
    copy. A sender that stops short is an error: the engine would wait."""
    _grow_pipe(fd)
    left = size
    dst = sock.fileno()
    splice = getattr(os, "splice", None)
    while left and splice is not None:
        try:
            n = splice(fd, dst, min(left, CHUNK))
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS) and left == size:
                break  # not a pipe: copy
            raise
        if n == 0:
            raise EngineUnavailableError(f"load: the sender stopped after {size - left} of {size} bytes")
        left -= n
    buf = bytearray(min(CHUNK, max(left, 1)))
    view = memoryview(buf)
    while left:
        n = os.readv(fd, [view[:min(left, len(buf))]])
        if n == 0:
            raise EngineUnavailableError(f"load: the sender stopped after {size - left} of {size} bytes")
        sock.sendall(view[:n])
        left -= n


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe where ``fd`` is one (sshd writes into it): fewer, bigger moves."""
    import fcntl

    try:
        fcntl.fcntl(fd, 1031, CHUNK)  # F_SETPIPE_SZ
    except OSError:
        pass


def _copy_chunked(fd: int, first: bytes, sock: socket.socket) -> None:
    data = first
    while data:
        sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        data = os.read(fd, CHUNK)
    sock.sendall(b"0\r\n\r\n")


# -- the request ---------------------------------------------------------------


class ChannelEngine(Protocol):
    """What :func:`serve` needs of an engine (:class:`Engine` has it)."""

    def inspect_image(self, ref: str) -> dict[str, Any] | None: ...

    def list_images(self) -> list[dict[str, Any]]: ...

    def remove_image(self, ref: str) -> None: ...

    def save(self, ref: str, write: Callable[[bytes], None]) -> None: ...

    def load(self, fd: int, size: int | None, first: bytes = b"") -> list[str]: ...


def _read_line(fd: int) -> bytes:
    """One line, a byte at a time: nothing past it is read, so what follows
    can go to the engine untouched."""
    line = bytearray()
    while not line.endswith(b"\n") and len(line) <= MAX_LINE:
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return bytes(line)


def serve(engine: ChannelEngine, in_fd: int, write: Callable[[bytes], None]) -> int:
    """Answer one image channel request read from ``in_fd``; 0 when it was
    served, 1 when not (the reason in an ``error`` or ``loaded`` line)."""
    try:
        return _serve(engine, ChannelRequest.from_line(_read_line(in_fd)), in_fd, write)
    except (MessageError, RuntimeError_) as exc:
        write(encode_line({"op": "error", "error": str(exc)}))
        return 1


def _serve(engine: ChannelEngine, req: ChannelRequest, in_fd: int, write: Callable[[bytes], None]) -> int:
    if req.op == "inventory":
        write(inventory_line(NodeImage.from_engine(i) for i in engine.list_images()))
        return 0
    if req.op == "remove":
        removed, errors = [], []
        for ref in req.images:
            try:
                engine.remove_image(ref)
                removed.append(ref)
            except EngineNotFoundError:
                pass
            except RuntimeError_ as exc:
                errors.append(f"{ref}: {exc}")
        write(encode_line({"op": "removed", "removed": removed, "error": "; ".join(errors)}))
        return 0
    if req.op == "export":
        held = engine.inspect_image(req.image)
        write(ExportReply(held is not None, str(held.get("Id", "")) if held else "").to_line())
        if held is not None:
            engine.save(req.image, write)  # its failure ends the archive short: the receiver's load says so
        return 0
    have = engine.inspect_image(req.image)
    present = have is not None and have.get("Id") == req.image_id
    chains = held_chains(engine.inspect_image(str(i.get("Id", ""))) for i in engine.list_images())
    write(HaveReply(present, frozenset(chains), sized=True).to_line())
    if present:
        return 0  # the sender sends nothing
    first = os.read(in_fd, 1)
    if not first:
        return 0  # the sender had nothing to send
    try:
        if first == b"{":
            header = LoadHeader.from_line(first + _read_line(in_fd))
            loaded = engine.load(in_fd, header.size)
        else:
            loaded = engine.load(in_fd, None, first)  # an older sender: the tar alone
    except (RuntimeError_, MessageError) as exc:
        while os.read(in_fd, CHUNK):  # let the sender finish writing
            pass
        write(LoadReply(False, error=str(exc)).to_line())
        return 1
    write(LoadReply(True, tuple(loaded), cpu=round(time.process_time(), 3)).to_line())
    return 0


def main_stdio() -> int:
    """``pyswarm worker --stdio``: an image channel when sshd was asked for
    one, else the agent (whose modules only it imports)."""
    if os.environ.get(CHANNEL_ENV, "").strip() == CHANNEL_COMMAND:
        return main()
    from pyswarm.worker.agent import main_stdio as agent

    return agent()


def main() -> int:
    """The channel's process. fd 1 is the channel's alone: everything else
    that might print goes to stderr."""
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view):]

    engine = Engine()
    try:
        return serve(engine, 0, write)
    finally:
        engine.close()
        os.close(out_fd)
