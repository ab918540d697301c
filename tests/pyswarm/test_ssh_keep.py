"""pyswarm.ssh_keep: where the kept connection's sockets live, what ssh(1) is
told, and what is left of masters that are gone (the masters themselves:
tests/e2e/test_remote_cli.py, tests/e2e/test_machine.py)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyswarm import ssh_keep
from pyswarm.errors import UsageError
from pyswarm.ssh_keep import Kept


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="keep", dir="/tmp"))  # short: a socket path fits in 107 bytes
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    monkeypatch.delenv(ssh_keep.KEEP_ENV, raising=False)
    yield base / "pyswarm-ssh"
    shutil.rmtree(base)


@pytest.mark.parametrize("text, seconds", [("", 60), ("0", 0), ("off", 0), ("no", 0), ("600", 600)])
def test_keep_seconds(text: str, seconds: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ssh_keep.KEEP_ENV, text)
    assert ssh_keep.keep_seconds() == seconds


def test_keep_seconds_refuses_what_is_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ssh_keep.KEEP_ENV, "1m")
    with pytest.raises(UsageError, match="PYSWARM_SSH_KEEP is '1m'"):
        ssh_keep.keep_seconds()


def test_off_keeps_nothing(runtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ssh_keep.KEEP_ENV, "0")
    assert Kept.of("ssh://m1", []) is None
    assert not runtime.exists()


def test_a_private_directory_and_one_key_per_target_and_config(runtime: Path) -> None:
    kept = Kept.of("ssh://m1", ["/a/config"])
    assert kept is not None and kept.dir == runtime
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert kept.control.parent == runtime and kept.forward.parent == runtime
    other = [Kept.of("ssh://m2", ["/a/config"]), Kept.of("ssh://m1", ["/b/config"]), Kept.of("ssh://m1", [])]
    assert len({kept.key, *(k.key for k in other if k is not None)}) == 4
    # a unix socket path must fit in sun_path (108 bytes) with ssh's temporary suffix
    assert len(str(kept.control)) + 17 < 108


def test_a_runtime_dir_too_long_for_a_socket_path_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    assert ssh_keep.runtime_dir() == Path(f"/tmp/pyswarm-ssh-{os.geteuid()}")


def test_a_directory_open_to_others_is_closed_and_someone_elses_is_not_used(runtime: Path) -> None:
    runtime.mkdir(mode=0o755)
    os.chmod(runtime, 0o755)
    assert Kept.of("ssh://m1", []) is not None
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    runtime.rmdir()
    runtime.symlink_to("/")  # not a directory of ours
    assert ssh_keep.runtime_dir() is None and Kept.of("ssh://m1", []) is None


def test_the_ssh_options(runtime: Path) -> None:
    kept = Kept.of("ssh://m1", [])
    assert kept is not None
    argv = kept.ssh_options()
    assert "ControlMaster=auto" in argv and f"ControlPath={kept.control}" in argv and "ControlPersist=60" in argv
    assert argv[argv.index("-L") + 1] == f"{kept.forward}:{ssh_keep.REMOTE_SOCKET}"
    assert "StreamLocalBindMask=0177" in argv  # the forward's socket: 0600
    kept.refused()  # dial-stdio works where the forward does not: no forward asked for a while
    assert "-L" not in kept.ssh_options()
    old = time.time() - ssh_keep.NO_FORWARD_FOR - 1
    os.utime(kept.no_forward, (old, old))
    assert "-L" in kept.ssh_options()


def test_a_forward_left_by_a_master_that_is_gone(runtime: Path) -> None:
    kept = Kept.of("ssh://m1", [])
    assert kept is not None
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(kept.forward))
    listener.close()  # the file stays, nothing listens: as OpenSSH leaves it
    conn, refused = kept.dial("ssh://m1")
    assert conn is None and not refused
    kept.before_cold()
    assert not kept.forward.exists()


def test_sweep_removes_what_gone_masters_left_and_spares_the_rest(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    gone, fresh, alive = (runtime / f"{name}.sock" for name in ("gone", "fresh", "alive"))
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(alive))
    listening.listen()
    try:
        for path in (gone, fresh):
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(path))
            s.close()
        (runtime / "gone.noforward").touch()
        old = time.time() - 120
        for path in (gone, alive):
            os.utime(path, (old, old))
        ssh_keep.sweep(runtime)
        assert sorted(p.name for p in runtime.iterdir()) == ["alive.sock", "fresh.sock"]
    finally:
        listening.close()
