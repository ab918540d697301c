"""The remote CLI's asyncssh transport, and ``pyswarm machine``'s SSH sessions.

Imported only where it is needed (``import asyncssh`` alone costs ~0.16 s, a
third of a remote CLI round trip): ``pyswarm machine`` (commands run over
one connection, :class:`SSHHost`), and the API connection when no ``ssh``
binary is on PATH, when ``PYSWARM_SSH_TRANSPORT=asyncssh``, or when ssh(1)
refused a host key (this module says which key, with its fingerprint, and
adds it when the operator accepts it). pyswarm/remote.py runs ssh(1)
otherwise, as Docker's ``DOCKER_HOST=ssh://`` does.

asyncssh runs on an event loop in a thread of its own; a channel's two
directions are pumped to one end of a socket pair whose other end is the
:class:`rpc.Connection`'s socket.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import asyncssh

from pyswarm import rpc
from pyswarm.errors import ConnectionError_, UsageError
from pyswarm.remote import (CONNECT_TIMEOUT, REMOTE_COMMAND, HostKeyError, Ran, SSHTarget, parse_target,
                            ssh_config_paths)


def _options(target: SSHTarget) -> asyncssh.SSHClientConnectionOptions:
    return asyncssh.SSHClientConnectionOptions(host=target.host, port=target.port or (),
                                               username=target.user or (), config=ssh_config_paths())


def known_hosts_files(target: SSHTarget) -> list[Path]:
    """The known_hosts files that hold the keys trusted for ``target``: the
    config's UserKnownHostsFile (none: no file), else ~/.ssh/known_hosts.
    The first is where an accepted key goes."""
    files: Any = _options(target).known_hosts  # from the config: None or a list of paths
    if files is None:
        return []
    if not files:
        return [Path.home() / ".ssh" / "known_hosts"]
    return [Path(os.path.expanduser(f)) for f in files if isinstance(f, str)]


def _trusted(target: SSHTarget) -> Any:
    """The keys of those files; a missing file holds none (as OpenSSH reads it)."""
    text = ""
    for path in known_hosts_files(target):
        try:
            text += path.read_text() + "\n"
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot read known_hosts file {path}: {exc.strerror or exc}") from None
    try:
        return asyncssh.import_known_hosts(text)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise UsageError(f"a known_hosts file for {target.url} does not parse: {exc}") from None


def _prompt_accept(host: str, fp: str) -> bool:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(f"The authenticity of host '{host}' can't be established.\nKey fingerprint is {fp}.",
          file=sys.stderr)
    try:
        answer = input("Are you sure you want to continue connecting (yes/no)? ")
    except EOFError:
        return False
    return answer.strip().lower() == "yes"


class _Client(asyncssh.SSHClient):
    """Sees a host key that known_hosts does not hold, and says whether to go on."""

    def __init__(self, accept: bool, prompt: bool) -> None:
        self.accept = accept
        self.prompt = prompt
        self.unknown: tuple[str, str, int, asyncssh.SSHKey] | None = None
        self.accepted = False

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.unknown = (host, addr, port, key)
        self.accepted = self.accept or (self.prompt and _prompt_accept(host, key.get_fingerprint()))
        return self.accepted


def _where_trusted(target: SSHTarget) -> str:
    return ", ".join(str(p) for p in known_hosts_files(target)) or "UserKnownHostsFile none"


def _remember_host_key(target: SSHTarget, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> Path:
    files = known_hosts_files(target)
    path = files[0] if files else Path.home() / ".ssh" / "known_hosts"
    names = [host] + ([addr] if addr and addr != host else [])
    if port != 22:
        names = [f"[{n}]:{port}" for n in names]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    algorithm, data = key.export_public_key("openssh").decode().split()[:2]
    line = f"{','.join(names)} {algorithm} {data}\n"
    with open(path, "a") as fh:
        fh.write(line)
    return path


class SSHHost:
    """One SSH connection to a host, for a synchronous caller: commands run
    over it (:meth:`run`, ``pyswarm machine``) or one channel becomes an API
    :class:`rpc.Connection` (:meth:`dial`). asyncssh runs on an event loop in
    a thread of its own; :meth:`close` ends both."""

    def __init__(self, target: SSHTarget, accept_host_key: bool = False, prompt: bool = True) -> None:
        self.target = target
        self.accept = accept_host_key
        self.prompt = prompt
        self.command = REMOTE_COMMAND
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=f"ssh {target.url}", daemon=True)
        self.stderr = bytearray()
        self.conn: asyncssh.SSHClientConnection | None = None
        self.conns: list[asyncssh.SSHClientConnection] = []  # the target's last, its jumps before

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def connect(self) -> SSHHost:
        """Open the connection (host key checked, ProxyJump followed)."""
        self.thread.start()
        try:
            self._wait(self._connect(), CONNECT_TIMEOUT * 2 + 5)
        except BaseException:
            self.close()
            raise
        return self

    def _wait(self, coro: Any, timeout: float) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise ConnectionError_(f"{self.target.url}: no answer within {timeout:.0f}s") from None

    async def _connect(self) -> None:
        self.conn = await self._ssh(self.target, 0)

    def run(self, command: str, input: bytes | None = None, timeout: float = 300) -> Ran:
        """Run ``command`` (a shell line) on the host, ``input`` on its stdin."""
        return self._wait(self._run_command(command, input), timeout)  # type: ignore[no-any-return]

    async def _run_command(self, command: str, input: bytes | None) -> Ran:
        assert self.conn is not None
        try:
            done = await self.conn.run(command, input=input or b"", encoding=None, check=False)
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionError_(f"{self.target.url}: lost the SSH connection running {command.split()[0]}: "
                                   f"{getattr(exc, 'reason', None) or exc}") from None
        code = done.exit_status if done.exit_status is not None else 255
        out, err = done.stdout or b"", done.stderr or b""
        return Ran(code, out if isinstance(out, bytes) else out.encode(), err if isinstance(err, bytes) else err.encode())

    def dial(self, command: str = REMOTE_COMMAND) -> rpc.Connection:
        """The manager's API on this host, over a channel running ``command``;
        closing the connection closes the SSH connection too."""
        self.command = command
        sock: socket.socket = self._wait(self._open(), CONNECT_TIMEOUT + 5)
        return rpc.Connection(sock, self.target.url, explain=self.explain, on_close=self.close)

    def explain(self) -> str:
        return " ".join(self.stderr.decode(errors="replace").split())[:500]

    async def _open(self) -> socket.socket:
        assert self.conn is not None
        process = await self.conn.create_process(self.command, encoding=None)
        mine, theirs = socket.socketpair()
        theirs.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=theirs)
        asyncio.ensure_future(self._pump(reader, process.stdin, eof=True))
        asyncio.ensure_future(self._pump(process.stdout, writer, eof=False))
        asyncio.ensure_future(self._collect(process.stderr))
        return mine

    async def _ssh(self, target: SSHTarget, depth: int) -> asyncssh.SSHClientConnection:
        """Connect to ``target``, through its ProxyJump hosts (each checked
        against known_hosts the same way) when the config names any."""
        jump: Any = None
        proxy = _options(target).tunnel
        if isinstance(proxy, str) and proxy.lower() != "none":
            if depth >= 4:
                raise ConnectionError_(f"{target.url}: more than 4 ProxyJump hops (a loop in the SSH config?)")
            for hop in proxy.split(","):
                hop_target = parse_target(hop.strip(), scheme_required=False)
                jump = await self._ssh_via(hop_target, jump, depth + 1)
        return await self._ssh_via(target, jump, depth)

    async def _ssh_via(self, target: SSHTarget, tunnel: Any, depth: int) -> asyncssh.SSHClientConnection:
        client = _Client(self.accept, self.prompt)
        where = target.url
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                target.host, port=target.port or (), username=target.user or (),
                config=ssh_config_paths(), client_factory=lambda: client, known_hosts=_trusted(target),
                tunnel=tunnel,
            ), CONNECT_TIMEOUT)
        except asyncssh.HostKeyNotVerifiable as exc:
            if client.unknown is not None and not client.accepted:
                host, addr, port, key = client.unknown
                raise HostKeyError(
                    f"refusing {where}: its host key is not in known_hosts ({_where_trusted(target)}): "
                    f"{key.get_algorithm()} key fingerprint {key.get_fingerprint()}; if that is the host's "
                    f"key, accept it with --accept-host-key or add it to known_hosts") from None
            raise HostKeyError(f"refusing {where}: {exc.reason}") from None
        except asyncssh.PermissionDenied:
            raise ConnectionError_(f"{where}: SSH authentication failed (no key of the agent or the SSH "
                                   "config's IdentityFile was accepted)") from None
        except asyncssh.Error as exc:
            raise ConnectionError_(f"{where}: SSH failed: {exc.reason}") from None
        except asyncio.TimeoutError:
            raise ConnectionError_(f"{where}: SSH connection timed out after {CONNECT_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise ConnectionError_(f"{where}: cannot connect: {exc.strerror or exc}") from None
        if client.accepted and client.unknown is not None:
            path = _remember_host_key(target, *client.unknown)
            print(f"Warning: added the host key of {where} ({client.unknown[3].get_fingerprint()}) to {path}",
                  file=sys.stderr)
        self.conns.append(conn)
        return conn

    async def _pump(self, src: Any, dst: Any, eof: bool) -> None:
        try:
            while True:
                data = await src.read(1 << 16)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, asyncssh.Error):
            pass
        finally:
            try:
                if eof:
                    dst.write_eof()
                else:
                    dst.close()
            except (OSError, asyncssh.Error, RuntimeError):
                pass

    async def _collect(self, src: Any) -> None:
        try:
            while len(self.stderr) < 8192:
                data = await src.read(4096)
                if not data:
                    return
                self.stderr += data
        except (OSError, asyncssh.Error):
            pass

    async def _shutdown(self) -> None:
        for conn in reversed(self.conns):
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 2)
            except (asyncio.TimeoutError, OSError, asyncssh.Error):
                pass
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    def __enter__(self) -> SSHHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        except Exception:  # noqa: BLE001 - closing: nothing left to report to
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
