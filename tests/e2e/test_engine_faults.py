"""Issue 11, engine faults, on the session lab (1 manager + 3 workers): a
worker whose dockerd stops while its agent and sshd live on is shown
``down`` with "engine unreachable: …" (as Swarm shows a node whose engine
is gone), takes no new task (the scheduler says why), its replicas run
elsewhere, and once dockerd is back the node is ready again and every slot
has exactly one running container on the engines.

The test starts the worker's dockerd again whatever happens, so the shared
lab is left as it was found.
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
SERVE = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 80 & wait"]'


@pytest.fixture
def deploy(lab: Any, tmp_path: Path) -> Iterator[Any]:
    with deployed_stacks(lab, tmp_path) as go:
        yield go


def node(lab: Any, ref: str) -> dict[str, Any]:
    return dict(json.loads(cli(lab, "node", "inspect", ref))[0])


def on_engines(lab: Any, service: str, all_states: bool = False) -> dict[str, list[tuple[str, str]]]:
    """host -> [(task id, state)] of the service's containers, from each host's own engine."""
    out: dict[str, list[tuple[str, str]]] = {}
    for host in lab.hosts:
        listed = lab.docker(host, "ps", *(["-a"] if all_states else []), "--filter",
                            f"label=pyswarm.service.name={service}",
                            "--format", '{{.Label "pyswarm.task.id"}} {{.State}}', timeout=30).stdout
        out[host] = [tuple(line.split()) for line in listed.splitlines() if line.strip()]  # type: ignore[misc]
    return out


def test_a_worker_whose_engine_stops_is_down_with_the_reason_and_comes_back(lab: Any, deploy: Any) -> None:
    deploy("ef", f"""
services:
  web:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: 3
      restart_policy: {{condition: on-failure}}
""")
    rows = wait_for(lambda: running(lab, "ef_web") if len(running(lab, "ef_web")) == 3 else [], 90,
                    "3 web replicas running", observe=lambda: brief(tasks(lab, "ef_web")))
    workers = [h for h in lab.hosts if h not in lab.managers]
    victim = next(t["node"] for t in rows if t["node"] in workers)
    lost = {t["id"] for t in rows if t["node"] == victim}

    stopped_at = time.time()
    lab.stop_daemon(victim, "dockerd")
    try:
        seen = wait_for(lambda: (lambda n: n if n["status"] == "down" else None)(node(lab, victim)), 20,
                        f"{victim} down once its dockerd stopped", observe=lambda: node(lab, victim))
        assert seen["status_message"].startswith("engine unreachable: "), seen
        assert "docker.sock" in seen["status_message"], seen
        down_after = seen["updated_at"] - stopped_at
        listed = {r["hostname"]: r for r in json.loads(cli(lab, "node", "ls", "--format", "json"))}
        assert listed[victim]["status"] == "down" and listed[victim]["message"].startswith(seen["status_message"]), listed

        def healed() -> list[dict[str, Any]]:
            web = running(lab, "ef_web")
            return web if len(web) == 3 and all(t["node"] != victim for t in web) else []
        web = wait_for(healed, 60, f"3 web replicas running without {victim}",
                       observe=lambda: brief(tasks(lab, "ef_web")))
        healed_after = max(t["since"] for t in web) - stopped_at
        # dockerd stops its containers as it exits (SIGTERM: these exit 0)
        # and streams their deaths with its API closed: the agent does not
        # take them for exits of their own (an on-failure service would keep
        # them dead), so they are orphaned with the node, whatever the policy
        rows = tasks(lab, "ef_web")
        assert {t["current_state"] for t in rows if t["id"] in lost} == {"orphaned"}, brief(rows)

        # nothing new goes there, and the scheduler says why
        deploy("efpin", f"""
services:
  pinned:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      placement:
        constraints: ["node.hostname == {victim}"]
""")
        pending = wait_for(lambda: [t for t in live(tasks(lab, "efpin_pinned"))
                                    if "1 node with the engine unreachable" in (t["message"] or "")], 20,
                           "the pinned task pending, the engine named as the reason",
                           observe=lambda: brief(tasks(lab, "efpin_pinned")))
        assert not pending[0]["node"], pending
        print(f"\n{victim} dockerd stopped: down after {down_after:.2f}s ({seen['status_message']}), its "
              f"{len(lost)} replicas running elsewhere after {healed_after:.2f}s; pinned: {pending[0]['message']}")
    finally:
        lab.start_daemons(victim, only=("dockerd",))
    back_at = time.time()

    wait_for(lambda: node(lab, victim)["status"] == "ready", 30, f"{victim} ready once dockerd answers",
             observe=lambda: node(lab, victim))
    ready_after = time.time() - back_at
    pinned = wait_for(lambda: [t for t in running(lab, "efpin_pinned") if t["node"] == victim], 30,
                      f"the pinned task running on {victim}", observe=lambda: brief(tasks(lab, "efpin_pinned")))

    def one_per_slot() -> dict[str, list[tuple[str, str]]] | None:
        listed = on_engines(lab, "ef_web", all_states=True)
        per_task = Counter(task for rows in listed.values() for task, _ in rows)
        running_ids = {task for rows in listed.values() for task, state in rows if state == "running"}
        ok = (len(per_task) == 3 and max(per_task.values()) == 1 and len(running_ids) == 3
              and not any(task in lost for task, _ in listed[victim]))
        return listed if ok else None
    listed = wait_for(one_per_slot, 30, f"exactly one running web container per slot, none of {victim}'s old ones",
                      observe=lambda: on_engines(lab, "ef_web", all_states=True))
    slots = Counter(t["slot"] for t in running(lab, "ef_web"))
    assert sorted(slots) == [1, 2, 3] and set(slots.values()) == {1}, brief(tasks(lab, "ef_web"))
    print(f"{victim} dockerd back: ready after {ready_after:.2f}s, pinned task {pinned[0]['id'][:12]} there; "
          f"engines: {listed}")
