"""The API's two doors: a unix socket for the CLI on this host, and an SSH
port for hosts that join.

The unix socket is root-only (mode 0600), which is the whole of its
authentication, as with Docker's socket. The SSH port admits a password that
is a join token's secret and lets it call only the join methods; its host key
is the one whose fingerprint every join token carries, so a joiner can tell
this manager from an impostor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from pyswarm import rpc
from pyswarm.errors import PyswarmError, UsageError
from pyswarm.wire import BadRequest, parse, rule

from .api import JOIN_METHODS, Api

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
    return parse(Request, data)


async def _serve_lines(api: Api, reader: Any, writer: Any, allowed: frozenset[str] | None, role: str = "") -> None:
    while True:
        line = await reader.readline()
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
            result = await api.call(method, params)
            out = rpc.encode_result(result)
        except PyswarmError as exc:
            out = rpc.encode_error(exc)
        except Exception as exc:  # report, keep serving; never log the params (a secret's data)
            log.exception("API method %s failed", method[:128])
            out = rpc.encode_error(PyswarmError(f"internal error in {method[:128]}: {type(exc).__name__} "
                                                "(see the manager's log)"))
        writer.write(out if isinstance(out, bytes) else out.decode())
        if hasattr(writer, "drain"):
            await writer.drain()


class UnixApiServer:
    def __init__(self, api: Api, path: Path) -> None:
        self._api = api
        self._path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.exists():
            self._path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self._path))
        finally:
            os.umask(old_umask)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve_lines(self._api, reader, writer, None)
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
    def __init__(self, secrets: Any) -> None:
        self._secrets = secrets
        self.role = ""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def validate_password(self, username: str, password: str) -> bool:
        worker, manager = self._secrets()
        if username == "join" and worker and password == worker:
            self.role = "worker"
            return True
        if username == "join" and manager and password == manager:
            self.role = "manager"
            return True
        return False


class SSHApiServer:
    """The join door: ``ssh join@MANAGER -p 2377`` with the token's secret."""

    def __init__(self, api: Api, addr: str, port: int, host_key_path: Path, secrets: Any) -> None:
        self._api = api
        self._addr = addr
        self._port = port
        self._host_key_path = host_key_path
        self._secrets = secrets
        self._server: Any = None

    async def start(self) -> None:
        def factory() -> _JoinSSHServer:
            return _JoinSSHServer(self._secrets)

        async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
            conn = process.get_extra_info("connection")
            owner = conn.get_owner() if conn is not None else None
            role = getattr(owner, "role", "worker")
            try:
                await _serve_lines(self._api, process.stdin, process.stdout, JOIN_METHODS, role)
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
