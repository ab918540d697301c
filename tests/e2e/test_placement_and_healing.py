"""Issue 5 on real parts (the session lab: 1 manager + 3 workers): placement
by labels, drain, restart policy limits, healthchecks, and a worker host
whose link is cut — marked down, its tasks replaced, no duplicates once it
returns. Every test removes its stack and undoes its node changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from pyswarm import protocol
from support import brief, cli, deployed_stacks, live, running, tasks, wait_for

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
# httpd as PID 1 ignores SIGTERM (a 10 s stop); this shell exits on it at once
SERVE = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 80 & wait"]'


def web_service(replicas: int, *deploy_lines: str) -> str:
    """The ``web`` service these tests deploy: httpd, ``replicas`` of it,
    and any more lines of its ``deploy:`` section."""
    more = "".join(f"      {line}\n" for line in deploy_lines)
    return f"""  web:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: {replicas}
{more}"""


def containers(lab: Any, host: str, service: str, *, stopped: bool = False) -> list[tuple[str, str]]:
    """(container id, task id) of the service's live containers (``stopped``:
    and the others) on ``host``'s own engine."""
    out = lab.docker(host, "ps", *(["-a"] if stopped else []), "--filter", f"label=pyswarm.service.name={service}",
                     "--format", '{{.ID}} {{.Label "pyswarm.task.id"}}', timeout=30).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def node(lab: Any, ref: str) -> dict[str, Any]:
    return dict(json.loads(cli(lab, "node", "inspect", ref))[0])


@pytest.fixture
def deploy(lab: Any, tmp_path: Path) -> Iterator[Any]:
    with deployed_stacks(lab, tmp_path) as go:
        yield go


def test_constraint_waits_with_its_reason_until_a_node_gets_the_label(lab: Any, deploy: Any) -> None:
    deploy("place", f"""
services:
  db:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      placement:
        constraints: ["node.labels.disk==ssd"]
""")
    want = f"no suitable node (constraint node.labels.disk==ssd not met on {len(lab.hosts)} nodes)"
    wait_for(lambda: [t["message"] for t in live(tasks(lab, "place_db"))] == [want], 20,
             f"the task pending with {want!r}", observe=lambda: brief(tasks(lab, "place_db")))
    try:
        cli(lab, "node", "update", "--label-add", "disk=ssd", "worker2")
        wait_for(lambda: [t["node"] for t in running(lab, "place_db")] == ["worker2"], 30,
                 "place_db running on worker2 once it has the label", observe=lambda: brief(tasks(lab, "place_db")))
        assert len(containers(lab, "worker2", "place_db")) == 1
    finally:
        cli(lab, "node", "update", "--label-rm", "disk", "worker2")
    assert node(lab, "worker2")["labels"] == {}


def test_drain_empties_a_node_and_pause_keeps_its_tasks(lab: Any, deploy: Any) -> None:
    deploy("drain", "services:\n" + web_service(4, "update_config: {order: start-first}"))
    wait_for(lambda: len(running(lab, "drain_web")) == 4, 60, "4 running replicas",
             observe=lambda: brief(tasks(lab, "drain_web")))
    try:
        cli(lab, "node", "update", "--availability", "pause", "worker1")
        before = {t["id"] for t in running(lab, "drain_web") if t["node"] == "worker1"}
        cli(lab, "service", "scale", "-d", "drain_web=6")
        wait_for(lambda: len(running(lab, "drain_web")) == 6, 60, "6 running replicas")
        now_on_1 = {t["id"] for t in running(lab, "drain_web") if t["node"] == "worker1"}
        assert now_on_1 == before, f"pause: worker1 kept {before}, has {now_on_1}"

        cli(lab, "node", "update", "--availability", "drain", "worker1")
        wait_for(lambda: not containers(lab, "worker1", "drain_web") and len(running(lab, "drain_web")) == 6,
                 60, "worker1 empty and 6 replicas running elsewhere",
                 observe=lambda: (brief(live(tasks(lab, "drain_web"))), containers(lab, "worker1", "drain_web")))
        assert all(t["node"] != "worker1" for t in live(tasks(lab, "drain_web")))
    finally:
        cli(lab, "node", "update", "--availability", "active", "worker1")


