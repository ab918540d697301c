"""The orchestrator: from each service's desired replicas to tasks.

It runs on the leader only and talks to nobody but the store: it reads a
snapshot, works out the operations that bring the tasks in line with the
services (:func:`reconcile`, a pure function), and commits them. It never
picks a node (that is the scheduler's job) and never touches a container
(the dispatcher's): a task it creates is ``pending`` with no node.

Per replica slot there is at most one *live* task (desired ``running`` and
not terminal). A slot whose task ended is refilled with a new task when the
service's restart condition allows it; the ended task stays as history, the
newest ``task_history_limit`` of them per slot.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from pyswarm.models import (
    DESIRED_RUNNING,
    DESIRED_SHUTDOWN,
    Node,
    NodeAvailability,
    NodeStatus,
    Service,
    Task,
    TaskState,
    new_id,
)

from . import healing
from .loop import Plan, StoreLoop
from .store import Op, Snapshot



def new_task(service: Service, slot: int, now: float, node_id: str = "") -> Task:
    return Task(
        id=new_id(),
        service_id=service.id,
        service_name=service.name,
        slot=slot,
        spec=service.spec.container,
        stack=service.spec.stack,
        spec_version=service.version,
        node_id=node_id,
        desired_state=DESIRED_RUNNING,
        state=TaskState.PENDING,
        message="pending task scheduling",
        created_at=now,
        state_since=now,
    )


def _shutdown(task: Task, now: float) -> list[Op]:
    """Stop a task: desired shutdown; a task that never reached a node ends here."""
    ops: list[Op] = [["patch", "task", task.id, {"desired_state": DESIRED_SHUTDOWN}]]
    if not task.node_id and not task.state.terminal:
        ops.append(["advance", task.id, TaskState.SHUTDOWN.value,
                    {"message": "shutdown before it was scheduled", "state_since": now}])
    return ops


def _reconcile_slot(service: Service, slot: int, tasks: list[Task], now: float, node_id: str = "",
                    nodes: Mapping[str, Node] | None = None) -> list[Op]:
    """One replica slot (or one node of a global service): at most one live
    task, refilled per :mod:`.healing` (lost nodes, restart policy, drain)."""
    ops: list[Op] = []
    nodes = nodes or {}
    # an ended task that is still desired running becomes history
    for t in tasks:
        if t.desired_state == DESIRED_RUNNING and t.state.terminal:
            ops.append(["patch", "task", t.id, {"desired_state": DESIRED_SHUTDOWN}])
    live = [t for t in tasks if t.holds_slot]
    current = [t for t in live if t.spec_version == service.version]
    # outdated tasks are the updater's to replace (manager/updater.py), at the
    # pace update_config sets: a slot keeps one, beside a start-first replacement
    outdated = sorted((t for t in live if t.spec_version != service.version), key=healing.keep_order)
    for t in outdated[1:]:
        ops += _shutdown(t, now)
    # a replicated task on a drained node moves; start-first keeps it until
    # its replacement runs
    leaving = [t for t in current + outdated[:1] if not node_id and healing.draining(t, nodes)]
    outdated = [t for t in outdated[:1] if t not in leaving]
    staying = sorted((t for t in current if t not in leaving), key=healing.keep_order)
    # never two live tasks for one slot: keep the one furthest along
    for t in staying[1:]:
        ops += _shutdown(t, now)
    keep_leaving = healing.start_first(service) and not (staying and staying[0].state == TaskState.RUNNING)
    if not keep_leaving:
        for t in leaving:
            ops += _shutdown(t, now)
    if staying or outdated:
        return ops
    if leaving:
        terms: healing.Replacement | None = healing.Replacement(restarts=tuple(leaving[0].restarts))
    else:
        terms = healing.replacement(service, [t for t in tasks if not t.holds_slot], now)
    if terms is None:
        return ops
    task = new_task(service, slot, now, node_id)
    task.not_before = terms.not_before
    task.restarts = list(terms.restarts)
    task.message = terms.message
    ops.append(["put", "task", task.id, task.to_dict()])
    return ops


def _eligible_for_global(node: Node) -> bool:
    return node.status != NodeStatus.DOWN and node.availability != NodeAvailability.DRAIN


def _prune_history(tasks: list[Task], limit: int) -> list[Op]:
    ended = sorted(
        (t for t in tasks if t.state.terminal and t.desired_state != DESIRED_RUNNING),
        key=lambda t: t.created_at,
        reverse=True,
    )
    return [["delete", "task", t.id] for t in ended[max(limit, 0):]]


def reconcile(snapshot: Snapshot, now: float) -> list[Op]:
    """The operations that make the tasks match the services (pure)."""
    cluster = snapshot.cluster
    history = cluster.task_history_limit if cluster else 5
    services = {s.id: s for s in snapshot.services()}
    by_service: dict[str, list[Task]] = defaultdict(list)
    ops: list[Op] = []
    for task in snapshot.tasks():
        if task.service_id not in services:
            ops.append(["delete", "task", task.id])  # its service is gone: so is its container
        else:
            by_service[task.service_id].append(task)
    nodes = snapshot.nodes()
    by_id = {n.id: n for n in nodes}
    for tasks in by_service.values():
        for t in tasks:
            reason = healing.lost_reason(t, by_id)
            if reason is not None:
                ops += healing.orphan(t, reason, now)  # the task object now reads as history
    for service in services.values():
        ops += _reconcile_service(service, by_service.get(service.id, []), nodes, now, history)
    return ops


def _reconcile_service(service: Service, tasks: Iterable[Task], nodes: list[Node], now: float,
                       history: int) -> list[Op]:
    ops: list[Op] = []
    groups: dict[int | str, list[Task]] = defaultdict(list)
    global_mode = service.spec.mode == "global"
    for t in tasks:
        groups[t.node_id if global_mode else t.slot].append(t)
    by_id = {n.id: n for n in nodes}
    if global_mode:
        wanted: dict[int | str, str] = {n.id: n.id for n in nodes if _eligible_for_global(n)}
        for key in wanted:
            ops += _reconcile_slot(service, 0, groups.get(key, []), now, node_id=str(key), nodes=by_id)
    else:
        wanted = {slot: "" for slot in range(1, service.spec.replicas + 1)}
        for slot in wanted:
            ops += _reconcile_slot(service, int(slot), groups.get(slot, []), now, nodes=by_id)
    for key, group in groups.items():
        if key not in wanted:
            for t in group:
                if t.holds_slot:
                    ops += _shutdown(t, now)
        ops += _prune_history(group, history)
    return ops


class Orchestrator(StoreLoop):
    """The leader's loop around :func:`reconcile`."""

    name = "orchestrator"

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        ops = reconcile(snapshot, now)
        return ([ops] if ops else []), 1.0
