"""Issue 5 on real parts, on a lab of its own (1 manager, 2 workers): a
worker host that dies whole (every process killed: sshd, the agent's
session, dockerd, containerd, the containers) and comes back; a global
service following a node that leaves and joins again; and the leader
reconciling what runs with the store when it restarts (a stray container
removed, the known ones adopted, never two for one slot).

These change the cluster's membership and restart its only manager, so
they do not run on the shared session lab. They run in order on one lab;
each leaves it with every node ready and no stack.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import brief, cli, deployed_stacks, live, running, tasks, wait_for

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
# httpd as PID 1 ignores SIGTERM (a 10 s stop); this shell exits on it at once
SERVE = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 80 & wait"]'
NAP = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


@pytest.fixture(scope="module")
def small(lab_factory: Any) -> Any:
    return lab_factory(managers=1, workers=2, cluster=True)


def node(lab: Any, ref: str) -> dict[str, Any]:
    return dict(json.loads(cli(lab, "node", "inspect", ref))[0])


def containers(lab: Any, host: str, service: str, all_states: bool = False) -> list[tuple[str, str, str]]:
    """(container id, task id, state) of the service's containers on ``host``'s own engine."""
    out = lab.docker(host, "ps", *(["-a"] if all_states else []), "--filter", f"label=pyswarm.service.name={service}",
                     "--format", '{{.ID}} {{.Label "pyswarm.task.id"}} {{.State}}', timeout=30).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def engines(lab: Any, service: str, all_states: bool = False) -> dict[str, list[tuple[str, str, str]]]:
    return {h: containers(lab, h, service, all_states) for h in lab.hosts}


@pytest.fixture
def deploy(small: Any, tmp_path: Path) -> Iterator[Any]:
    with deployed_stacks(small, tmp_path) as go:
        yield go


WEB_AND_GLOBAL = f"""
services:
  web:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: 4
  agent:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      mode: global
"""


def test_dead_worker_host_is_replaced_and_its_return_leaves_no_stale_container(small: Any, deploy: Any) -> None:
    deploy("hd", WEB_AND_GLOBAL)
    n = len(small.hosts)
    wait_for(lambda: len(running(small, "hd_web")) == 4 and len(running(small, "hd_agent")) == n, 90,
             "4 web replicas and one agent per node running",
             observe=lambda: brief(tasks(small, "hd_web") + tasks(small, "hd_agent")))
    victim = "worker2"
    lost = {t["id"] for t in running(small, "hd_web") if t["node"] == victim}
    lost_agent = {t["id"] for t in running(small, "hd_agent") if t["node"] == victim}
    assert lost, "the spread put no web replica on worker2"

    killed_at = time.time()
    small.kill_host(victim)
    wait_for(lambda: node(small, victim)["status"] == "down", 15, f"{victim} marked down",
             observe=lambda: node(small, victim))
    seen = node(small, victim)
    down_after = seen["updated_at"] - killed_at
    assert down_after <= 3.0, f"{victim} marked down {down_after:.2f}s after its host died ({seen})"

    def healed() -> list[dict[str, Any]]:
        web = running(small, "hd_web")
        ok = len(web) == 4 and all(t["node"] != victim for t in web)
        return web if ok and len(running(small, "hd_agent")) == n - 1 else []
    web = wait_for(healed, 60, "4 web replicas running without worker2, agents on the others",
                   observe=lambda: brief(live(tasks(small, "hd_web"))))
    healed_after = max(t["since"] for t in web) - killed_at
    rows = tasks(small, "hd_web") + tasks(small, "hd_agent")
    assert {t["current_state"] for t in rows if t["id"] in lost | lost_agent} == {"orphaned"}, brief(rows)
    print(f"\n{victim} host killed: marked down after {down_after:.2f}s ({seen['status_message']}), "
          f"its {len(lost)} web replicas running elsewhere after {healed_after:.2f}s")

    # the host reboots: sshd and dockerd come back, with the dead containers in the engine's store
    small.start_daemons(victim)
    back_at = time.time()
    stale = containers(small, victim, "hd_web", all_states=True)
    print(f"{victim} daemons back; its engine lists the dead containers as: {sorted(s for _, _, s in stale)}")
    assert not [c for c in stale if c[2] == "running"], f"dockerd restarted a dead container: {stale}"

    peak = 0

    def converged() -> bool:
        nonlocal peak
        on_engines = engines(small, "hd_web")
        peak = max(peak, sum(map(len, on_engines.values())))
        leftovers = [c for c in containers(small, victim, "hd_web", all_states=True) if c[1] in lost]
        leftovers += [c for c in containers(small, victim, "hd_agent", all_states=True) if c[1] in lost_agent]
        return (not leftovers and node(small, victim)["status"] == "ready"
                and len(running(small, "hd_agent")) == n)
    wait_for(converged, 60, f"{victim} ready, its stale containers removed and a new agent task there",
             observe=lambda: (node(small, victim)["status"], engines(small, "hd_web", True),
                              brief(live(tasks(small, "hd_agent")))))
    print(f"{victim} back: ready and stale containers gone {time.time() - back_at:.2f}s after its daemons answered")
    assert peak <= 4, f"{peak} web containers running at once during the return (desired 4)"

    per_task: Counter[str] = Counter()
    for listed in engines(small, "hd_web", all_states=True).values():
        per_task.update(task for _, task, _ in listed)
    assert sum(per_task.values()) == 4 and max(per_task.values()) == 1, per_task
    agents = engines(small, "hd_agent", all_states=True)
    assert {h: len(c) for h, c in agents.items()} == {h: 1 for h in small.hosts}, agents


def test_global_service_follows_a_node_leaving_and_joining(small: Any, deploy: Any) -> None:
    deploy("gl", f"""