def test_restart_policy_attempts_and_delay(lab: Any, deploy: Any) -> None:
    deploy("rp", f"""
services:
  job:
    image: {IMAGE}
    command: ["sh", "-c", "exit 3"]
    deploy:
      restart_policy: {{condition: on-failure, max_attempts: 2, delay: 1s}}
""")

    def three_failed() -> list[dict[str, Any]]:
        rows = tasks(lab, "rp_job")
        failed = [t for t in rows if t["current_state"] == "failed"]
        return failed if len(failed) == 3 and not live(rows) else []

    failed = wait_for(three_failed, 60, "the first run and 2 restarts, all failed, then nothing",
                      observe=lambda: brief(tasks(lab, "rp_job")))
    assert {(t["exit_code"], t["error"]) for t in failed} == {(3, "task: non-zero exit (3)")}, brief(failed)
    ends = sorted(t["since"] for t in failed)
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    assert all(g >= 1.0 for g in gaps), f"restarts came sooner than the 1s delay: {gaps}"
    table = cli(lab, "service", "ps", "rp_job")
    assert "task: non-zero exit (3)" in table, table
    time.sleep(1.5)  # a fourth attempt would be due by now (1 s delay)
    assert len(tasks(lab, "rp_job")) == 3, brief(tasks(lab, "rp_job"))


def _dns(lab: Any, name: str) -> list[str]:
    q = dns.message.make_query(name, dns.rdatatype.A)
    answer = dns.query.udp(q, lab.hosts[lab.managers[0]], timeout=3)
    return sorted(item.address for rrset in answer.answer for item in rrset)


def test_healthcheck_gates_running_and_dns_and_unhealthy_is_replaced(lab: Any, deploy: Any) -> None:
    deploy("hc", f"""
services:
  api:
    image: {IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 2; touch /tmp/ok; httpd -f -p 80 & wait"]
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/ok"]
      interval: 300ms
      retries: 1
      start_period: 10s
""")
    starting = wait_for(lambda: [t for t in live(tasks(lab, "hc_api")) if t["current_state"] == "starting"], 30,
                        "the task starting (not yet healthy)", interval=0.1, observe=lambda: brief(tasks(lab, "hc_api")))
    assert _dns(lab, "api.hc") == [], "an unhealthy replica is in DNS"
    first = wait_for(lambda: running(lab, "hc_api"), 30, "the task running once healthy",
                     observe=lambda: brief(tasks(lab, "hc_api")))[0]
    assert first["id"] == starting[0]["id"]
    assert _dns(lab, "api.hc") == [first["ip"]]

    host = first["node"]
    lab.docker(host, "exec", first["container_id"], "rm", "/tmp/ok")
    def replaced() -> bool:
        rows = tasks(lab, "hc_api")
        old = next(t for t in rows if t["id"] == first["id"])
        new = running(lab, "hc_api")
        return old["current_state"] == "failed" and len(new) == 1 and new[0]["id"] != first["id"]
    wait_for(replaced, 30, "the unhealthy task failed and a healthy replacement running",
             observe=lambda: brief(tasks(lab, "hc_api")))
    old = next(t for t in tasks(lab, "hc_api") if t["id"] == first["id"])
    assert old["error"].startswith("container unhealthy"), old
    assert _dns(lab, "api.hc") == [running(lab, "hc_api")[0]["ip"]]


def _link(lab: Any, host: str, state: str) -> None:
    subprocess.run(["ip", "link", "set", lab.host(host).veth, state], check=True, timeout=10)


