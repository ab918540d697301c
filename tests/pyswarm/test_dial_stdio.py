"""pyswarm.dial_stdio: the byte pump between stdin/stdout and the manager's
socket, and what it says when there is no manager or no permission."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from pyswarm import dial_stdio


def test_pump_carries_both_ways_and_passes_on_the_end(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def echo_upper() -> None:
        conn, _ = server.accept()
        data = b""
        while chunk := conn.recv(65536):  # ends only once stdin's end is passed on
            data += chunk
        conn.sendall(data.upper())
        conn.close()

    threading.Thread(target=echo_upper, daemon=True).start()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()

    def feed() -> None:  # more than a pipe holds: written while the pump runs
        view = memoryview(b"hello " * 20000)
        while view:
            view = view[os.write(in_w, view):]
        os.close(in_w)

    threading.Thread(target=feed, daemon=True).start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(iter_read(out_r)), daemon=True)
    reader.start()
    with sock:
        dial_stdio.pump(sock, in_r, out_w)
    os.close(out_w)
    reader.join(10)
    os.close(in_r)
    os.close(out_r)
    server.close()
    assert bytes(got) == b"HELLO " * 20000


def iter_read(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def test_no_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYSWARM_RUN_DIR", str(tmp_path))
    assert dial_stdio.main() == dial_stdio.EXIT_NO_MANAGER
    assert "no pyswarm manager is running on this host" in capsys.readouterr().err
