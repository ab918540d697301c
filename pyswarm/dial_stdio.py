"""``pyswarm system dial-stdio``: the far end of the remote CLI.

The operator's pyswarm opens an SSH session to a manager host and runs this
there, as ``docker system dial-stdio`` does: it connects to the local
manager's unix socket and copies bytes both ways between it and
stdin/stdout until either side ends. It understands nothing of what it
carries, so every API method (and every streaming answer, and exec's input)
works through it unchanged.

Who may use it is who may open the socket: root (mode 0600), or the group
named at ``pyswarm init --api-group`` (mode 0660). A user who is neither but
has passwordless sudo gets in through ``sudo -n``; one without gets a line
saying so. Errors go to stderr, one line, which the operator's CLI shows
with the host's name.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from pyswarm.paths import pyswarm_executable, socket_path

EXIT_NO_MANAGER = 3
EXIT_DENIED = 4


def _who_may(path: Path) -> str:
    """Who the socket admits, as far as this user can see: the socket's
    own mode, or (when this user cannot even get through to it) that of its
    directory, which the manager opens to the API group for search."""
    try:
        st = path.stat()
        group_may = st.st_mode & 0o060 == 0o060
    except PermissionError:
        try:
            st = path.parent.stat()
        except OSError:
            return "root"
        group_may = bool(st.st_mode & 0o010)
    except OSError:
        return "root"
    if group_may and st.st_gid != 0:
        import grp

        try:
            return f"root or members of group {grp.getgrgid(st.st_gid).gr_name}"
        except KeyError:
            return f"root or members of group {st.st_gid}"
    return "root"


def _connect(path: Path) -> socket.socket | int:
    """The socket, or the exit status to end with (the reason on stderr)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except PermissionError:
        sock.close()
        user = _user()
        if os.geteuid() != 0 and "PYSWARM_DIAL_SUDO" not in os.environ and shutil.which("sudo"):
            if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
                os.environ["PYSWARM_DIAL_SUDO"] = "1"
                os.execvp("sudo", ["sudo", "-n", "--preserve-env=PYSWARM_DIAL_SUDO,PYSWARM_RUN_DIR",
                                   pyswarm_executable(), "system", "dial-stdio"])
            hint = f"{user} has no passwordless sudo (`sudo -n true` asks for a password)"
        else:
            hint = f"log in as root, or give {user} passwordless sudo"
        print(f"permission denied on {path}: only {_who_may(path)} may use this manager's API ({hint})",
              file=sys.stderr)
        return EXIT_DENIED
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            print(f"no pyswarm manager is running on this host ({path}: {exc.strerror})", file=sys.stderr)
            return EXIT_NO_MANAGER
        print(f"cannot connect to {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NO_MANAGER


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def pump(sock: socket.socket, stdin_fd: int, stdout_fd: int) -> None:
    """Copy stdin → sock (in a thread) and sock → stdout until the manager's
    side ends. stdin's end is passed on as a half-close, so the manager still
    answers what it was sent. Threads, not a selector: stdin may be a file or
    /dev/null, which epoll refuses."""

    def upstream() -> None:
        try:
            while data := os.read(stdin_fd, 1 << 16):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, name="stdin", daemon=True).start()
    try:
        while data := sock.recv(1 << 16):
            view = memoryview(data)
            while view:
                view = view[os.write(stdout_fd, view):]
    except OSError:
        return


def main() -> int:
    got = _connect(socket_path())
    if isinstance(got, int):
        return got
    with got:
        pump(got, sys.stdin.fileno(), sys.stdout.fileno())
    return 0
