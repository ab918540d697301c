"""Nodes: list, inspect, promote, demote, remove, update.

Membership changes go through Raft's own membership change as well as the
store, and refuse what would cost the remaining managers their majority.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from pyswarm.errors import NoQuorumError, NotFoundError, UsageError
from pyswarm.models import Node, NodeAvailability, NodeRole, NodeStatus
from pyswarm.wire import rule

from .. import lag, ops
from ..store import Op, Snapshot, TransactionAborted
from .security import rotate_ssh_key
from .base import REF, REFS, NodeRef, Resource, find_node, method
from .metrics import manager_metrics

LABELS = rule(max_len=1000)
DEMOTE_TIMEOUT = 45.0  # seconds: a leadership transfer, then a membership change


@dataclass(frozen=True)
class NodeList:
    nodes: list[str] = field(metadata=REFS)


@dataclass(frozen=True)
class NodeRemove:
    nodes: list[str] = field(metadata=REFS)
    force: bool = False


@dataclass(frozen=True)
class NodeUpdate:
    node: str = field(metadata=REF)
    availability: NodeAvailability | None = None
    label_add: dict[str, str] = field(default_factory=dict, metadata=LABELS)
    label_rm: list[str] = field(default_factory=list, metadata=LABELS)


class Nodes(Resource):
    def manager_status(self, node: Node) -> str:
        if node.role != NodeRole.MANAGER:
            return ""
        addr = f"{node.addr}:{node.raft_port}"
        if self.store.leader == addr:
            return "leader"
        if addr == self.store.self_addr:
            return "reachable"
        status = self.store.status()
        return "reachable" if status.get(f"partner_node_status_server_{addr}") == 2 else "unreachable"

    def _row(self, node: Node) -> dict[str, Any]:
        return {
            "id": node.id,
            "hostname": node.hostname,
            "address": node.addr,
            "role": node.role.value,
            "status": node.status.value,
            "labels": node.labels,
            "engine_labels": node.engine_labels,
            "availability": node.availability.value,
            "manager_status": self.manager_status(node),
            "engine_version": node.engine_version,
            # a manager that cannot write its state says so on its own row
            "message": (self.store.disk_error if node.id == self.me.node_id and self.store.disk_error
                        else node.message),
            "self": node.id == self.me.node_id,
        }

    @method("node.ls")
    async def ls(self, req: object) -> Any:
        nodes = sorted(self.snap().nodes(), key=lambda n: (n.role != NodeRole.MANAGER, n.hostname))
        return [self._row(n) for n in nodes]

    @method("node.inspect", NodeRef)
    async def inspect(self, req: NodeRef) -> Any:
        node = find_node(self.snap(), req.node)
        data = node.to_dict()
        data["manager_status"] = self.manager_status(node)
        if node.id == self.me.node_id and lag.current() is not None:
            data["manager_metrics"] = manager_metrics(self.store)  # this manager's own figures
        return data

    def _reachable_managers(self, snap: Snapshot) -> list[Node]:
        return [n for n in snap.nodes() if self.manager_status(n) in ("leader", "reachable")]

    @method("node.promote", NodeList)
    async def promote(self, req: NodeList) -> Any:
        """Make a worker a manager: the leader's dispatcher tells its agent to
        start one, and the Raft membership grows by it."""
        snap = self.snap()
        done = []
        for ref in req.nodes:
            node = find_node(snap, ref)
            if node.role == NodeRole.MANAGER:
                done.append(f"Node {node.hostname} is already a manager.")
                continue
            if node.status != NodeStatus.READY:
                raise UsageError(f"node {node.hostname} is {node.status.value}: only a ready node can be promoted "
                                 "(its agent starts the manager)")
            await self.store.commit([ops.patch("node", node.id, role=NodeRole.MANAGER.value, held_keys=True,
                                               demoting=False, updated_at=time.time())])
            # the new membership counts the new manager, so it commits once that
            # manager runs and has caught up; wait for it before the next one,
            # or two new members at once could hold the quorum hostage
            await self.store.change_membership("add", f"{node.addr}:{node.raft_port}", wait=45)
            done.append(f"Node {node.hostname} promoted to a manager in the swarm.")
        return done

    @method("node.demote", NodeList)
    async def demote(self, req: NodeList) -> Any:
        snap = self.snap()
        done = []
        for ref in req.nodes:
            node = find_node(snap, ref)
            if node.role != NodeRole.MANAGER:
                done.append(f"Node {node.hostname} is already a worker.")
                continue
            await self._demote(snap, node)
            snap = self.snap()
            done.append(f"Manager {node.hostname} demoted in the swarm.")
        return done

    async def _demote(self, snap: Snapshot, node: Node) -> None:
        """Refuse a demotion that would leave the remaining managers without
        a majority of them reachable; otherwise mark the node demoting and
        wait while the leader settles it (manager/demotion.py: leadership
        off it, out of Raft, then its role), so the membership change has
        committed before the demoted manager stops."""
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
        await self.store.commit([ops.patch("node", node.id, demoting=True, updated_at=time.time())])
        deadline = time.monotonic() + DEMOTE_TIMEOUT
        cut_off_since: float | None = None
        while True:
            now = self.snap().node(node.id)
            if now is None or now.role != NodeRole.MANAGER:
                return
            if node.id == self.me.node_id:
                # demoting this very manager: once the leader has taken it out
                # of Raft it hears nothing more, its own role change included
                cut_off = self.store.leader is None or not self.store.has_quorum
                cut_off_since = (cut_off_since or time.monotonic()) if cut_off else None
                if cut_off_since is not None and time.monotonic() - cut_off_since > 3:
                    return
            if time.monotonic() > deadline:
                raise NoQuorumError(f"{node.hostname} was not demoted within {DEMOTE_TIMEOUT:.0f}s "
                                    "(the leader moves leadership off it, then takes it out of Raft); "
                                    "see the managers' logs")
            await asyncio.sleep(0.1)

    @method("node.rm", NodeRemove)
    async def rm(self, req: NodeRemove) -> Any:
        snap = self.snap()
        removed = []
        for ref in req.nodes:
            node = find_node(snap, ref)
            if node.role == NodeRole.MANAGER:
                if not req.force:
                    raise UsageError(f"node {node.hostname} is a manager: demote it first "
                                     f"(`pyswarm node demote {node.hostname}`) or use --force")
                await self._demote(snap, node)
            elif node.status == NodeStatus.READY and not req.force:
                raise UsageError(f"node {node.hostname} is ready and running tasks: drain it and stop it first, "
                                 "or use --force")
            txn: list[Op] = [ops.delete("node", node.id)]
            if node.subnet:
                txn.append(ops.delete("subnet", node.subnet))
            await self.store.commit(txn)
            if node.held_keys or node.role == NodeRole.MANAGER:
                # it has had the cluster's SSH private key: a new one, so that
                # its copy opens no node's authorized_keys any more
                await rotate_ssh_key(self)
            snap = self.snap()
            removed.append(node.hostname)
        return removed

    @method("node.update", NodeUpdate)
    async def update(self, req: NodeUpdate) -> Any:
        """Availability and labels of one node (by id, id prefix or hostname).
        Labels are written whole, guarded by what was read, so two updates at
        once cannot lose each other's labels (the loser retries)."""
        for key in [*req.label_add, *req.label_rm]:
            if not key or "=" in key or len(key) > 256:
                raise UsageError(f"invalid label key {key[:60]!r}")
        for attempt in range(10):
            node = find_node(self.snap(), req.node)
            missing = [k for k in req.label_rm if k not in node.labels and k not in req.label_add]
            if missing:
                raise NotFoundError(f"node {node.hostname} has no label {missing[0]!r}")
            labels = {k: v for k, v in node.labels.items() if k not in req.label_rm}
            labels.update(req.label_add)
            fields: dict[str, Any] = {"labels": labels, "updated_at": time.time()}
            if req.availability is not None:
                fields["availability"] = req.availability.value
            try:
                await self.store.commit([
                    ops.expect("node", node.id, "labels", node.labels),
                    ops.patch("node", node.id, **fields),
                ])
            except TransactionAborted:
                if attempt == 9:
                    raise
                continue
            availability = req.availability or node.availability
            return {"id": node.id, "hostname": node.hostname, "availability": availability.value, "labels": labels}
        raise AssertionError("unreachable")
