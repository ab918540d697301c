"""Feasibility filters for the scheduler: can this node take this task at all?

Shaped after moby/swarmkit's scheduler pipeline: each filter is a small
object that answers one question about one node, and when it says no it says
*why*, as a phrase the scheduler can count and show to the operator
(``insufficient memory on 2 nodes``). Keeping each test separate is what
makes ``no suitable node (…)`` precise, and makes a new rule (host ports,
generic resources, …) one class plus one line in :data:`STATIC_FILTERS` or
:data:`DYNAMIC_FILTERS`.

Ranking (which feasible node is best) lives in ``scheduler.py``, apart from
feasibility, as in Nomad: filters never score, scoring never rejects.

Filters come in two kinds, and the split is what keeps planning fast:

* **static** filters depend only on the node and the service's spec
  (constraints). The scheduler runs them once per service and node, not once
  per task. The ones that do not even look at the service (``node_only``:
  status, availability) run once per plan.
* **dynamic** filters depend on what is already placed on the node
  (reservations, replicas per node, host ports). Their verdict can only go
  from yes to no while a plan is built, never back, because placing tasks
  only consumes capacity; the scheduler relies on that to drop a node from a
  service's candidates for the rest of the plan once a dynamic filter fails.

A reason is a phrase with a ``{nodes}`` placeholder that :func:`explain`
fills with ``1 node`` / ``3 nodes``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from pyswarm.constraints import Constraint, ConstraintError, parse_constraint, parse_constraints, parse_spread, spread_value
from pyswarm.models import ContainerSpec, NodeAvailability, NodeStatus, Node, ServiceSpec

__all__ = ["Constraint", "ConstraintError", "parse_constraint", "parse_constraints", "parse_spread", "spread_value"]




@dataclass(slots=True)
class NodeInfo:
    """A node plus what the plan so far has put on it.

    The scheduler builds one per node from the store's tasks and updates it
    as it assigns, so later decisions in the same plan see earlier ones.
    """

    node: Node
    total: int = 0  # active tasks of every service
    per_service: Counter[str] = field(default_factory=Counter)
    reserved_nano_cpus: int = 0
    reserved_memory_bytes: int = 0
    host_ports: set[tuple[str, int]] = field(default_factory=set)  # (protocol, port) taken

    def add(self, service_id: str, spec: ServiceSpec | None) -> None:
        """Account for one more active task of ``service_id`` on this node."""
        self.total += 1
        self.per_service[service_id] += 1
        if spec is not None:
            self.reserved_nano_cpus += spec.reservations.nano_cpus
            self.reserved_memory_bytes += spec.reservations.memory_bytes
            self.host_ports.update(host_ports(spec.container))


def host_ports(container: ContainerSpec) -> frozenset[tuple[str, int]]:
    """The ``(protocol, port)`` pairs a task of ``spec`` binds on its node's
    own address: ``ports`` entries with ``mode: host`` and a published port
    (in the long syntax compose normalises to; a published range counts
    whole). Ingress ports are the routing mesh's, not one node's."""
    out: set[tuple[str, int]] = set()
    for entry in container.options.get("ports") or ():
        if not isinstance(entry, dict) or entry.get("mode") != "host":
            continue
        published = entry.get("published")
        proto = str(entry.get("protocol") or "tcp")
        if isinstance(published, int) and not isinstance(published, bool):
            out.add((proto, published))
        elif isinstance(published, str):
            lo, _, hi = published.partition("-")
            try:
                first, last = int(lo), int(hi or lo)
            except ValueError:
                continue
            out.update((proto, p) for p in range(first, min(last, 65535) + 1))
    return frozenset(out)


@dataclass(slots=True)
class Job:
    """What the filters need to know about the service being placed,
    prepared once per service (constraints parsed once, not per node)."""

    service_id: str
    spec: ServiceSpec
    constraints: list[Constraint]
    host_ports: frozenset[tuple[str, int]] = frozenset()
    spread: tuple[str, ...] = ()  # placement.preferences, outermost first

    def __post_init__(self) -> None:
        if not self.host_ports:
            self.host_ports = host_ports(self.spec.container)


class Filter(ABC):
    """One feasibility rule. ``check`` returns ``None`` when the node passes,
    otherwise a reason phrase containing ``{nodes}``."""

    static: ClassVar[bool]
    node_only: ClassVar[bool] = False  # verdict ignores the job: run once per plan

    def applies(self, job: Job) -> bool:
        """False when the service asks nothing this filter checks, so the
        scheduler can leave it out of that service's pipeline entirely."""
        return True

    @abstractmethod
    def check(self, job: Job, info: NodeInfo) -> str | None: ...


