"""Issue 14 on the lab: every ``service create`` / ``service update`` flag
checked on the node's engine (docker inspect, and from inside the
container), a stackless service answered by DNS, refused flags, progress on
a pseudo-terminal and on a pipe (a task that cannot be placed: non-zero
exit with the reason, the change kept), a closed pipe, Docker's --format
shapes, the other lists and filters, and ``stack deploy --dry-run`` /
``--prune``. Flags are grouped into few services to keep the time down;
everything made here is removed again."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import brief, tasks, wait_for

from pyswarm.output import SERVICE_FIELDS, TASK_FIELDS

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
TAG2 = "pyswarm-lab/busybox:cli2"
SLEEP = "trap 'exit 0' USR1 TERM; sleep 3600 & wait"


def run(lab: Any, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    return lab.pyswarm(lab.managers[0], *args, check=check, env=env, timeout=timeout)


def one_container(lab: Any, host: str, service: str) -> str:
    def found() -> str:
        ids = lab.docker(host, "ps", "-q", "--filter", f"label=pyswarm.service.name={service}",
                         "--filter", "status=running").stdout.split()
        return ids[0] if len(ids) == 1 else ""
    return str(wait_for(found, 60, f"one running container of {service} on {host}",
                        observe=lambda: brief(tasks(lab, service))))


def inspect(lab: Any, host: str, cid: str) -> dict[str, Any]:
    return dict(json.loads(lab.docker(host, "inspect", cid).stdout)[0])


def inside(lab: Any, host: str, cid: str, script: str) -> str:
    return str(lab.docker(host, "exec", cid, "sh", "-c", script, check=False).stdout.strip())


def nslookup(lab: Any, host: str, cid: str, name: str) -> list[str]:
    out = lab.docker(host, "exec", cid, "nslookup", name, check=False)
    return sorted(re.findall(r"Address(?: \d+)?:\s*(\d+\.\d+\.\d+\.\d+)", out.stdout.split("Name:", 1)[-1]))


@pytest.fixture
def tag2(lab: Any) -> Any:
    """A second tag of the lab image on every host, for --image and a stack's new service."""
    for host in lab.hosts:
        lab.docker(host, "tag", IMAGE, TAG2)
    yield TAG2
    for host in lab.hosts:
        lab.docker(host, "rmi", TAG2, check=False)


@pytest.fixture
def objects(lab: Any, tmp_path: Path, tag2: str) -> Any:
    """The networks, secrets, configs and image tag the flags refer to; removed after."""
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "conf").write_text("conf-v1\n")
    for net in ("clinet", "clinet2"):
        run(lab, "network", "create", net)
    for kind, name, file in (("secret", "clisecret", "secret"), ("secret", "clisecret2", "secret"),
                             ("config", "cliconf", "conf")):
        run(lab, kind, "create", name, str(tmp_path / file))
    made: list[str] = []
    try:
        yield made
    finally:
        if made:
            run(lab, "service", "rm", *made, check=False)
        for svc in made:
            wait_for(lambda svc=svc: not any(lab.docker(h, "ps", "-aq", "--filter", f"label=pyswarm.service.name={svc}")
                                             .stdout.strip() for h in lab.hosts), 60, f"{svc}'s containers gone")
        for kind, name in (("secret", "clisecret"), ("secret", "clisecret2"), ("config", "cliconf")):
            run(lab, kind, "rm", name, check=False)
        for net in ("clinet", "clinet2"):
            run(lab, "network", "rm", net, check=False)


