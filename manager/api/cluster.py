"""The cluster itself: ping, settings (``swarm update``), the replica export."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyswarm.errors import UsageError
from pyswarm.wire import rule

from .. import ops
from .base import Resource, cluster_of, method
from .security import set_autolock


@dataclass(frozen=True)
class ClusterUpdate:
    task_history_limit: int | None = field(default=None, metadata=rule(min=0, max=1000))
    max_replicas: int | None = field(default=None, metadata=rule(min=1, max=10_000_000))
    autolock: bool | None = None  # manager/api/security.py


class ClusterApi(Resource):
    @method("ping")
    async def ping(self, req: object) -> Any:
        cluster = self.snap().cluster
        return {
            "node_id": self.me.node_id,
            "cluster_id": cluster.id if cluster else "",
            "leader": self.store.is_leader,
            "ready": cluster is not None,
        }

    @method("store.export")
    async def export(self, req: object) -> Any:
        """This manager's replica, as is (works without quorum: it is what
        ``init --force-new-cluster`` rebuilds a cluster from)."""
        snap = self.snap()
        return {"index": snap.index, "objects": snap.raw.plain()}

    @method("cluster.update", ClusterUpdate)
    async def update(self, req: ClusterUpdate) -> Any:
        """``swarm update``: cluster settings (task history limit, max replicas)."""
        cluster = cluster_of(self.snap())
        fields: dict[str, Any] = {}
        if req.task_history_limit is not None:
            fields["task_history_limit"] = req.task_history_limit
        if req.max_replicas is not None:
            fields["max_replicas"] = req.max_replicas  # admission (manager/limits.py)
        if not fields and req.autolock is None:
            raise UsageError("swarm update: nothing to change (give --task-history-limit, --max-replicas or --autolock)")
        if fields:
            await self.store.commit([ops.patch("cluster", cluster.id, **fields)])
        if req.autolock is not None:
            fields.update(await set_autolock(self, req.autolock))
        return {"id": cluster.id, **fields}
