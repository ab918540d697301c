"""The CLI's contract for stack files: a bad file exits 2 with every problem
on stderr, no traceback, and nothing sent to a manager; other errors keep
exit 1."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from pyswarm import cli
from pyswarm.cli import common


@pytest.fixture
def no_manager(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    called: list[str] = []

    def fake_call(method: str, params: dict[str, Any] | None = None) -> Any:
        called.append(method)
        return []
    monkeypatch.setattr(common, "call", fake_call)
    return called


def test_bad_stack_file_exits_2_and_deploys_nothing(tmp_path: Path, no_manager: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  web:\n    image: busybox\n    deploy:\n      replicas: three\n"
                   "  db:\n    mem_limit: 1g\n")
    assert cli.main(["stack", "deploy", "-c", str(bad), "demo"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5:17: services.web.deploy.replicas: expected an integer" in err
    assert "services.db: no `image`" in err and "deploy.resources.limits.memory" in err
    assert "Traceback" not in err
    assert no_manager == [], "a manager was called for a broken stack file"


def test_stack_config_exit_2_and_strict(tmp_path: Path, no_manager: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yml"
    f.write_text("services:\n  web:\n    image: busybox\n    replicas: 2\n")
    assert cli.main(["stack", "config", "-c", str(f)]) == 0
    assert "replicas" not in capsys.readouterr().out  # an unknown key is dropped, not printed
    assert cli.main(["stack", "config", "--strict", "-c", str(f)]) == 2
    assert "services.web.replicas: unknown key, ignored" in capsys.readouterr().err


def test_deploy_sends_secret_data_and_reports_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pw.txt").write_text("hunter2")
    f = tmp_path / "s.yml"
    f.write_text("services: {web: {image: busybox, secrets: [pw]}}\nsecrets: {pw: {file: ./pw.txt}}\n")
    sent: dict[str, Any] = {}

    def fake_call(method: str, params: dict[str, Any] | None = None) -> Any:
        sent.update(params or {})
        return [{"secret": "demo_pw", "action": "created"}, {"service": "demo_web", "action": "created"}]
    monkeypatch.setattr(common, "call", fake_call)
    assert cli.main(["stack", "deploy", "-c", str(f), "demo"]) == 0
    assert sent["secrets"] == [{"name": "demo_pw", "external": False, "data": "aHVudGVyMg==",
                                "labels": {"com.docker.stack.namespace": "demo"}}]
    assert capsys.readouterr().out == "Creating secret demo_pw\nCreating service demo_web\n"


def test_other_errors_still_exit_1(tmp_path: Path, no_manager: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["service", "scale", "web=lots"]) == 1
    assert cli.main(["secret", "create", "pw", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "invalid replicas value" in err and "cannot read" in err
    assert no_manager == []


WARNED = """\
services:
  web:
    image: busybox
    container_name: web1
    restart: always
    deploy: {replicas: 2}
    command: ["echo", "$UNSET_VAR"]
