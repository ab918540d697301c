"""An image channel through the system's OpenSSH client, one ``ssh`` process per node.

Why: a shipment's bytes were encrypted by asyncssh on the manager's one
event loop, so five nodes at once were five streams through one Python
thread. Measured on the loaded lab (bench/RESULTS.md), that thread was
the limit: ~3.4 s of the manager's CPU for 5 x 100 MB while the machine's
scheduler gave it a small share of a core, and the sends took 17 s. With
one ``ssh`` per node the encryption runs in C, in as many processes as
there are nodes, and the manager only copies the archive into pipes.

The connection is the one the dispatcher would open: user root, the
cluster key, the node's host key pinned at join (``StrictHostKeyChecking``
against a known_hosts file holding only that key), no SSH config, agent or
other identity. The key and known_hosts live in a private directory
(0700, files 0600) under the manager's state for the shipment's length.
:class:`OpenSSHConnection` has the one method :func:`.images.ship_to`
needs of an asyncssh connection (``create_process``), so the channel's
protocol is the same code either way.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import asyncssh

from pyswarm.models import Node

CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"


def available() -> bool:
    """Is there an ``ssh`` client (and not told to use asyncssh)?"""
    return os.environ.get("PYSWARM_SHIP_TRANSPORT", "") != "asyncssh" and shutil.which("ssh") is not None


class _Stdin:
    """The ``ssh`` child's stdin: a pipe of our own, blocking, so that a
    thread can ``sendfile`` the spool into it (the archive's bytes go from
    the page cache to the pipe in the kernel, never through this process).
    The protocol's lines are small: written directly."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Process:
    """An ``ssh`` child seen as an asyncssh process: stdin, stdout, stderr,
    close; and :meth:`send_file`, which :func:`.images.ship_to` uses when
    there."""

    def __init__(self, proc: asyncio.subprocess.Process, stdin: _Stdin) -> None:
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self.stdin = stdin
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    async def send_file(self, path: Path, pieces: Iterable[tuple[bytes, int, int]]) -> int:
        """Write ``pieces`` (:meth:`pyswarm.images.SavedArchive.pieces`) of
        the file at ``path`` into stdin; returns the bytes written."""
        return await asyncio.to_thread(self._send_file, path, list(pieces))

    def _send_file(self, path: Path, pieces: list[tuple[bytes, int, int]]) -> int:
        sent = 0
        with open(path, "rb") as src:
            for head, offset, size in pieces:
                self.stdin.write(head)
                sent += len(head)
                while size > 0:
                    n = os.sendfile(self.stdin.fd, src.fileno(), offset, size)
                    if n == 0:
                        raise OSError(f"{path} ends before its archive's pieces do")
                    offset, size, sent = offset + n, size - n, sent + n
        return sent

    def close(self) -> None:
        self.stdin.write_eof()
        if self._proc.returncode is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass
        asyncio.ensure_future(self._proc.wait())  # reaped in the background


class OpenSSHConnection:
    """``create_process`` over ``ssh`` to ``node`` with the cluster key."""

    def __init__(self, node: Node, private_key: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir = Path(tempfile.mkdtemp(prefix="ssh-", dir=directory))
        self.key = self._dir / "key"
        self.known_hosts = self._dir / "known_hosts"
        key = asyncssh.import_private_key(private_key).export_private_key("openssh")
        _write_private(self.key, key)
        host = node.addr if node.ssh_port == 22 else f"[{node.addr}]:{node.ssh_port}"
        pinned = asyncssh.import_public_key(node.ssh_host_key).export_public_key("openssh").decode().strip()
        _write_private(self.known_hosts, f"{host} {pinned}\n".encode())
        self.node = node

    def argv(self, command: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-T", "-i", str(self.key), "-p", str(self.node.ssh_port),
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", f"Ciphers={CIPHERS}",
                "-o", "LogLevel=ERROR", f"root@{self.node.addr}", command]

    async def create_process(self, command: str, encoding: Any = None) -> _Process:
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups of ssh
        except OSError:
            pass
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(command), stdin=r, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=1 << 20)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        return _Process(proc, _Stdin(w))

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
