"""The CLI from the operator's machine (the root namespace) to the session
lab's manager over SSH: host keys, contexts, the next manager when one does
not answer, one connection per invocation (docs/remote.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Operator, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def operator(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(lab, tmp_path_factory.mktemp("operator"))
    op.authorize(*lab.hosts)
    yield op
    op.revoke()


def test_an_unknown_host_key_is_refused_with_its_fingerprint(lab: Any, operator: Operator) -> None:
    m1 = lab.managers[0]
    fingerprint = operator.host_key_fingerprint(m1)
    refused = operator.pyswarm("--host", f"ssh://{m1}", "node", "ls", check=False)
    assert refused.returncode == 1, refused
    assert fingerprint in refused.stderr and "--accept-host-key" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not operator.known_hosts.exists() or m1 not in operator.known_hosts.read_text()
    accepted = operator.pyswarm("--host", f"ssh://{m1}", "--accept-host-key", "node", "ls")
    assert fingerprint in accepted.stderr and str(operator.known_hosts) in accepted.stderr
    assert all(h in accepted.stdout for h in lab.hosts), accepted.stdout
    again = operator.pyswarm("--host", f"ssh://{m1}", "node", "ls")  # known now: no flag, no warning
    assert again.stderr == "" and all(h in again.stdout for h in lab.hosts), again


def test_a_context_deploys_scales_and_lists(lab: Any, operator: Operator, tmp_path: Path) -> None:
    m1 = lab.managers[0]
    operator.pyswarm("--host", f"ssh://{m1}", "--accept-host-key", "stack", "ls")
    operator.pyswarm("context", "create", "lab", "--host", f"ssh://{m1}")
    operator.pyswarm("context", "use", "lab")
    listed = operator.pyswarm("context", "ls").stdout
    assert "lab *" in listed and "default *" not in listed, listed
    stack = tmp_path / "remote.yml"  # on the operator's machine: the CLI reads it here
    stack.write_text("services:\n  web:\n    image: pyswarm-lab/busybox:latest\n"
                     "    command: [\"sh\", \"-c\", \"echo hello-from-$$HOSTNAME; sleep 600\"]\n")
    try:
        out = operator.pyswarm("stack", "deploy", "-c", str(stack), "rmt").stdout
        assert "Creating service rmt_web" in out, out
        operator.pyswarm("service", "scale", "rmt_web=2")

        def two_running() -> bool:
            rows = operator.pyswarm("service", "ls", "--format", "json").stdout
            return '"replicas": "2/2"' in rows

        wait_for(two_running, 60, "rmt_web 2/2 in `service ls` through the context",
                 observe=lambda: operator.pyswarm("service", "logs", "rmt_web").stdout)
        # a streaming answer over the same SSH connection
        wait_for(lambda: operator.pyswarm("service", "logs", "rmt_web").stdout.count("hello-from-") == 2, 30,
                 "both replicas' first line in `service logs` through the context")
    finally:
        operator.pyswarm("stack", "rm", "rmt", check=False)
        operator.pyswarm("context", "use", "default")

    def gone() -> bool:
        return all(not lab.docker(h, "ps", "-aq", "--filter", "label=com.docker.stack.namespace=rmt",
                                  timeout=30).stdout.strip() for h in lab.hosts)

    wait_for(gone, 60, "stack rmt's containers removed")


def test_the_next_manager_is_tried_and_every_failure_named(lab: Any, operator: Operator) -> None:
    m1, w1 = lab.managers[0], lab.workers[0]
    operator.pyswarm("--host", f"ssh://{w1}", "--accept-host-key", "stack", "ls", check=False)
    nothing = f"ssh://{lab.bridge_addr}:1"  # the lab's bridge, where nothing listens on port 1
    operator.pyswarm("context", "create", "flaky", "--host", nothing, "--host", f"ssh://{w1}",
                     "--host", f"ssh://{m1}")
    ok = operator.pyswarm("--context", "flaky", "node", "ls")
    assert all(h in ok.stdout for h in lab.hosts), ok.stdout
    operator.pyswarm("context", "create", "down", "--host", nothing, "--host", f"ssh://{w1}")
    failed = operator.pyswarm("--context", "down", "node", "ls", check=False)
    assert failed.returncode == 1
    assert "no manager of context down answered" in failed.stderr, failed.stderr
    assert f"{nothing}: cannot connect" in failed.stderr, failed.stderr
    assert f"ssh://{w1}" in failed.stderr and "no pyswarm manager is running on this host" in failed.stderr


def test_one_ssh_connection_carries_every_request(lab: Any, operator: Operator, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pyswarm import cli, remote

    m1 = lab.managers[0]
    operator.pyswarm("--host", f"ssh://{m1}", "--accept-host-key", "stack", "ls")
    for key, value in operator.env().items():
        monkeypatch.setenv(key, value)
    opened: list[str] = []
    real = remote.connect

    def counting(target: remote.SSHTarget, *args: Any, **kw: Any) -> Any:
        opened.append(target.url)
        return real(target, *args, **kw)

    monkeypatch.setattr(remote, "connect", counting)
    names = [n for n in lab.hosts][:3]
    assert cli.main(["--host", f"ssh://{m1}", "node", "inspect", *names]) == 0  # one request per node
    assert opened == [f"ssh://{m1}"]
    assert [n["hostname"] for n in json.loads(capsys.readouterr().out)] == names


def test_the_asyncssh_transport_when_asked(lab: Any, operator: Operator) -> None:
    m1 = lab.managers[0]
    operator.pyswarm("--host", f"ssh://{m1}", "--accept-host-key", "stack", "ls")
    res = operator.pyswarm_env({"PYSWARM_SSH_TRANSPORT": "asyncssh"}, "--host", f"ssh://{m1}", "node", "ls")
    assert res.stderr == "" and all(h in res.stdout for h in lab.hosts), res
    bad = operator.pyswarm_env({"PYSWARM_SSH_TRANSPORT": "telnet"}, "--host", f"ssh://{m1}", "node", "ls",
                               check=False)
    assert bad.returncode != 0 and "PYSWARM_SSH_TRANSPORT is 'telnet'" in bad.stderr, bad
    assert "Traceback" not in bad.stderr


def test_proxyjump_from_the_ssh_config(lab: Any, operator: Operator) -> None:
    m1, w1 = lab.managers[0], lab.workers[0]
    jumped = operator.dir / "jump_config"
    jumped.write_text(f"Host via-{w1}\n  HostName {lab.hosts[m1]}\n  ProxyJump {w1}\n"
                      + operator.config.read_text())
    env_config = str(jumped)
    res = operator.pyswarm_env({"PYSWARM_SSH_CONFIG": env_config}, "--host", f"ssh://via-{w1}",
                               "--accept-host-key", "node", "ls")
    assert all(h in res.stdout for h in lab.hosts), res.stdout
    again = operator.pyswarm_env({"PYSWARM_SSH_CONFIG": env_config}, "--host", f"ssh://via-{w1}", "stack", "ls")
    assert again.stderr == "", again.stderr  # both keys (the jump's and the manager's) known now
