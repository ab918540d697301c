"""Joining hosts: the join token, the join itself.

``join.info`` and ``join`` are the only methods a host may call with a join
token (over the SSH API port, manager/servers.py); the role comes from the
token that authenticated the session, never from the request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pyswarm.errors import UsageError
from pyswarm.models import Node, NodeRole, NodeStatus, new_id
from pyswarm.tokens import Token, new_secret
from pyswarm.wire import rule

from .. import ops, sealing
from ..store import Op, Snapshot, TransactionAborted
from .base import Resource, cluster_of, method

# methods a joining host may call with a join token (over the SSH API port)
JOIN_METHODS = frozenset({"join.info", "join"})
JOIN_ATTEMPTS = 30  # hosts joining at once each lose a subnet race at most a few times

PORT = rule(min=1, max=65535)
HOSTNAME = rule(pattern=r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


@dataclass(frozen=True)
class JoinTokenRequest:
    role: Literal["worker", "manager"] = "worker"
    rotate: bool = False  # a new secret: the old token stops working; joined nodes are unaffected


@dataclass(frozen=True)
class JoinRequest:
    hostname: str = field(metadata=HOSTNAME)
    addr: str = field(metadata=rule(max_len=64))
    ssh_host_key: str = field(metadata=rule(max_len=16384))
    ssh_port: int = field(default=22, metadata=PORT)
    role: Literal["worker", "manager"] = "worker"  # set by the server from the token
    platform: dict[str, str] = field(default_factory=dict, metadata=rule(max_len=16))
    api_port: int | None = field(default=None, metadata=PORT)
    raft_port: int | None = field(default=None, metadata=PORT)

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.addr)
        except ValueError:
            raise UsageError(f"addr: {self.addr[:64]!r} is not an IP address") from None


class JoinApi(Resource):
    @method("join.info")
    async def info(self, req: object) -> Any:
        cluster = cluster_of(self.snap())
        # pool, overlay and clock: what the joining host's preflight checks against
        return {"cluster_id": cluster.id, "ssh_public_key": cluster.ssh_public_key,
                "addr_pool": cluster.addr_pool, "overlay": cluster.overlay, "time": time.time()}

    @method("join_token", JoinTokenRequest)
    async def token(self, req: JoinTokenRequest) -> Any:
        cluster = cluster_of(self.snap())
        secret = cluster.manager_token_secret if req.role == "manager" else cluster.worker_token_secret
        if req.rotate:
            secret = new_secret()
            await self.store.commit([ops.patch("cluster", cluster.id, **{f"{req.role}_token_secret": secret})])
        token = Token(cluster.api_host_key_fingerprint, secret)
        return {"token": str(token), "addr": f"{self.me.advertise_addr}:{self.me.api_port}"}

    @method("join", JoinRequest)
    async def join(self, req: JoinRequest) -> Any:
        """Admit a host. A host that joins again under the same hostname and
        address keeps its node id and its container subnet. Hosts joining at
        the same moment may pick the same free subnet; the claim's
        precondition lets one win and the other tries the next."""
        for attempt in range(JOIN_ATTEMPTS):
            try:
                return await self._join_once(req, spread=1 if attempt == 0 else 64)
            except TransactionAborted:
                if attempt == JOIN_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _join_once(self, req: JoinRequest, spread: int = 1) -> Any:
        snap = self.snap()
        cluster = cluster_of(snap)
        role = NodeRole(req.role)
        existing = next((n for n in snap.nodes() if n.hostname == req.hostname and n.addr == req.addr), None)
        txn: list[Op] = []
        now = time.time()
        if existing is not None and existing.ssh_host_key and \
                existing.ssh_host_key.split()[:2] != req.ssh_host_key.split()[:2]:
            # the pinned key is what the leader trusts with this node's
            # secrets: a join token must not be enough to change it
            raise UsageError(
                f"node {existing.hostname} ({req.addr}) is already in the cluster with another SSH host key; "
                f"if this host was reinstalled, remove the old node first (`pyswarm node rm {existing.hostname}`)")
        if existing is not None:
            node = dataclasses.replace(existing)  # a copy: the snapshot's objects are shared, read-only
            node.ssh_host_key = req.ssh_host_key
            node.ssh_port = req.ssh_port
            node.status = NodeStatus.UNKNOWN
            node.role = role
            node.updated_at = now
        else:
            clash = next((n for n in snap.nodes() if n.addr == req.addr and n.status != NodeStatus.DOWN), None)
            if clash is not None:
                raise UsageError(f"address {req.addr} is already used by node {clash.hostname} ({clash.id[:12]})")
            subnet = free_subnet(snap, cluster.addr_pool, cluster.subnet_size, spread)
            node = Node(
                id=new_id(), hostname=req.hostname, addr=req.addr, role=role,
                ssh_host_key=req.ssh_host_key, ssh_port=req.ssh_port,
                subnet=subnet, created_at=now, updated_at=now, platform=dict(req.platform),
            )
            txn.append(ops.expect_absent("subnet", subnet))
            txn.append(ops.put_raw("subnet", subnet, {"node_id": node.id}))
        if role == NodeRole.MANAGER:
            node.held_keys = True
            node.api_port = req.api_port or node.api_port
            node.raft_port = req.raft_port or node.raft_port
        txn.append(ops.put(node))
        await self.store.commit(txn)
        answer: dict[str, Any] = {"node_id": node.id, "cluster_id": cluster.id, "subnet": node.subnet}
        if role == NodeRole.MANAGER:
            raft_addr = f"{req.addr}:{node.raft_port}"
            # the new membership counts the joiner, so this commits once it runs
            await self.store.change_membership("add", raft_addr)
            answer["manager"] = {
                "raft_secret": cluster.raft_secret,
                "api_host_private_key": cluster.api_host_private_key,
                "data_key": sealing.KEY.export() if sealing.KEY is not None else "",
                "raft_peers": sorted({raft_addr, *manager_raft_addrs(snap)}),
                "api_group": cluster.api_group,
            }
        return answer


def manager_raft_addrs(snap: Snapshot) -> list[str]:
    return [f"{n.addr}:{n.raft_port}" for n in snap.nodes() if n.role == NodeRole.MANAGER]


def free_subnet(snap: Snapshot, pool: str, size: int, spread: int = 1) -> str:
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
