"""The remote CLI's transport: the operator's machine to a manager's API over SSH.

``pyswarm --host ssh://[user@]HOST[:PORT] …`` (or ``PYSWARM_HOST``, or a
context) opens one SSH connection with the operator's own OpenSSH setup —
``~/.ssh/config`` or the file ``PYSWARM_SSH_CONFIG`` names (Host aliases,
HostName, User, Port, IdentityFile, ProxyJump, UserKnownHostsFile), the SSH
agent, known_hosts — runs ``pyswarm system dial-stdio`` on the host
(pyswarm/dial_stdio.py) and hands the CLI an :class:`rpc.Connection` over
that channel, so every request of the invocation rides the one connection.

When an ``ssh`` binary is on PATH the connection is ssh(1) itself, run as
Docker runs it for ``DOCKER_HOST=ssh://``: ``ssh -F CONFIG -o BatchMode=yes
-o StrictHostKeyChecking=yes [-p PORT] [-l USER] HOST pyswarm system
dial-stdio`` with one end of a socket pair as its stdin and stdout, the
other end the Connection's socket. That spares the CLI ``import asyncssh``
(~0.16 s of a ~0.5 s round trip). asyncssh (pyswarm/asyncssh_host.py,
imported only then) carries the connection when there is no ``ssh`` binary
or ``PYSWARM_SSH_TRANSPORT=asyncssh``, and when ssh(1) refused the host key:
it names the key and its fingerprint, or adds it to known_hosts when the
operator accepts it (``--accept-host-key``, or yes at the prompt on a
terminal), and goes on.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyswarm import rpc
from pyswarm.errors import ConnectionError_, PyswarmError, UsageError
from pyswarm import ssh_keep
from pyswarm.ssh_keep import Kept

REMOTE_COMMAND = "pyswarm system dial-stdio"
CONNECT_TIMEOUT = 15.0
# ssh(1) prefers sntrup761x25519 (post-quantum), ~0.14 s of both ends' CPU per
# handshake here, half of an `ssh HOST true`; asyncssh negotiated curve25519.
# ``^`` puts it first and keeps ssh's default set, so a server without it
# still gets one of those (measured: bench/RESULTS.md, "From the operator's machine").
PREFERRED_KEX = "curve25519-sha256"


class HostKeyError(ConnectionError_):
    """The host's key is not one the operator trusts: never tried past."""


@dataclass(frozen=True)
class SSHTarget:
    """``ssh://[user@]host[:port]``; what is not given comes from the SSH config."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}{port}"

    @property
    def destination(self) -> str:
        """``[user@]host`` as ssh(1) takes it."""
        return f"{self.user}@{self.host}" if self.user else self.host


def parse_target(text: str, scheme_required: bool = True) -> SSHTarget:
    """Parse ``ssh://[user@]host[:port]`` (``[user@]host[:port]`` too when
    ``scheme_required`` is false); one line naming the problem otherwise."""
    rest = text
    if text.startswith("ssh://"):
        rest = text[len("ssh://"):]
    elif scheme_required:
        raise UsageError(f"invalid host {text!r}: expected ssh://[USER@]HOST[:PORT]")
    rest = rest.rstrip("/")
    user, at, hostport = rest.rpartition("@")
    if at and not user:
        raise UsageError(f"invalid host {text!r}: empty user before @")
    host, port = hostport, None
    if hostport.startswith("["):  # [v6]:port
        end = hostport.find("]")
        if end < 0:
            raise UsageError(f"invalid host {text!r}: unclosed [")
        host, tail = hostport[1:end], hostport[end + 1:]
        if tail:
            if not tail.startswith(":"):
                raise UsageError(f"invalid host {text!r}: expected :PORT after ]")
            port = _port(text, tail[1:])
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
        port = _port(text, port_text)
    if not host or any(c in host for c in "/ \t"):
        raise UsageError(f"invalid host {text!r}: expected ssh://[USER@]HOST[:PORT]")
    return SSHTarget(host=host, user=user or None, port=port)


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise UsageError(f"invalid host {text!r}: port {value!r} is not a number from 1 to 65535")
    return int(value)


def ssh_config_paths() -> list[str] | tuple[()]:
    """The OpenSSH client config to read: ``PYSWARM_SSH_CONFIG`` when set
    (and then only it), else asyncssh's default, ``~/.ssh/config``."""
    named = os.environ.get("PYSWARM_SSH_CONFIG")
    if not named:
        return ()
    if not Path(named).is_file():
        raise UsageError(f"PYSWARM_SSH_CONFIG names {named}, which is not a readable file")
    return [named]


