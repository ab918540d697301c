"""The CLI's service, stack, node and shell commands against a fake manager:
what is sent, what is printed, what is refused, and CLI hygiene (hidden
commands, a closed pipe, completion)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pyswarm import cli
from pyswarm.cli import common, shell


class Fake:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.calls.append((method, params or {}))
        answer = self.answers.get(method)
        return answer(params or {}) if callable(answer) else answer

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]


def converged(params: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"service": n, "running": 1, "desired": 1, "outdated": 0, "update_state": "", "failures": 0,
             "reason": ""} for n in params["services"]]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    f = Fake({"service.progress": converged})
    monkeypatch.setattr(common, "call", f)
    return f


def test_create_sends_the_spec_and_waits(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answers["service.create"] = {"id": "svc1", "service": "web", "version": 1}
    assert cli.main(["service", "create", "--name", "web", "-p", "8080:80", "busybox", "sleep", "9"]) == 0
    method, params = fake.calls[0]
    assert method == "service.create" and params["spec"]["name"] == "web"
    assert params["spec"]["container"]["command"] == ["sleep", "9"]
    assert fake.methods()[1:] == ["service.progress"]
    assert capsys.readouterr().out.splitlines() == ["svc1", "web: 1/1 running: converged"]
    fake.calls.clear()
    assert cli.main(["service", "create", "-d", "--name", "web", "busybox"]) == 0
    assert fake.methods() == ["service.create"], "--detach still watched"


def test_update_applies_flags_to_the_spec_it_read(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    from pyswarm.models import ContainerSpec, ServiceSpec

    spec = ServiceSpec(name="web", container=ContainerSpec(image="busybox", env={"A": "1"}))
    fake.answers["service.inspect"] = {"id": "svc1", "version": 4, "spec": spec.to_dict()}
    fake.answers["service.update"] = {"service": "web", "action": "updated", "version": 5}
    assert cli.main(["service", "update", "--env-rm", "A", "--env-add", "B=2", "--image", "busybox:2",
                     "--force", "web"]) == 0
    _, params = fake.calls[1]
    assert params["version"] == 4 and params["force"] is True and params["service"] == "svc1"
    assert params["spec"]["container"]["env"] == {"B": "2"} and params["spec"]["container"]["image"] == "busybox:2"
    fake.answers["service.rollback"] = {"service": "web", "version": 6}
    fake.calls.clear()
    assert cli.main(["service", "update", "--rollback", "-d", "web"]) == 0
    assert fake.methods() == ["service.rollback"]


def test_refused_and_unknown_flags_exit_2_and_send_nothing(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["service", "create", "--isolation", "hyperv", "busybox"])
    assert exit_info.value.code == 2
    assert "pyswarm does not support --isolation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["service", "update", "--group-add", "wheel", "web"])
    assert "pyswarm does not support --group-add" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["service", "create", "--colour", "red", "busybox"])
    assert "unrecognized arguments: --colour" in capsys.readouterr().err
    assert cli.main(["service", "create", "--restart-delay", "soon", "busybox"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: invalid --restart-delay 'soon'") and "Traceback" not in err
    assert fake.calls == []


TASKS = [
    {"id": "t" * 25, "name": "web.1", "service": "web", "image": "busybox", "node": "w1", "node_id": "n1",
     "desired_state": "running", "current_state": "running", "since": 0, "error": "", "message": ""},
    {"id": "u" * 25, "name": "web.1", "service": "web", "image": "busybox", "node": "w2", "node_id": "n2",
     "desired_state": "shutdown", "current_state": "failed", "since": 0, "error": "boom " * 20, "message": ""},
]


def test_ps_filters_quiet_no_trunc_and_templates(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answers["service.ps"] = lambda p: [dict(t) for t in TASKS]
    assert cli.main(["service", "ps", "web", "-q"]) == 0
    assert capsys.readouterr().out.split() == ["t" * 12, "u" * 12]
    assert cli.main(["service", "ps", "web", "-q", "--no-trunc", "--filter", "desired-state=running"]) == 0
    assert capsys.readouterr().out.split() == ["t" * 25]
    assert cli.main(["service", "ps", "web", "-f", "node=w2", "--format", "{{.Node}} {{.DesiredState}}"]) == 0
    assert capsys.readouterr().out == "w2 Shutdown\n"
    assert cli.main(["service", "ps", "web", "--filter", "colour=red"]) == 1
    assert "this list filters on id, name, node, desired-state" in capsys.readouterr().err
    assert cli.main(["service", "ps", "web", "--format", "{{.Nope}}"]) == 1
    assert "can't evaluate field Nope" in capsys.readouterr().err


def test_lists_filter_and_quiet(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answers["service.ls"] = [
        {"id": "a" * 25, "name": "web", "mode": "replicated", "replicas": "1/1", "image": "busybox",
         "labels": {"tier": "front"}, "ports": []},
        {"id": "b" * 25, "name": "db", "mode": "global", "replicas": "3/3", "image": "busybox", "labels": {},
         "ports": []}]
    assert cli.main(["service", "ls", "-q", "--filter", "mode=global"]) == 0
    assert capsys.readouterr().out == "b" * 12 + "\n"
    assert cli.main(["service", "ls", "--filter", "label=tier=front", "--format", "{{.Name}}"]) == 0
    assert capsys.readouterr().out == "web\n"
    fake.answers["node.ls"] = [
        {"id": "n" * 25, "hostname": "m1", "role": "manager", "status": "ready", "availability": "active",
         "manager_status": "leader", "engine_version": "24", "self": True, "labels": {"zone": "eu"},
         "engine_labels": {}, "address": "x"},
        {"id": "o" * 25, "hostname": "w1", "role": "worker", "status": "ready", "availability": "active",
         "manager_status": "", "engine_version": "24", "self": False, "labels": {}, "engine_labels": {},
         "address": "y"}]
    assert cli.main(["node", "ls", "-q", "--filter", "role=worker"]) == 0
    assert capsys.readouterr().out == "o" * 25 + "\n"
    assert cli.main(["node", "ls", "--filter", "node.label=zone", "--format", "{{.Hostname}} {{.ManagerStatus}}"]) == 0
    assert capsys.readouterr().out == "m1 Leader\n"
    fake.answers["stack.ls"] = [{"name": "demo", "services": 2}, {"name": "other", "services": 1}]
    assert cli.main(["stack", "ls", "-q", "--filter", "name=de"]) == 0
    assert capsys.readouterr().out == "demo\n"
    fake.answers["service.ls"] = lambda p: []
    assert cli.main(["stack", "services", "nope"]) == 1
    assert "nothing found in stack: nope" in capsys.readouterr().err


def test_node_ps_defaults_to_this_node(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answers["node.ps"] = [dict(TASKS[0])]
    assert cli.main(["node", "ps"]) == 0
    assert fake.calls[-1] == ("node.ps", {"nodes": []})
    assert "web.1" in capsys.readouterr().out


def test_dry_run_prints_the_plan(fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yml"
    f.write_text("services:\n  web:\n    image: busybox:2\n")
    old = {"container": {"image": "busybox:1", "env": {}}, "replicas": 1}
    new = {"container": {"image": "busybox:2", "env": {"A": "1"}}, "replicas": 1}
    fake.answers["stack.deploy"] = [
        {"service": "demo_web", "action": "updated", "old": old, "new": new},
        {"service": "demo_api", "action": "created", "image": "nginx:1"},
        {"service": "demo_old", "action": "removed"},
        {"network": "demo_default", "action": "created"}]
    assert cli.main(["stack", "deploy", "--dry-run", "--prune", "-c", str(f), "demo"]) == 0
    assert fake.calls[0][1]["dry_run"] is True and fake.calls[0][1]["prune"] is True
    assert capsys.readouterr().out.splitlines() == [
        "Would update service demo_web:",
        '    container.env.A: (none) -> "1"',
        '    container.image: "busybox:1" -> "busybox:2"',
        "Would create service demo_api (image nginx:1)",
        "Would remove service demo_old (--prune)",
        "Would create network demo_default",
        "Images to pull: busybox:2, nginx:1",
        "Nothing was changed (--dry-run).",
    ]


def test_stack_deploy_stays_detached_unless_asked(fake: Fake, tmp_path: Path) -> None:
    f = tmp_path / "s.yml"
    f.write_text("services:\n  web:\n    image: busybox\n")
    fake.answers["stack.deploy"] = [{"service": "demo_web", "action": "created"}]
    assert cli.main(["stack", "deploy", "-c", str(f), "demo"]) == 0
    assert fake.methods() == ["stack.deploy"]
    assert cli.main(["stack", "deploy", "--detach=false", "-c", str(f), "demo"]) == 0
    assert fake.methods()[-1] == "service.progress"


def test_help_hides_hidden_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "SUPPRESS" not in out and "\n    manager " not in out
    assert "__complete" not in out and "\n    worker " not in out
    assert "version" in out and "completion" in out


def test_completion_scripts_and_names(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", "bash"]) == 0
    assert "complete -o default -F _pyswarm_complete pyswarm" in capsys.readouterr().out
    assert cli.main(["completion", "zsh"]) == 0
    assert "compdef _pyswarm pyswarm" in capsys.readouterr().out
    from pyswarm import rpc

    rows = {"service.ls": [{"name": "demo_web"}, {"name": "demo_db"}], "node.ls": [{"hostname": "worker1"}],
            "stack.ls": [{"name": "demo"}]}
    monkeypatch.setattr(rpc, "call_unix", lambda path, method, params, timeout=60: rows[method])
    parser = cli.build_parser()
    assert shell.candidates(parser, ["serv"]) == ["service"]
    assert shell.candidates(parser, ["service", "ps", "demo_w"]) == ["demo_web"]
    assert shell.candidates(parser, ["service", "scale", ""]) == ["demo_db=", "demo_web="]
    assert shell.candidates(parser, ["node", "ps", ""]) == ["worker1"]
    assert shell.candidates(parser, ["stack", "services", ""]) == ["demo"]
    assert "--publish" in shell.candidates(parser, ["service", "create", "--pub"])
    assert "--isolation" not in shell.candidates(parser, ["service", "create", "--is"])
    assert cli.main(["__complete", "service", "create", "--repl"]) == 0
    assert capsys.readouterr().out.split() == ["--replicas", "--replicas-max-per-node"]

    def down(*a: Any, **k: Any) -> Any:
        raise OSError("no manager")
    monkeypatch.setattr(rpc, "call_unix", down)
    assert shell.candidates(parser, ["service", "rm", ""]) == []


def test_version_without_a_manager(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from pyswarm.errors import ConnectionError_

    def down(method: str, params: Any = None) -> Any:
        raise ConnectionError_("no manager here")
    monkeypatch.setattr(common, "call", down)
    assert cli.main(["version"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("Client:\n Version:") and "Manager:" not in captured.out
    assert "cannot reach a manager" in captured.err


def test_a_closed_pipe_ends_quietly() -> None:
    script = textwrap.dedent("""
        from pyswarm import cli
        from pyswarm.cli import common
        rows = [{"id": f"t{i:024d}", "name": f"web.{i}", "service": "web", "image": "busybox", "node": "w1",
                 "node_id": "n1", "desired_state": "running", "current_state": "running", "since": 0,
                 "error": "", "message": ""} for i in range(20000)]
        common.call = lambda method, params=None: rows
        raise SystemExit(cli.main(["service", "ps", "web"]))
    """)
    proc = subprocess.run(f"{sys.executable} -c '{script}' | head -1", shell=True, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.startswith("ID "), proc.stdout
    assert proc.stderr == "", f"a closed pipe printed: {proc.stderr[-500:]}"


def test_every_list_and_inspect_takes_a_template(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answers["network.ls"] = [{"id": "n" * 25, "name": "front", "driver": "overlay", "scope": "swarm",
                                   "stack": "", "labels": {"a": "b"}, "internal": True, "attachable": False,
                                   "created_at": 0, "services": []}]
    assert cli.main(["network", "ls", "--format", "{{.ID}} {{.Name}} {{.Driver}} {{.Scope}} {{.Internal}} {{.Labels}}"]) == 0
    assert capsys.readouterr().out == "nnnnnnnnnnnn front overlay swarm true a=b\n"
    fake.answers["secret.ls"] = [{"id": "s1", "name": "pw", "labels": {}, "created_at": 0, "updated_at": 0, "size": 3}]
    assert cli.main(["secret", "ls", "--format", "{{.Name}}: {{.CreatedAt}}"]) == 0
    assert capsys.readouterr().out == "pw: 1970-01-01 00:00:00 +0000 UTC\n"
    fake.answers["config.inspect"] = {"id": "c1", "name": "conf", "labels": {}, "data": "eA=="}
    assert cli.main(["config", "inspect", "--format", "{{.Name}} {{.Data}}", "conf"]) == 0
    assert capsys.readouterr().out == "conf eA==\n"
    fake.answers["node.inspect"] = {"id": "n1", "hostname": "w1", "status": "ready"}
    assert cli.main(["node", "inspect", "-f", "{{.Hostname}} {{.Status}}", "w1"]) == 0
    assert capsys.readouterr().out == "w1 ready\n"
