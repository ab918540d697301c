"""Stacks and services: deploy, list, inspect, scale, update, roll back, remove.

A deploy commits every service of the stack, its secrets, configs and
networks in one transaction, so a refused deploy leaves nothing behind.
The rollout itself is the updater's (manager/updater.py); these handlers
only write the desired spec and its version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pyswarm.constraints import ConstraintError, parse_constraints, parse_spread
from pyswarm.errors import NotFoundError, UsageError
from pyswarm.models import (
    NAME_PATTERN,
    DesiredState,
    Node,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    UpdateState,
    new_id,
)
from pyswarm.wire import rule

from .. import networks as cluster_networks
from .. import objects as stack_objects
from .. import limits, ops
from ..store import Op, Snapshot
from .base import REF, Resource, ServiceRef, find_service, method

STACK = rule(pattern=r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class StackObject:
    """A secret or config as a stack file defines it (data base64)."""

    name: str = field(metadata=rule(pattern=NAME_PATTERN))
    external: bool = False
    labels: dict[str, str] = field(default_factory=dict, metadata=rule(max_len=1000))
    data: str = ""


@dataclass(frozen=True)
class StackDeploy:
    stack: str = field(metadata=STACK)
    services: list[ServiceSpec] = field(metadata=rule(max_len=10_000))
    networks: dict[str, Any] = field(default_factory=dict, metadata=rule(max_len=1000))
    secrets: list[StackObject] = field(default_factory=list, metadata=rule(max_len=10_000))
    configs: list[StackObject] = field(default_factory=list, metadata=rule(max_len=10_000))
    prune: bool = False  # remove the stack's services the file no longer has
    dry_run: bool = False  # answer what would change (with old and new specs), commit nothing


@dataclass(frozen=True)
class StackRef:
    stack: str = field(metadata=rule(max_len=256))


PAGE_LIMIT = 10_000  # task rows an answer holds unless asked for another page (100,000 were 35 MB)
PAGE = rule(min=1, max=PAGE_LIMIT)
DesiredFilter = Literal["running", "shutdown", "accepted"]
"""``--filter desired-state=``, as Docker's (``accepted`` also means ready).
Sent with the request, so a filtered list of a service scaled to 100,000
and back is three rows, not ten pages of shut-down tasks."""


@dataclass(frozen=True)
class StackPs:
    stack: str = field(metadata=rule(max_len=256))
    offset: int = field(default=0, metadata=rule(min=0))
    limit: int = field(default=PAGE_LIMIT, metadata=PAGE)
    desired_state: list[DesiredFilter] = field(default_factory=list, metadata=rule(max_len=3))


@dataclass(frozen=True)
class ServicePs:
    service: str = field(metadata=REF)
    offset: int = field(default=0, metadata=rule(min=0))
    limit: int = field(default=PAGE_LIMIT, metadata=PAGE)
    desired_state: list[DesiredFilter] = field(default_factory=list, metadata=rule(max_len=3))


@dataclass(frozen=True)
class ServiceList:
    stack: str | None = field(default=None, metadata=rule(max_len=256))


@dataclass(frozen=True)
class ServiceUpdate:
    service: str = field(metadata=REF)
    image: str | None = field(default=None, metadata=rule(max_len=4096))
    env_add: list[str] = field(default_factory=list, metadata=rule(max_len=10_000))
    env_rm: list[str] = field(default_factory=list, metadata=rule(max_len=10_000))
    replicas: int | None = field(default=None, metadata=rule(min=0, max=1_000_000))
    force: bool = False
    # the whole new spec (service update's Docker flags, applied by the CLI to
    # the spec it read at ``version``); the fields above are then not used
    spec: ServiceSpec | None = None
    version: int | None = field(default=None, metadata=rule(min=1))


@dataclass(frozen=True)
class ServiceScale:
    scales: dict[str, int] = field(metadata=rule(max_len=10_000))


class Services(Resource):
    # -- stacks ---------------------------------------------------------------------

    @method("stack.deploy", StackDeploy)
    async def stack_deploy(self, req: StackDeploy) -> Any:
        stack = req.stack
        specs = list(req.services)
        snap = self.snap()
        existing = {s.name: s for s in snap.services()}
        # the stack's secrets and configs first, in the same transaction
        wanted = {kind: [dataclasses.asdict(o) for o in getattr(req, kind)] for kind in ("secrets", "configs")}
        txn, report = stack_objects.stack_ops(snap, stack, wanted, specs)
        now = time.time()
        # and its networks (issue 6): STACK_x created, external ones checked
        known = {n.name: n for n in cluster_networks.all_networks(snap)}
        for net in cluster_networks.stack_networks(stack, dict(req.networks), specs, known, now):
            txn += [ops.expect_absent("network", net.id), ops.put(net)]
            report.append({"network": net.name, "action": "created", "id": net.id})
        cluster_networks.check_published(snap, specs)
        limits.check_replicas(snap.cluster, specs)
        for spec in specs:
            check_placement(spec)
            spec.stack = stack
            old = existing.get(spec.name)
            if old is None:
                svc = Service(id=new_id(), spec=spec, created_at=now, updated_at=now)
                txn += [ops.expect_absent("service", svc.id), ops.put(svc)]
                report.append({"service": spec.name, "action": "created", "id": svc.id})
            elif old.spec.to_dict() != spec.to_dict():
                changed = {
                    "spec": spec.to_dict(), "previous_spec": old.spec.to_dict(),
                    "updated_at": now,
                }
                # replicas alone is a scale, not a new version of the tasks
                if without_replicas(old.spec) != without_replicas(spec):
                    changed["version"] = old.version + 1
                txn += [ops.expect("service", old.id, "version", old.version), ops.patch("service", old.id, **changed)]
                report.append({"service": spec.name, "action": "updated", "id": old.id})
                if req.dry_run:
                    report[-1].update(old=old.spec.to_dict(), new=spec.to_dict())
            else:
                report.append({"service": spec.name, "action": "unchanged", "id": old.id})
            if req.dry_run and old is None:
                report[-1]["image"] = spec.container.image
        if req.prune:
            keep = {spec.name for spec in specs}
            for old in sorted(existing.values(), key=lambda s: s.name):
                if old.spec.stack == stack and old.name not in keep:
                    txn.append(ops.delete("service", old.id))
                    report.append({"service": old.name, "action": "removed", "id": old.id})
        if req.dry_run:
            return report
        await self.store.commit(txn)
        return report

    def _stack_services(self, snap: Snapshot, stack: str) -> list[Service]:
        services = [s for s in snap.services() if s.spec.stack == stack]
        if not services:
            raise NotFoundError(f"nothing found in stack: {stack}")
        return sorted(services, key=lambda s: s.name)

    @method("stack.ls")
    async def stack_ls(self, req: object) -> Any:
        counts: dict[str, int] = {}
        for s in self.snap().services():
            if s.spec.stack:
                counts[s.spec.stack] = counts.get(s.spec.stack, 0) + 1
        return [{"name": name, "services": n} for name, n in sorted(counts.items())]

    @method("stack.ps", StackPs)
    async def stack_ps(self, req: StackPs) -> Any:
        snap = self.snap()
        services = self._stack_services(snap, req.stack)
        ids = sorted(s.id for s in services)
        return await task_rows(snap, lambda: [t for sid in ids for t in snap.tasks_of(sid)], req.offset, req.limit,
                               req.desired_state)

    @method("stack.rm", StackRef)
    async def stack_rm(self, req: StackRef) -> Any:
        snap = self.snap()
        services = self._stack_services(snap, req.stack)
        await self.store.commit([ops.delete("service", s.id) for s in services]
                                + stack_objects.stack_rm_ops(snap, req.stack)
                                + _stack_network_rm_ops(snap, req.stack, services))
        return [s.name for s in services]

    # -- services -------------------------------------------------------------------

    @method("service.ls", ServiceList)
    async def ls(self, req: ServiceList) -> Any:
        snap = self.snap()
        rows = []
        for s in sorted(snap.services(), key=lambda s: s.name):
            if req.stack and s.spec.stack != req.stack:
                continue
            desired = s.spec.replicas if s.spec.mode != "global" else _global_desired(snap, s)
            running = snap.count_tasks("running", s.id)  # an index: 100,000 running tasks cost nothing here
            rows.append({
                "id": s.id, "name": s.name, "mode": s.spec.mode, "running": running,
                "desired": desired, "replicas": f"{running}/{desired}",
                "image": s.spec.container.image, "stack": s.spec.stack,
                "update_state": s.update_status.get("state", ""),
                "update_message": s.update_status.get("message", ""),
                "labels": s.spec.labels, "ports": s.spec.container.options.get("ports") or [],
            })
        return rows

    @method("service.inspect", ServiceRef)
    async def inspect(self, req: ServiceRef) -> Any:
        return find_service(self.snap(), req.service).to_dict()

    @method("service.ps", ServicePs)
    async def ps(self, req: ServicePs) -> Any:
        snap = self.snap()
        service = find_service(snap, req.service)
        return await task_rows(snap, lambda: snap.tasks_of(service.id), req.offset, req.limit, req.desired_state)

    @method("service.update", ServiceUpdate)
    async def update(self, req: ServiceUpdate) -> Any:
        """Change a service; the updater rolls the change out. A change of
        replicas alone is a scale. ``force`` replaces every task even if
        nothing changed; an update with no change resumes a paused one."""
        snap = self.snap()
        service = find_service(snap, req.service)
        if req.spec is not None:
            from .service_admin import check_references

            spec = req.spec
            if req.version is not None and req.version != service.version:
                raise UsageError(f"service {service.name} changed meanwhile (version {service.version}, "
                                 f"not {req.version}): run the update again")
            if (spec.name, spec.stack, spec.mode) != (service.spec.name, service.spec.stack, service.spec.mode):
                raise UsageError(f"service {service.name}: an update cannot change the name, stack or mode")
            check_references(snap, spec)
        else:
            spec = _updated_spec(service, req)
            limits.check_replicas(snap.cluster, [spec])
        now = time.time()
        changed: dict[str, Any] = {"updated_at": now}
        action = "unchanged"
        if spec.to_dict() != service.spec.to_dict():
            changed["spec"] = spec.to_dict()
            action = "scaled"
        new_version = without_replicas(service.spec) != without_replicas(spec) or req.force
        status = service.update_status
        if new_version:
            changed.update(version=service.version + 1, previous_spec=service.spec.to_dict())
            action = "updated"
            if req.force:
                changed["update_status"] = {
                    "state": UpdateState.UPDATING, "message": "update in progress (forced)", "started_at": now,
                    "completed_at": None, "version": service.version + 1, "force": True,
                }
        elif status.get("state") in (UpdateState.PAUSED, UpdateState.ROLLBACK_PAUSED) and status.get("version") == service.version:
            changed["update_status"] = {
                **status, "state": UpdateState.UPDATING if status["state"] == UpdateState.PAUSED else UpdateState.ROLLBACK_STARTED,
                "message": "update resumed", "started_at": now, "completed_at": None,
            }
            changed["update_status"].pop("dirty", None)
            action = "resumed"
        await self.store.commit([
            ops.expect("service", service.id, "version", service.version),
            ops.patch("service", service.id, **changed),
        ])
        return {"service": service.name, "action": action, "version": changed.get("version", service.version)}

    @method("service.rollback", ServiceRef)
    async def rollback(self, req: ServiceRef) -> Any:
        """Back to the previous spec, as a new version rolled out with
        ``rollback_config`` (the spec being left becomes the previous one)."""
        snap = self.snap()
        service = find_service(snap, req.service)
        if service.previous_spec is None:
            raise UsageError(f"service {service.name} has no previous spec to roll back to")
        now = time.time()
        version = service.version + 1
        await self.store.commit([
            ops.expect("service", service.id, "version", service.version),
            ops.patch("service", service.id,
                      spec=service.previous_spec.to_dict(), previous_spec=service.spec.to_dict(),
                      version=version, updated_at=now,
                      update_status={
                          "state": UpdateState.ROLLBACK_STARTED, "message": "manually requested rollback",
                          "started_at": now, "completed_at": None, "version": version,
                      }),
        ])
        return {"service": service.name, "version": version}

    @method("service.scale", ServiceScale)
    async def scale(self, req: ServiceScale) -> Any:
        snap = self.snap()
        txn: list[Op] = []
        done = []
        for name, replicas in req.scales.items():
            service = find_service(snap, name)
            if service.spec.mode == "global":
                raise UsageError(f"{service.name}: scale can only be used with replicated mode")
            if not 0 <= replicas <= 1_000_000:
                raise UsageError(f"{name}: invalid replicas value {replicas}: must be a non-negative integer (at most 1000000)")
            spec = service.spec.to_dict()
            spec["replicas"] = replicas
            limits.check_replicas(snap.cluster, [ServiceSpec.from_dict(spec)])
            txn.append(ops.patch("service", service.id, spec=spec, updated_at=time.time()))
            done.append({"service": service.name, "replicas": replicas})
        await self.store.commit(txn)
        return done


def check_placement(spec: ServiceSpec) -> None:
    """Refuse constraints and preferences the scheduler could not evaluate
    (they would leave every task of the service pending forever)."""
    try:
        parse_constraints(spec.constraints)
        parse_spread(spec.deploy)
    except ConstraintError as exc:
        raise UsageError(f"{spec.name}: {exc}") from None


async def task_rows(snap: Snapshot, of: Callable[[], Iterable[Task]], offset: int = 0,
                    limit: int | None = PAGE_LIMIT, desired: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of the tasks ``of()`` gives (read from an index: a
    service's, a node's), one page (``offset``, ``limit``; None: all); only
    the tasks of a ``desired`` state when any is named. Gathered and built
    in a thread: every page reads and sorts the whole list (~0.3 s at
    100,000 tasks), which on the loop held the heartbeats up while a person
    listed a big service."""
    return await asyncio.to_thread(_task_rows, snap, of, offset, limit, desired)


