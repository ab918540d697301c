"""The updater's pure planning (manager/updater.py), driven through a small
simulated cluster: the real orchestrator reconcile and scheduler plan, and a
fake agent that moves each task one step per tick (assigned -> preparing ->
starting -> running, or rejected when its image is the bad one; desired
shutdown -> shutdown)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec, make_node, make_service, make_snapshot  # noqa: E402

from pyswarm.manager.orchestrator import reconcile  # noqa: E402
from pyswarm.manager.scheduling import plan_ops  # noqa: E402
from pyswarm.manager.store import Op, Snapshot, _apply_ops  # noqa: E402
from pyswarm.manager.updater import UpdateConfig, plan  # noqa: E402
from pyswarm.models import (  # noqa: E402
    DESIRED_READY,
    DESIRED_RUNNING,
    DESIRED_SHUTDOWN,
    Service,
    ServiceSpec,
    Task,
    TaskState,
)

V1 = "lab/web:1"
V2 = "lab/web:2"
BAD = "lab/web:missing"
# the fake agent's steps, one per tick
_NEXT = {TaskState.ASSIGNED: TaskState.PREPARING, TaskState.PREPARING: TaskState.STARTING,
         TaskState.STARTING: TaskState.RUNNING}


class Cluster:
    """A store's raw objects plus the loops that act on them, one tick at a time."""

    def __init__(self, replicas: int, update_config: dict[str, Any] | None = None,
                 rollback_config: dict[str, Any] | None = None, nodes: int = 3) -> None:
        deploy: dict[str, Any] = {}
        if update_config is not None:
            deploy["update_config"] = update_config
        if rollback_config is not None:
            deploy["rollback_config"] = rollback_config
        self.service = make_service("web", replicas=replicas, container=make_container_spec(image=V1),
                                    deploy=deploy)
        snap = make_snapshot(self.service, *(make_node() for _ in range(nodes)))
        self.raw = {k: dict(v) for k, v in snap.raw.items()}
        self.now = 1000.0
        self.history: list[list[Task]] = []
        self.settle()

    # -- driving -------------------------------------------------------------

    def apply(self, ops: list[Op]) -> None:
        _apply_ops(self.raw, ops)

    def snap(self) -> Snapshot:
        return Snapshot(1, self.raw)

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds
        for ops in plan(self.snap(), self.now).commits:
            self.apply(ops)
        self.apply(reconcile(self.snap(), self.now))
        self.apply(plan_ops(self.snap(), self.now))
        self.agent()
        self.history.append(self.tasks())

    def agent(self) -> None:
        ops: list[Op] = []
        for t in self.tasks():
            if not t.node_id or t.state.terminal:
                continue
            if t.desired_state == DESIRED_SHUTDOWN:
                ops.append(["advance", t.id, "shutdown", {"state_since": self.now}])
            elif t.desired_state == DESIRED_RUNNING and t.state in _NEXT:
                state = _NEXT[t.state]
                if t.spec.image == BAD and state == TaskState.STARTING:
                    state = TaskState.REJECTED
                ops.append(["advance", t.id, state.value, {"state_since": self.now}])
        self.apply(ops)

    def settle(self, limit: int = 200, seconds: float = 1.0) -> None:
        """Tick until nothing changes for a few ticks (and no update is in progress)."""
        quiet = 0
        for _ in range(limit):
            before = repr(self.raw)
            self.tick(seconds)
            quiet = quiet + 1 if repr(self.raw) == before else 0
            if quiet >= 3:
                return
        raise AssertionError(f"no steady state after {limit} ticks: {self.summary()}")

    def update(self, **spec_changes: Any) -> None:
        """What the API does for a changed spec: a new version, the old spec
        kept. The history starts here."""
        self.history = []
        svc = self.svc()
        spec = svc.spec.to_dict()
        for key, value in spec_changes.items():
            if key == "image":
                spec["container"]["image"] = value
            else:
                spec[key] = value
        self.apply([["patch", "service", svc.id, {
            "spec": spec, "previous_spec": svc.spec.to_dict(), "version": svc.version + 1}]])

    # -- looking -------------------------------------------------------------

    def svc(self) -> Service:
        return Service.from_dict(self.raw["service"][self.service.id])

    def tasks(self) -> list[Task]:
        return [Task.from_dict(t) for t in self.raw["task"].values()]

    def running(self, tasks: list[Task] | None = None) -> list[Task]:
        return [t for t in (tasks if tasks is not None else self.tasks())
                if t.state == TaskState.RUNNING and t.desired_state == DESIRED_RUNNING]

    def images(self) -> list[str]:
        return sorted(t.spec.image for t in self.running())

    def status(self) -> dict[str, Any]:
        return self.svc().update_status

    def summary(self) -> str:
        return str(sorted((t.slot, t.spec_version, t.desired_state, t.state.value) for t in self.tasks()))


