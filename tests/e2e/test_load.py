"""Issue 11 on the session lab (1 manager + 3 workers): a typo'd scale to
tens of thousands of replicas and back does not wedge the cluster, and big
requests go through.

The big service's tasks stay pending (``max_replicas_per_node: 1`` on the
3 workers), as in the issue's reproduction, so the engines are not asked to
start them: what is under test is the managers' side. The size defaults to
20,000 (the issue's 3-manager reproduction; 100,000 on one manager is
``bench/scale_store.py``'s and ``PYSWARM_E2E_SCALE=100000``'s): on the
shared machine 100,000 took more than 5 minutes to create at load 20-70
(bench/RESULTS.md), far over this test's share of CI, and 57 s on a quiet
machine (over the 40 s that would make it the default). The manager's loop
lag and longest garbage-collection pause over the whole scale are printed
with the DNS figures; they are not asserted until measured on a quiet
machine with manager/heap.py (bench/RESULTS.md, issue 11).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import brief, cli, deployed_stacks, running, tasks, wait_for

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
SERVE = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 80 & wait"]'
SCALE = int(os.environ.get("PYSWARM_E2E_SCALE", "20000"))


@pytest.fixture
def deploy(lab: Any, tmp_path: Path) -> Iterator[Any]:
    with deployed_stacks(lab, tmp_path) as go:
        yield go


def metrics(lab: Any, seen: dict[str, float] | None = None) -> dict[str, Any]:
    """The manager's figures; with ``seen``, the largest of each lag and
    pause figure so far is kept there (the figures cover the last 60 s)."""
    out = dict(json.loads(cli(lab, "manager", "metrics")))
    if seen is not None:
        if float(out.get("loop_lag_max_60s_ms", 0.0)) > seen.get("loop_lag_max_60s_ms", -1.0):
            for key in ("loop_lag_max_60s_cpu_ms", "loop_lag_max_60s_runqueue_ms"):  # the worst stall's causes
                seen[key] = float(out.get(key) or 0.0)
        for key in ("loop_lag_max_60s_ms", "loop_stall_cpu_max_60s_ms", "gc_pause_max_60s_ms",
                    "gc_pause_cpu_max_60s_ms"):
            seen[key] = max(seen.get(key, 0.0), float(out.get(key, 0.0)))
    return out


PROBE = r"""
import sys, time
import dns.message, dns.query, dns.rdatatype
server, name = sys.argv[1], sys.argv[2]
while True:
    q = dns.message.make_query(name, dns.rdatatype.A)
    started = time.perf_counter()
    try:
        said = "" if dns.query.udp(q, server, timeout=2).answer else f"no answer for {name}"
    except Exception as exc:  # a timeout is what the test looks for
        said = repr(exc)
    print(f"{time.perf_counter() - started:.6f} {said}", flush=True)
    time.sleep(0.01)
"""


class DnsProbe(threading.Thread):
    """Asks the manager's DNS for a name over and over, timing each answer,
    from a process of its own at nice -10, as a container's resolver would
    ask: timed from inside this test's process, the probe measured the
    test's own CLI calls and threads as much as the DNS (CI: two answers
    over 13 ms out of 194 with the DNS process idle)."""

    def __init__(self, server: str, name: str) -> None:
        super().__init__(daemon=True)
        self.server, self.name = server, name
        self.times: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        proc = subprocess.Popen([sys.executable, "-c", PROBE, self.server, self.name], stdout=subprocess.PIPE,
                                text=True, preexec_fn=lambda: os.nice(-10))
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                took, _, said = line.rstrip("\n").partition(" ")
                self.times.append(float(took))
                if said:
                    self.failures.append(said)
                if self.stop.is_set():
                    break
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()

    def p99(self) -> float:
        times = sorted(self.times)
        return times[min(len(times) - 1, int(len(times) * 0.99))] if times else float("inf")


def replicas(lab: Any, service: str) -> str:
    """``service ls``'s REPLICAS (running/desired) of ``service``."""
    rows = json.loads(cli(lab, "service", "ls", "--format", "json"))
    return next((str(r["replicas"]) for r in rows if r["name"] == service), "absent")


def node_stamps(lab: Any) -> dict[str, tuple[str, float, str]]:
    """Each node's (status, updated_at, message): a node marked down and up
    again in between changes its updated_at even if it reads ready now."""
    rows = json.loads(cli(lab, "node", "ls", "--format", "json"))
    out = {}
    for row in rows:
        data = json.loads(cli(lab, "node", "inspect", row["id"]))[0]
        out[row["hostname"]] = (data["status"], data["updated_at"], data["status_message"])
    return out