def _task_rows(snap: Snapshot, of: Callable[[], Iterable[Task]], offset: int, limit: int | None,
               desired: Sequence[str]) -> list[dict[str, Any]]:
    nodes = {n.id: n for n in snap.nodes()}
    wanted = {*desired, *(["ready"] if "accepted" in desired else [])}
    tasks = [t for t in of() if not wanted or t.desired_state in wanted]
    tasks.sort(key=lambda t: (t.service_name, t.slot, t.node_id, -t.created_at))
    rows = []
    for t in tasks[offset:None if limit is None else offset + limit]:
        node = nodes.get(t.node_id)
        rows.append({
            "id": t.id, "name": _task_display_name(t, nodes), "service": t.service_name,
            "slot": t.slot, "image": t.spec.image,
            "node": node.hostname if node else "", "node_id": t.node_id,
            "desired_state": t.desired_state, "current_state": t.state.value,
            "since": t.state_since, "error": t.error, "message": t.message,
            "exit_code": t.exit_code, "ip": t.ip, "container_id": t.container_id,
            "ports": t.spec.options.get("ports") or [],
        })
    return rows


def _stack_network_rm_ops(snap: Snapshot, stack: str, removing: list[Service]) -> list[Op]:
    """The stack's own networks that no service outside the stack still uses."""
    gone = {s.id for s in removing}
    still = {name for s in snap.services() if s.id not in gone for name in cluster_networks.attached(s.spec)}
    return [ops.delete("network", n.id) for n in cluster_networks.all_networks(snap)
            if n.stack == stack and n.name not in still]


