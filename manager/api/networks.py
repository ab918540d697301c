"""Cluster networks: create, list, inspect, remove (rules in manager/networks.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pyswarm.errors import NotFoundError, UsageError
from pyswarm.models import Network, new_id
from pyswarm.wire import rule

from .. import networks as cluster_networks
from .. import ops
from ..store import Op
from .base import NameList, NameRef, Resource, method


@dataclass(frozen=True)
class NetworkCreate:
    name: str = field(metadata=rule(max_len=256))
    labels: dict[str, str] = field(default_factory=dict, metadata=rule(max_len=1000))
    internal: bool = False
    attachable: bool = False


class Networks(Resource):
    @method("network.create", NetworkCreate)
    async def create(self, req: NetworkCreate) -> Any:
        cluster_networks.check_name(req.name)
        snap = self.snap()
        if cluster_networks.network_by_name(snap, req.name) is not None:
            raise UsageError(f"network {req.name} already exists")
        net = Network(id=new_id(), name=req.name, labels=dict(req.labels), internal=req.internal,
                      attachable=req.attachable, created_at=time.time())
        await self.store.commit([ops.expect_absent("network", net.id), ops.put(net)])
        return {"id": net.id, "name": req.name}

    @method("network.ls")
    async def ls(self, req: object) -> Any:
        snap = self.snap()
        nets = sorted(cluster_networks.all_networks(snap), key=lambda n: n.name)
        return [cluster_networks.network_row(n, snap) for n in nets]

    @method("network.inspect", NameRef)
    async def inspect(self, req: NameRef) -> Any:
        snap = self.snap()
        net = cluster_networks.network_by_name(snap, req.name)
        if net is None:
            raise NotFoundError(f"network {req.name} not found")
        return cluster_networks.network_row(net, snap)

    @method("network.rm", NameList)
    async def rm(self, req: NameList) -> Any:
        """Refuses a network still attached to a service, like Docker."""
        snap = self.snap()
        txn: list[Op] = []
        removed = []
        for ref in req.names:
            net = cluster_networks.network_by_name(snap, ref)
            if net is None:
                raise NotFoundError(f"network {ref} not found")
            using = cluster_networks.users(snap, net.name)
            if using:
                raise UsageError(f"network {net.name} is in use by the following services: {', '.join(using)}")
            txn.append(ops.delete("network", net.id))
            removed.append(net.name)
        await self.store.commit(txn)
        return removed
