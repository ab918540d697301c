"""The API's streaming methods (served by :mod:`..servers`), and restarts.

``service.logs`` (also stack logs), ``service.exec`` and ``stats`` need the
nodes and run on the leader (a follower forwards them, :mod:`.forward`);
``events`` reads this manager's own :class:`~.events.EventLog`.
``service.restart`` and ``task.restart`` are plain writes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from pyswarm.errors import NotFoundError, UsageError
from pyswarm.models import DESIRED_RUNNING, DESIRED_SHUTDOWN, NodeRole

from pyswarm.wire import parse

from .. import events as cluster_events
from .. import ops
from .. import builds, execstats, logs
from ..forward import LeaderDoor
from ..images import ImageService
from ..orchestrator import new_task
from ..store import Store
from ..streams import StreamHub
from .base import REF, Resource, ServiceRef, method
from .services import Services, ServiceUpdate

LEADER_ONLY = frozenset({"service.logs", "service.exec", "stats"})


class StreamApi:
    # image.build/load run on the engine of the manager reached (manager/builds.py)
    methods = LEADER_ONLY | {"events", "image.build", "image.load"}
    forwarded = LEADER_ONLY  # what a follower may hand on to the leader

    def __init__(self, store: Store, hub: StreamHub, event_log: cluster_events.EventLog,
                 images: ImageService | None = None) -> None:
        self._store = store
        self.hub = hub
        self.event_log = event_log
        self.images = images

    def must_forward(self, method: str) -> bool:
        return method in LEADER_ONLY and not self._store.is_leader

    def leader_door(self) -> LeaderDoor | None:
        snap = self._store.snapshot()
        leader, cluster = self._store.leader, snap.cluster
        if not leader or cluster is None:
            return None
        for node in snap.nodes():
            if node.role == NodeRole.MANAGER and f"{node.addr}:{node.raft_port}" == leader:
                return LeaderDoor(node.addr, node.api_port, cluster.api_host_private_key, cluster.ssh_private_key)
        return None

    def forward_keys(self) -> list[str]:
        """The public keys the ``forward`` user may log in with: the cluster's."""
        cluster = self._store.snapshot().cluster
        if cluster is None:
            return []
        keys = [cluster.ssh_public_key]
        if cluster.previous_ssh_private_key:
            try:
                keys.append(asyncssh.import_private_key(cluster.previous_ssh_private_key)
                            .export_public_key().decode())
            except (asyncssh.KeyImportError, ValueError):
                pass
        return keys

    def open(self, method: str, params: dict[str, Any], inputs: execstats.Inputs) -> AsyncIterator[Any]:
        """The call's items; its params are parsed (:mod:`pyswarm.wire`) first."""
        if method == "service.logs":
            return logs.logs(self._store, self.hub, parse(logs.LogsRequest, params))
        if method == "service.exec":
            return execstats.exec_(self._store, self.hub, parse(execstats.ExecRequest, params), inputs)
        if method == "stats":
            return execstats.stats(self._store, self.hub, parse(execstats.StatsRequest, params))
        if method == "events":
            return cluster_events.events(self.event_log, parse(cluster_events.EventsRequest, params))
        if method == "image.build" and self.images is not None:
            return builds.build(self._store, self.images, parse(builds.BuildRequest, params), inputs)
        if method == "image.load" and self.images is not None:
            return builds.load(self._store, self.images, parse(builds.LoadRequest, params), inputs)
        raise UsageError(f"unknown streaming method {method!r}")



@dataclass(frozen=True)
class TaskRef:
    task: str = field(metadata=REF)


class Restarts(Resource):
    """``service restart`` and ``task restart``."""

    @method("service.restart", ServiceRef)
    async def service_restart(self, req: ServiceRef) -> Any:
        """A rolling replacement of every task per update_config: the
        ``service update --force`` path (manager/updater.py)."""
        return await Services(self.store, self.me).update(ServiceUpdate(service=req.service, force=True))

    @method("task.restart", TaskRef)
    async def task_restart(self, req: TaskRef) -> Any:
        """Replace one task: a new task for its slot (or node) and the old
        one shut down, in one transaction, so the slot never has two live."""
        snap = self.snap()
        task = logs.find_task(snap, req.task)
        if task is None:
            raise NotFoundError(f"task {req.task} not found")
        if task.desired_state != DESIRED_RUNNING or task.state.terminal:
            raise UsageError(f"task {req.task} is not running ({task.state.value}, desired {task.desired_state})")
        service = snap.service(task.service_id)
        if service is None:
            raise NotFoundError(f"the service of task {req.task} is gone")
        now = time.time()
        fresh = new_task(service, task.slot, now, task.node_id if service.spec.mode == "global" else "")
        fresh.message = "restarted by request"
        await self.store.commit([
            ops.expect("task", task.id, "desired_state", DESIRED_RUNNING),
            ops.patch("task", task.id, desired_state=DESIRED_SHUTDOWN, message="restart requested"),
            ops.put(fresh),
        ])
        return {"task": task.id, "replacement": fresh.id, "service": service.name}