def _updated_spec(service: Service, req: ServiceUpdate) -> ServiceSpec:
    """The spec ``service update`` asks for: image, environment, replicas."""
    spec = service.spec.to_dict()
    container = spec["container"]
    if req.image:
        container["image"] = req.image
    env = dict(container.get("env") or {})
    for key in req.env_rm:
        env.pop(key.partition("=")[0], None)
    for item in req.env_add:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise UsageError(f"invalid --env-add {item[:60]!r}: expected KEY=VALUE")
        env[key] = value
    container["env"] = env
    if req.replicas is not None:
        if service.spec.mode == "global":
            raise UsageError(f"{service.name}: --replicas can only be used with replicated mode")
        spec["replicas"] = req.replicas
    return ServiceSpec.from_dict(spec)


def without_replicas(spec: ServiceSpec) -> dict[str, Any]:
    data = spec.to_dict()
    data.pop("replicas", None)
    return data


def _global_desired(snap: Snapshot, service: Service) -> int:
    return len({t.node_id for t in snap.tasks_of(service.id) if t.desired_state == DesiredState.RUNNING})


def _task_display_name(task: Task, nodes: dict[str, Node]) -> str:
    if task.slot:
        return f"{task.service_name}.{task.slot}"
    return f"{task.service_name}.{task.node_id[:12]}"
