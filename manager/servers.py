"""The API's two doors: a unix socket for the CLI on this host, and an SSH
port for hosts that join.

The unix socket is root-only (mode 0600), which is the whole of its
authentication, as with Docker's socket. The SSH port admits a password that
is a join token's secret and lets it call only the join methods; its host key
is the one whose fingerprint every join token carries, so a joiner can tell
this manager from an impostor.

Streaming methods (logs, exec, stats, events; :mod:`pyswarm.rpc`) answer
with many lines and read input lines while they run
(:func:`_serve_stream`). Those that need the nodes run on the leader (its
dispatcher holds the sessions to them): a follower hands the whole call on
to the leader's SSH port, user ``forward``, authenticated by the cluster's
SSH key that every manager already holds (:mod:`.forward`), and relays the
lines both ways. That door admits only those methods.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from pyswarm import rpc
from pyswarm.errors import PyswarmError, UsageError
from pyswarm.wire import BadRequest, parse, rule

from . import forward
from .api import JOIN_METHODS, Api
from .api.streams import StreamApi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One line of the API: a method and its params (checked by the method)."""

    method: str = field(metadata=rule(max_len=128))
    params: dict[str, Any] = field(default_factory=dict)


def parse_request(line: bytes) -> Request:
    """A request line as a :class:`Request`, or :class:`BadRequest` saying why."""
    try:
        data = json.loads(line)
    except UnicodeDecodeError:
        raise BadRequest("", "the request is not UTF-8 text") from None
    except ValueError as exc:
        raise BadRequest("", f"the request is not JSON ({exc})") from None
    except RecursionError:  # "[[[[…" deeper than Python's stack (found by bench/fuzz_boundaries.py)
        raise BadRequest("", "the request is nested too deeply") from None
    return parse(Request, data)


class Caller(Protocol):
    """What a door serves: the API, or a locked manager's (manager/autolock.py)."""

    async def call(self, method: str, params: Any) -> Any: ...


async def _serve_lines(api: Caller, reader: Any, writer: Any, allowed: frozenset[str] | None, role: str = "",
                       streams: StreamApi | None = None) -> None:
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # asyncio's StreamReader: a line over its limit
            writer.write(rpc.encode_error(rpc.too_large("the request")))
            return
        if not line:
            return
        method = "?"
        try:
            request = parse_request(line)
            method = request.method
            params = request.params
            if allowed is not None and method not in allowed:
                raise UsageError(f"{method} is not allowed with a join token")
            if method == "join":
                params = {**params, "role": role or "worker"}
            if streams is not None and method in streams.methods:
                await _serve_stream(streams, method, params, line, reader, writer)
                continue
            result = await api.call(method, params)
            out = rpc.encode_result(result)
            if len(out) > rpc.MAX_MESSAGE:
                raise rpc.too_large(f"the answer to {method}", len(out))
        except PyswarmError as exc:
            out = rpc.encode_error(exc)
        except ConnectionError:
            raise  # the client is gone (a streaming call's client hung up): nothing to answer
        except Exception as exc:  # report, keep serving; never log the params (a secret's data)
            log.exception("API method %s failed", method[:128])
            out = rpc.encode_error(PyswarmError(f"internal error in {method[:128]}: {type(exc).__name__} "
                                                "(see the manager's log)"))
        writer.write(out if isinstance(out, bytes) else out.decode())
        if hasattr(writer, "drain"):
            await writer.drain()


def _write(writer: Any, out: bytes) -> None:
    writer.write(out)


async def _serve_stream(streams: StreamApi, method: str, params: dict[str, Any], line: bytes,
                        reader: Any, writer: Any) -> None:
    """One streaming call: items as they come (``drain`` paces them to the
    client, which is what holds back the agents' credit), input lines to the
    handler, and the call cancelled if the client hangs up."""
    if streams.must_forward(method):
        await forward.relay(streams.leader_door(), line, reader, writer)
        return
    inputs: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def pump() -> None:
        out = rpc.encode_result(None)
        try:
            async for item in streams.open(method, params, inputs):
                if isinstance(item, rpc.Final):
                    out = rpc.encode_result(item.value)
                    break
                _write(writer, rpc.encode_item(item))
                if hasattr(writer, "drain"):
                    await writer.drain()
        except PyswarmError as exc:
            out = rpc.encode_error(exc)
        except (ConnectionError, asyncssh.Error):
            raise
        except Exception as exc:  # report, keep serving
            log.exception("API stream %s failed", method)
            out = rpc.encode_error(PyswarmError(f"internal error: {type(exc).__name__}: {exc}"))
        _write(writer, out)
        if hasattr(writer, "drain"):
            await writer.drain()

    async def read_inputs() -> None:
        while True:
            got = await reader.readline()
            if not got:
                inputs.put_nowait(None)
                return
            try:
                data = json.loads(got)
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get("input"), dict):
                inputs.put_nowait(data["input"])

    runner = asyncio.ensure_future(pump())
    reading = asyncio.ensure_future(read_inputs())
    try:
        await asyncio.wait({runner, reading}, return_when=asyncio.FIRST_COMPLETED)
        if not runner.done():  # the client hung up
            await asyncio.sleep(0.05)  # an exec's last input may still be on its way
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            raise ConnectionError("client hung up")
        runner.result()
    finally:
        # wait for the cancelled read to unwind: the next request's readline
        # must not find another coroutine still waiting on the reader
        reading.cancel()
        runner.cancel()
        await asyncio.gather(reading, runner, return_exceptions=True)


