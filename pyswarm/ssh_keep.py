"""The remote CLI's kept SSH connection: OpenSSH connection sharing.

Every remote invocation used to pay an SSH handshake and a Python start of
``pyswarm system dial-stdio`` on the manager (~0.3 s of fixed cost, more
than the command itself). So the ssh(1) transport (pyswarm/remote.py) runs
with OpenSSH's connection sharing, as Ansible does: the first invocation's
ssh becomes a master (``ControlMaster=auto``) that stays in the background
for :func:`keep_seconds` after its last use (``ControlPersist``), and it
also keeps a local forward of a unix socket (``-L LOCAL:REMOTE``, OpenSSH's
streamlocal) to the manager's API socket on that host. The next invocation
connects to that local socket and is at the manager's API at once: no new
SSH connection, no process on either end.

What stays as it was:

- who may use the API: sshd opens the manager's socket as the logged-in
  user, so the socket's own mode (0600 root, 0660 the ``--api-group``) is
  what admits or refuses, exactly as for dial-stdio. A refused forward (that
  user may not, or sshd forbids streamlocal forwarding, or no manager runs)
  falls back to dial-stdio over the kept master, which says why (and takes a
  passwordless sudo where there is one); when dial-stdio then works, the
  forward is not tried again while this master lives (``KEY.noforward``);
- the cluster's forced-command keys (``restrict``) cannot forward: sshd
  refuses it for them, kept master or not;
- host keys: a master is made only by an ssh that checked the key
  (``StrictHostKeyChecking=yes``);
- one SSH connection per invocation: the shared master counts as one.

Where: a 0700 directory of this user's (``$XDG_RUNTIME_DIR/pyswarm-ssh``,
else ``/tmp/pyswarm-ssh-UID``), never ~/.ssh; per (SSH config, target) a
control socket ``KEY.ctl`` and the forward ``KEY.sock`` (0600). A directory
that is not this user's, or is open to others, turns keeping off. A master
whose host went away ends itself (``ServerAliveInterval``); one that still
runs but does not answer within :data:`WARM_TIMEOUT` is stopped and its
sockets removed; the invocation tries the other managers first, then this
one afresh (pyswarm/remote.py ``connect_any``). ``PYSWARM_SSH_KEEP=0`` turns all of it off;
``PYSWARM_SSH_KEEP=SECONDS`` sets how long a master outlives its last use.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pyswarm import rpc
from pyswarm.errors import ConnectionError_, PyswarmError, UsageError

KEEP_ENV = "PYSWARM_SSH_KEEP"
DEFAULT_KEEP = 60
# the manager's API socket on a host pyswarm installed (pyswarm/paths.py's default)
REMOTE_SOCKET = "/run/pyswarm/manager.sock"
# a warm ping is one round trip over an open connection: far more than it needs
# on a loaded machine, and a host that went away is not waited on for longer
WARM_TIMEOUT = 5.0
# why a kept forward was of no use (Kept.dial)
REFUSED = "refused"
SILENT = "silent"
# a master notices a host that went away within ~15 s and ends itself
ALIVE_INTERVAL = 5
ALIVE_COUNT = 3
# a unix socket's path fits in 107 bytes: the directory, a key, ".ctl" and
# the 17 characters ssh(1) adds while it makes the control socket
MAX_DIR_LEN = 107 - 17 - 21
# a refused forward is tried again after this (the manager may have been restarting)
NO_FORWARD_FOR = 300.0


def keep_seconds() -> int:
    """How long a master outlives its last use; 0 when keeping is off."""
    text = os.environ.get(KEEP_ENV, "").strip().lower()
    if text == "":
        return DEFAULT_KEEP
    if text in ("0", "no", "off", "false"):
        return 0
    if not text.isdigit():
        raise UsageError(f"{KEEP_ENV} is {text!r}: expected a number of seconds, or 0 to keep no connection")
    return int(text)


def runtime_dir() -> Path | None:
    """This user's private directory for the sockets, made 0700 when
    missing; None (keeping off) when it is someone else's or not a directory."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    path = Path(base) / "pyswarm-ssh"
    if not base or not Path(base).is_dir() or len(str(path)) > MAX_DIR_LEN:
        path = Path(f"/tmp/pyswarm-ssh-{os.geteuid()}")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return None
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError:
            return None
    return path


