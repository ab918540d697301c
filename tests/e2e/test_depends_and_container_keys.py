"""Issue 4 on real hosts (the shared session lab): ``depends_on`` with
``condition: service_healthy`` holds a service's tasks until its dependency
is healthy, and the container keys tests/e2e/test_stack_keys.py does not
cover (capabilities, sysctls, ulimits, init, read_only, tmpfs, extra_hosts,
hostname, stop_signal, stop_grace_period) take effect on the node's engine
and inside the container. Each test removes its stack."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import brief, deployed_stacks, tasks, wait_for

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"


@pytest.fixture
def deploy(lab: Any, tmp_path: Path) -> Iterator[Any]:
    with deployed_stacks(lab, tmp_path) as go:
        yield go


def test_depends_on_service_healthy_waits_for_a_healthy_dependency(lab: Any, deploy: Any) -> None:
    deploy("dep", f"""
services:
  api:
    image: {IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3; touch /tmp/ok; sleep 3600 & wait"]
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/ok"]
      interval: 300ms
      retries: 1
      start_period: 10s
  web:
    image: {IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    depends_on:
      api: {{condition: service_healthy}}
    deploy:
      replicas: 2
""")
    want = "waiting for dependency api to be healthy"
    # api is up but not yet healthy: web's tasks are not placed, and say why
    seen = wait_for(lambda: [t for t in tasks(lab, "dep_api") if t["current_state"] == "starting"], 30,
                    "api's task starting (not yet healthy)", interval=0.1, observe=lambda: brief(tasks(lab, "dep_api")))
    web = tasks(lab, "dep_web")
    assert len(web) == 2 and all(t["current_state"] == "pending" and t["message"] == want and not t["node"]
                                 for t in web), f"while api is {seen[0]['current_state']}: {brief(web)}"
    assert not any(lab.docker(h, "ps", "-aq", "--filter", "label=pyswarm.service.name=dep_web").stdout.strip()
                   for h in lab.hosts), "a web container exists before api is healthy"

    def both_running() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        api = [t for t in tasks(lab, "dep_api") if t["current_state"] == "running"]
        web = [t for t in tasks(lab, "dep_web") if t["current_state"] == "running"]
        return (api, web) if len(api) == 1 and len(web) == 2 else None
    api, web = wait_for(both_running, 40, "api healthy, then web's 2 tasks running",
                        observe=lambda: brief(tasks(lab, "dep_api") + tasks(lab, "dep_web")))
    # web's containers were created only after api's task became running (healthy)
    healthy_at = api[0]["since"]
    created = [_engine_time(lab.docker(t["node"], "inspect", "-f", "{{.Created}}", t["container_id"]).stdout)
               for t in web]
    assert min(created) >= healthy_at, f"a web container created at {min(created):.2f}, api healthy only at {healthy_at:.2f}"
    print(f"\nweb's containers created {min(created) - healthy_at:.2f}s after api became healthy")


def _engine_time(text: str) -> float:
    """An engine timestamp (RFC 3339 with nanoseconds) as epoch seconds."""
    stamp = text.strip().rstrip("Z")
    whole, _, frac = stamp.partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{frac or 0}")


KEYS_STACK = f"""
services:
  box:
    image: {IMAGE}
    command: ["sh", "-c", "trap 'exit 0' USR1; sleep 3600 & wait"]
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    sysctls:
      net.core.somaxconn: 1024
    ulimits:
      nproc: 500
      nofile: {{soft: 1024, hard: 2048}}
    init: true
    read_only: true
    tmpfs:
      - /scratch
      - /tmp:size=16m
    extra_hosts:
      - "db.example:10.9.8.7"
    hostname: boxhost
    stop_signal: SIGUSR1
    stop_grace_period: 3s
    deploy:
      placement:
        constraints: [node.hostname==worker2]
"""

CAP_NET_ADMIN = 12
CAP_MKNOD = 27


def test_container_keys_take_effect_on_the_engine(lab: Any, deploy: Any) -> None:
    deploy("ck", KEYS_STACK)

    def one_running() -> str:
        out = lab.docker("worker2", "ps", "-q", "--filter", "label=pyswarm.service.name=ck_box",
                         "--filter", "status=running").stdout.split()
        return out[0] if len(out) == 1 else ""
    cid = wait_for(one_running, 60, "ck_box running on worker2", observe=lambda: brief(tasks(lab, "ck_box")))
    info = json.loads(lab.docker("worker2", "inspect", cid).stdout)[0]
    config, host = info["Config"], info["HostConfig"]
    assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["MKNOD"], (host["CapAdd"], host["CapDrop"])
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"}, host["Sysctls"]
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]}
    assert ulimits == {"nproc": (500, 500), "nofile": (1024, 2048)}, host["Ulimits"]
    assert host["Init"] is True and host["ReadonlyRootfs"] is True, (host["Init"], host["ReadonlyRootfs"])
    assert host["Tmpfs"] == {"/scratch": "", "/tmp": "size=16m"}, host["Tmpfs"]
    assert host["ExtraHosts"] == ["db.example:10.9.8.7"], host["ExtraHosts"]
    assert config["Hostname"] == "boxhost", config["Hostname"]
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGUSR1", 3), (config.get("StopSignal"), config.get("StopTimeout"))

    def inside(script: str) -> str:
        return str(lab.docker("worker2", "exec", cid, "sh", "-c", script).stdout.strip())
    assert inside("hostname") == "boxhost"
    assert inside("grep db.example /etc/hosts").split() == ["10.9.8.7", "db.example"]
    assert inside("cat /proc/sys/net/core/somaxconn") == "1024"
    assert inside("ulimit -n; ulimit -Hn; ulimit -u").split() == ["1024", "2048", "500"]
    assert "init" in inside("cat /proc/1/comm"), inside("cat /proc/1/comm")  # docker-init as PID 1
    caps = int(inside("grep CapBnd /proc/self/status").split()[1], 16)
    assert caps >> CAP_NET_ADMIN & 1 and not caps >> CAP_MKNOD & 1, f"CapBnd {caps:x}"
    assert inside("touch /rootfile 2>&1; echo rc=$?").endswith("rc=1"), "the root filesystem is writable"
    assert inside("touch /tmp/f /scratch/f && echo ok") == "ok"
    assert inside("df -k /tmp | tail -1").split()[1] == str(16 * 1024), inside("df -k /tmp")
    # the stop signal reaches the command (through docker-init): a stop ends
    # inside the 3 s grace with the trap's exit status (SIGKILL would be 137)
    t0 = time.monotonic()
    lab.docker("worker2", "stop", cid, timeout=30)
    took = time.monotonic() - t0
    done = wait_for(lambda: [t for t in tasks(lab, "ck_box") if t["container_id"] == info["Id"]
                             and t["current_state"] in ("complete", "failed")], 20,
                    "the stopped container's task ended", observe=lambda: brief(tasks(lab, "ck_box")))
    assert (done[0]["current_state"], done[0]["exit_code"]) == ("complete", 0), brief(done)
    assert took < 3.0, f"docker stop took {took:.2f}s: SIGUSR1 did not end the command"
