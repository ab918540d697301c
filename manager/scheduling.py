"""The leader's scheduler loop around the pure :func:`.scheduler.schedule`.

It takes a snapshot, asks for a plan and commits every assignment in one
transaction, each guarded by a precondition that the task is still unplaced
(the re-check against the store: if anything moved meanwhile, the
transaction aborts and the next round plans again from fresh state). Tasks
that fit nowhere keep their ``no suitable node (…)`` reason as the task's
message, which ``service ps`` shows.
"""

from __future__ import annotations


from .dependencies import blocked_services
from .scheduler import is_waiting, schedule
from .loop import Plan, StoreLoop
from .store import Op, Snapshot



def plan_ops(snap: Snapshot, now: float) -> list[Op]:
    tasks = snap.tasks()
    services = {s.id: s for s in snap.services()}
    # depends_on: waiting tasks of services whose dependencies are not up stay out
    held = blocked_services(services, tasks)
    gated = {t.id: held[t.service_id] for t in tasks if t.service_id in held and is_waiting(t)}
    plan = schedule(snap.nodes(), services, [t for t in tasks if t.id not in gated], now=now)
    by_id = {t.id: t for t in tasks}
    ops: list[Op] = []
    for task_id, reason in gated.items():
        if by_id[task_id].message != reason:
            ops.append(["patch", "task", task_id, {"message": reason}])
    for a in plan.assignments:
        ops.append(["expect", "task", a.task_id, "node_id", by_id[a.task_id].node_id])
        ops.append(["expect", "task", a.task_id, "state", by_id[a.task_id].state.value])
        ops.append(["advance", a.task_id, "assigned", {
            "node_id": a.node_id, "message": "scheduled", "state_since": now,
        }])
    for task_id, reason in plan.unplaced.items():
        if by_id[task_id].message != reason:
            ops.append(["patch", "task", task_id, {"message": reason}])
    return ops


def next_wakeup(snap: Snapshot, now: float, most: float = 1.0) -> float:
    """Seconds until the scheduler must look again without a store change:
    when the first delayed restart (``Task.not_before``) comes due."""
    due = [float(t["not_before"]) - now for t in snap.raw["task"].values()
           if t.get("not_before", 0) > now and not t.get("node_id")]
    return max(0.01, min([most, *due]))


class Scheduler(StoreLoop):
    """The leader's loop around :func:`plan_ops`; it also wakes when the
    first delayed restart comes due."""

    name = "scheduler"

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        ops = plan_ops(snapshot, now)
        return ([ops] if ops else []), next_wakeup(snapshot, now)
