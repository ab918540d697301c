"""Managers as a Raft quorum, on a lab of 3 managers and 2 workers (real
manager processes in separate namespaces, real pysyncobj over TCP, real SSH
to the agents): failover by kill and by partition, writes under failover,
restarts, quorum loss and --force-new-cluster, promote/demote.

The tests run in order on one lab; each leaves it with 3 managers running.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from support import brief, running, tasks, wait_until

from pyswarm import rpc
from pyswarm.errors import PyswarmError

pytestmark = pytest.mark.e2e

STACK = "q"
IMAGE = "pyswarm-lab/busybox:latest"
# exits on TERM, so removals do not wait out the 10 s stop grace
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 & wait"]


def web_spec(name: str, replicas: int = 1) -> dict[str, Any]:
    return {"name": name, "stack": STACK, "replicas": replicas,
            "container": {"image": IMAGE, "command": COMMAND}}


class Cluster:
    """The lab, seen through each manager's own API socket."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.managers: list[str] = list(lab.managers)

    def sock(self, host: str) -> Path:
        return Path(self.lab.host(host).private("/run/pyswarm/manager.sock"))

    def call(self, host: str, method: str, params: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        return rpc.call_unix(self.sock(host), method, params or {}, timeout=timeout)

    def try_call(self, host: str, method: str, params: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        try:
            return self.call(host, method, params, timeout)
        except PyswarmError as exc:
            return exc

    def leader(self, among: list[str] | None = None) -> str | None:
        for host in among or self.managers:
            answer = self.try_call(host, "ping", timeout=2)
            if isinstance(answer, dict) and answer.get("leader"):
                return host
        return None

    def wait_leader(self, among: list[str], timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leader(among)
            if found:
                return found
            time.sleep(0.05)
        pytest.fail(f"no leader among {among} after {timeout:.0f}s")

    def kill(self, host: str, signal: str = "KILL") -> None:
        self.lab.exec(host, ["sh", "-c", f"kill -{signal} $(cat /run/pyswarm/manager.pid)"])
        if signal != "KILL":
            wait_until(lambda: (self.lab.exec(host, ["test", "-e", "/run/pyswarm/manager.pid"], check=False).returncode == 1,
                                None), 15, f"{host}'s manager to exit on SIG{signal} (its pid file gone)")

    def start(self, host: str) -> None:
        self.lab.pyswarm(host, "manager", "start", timeout=90)

    def containers(self) -> dict[str, set[str]]:
        return self.containers_on(list(self.lab.hosts))

    def containers_on(self, hosts: list[str], stack: str = STACK) -> dict[str, set[str]]:
        return {h: set(self.lab.docker(h, "ps", "-q", "--filter", f"label=com.docker.stack.namespace={stack}").stdout.split())
                for h in hosts}

    def node_rows(self, host: str) -> dict[str, dict[str, Any]]:
        return {n["hostname"]: n for n in self.call(host, "node.ls")}

    def service_names(self, host: str) -> set[str]:
        return {s["name"] for s in self.call(host, "service.ls")}


def write_ok(cluster: Cluster, host: str, params: dict[str, Any]) -> bool:
    return not isinstance(cluster.try_call(host, "stack.deploy", params, timeout=10), PyswarmError)


@pytest.fixture(scope="module")
def cluster(lab_factory: Any) -> Iterator[Cluster]:
    c = Cluster(lab_factory(managers=3, workers=2, cluster=True))
    leader = c.wait_leader(c.managers)
    c.call(leader, "stack.deploy", {"stack": STACK, "services": [web_spec("q_web", 5)]})
    wait_until(lambda: (sum(map(len, c.containers().values())) == 5, c.containers()), 60, "5 q_web containers")
    yield c


def all_ready(c: Cluster, via: str) -> tuple[bool, Any]:
    rows = c.node_rows(via)
    return all(r["status"] == "ready" for r in rows.values()), {h: (r["status"], r["manager_status"]) for h, r in rows.items()}


def test_three_managers_one_leader_reads_everywhere_writes_through_followers(cluster: Cluster) -> None:
    leader = cluster.wait_leader(cluster.managers)
    rows = cluster.node_rows(leader)
    statuses = sorted(r["manager_status"] for r in rows.values() if r["role"] == "manager")
    assert statuses == ["leader", "reachable", "reachable"], rows
    follower = next(h for h in cluster.managers if h != leader)
    cluster.call(follower, "stack.deploy", {"stack": STACK, "services": [web_spec("q_via_follower", 0)]})
    for host in cluster.managers:
        wait_until(lambda: ("q_via_follower" in cluster.service_names(host), cluster.service_names(host)), 5,
                   f"the follower's write visible on {host}")


def test_a_follower_answers_logs_exec_stats_and_events(cluster: Cluster) -> None:
    """Issue 13 through a follower: logs, exec and stats are handed on to the
    leader (manager/forward.py), events come from the follower's own replica."""
    leader = cluster.wait_leader(cluster.managers)
    follower = next(h for h in cluster.managers if h != leader)
    lab = cluster.lab

    def on(*args: str, **kw: Any) -> Any:
        return lab.pyswarm(follower, *args, timeout=60, **kw)

    # a line on the web task's own stdout: what its logs show
    said = on("service", "exec", "--slot", "1", "q_web", "sh", "-c", "echo hello from the follower > /proc/1/fd/1")
    assert said.returncode == 0, said.stderr
    wait_until(lambda: ("hello from the follower" in on("service", "logs", "--no-task-ids", "q_web").stdout, None),
               30, "the follower showing the line in service logs")
    ran = on("service", "exec", "-i", "q_web", "sh", "-c", "cat; exit 5", input="through the leader\n", check=False)
    assert (ran.returncode, ran.stdout) == (5, "through the leader\n"), ran.stderr
    table = json.loads(on("stats", "--no-stream", "--format", "json").stdout)
    assert len([t for t in table["tasks"] if t["service"] == "q_web"]) == 5, table["tasks"]
    events = [json.loads(line) for line in on("events", "--since", "10m", "--until", "0s", "--filter", "type=service",
                                              "--format", "json").stdout.splitlines()]
    assert any(e["action"] == "create" and e["name"] == "q_web" for e in events), events


BUILT_STACK = "qb"
BUILT_FILE = """
services:
  app:
    build: ./app
    command: ["sleep", "3600"]
    deploy: {replicas: 2, placement: {constraints: [node.role == worker]}}
"""


def _deploy_built(cluster: Cluster, host: str, tmp_path: Path) -> tuple[str, list[dict[str, Any]]]:
    """``stack deploy`` on ``host`` of a service built from a Dockerfile, 2
    replicas on the workers; its name and its running tasks."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM pyswarm-lab/busybox:latest\nCOPY mark.bin /mark.bin\n")
    (tmp_path / "app" / "mark.bin").write_bytes(os.urandom(100_000))
    (tmp_path / "stack.yml").write_text(BUILT_FILE)
    service = f"{BUILT_STACK}_app"
    out = cluster.lab.pyswarm(host, "stack", "deploy", "-c", str(tmp_path / "stack.yml"), BUILT_STACK, timeout=180)
    assert f"Building {service} ({service}:" in out.stderr, out.stderr
    wait_until(lambda: (len(running(cluster.lab, service)) == 2, brief(tasks(cluster.lab, service))), 120,
               f"2 running tasks of {service} on the workers")
    return out.stderr, running(cluster.lab, service)


def _remove_built(cluster: Cluster, leader: str) -> None:
    lab = cluster.lab
    cluster.call(leader, "stack.rm", {"stack": BUILT_STACK})
    wait_until(lambda: (not any(cluster.containers_on(list(lab.hosts), BUILT_STACK).values()),
                        cluster.containers_on(list(lab.hosts), BUILT_STACK)), 60, f"stack {BUILT_STACK} removed")
    for host in lab.hosts:
        lab.exec(host, ["sh", "-c", f"docker images -q --filter reference='{BUILT_STACK}_app' | xargs -r docker rmi -f"],
                 check=False)


def test_an_image_a_follower_built_goes_to_the_leader_and_on_to_the_workers(cluster: Cluster, tmp_path: Path) -> None:
    """Issue 15's follower -> leader path: `stack deploy` run on a follower's
    host builds with that host's engine; automatic shipping reads the
    leader's engine, so the follower's manager sends the image to the
    leader's node first (only missing layers), and the leader ships it to
    the workers that run the tasks (no registry in the lab)."""
    lab = cluster.lab
    leader = cluster.wait_leader(cluster.managers)
    follower = next(h for h in cluster.managers if h != leader)
    try:
        said, rows = _deploy_built(cluster, follower, tmp_path)
        assert f"on to the leader's node {leader}" in said, said
        ref = rows[0]["image"]
        assert lab.docker(leader, "image", "inspect", ref, check=False).returncode == 0, f"the leader {leader} lacks {ref}"
        to_leader = [s for s in cluster.call(follower, "image.shipments")["shipments"]
                     if s["image"] == ref and s["node"] == leader]
        assert [(s["result"], s["reason"]) for s in to_leader] == [("sent", "push")], to_leader
        for t in rows:
            assert lab.docker(t["node"], "image", "inspect", ref, check=False).returncode == 0, t
        shipped = {s["node"] for s in cluster.call(leader, "image.shipments")["shipments"]
                   if s["image"] == ref and s["result"] == "sent" and s["reason"] == "task"}
        assert shipped == {t["node"] for t in rows} == set(lab.workers), shipped
    finally:
        _remove_built(cluster, leader)


def test_a_leader_whose_engine_lacks_a_built_image_gets_it_from_a_node_that_runs_it(cluster: Cluster,
                                                                                   tmp_path: Path) -> None:
    """A leader elected after the build, or any leader whose engine lost the
    image, still ships it: the node a task moves to asks for it, the leader
    gets it from a node whose tasks ran it (the image channel's ``export``)
    and ships it on. Here the image is removed from every manager's engine
    (the state of a leader that never had it) and from the worker the moved
    replica goes to; the other worker is drained."""
    lab = cluster.lab
    leader = cluster.wait_leader(cluster.managers)
    try:
        _, rows = _deploy_built(cluster, leader, tmp_path)
        ref = rows[0]["image"]
        source, target = rows[0]["node"], rows[1]["node"]
        assert {source, target} == set(lab.workers), rows
        for host in (*cluster.managers, target):  # the target's replica runs on: only the tag goes
            lab.docker(host, "image", "rm", "-f", ref)
            assert lab.docker(host, "image", "inspect", ref, check=False).returncode != 0, f"{host} still has {ref}"
        lab.pyswarm(leader, "node", "update", "--availability", "drain", source)
        wait_until(lambda: ([t["node"] for t in running(lab, f"{BUILT_STACK}_app")] == [target] * 2,
                            brief(tasks(lab, f"{BUILT_STACK}_app"))), 120,
                   f"both replicas running on {target} after draining {source}")
        shipments = [s for s in cluster.call(leader, "image.shipments")["shipments"] if s["image"] == ref]
        fetched = [s for s in shipments if s["reason"] == "fetch"]
        assert [(s["node"], s["result"]) for s in fetched] == [(source, "fetched")], shipments
        assert fetched[0]["bytes"] > 100_000, fetched
        assert [(s["node"], s["result"]) for s in shipments if s["reason"] == "task"][-1] == (target, "sent"), shipments
        assert lab.docker(leader, "image", "inspect", ref, check=False).returncode == 0, f"the leader {leader} lacks {ref}"
    finally:
        for worker in lab.workers:
            lab.pyswarm(leader, "node", "update", "--availability", "active", worker, check=False)
        _remove_built(cluster, leader)


def test_leader_killed_new_leader_no_container_restarted(cluster: Cluster) -> None:
    before = cluster.containers()
    old = cluster.wait_leader(cluster.managers)
    others = [h for h in cluster.managers if h != old]
    cluster.kill(old)
    killed = time.monotonic()
    wait_until(lambda: (write_ok(cluster, others[0], {"stack": STACK, "services": [web_spec("q_after_kill", 0)]}), None),
               20, "a successful write after killing the leader", interval=0.02)
    print(f"leader SIGKILL -> first successful write: {time.monotonic() - killed:.2f}s")
    new = cluster.wait_leader(others)
    assert new != old
    wait_until(lambda: all_ready(cluster, new), 20, "the new leader's dispatcher reaching every node")
    assert cluster.containers() == before, "failover restarted or duplicated containers"
    cluster.start(old)
    wait_until(lambda: ("q_after_kill" in cluster.service_names(old), cluster.service_names(old)), 20,
               f"{old} caught up after restart")
    assert cluster.node_rows(new)[old]["manager_status"] in ("reachable", "leader")


def test_partitioned_leader_steps_down_and_catches_up(cluster: Cluster) -> None:
    old = cluster.wait_leader(cluster.managers)
    others = [h for h in cluster.managers if h != old]
    veth = cluster.lab.host(old).veth
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        cut = time.monotonic()
        wait_until(lambda: (write_ok(cluster, others[0], {"stack": STACK, "services": [web_spec("q_in_partition", 0)]}), None),
                   20, "a successful write on the majority side", interval=0.02)
        print(f"leader partitioned -> first successful write: {time.monotonic() - cut:.2f}s")
        wait_until(lambda: (cluster.leader([old]) is None, None), 5, f"{old} to stop being leader without a majority")
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    wait_until(lambda: ("q_in_partition" in cluster.service_names(old), cluster.service_names(old)), 20,
               f"{old} catching up after the partition heals")
    new = cluster.wait_leader(cluster.managers)
    wait_until(lambda: (cluster.node_rows(new)[old]["manager_status"] == "reachable", cluster.node_rows(new)[old]), 20,
               f"{old} back as a reachable follower")


def test_acknowledged_writes_survive_repeated_leader_kills(cluster: Cluster) -> None:
    acked: list[int] = []
    failed: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            params = {"stack": STACK, "services": [web_spec(f"q_w{i}_a", 0), web_spec(f"q_w{i}_b", 0)]}
            # a client that retries on another manager, as the CLI's user would
            (acked if any(write_ok(cluster, h, params) for h in cluster.managers) else failed).append(i)
            i += 1
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(2):
            leader = cluster.wait_leader(cluster.managers)
            cluster.kill(leader)
            cluster.wait_leader([h for h in cluster.managers if h != leader])
            time.sleep(0.5)  # let writes flow under the new leader
            cluster.start(leader)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert acked, "no write was acknowledged at all"
    for host in cluster.managers:
        def has_all() -> tuple[bool, Any]:
            names = cluster.service_names(host)
            missing = [i for i in acked if f"q_w{i}_a" not in names or f"q_w{i}_b" not in names]
            return not missing, missing[:10]
        wait_until(has_all, 20, f"every acknowledged write on {host}")
        names = cluster.service_names(host)
        half = [i for i in failed if (f"q_w{i}_a" in names) != (f"q_w{i}_b" in names)]
        assert not half, f"failed writes half-applied on {host}: {half}"
    print(f"{len(acked)} writes acknowledged, {len(failed)} failed, none lost or half-applied")


def test_all_managers_restart_with_state_and_adopt_containers(cluster: Cluster) -> None:
    before = cluster.containers()
    services = cluster.service_names(cluster.wait_leader(cluster.managers))
    for host in cluster.managers:
        cluster.kill(host, "TERM")
    threads = [threading.Thread(target=cluster.start, args=(h,)) for h in cluster.managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    leader = cluster.wait_leader(cluster.managers, timeout=30)
    assert cluster.service_names(leader) == services
    wait_until(lambda: all_ready(cluster, leader), 30, "every node ready again")
    def web_running() -> tuple[bool, Any]:
        row = next(s for s in cluster.call(leader, "service.ls") if s["name"] == "q_web")
        return row["running"] == 5, row["replicas"]
    wait_until(web_running, 30, "q_web 5/5 again")
    assert cluster.containers() == before, "restarting every manager restarted containers"


def test_quorum_loss_then_force_new_cluster(cluster: Cluster) -> None:
    survivor, *lost = cluster.managers
    before = {h: ids for h, ids in cluster.containers().items() if h not in lost}
    veths = [cluster.lab.host(h).veth for h in lost]
    for veth in veths:  # two manager hosts gone from the network
        subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        rebuilt(cluster, survivor, lost, before)
    finally:
        for veth in veths:
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    # the lost managers come back as workers of the rebuilt cluster: their
    # stray managers are stopped; promote them to make three managers again
    for host in lost:
        wait_until(lambda: (cluster.lab.exec(host, ["test", "-e", "/var/lib/pyswarm/manager.json"], check=False).returncode == 1,
                            None), 30, f"{host}'s stray manager retired")
    wait_until(lambda: all_ready(cluster, survivor), 30, "the returning hosts ready as workers")
    cluster.lab.pyswarm(survivor, "node", "promote", *lost, timeout=120)
    wait_until(lambda: (sorted(r["manager_status"] for r in cluster.node_rows(survivor).values() if r["manager_status"])
                        == ["leader", "reachable", "reachable"], cluster.node_rows(survivor)), 60,
               "three managers again after promoting the lost ones")


def rebuilt(cluster: Cluster, survivor: str, lost: list[str], before: dict[str, set[str]]) -> None:
    time.sleep(1)
    started = time.monotonic()
    answer = cluster.try_call(survivor, "service.scale", {"scales": {"q_web": 4}}, timeout=30)
    took = time.monotonic() - started
    assert isinstance(answer, PyswarmError) and "no quorum: 1 of 3 managers reachable" in str(answer), answer
    assert took < 6, f"a write without quorum took {took:.1f}s to fail"
    assert "q_web" in cluster.service_names(survivor), "reads must still work without quorum"
    addr = cluster.lab.hosts[survivor]
    reply = dns.query.udp(dns.message.make_query(f"web.{STACK}", dns.rdatatype.A), addr, timeout=3)
    assert len([a for rr in reply.answer for a in rr]) == 5, reply
    reached = {h: ids for h, ids in cluster.containers_on([h for h in cluster.lab.hosts if h not in lost]).items()}
    assert reached == before, "containers changed while the cluster had no quorum"

    out = cluster.lab.pyswarm(survivor, "init", "--force-new-cluster", timeout=60).stdout
    assert "only manager" in out, out
    rows = cluster.node_rows(survivor)
    assert [h for h, r in rows.items() if r["manager_status"]] == [survivor], rows
    cluster.call(survivor, "service.scale", {"scales": {"q_web": 5}})
    now = cluster.containers_on(list(before))
    assert all(before[h] <= now[h] for h in before), f"rebuilding the cluster restarted containers: {before} -> {now}"


def test_demote_refuses_to_lose_quorum(cluster: Cluster) -> None:
    leader = cluster.wait_leader(cluster.managers)
    a, b = [h for h in cluster.managers if h != leader]
    cluster.kill(a)
    try:
        wait_until(lambda: (cluster.node_rows(leader)[a]["manager_status"] == "unreachable", None), 10, f"{a} unreachable")
        result = cluster.lab.pyswarm(leader, "node", "demote", b, check=False)
        assert result.returncode == 1 and "would lose quorum" in result.stderr, result
    finally:
        cluster.start(a)
    result = cluster.lab.pyswarm(leader, "node", "demote", b)
    wait_until(lambda: (cluster.lab.exec(b, ["test", "-e", "/var/lib/pyswarm/manager.json"], check=False).returncode == 1, None),
               20, f"{b}'s manager to retire after demotion")
    rows = cluster.node_rows(leader)
    assert rows[b]["role"] == "worker" and rows[b]["status"] == "ready", rows[b]
    cluster.lab.pyswarm(leader, "node", "promote", b, timeout=60)
    wait_until(lambda: (cluster.node_rows(leader)[b]["manager_status"] == "reachable", None), 60, f"{b} a manager again")
