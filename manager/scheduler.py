"""The scheduler: a pure function from a snapshot of the store to a plan.

``schedule(nodes, services, tasks)`` decides which node each waiting task
goes to and, for the ones that fit nowhere, why. It reads nothing else and
writes nothing: the leader's scheduler loop takes a snapshot, calls it,
re-checks the plan against the store and commits the assignments in one
batch. Being pure is what makes it cheap to test exhaustively, to benchmark
alone (issue 5: 10,000 tasks over 1,000 nodes) and to re-run after a
failover without any state to migrate.

The shape follows moby/swarmkit (a pipeline of filters, each able to say why
it rejected a node; see ``filters.py``) and Nomad (feasibility apart from
ranking). Ranking is Swarm's spread: among the nodes that pass, a task goes
to the one running the fewest active tasks of its service, then the fewest
active tasks overall, then the smallest node id, so equal inputs always
give equal plans.

Which tasks are placed:

* a task waits for a node when its state is ``new`` or ``pending``, its
  desired state is ``running`` and it has no ``node_id``;
* a task that already has a ``node_id`` while ``new``/``pending`` (global
  services: the orchestrator writes one per node) is only checked against
  the filters for that node: assigned if it passes, left waiting with the
  reason if not.

What counts as *active* on a node (for spread and for reservations): a task
with a ``node_id``, desired state ``running`` and a non-terminal state, plus
every assignment made earlier in the same plan.

Speed: node-only filters run once per plan, per-service filters once per
service and node, and each replicated service's tasks are placed from a
heap keyed by (service tasks, total tasks, node id). Because placing a task
only ever consumes capacity, a node that fails a dynamic filter stays out
for the rest of that service's batch, so a plan costs about
O(services x nodes + tasks x log nodes).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyswarm.models import (
    DESIRED_RUNNING,
    ContainerSpec,
    Node,
    Service,
    ServiceSpec,
    Task,
    TaskState,
)

from .filters import (
    DYNAMIC_FILTERS,
    STATIC_FILTERS,
    ConstraintError,
    Filter,
    Job,
    NodeInfo,
    explain,
    first_rejection,
    host_ports,
    parse_constraints,
    parse_spread,
    spread_value,
)

__all__ = ["Assignment", "Plan", "schedule", "is_waiting"]

_WAITING = (TaskState.NEW, TaskState.PENDING)
NO_NODES = "no suitable node (no nodes in the cluster)"


@dataclass(frozen=True, slots=True)
class Assignment:
    """Put task ``task_id`` on node ``node_id`` (the loop moves it to ``assigned``)."""

    task_id: str
    node_id: str


@dataclass(slots=True)
class Plan:
    """The scheduler's answer: assignments in a stable order, and for every
    waiting task that fits nowhere, the ``no suitable node (…)`` message to
    store in the task's status so ``service ps`` can show it."""

    assignments: list[Assignment] = field(default_factory=list)
    unplaced: dict[str, str] = field(default_factory=dict)

    def by_node(self) -> dict[str, list[str]]:
        """Task ids per node, for the dispatcher's per-node batches."""
        out: dict[str, list[str]] = defaultdict(list)
        for a in self.assignments:
            out[a.node_id].append(a.task_id)
        return dict(out)


def is_waiting(task: Task) -> bool:
    """True for a task the scheduler should place (or check, if pinned)."""
    return task.state in _WAITING and task.desired_state == DESIRED_RUNNING