def slots_in_progress(tasks: list[Task], version: int) -> int:
    """Slots where a replacement exists but has not started running yet."""
    return len({t.slot or t.node_id for t in tasks if t.spec_version == version and not t.state.terminal
                and t.desired_state in (DESIRED_RUNNING, DESIRED_READY) and t.state != TaskState.RUNNING})


def run_update(c: Cluster, until: Callable[[], bool], ticks: int = 100) -> None:
    for _ in range(ticks):
        c.tick()
        if until():
            return
    raise AssertionError(f"update did not get there; status {c.status()}; tasks {c.summary()}")


# -- config ----------------------------------------------------------------------------


def test_config_defaults_are_swarms() -> None:
    cfg = UpdateConfig.of(make_service("web"), rollback=False)
    assert cfg == UpdateConfig(parallelism=1, delay=0.0, order="stop-first", failure_action="pause",
                               monitor=5.0, max_failure_ratio=0.0)


def test_config_reads_normalised_deploy_keys() -> None:
    svc = make_service("web", deploy={
        "update_config": {"parallelism": 3, "delay": "1m30s", "order": "start-first",
                          "failure_action": "rollback", "monitor": "500ms", "max_failure_ratio": 0.25},
        "rollback_config": {"parallelism": 0, "failure_action": "rollback"},
    })
    assert UpdateConfig.of(svc, rollback=False) == UpdateConfig(3, 90.0, "start-first", "rollback", 0.5, 0.25)
    # a rollback never rolls back: its failure_action falls back to pause
    assert UpdateConfig.of(svc, rollback=True) == UpdateConfig(parallelism=0)


# -- pace --------------------------------------------------------------------------------


def test_parallelism_bounds_slots_in_progress() -> None:
    c = Cluster(replicas=6, update_config={"parallelism": 2, "monitor": "0s"})
    assert c.images() == [V1] * 6
    c.update(image=V2)
    run_update(c, lambda: c.status().get("state") == "completed")
    assert c.images() == [V2] * 6
    seen = [slots_in_progress(tasks, 2) for tasks in c.history]
    assert max(seen) == 2, f"slots in progress per tick: {seen}"
    # never fewer than replicas - parallelism running (stop-first)
    assert min(len(c.running(tasks)) for tasks in c.history) >= 4


def test_parallelism_zero_updates_every_slot_at_once() -> None:
    c = Cluster(replicas=5, update_config={"parallelism": 0, "monitor": "0s"})
    c.update(image=V2)
    run_update(c, lambda: c.status().get("state") == "completed")
    assert max(slots_in_progress(tasks, 2) for tasks in c.history) == 5


def test_delay_between_slots() -> None:
    c = Cluster(replicas=3, update_config={"delay": "10s", "monitor": "0s"})
    c.update(image=V2)
    start = c.now
    run_update(c, lambda: c.status().get("state") == "completed")
    new = sorted(t.created_at for t in c.tasks() if t.spec_version == 2)
    gaps = [b - a for a, b in zip(new, new[1:])]
    assert len(new) == 3 and all(g >= 10 for g in gaps), f"replacements created at {[n - start for n in new]}"


def test_monitor_holds_completion() -> None:
    c = Cluster(replicas=2, update_config={"monitor": "30s"})
    c.update(image=V2)
    run_update(c, lambda: c.images() == [V2, V2])
    last_running = c.now
    assert c.status()["state"] == "updating"
    run_update(c, lambda: c.status().get("state") == "completed")
    assert c.now - last_running >= 29, f"completed {c.now - last_running:.0f}s after the last task ran"
    assert c.status()["message"] == "update completed" and c.status()["completed_at"] == c.now


# -- order ----------------------------------------------------------------------------------


def test_stop_first_holds_the_replacement_until_the_old_task_stopped() -> None:
    c = Cluster(replicas=1)
    old = c.running()[0]
    c.update(image=V2)
    c.tick()
    tasks = {t.id: t for t in c.tasks()}
    new = [t for t in tasks.values() if t.id != old.id]
    assert tasks[old.id].desired_state == DESIRED_SHUTDOWN
    assert [(t.desired_state, t.node_id) for t in new] == [(DESIRED_READY, "")], c.summary()
    run_update(c, lambda: c.images() == [V2])
    for tasks_then in c.history:
        live = [t for t in tasks_then if t.desired_state == DESIRED_RUNNING and not t.state.terminal]
        assert len(live) <= 1, f"two live tasks in slot 1: {live}"


def test_start_first_stops_the_old_task_only_once_the_new_one_runs() -> None:
    c = Cluster(replicas=2, update_config={"order": "start-first", "monitor": "0s"})
    c.update(image=V2)
    run_update(c, lambda: c.status().get("state") == "completed")
    assert c.images() == [V2, V2]
    for tasks in c.history:
        for slot in (1, 2):
            running = [t for t in c.running(tasks) if t.slot == slot]
            assert running, f"slot {slot} had no running task: {sorted((t.slot, t.spec_version, t.state.value) for t in tasks)}"
    assert any(len([t for t in tasks if t.slot == 1 and t.desired_state == DESIRED_RUNNING
                    and not t.state.terminal]) == 2 for tasks in c.history), "never started first"


