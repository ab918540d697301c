"""Healing rules of the orchestrator (manager/healing.py through reconcile):
lost nodes, restart policy (condition, delay, max_attempts, window), drain,
and never two live tasks for one slot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factories import make_node, make_service, make_snapshot, make_task  # noqa: E402

from pyswarm import protocol  # noqa: E402
from pyswarm.manager.healing import RestartPolicy, replacement  # noqa: E402
from pyswarm.manager.orchestrator import reconcile  # noqa: E402
from pyswarm.manager.store import Snapshot, _apply_ops  # noqa: E402
from pyswarm.models import (  # noqa: E402
    DESIRED_RUNNING,
    DESIRED_SHUTDOWN,
    NodeAvailability,
    NodeStatus,
    Service,
    Task,
    TaskState,
)


class World:
    """A raw store the tests mutate between reconcile passes."""

    def __init__(self, *objects: Any) -> None:
        self.raw = {k: dict(v) for k, v in make_snapshot(*objects).raw.items()}

    def converge(self, now: float = 1000.0, rounds: int = 4) -> None:
        for _ in range(rounds):
            ops = reconcile(Snapshot(1, self.raw), now=now)
            if not ops:
                return
            _apply_ops(self.raw, ops)
        raise AssertionError(f"reconcile did not converge; last ops: {ops}")

    def tasks(self) -> list[Task]:
        return sorted((Task.from_dict(t) for t in self.raw["task"].values()), key=lambda t: t.created_at)

    def live(self) -> list[Task]:
        return [t for t in self.tasks() if t.desired_state == DESIRED_RUNNING and not t.state.terminal]

    def set_task(self, task_id: str, **fields: Any) -> None:
        self.raw["task"][task_id] = {**self.raw["task"][task_id], **fields}

    def set_node(self, node_id: str, **fields: Any) -> None:
        self.raw["node"][node_id] = {**self.raw["node"][node_id], **fields}

    def run_all(self, node_id: str) -> None:
        """The scheduler and the agent in one step: every pending task runs on ``node_id``."""
        for t in self.live():
            if t.state == TaskState.PENDING:
                self.set_task(t.id, node_id=t.node_id or node_id, state="running")

    def fail(self, task: Task, at: float, state: str = "failed") -> None:
        self.set_task(task.id, state=state, state_since=at)


def test_tasks_on_a_down_node_are_orphaned_and_replaced_elsewhere() -> None:
    a, b = make_node(), make_node()
    svc = make_service("web", replicas=2, restart_condition="none")
    t1 = make_task(svc, slot=1, node_id=a.id, state=TaskState.RUNNING)
    t2 = make_task(svc, slot=2, node_id=b.id, state=TaskState.RUNNING)
    w = World(a, b, svc, t1, t2)
    w.set_node(a.id, status=NodeStatus.DOWN.value, status_message="no heartbeat for 2s", down_since=990.0)
    # within the grace its agent may still run it (it fences itself before the grace ends)
    w.converge(now=990.0 + protocol.LOST_GRACE - 0.1)
    assert w.raw["task"][t1.id]["state"] == "running" and sorted(t.slot for t in w.live()) == [1, 2]
    w.converge(now=990.0 + protocol.LOST_GRACE)
    lost = Task.from_dict(w.raw["task"][t1.id])
    assert lost.state == TaskState.ORPHANED and lost.desired_state == DESIRED_SHUTDOWN
    assert "down" in lost.message, lost.message
    live = w.live()
    assert sorted(t.slot for t in live) == [1, 2]
    new = next(t for t in live if t.slot == 1)
    assert new.node_id == "" and new.state == TaskState.PENDING and new.restarts == []


def test_a_new_leader_gives_a_down_node_its_whole_grace() -> None:
    """A down_since an earlier leader wrote may have run out during the
    election, while nobody probed the node's host (its lingering agent keeps
    its containers while a manager's host answers): a new leader counts the
    grace from no earlier than its own start (the soak's doubles, session 24)."""
    a, b = make_node(), make_node()
    svc = make_service("web", replicas=1)
    t1 = make_task(svc, slot=1, node_id=a.id, state=TaskState.RUNNING)
    w = World(a, b, svc, t1)
    w.set_node(a.id, status=NodeStatus.DOWN.value, status_message="no heartbeat for 2s", down_since=900.0)
    led_since = 1000.0  # the old grace ran out at 912
    ops = reconcile(Snapshot(1, w.raw), now=led_since + protocol.LOST_GRACE - 0.1, led_since=led_since)
    assert ops == [], f"a new leader gave up the task of a node it has not had a grace to reach: {ops}"
    ops = reconcile(Snapshot(1, w.raw), now=led_since + protocol.LOST_GRACE, led_since=led_since)
    _apply_ops(w.raw, ops)
    assert w.raw["task"][t1.id]["state"] == "orphaned", ops


def test_a_task_whose_node_is_gone_is_lost() -> None:
    svc = make_service("web", replicas=1)
    t = make_task(svc, slot=1, node_id="node-that-left", state=TaskState.RUNNING)
    w = World(svc, t)
    w.converge()
    assert w.raw["task"][t.id]["state"] == "orphaned"
    assert [x.node_id for x in w.live()] == [""]


def test_global_service_leaves_a_down_node_and_returns_with_it() -> None:
    a, b = make_node(), make_node()
    svc = make_service("agent", mode="global")
    w = World(a, b, svc)
    w.converge()
    assert sorted(t.node_id for t in w.live()) == sorted([a.id, b.id])
    for t in w.live():
        w.set_task(t.id, state="running")
    w.set_node(b.id, status="down", down_since=1000.0 - protocol.LOST_GRACE)
    w.converge()
    assert [t.node_id for t in w.live()] == [a.id], "no replacement on another node for a global task"
    assert {t.state for t in w.tasks() if t.node_id == b.id} == {TaskState.ORPHANED}
    w.set_node(b.id, status="ready")
    w.converge()
    assert sorted(t.node_id for t in w.live()) == sorted([a.id, b.id])


def test_global_service_follows_a_node_that_joins() -> None:
    a = make_node()
    svc = make_service("agent", mode="global")
    w = World(a, svc)
    w.converge()
    c = make_node()
    w.raw["node"][c.id] = c.to_dict()
    w.converge()
    assert sorted(t.node_id for t in w.live()) == sorted([a.id, c.id])


def test_restart_delay_sets_not_before() -> None:
    n = make_node()
    svc = make_service("web", replicas=1, deploy={"restart_policy": {"condition": "any", "delay": "3s"}})
    w = World(n, svc)
    w.converge(now=100.0)
    first = w.live()[0]
    assert first.not_before == 0.0, "a first task is not delayed"
    w.run_all(n.id)
    w.fail(first, at=110.0)
    w.converge(now=110.5)
    second = w.live()[0]
    assert second.not_before == 113.5 and "3s" in second.message


def test_max_attempts_without_window_counts_every_restart() -> None:
    n = make_node()
    svc = make_service("job", replicas=1,
                       deploy={"restart_policy": {"condition": "on-failure", "max_attempts": 2}})
    w = World(n, svc)
    w.converge(now=0.0)
    runs = 0
    for i in range(5):
        live = w.live()
        if not live:
            break
        runs += 1
        w.run_all(n.id)
        w.fail(live[0], at=10.0 * (i + 1))
        w.converge(now=10.0 * (i + 1))
    assert runs == 3, "the first run and 2 restarts"
    failed = [t for t in w.tasks() if t.state == TaskState.FAILED]
    assert len(failed) == 3 and all(t.desired_state == DESIRED_SHUTDOWN for t in failed)


def test_max_attempts_within_window_forgets_old_restarts() -> None:
    policy = {"condition": "any", "max_attempts": 1, "window": "60s"}
    svc = make_service("web", replicas=1, deploy={"restart_policy": policy})
    # the slot restarted once at t=0; a failure at t=30 is inside the window, at t=100 outside
    inside = make_task(svc, slot=1, node_id="n", state=TaskState.FAILED, state_since=30.0, restarts=[0.0])
    outside = make_task(svc, slot=1, node_id="n", state=TaskState.FAILED, state_since=100.0, restarts=[0.0])
    assert replacement(svc, [inside], now=31.0) is None
    terms = replacement(svc, [outside], now=101.0)
    assert terms is not None and terms.restarts == (101.0,)


def test_condition_none_and_on_failure() -> None:
    none = make_service("a", deploy={"restart_policy": {"condition": "none"}})
    on_failure = make_service("b", restart_condition="on-failure")
    done = make_task(none, state=TaskState.COMPLETE)
    assert replacement(none, [done], 1.0) is None
    assert replacement(none, [make_task(none, state=TaskState.FAILED)], 1.0) is None
    assert replacement(on_failure, [make_task(on_failure, state=TaskState.COMPLETE)], 1.0) is None
    assert replacement(on_failure, [make_task(on_failure, state=TaskState.REJECTED)], 1.0) is not None
    # what the cluster stopped (scale down, lost node) is always refilled
    assert replacement(none, [make_task(none, state=TaskState.SHUTDOWN)], 1.0) is not None
    assert replacement(none, [make_task(none, state=TaskState.ORPHANED)], 1.0) is not None


def test_a_new_spec_version_resets_the_restart_count() -> None:
    svc = make_service("web", deploy={"restart_policy": {"max_attempts": 1}})
    svc.version = 2
    old = make_task(svc, state=TaskState.FAILED, spec_version=1, restarts=[5.0])
    terms = replacement(svc, [old], 10.0)
    assert terms is not None and terms.restarts == ()


def test_restart_policy_reads_deploy_and_tolerates_odd_values() -> None:
    svc = make_service("web", deploy={"restart_policy": {"delay": "1m30s", "max_attempts": "x", "window": 5}})
    assert RestartPolicy.of(svc) == RestartPolicy("any", 90.0, 0, 5.0)


def test_scale_down_then_up_refills_an_on_failure_slot() -> None:
    n = make_node()
    svc = make_service("web", replicas=1, restart_condition="on-failure")
    stopped = make_task(svc, slot=2, node_id=n.id, state=TaskState.SHUTDOWN, desired_state=DESIRED_SHUTDOWN)
    svc.spec.replicas = 2
    w = World(n, svc, stopped)
    w.converge()
    assert sorted(t.slot for t in w.live()) == [1, 2]


def _drain_world(order: str | None) -> tuple[World, Service, Task, str]:
    a, b = make_node(), make_node()
    deploy = {"update_config": {"order": order}} if order else {}
    svc = make_service("web", replicas=1, deploy=deploy)
    t = make_task(svc, slot=1, node_id=a.id, state=TaskState.RUNNING)
    w = World(a, b, svc, t)
    w.set_node(a.id, availability=NodeAvailability.DRAIN.value)
    return w, svc, t, b.id


def test_drain_stop_first_stops_then_replaces() -> None:
    w, _, old, _ = _drain_world(None)
    w.converge()
    assert w.raw["task"][old.id]["desired_state"] == DESIRED_SHUTDOWN
    assert w.live() == [], "replaced before the old task stopped: the slot would run twice meanwhile"
    w.set_task(old.id, state="shutdown")
    w.converge()
    assert [t.node_id for t in w.live()] == [""]


def test_a_slot_scaled_away_and_back_waits_for_its_old_task_to_stop() -> None:
    """Scale 2 -> 0 -> 2 while a node cannot hear the stop (the soak: its
    link was cut): its task of slot 2 still runs, so slot 2 is refilled
    only once it has stopped, or once its node is lost (then it is orphaned
    and the refill follows at once)."""
    a, b = make_node(), make_node()
    svc = make_service("web", replicas=0)
    old = make_task(svc, slot=2, node_id=a.id, state=TaskState.RUNNING, desired_state=DESIRED_SHUTDOWN)
    svc.spec.replicas = 2
    w = World(a, b, svc, old)
    w.converge()
    assert sorted(t.slot for t in w.live()) == [1], f"slot 2 refilled beside its running task: {w.live()}"
    w.set_node(a.id, status=NodeStatus.DOWN.value, status_message="no heartbeat for 2s", down_since=900.0)
    w.converge(now=900.0 + protocol.LOST_GRACE)
    assert w.raw["task"][old.id]["state"] == "orphaned"
    assert sorted(t.slot for t in w.live()) == [1, 2], "a lost node's stopping task still held its slot"


def test_drain_start_first_keeps_the_old_task_until_the_new_one_runs() -> None:
    w, _, old, other = _drain_world("start-first")
    w.converge()
    assert w.raw["task"][old.id]["desired_state"] == DESIRED_RUNNING
    new = [t for t in w.live() if t.id != old.id]
    assert len(new) == 1 and new[0].node_id == ""
    w.set_task(new[0].id, node_id=other, state="starting")
    w.converge()
    assert w.raw["task"][old.id]["desired_state"] == DESIRED_RUNNING, "stopped before its replacement ran"
    w.set_task(new[0].id, state="running")
    w.converge()
    assert w.raw["task"][old.id]["desired_state"] == DESIRED_SHUTDOWN
    assert [t.id for t in w.live()] == [new[0].id]


def test_pause_keeps_running_tasks() -> None:
    n = make_node(availability=NodeAvailability.PAUSE)
    svc = make_service("web", replicas=1)
    t = make_task(svc, slot=1, node_id=n.id, state=TaskState.RUNNING)
    assert reconcile(make_snapshot(n, svc, t), now=1.0) == []


def test_of_two_live_tasks_in_a_slot_the_running_one_stays() -> None:
    a, b = make_node(), make_node()
    svc = make_service("web", replicas=1)
    running = make_task(svc, slot=1, node_id=a.id, state=TaskState.RUNNING, created_at=1.0)
    newer = make_task(svc, slot=1, node_id=b.id, state=TaskState.ASSIGNED, created_at=2.0)
    w = World(a, b, svc, running, newer)
    w.converge()
    assert [t.id for t in w.live()] == [running.id]
    assert w.raw["task"][newer.id]["desired_state"] == DESIRED_SHUTDOWN