@dataclass(frozen=True)
class Ran:
    """What a command run over SSH did."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def error(self) -> str:
        return " ".join(self.stderr.decode(errors="replace").split())[-800:]


def transport() -> str:
    """``ssh`` (the system's ssh(1)) or ``asyncssh``: ``PYSWARM_SSH_TRANSPORT``
    when set, else ssh when an ``ssh`` binary is on PATH."""
    chosen = os.environ.get("PYSWARM_SSH_TRANSPORT", "")
    if chosen not in ("", "ssh", "asyncssh"):
        raise UsageError(f"PYSWARM_SSH_TRANSPORT is {chosen!r}: expected ssh or asyncssh")
    if chosen == "asyncssh":
        return "asyncssh"
    if shutil.which("ssh") is None:
        if chosen == "ssh":
            raise UsageError("PYSWARM_SSH_TRANSPORT=ssh, but there is no ssh binary on PATH")
        return "asyncssh"
    return "ssh"


def ssh_argv(target: SSHTarget, command: str = REMOTE_COMMAND, kept: Kept | None = None) -> list[str]:
    """The ssh(1) command line that runs ``command`` on ``target``: the config
    ``PYSWARM_SSH_CONFIG`` names (else ssh's own default), never a prompt
    (BatchMode), never a host key that known_hosts does not hold; with
    ``kept``, sharing (or becoming) its master (pyswarm/ssh_keep.py)."""
    argv = ["ssh"]
    for path in ssh_config_paths():
        argv += ["-F", path]
    argv += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"ConnectTimeout={CONNECT_TIMEOUT:.0f}", "-o", f"KexAlgorithms=^{PREFERRED_KEX}", "-T", "-x"]
    if target.port:
        argv += ["-p", str(target.port)]
    if target.user:
        argv += ["-l", target.user]
    if kept is not None:
        argv += kept.ssh_options()
    return argv + ["--", target.host, command]


_REFUSED_KEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                "No host key is known", "Host key for")
_UNREACHABLE = ("Connection refused", "No route to host", "Could not resolve hostname", "timed out",
                "Network is unreachable", "Name or service not known", "Connection closed by",
                "Connection reset")


class _NeedsAsyncssh(Exception):
    """ssh(1) refused the host key: asyncssh says which key (or accepts it)."""


class SSHProcess:
    """ssh(1) running dial-stdio on a host: its stdin and stdout are one end of
    a socket pair, :attr:`sock` the other; its stderr (ssh's own errors and the
    far end's) is kept for the error that names why the stream ended."""

    def __init__(self, target: SSHTarget, command: str = REMOTE_COMMAND, kept: Kept | None = None) -> None:
        self.target = target
        self.stderr = bytearray()
        self.sock, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(ssh_argv(target, command, kept), stdin=theirs.fileno(), stdout=theirs.fileno(),
                                         stderr=subprocess.PIPE)
        except OSError as exc:
            self.sock.close()
            raise ConnectionError_(f"{target.url}: cannot run ssh: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        self.reader = threading.Thread(target=self._collect, name=f"ssh stderr {target.url}", daemon=True)
        self.reader.start()

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        try:
            while data := os.read(self.proc.stderr.fileno(), 4096):
                if len(self.stderr) < 8192:
                    self.stderr += data
        except (OSError, ValueError):  # closed under us: ssh is gone
            pass

    def explain(self) -> str:
        return " ".join(self.stderr.decode(errors="replace").split())[:500]

    def connection(self) -> rpc.Connection:
        return rpc.Connection(self.sock, self.target.url, explain=self.explain, on_close=self.close)

    def failure(self, exc: PyswarmError) -> PyswarmError:
        """What to say when the first request failed: ssh's own reason when
        ssh gave up (exit 255), else the far end's (``exc`` already says it)."""
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return exc
        self.reader.join(2)
        said, where = self.explain(), self.target.url
        if code != 255:
            return exc
        if any(s in said for s in _REFUSED_KEY):
            raise _NeedsAsyncssh(said)
        if "Permission denied" in said:
            return ConnectionError_(f"{where}: SSH authentication failed (no key of the agent or the SSH "
                                    f"config's IdentityFile was accepted): {said}")
        if any(s in said for s in _UNREACHABLE):
            return ConnectionError_(f"{where}: cannot connect: {said}")
        return ConnectionError_(f"{where}: SSH failed: {said or 'ssh exited 255'}")

    def close(self) -> None:
        """Every answer is in by now: ssh is stopped at once (as Docker stops
        its ssh), not waited for while the far end winds down (a round trip
        and dial-stdio's exit, on every invocation); sshd ends the session."""
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(1)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _dial_asyncssh(target: SSHTarget, accept_host_key: bool, prompt: bool, command: str) -> rpc.Connection:
    from pyswarm.asyncssh_host import SSHHost

    host = SSHHost(target, accept_host_key, prompt).connect()
    try:
        return host.dial(command)
    except BaseException:
        host.close()
        raise


class _Silent(Exception):
    """The target's kept connection got no answer (and was stopped): the
    other managers are tried before this one is connected to afresh."""


def _dial_ssh(target: SSHTarget, command: str, defer: bool = False) -> rpc.Connection:
    """ssh(1) to ``target``; ssh connects as it starts, so the first answer
    (a ping) is what says the connection is up. The kept connection's
    forward first, when there is one (pyswarm/ssh_keep.py); with ``defer``,
    one that got no answer raises :class:`_Silent`."""
    kept = Kept.of(target.url, list(ssh_config_paths())) if command == REMOTE_COMMAND else None
    refused = False
    if kept is not None:
        warm, why = kept.dial(target.url)
        if warm is not None:
            return warm
        if why == ssh_keep.SILENT and defer:
            raise _Silent(target.url)
        refused = why == ssh_keep.REFUSED
        kept.before_cold()
    ssh = SSHProcess(target, command, kept)
    conn = ssh.connection()
    try:
        conn.call("ping", timeout=CONNECT_TIMEOUT * 2 + 5)  # ProxyJump hops connect first
    except PyswarmError as exc:
        try:
            failure = ssh.failure(exc)  # before close: ssh's own exit status and words
        finally:
            conn.close()
        raise failure from None
    except BaseException:
        conn.close()
        raise
    return conn


def connect(target: SSHTarget, accept_host_key: bool = False, prompt: bool = True,
            command: str = REMOTE_COMMAND, defer: bool = False) -> rpc.Connection:
    """One SSH connection to ``target`` running ``command`` (dial-stdio),
    whose manager answered a ping; an error naming ``target`` otherwise.
    ``defer``: raise :class:`_Silent` when its kept connection got no answer."""
    try:
        if transport() == "ssh":
            try:
                return _dial_ssh(target, command, defer)
            except _NeedsAsyncssh:
                pass  # asyncssh names the refused key, or accepts it
        conn = _dial_asyncssh(target, accept_host_key, prompt, command)
        try:
            conn.call("ping", timeout=5)
        except BaseException:
            conn.close()
            raise
        return conn
    except HostKeyError:
        raise
    except PyswarmError as exc:
        raise ConnectionError_(f"{target.url}: {exc}" if target.url not in str(exc) else str(exc)) from None


def connect_any(targets: Sequence[SSHTarget], accept_host_key: bool = False, prompt: bool = True,
                what: str = "") -> rpc.Connection:
    """The first of ``targets`` whose manager answers a ping; the error names
    every one tried and why. A host key refused stops at once: that is the
    operator's to decide, not a manager being down. A target whose kept
    connection got no answer is tried again afresh after the others."""
    failures: list[str] = []
    queue = [(target, len(targets) > 1) for target in targets]
    while queue:
        target, defer = queue.pop(0)
        try:
            return connect(target, accept_host_key, prompt, defer=defer)
        except _Silent:
            queue.append((target, False))  # its kept connection got no answer: afresh, after the others
        except HostKeyError:
            raise
        except PyswarmError as exc:
            failures.append(str(exc))
    if len(failures) == 1:
        raise ConnectionError_(failures[0])
    raise ConnectionError_(f"no manager{' of ' + what if what else ''} answered; tried "
                           + "; ".join(failures))


def open_selected(targets: Sequence[SSHTarget], context: str, accept_host_key: bool = False) -> rpc.Connection:
    """The connection for a CLI invocation: this host's manager when no
    target is selected, else the first of the targets that answers."""
    if not targets:
        from pyswarm import config as cfg

        return rpc.connect_unix(cfg.socket_path())
    return connect_any(targets, accept_host_key, what=f"context {context}" if context else "")