def test_every_flag_through_create_and_update_on_the_engine(lab: Any, objects: list[str], tmp_path: Path) -> None:
    (tmp_path / "env").write_text("FROM_FILE=yes\n")
    (tmp_path / "shared.txt").write_text("from the host\n")
    objects.append("clia")
    out = run(lab, "service", "create", "--name", "clia", "--constraint", "node.hostname==worker1",
              "-e", "A=1", "--env-file", str(tmp_path / "env"), "-l", "tier=front", "--container-label", "c=1",
              "-p", "18090:80", "-p", "published=18091,target=81,mode=host",
              "--mount", f"type=bind,source={tmp_path},target=/hostdir,readonly",
              "--mount", "type=tmpfs,target=/cache,tmpfs-size=16m",
              "--mount", "type=volume,source=cliavol,target=/vol",
              "--network", "name=clinet,alias=alpha", "--secret", "source=clisecret,target=pw,mode=0400",
              "--config", "source=cliconf,target=/etc/cliconf", "--user", "0:0", "--workdir", "/tmp",
              "--entrypoint", "sh", "--hostname", "clihost", "--dns", "10.9.9.9", "--dns-search", "example.test",
              "--dns-option", "ndots:3", "--host", "db.example:10.9.8.7", "--cap-add", "NET_ADMIN",
              "--cap-drop", "MKNOD", "--sysctl", "net.core.somaxconn=1024", "--ulimit", "nofile=1024:2048",
              "--init", "--read-only", "--stop-grace-period", "3s", "--stop-signal", "SIGUSR1",
              "--limit-cpu", "0.5", "--limit-memory", "64m", "--limit-pids", "100", "--reserve-cpu", "0.01",
              "--reserve-memory", "8m", "--health-cmd", "test -d /cache", "--health-interval", "1s",
              "--health-timeout", "2s", "--health-retries", "2", "--health-start-period", "1s",
              "--restart-condition", "on-failure", "--restart-delay", "1s", "--restart-max-attempts", "5",
              "--restart-window", "1m", "--update-parallelism", "1", "--update-delay", "0s",
              "--update-order", "start-first", "--update-failure-action", "pause", "--update-monitor", "1s",
              "--update-max-failure-ratio", "0.5", "--rollback-parallelism", "1", "--rollback-order", "stop-first",
              "--rollback-delay", "0s", "--rollback-monitor", "1s", "--rollback-failure-action", "continue",
              "--rollback-max-failure-ratio", "0", "--replicas-max-per-node", "1", "--placement-pref",
              "spread=node.labels.zone", "--log-driver", "json-file", "--log-opt", "max-size=1m",
              "--endpoint-mode", "vip", "-t", "--replicas", "1",
              IMAGE, "-c", SLEEP).stdout
    assert out.splitlines()[-1] == "clia: 1/1 running: converged", out
    cid = one_container(lab, "worker1", "clia")
    info = inspect(lab, "worker1", cid)
    c, h = info["Config"], info["HostConfig"]
    assert {"A=1", "FROM_FILE=yes"} <= set(c["Env"]), c["Env"]
    assert c["Labels"]["c"] == "1" and c["Entrypoint"] == ["sh"] and c["Cmd"] == ["-c", SLEEP]
    assert (c["User"], c["WorkingDir"], c["Hostname"], c["Tty"]) == ("0:0", "/tmp", "clihost", True)
    assert (c["StopSignal"], c["StopTimeout"]) == ("SIGUSR1", 3)
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "test -d /cache"], "Interval": 10**9, "Timeout": 2 * 10**9,
                                "StartPeriod": 10**9, "Retries": 2}, c["Healthcheck"]
    assert h["PortBindings"] == {"81/tcp": [{"HostIp": "", "HostPort": "18091"}]}, h["PortBindings"]
    mounts = {m["Target"]: m for m in h["Mounts"]}
    assert mounts["/hostdir"]["Type"] == "bind" and mounts["/hostdir"]["ReadOnly"] is True
    assert mounts["/cache"]["Type"] == "tmpfs" and mounts["/cache"]["TmpfsOptions"]["SizeBytes"] == 16 << 20
    assert mounts["/vol"]["Type"] == "volume" and mounts["/vol"]["Source"] == "cliavol"
    assert "10.9.9.9" in h["Dns"] and "example.test" in h["DnsSearch"] and h["DnsOptions"] == ["ndots:3"]
    assert h["ExtraHosts"] == ["db.example:10.9.8.7"]
    assert (h["CapAdd"], h["CapDrop"]) == (["NET_ADMIN"], ["MKNOD"])
    assert h["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in h["Ulimits"]] == [("nofile", 1024, 2048)]
    assert h["Init"] is True and h["ReadonlyRootfs"] is True
    assert (h["NanoCpus"], h["Memory"], h["PidsLimit"], h["MemoryReservation"]) == (5 * 10**8, 64 << 20, 100, 8 << 20)
    assert h["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert inside(lab, "worker1", cid, "cat /run/secrets/pw; stat -c %a /run/secrets/pw") == "s3cret\n400"
    assert inside(lab, "worker1", cid, "cat /etc/cliconf; cat /hostdir/shared.txt") == "conf-v1\nfrom the host"
    assert inside(lab, "worker1", cid, "touch /hostdir/x 2>/dev/null; echo $?") == "1"
    # what the engine cannot show is in the spec: service labels, placement, policies
    spec = json.loads(run(lab, "service", "inspect", "clia").stdout)[0]["spec"]
    assert spec["labels"] == {"tier": "front"} and spec["stack"] == ""
    assert spec["networks"] == [{"target": "clinet", "aliases": ["alpha"]}]
    assert spec["deploy"]["restart_policy"] == {"condition": "on-failure", "delay": "1s", "window": "1m",
                                                "max_attempts": 5}
    assert spec["deploy"]["update_config"]["order"] == "start-first"
    assert spec["deploy"]["rollback_config"]["failure_action"] == "continue"
    assert spec["deploy"]["placement"]["preferences"] == [{"spread": "node.labels.zone"}]

    # a stackless service is answered by DNS (docs/dns.md: N, N.Z, tasks.N) on its network
    objects.append("clib")
    run(lab, "service", "create", "-d", "--name", "clib", "--network", "clinet",
        "--constraint", "node.hostname==worker2", IMAGE, "sh", "-c", SLEEP)
    ip = [t["ip"] for t in tasks(lab, "clia") if t["current_state"] == "running"]
    bid = one_container(lab, "worker2", "clib")
    for name in ("clia", "clia.pyswarm", "tasks.clia", "alpha"):
        got = wait_for(lambda name=name: nslookup(lab, "worker2", bid, name), 20, f"{name} resolved from clib")
        assert got == ip, (name, got, ip)

    # more replicas than one node may take (max 1 per node, only worker1 allowed): the
    # watch ends non-zero with the scheduler's reason, and the change stays
    failed = run(lab, "service", "update", "--replicas", "2", "clia", check=False, env={"PYSWARM_PROGRESS_GRACE": "2"})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed: no suitable node" in failed.stdout.splitlines()[-1], failed.stdout
    assert json.loads(run(lab, "service", "inspect", "clia").stdout)[0]["spec"]["replicas"] == 2
    assert run(lab, "service", "scale", "clia=1").stdout.splitlines()[-1] == "clia: 1/1 running: converged"

    # update: every add/rm flag, a move to worker2 (constraint), a new image and command
    out = run(lab, "service", "update", "--env-rm", "A", "--env-add", "B=2", "--label-add", "x=y",
              "--label-rm", "tier", "--container-label-rm", "c", "--container-label-add", "d=4",
              "--publish-rm", "81", "--publish-add", "published=18092,target=82,mode=host",
              "--mount-rm", "/cache", "--mount-add", "type=tmpfs,target=/cache2",
              "--network-add", "clinet2", "--constraint-rm", "node.hostname==worker1",
              "--constraint-add", "node.hostname==worker2", "--secret-rm", "clisecret", "--secret-add", "clisecret2",
              "--config-rm", "cliconf", "--dns-rm", "10.9.9.9", "--dns-add", "10.9.9.8",
              "--dns-search-rm", "example.test", "--dns-option-rm", "ndots:3", "--dns-option-add", "ndots:4",
              "--host-rm", "db.example", "--host-add", "x.example:10.1.1.1", "--sysctl-rm", "net.core.somaxconn",
              "--sysctl-add", "net.ipv4.tcp_syncookies=1", "--ulimit-rm", "nofile", "--ulimit-add", "nproc=500",
              "--cap-drop", "NET_ADMIN", "--image", TAG2, "--args", f"-c \"{SLEEP}\"", "--limit-memory", "32m",
              "--health-cmd", "test -d /cache2", "--user", "0:0", "--workdir", "/", "--hostname", "clihost2",
              "--stop-grace-period", "2s", "--placement-pref-rm", "spread=node.labels.zone",
              "--replicas-max-per-node", "0", "clia").stdout
    assert out.splitlines()[-1] == "clia: 1/1 running: converged", out
    cid = one_container(lab, "worker2", "clia")
    info = inspect(lab, "worker2", cid)
    c, h = info["Config"], info["HostConfig"]
    assert "B=2" in c["Env"] and not any(e.startswith("A=") for e in c["Env"]) and "FROM_FILE=yes" in c["Env"]
    assert c["Labels"].get("d") == "4" and "c" not in c["Labels"] and c["Image"] == TAG2
    assert (c["Hostname"], c["WorkingDir"], c["StopTimeout"]) == ("clihost2", "/", 2)
    assert c["Healthcheck"]["Test"] == ["CMD-SHELL", "test -d /cache2"]
    assert h["PortBindings"] == {"82/tcp": [{"HostIp": "", "HostPort": "18092"}]}, h["PortBindings"]
    assert sorted(m["Target"] for m in h["Mounts"] if m["Type"] != "bind" or m["Target"] == "/hostdir") == \
        ["/cache2", "/hostdir", "/vol"], h["Mounts"]
    assert "10.9.9.8" in h["Dns"] and "10.9.9.9" not in h["Dns"] and "example.test" not in (h["DnsSearch"] or [])
    assert h["DnsOptions"] == ["ndots:4"] and h["ExtraHosts"] == ["x.example:10.1.1.1"]
    assert h["Sysctls"] == {"net.ipv4.tcp_syncookies": "1"}
    assert [(u["Name"], u["Soft"]) for u in h["Ulimits"]] == [("nproc", 500)]
    assert not h["CapAdd"] and sorted(h["CapDrop"]) == ["MKNOD", "NET_ADMIN"] and h["Memory"] == 32 << 20
    assert inside(lab, "worker2", cid, "cat /run/secrets/clisecret2; test -e /etc/cliconf; echo $?") == "s3cret\n1"
    spec = json.loads(run(lab, "service", "inspect", "clia").stdout)[0]["spec"]
    assert spec["labels"] == {"x": "y"} and [n["target"] for n in spec["networks"]] == ["clinet", "clinet2"]
    assert spec["constraints"] == ["node.hostname == worker2"] and spec["max_replicas_per_node"] == 0
    # --force replaces the task although nothing else changed (stop-first: the
    # new task needs the old one's host port, on the one node allowed)
    forced = run(lab, "service", "update", "--force", "--update-order", "stop-first", "clia").stdout
    assert forced.splitlines()[-1] == "clia: 1/1 running: converged", forced
    assert one_container(lab, "worker2", "clia") != cid, "--force kept the container"


def test_refused_flags_change_nothing(lab: Any) -> None:
    before = run(lab, "service", "ls", "-q").stdout
    for args, said in ((["--isolation", "hyperv"], "pyswarm does not support --isolation"),
                       (["--colour"], "unrecognized arguments: --colour"),
                       (["--restart-delay", "soon"], "invalid --restart-delay 'soon'")):
        res = run(lab, "service", "create", *args, IMAGE, check=False)
        assert res.returncode in (1, 2) and said in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert run(lab, "service", "ls", "-q").stdout == before
    version = run(lab, "version").stdout
    assert version.startswith("Client:\n Version:") and "\nManager:\n Version:" in version and " Leader:           true" in version


def _pty_run(lab: Any, args: list[str], timeout: float = 120) -> tuple[int, str]:
    prefix, env = lab.exec_argv(lab.managers[0])
    master, slave = pty.openpty()
    proc = subprocess.Popen(prefix + args, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    rc = proc.wait(timeout=10)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def test_progress_on_a_terminal_and_on_a_pipe(lab: Any) -> None:
    from pyswarm.deploy.lab_core import pyswarm_executable

    exe = pyswarm_executable()
    try:
        rc, raw = _pty_run(lab, [exe, "service", "create", "--name", "clip", "--replicas", "2", IMAGE, "sh", "-c", SLEEP])
        assert rc == 0, raw
        assert "\x1b[" in raw, f"no escape codes on a terminal: {raw!r}"
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
        assert "━" in plain and "clip: 2/2 running: converged" in plain, plain
        # on a pipe: plain lines, one per change, no escape codes
        prefix, env = lab.exec_argv(lab.managers[0])
        piped = subprocess.run(prefix + [exe, "service", "update", "--env-add", "X=1", "clip"], env=env,
                               capture_output=True, text=True, timeout=120)
        assert piped.returncode == 0, piped.stdout + piped.stderr
        lines = piped.stdout.splitlines()
        assert "\x1b" not in piped.stdout and lines[0] == "clip" and lines[-1] == "clip: 2/2 running: converged", lines
        assert all(re.fullmatch(r"clip: \d/2 running.*", line) for line in lines[1:]), lines
        assert len(lines) == len(set(lines)), f"a line repeated without a change: {lines}"
        # --mode global: one task a node, watched on a pipe too
        glob = subprocess.run(prefix + [exe, "service", "create", "--mode", "global", "--name", "clig", IMAGE,
                                        "sh", "-c", SLEEP], env=env, capture_output=True, text=True, timeout=120)
        n = len(lab.hosts)
        assert glob.returncode == 0 and glob.stdout.splitlines()[-1] == f"clig: {n}/{n} running: converged", glob.stdout
        assert sorted(t["node"] for t in tasks(lab, "clig")) == sorted(lab.hosts)
        # node ps with no node: the tasks on the node of the manager asked
        here = run(lab, "node", "ps", "--format", "{{.Node}} {{.Name}}").stdout.splitlines()
        assert here and all(line.startswith(f"{lab.managers[0]} ") for line in here), here
        assert any(line.split()[1].startswith("clig.") for line in here), here
        # completion asks the cluster for names
        assert run(lab, "__complete", "service", "ps", "cli").stdout.split() == ["clig", "clip"]
        assert run(lab, "__complete", "node", "ps", "work").stdout.split() == ["worker1", "worker2", "worker3"]
        # a closed pipe ends quietly
        closed = subprocess.run(prefix + ["sh", "-c", f"{exe} service ps clip clip clip | head -1"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert closed.stdout.startswith("ID") and closed.stderr == "", closed.stderr
    finally:
        run(lab, "service", "rm", "clip", "clig", check=False)
        run(lab, "service", "rm", "clig", check=False)
        wait_for(lambda: not any(lab.docker(h, "ps", "-aq", "--filter", "label=pyswarm.service.name=clip").stdout.strip()
                                 or lab.docker(h, "ps", "-aq", "--filter", "label=pyswarm.service.name=clig").stdout.strip()
                                 for h in lab.hosts), 60, "clip's and clig's containers gone")


STACK_V1 = f"""
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "{SLEEP}"]
    deploy: {{replicas: 2}}
  db:
    image: {IMAGE}
    command: ["sh", "-c", "{SLEEP}"]
    deploy: {{placement: {{constraints: [node.hostname==worker3]}}}}
"""
STACK_V2 = f"""
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "{SLEEP}"]
    environment: {{V: "2"}}
    deploy: {{replicas: 2}}
  api:
    image: {TAG2}
    command: ["sh", "-c", "{SLEEP}"]
"""


def _store_services(lab: Any) -> Any:
    """The manager's replica of services, networks, secrets and configs (not tasks, which move)."""
    code = ("import json; from pyswarm import config, rpc; "
            "raw = rpc.call_unix(config.socket_path(), 'store.export', {})['objects']; "
            "print(json.dumps({k: raw.get(k, {}) for k in ('service', 'network', 'secret', 'config')}, sort_keys=True))")
    return json.loads(lab.exec(lab.managers[0], [sys.executable, "-c", code]).stdout)


def test_lists_formats_dry_run_and_prune(lab: Any, tmp_path: Path, tag2: str) -> None:
    v1, v2 = tmp_path / "v1.yml", tmp_path / "v2.yml"
    v1.write_text(STACK_V1)
    v2.write_text(STACK_V2)
    try:
        run(lab, "stack", "deploy", "--detach=false", "-c", str(v1), "clis")
        # Docker's shapes
        rows = [json.loads(line) for line in run(lab, "stack", "services", "clis", "--format", "{{json .}}").stdout.splitlines()]
        assert [r["Name"] for r in rows] == ["clis_db", "clis_web"] and all(set(r) == set(SERVICE_FIELDS) for r in rows)
        assert rows[1]["Replicas"] == "2/2" and len(rows[1]["ID"]) == 12
        table = run(lab, "node", "ls", "--format", "table {{.Hostname}}\t{{.Status}}").stdout.splitlines()
        assert re.fullmatch(r"HOSTNAME +STATUS", table[0]) and len(table) == 5
        assert all(re.fullmatch(r"\S+ +Ready", line) for line in table[1:]), table
        assert table[0].index("STATUS") == max(10, max(len(line.split()[0]) for line in table) + 3)
        assert len(run(lab, "node", "ls", "-q", "--filter", "role=worker").stdout.split()) == 3
        assert run(lab, "stack", "ls", "-q", "--filter", "name=clis").stdout.split() == ["clis"]
        assert run(lab, "service", "ls", "-q", "--filter", "name=clis_").stdout.split().__len__() == 2
        on3 = run(lab, "node", "ps", "worker3", "--format", "{{.Name}} {{.Node}} {{.DesiredState}}").stdout.splitlines()
        assert "clis_db.1 worker3 Running" in on3, on3
        task = json.loads(run(lab, "service", "ps", "clis_web", "--format", "{{json .}}").stdout.splitlines()[0])
        assert set(task) == set(TASK_FIELDS)
        ids = run(lab, "service", "ps", "clis_web", "-q", "--filter", "desired-state=running").stdout.split()
        full = run(lab, "service", "ps", "clis_web", "-q", "--no-trunc", "--filter", "desired-state=running").stdout.split()
        assert len(ids) == 2 and all(len(i) == 12 for i in ids) and all(len(i) == 25 for i in full)
        assert "Name:                 clis_web" in run(lab, "service", "inspect", "--pretty", "clis_web").stdout
        assert "Hostname:             worker1" in run(lab, "node", "inspect", "--pretty", "worker1").stdout
        assert run(lab, "service", "inspect", "--format", "{{.Spec.Name}} {{.Version}}", "clis_web").stdout == "clis_web 1\n"
        # --dry-run says what would change and changes nothing in the store
        before = _store_services(lab)
        plan = run(lab, "stack", "deploy", "--dry-run", "--prune", "-c", str(v2), "clis").stdout
        assert "Would update service clis_web:" in plan and '    container.env.V: (none) -> "2"' in plan, plan
        assert f"Would create service clis_api (image {TAG2})" in plan and "Would remove service clis_db (--prune)" in plan
        assert f"Images to pull: {TAG2}" in plan and plan.endswith("Nothing was changed (--dry-run).\n")
        assert _store_services(lab) == before, "--dry-run changed the store"
        # --prune removes the service the file no longer has; --detach=false waits for the rest
        out = run(lab, "stack", "deploy", "--prune", "--detach=false", "-c", str(v2), "clis").stdout
        assert "Removing service clis_db" in out and out.splitlines()[-1].endswith("converged"), out
        names = run(lab, "stack", "services", "clis", "--format", "{{.Name}}").stdout.split()
        assert names == ["clis_api", "clis_web"], names
    finally:
        run(lab, "stack", "rm", "clis", check=False)
        wait_for(lambda: not any(lab.docker(h, "ps", "-aq", "--filter", "label=com.docker.stack.namespace=clis")
                                 .stdout.strip() for h in lab.hosts), 60, "stack clis's containers gone")


def test_failing_tasks_end_the_watch_with_their_reason_and_ctrl_c_only_stops_watching(lab: Any) -> None:
    """An image that cannot be pulled and a healthcheck that fails: each
    watch ends 1 naming the reason, the service stays. Ctrl-C while a task
    cannot be placed: exit 130, the service stays."""
    from pyswarm.deploy.lab_core import pyswarm_executable

    exe = pyswarm_executable()
    prefix, env = lab.exec_argv(lab.managers[0])
    env = {**env, "PYSWARM_PROGRESS_GRACE": "3"}
    names = ("clipull", "clihealth", "cliwait")
    try:
        watches = {
            "clipull": subprocess.Popen(prefix + [exe, "service", "create", "--name", "clipull", "--restart-delay", "1s",
                                                  "pyswarm-lab/no-such-image:1"], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True),
            "clihealth": subprocess.Popen(prefix + [exe, "service", "create", "--name", "clihealth", "--restart-delay",
                                                    "1s", "--health-cmd", "false", "--health-interval", "500ms",
                                                    "--health-retries", "1", IMAGE, "sh", "-c", SLEEP], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        }
        said = {name: proc.communicate(timeout=180) for name, proc in watches.items()}
        for name, proc in watches.items():
            assert proc.returncode == 1, (name, said[name])
        pull_end = said["clipull"][0].splitlines()[-1]
        assert pull_end.startswith("clipull: 0/1 running: failed: tasks keep failing:"), said["clipull"]
        health_end = said["clihealth"][0].splitlines()[-1]
        assert "failed: tasks keep failing: container unhealthy" in health_end, said["clihealth"]
        assert sorted(run(lab, "service", "ls", "--filter", "name=cli", "--format", "{{.Name}}").stdout.split()) == \
            ["clihealth", "clipull"], "a failed watch removed the service"
        # Ctrl-C stops the watching, not the change
        proc = subprocess.Popen(prefix + [exe, "service", "create", "--name", "cliwait", "--constraint",
                                          "node.hostname==nowhere", IMAGE], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the service's id: it exists, the watch has begun
        assert first.strip(), first
        time.sleep(0.5)
        os.killpg(proc.pid, 2)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "the change goes on" in out and "Traceback" not in err, (out, err)
        assert run(lab, "service", "ls", "-q", "--filter", "name=cliwait").stdout.strip(), "Ctrl-C undid the create"
    finally:
        run(lab, "service", "rm", *names, check=False)
        wait_for(lambda: not any(lab.docker(h, "ps", "-aq", "--filter", f"label=pyswarm.service.name={n}").stdout.strip()
                                 for h in lab.hosts for n in names), 60, "the failing services' containers gone")
