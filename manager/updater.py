"""The updater: rolling updates and rollbacks, on the leader only.

When a service's spec changes (``stack deploy``, ``service update``,
``service rollback``) its ``version`` goes up and every live task still at an
older version is *outdated*. The orchestrator leaves outdated tasks alone;
this component replaces them at the pace the service's ``update_config``
(``rollback_config`` during a rollback) sets, like Swarm's updater:

* ``parallelism`` slots are replaced at a time (0: all at once); a slot is
  busy from the moment its replacement is started until the new task runs,
  and for ``delay`` after that;
* ``order: stop-first`` (the default) stops the old task first: the new task
  is written with desired state ``ready`` (held: not scheduled, not started)
  and released once the old one has stopped; ``start-first`` starts the new
  task beside the old one and stops the old one only when the new one is
  ``running`` (which, with a healthcheck, means healthy). Only then may a
  slot have two live tasks; the orchestrator keeps such a pair;
* a task this update created that ends by itself (failed, rejected,
  completed) while the update runs is a failure; when failures exceed
  ``max_failure_ratio`` of the slots to update, ``failure_action`` decides:
  ``pause`` stops starting new slots, ``continue`` goes on, ``rollback``
  puts the previous spec back (a new version, replaced with
  ``rollback_config``). A rollback is never rolled back: it pauses;
* the update is ``completed`` once every slot runs the new version and
  ``monitor`` has passed since the last new task started running.

A task whose container spec already equals the service's (a rollback's
untouched slots, a change of labels or of update_config itself) is not
restarted: its ``spec_version`` is simply moved up, as Swarm keeps tasks that
are not "dirty". ``service update --force`` replaces them anyway.

Everything the updater needs survives a failover in the store: the update's
progress is read from the tasks (versions, states, timestamps) and
``Service.update_status`` (state, message, started_at, completed_at, plus the
version it is for, the number of slots to update and ``force``). So the loop
is one pure function, :func:`plan`, from a snapshot and the time to
operations, committed one service per transaction.

One simplification against Swarm: Swarm counts a failure only when the task
ends within ``monitor`` of *its own* start; here any self-ended task of the
update counts while the update is in progress (and the update stays in
progress until ``monitor`` after its last task started).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyswarm.compose.units import parse_duration
from pyswarm.models import (
    DESIRED_READY,
    DESIRED_RUNNING,
    DESIRED_SHUTDOWN,
    Node,
    NodeAvailability,
    NodeStatus,
    Service,
    Task,
    TaskState,
    UpdateState,
)

from .filters import ConstraintError, parse_constraints
from .orchestrator import new_task, task_data
from .loop import Plan as LoopPlan
from .loop import StoreLoop, next_full_pass, touched_services
from .store import Op, Snapshot

log = logging.getLogger(__name__)

UPDATING = UpdateState.UPDATING
PAUSED = UpdateState.PAUSED
COMPLETED = UpdateState.COMPLETED
ROLLBACK_STARTED = UpdateState.ROLLBACK_STARTED
ROLLBACK_PAUSED = UpdateState.ROLLBACK_PAUSED
ROLLBACK_COMPLETED = UpdateState.ROLLBACK_COMPLETED
ACTIVE_STATES = (UPDATING, ROLLBACK_STARTED)
PAUSED_STATES = (PAUSED, ROLLBACK_PAUSED)
DONE_STATES = (COMPLETED, ROLLBACK_COMPLETED)

# how a task can end by itself (shutdown and orphaned are the cluster's doing)
_SELF_ENDED = (TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED)


@dataclass(frozen=True)
class UpdateConfig:
    """``update_config`` / ``rollback_config`` with Swarm's defaults."""

    parallelism: int = 1  # 0: every slot at once
    delay: float = 0.0
    order: str = "stop-first"
    failure_action: str = "pause"  # pause | continue | rollback (not for rollbacks)
    monitor: float = 5.0
    max_failure_ratio: float = 0.0

    @classmethod
    def of(cls, service: Service, rollback: bool) -> UpdateConfig:
        """The config that applies; values compose would have refused read
        as the default, so a bad value in the store never stops an update."""
        raw = service.spec.deploy.get("rollback_config" if rollback else "update_config") or {}
        if not isinstance(raw, Mapping):
            raw = {}
        d = cls()
        actions = ("pause", "continue") if rollback else ("pause", "continue", "rollback")
        return cls(
            parallelism=_number(raw.get("parallelism"), d.parallelism, int),
            delay=_seconds(raw.get("delay"), d.delay),
            order=str(raw.get("order")) if raw.get("order") in ("stop-first", "start-first") else d.order,
            failure_action=str(raw.get("failure_action")) if raw.get("failure_action") in actions else d.failure_action,
            monitor=_seconds(raw.get("monitor"), d.monitor),
            max_failure_ratio=min(_number(raw.get("max_failure_ratio"), d.max_failure_ratio, float), 1.0),
        )


