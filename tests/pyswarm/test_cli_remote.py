"""The CLI's global --host/--context: which commands take them, and the one
line a person gets when a command is given one it cannot use."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyswarm import cli, contexts
from pyswarm.cli import common


@pytest.fixture(autouse=True)
def no_contexts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PYSWARM_RUN_DIR", str(tmp_path / "run"))
    for name in ("PYSWARM_HOST", "PYSWARM_CONTEXT", "PYSWARM_SSH_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv", [["init"], ["join", "--token", "x", "m1"], ["leave"], ["context", "ls"],
                                  ["lab", "status"]])
def test_host_commands_refuse_a_remote_target(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--host", "ssh://m1", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: `pyswarm {argv[0]}` acts on the host it runs on") and err.count("\n") == 1


def test_init_points_at_machine_init(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["--context", "prod", "init"])
    assert "pyswarm machine init/add" in capsys.readouterr().err


def test_a_local_command_ignores_the_current_context(monkeypatch: pytest.MonkeyPatch) -> None:
    contexts.create("prod", ["ssh://m1"])
    contexts.use("prod")
    common.target(local=True)
    with pytest.raises(Exception, match="no pyswarm manager is running on this host"):
        common.call("ping")  # this host's socket, not ssh://m1
    common.close()


def test_machine_commands_need_a_context(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["machine", "ls"]) == 1
    assert "no context selected: `pyswarm machine init [USER@]HOST` creates one" in capsys.readouterr().err
    assert cli.main(["--host", "ssh://m1", "machine", "add", "h"]) == 1
    assert "give --context NAME, not --host" in capsys.readouterr().err


def test_a_bad_host_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--host", "m1", "node", "ls"]) == 1
    assert capsys.readouterr().err == "Error: invalid host 'm1': expected ssh://[USER@]HOST[:PORT]\n"