services:
  agent:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      mode: global
""")
    n = len(small.hosts)
    wait_for(lambda: len(running(small, "gl_agent")) == n, 60, "one agent per node",
             observe=lambda: brief(tasks(small, "gl_agent")))
    host = "worker1"
    old_id = node(small, host)["id"]
    old_task = next(t["id"] for t in running(small, "gl_agent") if t["node"] == host)

    small.pyswarm(host, "leave", timeout=30)
    # as in Swarm, what the node ran for the cluster goes with it
    assert containers(small, host, "gl_agent", all_states=True) == [], "leave left the node's task containers behind"
    cli(small, "node", "rm", "--force", old_id)
    wait_for(lambda: host not in {r["hostname"] for r in json.loads(cli(small, "node", "ls", "--format", "json"))},
             10, f"{host} gone from node ls")
    def let_go() -> list[dict[str, Any]]:
        # no longer desired running, or already reaped: its node is gone, so
        # is its slot (the task reaper, issue 11)
        rows = tasks(small, "gl_agent")
        if old_task not in {t["id"] for t in rows}:
            return [{"current_state": "removed by the task reaper"}]
        return [t for t in rows if t["id"] == old_task and t["desired_state"] != "running"]
    rows = wait_for(let_go, 15, f"{host}'s global task no longer desired running",
                    observe=lambda: brief(tasks(small, "gl_agent")))
    assert len(running(small, "gl_agent")) == n - 1, brief(tasks(small, "gl_agent"))
    print(f"\n{host} left and removed: its global task is {rows[0]['current_state']}")

    token = cli(small, "join-token", "worker", "-q").strip()
    small.pyswarm(host, "join", "--token", token, small.hosts[small.managers[0]], timeout=120)
    joined_at = time.time()

    def placed() -> list[dict[str, Any]]:
        mine = [t for t in running(small, "gl_agent") if t["node"] == host]
        return mine if len(running(small, "gl_agent")) == n and mine else []
    mine = wait_for(placed, 60, f"a global task running on the rejoined {host}",
                    observe=lambda: brief(tasks(small, "gl_agent")))
    print(f"{host} joined again: its global task running {time.time() - joined_at:.2f}s after `pyswarm join` returned")
    assert node(small, host)["id"] != old_id
    # one container on the rejoined host: the new task's
    wait_for(lambda: [c[1] for c in containers(small, host, "gl_agent", all_states=True)] == [mine[0]["id"]], 30,
             f"only the new task's container on {host}", observe=lambda: containers(small, host, "gl_agent", True))


def test_restarted_leader_removes_a_stray_container_and_adopts_the_rest(small: Any, deploy: Any) -> None:
    deploy("rc", f"""
