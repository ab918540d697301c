"""The leader's scheduler loop around the pure :func:`.scheduler.schedule`.

It takes a snapshot, asks for a plan and commits every assignment in one
transaction, each guarded by a precondition that the task is still unplaced
(the re-check against the store: if anything moved meanwhile, the
transaction aborts and the next round plans again from fresh state). Tasks
that fit nowhere keep their ``no suitable node (…)`` reason as the task's
message, which ``service ps`` shows.
"""

from __future__ import annotations

from typing import Any

from collections.abc import Mapping

from pyswarm.models import DESIRED_RUNNING, Task, TaskState

from .dependencies import blocked_services
from .loop import Plan, StoreLoop, chunked
from .scheduler import schedule
from .store import Op, Snapshot

_WAITING = (TaskState.NEW, TaskState.PENDING)
# a task with a node in one of these counts there (spread, resources, ports)
_ON_NODE = (TaskState.ASSIGNED, TaskState.ACCEPTED, TaskState.PREPARING, TaskState.STARTING, TaskState.RUNNING)
RETRY_UNPLACEABLE = 10.0  # seconds: a service that fit nowhere is tried again at least this often


def waiting_tasks(snap: Snapshot) -> list[Task]:
    """Tasks the scheduler may place: from the state index, no scan."""
    return [t for t in snap.tasks_in(*_WAITING) if t.desired_state == DESIRED_RUNNING]


def plan_ops(snap: Snapshot, now: float, unplaceable: Mapping[str, str] | None = None) -> list[Op]:
    """The scheduler's transaction (see :func:`plan_and_learn`)."""
    return plan_and_learn(snap, now, unplaceable)[0]


def plan_and_learn(snap: Snapshot, now: float, unplaceable: Mapping[str, str] | None = None,
                   waiting: list[Task] | None = None) -> tuple[list[Op], dict[str, str]]:
    """The scheduler's transaction, and the replicated services none of
    whose waiting tasks fit anywhere (id -> reason). ``unplaceable``: service id -> the
    reason its tasks fit nowhere on an earlier pass, when nothing that could
    change that has happened since: its waiting tasks get that reason
    without the filters running again (100,000 pending tasks cost a dict
    lookup each, not a pipeline each). ``waiting``: :func:`waiting_tasks`
    of ``snap``, if the caller has it."""
    unplaceable = unplaceable or {}
    waiting = waiting_tasks(snap) if waiting is None else waiting
    if not waiting:
        # nothing to place or explain: the pipeline below would still count
        # every task on a node (~0.4 s a look at 100,000 tasks, every
        # second, on a cluster at rest)
        return [], {}
    on_nodes = snap.tasks_in(*_ON_NODE)
    services = {s.id: s for s in snap.services()}
    ops: list[Op] = []
    # depends_on: waiting tasks of services whose dependencies are not up stay out
    held = blocked_services(services, on_nodes + snap.tasks_in(TaskState.COMPLETE))
    todo = []
    for t in waiting:
        reason = held.get(t.service_id) or (None if t.node_id else unplaceable.get(t.service_id))
        if reason is None:
            todo.append(t)
        elif t.message != reason:
            ops.append(["patch", "task", t.id, {"message": reason}])
    plan = schedule(snap.nodes(), services, todo + on_nodes, now=now)
    by_id = {t.id: t for t in todo}
    for a in plan.assignments:
        ops.append(["expect", "task", a.task_id, "node_id", by_id[a.task_id].node_id])
        ops.append(["expect", "task", a.task_id, "state", by_id[a.task_id].state.value])
        ops.append(["advance", a.task_id, "assigned", {
            "node_id": a.node_id, "message": "scheduled", "state_since": now,
        }])
    learned: dict[str, str] = {}
    for task_id, reason in plan.unplaced.items():
        task = by_id[task_id]
        if task.message != reason:
            ops.append(["patch", "task", task_id, {"message": reason}])
        if not task.node_id and reason.startswith("no suitable node"):
            learned[task.service_id] = reason
    for a in plan.assignments:
        learned.pop(by_id[a.task_id].service_id, None)
    return ops, learned


def next_wakeup(snap: Snapshot, now: float, most: float = 1.0, waiting: list[Task] | None = None) -> float:
    """Seconds until the scheduler must look again without a store change:
    when the first delayed restart (``Task.not_before``) comes due.
    ``waiting``: :func:`waiting_tasks` of ``snap``, if the caller has it."""
    waiting = waiting_tasks(snap) if waiting is None else waiting
    due = [t.not_before - now for t in waiting if t.not_before > now and not t.node_id]
    return max(0.01, min([most, *due]))


class Scheduler(StoreLoop):
    """The leader's loop around :func:`plan_ops`; it also wakes when the
    first delayed restart comes due.

    It remembers the replicated services whose waiting tasks fit nowhere,
    and skips their filters until something that could make room changes
    (a node, a task on a node, the service, the cluster) or
    :data:`RETRY_UNPLACEABLE` seconds pass."""

    name = "scheduler"

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self._seen = -1
        self._unplaceable: dict[str, str] = {}
        self._retry_at = 0.0

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        self._forget_unplaceable(snapshot, now)
        # listed once for both: each listing of 100,000 pending tasks was
        # 0.25 s of the planning thread, the GIL the loop waits for
        waiting = waiting_tasks(snapshot)
        ops, learned = plan_and_learn(snapshot, now, self._unplaceable, waiting)
        self._unplaceable.update(learned)
        self._seen = snapshot.index
        return chunked(ops), next_wakeup(snapshot, now, waiting=waiting)

    def _forget_unplaceable(self, snap: Snapshot, now: float) -> None:
        changed = snap.changed_since(self._seen)
        if changed is None or now >= self._retry_at or any(
                kind in ("node", "task.node", "cluster", "network") for kind, _ in changed):
            self._unplaceable = {}
            self._retry_at = now + RETRY_UNPLACEABLE
            return
        for kind, oid in changed:
            if kind == "service":
                self._unplaceable.pop(oid, None)