def _engine_times(lab: Any, host: str, ids: list[str]) -> dict[str, tuple[bool, float, float]]:
    """container id -> (running, started, finished) from ``host``'s engine
    (wall clock; finished is 0 while it runs)."""
    out = lab.docker(host, "inspect", "--format",
                     "{{.Id}} {{.State.Running}} {{.State.StartedAt}} {{.State.FinishedAt}}", *ids, timeout=30).stdout
    found = {}
    for ref, line in zip(ids, out.splitlines(), strict=True):
        _, up, started, finished = line.split()
        found[ref] = (up == "true", _rfc3339(started), _rfc3339(finished))
    return found


def _rfc3339(text: str) -> float:
    if text.startswith("0001-"):
        return 0.0
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{frac or 0}")


def test_a_link_back_before_the_lease_ran_out_but_no_session_keeps_the_tasks_in_place(lab: Any, deploy: Any) -> None:
    """The soak's last doubles (bench/RESULTS.md): a worker's link comes
    back before its lease runs out, so its lingering agent reaches the
    managers' hosts and keeps its containers (fence.linger), but the
    leader's new session does not come up (here: the node's sshd listener
    stopped, so the kernel still accepts the TCP connect and the SSH
    handshake never comes; in the soak: load ~80). The leader must not
    replace the tasks meanwhile: its probe of the node's sshd is accepted,
    which restarts the node's grace (Dispatcher.restart_grace). Once sshd
    answers again the node is ready with the same containers, one a slot."""
    deploy("hr", "services:\n" + web_service(6))
    wait_for(lambda: len(running(lab, "hr_web")) == 6, 90, "6 web replicas running",
             observe=lambda: brief(tasks(lab, "hr_web")))
    victim = "worker2"
    held = {t["id"] for t in running(lab, "hr_web") if t["node"] == victim}
    assert held, "the spread put nothing on worker2"
    before = {task: cid for cid, task in containers(lab, victim, "hr_web")}
    sshd = lab.host(victim).pids["sshd"]
    os.kill(sshd, signal.SIGSTOP)  # sessions already open go on (their own sshd processes)
    try:
        _link(lab, victim, "down")
        try:
            wait_for(lambda: node(lab, victim)["status"] == "down", 15, f"{victim} marked down")
        finally:
            _link(lab, victim, "up")
        down_at = time.time()
        # well past LOST_GRACE from the down mark, and past the agent's lease
        deadline = down_at + protocol.LOST_GRACE + protocol.AGENT_LEASE
        while time.time() < deadline:
            rows = {t["id"]: t for t in tasks(lab, "hr_web")}
            moved = [t for t in rows.values() if t["id"] in held and t["current_state"] != "running"]
            assert not moved, f"{victim}'s tasks replaced while its containers run: {brief(moved)}"
            assert node(lab, victim)["status"] == "down", "the session came up with sshd stopped?"
            time.sleep(1)
        now = {task: cid for cid, task in containers(lab, victim, "hr_web")}
        assert now == before, f"{victim}'s containers changed while it reached the managers: {before} -> {now}"
    finally:
        os.kill(sshd, signal.SIGCONT)
    wait_for(lambda: node(lab, victim)["status"] == "ready", 60, f"{victim} ready again once sshd answers")
    wait_for(lambda: len(running(lab, "hr_web")) == 6, 30, "6 web replicas running",
             observe=lambda: brief(live(tasks(lab, "hr_web"))))
    assert {t["id"] for t in running(lab, "hr_web") if t["node"] == victim} == held, "its tasks moved"
    per_slot: Counter[str] = Counter()
    for h in lab.hosts:
        per_slot.update(task for _, task in containers(lab, h, "hr_web"))
    assert sum(per_slot.values()) == 6 and max(per_slot.values()) == 1, per_slot