services:
  web:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: 3
""")
    wait_for(lambda: len(running(small, "rc_web")) == 3, 60, "3 web replicas running",
             observe=lambda: brief(tasks(small, "rc_web")))
    before = {t["id"]: (t["node"], t["container_id"]) for t in running(small, "rc_web")}
    started = {cid: small.docker(h, "inspect", "-f", "{{.State.StartedAt}}", cid).stdout.strip()
               for h, cid in before.values()}
    manager = small.managers[0]
    victim_task, (victim_host, _) = sorted(before.items())[0]
    slot = next(t["slot"] for t in running(small, "rc_web") if t["id"] == victim_task)

    small.exec(manager, ["sh", "-c", "kill -KILL $(cat /run/pyswarm/manager.pid)"])
    wait_for(lambda: small.pyswarm(manager, "node", "ls", check=False, timeout=10).returncode != 0, 10,
             "the manager gone")
    # while no manager runs: a container for a task the store never had (in
    # that task's slot), and a second container for a known task, by hand
    labels = {"pyswarm.service.name": "rc_web", "com.docker.stack.namespace": "rc", "pyswarm.task.slot": str(slot)}
    stray = small.docker(victim_host, "run", "-d", *[f"--label={k}={v}" for k, v in labels.items()],
                         "--label=pyswarm.task.id=strayfeedbeef0000000000000", IMAGE, *NAP).stdout.strip()
    twin = small.docker(victim_host, "run", "-d", *[f"--label={k}={v}" for k, v in labels.items()],
                        f"--label=pyswarm.task.id={victim_task}", IMAGE, *NAP).stdout.strip()

    small.pyswarm(manager, "manager", "start", timeout=90)
    restarted_at = time.time()

    def reconciled() -> bool:
        ids = {c[0] for c in containers(small, victim_host, "rc_web", all_states=True)}
        return stray[:12] not in ids and twin[:12] not in ids and len(running(small, "rc_web")) == 3 and \
            sum(len(v) for v in engines(small, "rc_web", all_states=True).values()) == 3
    wait_for(reconciled, 60, "the stray container and the twin removed, 3 containers for 3 tasks",
             observe=lambda: (engines(small, "rc_web", True), brief(live(tasks(small, "rc_web")))))
    print(f"\nmanager restarted: stray container and twin removed {time.time() - restarted_at:.2f}s after `manager start` returned")

    per_task: Counter[str] = Counter()
    for listed in engines(small, "rc_web", all_states=True).values():
        per_task.update(task for _, task, _ in listed)
    assert per_task == Counter(list(before)), f"containers per task after reconcile: {per_task}, tasks {sorted(before)}"
    after = {t["id"]: (t["node"], t["container_id"]) for t in running(small, "rc_web")}
    assert set(after) == set(before), (before, after)
    for task_id, (host, cid) in before.items():
        assert after[task_id] == (host, cid), f"task {task_id} moved or got a new container: {before[task_id]} -> {after[task_id]}"
        now = small.docker(host, "inspect", "-f", "{{.State.StartedAt}}", cid).stdout.strip()
        assert now == started[cid], f"container {cid[:12]} of task {task_id} was restarted"
    # the hand-made twin of a known task went, not the task's own container
    kept = [c[0] for c in containers(small, victim_host, "rc_web", all_states=True) if c[1] == victim_task]
    assert len(kept) == 1 and before[victim_task][1].startswith(kept[0]) and not twin.startswith(kept[0]), \
        f"task {victim_task} on {victim_host}: kept {kept}, its own {before[victim_task][1][:12]}, twin {twin[:12]}"