servces: {}
"""


def _warnings(path: Path) -> list[str]:
    return [f"Warning: {path}:4:5: services.web.container_name: ignored: Swarm names containers "
            "STACK_SERVICE.SLOT.TASKID",
            f"Warning: {path}:5:5: services.web.restart: ignored: Swarm ignores it; use `deploy.restart_policy`",
            f"Warning: {path}:7:23: services.web.command[1]: variable UNSET_VAR is not set; "
            "using an empty string",
            f"Warning: {path}:8:1: servces: unknown top-level key, ignored (did you mean `services`?)"]


@pytest.mark.parametrize("command", ["config", "deploy"])
def test_warnings_on_stderr_naming_service_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], command: str) -> None:
    """`stack config` printed none of them (issue 15)."""
    monkeypatch.setattr(common, "call", lambda method, params=None: [])
    monkeypatch.delenv("UNSET_VAR", raising=False)
    f = tmp_path / "w.yml"
    f.write_text(WARNED)
    cli_args = ["stack", command, "-c", str(f)] + (["demo"] if command == "deploy" else [])
    assert cli.main(cli_args) == 0
    out, err = capsys.readouterr()
    assert sorted(err.splitlines()) == sorted(_warnings(f))
    if command == "config":
        assert "image: busybox" in out and "Warning" not in out


@pytest.mark.parametrize("command", ["config", "deploy"])
def test_strict_fails_listing_the_warnings(tmp_path: Path, no_manager: list[str], monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], command: str) -> None:
    monkeypatch.delenv("UNSET_VAR", raising=False)
    f = tmp_path / "w.yml"
    f.write_text(WARNED)
    cli_args = ["stack", command, "--strict", "-c", str(f)] + (["demo"] if command == "deploy" else [])
    assert cli.main(cli_args) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0] == "Error: --strict: 4 warnings, each an error here:"
    assert sorted(lines[1:]) == sorted(w[len("Warning: "):] for w in _warnings(f))
    assert out == "" and no_manager == []


def test_config_prints_absent_secret_file_deploy_refuses_it(tmp_path: Path, no_manager: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yml"
    f.write_text("services: {web: {image: busybox, secrets: [pw]}}\nsecrets:\n  pw:\n    file: ./pw.txt\n")
    assert cli.main(["stack", "config", "-c", str(f)]) == 0
    assert f"file: {tmp_path / 'pw.txt'}" in capsys.readouterr().out
    assert cli.main(["stack", "deploy", "-c", str(f), "demo"]) == 2
    assert capsys.readouterr().err == (f"Error: {f}:4:11: secrets.pw.file: secret file "
                                       f"'{tmp_path / 'pw.txt'}': no such file\n")
    assert no_manager == []


def test_secret_create_from_stdin_is_bounded(no_manager: list[str], monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`secret create x - < /dev/zero` read forever; now at most 500 KiB + 1 bytes."""
    with open("/dev/zero", "rb") as zero:
        monkeypatch.setattr("sys.stdin", zero)
        assert cli.main(["secret", "create", "pw", "-"]) == 1
    assert capsys.readouterr().err == ("Error: stdin: larger than Swarm's 500 KB limit for a secret "
                                       "(512,000 bytes)\n")
    assert no_manager == []


def test_secret_create_sends_a_file_within_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sent: dict[str, Any] = {}

    def fake_call(method: str, params: dict[str, Any] | None = None) -> Any:
        sent.update(params or {})
        return {"id": "abc"}
    monkeypatch.setattr(common, "call", fake_call)
    (tmp_path / "c.txt").write_bytes(b"x" * 512_000)
    assert cli.main(["config", "create", "c", str(tmp_path / "c.txt")]) == 0
    assert base64.b64decode(sent["data"]) == b"x" * 512_000


HOSTILE = {
    "infinite duration": "services: {web: {image: a, healthcheck: {test: [CMD, x], interval: .inf}}}\n",
    "1e999 duration": "services: {web: {image: a, stop_grace_period: 1e999}}\n",
    "huge duration": "services: {web: {image: a, stop_grace_period: 99999999999h}}\n",
    "400 nested defaults": "services: {web: {image: \"" + "${A:-" * 400 + "x" + "}" * 400 + "\"}}\n",
    "alias bomb": "\n".join(["x-0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                            + [f"x-{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
                            + ["services: {web: {image: a}}"]),
    "deep nesting": "services: {web: {image: a}}\nx-d: " + "[" * 500 + "]" * 500 + "\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["config", "deploy"])
def test_hostile_files_exit_2_with_one_clear_line(tmp_path: Path, no_manager: list[str],
                                                  capsys: pytest.CaptureFixture[str], name: str,
                                                  command: str) -> None:
    f = tmp_path / "h.yml"
    f.write_text(HOSTILE[name])
    cli_args = ["stack", command, "-c", str(f)] + (["demo"] if command == "deploy" else [])
    assert cli.main(cli_args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {f}:") and err.count("\n") == 1, err
    assert "Traceback" not in err and no_manager == []


@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_stack_file_that_is_not_a_file(tmp_path: Path, no_manager: list[str],
                                       capsys: pytest.CaptureFixture[str], source: str) -> None:
    if source == "fifo":
        source = str(tmp_path / "fifo")
        os.mkfifo(source)
    assert cli.main(["stack", "config", "-c", source]) == 2
    assert capsys.readouterr().err.endswith(", not a regular file\n")
