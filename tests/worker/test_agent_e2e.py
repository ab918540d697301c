"""The real agent against real engines: ``pyswarm worker --stdio`` inside lab
hosts, driven over its stdin/stdout exactly as the dispatcher drives it.

This module brings up its own small lab *without* a cluster (1 manager host,
unused, + 2 workers), named apart from the session's (an extra lab from
``new_lab_spec``, tests/conftest.py): on a cluster lab the
leader's dispatcher already runs an agent on every host, and two agents on one
engine would each remove the other's containers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest

from pyswarm import protocol

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
POOL = "10.240.0.0/16"
SUBNETS = {"worker1": "10.240.11.0/24", "worker2": "10.240.12.0/24"}
PYSWARM = str(Path(sys.executable).parent / "pyswarm")


def _skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, dockerd)")


class AgentProcess:
    """One ``pyswarm worker --stdio`` in a lab host, with its messages
    collected by a reader thread as they arrive (with arrival times)."""

    def __init__(self, lab: Any, host: str) -> None:
        self.host = host
        argv, env = lab.exec_argv(host)
        self.stderr: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv + [PYSWARM, "worker", "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, env=env, start_new_session=True,
        )
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.bad_lines: list[bytes] = []
        self._cond = threading.Condition()
        self.last_pong: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # heartbeats, as the dispatcher sends them: an agent whose manager
        # falls silent for 5 s ends its session
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._pinger = threading.Thread(target=self._ping, daemon=True)
        self._pinger.start()

    def _ping(self) -> None:
        seq = 0
        while not self._closing.wait(1.0):
            seq += 1
            try:  # acknowledging the last pong, which renews the host's lease (Ping.ack)
                self.send({"op": "ping", "seq": -seq, "ack": self.last_pong})
            except (OSError, ValueError):
                return

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.time()
            try:
                msg = protocol.decode(line)
            except ValueError:
                self.bad_lines.append(line)
                continue
            if msg.get("op") == "pong" and isinstance(msg.get("seq"), int):
                self.last_pong = msg["seq"]
            with self._cond:
                self.messages.append((now, msg))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        with self._write_lock:
            self.proc.stdin.write(protocol.encode(message))
            self.proc.stdin.flush()

    def said(self) -> list[dict[str, Any]]:
        with self._cond:
            return [m for _, m in self.messages]

    def first_of(self, op: str) -> Callable[[], dict[str, Any] | None]:
        return lambda: next((m for m in self.said() if m["op"] == op), None)

    def status(self, task_id: str, state: str) -> tuple[float, dict[str, Any]] | None:
        with self._cond:
            for at, m in self.messages:
                if m.get("op") == "status" and m.get("task_id") == task_id and m.get("state") == state:
                    return at, m
        return None

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    self.stderr.seek(0)
                    log = self.stderr.read().decode(errors="replace")[-3000:]
                    pytest.fail(f"{self.host}: {what}: not seen in {timeout:.0f}s "
                                f"(agent exit {self.proc.poll()}); agent said: {self.said()}\nstderr: {log}")
                self._cond.wait(min(left, 0.5))

    def wait_status(self, task_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        found: tuple[float, dict[str, Any]] = self.wait_for(
            f"status {state} for {task_id}", lambda: self.status(task_id, state), timeout)
        return found[1]

    def end_session(self, timeout: float = 5) -> None:
        """Close stdin, as a manager that goes away does, and wait for the
        agent's stream to end (the process may linger to fence)."""
        self._closing.set()
        self._pinger.join(5)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with self._write_lock:
                self.proc.stdin.close()
        self._reader.join(timeout)
        assert not self._reader.is_alive(), f"{self.host}: the agent's stdout stayed open after stdin closed"

    def close(self, timeout: float = 10) -> int:
        """End the session and wait for the process to exit."""
        self.end_session()
        try:
            return self.proc.wait(timeout)
        finally:
            self._release()

    def kill(self) -> None:
        self._closing.set()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._release()

    def _release(self) -> None:
        self._reader.join(5)
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            if f is not None and not f.closed:
                f.close()


def configure(lab: Any, host: str) -> dict[str, Any]:
    return {
        "op": "configure", "node_id": f"node-{host}", "cluster_id": "e2e", "subnet": SUBNETS[host], "pool": POOL,
        "routes": [{"subnet": s, "via": lab.hosts[h]} for h, s in SUBNETS.items() if h != host],
        "dns": [lab.hosts[lab.managers[0]]], "zone": "pyswarm",
    }