def test_worker_host_cut_off_is_fenced_replaced_and_returns_without_duplicates(lab: Any, deploy: Any) -> None:
    """A worker cut off from the manager stops its own task containers
    (its lease, protocol.AGENT_LEASE) before the leader replaces them
    (protocol.LOST_GRACE after it went down): on the engines' own clocks,
    every replacement starts after the container it replaces stopped."""
    deploy("hf", "services:\n" + web_service(6) + f"""  agent:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      mode: global
""")
    n = len(lab.hosts)
    wait_for(lambda: len(running(lab, "hf_web")) == 6 and len(running(lab, "hf_agent")) == n, 90,
             "6 web replicas and one agent per node running",
             observe=lambda: brief(tasks(lab, "hf_web") + tasks(lab, "hf_agent")))
    victim = "worker3"
    lost = {t["id"]: t["slot"] for t in running(lab, "hf_web") if t["node"] == victim}
    assert lost, "the spread put nothing on worker3"
    old = {task: cid for cid, task in containers(lab, victim, "hf_web")}
    assert set(old) == set(lost), (old, lost)

    cut_at = time.time()
    _link(lab, victim, "down")
    try:
        wait_for(lambda: node(lab, victim)["status"] == "down", 15, f"{victim} marked down")
        down_after = node(lab, victim)["updated_at"] - cut_at
        assert down_after <= 3.0, f"{victim} marked down {down_after:.2f}s after its link was cut"

        def healed() -> list[dict[str, Any]]:
            web = running(lab, "hf_web")
            ok = len(web) == 6 and all(t["node"] != victim for t in web)
            return web if ok and len(running(lab, "hf_agent")) == n - 1 else []
        web = wait_for(healed, 60, "6 web replicas running without worker3, agents on the others",
                       observe=lambda: brief(live(tasks(lab, "hf_web"))))
        healed_after = max(t["since"] for t in web) - cut_at
        rows = tasks(lab, "hf_web")
        assert {t["current_state"] for t in rows if t["id"] in lost} == {"orphaned"}, brief(rows)
        # the cut-off engine, read in place: its containers were stopped by the node itself
        fenced = _engine_times(lab, victim, list(old.values()))
        assert not any(up for up, _, _ in fenced.values()), f"{victim} still runs {fenced}"
        margins = []
        for t in web:
            if t["slot"] not in lost.values():
                continue
            stale = next(task for task, slot in lost.items() if slot == t["slot"])
            new_cid = next(cid for cid, task in containers(lab, t["node"], "hf_web") if task == t["id"])
            _, started, _ = _engine_times(lab, t["node"], [new_cid])[new_cid]
            stopped = fenced[old[stale]][2]
            margins.append(started - stopped)
        assert len(margins) == len(lost) and min(margins) > 0, \
            f"a replacement started before the container it replaces stopped: margins {margins}"
        print(f"\n{victim} cut off: marked down after {down_after:.2f}s, its {len(lost)} replicas stopped by "
              f"itself {max(f for _, _, f in fenced.values()) - cut_at:.2f}s after the cut and running elsewhere "
              f"after {healed_after:.2f}s (each {min(margins):.2f}s or more after its old container stopped)")
    finally:
        _link(lab, victim, "up")

    back_at = time.time()
    wait_for(lambda: node(lab, victim)["status"] == "ready", 60, f"{victim} ready again")

    def converged() -> bool:
        on_victim = {task for _, task in containers(lab, victim, "hf_web", stopped=True)}
        return not on_victim & set(lost) and len(running(lab, "hf_agent")) == n
    wait_for(converged, 30, f"{victim}'s stale web containers removed and its agent task back",
             observe=lambda: (containers(lab, victim, "hf_web"), brief(live(tasks(lab, "hf_agent")))))
    print(f"{victim} back: converged {time.time() - back_at:.2f}s after the link came up")

    # never two containers for one slot, and exactly the desired count, on the engines themselves
    per_task: Counter[str] = Counter()
    for h in lab.hosts:
        per_task.update(task for _, task in containers(lab, h, "hf_web"))
    assert sum(per_task.values()) == 6 and max(per_task.values()) == 1, per_task
    slots = Counter(t["slot"] for t in running(lab, "hf_web"))
    assert sorted(slots) == [1, 2, 3, 4, 5, 6] and set(slots.values()) == {1}, slots