def _number(value: Any, default: Any, kind: type) -> Any:
    try:
        out = kind(value)
    except (TypeError, ValueError):
        return default
    return out if out >= 0 and math.isfinite(out) else default


def _seconds(value: Any, default: float) -> float:
    if value in (None, ""):
        return default
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError):
        return default
    return seconds if math.isfinite(seconds) else default


@dataclass
class Plan:
    """What to commit now (one list of operations per service, each its own
    transaction) and when to look again even if the store does not change
    (a ``delay`` or ``monitor`` running out)."""

    commits: list[list[Op]] = field(default_factory=list)
    wake_at: float = math.inf


def _shutdown(task: Task, now: float, why: str) -> list[Op]:
    ops: list[Op] = [
        ["expect", "task", task.id, "desired_state", task.desired_state],
        ["patch", "task", task.id, {"desired_state": DESIRED_SHUTDOWN}],
    ]
    if not task.node_id:  # never reached a node: it ends here
        ops.append(["advance", task.id, TaskState.SHUTDOWN.value, {"message": why, "state_since": now}])
    return ops


def _gone(task: Task, nodes: Mapping[str, Node]) -> bool:
    """A task that no longer holds anything: ended, or on a node that is down
    or gone (the orchestrator orphans those)."""
    if task.state.terminal:
        return True
    if not task.node_id:
        return task.desired_state != DESIRED_RUNNING
    node = nodes.get(task.node_id)
    return node is None or node.status == NodeStatus.DOWN