def task(host: str, task_id: str, slot: int, image: str = IMAGE,
         command: list[str] | None = None) -> dict[str, Any]:
    return {
        "task_id": task_id, "service_id": "svc-web", "service_name": "agente2e_web", "stack": "agente2e",
        "slot": slot, "node_id": f"node-{host}",
        "spec": {"image": image, "command": command or ["httpd", "-f", "-p", "80"],
                 "env": {"GREETING": "hi"}, "labels": {"e2e": "agent"}},
        "dns_search": ["agente2e.pyswarm"],
    }


def ps(lab: Any, host: str) -> dict[str, dict[str, str]]:
    """Containers with a task label on ``host``'s engine: task id → {id, state, labels...}."""
    out = lab.docker(host, "ps", "-a", "--filter", f"label={protocol.LABEL_TASK_ID}",
                     "--format", "{{json .}}").stdout
    result = {}
    for line in out.splitlines():
        row = json.loads(line)
        labels = dict(kv.split("=", 1) for kv in row["Labels"].split(",") if "=" in kv)
        result[labels[protocol.LABEL_TASK_ID]] = {"id": row["ID"], "state": row["State"], "name": row["Names"],
                                                   **labels}
    return result


@pytest.fixture(scope="module")
def agent_lab(tmp_path_factory: pytest.TempPathFactory, new_lab_spec: Any) -> Iterator[Any]:
    _skip_unless_root()
    from pyswarm.deploy.lab_core import Lab

    # named and addressed from this session's lab slot (tests/conftest.py), so
    # that runs side by side (two checkouts, CI next to a developer, or
    # `make test`'s xdist workers) never collide, as a subnet from the pid could
    name, subnet = new_lab_spec()
    lab = Lab(tmp_path_factory.mktemp("agentlab"), name=name, subnet=subnet)
    try:
        lab.up(managers=1, workers=2, cluster=False)
        yield lab
    finally:
        lab.down()
        left = lab.leftovers()
        assert not left, f"lab down left: {left}"


@pytest.fixture(scope="module")
def agents(agent_lab: Any) -> Iterator[dict[str, AgentProcess]]:
    started = {h: AgentProcess(agent_lab, h) for h in SUBNETS}
    try:
        yield started
    finally:
        for a in started.values():
            a.kill()


def test_hello_configure_assign_running(agent_lab: Any, agents: dict[str, AgentProcess]) -> None:
    lab = agent_lab
    for host, agent in agents.items():
        hello = agent.wait_for("hello", agent.first_of("hello"))
        assert agent.said()[0]["op"] == "hello", "hello must be the first message"
        assert hello["hostname"] == host
        assert hello["resources"]["nano_cpus"] >= 1_000_000_000 and hello["resources"]["memory_bytes"] > 0
        assert hello["platform"]["os"] == "linux" and hello["engine_version"]
        agent.send({"op": "ping", "seq": 41})
        agent.wait_for("pong 41", lambda: next((m for m in agent.said() if m["op"] == "pong" and m.get("seq") == 41), None))
    w1, w2 = agents["worker1"], agents["worker2"]
    # assign before configure: queued until configure arrives
    w1.send({"op": "assign", "tasks": [task("worker1", "w1a", 1), task("worker1", "w1b", 2),
                                       task("worker1", "w1missing", 3, image="pyswarm-lab/nope:1")]})
    w1.send(configure(lab, "worker1"))
    w2.send(configure(lab, "worker2"))
    w2.send({"op": "assign", "tasks": [task("worker2", "w2a", 4)]})
    for agent, tid, subnet in ((w1, "w1a", "10.240.11."), (w1, "w1b", "10.240.11."), (w2, "w2a", "10.240.12.")):
        running = agent.wait_status(tid, "running")
        assert running["ip"].startswith(subnet), running
        assert running["container_id"]
    states = [m["state"] for m in w1.said() if m.get("task_id") == "w1a"]
    assert states == ["preparing", "starting", "running"], states
    rejected = w1.wait_status("w1missing", "rejected")
    assert "image pyswarm-lab/nope:1 not found on node worker1" in rejected["error"], rejected
    on_host = ps(lab, "worker1")
    assert set(on_host) == {"w1a", "w1b"}, on_host
    c = on_host["w1a"]
    assert c["state"] == "running" and c["name"] == "agente2e_web.1.w1a"
    assert c[protocol.LABEL_SERVICE_NAME] == "agente2e_web" and c[protocol.LABEL_STACK] == "agente2e"
    assert c[protocol.LABEL_SLOT] == "1" and c[protocol.LABEL_NODE_ID] == "node-worker1" and c["e2e"] == "agent"
    resolv = lab.docker("worker1", "exec", c["id"], "cat", "/etc/resolv.conf").stdout
    assert "agente2e.pyswarm" in resolv, resolv
    assert not w1.bad_lines and not w2.bad_lines


