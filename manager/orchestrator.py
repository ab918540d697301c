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

import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyswarm.models import (
    ContainerSpec,
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
from .loop import FULL_PASS_EVERY, Plan, StoreLoop, chunked, next_full_pass, touched_services
from .store import Op, Snapshot



_NO_SPEC = ContainerSpec(image="")


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


_SPEC_DICTS: dict[tuple[str, int], dict[str, Any]] = {}


def task_data(task: Task, service: Service) -> dict[str, Any]:
    """``task.to_dict()`` for a new task of ``service``, sharing one spec
    dict among the service version's tasks (the store never mutates a
    stored dict in place): converting the same container spec for each of
    100,000 new tasks was most of the orchestrator's time."""
    key = (service.id, service.version)
    spec = _SPEC_DICTS.get(key)
    if spec is None or task.spec != service.spec.container:
        if task.spec != service.spec.container:
            return task.to_dict()
        if len(_SPEC_DICTS) > 10_000:
            _SPEC_DICTS.clear()
        spec = _SPEC_DICTS[key] = service.spec.container.to_dict()
    data = dataclasses.replace(task, spec=_NO_SPEC).to_dict()
    data["spec"] = spec
    return data


def _shutdown(task: Task, now: float) -> list[Op]:
    """Stop a task: desired shutdown; a task that never reached a node ends here."""
    ops: list[Op] = [["patch", "task", task.id, {"desired_state": DESIRED_SHUTDOWN}]]
    if not task.node_id and not task.state.terminal:
        ops.append(["advance", task.id, TaskState.SHUTDOWN.value,
                    {"message": "shutdown before it was scheduled", "state_since": now}])
    return ops


def _reconcile_slot(service: Service, slot: int, tasks: list[Task], now: float, node_id: str = "",
                    nodes: Mapping[str, Node] | None = None, budget: Budget | None = None) -> list[Op]:
    """One replica slot (or one node of a global service): at most one live
    task, refilled per :mod:`.healing` (lost nodes, restart policy, drain)."""
    nodes = nodes or {}
    if len(tasks) == 1:  # the common case, cheaply: one live task of this version, staying
        t = tasks[0]
        if (t.desired_state == DESIRED_RUNNING and not t.state.terminal and t.spec_version == service.version
                and not (not node_id and healing.draining(t, nodes))):
            return []
    ops: list[Op] = []
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
    if any(t.node_id and not t.holds_slot and not t.state.terminal for t in tasks) or \
            any(t.node_id and not keep_leaving for t in leaving):
        # a task of this slot was told to stop and has not yet (a scale to 0
        # and back, a drain, a task its node has not heard stop: the soak's
        # node cut off meanwhile ran it beside the refill). The refill waits
        # for its stop, or for its node to be lost (healing.lost_reason).
        return ops
    if leaving:
        terms: healing.Replacement | None = healing.Replacement(restarts=tuple(leaving[0].restarts))
    else:
        terms = healing.replacement(service, [t for t in tasks if not t.holds_slot], now)
    if terms is None or budget is not None and not budget.take():
        return ops
    task = new_task(service, slot, now, node_id)
    task.not_before = terms.not_before
    task.restarts = list(terms.restarts)
    task.message = terms.message
    ops.append(["put", "task", task.id, task_data(task, service)])
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


def _reap(group: list[Task], now: float) -> list[Op]:
    """Swarm's task reaper, for a slot (or global node) that no longer
    exists: live tasks are stopped, and every task is removed once it is
    shut down, with no history kept. A task that never reached a node goes
    at once. Without this, scaling 100,000 -> 3 left 99,997 dead tasks in
    the store for good."""
    ops: list[Op] = []
    for t in group:
        if not t.node_id or t.state.terminal and t.desired_state != DESIRED_RUNNING:
            ops.append(["delete", "task", t.id])
        elif t.holds_slot or t.state.terminal:
            ops += _shutdown(t, now)
    return ops


@dataclass
class Budget:
    """How many tasks one pass may create: a scale to 100,000 becomes many
    bounded transactions rather than one 100 MB Raft entry."""

    left: int | None = None  # None: no limit
    spent_out: bool = False
    # service id -> the first slot a pass could not fill for want of budget
    resume: dict[str, int] = field(default_factory=dict)

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            self.spent_out = True
            return False
        self.left -= 1
        return True


def reconcile(snapshot: Snapshot, now: float, only: Iterable[str] | None = None,
              budget: Budget | None = None, led_since: float = 0.0) -> list[Op]:
    """The operations that make the tasks match the services (pure).

    ``only``: the ids of the services to look at (the ones a change
    touched); None looks at all. ``budget`` bounds the tasks created.
    ``led_since``: when this leader took over (:func:`healing.lost_at`)."""
    cluster = snapshot.cluster
    history = cluster.task_history_limit if cluster else 5
    budget = budget or Budget()
    ops: list[Op] = []
    for sid in snapshot.service_ids_with_tasks():
        if snapshot.service(sid) is None:
            # its service is gone: so is its container
            ops += [["delete", "task", t.id] for t in snapshot.tasks_of(sid)]
    nodes = snapshot.nodes()
    by_id = {n.id: n for n in nodes}
    wanted = snapshot.services() if only is None else [s for s in map(snapshot.service, only) if s is not None]
    for service in wanted:
        tasks = []
        for t in snapshot.tasks_of(service.id):
            reason = healing.lost_reason(t, by_id, now, led_since)
            if reason is not None:
                ops += healing.orphan(t, reason, now)
                t = healing.orphaned(t)  # the rest of the pass sees it as history
            tasks.append(t)
        ops += _reconcile_service(service, tasks, nodes, now, history, budget)
    return ops


def _reconcile_service(service: Service, tasks: Iterable[Task], nodes: list[Node], now: float,
                       history: int, budget: Budget) -> list[Op]:
    ops: list[Op] = []
    groups: dict[int | str, list[Task]] = defaultdict(list)
    global_mode = service.spec.mode == "global"
    for t in tasks:
        groups[t.node_id if global_mode else t.slot].append(t)
    by_id = {n.id: n for n in nodes}
    if global_mode:
        wanted: set[int | str] = {n.id for n in nodes if _eligible_for_global(n)}
        for key in sorted(wanted, key=str):
            ops += _reconcile_slot(service, 0, groups.get(key, []), now, node_id=str(key), nodes=by_id,
                                   budget=budget)
    else:
        wanted = set(range(1, service.spec.replicas + 1))
        for key in sorted(groups.keys() & wanted, key=int):
            ops += _reconcile_slot(service, int(key), groups[key], now, nodes=by_id, budget=budget)
        # empty slots: only what the budget allows is even looked at
        for slot in range(1, service.spec.replicas + 1):
            if slot not in groups:
                ops += _reconcile_slot(service, slot, [], now, nodes=by_id, budget=budget)
                if budget.spent_out:
                    budget.resume[service.id] = slot
                    break
    for key, group in groups.items():
        if key in wanted:
            ops += _prune_history(group, history)
        elif global_mode and key in by_id:
            # the node is still there (down, drained): its tasks stop, its history stays
            for t in group:
                if t.holds_slot:
                    ops += _shutdown(t, now)
            ops += _prune_history(group, history)
        else:
            ops += _reap(group, now)
    return ops


NEW_TASKS_PER_PASS = 2000


def reconcile_slots(snapshot: Snapshot, now: float, slots: Mapping[str, Iterable[int]],
                    budget: Budget, resume: Mapping[str, int] | None = None, led_since: float = 0.0) -> list[Op]:
    """Like :func:`reconcile`, for some slots of replicated services only:
    the slots a change touched, and each service's slots from where an
    earlier pass ran out of budget (``resume``). A pass then costs what
    changed: creating 100,000 tasks 5,000 at a time no longer looks at every
    task of the service 20 times."""
    cluster = snapshot.cluster
    history = cluster.task_history_limit if cluster else 5
    nodes = {n.id: n for n in snapshot.nodes()}
    ops: list[Op] = []
    for sid, wanted in [*slots.items(), *((sid, ()) for sid in (resume or {}) if sid not in slots)]:
        service = snapshot.service(sid)
        if service is None or service.spec.mode == "global":
            continue
        keys = set(wanted)
        start = (resume or {}).get(sid)
        todo = sorted(keys)
        if start is not None:
            todo = sorted(keys | set(range(start, service.spec.replicas + 1)))
        for slot in todo:
            if slot not in keys and budget.spent_out:
                break
            group = []
            for t in snapshot.tasks_in_slot(sid, slot):
                reason = healing.lost_reason(t, nodes, now, led_since)
                if reason is not None:
                    ops += healing.orphan(t, reason, now)
                    t = healing.orphaned(t)
                group.append(t)
            if 1 <= slot <= service.spec.replicas:
                ops += _reconcile_slot(service, slot, group, now, nodes=nodes, budget=budget)
                ops += _prune_history(group, history)
                if budget.spent_out and sid not in budget.resume:
                    budget.resume[sid] = slot
            else:
                ops += _reap(group, now)
    return ops


class Orchestrator(StoreLoop):
    """The leader's loop around :func:`reconcile`: whole services when a
    service, a node its tasks are on or a global service's task changed;
    single slots when only tasks of those slots changed (see
    :func:`reconcile_slots`); everything every :data:`FULL_PASS_EVERY`
    seconds. A pass creates at most :data:`NEW_TASKS_PER_PASS` tasks, then
    the next one goes on at once from the slot where it stopped."""

    name = "orchestrator"

    def __init__(self, store: Any, led_since: float = 0.0) -> None:
        super().__init__(store)
        self.led_since = led_since  # when this leader took over: no node's grace counts from earlier
        self._seen = -1
        self._full_at = 0.0
        self._resume: dict[str, int] = {}
        # down nodes whose tasks are not lost yet -> when they will be
        # (healing.lost_at): nothing in the store changes then, so the loop
        # wakes for it and looks at those nodes' services
        self._lost_due: dict[str, float] = {}

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        budget = Budget(NEW_TASKS_PER_PASS)
        changed = None if now >= self._full_at else snapshot.changed_since(self._seen)
        due_now = {nid for nid, due in self._lost_due.items() if now >= due}
        self._lost_due = {}
        for node in snapshot.nodes():
            due = healing.lost_at(node, self.led_since)
            if due is not None and due > now:
                self._lost_due[node.id] = due
        if changed is not None and due_now:
            changed = set(changed) | {("node", nid) for nid in due_now}
        if changed is None:
            started = time.monotonic()
            ops = reconcile(snapshot, now, None, budget, self.led_since)
            self._full_at = next_full_pass(now, started)
        else:
            whole, slots = touched_slots(snapshot, changed)
            ops = reconcile(snapshot, now, whole, budget, self.led_since)
            resume = {sid: slot for sid, slot in self._resume.items() if sid not in whole}
            ops += reconcile_slots(snapshot, now, {sid: s for sid, s in slots.items() if sid not in whole},
                                   budget, resume, self.led_since)
        self._resume = budget.resume
        self._seen = snapshot.index
        wait = FULL_PASS_EVERY
        if self._lost_due:
            wait = max(0.0, min(wait, min(self._lost_due.values()) - now))
        return chunked(ops), 0.0 if budget.spent_out else wait


def touched_slots(snapshot: Snapshot, changed: set[tuple[str, str]]) -> tuple[set[str], dict[str, set[int]]]:
    """From a change set: the services to look at whole, and per service
    the replica slots whose tasks changed."""
    found = touched_services(snapshot, changed)
    whole = found if found is not None else {s.id for s in snapshot.services()}
    slots: dict[str, set[int]] = defaultdict(set)
    for kind, oid in changed:
        if kind == "task.slot":
            sid, _, slot = oid.rpartition("/")
            slots[sid].add(int(slot))
    return whole, slots
