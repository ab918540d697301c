"""The whole slice on real parts: a lab of 1 manager + 3 workers (real sshd,
dockerd and Raft store in separate namespaces), a stack deployed, scaled,
healed and removed, checked on the hosts' own engines, and DNS asked from a
container and over UDP and TCP from outside."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from support import wait_until

pytestmark = pytest.mark.e2e

STACK = "e2e"
SERVICE = f"{STACK}_web"
IMAGE = "pyswarm-lab/busybox:latest"
STACK_FILE = f"""
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    deploy:
      replicas: 3
  api:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    deploy:
      placement:
        constraints: ["node.hostname==worker3"]
"""


def manager_json(lab: Any, *args: str) -> Any:
    return json.loads(lab.pyswarm(lab.managers[0], *args, "--format", "json").stdout)


def containers(lab: Any, host: str) -> list[str]:
    out = lab.docker(host, "ps", "-q", "--filter", f"label=pyswarm.service.name={SERVICE}").stdout
    return out.split()


def per_host(lab: Any) -> dict[str, int]:
    return {host: len(containers(lab, host)) for host in lab.hosts}


def wait_running(lab: Any, want: int, timeout: float = 60) -> list[dict[str, Any]]:
    def check() -> tuple[bool, Any]:
        tasks = [t for t in manager_json(lab, "service", "ps", SERVICE) if t["desired_state"] == "running"]
        running = [t for t in tasks if t["current_state"] == "running"]
        return len(running) == want and len(tasks) == want, [(t["name"], t["node"], t["current_state"], t["error"]) for t in tasks]
    wait_until(check, timeout, f"{want} running tasks of {SERVICE}")
    return [t for t in manager_json(lab, "service", "ps", SERVICE) if t["current_state"] == "running" and t["desired_state"] == "running"]


def wait_host_counts(lab: Any, want: list[int], timeout: float = 30) -> dict[str, int]:
    return wait_until(lambda: _counts_ok(lab, want), timeout, f"containers per host {want}")


def _counts_ok(lab: Any, want: list[int]) -> tuple[bool, dict[str, int]]:
    counts = per_host(lab)
    return sorted(counts.values(), reverse=True) == want, counts


def query(server: str, name: str, tcp: bool = False) -> list[str]:
    q = dns.message.make_query(name, dns.rdatatype.A)
    answer = (dns.query.tcp if tcp else dns.query.udp)(q, server, timeout=3)
    return [item.address for rrset in answer.answer for item in rrset]


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stack") / "stack.yml"
    path.write_text(STACK_FILE)
    return path


def test_cluster_end_to_end(lab: Any, stack_file: Path) -> None:
    manager = lab.managers[0]
    nodes = manager_json(lab, "node", "ls")
    assert sorted(n["hostname"] for n in nodes) == sorted(lab.hosts), nodes
    assert all(n["status"] == "ready" for n in nodes), nodes
    assert [n["manager_status"] for n in nodes if n["role"] == "manager"] == ["leader"], nodes

    # deploy 3 replicas
    lab.pyswarm(manager, "stack", "deploy", "-c", str(stack_file), STACK)
    wait_running(lab, 3)
    assert sum(per_host(lab).values()) == 3

    # scale to 5: spread 2/1/1/1 over the 4 nodes, on the hosts' engines
    lab.pyswarm(manager, "service", "scale", "-d", f"{SERVICE}=5")
    tasks = wait_running(lab, 5)
    counts = wait_host_counts(lab, [2, 1, 1, 1])
    assert set(counts) == set(lab.hosts), counts
    ips = sorted(t["ip"] for t in tasks)
    assert len(set(ips)) == 5 and all(ips), f"task IPs: {ips}"

    # DNS from a container on worker1: 5 distinct IPs, order rotating
    client = containers(lab, "worker1")[0]
    answers = []
    for _ in range(3):
        out = lab.docker("worker1", "exec", client, "nslookup", "web").stdout
        answers.append([line.split()[-1] for line in out.split("Name:", 1)[-1].splitlines() if line.startswith("Address")])
    assert all(sorted(a) == ips for a in answers), f"nslookup web answered {answers}, tasks have {ips}"
    assert answers[0] != answers[1] or answers[1] != answers[2], f"order did not rotate: {answers}"

    # DNS over UDP and TCP from outside, at the manager's address
    maddr = lab.hosts[manager]
    assert sorted(query(maddr, f"web.{STACK}")) == ips
    assert sorted(query(maddr, f"tasks.web.{STACK}", tcp=True)) == ips

    # HTTP by name from worker1 reaches a replica on another worker. (By
    # `api`, pinned to worker3: for `web`, the C library's address sorting
    # (RFC 6724 rule 9, longest matching prefix) always prefers the replica
    # on the client's own node, as it does in Docker Swarm with dnsrr.)
    api = lab.docker("worker3", "ps", "-q", "--filter", f"label=pyswarm.service.name={STACK}_api").stdout.split()
    assert len(api) == 1, f"api containers on worker3: {api}"

    def remote_hit() -> tuple[bool, Any]:
        page = lab.docker("worker1", "exec", client, "sh", "-c",
                          'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 2 api 80 | tail -n 1', check=False).stdout.strip()
        return page == api[0][:12], page
    wait_until(remote_hit, 20, f"an HTTP answer by name from api's replica {api[0][:12]} on worker3")

    # kill a container on its host: it is replaced
    victim_host = "worker2"
    victim = containers(lab, victim_host)[0]
    killed_at = time.monotonic()
    lab.docker(victim_host, "kill", victim)
    wait_running(lab, 5)
    wait_host_counts(lab, [2, 1, 1, 1])
    print(f"killed container replaced and running after {time.monotonic() - killed_at:.2f}s")
    assert victim not in containers(lab, victim_host), "the killed container is running again (restarted, not replaced)"
    history = [t for t in manager_json(lab, "service", "ps", SERVICE) if t["container_id"].startswith(victim)]
    assert history and history[0]["current_state"] in ("failed", "complete"), history

    # scale to 1: four containers gone from the hosts
    lab.pyswarm(manager, "service", "scale", "-d", f"{SERVICE}=1")
    wait_running(lab, 1)
    wait_host_counts(lab, [1, 0, 0, 0])

    # stack rm: no container left on any host
    lab.pyswarm(manager, "stack", "rm", STACK)
    wait_host_counts(lab, [0, 0, 0, 0])
    assert manager_json(lab, "service", "ls") == []