def test_containers_reach_each_other_across_hosts(agent_lab: Any, agents: dict[str, AgentProcess]) -> None:
    lab = agent_lab
    src = ps(lab, "worker1")["w1a"]["id"]
    target = agents["worker2"].wait_status("w2a", "running")["ip"]
    deadline = time.monotonic() + 15
    while True:
        r = lab.docker("worker1", "exec", src, "sh", "-c",
                       f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {target} 80", check=False)
        if "HTTP/1." in r.stdout:
            break
        if time.monotonic() > deadline:
            routes = lab.exec("worker1", ["ip", "route"]).stdout
            rules = lab.exec("worker2", ["iptables", "-S", "DOCKER-USER"]).stdout
            pytest.fail(f"worker1 container → {target}:80 on worker2 failed: rc={r.returncode} "
                        f"out={r.stdout!r} err={r.stderr!r}\nworker1 routes:\n{routes}\nworker2 DOCKER-USER:\n{rules}")
        time.sleep(0.5)
    # the peer sees the container's own address: no NAT inside the pool
    routes = lab.exec("worker1", ["ip", "route"]).stdout
    assert f"{SUBNETS['worker2']} via {lab.hosts['worker2']}" in routes, routes


def _finished_at(lab: Any, host: str, cid: str) -> float:
    text = lab.docker(host, "inspect", "-f", "{{.State.FinishedAt}}", cid).stdout.strip()
    # RFC 3339 with nanoseconds: trim to microseconds for fromisoformat
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def test_killed_container_is_reported_within_a_second(agent_lab: Any, agents: dict[str, AgentProcess]) -> None:
    lab, w1 = agent_lab, agents["worker1"]
    cid = ps(lab, "worker1")["w1b"]["id"]
    lab.docker("worker1", "kill", cid)
    killed_at = time.time()
    msg = w1.wait_status("w1b", "failed", timeout=5)
    arrived, _ = w1.status("w1b", "failed") or (0.0, {})
    died = _finished_at(lab, "worker1", cid)
    latency = arrived - died
    print(f"\nagent event latency: container death → status line read by the test: {latency * 1000:.1f} ms "
          f"(after `docker kill` returned: {(arrived - killed_at) * 1000:.1f} ms)")
    assert msg["exit_code"] == 137 and msg["container_id"].startswith(cid), msg
    assert latency < 1.0, f"status arrived {latency:.3f}s after the container died"
    # not restarted by the agent: the orchestrator replaces dead tasks
    time.sleep(0.3)
    assert ps(lab, "worker1")["w1b"]["state"] == "exited"


def test_reassign_without_a_task_removes_its_container(agent_lab: Any, agents: dict[str, AgentProcess]) -> None:
    lab, w1 = agent_lab, agents["worker1"]
    before = ps(lab, "worker1")
    w1.send({"op": "assign", "tasks": [task("worker1", "w1a", 1)]})
    shutdown = w1.wait_status("w1b", "shutdown", timeout=20)
    assert before["w1b"]["id"] and shutdown["container_id"].startswith(before["w1b"]["id"])
    after = ps(lab, "worker1")
    assert set(after) == {"w1a"} and after["w1a"]["id"] == before["w1a"]["id"], after


def test_stdin_close_leaves_containers_and_next_agent_adopts(agent_lab: Any,
                                                             agents: dict[str, AgentProcess]) -> None:
    lab, w1 = agent_lab, agents["worker1"]
    before = ps(lab, "worker1")
    started = time.monotonic()
    w1.end_session()
    assert time.monotonic() - started < 5, "the agent's stream did not end within 5 s of stdin closing"
    assert ps(lab, "worker1") == before, "closing stdin changed the containers"
    assert before["w1a"]["state"] == "running"
    # a new session (a new leader): same set → adopted, nothing created;
    # the old process lingered to fence (worker/fence.py) and now leaves
    again = AgentProcess(lab, "worker1")
    try:
        # the new session's first acknowledged pong after its configure renews the lease
        again.send(configure(lab, "worker1"))
        assert w1.close() == 0, "the lingering agent did not leave once a new one took over"
        again.send({"op": "assign", "tasks": [task("worker1", "w1a", 1)]})
        running = again.wait_status("w1a", "running")
        assert running["container_id"].startswith(before["w1a"]["id"]), running
        states = [m["state"] for m in again.said() if m.get("task_id") == "w1a"]
        assert states == ["running"], states
        assert ps(lab, "worker1") == before
        # an empty set removes it
        again.send({"op": "assign", "tasks": []})
        again.wait_status("w1a", "shutdown", timeout=20)
        assert ps(lab, "worker1") == {}
    finally:
        again.kill()  # no successor: close() would linger the lease out and fence