class _Planner:
    """The state of one ``schedule`` call; not kept between calls."""

    def __init__(self, nodes: Iterable[Node], services: Mapping[str, Service]) -> None:
        self.services = services
        self.plan = Plan()
        self.infos: dict[str, NodeInfo] = {
            n.id: NodeInfo(n) for n in sorted(nodes, key=lambda n: n.id)
        }
        self.jobs: dict[str, Job | str] = {}  # a str is why the service cannot be placed
        # node-only filters, once for the whole plan
        self.base_rejections: Counter[str] = Counter()
        self.base_candidates = self._run_static(
            [f for f in STATIC_FILTERS if f.node_only], None,
            list(self.infos.values()), self.base_rejections,
        )

    # -- helpers -----------------------------------------------------------

    def count_existing(self, task: Task) -> None:
        info = self.infos.get(task.node_id)
        if info is not None:
            service = self.services.get(task.service_id)
            info.add(task.service_id, service.spec if service is not None else None)
            info.host_ports.update(host_ports(task.spec))  # what the task runs with binds

    def job(self, service_id: str) -> Job | str:
        """The service's placement context, built once; or why there is none."""
        if service_id not in self.jobs:
            service = self.services.get(service_id)
            if service is None:
                self.jobs[service_id] = f"service {service_id} not found"
            else:
                try:
                    constraints = parse_constraints(service.spec.constraints)
                    spread = parse_spread(service.spec.deploy)
                except ConstraintError as exc:
                    self.jobs[service_id] = f"no suitable node ({exc})"
                else:
                    self.jobs[service_id] = Job(service_id, service.spec, constraints, spread=spread)
        return self.jobs[service_id]

    @staticmethod
    def _run_static(
        filters: list[Filter], job: Job | None, candidates: list[NodeInfo], rejections: Counter[str]
    ) -> list[NodeInfo]:
        """Apply filters one at a time over all candidates (swarmkit's
        pipeline), so reasons are counted in pipeline order."""
        for f in filters:
            kept = []
            for info in candidates:
                reason = f.check(job or _NO_JOB, info)
                if reason is None:
                    kept.append(info)
                else:
                    rejections[reason] += 1
            candidates = kept
        return candidates

    def assign(self, task: Task, info: NodeInfo, job: Job) -> None:
        self.plan.assignments.append(Assignment(task.id, info.node.id))
        info.add(job.service_id, job.spec)

    # -- the two kinds of waiting task -------------------------------------

    def check_pinned(self, task: Task) -> None:
        job = self.job(task.service_id)
        if isinstance(job, str):
            self.plan.unplaced[task.id] = job
            return
        info = self.infos.get(task.node_id)
        if info is None:
            self.plan.unplaced[task.id] = f"no suitable node (node {task.node_id} is not in the cluster)"
            return
        filters = tuple(f for f in STATIC_FILTERS + DYNAMIC_FILTERS if f.applies(job))
        reason = first_rejection(filters, job, info)
        if reason is None:
            self.assign(task, info, job)
        else:
            self.plan.unplaced[task.id] = explain({reason: 1})

    def place_service(self, service_id: str, tasks: list[Task]) -> None:
        job = self.job(service_id)
        if isinstance(job, str):
            for t in tasks:
                self.plan.unplaced[t.id] = job
            return
        if not self.infos:
            for t in tasks:
                self.plan.unplaced[t.id] = NO_NODES
            return
        rejections = Counter(self.base_rejections)
        per_service = [f for f in STATIC_FILTERS if not f.node_only and f.applies(job)]
        candidates = self._run_static(per_service, job, self.base_candidates, rejections)
        dynamic = tuple(f for f in DYNAMIC_FILTERS if f.applies(job))
        if job.spread:
            self.place_spread(job, tasks, candidates, dynamic, rejections)
            return

        heap = [(i.per_service[service_id], i.total, i.node.id) for i in candidates]
        heapq.heapify(heap)
        why: str | None = None
        for task in tasks:
            while heap:
                info = self.infos[heap[0][2]]
                reason = first_rejection(dynamic, job, info) if dynamic else None
                if reason is None:
                    break
                heapq.heappop(heap)  # stays infeasible for the rest of this batch
                rejections[reason] += 1
            if not heap:
                why = why or explain(rejections)
                self.plan.unplaced[task.id] = why
                continue
            mine, total, node_id = heap[0]
            self.assign(task, self.infos[node_id], job)
            heapq.heapreplace(heap, (mine + 1, total + 1, node_id))


    def place_spread(self, job: Job, tasks: list[Task], candidates: list[NodeInfo],
                     dynamic: tuple[Filter, ...], rejections: Counter[str]) -> None:
        """``placement.preferences``: Swarm's spread tree. Candidates are
        grouped by their values of the spread keys (a node without the label
        is its own group, value ``""``); each task goes to the group with the
        fewest of the service's tasks, level by level, and within it to the
        node the usual ranking picks. Costs O(tasks x groups)."""
        sid = job.service_id
        leaves: dict[tuple[str, ...], list[tuple[int, int, str]]] = defaultdict(list)
        for info in candidates:
            key = tuple(spread_value(info.node, k) for k in job.spread)
            leaves[key].append((info.per_service[sid], info.total, info.node.id))
        counts: Counter[tuple[str, ...]] = Counter()
        for key, entries in leaves.items():
            heapq.heapify(entries)
            mine = sum(e[0] for e in entries)
            for depth in range(1, len(key) + 1):
                counts[key[:depth]] += mine
        why: str | None = None
        for task in tasks:
            best: tuple[tuple[tuple[int, ...], tuple[int, int, str]], tuple[str, ...]] | None = None
            for key in list(leaves):
                heap = leaves[key]
                while heap:
                    reason = first_rejection(dynamic, job, self.infos[heap[0][2]]) if dynamic else None
                    if reason is None:
                        break
                    heapq.heappop(heap)
                    rejections[reason] += 1
                if not heap:
                    del leaves[key]
                    continue
                rank = (tuple(counts[key[:d]] for d in range(1, len(key) + 1)), heap[0])
                if best is None or rank < best[0]:
                    best = (rank, key)
            if best is None:
                why = why or explain(rejections)
                self.plan.unplaced[task.id] = why
                continue
            key = best[1]
            mine, total, node_id = leaves[key][0]
            self.assign(task, self.infos[node_id], job)
            heapq.heapreplace(leaves[key], (mine + 1, total + 1, node_id))
            for depth in range(1, len(key) + 1):
                counts[key[:depth]] += 1

    def count_ports(self, task: Task) -> None:
        """A task being stopped still holds its host ports until it is gone."""
        info = self.infos.get(task.node_id)
        if info is not None:
            info.host_ports.update(host_ports(task.spec))