class _Service:
    """One service's planning pass (the state of one :func:`plan_service` call)."""

    def __init__(self, service: Service, tasks: list[Task], nodes: Mapping[str, Node], now: float) -> None:
        self.service = service
        self.nodes = nodes
        self.now = now
        self.version = service.version
        self.status: dict[str, Any] = dict(service.update_status)
        self.ops: list[Op] = []
        self.wake_at = math.inf
        self.global_mode = service.spec.mode == "global"
        self.groups: dict[int | str, list[Task]] = defaultdict(list)
        for t in tasks:
            self.groups[t.node_id if self.global_mode else t.slot].append(t)
        try:
            self.constraints = parse_constraints(service.spec.constraints)
        except ConstraintError:
            self.constraints = []

    # -- which slots need what -------------------------------------------------------

    def wanted(self, key: int | str) -> bool:
        if not self.global_mode:
            return isinstance(key, int) and 1 <= key <= self.service.spec.replicas
        node = self.nodes.get(str(key))
        return (node is not None and node.status != NodeStatus.DOWN
                and node.availability != NodeAvailability.DRAIN)

    def clean(self, task: Task) -> bool:
        """An outdated task that already runs what the new version asks for."""
        if self.status.get("force") and self.status.get("version") == self.version:
            return False
        if task.desired_state != DESIRED_RUNNING or task.spec != self.service.spec.container:
            return False
        node = self.nodes.get(task.node_id) if task.node_id else None
        return node is None or all(c.matches(node) for c in self.constraints)

    def adopt_clean(self) -> None:
        for group in self.groups.values():
            for i, t in enumerate(group):
                if t.holds_slot and t.spec_version < self.version and self.clean(t):
                    self.ops.append(["expect", "task", t.id, "spec_version", t.spec_version])
                    self.ops.append(["patch", "task", t.id, {"spec_version": self.version}])
                    # a copy: the snapshot's objects are shared and read-only
                    group[i] = dataclasses.replace(t, spec_version=self.version)

    def ours(self, t: Task) -> bool:
        """A task this update made (or the orchestrator made for it, refilling a slot)."""
        if self.status.get("version") != self.version:
            return False
        return t.spec_version == self.version and t.created_at >= float(self.status.get("started_at") or 0)

    # -- the pass ------------------------------------------------------------------------

    def run(self) -> None:
        self.adopt_clean()
        dirty: list[int | str] = []
        in_flight: list[int | str] = []
        replacing = 0  # slots with an outdated task still to replace
        for key in sorted(self.groups, key=str if self.global_mode else int):
            group = self.groups[key]
            live = [t for t in group if t.holds_slot]
            outdated = [t for t in live if t.spec_version != self.version]
            current = [t for t in live if t.spec_version == self.version]
            # a held replacement of an older version never started: drop it
            for t in [t for t in outdated if t.desired_state == DESIRED_READY]:
                self.ops += _shutdown(t, self.now, "replaced by a newer version before it started")
                outdated.remove(t)
            if not self.wanted(key) or not outdated and not current:
                continue
            held = [t for t in current if t.desired_state == DESIRED_READY]
            if held:
                in_flight.append(key)
                replacing += 1
                stopping = [t for t in group if t.spec_version != self.version and not _gone(t, self.nodes)]
                if not stopping:
                    for t in held:
                        self.ops.append(["expect", "task", t.id, "desired_state", DESIRED_READY])
                        self.ops.append(["patch", "task", t.id, {
                            "desired_state": DESIRED_RUNNING, "message": "pending task scheduling",
                        }])
                continue
            if outdated and current:  # start-first in flight
                in_flight.append(key)
                replacing += 1
                if any(t.state == TaskState.RUNNING for t in current):
                    for t in outdated:
                        self.ops += _shutdown(t, self.now, "replaced by the update")
                continue
            if current:
                if any(t.state.rank < TaskState.RUNNING.rank and self.ours(t) for t in current):
                    in_flight.append(key)
                continue
            dirty.append(key)
            replacing += 1
        self.decide(dirty, in_flight, replacing)

    def decide(self, dirty: list[int | str], in_flight: list[int | str], replacing: int) -> None:
        status = self.status
        state = str(status.get("state", ""))
        if status.get("version") != self.version:
            if not replacing:
                return  # nothing to replace: not an update (or already settled)
            status = self.status = {
                "state": UPDATING, "message": "update in progress", "started_at": self.now,
                "completed_at": None, "version": self.version, "dirty": replacing,
            }
            state = UPDATING
            self.write_status()
        elif "dirty" not in status:  # a rollback or forced update the API started
            status["dirty"] = replacing
            self.write_status()
        if state in DONE_STATES:
            return
        rollback = state.startswith("rollback")
        config = UpdateConfig.of(self.service, rollback)
        mine = [t for g in self.groups.values() for t in g if self.ours(t)]
        failed = sorted((t for t in mine if t.state in _SELF_ENDED), key=lambda t: t.state_since)
        # a slot whose new task failed is not tried again in this update
        tried = {(t.node_id if self.global_mode else t.slot) for t in failed}
        dirty = [k for k in dirty if k not in tried]
        in_flight = [k for k in in_flight if k not in tried]
        if state in ACTIVE_STATES and failed and len(failed) / max(int(status.get("dirty") or 1), 1) > config.max_failure_ratio:
            if self.fail(config, failed[-1], rollback):
                return
        if state in PAUSED_STATES:
            return
        # start slots while workers are free
        busy = len(in_flight)
        if config.delay > 0:
            for t in mine:
                if t.state == TaskState.RUNNING and t.desired_state == DESIRED_RUNNING:
                    free_at = t.state_since + config.delay
                    if free_at > self.now:
                        busy += 1
                        self.wake_at = min(self.wake_at, free_at)
        free = len(dirty) if config.parallelism == 0 else max(config.parallelism - busy, 0)
        for key in dirty[:free]:
            self.start_slot(key, config)
        if dirty or in_flight:
            return
        last = max((t.state_since for t in mine if t.state == TaskState.RUNNING), default=-math.inf)
        if last + config.monitor > self.now:
            self.wake_at = min(self.wake_at, last + config.monitor)
            return
        status.update(state=ROLLBACK_COMPLETED if rollback else COMPLETED, completed_at=self.now,
                      message="rollback completed" if rollback else "update completed")
        self.write_status()

    def fail(self, config: UpdateConfig, task: Task, rollback: bool) -> bool:
        """Apply failure_action; True when the update stops here."""
        what = f"failure or early termination of task {task.id}"
        if config.failure_action == "continue":
            return False
        previous = self.service.previous_spec
        if config.failure_action == "rollback" and not rollback and previous is not None:
            self.ops.append(["expect", "service", self.service.id, "version", self.version])
            self.ops.append(["patch", "service", self.service.id, {
                "spec": previous.to_dict(), "previous_spec": self.service.spec.to_dict(),
                "version": self.version + 1, "updated_at": self.now,
                "update_status": {
                    "state": ROLLBACK_STARTED, "message": f"update rolled back due to {what}",
                    "started_at": self.now, "completed_at": None, "version": self.version + 1,
                },
            }])
            return True
        message = f"{'rollback' if rollback else 'update'} paused due to {what}"
        if config.failure_action == "rollback" and not rollback:
            message += " (no previous spec to roll back to)"
        self.status.update(state=ROLLBACK_PAUSED if rollback else PAUSED, message=message)
        self.write_status()
        return True

    def start_slot(self, key: int | str, config: UpdateConfig) -> None:
        group = self.groups[key]
        outdated = [t for t in group if t.holds_slot and t.spec_version != self.version]
        slot = 0 if self.global_mode else int(key)
        node_id = str(key) if self.global_mode else ""
        task = new_task(self.service, slot, self.now, node_id)
        if config.order == "stop-first":
            for t in outdated:
                self.ops += _shutdown(t, self.now, "stopped by the update")
            if any(t.node_id for t in outdated):
                task.desired_state = DESIRED_READY
                task.message = "waiting for the old task to stop (stop-first update)"
        self.ops.append(["put", "task", task.id, task_data(task, self.service)])

    def write_status(self) -> None:
        self.ops.append(["patch", "service", self.service.id, {"update_status": dict(self.status)}])


