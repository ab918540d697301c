"""The orchestrator's reconcile: services' desired replicas to task operations."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec, make_node, make_service, make_snapshot, make_task  # noqa: E402

from pyswarm.manager.orchestrator import reconcile  # noqa: E402
from pyswarm.manager.store import _apply_ops  # noqa: E402
from pyswarm.models import DESIRED_RUNNING, DESIRED_SHUTDOWN, Node, Task, TaskState  # noqa: E402


def converge(*objects: Any, rounds: int = 3) -> dict[str, Any]:
    """Apply reconcile's operations until nothing is left to do; return raw tasks.

    A node a task names exists and is ready unless the test passes it."""
    given = {o.id for o in objects if isinstance(o, Node)}
    named = sorted({o.node_id for o in objects if isinstance(o, Task) and o.node_id} - given)
    snap = make_snapshot(*objects, *(make_node(id=n) for n in named))
    raw = {k: dict(v) for k, v in snap.raw.items()}
    for _ in range(rounds):
        from pyswarm.manager.store import Snapshot

        ops = reconcile(Snapshot(1, raw), now=1000.0)
        if not ops:
            return raw["task"]
        _apply_ops(raw, ops)
    raise AssertionError(f"reconcile did not converge; last ops: {ops}")


def live(tasks: dict[str, Any]) -> list[Task]:
    out = [Task.from_dict(t) for t in tasks.values()]
    return [t for t in out if t.desired_state == DESIRED_RUNNING and not t.state.terminal]


def test_creates_one_pending_task_per_slot() -> None:
    svc = make_service("web", replicas=3)
    tasks = live(converge(svc))
    assert sorted(t.slot for t in tasks) == [1, 2, 3]
    assert {t.state for t in tasks} == {TaskState.PENDING}
    assert all(t.node_id == "" for t in tasks)


def test_scale_down_shuts_down_highest_slots() -> None:
    svc = make_service("web", replicas=2)
    running = [make_task(svc, slot=s, state=TaskState.RUNNING, node_id="n1") for s in (1, 2, 3, 4)]
    tasks = converge(svc, *running)
    assert sorted(t.slot for t in live(tasks)) == [1, 2]
    shut = [Task.from_dict(t) for t in tasks.values() if t["desired_state"] == DESIRED_SHUTDOWN]
    assert sorted(t.slot for t in shut) == [3, 4]


def test_failed_task_is_replaced_and_kept_as_history() -> None:
    svc = make_service("web", replicas=1)
    dead = make_task(svc, slot=1, state=TaskState.FAILED, node_id="n1", exit_code=137)
    tasks = converge(svc, dead)
    assert len(live(tasks)) == 1 and live(tasks)[0].id != dead.id
    assert tasks[dead.id]["desired_state"] == DESIRED_SHUTDOWN


def test_restart_condition_none_leaves_slot_empty() -> None:
    svc = make_service("job", replicas=1, restart_condition="none")
    done = make_task(svc, slot=1, state=TaskState.COMPLETE, node_id="n1")
    assert live(converge(svc, done)) == []


def test_on_failure_restarts_failed_not_complete() -> None:
    svc = make_service("job", replicas=2, restart_condition="on-failure")
    ok = make_task(svc, slot=1, state=TaskState.COMPLETE, node_id="n1")
    bad = make_task(svc, slot=2, state=TaskState.FAILED, node_id="n1")
    assert [t.slot for t in live(converge(svc, ok, bad))] == [2]


def test_history_is_pruned_per_slot() -> None:
    svc = make_service("web", replicas=1)
    old = [make_task(svc, slot=1, state=TaskState.FAILED, node_id="n1", created_at=float(i),
                     desired_state=DESIRED_SHUTDOWN) for i in range(8)]
    tasks = converge(svc, *old)
    ended = [t for t in tasks.values() if t["state"] == "failed"]
    assert len(ended) == 5, f"kept {len(ended)} failed tasks"
    assert min(t["created_at"] for t in ended) == 3.0


def test_tasks_of_removed_service_are_deleted() -> None:
    svc = make_service("web", replicas=1)
    orphan = make_task(svc, slot=1, state=TaskState.RUNNING, node_id="n1")
    ops = reconcile(make_snapshot(orphan), now=1.0)
    assert ops == [["delete", "task", orphan.id]]


def test_never_two_live_tasks_in_one_slot() -> None:
    svc = make_service("web", replicas=1)
    a = make_task(svc, slot=1, state=TaskState.RUNNING, node_id="n1", created_at=1.0)
    b = make_task(svc, slot=1, state=TaskState.RUNNING, node_id="n2", created_at=2.0)
    assert [t.id for t in live(converge(svc, a, b))] == [b.id]


def test_global_service_one_task_per_eligible_node() -> None:
    svc = make_service("agent", mode="global")
    nodes = [make_node(), make_node(), make_node(availability="drain")]
    tasks = live(converge(svc, *nodes))
    assert sorted(t.node_id for t in tasks) == sorted(n.id for n in nodes[:2])


def test_new_spec_version_replaces_tasks() -> None:
    """The orchestrator leaves an outdated task in place; the updater
    (manager/updater.py) replaces it: stop-first by default, the replacement
    held (desired ready) until the old task has stopped."""
    from pyswarm.manager.store import Snapshot
    from pyswarm.manager.updater import plan
    from pyswarm.models import DESIRED_READY

    svc = make_service("web", replicas=1)
    old = make_task(svc, slot=1, state=TaskState.RUNNING, node_id="n1", spec_version=1)
    svc.version = 2
    svc.spec.container = make_container_spec(image="pyswarm/busybox:v2")
    raw = {"task": converge(svc, old)}
    assert [t.id for t in live(raw["task"])] == [old.id], "the orchestrator replaced an outdated task itself"
    snap = make_snapshot(svc, Task.from_dict(raw["task"][old.id]), make_node(id="n1"))
    raw = {k: dict(v) for k, v in snap.raw.items()}
    for ops in plan(Snapshot(1, raw), now=1000.0).commits:
        _apply_ops(raw, ops)
    assert reconcile(Snapshot(1, raw), now=1000.0) == [], "the orchestrator fought the updater"
    new = [Task.from_dict(t) for t in raw["task"].values() if t["id"] != old.id]
    assert [(t.spec_version, t.desired_state) for t in new] == [(2, DESIRED_READY)]
    assert raw["task"][old.id]["desired_state"] == DESIRED_SHUTDOWN
    _apply_ops(raw, [["advance", old.id, "shutdown", {}]])
    for ops in plan(Snapshot(1, raw), now=1001.0).commits:
        _apply_ops(raw, ops)
    assert [(t.id, t.spec_version) for t in live(raw["task"])] == [(new[0].id, 2)]


def test_start_first_pair_is_kept() -> None:
    """An outdated task and its start-first replacement share a slot until
    the updater stops the old one; the orchestrator touches neither."""
    svc = make_service("web", replicas=1)
    old = make_task(svc, slot=1, state=TaskState.RUNNING, node_id="n1", spec_version=1, created_at=1.0)
    svc.version = 2
    new = make_task(svc, slot=1, state=TaskState.STARTING, node_id="n2", created_at=2.0)
    assert sorted(t.id for t in live(converge(svc, old, new))) == sorted([old.id, new.id])


def test_scaling_down_removes_the_tasks_of_slots_that_are_gone() -> None:
    """Swarm's task reaper: 100 -> 3 leaves what 3 replicas need, not 97
    shut-down tasks for slots that no longer exist."""
    node = make_node()
    svc = make_service("web", replicas=3)
    running = [make_task(svc, slot=s, node_id=node.id, state=TaskState.RUNNING) for s in (1, 2, 3, 4)]
    pending = [make_task(svc, slot=s) for s in range(5, 101)]
    ended = make_task(svc, slot=50, node_id=node.id, state=TaskState.FAILED, desired_state=DESIRED_SHUTDOWN)
    tasks = converge(node, svc, *running, *pending, ended)
    assert len(tasks) == 4, f"kept {len(tasks)} tasks"
    assert tasks[running[3].id]["desired_state"] == DESIRED_SHUTDOWN, "slot 4's running task was not stopped"
    raw = {"task": dict(tasks), "service": {svc.id: svc.to_dict()}, "node": {node.id: node.to_dict()},
           "cluster": {}}
    _apply_ops(raw, [["advance", running[3].id, "shutdown", {}]])
    from pyswarm.manager.store import Snapshot

    _apply_ops(raw, reconcile(Snapshot(1, raw), now=1001.0))
    assert sorted(raw["task"]) == sorted(t.id for t in running[:3]), "a stopped task of a gone slot was kept"


def test_a_pass_creates_at_most_its_budget_of_tasks() -> None:
    from pyswarm.manager.orchestrator import Budget

    svc = make_service("web", replicas=100)
    budget = Budget(30)
    ops = reconcile(make_snapshot(make_node(), svc), now=1.0, budget=budget)
    assert sum(1 for op in ops if op[0] == "put") == 30 and budget.spent_out
