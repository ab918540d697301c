"""pyswarm.remote: parsing ssh:// addresses, and which known_hosts file a
host's key is checked against and added to (the SSH itself: tests/e2e/test_remote_cli.py)."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from pyswarm import asyncssh_host, remote
from pyswarm.errors import UsageError
from pyswarm.remote import SSHTarget, parse_target


@pytest.mark.parametrize("text, want", [
    ("ssh://m1", SSHTarget("m1")),
    ("ssh://root@m1", SSHTarget("m1", "root")),
    ("ssh://deploy@10.0.0.5:2222", SSHTarget("10.0.0.5", "deploy", 2222)),
    ("ssh://[fd00::1]:22", SSHTarget("fd00::1", None, 22)),
    ("ssh://m1/", SSHTarget("m1")),
])
def test_parse(text: str, want: SSHTarget) -> None:
    assert parse_target(text) == want
    assert parse_target(want.url) == want


@pytest.mark.parametrize("text, problem", [
    ("m1", "expected ssh://"), ("ssh://", "expected ssh://"), ("ssh://@m1", "empty user"),
    ("ssh://m1:x", "port 'x'"), ("ssh://m1:0", "port '0'"), ("ssh://[fd00::1", "unclosed"),
])
def test_parse_refuses(text: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        parse_target(text)


def test_bare_destination_for_machine_commands() -> None:
    assert parse_target("root@h:22", scheme_required=False) == SSHTarget("h", "root", 22)


def test_pyswarm_ssh_config_replaces_the_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host m1\n  HostName 10.0.0.1\n  UserKnownHostsFile {tmp_path}/kh\n")
    monkeypatch.setenv("PYSWARM_SSH_CONFIG", str(config))
    assert asyncssh_host.known_hosts_files(SSHTarget("m1")) == [tmp_path / "kh"]
    assert asyncssh_host.known_hosts_files(SSHTarget("other")) == [Path.home() / ".ssh" / "known_hosts"]
    monkeypatch.setenv("PYSWARM_SSH_CONFIG", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="PYSWARM_SSH_CONFIG names .*missing"):
        remote.ssh_config_paths()


def test_an_accepted_key_is_written_where_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host *\n  UserKnownHostsFile {tmp_path}/sub/kh\n")
    monkeypatch.setenv("PYSWARM_SSH_CONFIG", str(config))
    key = asyncssh.generate_private_key("ssh-ed25519")
    target = SSHTarget("m1", port=2222)
    assert asyncssh_host._trusted(target) is not None  # a missing file trusts nothing, and is no error
    path = asyncssh_host._remember_host_key(target, "m1", "10.0.0.1", 2222, key)
    assert path == tmp_path / "sub" / "kh"
    line = path.read_text()
    assert line.startswith("[m1]:2222,[10.0.0.1]:2222 ssh-ed25519 ")
    trusted = asyncssh_host._trusted(target)
    host_keys = asyncssh.match_known_hosts(trusted, "m1", "10.0.0.1", 2222)[0]
    assert {k.public_data for k in host_keys} == {key.public_data}


def test_the_ssh_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text("Host m1\n  HostName 10.0.0.1\n")
    monkeypatch.setenv("PYSWARM_SSH_CONFIG", str(config))
    argv = remote.ssh_argv(SSHTarget("m1", "deploy", 2222))
    assert argv[:3] == ["ssh", "-F", str(config)]
    assert "BatchMode=yes" in argv and "StrictHostKeyChecking=yes" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "deploy"
    assert argv[-3:] == ["--", "m1", remote.REMOTE_COMMAND]
    monkeypatch.delenv("PYSWARM_SSH_CONFIG")
    bare = remote.ssh_argv(SSHTarget("m1"))
    assert "-F" not in bare and "-p" not in bare and "-l" not in bare  # ssh's own ~/.ssh/config, port, user


def test_the_transport_is_ssh_when_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSWARM_SSH_TRANSPORT", raising=False)
    fake = tmp_path / "ssh"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert remote.transport() == "ssh"
    monkeypatch.setenv("PYSWARM_SSH_TRANSPORT", "asyncssh")
    assert remote.transport() == "asyncssh"
    monkeypatch.setenv("PYSWARM_SSH_TRANSPORT", "telnet")
    with pytest.raises(UsageError, match="PYSWARM_SSH_TRANSPORT is 'telnet'"):
        remote.transport()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("PYSWARM_SSH_TRANSPORT")
    assert remote.transport() == "asyncssh"
    monkeypatch.setenv("PYSWARM_SSH_TRANSPORT", "ssh")
    with pytest.raises(UsageError, match="no ssh binary on PATH"):
        remote.transport()


def test_the_cli_does_not_import_asyncssh_for_ssh() -> None:
    import subprocess
    import sys

    code = ("import sys, pyswarm.cli, pyswarm.cli.common, pyswarm.remote, pyswarm.contexts; "
            "print('asyncssh' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", out


def test_a_silent_kept_connection_is_tried_afresh_after_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyswarm.errors import ConnectionError_

    calls: list[tuple[str, bool]] = []
    answered = object()

    def connect(target: SSHTarget, accept_host_key: bool, prompt: bool, defer: bool = False) -> object:
        calls.append((target.host, defer))
        if defer and target.host == "m1":
            raise remote._Silent(target.url)  # its kept master got no answer (and was stopped)
        if target.host == "m2":
            raise ConnectionError_("ssh://m2: cannot connect")
        return answered

    monkeypatch.setattr(remote, "connect", connect)
    assert remote.connect_any([SSHTarget("m1"), SSHTarget("m2")]) is answered
    assert calls == [("m1", True), ("m2", True), ("m1", False)]
    calls.clear()
    assert remote.connect_any([SSHTarget("m1")]) is answered  # the only one: afresh at once
    assert calls == [("m1", False)]
