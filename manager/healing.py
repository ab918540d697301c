"""Healing decisions for the orchestrator: lost tasks, restart policy, drain.

Pure functions of (task, service, nodes, now), called by
:func:`pyswarm.manager.orchestrator.reconcile` for each replica slot (or
global node). Kept apart so the rules — the part that decides whether a
cluster keeps its promises after a fault — read in one place and are tested
one by one.

* **Lost tasks.** A task whose node has been ``down`` (the dispatcher heard
  no heartbeat) for ``protocol.LOST_GRACE`` seconds, or is no longer in the
  store, cannot be relied on: it is marked ``orphaned`` with desired state
  ``shutdown`` and its slot is refilled at once on another node, whatever
  the restart policy says (the task did not fail; its host did). The grace
  is the fence: the node's agent stops its containers by itself before it
  ends (``protocol.AGENT_LEASE``), so a slot never runs twice. When the node comes back, its agent receives an
  assignment without the task and removes the stale container.
* **Restart policy** (``deploy.restart_policy``): a task that ended on its
  own (``complete``, ``failed``, ``rejected``) is replaced when the
  condition allows it (``none``, ``on-failure``, ``any``), at most
  ``max_attempts`` times within ``window`` (ever, without a window), and the
  replacement waits ``delay`` before the scheduler places it (its
  ``not_before``). Restarts are counted per slot and spec version: each new
  task carries the times of the restarts that led to it (``Task.restarts``),
  so the count survives history pruning and leader failover. Tasks the
  cluster itself stopped (scale, drain, update, lost node) are always
  replaced and do not count.
* **Drain.** A replicated task on a node set to ``drain`` is moved: with
  ``update_config.order: start-first`` the replacement is started first and
  the old task stopped once the new one runs; otherwise the old one is
  stopped at once. Global services simply stop on a drained node.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyswarm import protocol
from pyswarm.compose.units import parse_duration
from pyswarm.models import (
    DESIRED_SHUTDOWN,
    Node,
    NodeAvailability,
    NodeStatus,
    Service,
    Task,
    TaskState,
)

Op = list[Any]

# states a task reaches by itself; shutdown and orphaned are the cluster's doing
SELF_ENDED = frozenset({TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED})


@dataclass(frozen=True)
class RestartPolicy:
    condition: str = "any"  # none | on-failure | any
    delay: float = 0.0  # seconds; Swarm's default is 5 s, ours 0 (heal fast)
    max_attempts: int = 0  # 0: no limit
    window: float = 0.0  # seconds; 0: count every restart

    @classmethod
    def of(cls, service: Service) -> RestartPolicy:
        """The service's policy; odd values in the store read as the default
        (compose has already refused them in a stack file)."""
        spec = service.spec
        raw: Mapping[str, Any] = spec.deploy.get("restart_policy") or {}
        condition = str(raw.get("condition") or spec.restart_condition or "any")
        if condition not in ("none", "on-failure", "any"):
            condition = "any"
        try:
            attempts = max(int(raw.get("max_attempts") or 0), 0)
        except (TypeError, ValueError):
            attempts = 0
        return cls(condition, _seconds(raw.get("delay")), attempts, _seconds(raw.get("window")))


def _seconds(value: Any) -> float:
    if value in (None, ""):
        return 0.0
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        return 0.0
    return seconds if math.isfinite(seconds) else 0.0


@dataclass(frozen=True)
class Replacement:
    """What a slot's next task looks like, when there is to be one."""

    not_before: float = 0.0
    restarts: tuple[float, ...] = ()
    message: str = "pending task scheduling"


def down_since(node: Node) -> float:
    """When ``node`` went down (``updated_at`` for a node marked down before
    the field existed)."""
    return node.down_since or node.updated_at