class UnixApiServer:
    """Root-only (0600), or root and ``group`` (0660) when one is named."""

    def __init__(self, api: Caller, path: Path, streams: StreamApi | None = None, group: str = "") -> None:
        self._streams = streams
        self._api = api
        self._path = path
        self._group = group
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.exists():
            self._path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self._path),
                                                           limit=rpc.MAX_MESSAGE + 1)
        finally:
            os.umask(old_umask)
        if self._group:
            import grp

            try:
                gid = grp.getgrnam(self._group).gr_gid
            except KeyError:
                log.error("API group %s does not exist: the API socket stays root-only", self._group)
                return
            os.chown(self._path, -1, gid)
            os.chmod(self._path, 0o660)
            # the group must also get through the (root-only) directory to
            # reach the socket: search only (0710), no listing
            parent = self._path.parent
            os.chown(parent, -1, gid)
            os.chmod(parent, (parent.stat().st_mode & 0o7777) | 0o010)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve_lines(self._api, reader, writer, None, streams=self._streams)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self._path.unlink()
        except FileNotFoundError:
            pass


class _JoinSSHServer(asyncssh.SSHServer):
    def __init__(self, secrets: Any, forward_keys: Any = None) -> None:
        self._secrets = secrets
        self._forward_keys = forward_keys
        self.role = ""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return self._forward_keys is not None

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Another manager of this cluster handing on a streaming call."""
        if username != forward.USER or self._forward_keys is None:
            return False
        if forward.is_cluster_key(key, self._forward_keys()):
            self.role = forward.USER
            return True
        return False

    def validate_password(self, username: str, password: str) -> bool:
        """Constant-time comparisons (hmac.compare_digest): how long a wrong
        guess takes says nothing about how much of it was right."""
        worker, manager = self._secrets()
        given = password.encode()
        is_worker = bool(worker) and hmac.compare_digest(given, worker.encode())
        is_manager = bool(manager) and hmac.compare_digest(given, manager.encode())
        if username != "join":
            return False
        if is_manager:
            self.role = "manager"
        elif is_worker:
            self.role = "worker"
        return is_worker or is_manager


class SSHApiServer:
    """The join door: ``ssh join@MANAGER -p 2377`` with the token's secret."""

    def __init__(self, api: Api, addr: str, port: int, host_key_path: Path, secrets: Any,
                 streams: StreamApi | None = None) -> None:
        self._streams = streams  # its forward_keys: the cluster keys a follower forwards with
        self._forward_keys = streams.forward_keys if streams is not None else None
        self._api = api
        self._addr = addr
        self._port = port
        self._host_key_path = host_key_path
        self._secrets = secrets
        self._server: Any = None

    async def start(self) -> None:
        def factory() -> _JoinSSHServer:
            return _JoinSSHServer(self._secrets, self._forward_keys)

        async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
            conn = process.get_extra_info("connection")
            owner = conn.get_owner() if conn is not None else None
            role = getattr(owner, "role", "worker")
            try:
                forwarding = role == forward.USER and self._streams is not None
                allowed = self._streams.forwarded if forwarding and self._streams is not None else JOIN_METHODS
                await _serve_lines(self._api, process.stdin, process.stdout, allowed, role,
                                   streams=self._streams if forwarding else None)
            except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, ConnectionError):
                pass
            finally:
                process.exit(0)

        try:
            self._server = await asyncssh.create_server(
                factory, self._addr, self._port,
                server_host_keys=[str(self._host_key_path)],
                process_factory=handle, encoding=None,
                allow_scp=False, agent_forwarding=False, x11_forwarding=False,
            )
        except OSError as exc:
            raise PyswarmError(f"cannot listen for joining hosts on {self._addr}:{self._port}: {exc.strerror}") from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