@dataclass(frozen=True)
class Kept:
    """The kept connection to one target, as read with one SSH config."""

    dir: Path
    key: str
    seconds: int

    @classmethod
    def of(cls, destination: str, config: list[str]) -> Kept | None:
        """The kept connection for ``destination`` (a target's URL); None
        when keeping is off."""
        seconds = keep_seconds()
        if seconds == 0:
            return None
        where = runtime_dir()
        if where is None:
            return None
        key = hashlib.sha256("\0".join([destination, *config]).encode()).hexdigest()[:16]
        return cls(where, key, seconds)

    @property
    def control(self) -> Path:
        return self.dir / f"{self.key}.ctl"

    @property
    def forward(self) -> Path:
        return self.dir / f"{self.key}.sock"

    @property
    def no_forward(self) -> Path:
        return self.dir / f"{self.key}.noforward"

    def ssh_options(self) -> list[str]:
        """ssh(1)'s options: share (or become) the master, and keep the
        forward to the manager's socket unless it was refused."""
        argv = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}",
                "-o", f"ControlPersist={self.seconds}", "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
                "-o", f"ServerAliveCountMax={ALIVE_COUNT}", "-o", "StreamLocalBindMask=0177"]
        if not _fresh(self.no_forward):
            argv += ["-L", f"{self.forward}:{REMOTE_SOCKET}"]
        return argv

    def master_running(self) -> bool:
        """A master listens on the control socket (a stale file is not one)."""
        return _listening(self.control)

    def before_cold(self) -> None:
        """A new master may be about to be made: what a master that is gone
        left (its forward's file, that its forward was refused) goes."""
        if not self.master_running():
            _unlink(self.forward)
            _unlink(self.no_forward)
        sweep(self.dir)

    def dial(self, where: str) -> tuple[rpc.Connection | None, str]:
        """The manager's API through the kept forward, once it answered a
        ping: ``(connection, "")``. Else ``(None, why)``: ``""`` when there is
        none to use, ``REFUSED`` when the master is there but the far end
        would not open the manager's socket (dial-stdio over the master says
        why), ``SILENT`` when the master got no answer (it is stopped)."""
        if _fresh(self.no_forward):
            return None, ""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.forward))
        except OSError:
            sock.close()
            if self.master_running():
                # a master without its forward (it could not bind it): it
                # takes no new sessions and ends after its last, and the
                # next ssh makes a master that has one
                self.stop("stop")
            return None, ""
        conn = rpc.Connection(sock, where)
        start = time.monotonic()
        try:
            conn.call("ping", timeout=WARM_TIMEOUT)
            return conn, ""
        except ConnectionError_:
            conn.close()
        except PyswarmError:  # the manager answered, with an error: the cold path says it, as ever
            conn.close()
            return None, ""
        if time.monotonic() - start >= WARM_TIMEOUT - 0.5:
            self.stop("exit")  # a master that no longer gets an answer: not waited on again
            return None, SILENT
        return None, REFUSED

    def refused(self) -> None:
        """The forward was refused but dial-stdio works (e.g. through sudo):
        do not try the forward again for a while (``NO_FORWARD_FOR``) while
        this master lives."""
        try:
            self.no_forward.touch(mode=0o600)
        except OSError:
            pass

    def stop(self, how: str = "exit") -> None:
        """``ssh -O exit`` (the master ends now) or ``-O stop`` (it takes no
        new sessions and ends after its last), and its files go."""
        if self.control.exists():
            try:
                subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={self.control}", "-O", how, "kept"],
                               capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for path in (self.control, self.forward, self.no_forward):
            _unlink(path)


def sweep(where: Path, older_than: float = 60.0) -> None:
    """Remove what masters that are gone left in ``where`` (OpenSSH leaves a
    forward's socket file behind): files of a key whose master does not
    listen, once older than ``older_than`` (a master being made is not
    raced)."""
    cutoff = time.time() - older_than
    try:
        forwards = list(where.glob("*.sock"))
    except OSError:
        return
    for sock in forwards:
        try:
            if sock.lstat().st_mtime > cutoff:
                continue
        except OSError:
            continue
        if not _listening(sock.with_suffix(".ctl")) and not _listening(sock):
            for path in (sock, sock.with_suffix(".ctl"), sock.with_suffix(".noforward")):
                _unlink(path)


def _fresh(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < NO_FORWARD_FOR
    except OSError:
        return False


def _listening(path: Path) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
