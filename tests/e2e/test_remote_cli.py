"""The CLI from the operator's machine (the root namespace) to the session
lab's manager over SSH: host keys, contexts, the next manager when one does
not answer, one connection per invocation (docs/remote.md)."""

from __future__ import annotations

import json
import os
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


def _kept(operator: Operator, host: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The kept connection the CLI (run with the operator's environment) uses for ``host``."""
    from pyswarm import ssh_keep

    for key, value in operator.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # the operator's environment has none
    kept = ssh_keep.Kept.of(f"ssh://{host}", [str(operator.config)])
    assert kept is not None, "keeping is on by default"
    return kept


def test_the_next_invocation_rides_the_kept_connection(lab: Any, operator: Operator,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import stat
    import subprocess

    from pyswarm import cli

    m1 = lab.managers[0]
    kept = _kept(operator, m1, monkeypatch)
    kept.stop()
    operator.pyswarm("--host", f"ssh://{m1}", "--accept-host-key", "node", "ls")  # cold: ssh, now a master
    assert kept.master_running(), f"no master listens on {kept.control} after a first invocation"
    assert stat.S_IMODE(kept.dir.stat().st_mode) == 0o700 and kept.dir.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(kept.forward.stat().st_mode) == 0o600, oct(kept.forward.stat().st_mode)
    spawned: list[Any] = []
    real = subprocess.Popen

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kw: Any) -> None:
            spawned.append(args[0])
            super().__init__(*args, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(subprocess, "Popen", Counting)
        assert cli.main(["--host", f"ssh://{m1}", "node", "inspect", m1]) == 0
    assert spawned == [], f"a warm invocation ran {spawned}: it should have used {kept.forward}"
    assert json.loads(capsys.readouterr().out)[0]["hostname"] == m1
    # through the forward as a process of its own: nothing said on stderr
    again = operator.pyswarm("--host", f"ssh://{m1}", "node", "ls")
    assert again.stderr == "" and all(h in again.stdout for h in lab.hosts), again
    # turned off: a connection of its own, nothing kept
    kept.stop()
    off = operator.pyswarm_env({"PYSWARM_SSH_KEEP": "0"}, "--host", f"ssh://{m1}", "node", "ls")
    assert all(h in off.stdout for h in lab.hosts), off
    assert not kept.control.exists() and not kept.forward.exists() and not kept.master_running()
    bad = operator.pyswarm_env({"PYSWARM_SSH_KEEP": "soon"}, "--host", f"ssh://{m1}", "node", "ls", check=False)
    assert bad.returncode != 0 and "PYSWARM_SSH_KEEP is 'soon'" in bad.stderr and "Traceback" not in bad.stderr


def test_the_cluster_keys_options_forbid_forwarding_to_the_api(lab: Any, operator: Operator,
                                                              tmp_path: Path) -> None:
    """The kept connection forwards to the manager's socket; a key with the
    cluster key's options (``restrict,command=…``) must not be able to."""
    import socket
    import subprocess

    from pyswarm import rpc

    m1 = lab.managers[0]
    keys = lab.host(m1).private("/root/.ssh/authorized_keys")
    cluster_line = next(line for line in keys.read_text().splitlines() if "pyswarm-cluster" in line)
    options = cluster_line[:cluster_line.index(" ssh-ed25519 ")]  # command="…" may hold spaces
    assert options.startswith("restrict,command="), cluster_line
    key = tmp_path / "id_restricted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = f"{options} {(tmp_path / 'id_restricted.pub').read_text().strip()}"
    with open(keys, "a") as fh:
        fh.write(line + "\n")
    local = tmp_path / "fwd.sock"
    # that key alone (not the operator's config, whose key may forward)
    ssh = subprocess.Popen(["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
                            "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "StrictHostKeyChecking=no", "-N", "-L", f"{local}:/run/pyswarm/manager.sock",
                            f"root@{lab.hosts[m1]}"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: local.exists() or ssh.poll() is not None, 30, f"ssh -L to {m1} listening on {local}")
        if not local.exists():
            ssh.kill()
            pytest.fail(f"ssh with the restricted key did not log in (it listens once it has): "
                        f"{ssh.communicate(timeout=30)[1]}", pytrace=False)
        answer = b""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(local))
            sock.settimeout(30)
            sock.sendall(rpc.encode_request("ping", {}))
            try:
                answer = sock.recv(4096)
            except OSError:
                pass
        assert answer == b"", f"the manager's API answered through a forward of a restricted key: {answer!r}"
    finally:
        ssh.kill()  # (SIGTERM was seen to leave it running under load)
        _, err = ssh.communicate(timeout=30)
        keys.write_text("".join(k + "\n" for k in keys.read_text().splitlines() if k != line))
    # sshd's refusal of the channel; the operator's key forwards to the same
    # socket (test_the_next_invocation_rides_the_kept_connection)
    assert "open failed" in err, err
