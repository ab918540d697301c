"""The manager's API: what the CLI and joining hosts may ask.

Each method reads the local replica (reads are served by any manager) or
commits a transaction (a follower's write is forwarded to the leader by the
store). The transports (unix socket, SSH) live in :mod:`.servers`; this
module only maps a method name and its parameters to an answer, so it can be
tested against a real single-node store without any socket.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyswarm.errors import NotFoundError, UsageError
from pyswarm.models import (
    Network,
    DESIRED_RUNNING,
    Node,
    NodeAvailability,
    NodeRole,
    NodeStatus,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    new_id,
)
from pyswarm.tokens import Token

from . import networks as cluster_networks
from . import objects as stack_objects
from .store import Op, Snapshot, Store, TransactionAborted

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

# methods a joining host may call with a join token (over the SSH API port)
JOIN_METHODS = frozenset({"join.info", "join"})
JOIN_ATTEMPTS = 30  # hosts joining at once each lose a subnet race at most a few times


@dataclass(frozen=True)
class Self:
    """Who this manager is, for answers like ``manager status``."""

    node_id: str
    advertise_addr: str
    api_port: int
    fingerprint: str


class Api:
    def __init__(self, store: Store, me: Self) -> None:
        self._store = store
        self._me = me
        self._methods: dict[str, Handler] = {
            "ping": self.ping,
            "node.ls": self.node_ls,
            "node.inspect": self.node_inspect,
            "store.export": self.store_export,
            "node.promote": self.node_promote,
            "node.demote": self.node_demote,
            "node.rm": self.node_rm,
            "node.update": self.node_update,
            "join.info": self.join_info,
            "join": self.join,
            "join_token": self.join_token,
            "stack.deploy": self.stack_deploy,
            "stack.ls": self.stack_ls,
            "stack.ps": self.stack_ps,
            "stack.rm": self.stack_rm,
            "service.ls": self.service_ls,
            "service.ps": self.service_ps,
            "service.scale": self.service_scale,
            "service.inspect": self.service_inspect,
            "cluster.update": self.cluster_update,
            "service.update": self.service_update,
            "service.rollback": self.service_rollback,
            "network.create": self.network_create,
            "network.ls": self.network_ls,
            "network.inspect": self.network_inspect,
            "network.rm": self.network_rm,
        }
        for kind in stack_objects.KINDS:  # secret.* and config.*
            self._methods.update({
                f"{kind}.create": self._object_create(kind), f"{kind}.ls": self._object_ls(kind),
                f"{kind}.inspect": self._object_inspect(kind), f"{kind}.rm": self._object_rm(kind),
            })

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        handler = self._methods.get(method)
        if handler is None:
            raise UsageError(f"unknown API method {method!r}")
        return await handler(params)

    def _snap(self) -> Snapshot:
        return self._store.snapshot()

    async def ping(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        cluster = snap.cluster
        return {
            "node_id": self._me.node_id,
            "cluster_id": cluster.id if cluster else "",
            "leader": self._store.is_leader,
            "ready": cluster is not None,
        }

    # -- nodes -------------------------------------------------------------------

    def _manager_status(self, node: Node) -> str:
        if node.role != NodeRole.MANAGER:
            return ""
        addr = f"{node.addr}:{node.raft_port}"
        if self._store.leader == addr:
            return "leader"
        if addr == self._store.self_addr:
            return "reachable"
        status = self._store.status()
        return "reachable" if status.get(f"partner_node_status_server_{addr}") == 2 else "unreachable"

    def _node_row(self, node: Node) -> dict[str, Any]:
        return {
            "id": node.id,
            "hostname": node.hostname,
            "address": node.addr,
            "role": node.role.value,
            "status": node.status.value,
            "availability": node.availability.value,
            "manager_status": self._manager_status(node),
            "engine_version": node.engine_version,
            "message": node.status_message,
            "self": node.id == self._me.node_id,
        }

    async def node_ls(self, params: dict[str, Any]) -> Any:
        nodes = sorted(self._snap().nodes(), key=lambda n: (n.role != NodeRole.MANAGER, n.hostname))
        return [self._node_row(n) for n in nodes]

    async def node_inspect(self, params: dict[str, Any]) -> Any:
        node = _find_node(self._snap(), params["node"])
        data = node.to_dict()
        data["manager_status"] = self._manager_status(node)
        return data

    async def store_export(self, params: dict[str, Any]) -> Any:
        """This manager's replica, as is (works without quorum: it is what
        ``init --force-new-cluster`` rebuilds a cluster from)."""
        snap = self._snap()
        return {"index": snap.index, "objects": snap.raw}

    # -- membership: promote, demote, remove ----------------------------------------

    def _reachable_managers(self, snap: Snapshot) -> list[Node]:
        return [n for n in snap.nodes() if self._manager_status(n) in ("leader", "reachable")]

    async def node_promote(self, params: dict[str, Any]) -> Any:
        """Make a worker a manager: the leader's dispatcher tells its agent to
        start one, and the Raft membership grows by it."""
        snap = self._snap()
        done = []
        for ref in params["nodes"]:
            node = _find_node(snap, str(ref))
            if node.role == NodeRole.MANAGER:
                done.append(f"Node {node.hostname} is already a manager.")
                continue
            if node.status != NodeStatus.READY:
                raise UsageError(f"node {node.hostname} is {node.status.value}: only a ready node can be promoted "
                                 "(its agent starts the manager)")
            await self._store.commit([["patch", "node", node.id, {"role": NodeRole.MANAGER.value, "updated_at": time.time()}]])
            # the new membership counts the new manager, so it commits once that
            # manager runs and has caught up; wait for it before the next one,
            # or two new members at once could hold the quorum hostage
            await self._store.change_membership("add", f"{node.addr}:{node.raft_port}", wait=45)
            done.append(f"Node {node.hostname} promoted to a manager in the swarm.")
        return done

    async def node_demote(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        done = []
        for ref in params["nodes"]:
            node = _find_node(snap, str(ref))
            if node.role != NodeRole.MANAGER:
                done.append(f"Node {node.hostname} is already a worker.")
                continue
            await self._demote(snap, node)
            snap = self._snap()
            done.append(f"Manager {node.hostname} demoted in the swarm.")
        return done

    async def _demote(self, snap: Snapshot, node: Node) -> None:
        """Refuse a demotion that would leave the remaining managers without
        a majority of them reachable; otherwise change the role first (so the
        demoted manager still hears of it and stops itself), then Raft."""
        managers = [n for n in snap.nodes() if n.role == NodeRole.MANAGER]
        if len(managers) == 1:
            raise UsageError(f"{node.hostname} is the last manager: a cluster needs one "
                             "(promote another node first)")
        reachable = [n for n in self._reachable_managers(snap) if n.id != node.id]
        remaining = len(managers) - 1
        if len(reachable) < remaining // 2 + 1:
            raise UsageError(
                f"demoting {node.hostname} would lose quorum: {len(reachable)} of the {remaining} remaining "
                f"managers are reachable and {remaining // 2 + 1} are needed; bring the others back first")
        await self._store.commit([["patch", "node", node.id, {"role": NodeRole.WORKER.value, "updated_at": time.time()}]])
        await self._store.change_membership("remove", f"{node.addr}:{node.raft_port}", wait=10)

    async def node_rm(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        force = bool(params.get("force"))
        removed = []
        for ref in params["nodes"]:
            node = _find_node(snap, str(ref))
            if node.role == NodeRole.MANAGER:
                if not force:
                    raise UsageError(f"node {node.hostname} is a manager: demote it first "
                                     f"(`pyswarm node demote {node.hostname}`) or use --force")
                await self._demote(snap, node)
            elif node.status == NodeStatus.READY and not force:
                raise UsageError(f"node {node.hostname} is ready and running tasks: drain it and stop it first, "
                                 "or use --force")
            ops: list[Op] = [["delete", "node", node.id]]
            if node.subnet:
                ops.append(["delete", "subnet", node.subnet])
            await self._store.commit(ops)
            snap = self._snap()
            removed.append(node.hostname)
        return removed

    async def cluster_update(self, params: dict[str, Any]) -> Any:
        return await _cluster_update(self, params)

    async def node_update(self, params: dict[str, Any]) -> Any:
        """Availability and labels of one node (by id, id prefix or hostname).
        Labels are written whole, guarded by what was read, so two updates at
        once cannot lose each other's labels (the loser retries)."""
        availability = params.get("availability")
        if availability is not None and availability not in {a.value for a in NodeAvailability}:
            raise UsageError(f"invalid availability {availability!r}: use active, pause or drain")
        add = {str(k): str(v) for k, v in dict(params.get("label_add") or {}).items()}
        remove = [str(k) for k in params.get("label_rm") or []]
        for key in [*add, *remove]:
            if not key or "=" in key:
                raise UsageError(f"invalid label key {key!r}")
        for attempt in range(10):
            node = _find_node(self._snap(), str(params["node"]))
            missing = [k for k in remove if k not in node.labels and k not in add]
            if missing:
                raise NotFoundError(f"node {node.hostname} has no label {missing[0]!r}")
            labels = {k: v for k, v in node.labels.items() if k not in remove}
            labels.update(add)
            fields: dict[str, Any] = {"labels": labels, "updated_at": time.time()}
            if availability is not None:
                fields["availability"] = availability
            try:
                await self._store.commit([
                    ["expect", "node", node.id, "labels", node.labels],
                    ["patch", "node", node.id, fields],
                ])
            except TransactionAborted:
                if attempt == 9:
                    raise
                continue
            return {"id": node.id, "hostname": node.hostname,
                    "availability": availability or node.availability.value, "labels": labels}
        raise AssertionError("unreachable")

    # -- joining -------------------------------------------------------------------

    async def join_info(self, params: dict[str, Any]) -> Any:
        cluster = _cluster(self._snap())
        return {"cluster_id": cluster.id, "ssh_public_key": cluster.ssh_public_key}

    async def join_token(self, params: dict[str, Any]) -> Any:
        cluster = _cluster(self._snap())
        role = params.get("role", "worker")
        secret = cluster.manager_token_secret if role == "manager" else cluster.worker_token_secret
        token = Token(cluster.api_host_key_fingerprint, secret)
        return {"token": str(token), "addr": f"{self._me.advertise_addr}:{self._me.api_port}"}

    async def join(self, params: dict[str, Any]) -> Any:
        """Admit a host. A host that joins again under the same hostname and
        address keeps its node id and its container subnet. Hosts joining at
        the same moment may pick the same free subnet; the claim's
        precondition lets one win and the other tries the next."""
        for attempt in range(JOIN_ATTEMPTS):
            try:
                return await self._join_once(params, spread=1 if attempt == 0 else 64)
            except TransactionAborted:
                if attempt == JOIN_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _join_once(self, params: dict[str, Any], spread: int = 1) -> Any:
        snap = self._snap()
        cluster = _cluster(snap)
        hostname, addr = str(params["hostname"]), str(params["addr"])
        role = NodeRole(params.get("role", "worker"))
        existing = next((n for n in snap.nodes() if n.hostname == hostname and n.addr == addr), None)
        ops: list[Op] = []
        now = time.time()
        if existing is not None:
            node = existing
            node.ssh_host_key = str(params["ssh_host_key"])
            node.ssh_port = int(params.get("ssh_port", 22))
            node.status = NodeStatus.UNKNOWN
            node.role = role
            node.updated_at = now
        else:
            clash = next((n for n in snap.nodes() if n.addr == addr and n.status != NodeStatus.DOWN), None)
            if clash is not None:
                raise UsageError(f"address {addr} is already used by node {clash.hostname} ({clash.id[:12]})")
            subnet = _free_subnet(snap, cluster.addr_pool, cluster.subnet_size, spread)
            node = Node(
                id=new_id(), hostname=hostname, addr=addr, role=role,
                ssh_host_key=str(params["ssh_host_key"]), ssh_port=int(params.get("ssh_port", 22)),
                subnet=subnet, created_at=now, updated_at=now,
            )
            if "platform" in params:
                node.platform = dict(params["platform"])
            ops.append(["expect", "subnet", subnet, None, None])
            ops.append(["put", "subnet", subnet, {"node_id": node.id}])
        if role == NodeRole.MANAGER:
            node.api_port = int(params.get("api_port", node.api_port))
            node.raft_port = int(params.get("raft_port", node.raft_port))
        ops.append(["put", "node", node.id, node.to_dict()])
        await self._store.commit(ops)
        answer: dict[str, Any] = {"node_id": node.id, "cluster_id": cluster.id, "subnet": node.subnet}
        if role == NodeRole.MANAGER:
            raft_addr = f"{addr}:{node.raft_port}"
            # the new membership counts the joiner, so this commits once it runs
            await self._store.change_membership("add", raft_addr)
            answer["manager"] = {
                "raft_secret": cluster.raft_secret,
                "api_host_private_key": cluster.api_host_private_key,
                "raft_peers": sorted({raft_addr, *_manager_raft_addrs(snap)}),
            }
        return answer

    # -- stacks and services ---------------------------------------------------------

    async def stack_deploy(self, params: dict[str, Any]) -> Any:
        stack = str(params["stack"])
        specs = [ServiceSpec.from_dict(s) for s in params["services"]]
        snap = self._snap()
        existing = {s.name: s for s in snap.services()}
        # the stack's secrets and configs first, in the same transaction
        ops, report = stack_objects.stack_ops(snap, stack, params, specs)
        now = time.time()
        # and its networks (issue 6): STACK_x created, external ones checked
        known = {n.name: n for n in cluster_networks.all_networks(snap)}
        for net in cluster_networks.stack_networks(stack, dict(params.get("networks") or {}), specs, known, now):
            ops += [["expect", "network", net.id, None, None], ["put", "network", net.id, net.to_dict()]]
            report.append({"network": net.name, "action": "created", "id": net.id})
        cluster_networks.check_published(snap, specs)
        for spec in specs:
            spec.stack = stack
            old = existing.get(spec.name)
            if old is None:
                svc = Service(id=new_id(), spec=spec, created_at=now, updated_at=now)
                ops.append(["expect", "service", svc.id, None, None])
                ops.append(["put", "service", svc.id, svc.to_dict()])
                report.append({"service": spec.name, "action": "created", "id": svc.id})
            elif old.spec.to_dict() != spec.to_dict():
                changed = {
                    "spec": spec.to_dict(), "previous_spec": old.spec.to_dict(),
                    "updated_at": now,
                }
                # replicas alone is a scale, not a new version of the tasks
                if _without_replicas(old.spec) != _without_replicas(spec):
                    changed["version"] = old.version + 1
                ops.append(["expect", "service", old.id, "version", old.version])
                ops.append(["patch", "service", old.id, changed])
                report.append({"service": spec.name, "action": "updated", "id": old.id})
            else:
                report.append({"service": spec.name, "action": "unchanged", "id": old.id})
        await self._store.commit(ops)
        return report

    def _stack_services(self, snap: Snapshot, stack: str) -> list[Service]:
        services = [s for s in snap.services() if s.spec.stack == stack]
        if not services:
            raise NotFoundError(f"nothing found in stack: {stack}")
        return sorted(services, key=lambda s: s.name)

    async def stack_ls(self, params: dict[str, Any]) -> Any:
        counts: dict[str, int] = {}
        for s in self._snap().services():
            if s.spec.stack:
                counts[s.spec.stack] = counts.get(s.spec.stack, 0) + 1
        return [{"name": name, "services": n} for name, n in sorted(counts.items())]

    async def stack_ps(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        services = self._stack_services(snap, str(params["stack"]))
        return self._task_rows(snap, {s.id for s in services})

    async def stack_rm(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        services = self._stack_services(snap, str(params["stack"]))
        await self._store.commit([["delete", "service", s.id] for s in services]
                                 + stack_objects.stack_rm_ops(snap, str(params["stack"]))
                                 + _stack_network_rm_ops(snap, str(params["stack"]), services))
        return [s.name for s in services]

    async def service_ls(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        running: dict[str, int] = {}
        for t in snap.tasks():
            if t.state == TaskState.RUNNING and t.desired_state == DESIRED_RUNNING:
                running[t.service_id] = running.get(t.service_id, 0) + 1
        stack = params.get("stack")
        rows = []
        for s in sorted(snap.services(), key=lambda s: s.name):
            if stack and s.spec.stack != stack:
                continue
            desired = s.spec.replicas if s.spec.mode != "global" else _global_desired(snap, s)
            rows.append({
                "id": s.id, "name": s.name, "mode": s.spec.mode, "running": running.get(s.id, 0),
                "desired": desired, "replicas": f"{running.get(s.id, 0)}/{desired}",
                "image": s.spec.container.image, "stack": s.spec.stack,
                "update_state": s.update_status.get("state", ""),
                "update_message": s.update_status.get("message", ""),
            })
        return rows

    async def service_inspect(self, params: dict[str, Any]) -> Any:
        return _find_service(self._snap(), str(params["service"])).to_dict()

    async def service_ps(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        service = _find_service(snap, str(params["service"]))
        return self._task_rows(snap, {service.id})

    def _task_rows(self, snap: Snapshot, service_ids: set[str]) -> list[dict[str, Any]]:
        nodes = {n.id: n for n in snap.nodes()}
        tasks = [t for t in snap.tasks() if t.service_id in service_ids]
        tasks.sort(key=lambda t: (t.service_name, t.slot, t.node_id, -t.created_at))
        rows = []
        for t in tasks:
            node = nodes.get(t.node_id)
            rows.append({
                "id": t.id, "name": _task_display_name(t, nodes), "service": t.service_name,
                "slot": t.slot, "image": t.spec.image,
                "node": node.hostname if node else "", "node_id": t.node_id,
                "desired_state": t.desired_state, "current_state": t.state.value,
                "since": t.state_since, "error": t.error, "message": t.message,
                "exit_code": t.exit_code, "ip": t.ip, "container_id": t.container_id,
            })
        return rows

    async def service_update(self, params: dict[str, Any]) -> Any:
        """Change a service; the updater rolls the change out. A change of
        replicas alone is a scale. ``force`` replaces every task even if
        nothing changed; an update with no change resumes a paused one."""
        snap = self._snap()
        service = _find_service(snap, str(params["service"]))
        spec = _updated_spec(service, params)
        now = time.time()
        changed: dict[str, Any] = {"updated_at": now}
        action = "unchanged"
        if spec.to_dict() != service.spec.to_dict():
            changed["spec"] = spec.to_dict()
            action = "scaled"
        new_version = _without_replicas(service.spec) != _without_replicas(spec) or bool(params.get("force"))
        status = service.update_status
        if new_version:
            changed.update(version=service.version + 1, previous_spec=service.spec.to_dict())
            action = "updated"
            if params.get("force"):
                changed["update_status"] = {
                    "state": "updating", "message": "update in progress (forced)", "started_at": now,
                    "completed_at": None, "version": service.version + 1, "force": True,
                }
        elif status.get("state") in ("paused", "rollback_paused") and status.get("version") == service.version:
            changed["update_status"] = {
                **status, "state": "updating" if status["state"] == "paused" else "rollback_started",
                "message": "update resumed", "started_at": now, "completed_at": None,
            }
            changed["update_status"].pop("dirty", None)
            action = "resumed"
        await self._store.commit([
            ["expect", "service", service.id, "version", service.version],
            ["patch", "service", service.id, changed],
        ])
        return {"service": service.name, "action": action, "version": changed.get("version", service.version)}

    async def service_rollback(self, params: dict[str, Any]) -> Any:
        """Back to the previous spec, as a new version rolled out with
        ``rollback_config`` (the spec being left becomes the previous one)."""
        snap = self._snap()
        service = _find_service(snap, str(params["service"]))
        if service.previous_spec is None:
            raise UsageError(f"service {service.name} has no previous spec to roll back to")
        now = time.time()
        version = service.version + 1
        await self._store.commit([
            ["expect", "service", service.id, "version", service.version],
            ["patch", "service", service.id, {
                "spec": service.previous_spec.to_dict(), "previous_spec": service.spec.to_dict(),
                "version": version, "updated_at": now,
                "update_status": {
                    "state": "rollback_started", "message": "manually requested rollback",
                    "started_at": now, "completed_at": None, "version": version,
                },
            }],
        ])
        return {"service": service.name, "version": version}

    async def service_scale(self, params: dict[str, Any]) -> Any:
        scales: dict[str, int] = {str(k): int(v) for k, v in dict(params["scales"]).items()}
        snap = self._snap()
        ops: list[Op] = []
        done = []
        for name, replicas in scales.items():
            service = _find_service(snap, name)
            if service.spec.mode == "global":
                raise UsageError(f"{service.name}: scale can only be used with replicated mode")
            if replicas < 0:
                raise UsageError(f"{name}: invalid replicas value {replicas}: must be a non-negative integer")
            spec = service.spec.to_dict()
            spec["replicas"] = replicas
            ops.append(["patch", "service", service.id, {"spec": spec, "updated_at": time.time()}])
            done.append({"service": service.name, "replicas": replicas})
        await self._store.commit(ops)
        return done

    # -- secrets and configs (see .objects) ----------------------------------------------

    def _object_create(self, kind: str) -> Handler:
        async def create(params: dict[str, Any]) -> Any:
            name = str(params["name"])
            data = stack_objects.decode_data(kind, name, params.get("data", ""))
            labels = {str(k): str(v) for k, v in dict(params.get("labels") or {}).items()}
            ops, oid = stack_objects.create_ops(self._snap(), kind, name, data, labels)
            try:
                await self._store.commit(ops)
            except TransactionAborted:
                raise UsageError(f"{kind} {name} already exists") from None
            return {"id": oid, "name": name}
        return create

    def _object_ls(self, kind: str) -> Handler:
        async def ls(params: dict[str, Any]) -> Any:
            return [stack_objects.row(o) for o in stack_objects.objects(self._snap(), kind)]
        return ls

    def _object_inspect(self, kind: str) -> Handler:
        async def inspect(params: dict[str, Any]) -> Any:
            obj = stack_objects.find(self._snap(), kind, str(params["name"]))
            return stack_objects.row(obj, with_data=kind == "config")
        return inspect

    def _object_rm(self, kind: str) -> Handler:
        async def rm(params: dict[str, Any]) -> Any:
            snap = self._snap()
            found = [stack_objects.find(snap, kind, str(n)) for n in params["names"]]
            ops: list[Op] = []
            for obj in found:
                using = stack_objects.users(snap.services(), kind, obj.name)
                if using:
                    raise UsageError(f"{kind} {obj.name} is in use by the following services: "
                                     f"{', '.join(using)}")
                ops.extend(stack_objects.delete_ops(obj, kind))
            await self._store.commit(ops)
            return [o.name for o in found]
        return rm

    # -- cluster networks (see .networks) ---------------------------------------------------

    async def network_create(self, params: dict[str, Any]) -> Any:
        name = str(params["name"])
        cluster_networks.check_name(name)
        snap = self._snap()
        if cluster_networks.network_by_name(snap, name) is not None:
            raise UsageError(f"network {name} already exists")
        labels = {str(k): str(v) for k, v in dict(params.get("labels") or {}).items()}
        net = Network(id=new_id(), name=name, labels=labels, internal=bool(params.get("internal")),
                      attachable=bool(params.get("attachable")), created_at=time.time())
        await self._store.commit([["expect", "network", net.id, None, None],
                                  ["put", "network", net.id, net.to_dict()]])
        return {"id": net.id, "name": name}

    async def network_ls(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        nets = sorted(cluster_networks.all_networks(snap), key=lambda n: n.name)
        return [cluster_networks.network_row(n, snap) for n in nets]

    async def network_inspect(self, params: dict[str, Any]) -> Any:
        snap = self._snap()
        net = cluster_networks.network_by_name(snap, str(params["name"]))
        if net is None:
            raise NotFoundError(f"network {params['name']} not found")
        return cluster_networks.network_row(net, snap)

    async def network_rm(self, params: dict[str, Any]) -> Any:
        """Refuses a network still attached to a service, like Docker."""
        snap = self._snap()
        ops: list[Op] = []
        removed = []
        for ref in params["names"]:
            net = cluster_networks.network_by_name(snap, str(ref))
            if net is None:
                raise NotFoundError(f"network {ref} not found")
            using = cluster_networks.users(snap, net.name)
            if using:
                raise UsageError(f"network {net.name} is in use by the following services: {', '.join(using)}")
            ops.append(["delete", "network", net.id])
            removed.append(net.name)
        await self._store.commit(ops)
        return removed


def _stack_network_rm_ops(snap: Snapshot, stack: str, removing: list[Service]) -> list[Op]:
    """The stack's own networks that no service outside the stack still uses."""
    gone = {s.id for s in removing}
    still = {name for s in snap.services() if s.id not in gone for name in cluster_networks.attached(s.spec)}
    return [["delete", "network", n.id] for n in cluster_networks.all_networks(snap)
            if n.stack == stack and n.name not in still]


def _manager_raft_addrs(snap: Snapshot) -> list[str]:
    return [f"{n.addr}:{n.raft_port}" for n in snap.nodes() if n.role == NodeRole.MANAGER]


def _updated_spec(service: Service, params: dict[str, Any]) -> ServiceSpec:
    """The spec ``service update`` asks for: image, environment, replicas."""
    spec = service.spec.to_dict()
    container = spec["container"]
    if params.get("image"):
        container["image"] = str(params["image"])
    env = dict(container.get("env") or {})
    for key in params.get("env_rm") or []:
        env.pop(str(key).partition("=")[0], None)
    for item in params.get("env_add") or []:
        key, sep, value = str(item).partition("=")
        if not key or not sep:
            raise UsageError(f"invalid --env-add {item!r}: expected KEY=VALUE")
        env[key] = value
    container["env"] = env
    if params.get("replicas") is not None:
        replicas = int(params["replicas"])
        if service.spec.mode == "global":
            raise UsageError(f"{service.name}: --replicas can only be used with replicated mode")
        if replicas < 0:
            raise UsageError(f"{service.name}: invalid replicas value {replicas}: must be a non-negative integer")
        spec["replicas"] = replicas
    return ServiceSpec.from_dict(spec)


async def _cluster_update(api: Api, params: dict[str, Any]) -> Any:
    """``swarm update``: cluster settings (so far the task history limit)."""
    cluster = _cluster(api._snap())
    fields: dict[str, Any] = {}
    if params.get("task_history_limit") is not None:
        limit = int(params["task_history_limit"])
        if limit < 0:
            raise UsageError(f"invalid task history limit {limit}: must be 0 or more")
        fields["task_history_limit"] = limit
    if not fields:
        raise UsageError("swarm update: nothing to change (give --task-history-limit)")
    await api._store.commit([["patch", "cluster", cluster.id, fields]])
    return {"id": cluster.id, **fields}


def _without_replicas(spec: ServiceSpec) -> dict[str, Any]:
    data = spec.to_dict()
    data.pop("replicas", None)
    return data


def _global_desired(snap: Snapshot, service: Service) -> int:
    return len({t.node_id for t in snap.tasks() if t.service_id == service.id and t.desired_state == DESIRED_RUNNING})


def _task_display_name(task: Task, nodes: dict[str, Node]) -> str:
    if task.slot:
        return f"{task.service_name}.{task.slot}"
    return f"{task.service_name}.{task.node_id[:12]}"


def _cluster(snap: Snapshot) -> Any:
    cluster = snap.cluster
    if cluster is None:
        raise NotFoundError("the cluster is still starting: no cluster object in the store yet")
    return cluster


def _find_service(snap: Snapshot, name: str) -> Service:
    service = snap.service_by_name(name)
    if service is None:
        matches = [s for s in snap.services() if s.id.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        raise NotFoundError(f"service {name} not found")
    return service


def _find_node(snap: Snapshot, ref: str) -> Node:
    nodes = snap.nodes()
    for n in nodes:
        if ref in (n.id, n.hostname):
            return n
    matches = [n for n in nodes if n.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    raise NotFoundError(f"node {ref} not found")


def _free_subnet(snap: Snapshot, pool: str, size: int, spread: int = 1) -> str:
    """The first free subnet of the pool, or (``spread`` > 1, after a lost
    race) one of the first ``spread`` free ones at random, so that hosts
    joining at the same moment stop all claiming the same one."""
    used = set(snap.raw.get("subnet", {}))
    network = ipaddress.ip_network(pool)
    free: list[str] = []
    for candidate in network.subnets(new_prefix=size):
        if str(candidate) not in used:
            free.append(str(candidate))
            if len(free) >= spread:
                break
    if not free:
        raise UsageError(f"the address pool {pool} has no free /{size} subnet left for a new node")
    return random.choice(free)
