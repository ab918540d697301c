"""Credentials an operator turns over: autolock and its unlock key
(docs/security.md).

``cluster.update`` with ``autolock`` turns autolock on (a new unlock key,
returned once) or off; ``swarm.unlock_key`` prints the current key or, with
``rotate``, makes a new one (every running manager re-locks its data key
with it, manager/autolock.py). ``swarm.unlock`` is answered by a locked
manager only; an unlocked one says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyswarm.errors import UsageError

from .. import ops
from ..autolock import new_unlock_key
from .base import Resource, cluster_of, method


@dataclass(frozen=True)
class UnlockKeyRequest:
    rotate: bool = False


@dataclass(frozen=True)
class UnlockRequest:
    key: str = ""


class Security(Resource):
    @method("swarm.unlock_key", UnlockKeyRequest)
    async def unlock_key(self, req: UnlockKeyRequest) -> Any:
        cluster = cluster_of(self.snap())
        if not cluster.autolock:
            raise UsageError("autolock is not enabled: turn it on with `pyswarm swarm update --autolock=true`")
        key = cluster.unlock_key
        if req.rotate:
            key = new_unlock_key()
            await self.store.commit([ops.expect("cluster", cluster.id, "autolock", True),
                                     ops.patch("cluster", cluster.id, unlock_key=key)])
        return {"key": key, "rotated": req.rotate}

    @method("swarm.rotate_ssh_key")
    async def rotate(self, req: object) -> Any:
        return await rotate_ssh_key(self)

    @method("swarm.unlock", UnlockRequest)
    async def unlock(self, req: UnlockRequest) -> Any:
        raise UsageError("this manager is not locked")


async def rotate_ssh_key(resource: Resource) -> dict[str, Any]:
    """A new cluster SSH key (``swarm ca --rotate``, and ``node rm`` of a node
    that had the old one). The dispatcher connects with the new key and the
    old (until every node has the new one); each agent's next configure puts
    the new public key in its authorized_keys in place of the old, so the
    old private key opens nothing once every node has it. Sessions and
    containers are not touched."""
    import asyncssh

    from pyswarm.host import KEY_COMMENT

    cluster = cluster_of(resource.snap())
    key = asyncssh.generate_private_key("ssh-ed25519", comment=KEY_COMMENT)
    public = key.export_public_key().decode().strip()
    await resource.store.commit([
        ops.expect("cluster", cluster.id, "ssh_public_key", cluster.ssh_public_key),
        ops.patch("cluster", cluster.id, ssh_public_key=public, ssh_private_key=key.export_private_key().decode(),
                  previous_ssh_private_key=cluster.ssh_private_key),
    ])
    return {"ssh_public_key": public}


async def set_autolock(resource: Resource, on: bool) -> dict[str, Any]:
    """``swarm update --autolock``: the fields changed, and the new unlock key when turned on."""
    cluster = cluster_of(resource.snap())
    if on == cluster.autolock:
        return {"autolock": on, **({"unlock_key": cluster.unlock_key} if on else {})}
    key = new_unlock_key() if on else ""
    await resource.store.commit([ops.patch("cluster", cluster.id, autolock=on, unlock_key=key)])
    return {"autolock": on, **({"unlock_key": key} if on else {})}