# serial: it bounds DNS p99, the 10 s back to 3/3 and no node marked down, all
# of which the other xdist worker's labs on the same cores would stretch (the
# Makefile's serial phase runs after the parallel one, alone)
@pytest.mark.serial
def test_scale_to_tens_of_thousands_and_back_leaves_the_cluster_as_it_was(lab: Any, deploy: Any) -> None:
    deploy("load", f"""
services:
  keep:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: 2
  big:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: 3
      placement:
        constraints: ["node.role==worker"]
        max_replicas_per_node: 1
""")
    wait_for(lambda: len(running(lab, "load_keep")) == 2 and len(running(lab, "load_big")) == 3, 60,
             "keep 2/2 and big 3/3 running", observe=lambda: brief(tasks(lab, "load_keep") + tasks(lab, "load_big")))
    keep_before = sorted((t["id"], t["container_id"]) for t in running(lab, "load_keep"))
    big_before = sorted((t["id"], t["container_id"]) for t in running(lab, "load_big"))
    nodes_before = node_stamps(lab)
    # the peer figure: the same probe with the cluster at rest, same machine, same minute
    rest = DnsProbe(lab.hosts[lab.managers[0]], "keep.load")
    rest.start()
    time.sleep(5)
    rest.stop.set()
    rest.join(5)
    probe = DnsProbe(lab.hosts[lab.managers[0]], "keep.load")
    worst: dict[str, float] = {}  # the manager's loop lag and gc pauses, the largest seen
    metrics(lab, worst)  # at rest: what the 60 s window held before the scale
    rest_lag = worst.get("loop_lag_max_60s_ms", 0.0)
    worst.clear()
    probe.start()
    try:
        started = time.monotonic()
        cli(lab, "service", "scale", "--detach", f"load_big={SCALE}")
        # polled every second: each CLI call is a Python start, CPU the manager needs
        wait_for(lambda: metrics(lab, worst)["tasks"] >= SCALE + 2, 600, f"the store holding {SCALE} tasks of load_big",
                 interval=1.0, observe=lambda: metrics(lab))
        up = time.monotonic() - started
        down_at = time.monotonic()
        cli(lab, "service", "scale", "--detach", "load_big=3")
        # the "3 replicas are running again within 10 s" of the scale back, as a
        # person reads it: `service ls` saying 3/3 (service ps would list the 99,997
        # tasks still desired running until the orchestrator has shut them all down)
        wait_for(lambda: replicas(lab, "load_big") == "3/3", max(1.0, down_at + 10 - time.monotonic()),
                 "load_big 3/3 in service ls within 10 s of the scale back to 3",
                 observe=lambda: replicas(lab, "load_big"))
        back = time.monotonic() - down_at
        wait_for(lambda: metrics(lab, worst)["tasks"] <= 5 + 5 * 5, 120,
                 "the store back to what 5 replicas (and their history) need", interval=1.0,
                 observe=lambda: metrics(lab))
        down = time.monotonic() - down_at
    finally:
        probe.stop.set()
        probe.join(5)
        # said even when a wait above failed: the figures are what a failure is read with
        print(f"DNS p99 {probe.p99() * 1000:.1f} ms over {len(probe.times)} queries during the scale to {SCALE} "
              f"(at rest: {rest.p99() * 1000:.1f} ms), load average {os.getloadavg()[0]:.1f}")
    metrics(lab, worst)
    lag = f"manager loop lag max {worst['loop_lag_max_60s_ms']} ms during the scale (of it the loop's own CPU " \
          f"{worst.get('loop_lag_max_60s_cpu_ms')} ms, waiting for a core {worst.get('loop_lag_max_60s_runqueue_ms')} " \
          f"ms; the most own CPU in any stall {worst.get('loop_stall_cpu_max_60s_ms')} ms; at rest before: " \
          f"{rest_lag} ms), longest gc pause {worst.get('gc_pause_max_60s_ms')} ms " \
          f"({worst.get('gc_pause_cpu_max_60s_ms')} ms of CPU)"
    print(f"scale to {SCALE}: {up:.1f}s, 3/3 running {back:.1f}s after the scale back, store back to 3: "
          f"{down:.1f}s, DNS p99 {probe.p99() * 1000:.1f} ms over {len(probe.times)} queries (at rest: "
          f"{rest.p99() * 1000:.1f} ms over {len(rest.times)}), {lag}, load average {os.getloadavg()[0]:.1f}")
    assert node_stamps(lab) == nodes_before, "a node was marked down (or came back) meanwhile"
    assert sorted((t["id"], t["container_id"]) for t in running(lab, "load_keep")) == keep_before, \
        "another service's replicas were replaced"
    assert sorted((t["id"], t["container_id"]) for t in running(lab, "load_big")) == big_before
    assert not probe.failures, f"DNS failed meanwhile: {probe.failures[:5]}"
    # DNS answers from a process of its own (dns/process.py), so the
    # manager's planning and applies no longer hold it up. Where the machine
    # is quiet (under 2 ms at rest, same probe, same minute) the bound is
    # 10 ms; on a loaded shared machine the probe's own scheduling sets the
    # tail, and what is asserted is that the scale adds little to it (the old
    # in-process DNS: 200-1,240 ms against 15 ms at rest).
    figures = f"DNS p99 {probe.p99() * 1000:.1f} ms over {len(probe.times)} queries " \
              f"(at rest {rest.p99() * 1000:.1f} ms, load average {os.getloadavg()[0]:.1f})"
    # Quiet machine, nice -10 DNS process: 4.2 ms at 20,000 and 5.7 ms at
    # 100,000 against 1.3 ms at rest (bench/RESULTS.md); the bound leaves
    # room for a CI host's scheduling while failing the old wiring by 20x.
    if rest.p99() <= 0.002:
        assert probe.p99() <= 0.010, figures
    else:
        assert probe.p99() <= max(0.1, 5 * rest.p99()), figures


