"""The CLI's contract for stack files: a bad file exits 2 with every problem
on stderr, no traceback, and nothing sent to a manager; other errors keep
exit 1."""

from __future__ import annotations

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
    assert "services.web.replicas: unknown key" in capsys.readouterr().err


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