# Node-only filters never look at the job; they get this placeholder.
_NO_JOB = Job("", ServiceSpec(name="", container=ContainerSpec(image="")), [])


def schedule(nodes: Iterable[Node], services: Mapping[str, Service], tasks: Iterable[Task],
             now: float | None = None) -> Plan:
    """Plan where every waiting task goes.

    ``nodes``: every node in the store; ``services``: by service id;
    ``tasks``: every task in the store (the active ones count toward spread
    and reservations, the waiting ones get placed). ``now``: a waiting task
    whose ``not_before`` (restart_policy.delay) is later is left alone,
    neither placed nor explained. Returns a :class:`Plan`; never raises for
    bad data in the store, it explains it per task instead.
    """
    planner = _Planner(nodes, services)
    pinned: list[Task] = []
    free: dict[str, list[Task]] = defaultdict(list)
    for task in tasks:
        if is_waiting(task):
            if now is not None and task.not_before > now:
                continue  # restart delay not over
            (pinned if task.node_id else free[task.service_id]).append(task)
        elif task.is_placed:
            planner.count_existing(task)
        elif task.node_id and not task.state.terminal:
            planner.count_ports(task)

    # Pinned tasks first: they cannot move, so the spread must work around them.
    pinned.sort(key=lambda t: (t.service_id, t.node_id, t.id))
    for task in pinned:
        planner.check_pinned(task)
    for service_id in sorted(free):
        group = sorted(free[service_id], key=lambda t: (t.slot, t.id))
        planner.place_service(service_id, group)
    return planner.plan