def test_a_70_kb_config_and_a_big_stack_go_through_the_api(lab: Any, deploy: Any, tmp_path: Path) -> None:
    """The issue's 64 KiB failures: a 70 kB config (the limit is 500 KiB) and
    a stack file of 1,000 services (a request of about 600 KiB; the issue's
    "a 1,000-service stack deploys", on the lab's real manager)."""
    data = tmp_path / "big.conf"
    data.write_text("x" * 70_000)
    out = cli(lab, "config", "create", "load_big_conf", str(data))
    try:
        assert out.strip(), "config create printed nothing"
        services = "".join(f"""
  s{i}:
    image: {IMAGE}
    command: {SERVE}
    labels: {{note: "{'y' * 500}"}}
    deploy:
      replicas: 0
""" for i in range(1000))
        deploy("many", "services:" + services)
        rows = json.loads(cli(lab, "service", "ls", "--format", "json"))
        assert sum(1 for r in rows if r["stack"] == "many") == 1000
    finally:
        cli(lab, "config", "rm", "load_big_conf")


def test_a_full_raft_directory_stops_acknowledging_and_recovers(lab_factory: Any, tmp_path: Path) -> None:
    """A small tmpfs over the manager's Raft directory, inside its lab host's
    mount namespace, filled up: the manager steps down and refuses writes
    with the reason (log, node ls) instead of dying of SIGBUS; nothing
    acknowledged is lost, and it takes writes again once space is freed."""
    small = lab_factory(managers=1, workers=1, cluster=True)
    m = small.managers[0]
    raft = "/var/lib/pyswarm/raft"

    def sh(script: str, check: bool = True) -> Any:
        return small.exec(m, ["sh", "-c", script], check=check, timeout=60)

    def deploy(stack: str) -> Any:
        path = tmp_path / f"{stack}.yml"
        path.write_text(f"services:\n  web:\n    image: {IMAGE}\n    deploy:\n      replicas: 0\n")
        return small.pyswarm(m, "stack", "deploy", "--detach", "-c", str(path), stack, check=False, timeout=60)

    assert deploy("before").returncode == 0
    sh("kill -TERM $(cat /run/pyswarm/manager.pid)")
    wait_for(lambda: sh("test -e /run/pyswarm/manager.pid", check=False).returncode == 1, 20, "the manager to stop")
    sh(f"mkdir -p {raft}.copy && cp -a {raft}/. {raft}.copy/ && mount -t tmpfs -o size=64m tmpfs {raft} "
       f"&& cp -a {raft}.copy/. {raft}/")
    small.pyswarm(m, "manager", "start", timeout=90)
    wait_for(lambda: deploy("ready").returncode == 0, 30, "the manager taking writes on its tmpfs")
    sh(f"dd if=/dev/zero of={raft}/filler bs=1M count=40 2>/dev/null")
    wanted = f"no space left on {raft}"
    wait_for(lambda: wanted in deploy("refused").stderr, 10, f"a write refused with {wanted!r}",
             observe=lambda: deploy("refused").stderr)
    rows = json.loads(small.pyswarm(m, "node", "ls", "--format", "json", timeout=30).stdout)
    assert any(wanted in r["message"] for r in rows if r["self"]), rows
    assert wanted in sh("cat /var/lib/pyswarm/manager.log").stdout
    sh(f"rm {raft}/filler")
    wait_for(lambda: deploy("after").returncode == 0, 30, "writes taken again once space was freed")
    stacks = {r["name"] for r in json.loads(small.pyswarm(m, "stack", "ls", "--format", "json", timeout=30).stdout)}
    assert {"before", "ready", "after"} <= stacks and "refused" not in stacks, stacks