def lost_at(node: Node, led_since: float = 0.0) -> float | None:
    """When the tasks of ``node`` count as lost: :data:`protocol.LOST_GRACE`
    after it went down (None: it is not down). By then its agent has stopped
    their containers by itself (its lease, ``protocol.AGENT_LEASE``, ran
    out), so a replacement never runs beside the old one (fencing).

    ``led_since``: when this leader took over (wall clock); the grace never
    counts from earlier. A ``down_since`` an earlier leader wrote says what
    *it* could reach, and the grace is restarted only by a leader's probe of
    the node's host (manager/dispatcher.py): between a leader's death and the
    next one's first probe nobody restarts it, while the node's lingering
    agent keeps its containers because the managers' hosts still answer
    (worker/fence.py). A new leader elected after such a grace ran out
    orphaned a live host's tasks on its first pass: the likeliest cause of
    session 23's soak doubles on manager1's host (bench/RESULTS.md)."""
    if node.status is not NodeStatus.DOWN:
        return None
    return max(down_since(node), led_since) + protocol.LOST_GRACE


def lost_reason(task: Task, nodes: Mapping[str, Node], now: float, led_since: float = 0.0) -> str | None:
    """Why a non-terminal task on a node can no longer be counted on, or None."""
    if not task.node_id or task.state.terminal:
        return None
    node = nodes.get(task.node_id)
    if node is None:
        return "node left the cluster"
    due = lost_at(node, led_since)
    if due is not None and now >= due:
        return f"node {node.hostname} down" + (f": {node.status_message}" if node.status_message else "")
    return None


def orphan(task: Task, reason: str, now: float) -> list[Op]:
    """Ops that give up a lost task (see :func:`orphaned` for how the rest
    of the pass should see it)."""
    return [
        ["patch", "task", task.id, {"desired_state": DESIRED_SHUTDOWN}],
        ["advance", task.id, TaskState.ORPHANED.value, {"message": reason, "state_since": now}],
    ]


def orphaned(task: Task) -> Task:
    """``task`` as it reads once :func:`orphan` applied: history. A copy:
    the snapshot's objects are shared and read-only."""
    return dataclasses.replace(task, state=TaskState.ORPHANED, desired_state=DESIRED_SHUTDOWN)


def draining(task: Task, nodes: Mapping[str, Node]) -> bool:
    node = nodes.get(task.node_id) if task.node_id else None
    return node is not None and node.availability is NodeAvailability.DRAIN


def start_first(service: Service) -> bool:
    """Whether the service allows a replacement to start before the old task stops."""
    update = service.spec.deploy.get("update_config") or {}
    return isinstance(update, Mapping) and update.get("order") == "start-first"


def keep_order(task: Task) -> tuple[int, float]:
    """Sort key among live tasks of one slot: the furthest along first, then
    the newest. Keeping a running task over a pending one means a duplicate
    (from a race or an old leader) never costs a working replica."""
    return (-task.state.rank, -task.created_at)


def replacement(service: Service, history: list[Task], now: float) -> Replacement | None:
    """Whether a slot with no live task gets a new one, and on what terms.

    ``history``: the slot's tasks that are not live (ended, or stopping
    because the cluster stopped them). The newest one decides: if the
    cluster stopped it, the slot is refilled at once; if it ended by itself,
    the restart policy decides. Deterministic in the tasks' own fields (the
    window is measured back from when the task ended, not from ``now``), so
    every pass — on any leader — reaches the same answer.
    """
    if not history:
        return Replacement()
    last = max(history, key=lambda t: t.created_at)
    carried = tuple(last.restarts) if last.spec_version == service.version else ()
    if last.state not in SELF_ENDED:
        return Replacement(restarts=carried)
    if last.spec_version != service.version:
        return Replacement()
    policy = RestartPolicy.of(service)
    if policy.condition == "none":
        return None
    if policy.condition == "on-failure" and last.state is TaskState.COMPLETE:
        return None
    if policy.max_attempts:
        since = last.state_since - policy.window if policy.window else -math.inf
        if sum(1 for t in carried if t > since) >= policy.max_attempts:
            return None
    keep = max(policy.max_attempts, 1)
    restarts = (carried + (now,))[-keep:]
    if policy.delay > 0:
        return Replacement(now + policy.delay, restarts, f"restarting in {policy.delay:g}s (restart_policy.delay)")
    return Replacement(restarts=restarts)