# -- failures --------------------------------------------------------------------------------


def test_failure_pauses_by_default() -> None:
    c = Cluster(replicas=4)
    c.update(image=BAD)
    run_update(c, lambda: c.status().get("state") == "paused")
    status = c.status()
    rejected = [t for t in c.tasks() if t.state == TaskState.REJECTED]
    assert rejected and status["message"] == f"update paused due to failure or early termination of task {rejected[0].id}"
    for _ in range(10):
        c.tick()
    # stop-first: the first slot is down; no other slot was touched
    assert c.images() == [V1] * 3, c.summary()
    assert c.status()["state"] == "paused"


def test_start_first_failure_keeps_the_old_task() -> None:
    c = Cluster(replicas=3, update_config={"order": "start-first"})
    c.update(image=BAD)
    run_update(c, lambda: c.status().get("state") == "paused")
    for _ in range(5):
        c.tick()
    assert c.images() == [V1] * 3, c.summary()


def test_failure_rolls_back_when_asked() -> None:
    c = Cluster(replicas=4, update_config={"failure_action": "rollback", "parallelism": 2},
                rollback_config={"parallelism": 0, "monitor": "0s"})
    untouched = {t.id for t in c.running() if t.slot in (3, 4)}
    c.update(image=BAD)
    run_update(c, lambda: c.status().get("state") == "rollback_started")
    svc = c.svc()
    assert svc.spec.container.image == V1 and svc.previous_spec is not None
    assert svc.previous_spec.container.image == BAD and svc.version == 3
    assert c.status()["message"].startswith("update rolled back due to failure or early termination of task ")
    run_update(c, lambda: c.status().get("state") == "rollback_completed")
    assert c.images() == [V1] * 4
    # slots the update had not reached kept their tasks (same spec: not restarted)
    assert untouched <= {t.id for t in c.running()}


def test_continue_goes_on_and_completes() -> None:
    c = Cluster(replicas=3, update_config={"failure_action": "continue", "order": "start-first", "monitor": "0s"})
    c.update(image=BAD)
    run_update(c, lambda: c.status().get("state") == "completed")
    assert len({t.slot for t in c.tasks() if t.state == TaskState.REJECTED}) == 3
    assert c.images() == [V1] * 3  # start-first: every old task kept


def test_failures_under_the_ratio_do_not_pause() -> None:
    c = Cluster(replicas=4, update_config={"max_failure_ratio": 0.5, "order": "start-first", "monitor": "0s"})
    c.update(image=BAD)
    # two failures of four slots is not more than 0.5; the third is
    run_update(c, lambda: c.status().get("state") == "paused")
    assert len([t for t in c.tasks() if t.state == TaskState.REJECTED]) == 3


def test_a_new_update_resumes_a_paused_one() -> None:
    c = Cluster(replicas=3)
    c.update(image=BAD)
    run_update(c, lambda: c.status().get("state") == "paused")
    c.update(image=V2)
    run_update(c, lambda: c.status().get("state") == "completed")
    assert c.images() == [V2] * 3
    assert c.status()["version"] == 3


# -- what is not restarted ---------------------------------------------------------------------------


def test_a_change_outside_the_container_restarts_nothing() -> None:
    c = Cluster(replicas=3)
    before = {t.id for t in c.running()}
    c.update(labels={"team": "web"})
    c.settle()
    assert {t.id for t in c.running()} == before
    assert {t.spec_version for t in c.running()} == {2}
    assert c.status() == {}


def test_force_restarts_unchanged_tasks() -> None:
    c = Cluster(replicas=2, update_config={"monitor": "0s"})
    before = {t.id for t in c.running()}
    svc = c.svc()
    c.apply([["patch", "service", svc.id, {"version": 2, "update_status": {
        "state": "updating", "version": 2, "force": True, "started_at": c.now, "message": "update in progress"}}]])
    run_update(c, lambda: c.status().get("state") == "completed")
    assert not before & {t.id for t in c.running()}
    assert c.status()["dirty"] == 2


def test_global_service_updates_per_node() -> None:
    c = Cluster(replicas=0, nodes=3, update_config={"parallelism": 1, "monitor": "0s"})
    svc = c.svc()
    spec = svc.spec.to_dict()
    spec["mode"] = "global"
    c.apply([["patch", "service", svc.id, {"spec": ServiceSpec.from_dict(spec).to_dict()}]])
    c.settle()
    assert c.images() == [V1] * 3
    c.update(image=V2)
    run_update(c, lambda: c.status().get("state") == "completed")
    assert c.images() == [V2] * 3
    assert len({t.node_id for t in c.running()}) == 3
    assert max(slots_in_progress(ts, 2) for ts in c.history) == 1