def plan_service(service: Service, tasks: list[Task], nodes: Mapping[str, Node], now: float) -> tuple[list[Op], float]:
    """One service's operations and when to look again (pure)."""
    if (str(service.update_status.get("state", "")) not in _IN_PROGRESS
            and all(t.spec_version == service.version for t in tasks)):
        return [], math.inf  # nothing outdated, no update going on: the common case, cheaply
    s = _Service(service, tasks, nodes, now)
    s.run()
    return s.ops, s.wake_at


def plan(snapshot: Snapshot, now: float, only: set[str] | None = None) -> Plan:
    """Every service's update operations (pure): see the module docstring.
    ``only``: the ids of the services to look at (None: all)."""
    nodes = {n.id: n for n in snapshot.nodes()}
    out = Plan()
    services = snapshot.services() if only is None else [s for s in map(snapshot.service, only) if s is not None]
    for service in sorted(services, key=lambda s: s.id):
        ops, wake_at = plan_service(service, snapshot.tasks_of(service.id), nodes, now)
        if ops:
            out.commits.append(ops)
        out.wake_at = min(out.wake_at, wake_at)
    return out


_TIMED = ("updating", "rollback_started")  # states whose next step may be due by time alone
_IN_PROGRESS = (*_TIMED, "paused", "rollback_paused")


class Updater(StoreLoop):
    """The leader's loop around :func:`plan`: the services a change touched
    and the ones in an update (pauses, monitors are due by time), everything
    every 30 s."""

    name = "updater"

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self._seen = -1
        self._full_at = 0.0

    def plan(self, snapshot: Snapshot, now: float) -> LoopPlan:
        changed = None if now >= self._full_at else snapshot.changed_since(self._seen)
        # tasks become outdated only when their service changes; task changes
        # matter to an update in progress, and those services are looked at
        only = None if changed is None else touched_services(snapshot, changed)
        if only is not None:
            only |= {s.id for s in snapshot.services() if s.update_status.get("state") in _IN_PROGRESS}
        started = time.monotonic()
        result = plan(snapshot, now, only)
        if only is None:
            self._full_at = next_full_pass(now, started)
        self._seen = snapshot.index
        return result.commits, min(max(result.wake_at - now, 0.05), 1.0)
