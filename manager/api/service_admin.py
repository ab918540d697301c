"""Services made without a stack file, and what watching a change needs.

``service.create`` commits one service from a spec the CLI built from
Docker's flags (:mod:`pyswarm.service_flags`); ``service.rm`` removes
services; ``node.ps`` lists the tasks on nodes; ``service.progress`` is what
the CLI polls while it shows a change converging (``pyswarm.progress``):
per service the tasks of the current version running out of desired, the
rollout's state, and why tasks that do not run do not.

Every spec that comes in (create, or update with a whole spec) has its
references checked against the store before anything is committed: the
cluster networks in ``spec.networks``, the secrets and configs its
container names, and the published ports (one service a port).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pyswarm.errors import NotFoundError, UsageError
from pyswarm.models import DESIRED_RUNNING, Node, NodeAvailability, NodeStatus, Service, ServiceSpec, Task, TaskState, new_id

from .. import networks as cluster_networks
from .. import objects as stack_objects
from .. import limits, ops
from ..store import Snapshot
from .base import REFS, Resource, find_node, find_service, method
from .services import check_placement, task_rows


@dataclass(frozen=True)
class ServiceCreate:
    spec: ServiceSpec


@dataclass(frozen=True)
class ServiceRemove:
    services: list[str] = field(metadata=REFS)


@dataclass(frozen=True)
class NodeTasks:
    nodes: list[str] = field(default_factory=list, metadata=REFS)  # empty: this manager's node


@dataclass(frozen=True)
class ServiceProgress:
    services: list[str] = field(metadata=REFS)


def check_references(snap: Snapshot, spec: ServiceSpec) -> None:
    """Refuse a spec naming a network, secret or config that does not
    exist, publishing a port another service publishes, or placing by
    constraints or preferences the scheduler cannot evaluate, or more
    replicas than the cluster allows (manager/limits.py)."""
    check_placement(spec)
    limits.check_replicas(snap.cluster, [spec])
    known = {n.name for n in cluster_networks.all_networks(snap)}
    for attachment in spec.networks:
        target = str(attachment.get("target", ""))
        if target not in known:
            raise NotFoundError(f"service {spec.name}: network {target} not found "
                                f"(create it with `pyswarm network create {target}`)")
    for kind in stack_objects.KINDS:
        stored = stack_objects.by_name(snap, kind)
        for ref in spec.container.options.get(kind + "s") or []:
            name = str(ref.get("name") or ref.get("source"))
            if name not in stored:
                raise NotFoundError(f"service {spec.name}: {kind} {name} not found "
                                    f"(create it with `pyswarm {kind} create {name} FILE`)")
    cluster_networks.check_published(snap, [spec])


class ServiceAdmin(Resource):
    @method("service.create", ServiceCreate)
    async def create(self, req: ServiceCreate) -> Any:
        spec = req.spec
        if spec.stack:
            raise UsageError(f"service {spec.name}: service create makes services without a stack "
                             "(use `pyswarm stack deploy` for a stack)")
        snap = self.snap()
        if snap.service_by_name(spec.name) is not None:
            raise UsageError(f"service {spec.name} already exists")
        check_references(snap, spec)
        now = time.time()
        svc = Service(id=new_id(), spec=spec, created_at=now, updated_at=now)
        await self.store.commit([ops.expect_absent("service", svc.id), ops.put(svc)])
        return {"id": svc.id, "service": spec.name, "version": svc.version}

    @method("service.rm", ServiceRemove)
    async def rm(self, req: ServiceRemove) -> Any:
        """Remove services (and, as Swarm does, their tasks' containers go
        with them: the orchestrator shuts down the tasks of a service that
        is gone). Every name is found before anything is removed."""
        snap = self.snap()
        found = [find_service(snap, ref) for ref in req.services]
        await self.store.commit([ops.delete("service", s.id) for s in {s.id: s for s in found}.values()])
        return [s.name for s in found]

    @method("node.ps", NodeTasks)
    async def node_ps(self, req: NodeTasks) -> Any:
        snap = self.snap()
        refs = req.nodes or [self.me.node_id]
        ids = {find_node(snap, ref).id for ref in refs}
        return await task_rows(snap, lambda: [t for node_id in sorted(ids) for t in snap.tasks_on(node_id)], limit=None)

    @method("service.progress", ServiceProgress)
    async def progress(self, req: ServiceProgress) -> Any:
        snap = self.snap()
        services = [find_service(snap, ref) for ref in req.services]
        nodes = snap.nodes()
        return [progress_row(s, snap.tasks_of(s.id), nodes) for s in services]


def _eligible(nodes: list[Node]) -> int:
    return sum(1 for n in nodes if n.status == NodeStatus.READY and n.availability == NodeAvailability.ACTIVE)


def progress_row(service: Service, tasks: list[Task], nodes: list[Node]) -> dict[str, Any]:
    """How far ``service`` is: tasks of its current version that run, out of
    those it wants, and the reason the newest task that does not run gives."""
    current = [t for t in tasks if t.spec_version == service.version and t.desired_state == DESIRED_RUNNING]
    running = sum(1 for t in current if t.state == TaskState.RUNNING)
    if service.spec.mode == "global":
        desired = len({t.node_id or t.id for t in current}) or (_eligible(nodes) if not tasks else 0)
    else:
        desired = service.spec.replicas
    outdated = sum(1 for t in tasks if t.spec_version != service.version and not t.state.terminal
                   and t.desired_state == DESIRED_RUNNING)
    recent = [t for t in tasks if t.spec_version == service.version]
    failures = [t for t in recent if t.state in (TaskState.FAILED, TaskState.REJECTED)]
    reason = ""
    stuck = [t for t in current if t.state != TaskState.RUNNING]
    stuck.sort(key=lambda t: t.state_since, reverse=True)
    failures.sort(key=lambda t: t.state_since, reverse=True)
    if stuck:
        t = stuck[0]
        reason = t.error or t.message or t.state.value
        if t.state == TaskState.STARTING and not (t.error or t.message):
            reason = "starting (waiting for the container to be healthy)"
        if t.state in (TaskState.PENDING, TaskState.NEW) and not (t.error or t.message):
            reason = "pending"
    elif failures and running < desired:
        reason = failures[0].error or failures[0].message or failures[0].state.value
    pending = [t for t in current if t.state == TaskState.PENDING]
    return {
        "id": service.id, "service": service.name, "version": service.version, "mode": service.spec.mode,
        "desired": desired, "running": running, "outdated": outdated,
        "update_state": service.update_status.get("state", ""),
        "update_message": service.update_status.get("message", ""),
        "failures": len(failures),
        "last_error": (failures[0].error or failures[0].message) if failures else "",
        "unplaced": pending[0].message if pending and "no suitable node" in (pending[0].message or "") else "",
        "reason": reason,
        "since": min((t.state_since for t in stuck), default=0.0),
    }