class ReadyFilter(Filter):
    """Only a node whose agent session is up, and whose engine answers, can
    start anything."""

    static = True
    node_only = True

    def check(self, job: Job, info: NodeInfo) -> str | None:
        if info.node.status is NodeStatus.READY:
            return None
        if info.node.engine_unreachable:
            return "{nodes} with the engine unreachable"
        return "{nodes} down" if info.node.status is NodeStatus.DOWN else "{nodes} not ready"


class AvailabilityFilter(Filter):
    """``pause`` keeps what runs and takes nothing new; ``drain`` takes nothing."""

    static = True
    node_only = True

    def check(self, job: Job, info: NodeInfo) -> str | None:
        if info.node.availability is NodeAvailability.ACTIVE:
            return None
        return "{nodes} not available for new tasks"


class ConstraintFilter(Filter):
    """``placement.constraints``; names the first constraint a node fails."""

    static = True

    def applies(self, job: Job) -> bool:
        return bool(job.constraints)

    def check(self, job: Job, info: NodeInfo) -> str | None:
        for constraint in job.constraints:
            if not constraint.matches(info.node):
                return f"constraint {constraint} not met on {{nodes}}"
        return None


class ResourceFilter(Filter):
    """Reservations against what the node reports, minus what active tasks
    on it already reserve. A node reporting nothing has nothing to give."""

    static = False

    def applies(self, job: Job) -> bool:
        r = job.spec.reservations
        return r.memory_bytes > 0 or r.nano_cpus > 0

    def check(self, job: Job, info: NodeInfo) -> str | None:
        want = job.spec.reservations
        have = info.node.resources
        if want.memory_bytes and info.reserved_memory_bytes + want.memory_bytes > have.memory_bytes:
            return "insufficient memory on {nodes}"
        if want.nano_cpus and info.reserved_nano_cpus + want.nano_cpus > have.nano_cpus:
            return "insufficient cpu on {nodes}"
        return None


class MaxReplicasFilter(Filter):
    """``placement.max_replicas_per_node``."""

    static = False

    def applies(self, job: Job) -> bool:
        return job.spec.max_replicas_per_node > 0

    def check(self, job: Job, info: NodeInfo) -> str | None:
        limit = job.spec.max_replicas_per_node
        if info.per_service[job.service_id] >= limit:
            return f"max replicas per node ({limit}) reached on {{nodes}}"
        return None


class HostPortFilter(Filter):
    """Host-mode published ports: one task a node per port and protocol
    (across services), as the node's own address has only one of each."""

    static = False

    def applies(self, job: Job) -> bool:
        return bool(job.host_ports)

    def check(self, job: Job, info: NodeInfo) -> str | None:
        taken = job.host_ports & info.host_ports
        if taken:
            proto, port = min(taken)
            return f"host port {port}/{proto} in use on {{nodes}}"
        return None


class HostProblemFilter(Filter):
    """What the node's agent reports it cannot do (``Node.problems``,
    pyswarm.protocol.Condition): fail closed. A node that cannot set up
    its container network, or whose agent cannot converge, takes no task;
    one that cannot apply the network firewall takes no task attached to a
    cluster network, whose isolation it could not enforce."""

    static = True
    BLOCKS_ALL = {"network": "container network not set up", "reconcile": "agent cannot converge",
                  "events": "agent cannot watch its engine"}

    def check(self, job: Job, info: NodeInfo) -> str | None:
        problems = info.node.problems
        if not problems:
            return None
        for kind, phrase in self.BLOCKS_ALL.items():
            if kind in problems:
                return f"{phrase} on {{nodes}}"
        if "firewall" in problems and job.spec.networks:
            return "network isolation not enforceable on {nodes}"
        return None


# Order matters only for the explanation: a node is counted under the first
# filter that rejects it. Cheap, likely-to-reject tests come first.
STATIC_FILTERS: tuple[Filter, ...] = (ReadyFilter(), AvailabilityFilter(), HostProblemFilter(), ConstraintFilter())
DYNAMIC_FILTERS: tuple[Filter, ...] = (ResourceFilter(), MaxReplicasFilter(), HostPortFilter())


def first_rejection(filters: tuple[Filter, ...], job: Job, info: NodeInfo) -> str | None:
    """The reason of the first filter that rejects the node, or None."""
    for f in filters:
        reason = f.check(job, info)
        if reason is not None:
            return reason
    return None


def explain(rejections: Counter[str] | dict[str, int]) -> str:
    """``no suitable node (2 nodes down; insufficient memory on 1 node)``.

    Reasons keep the order they were counted in: the scheduler runs the
    static filters one at a time over all nodes (sorted by id) and the
    dynamic ones after, so the text follows the pipeline and is stable.
    """
    parts = []
    for reason, count in rejections.items():
        nodes = "1 node" if count == 1 else f"{count} nodes"
        parts.append(reason.replace("{nodes}", nodes))
    return f"no suitable node ({'; '.join(parts)})" if parts else "no suitable node"
