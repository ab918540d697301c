"""image.push, image.ls, image.shipments: images from this manager's engine.

These are served by the manager the CLI reached, never forwarded: the image
comes from *this* machine's engine (where the operator's CLI runs), and the
connections to the nodes are this manager's (the dispatcher's on the
leader). ``image.built``, ``image.chains``, ``image.to_leader`` and the
streaming ``image.build``
(manager/builds.py) build on this manager's engine for a remote CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyswarm.images import MAX_REF, MessageError, check_ref, engine_chains
from pyswarm.errors import UsageError
from pyswarm.wire import rule

from ..builds import built_hash, to_leader
from ..images import ImageService
from ..store import Store
from .base import Resource, Self, method


@dataclass(frozen=True)
class ImagePush:
    image: str = field(metadata=rule(max_len=MAX_REF))
    nodes: list[str] = field(default_factory=list, metadata=rule(max_len=10_000))


@dataclass(frozen=True)
class ImageRef:
    image: str = field(metadata=rule(max_len=MAX_REF))


class Images(Resource):
    def __init__(self, store: Store, me: Self, images: ImageService) -> None:
        super().__init__(store, me)
        self.images = images

    @method("image.push", ImagePush)
    async def push(self, req: ImagePush) -> Any:
        try:
            check_ref(req.image)
        except MessageError as exc:
            raise UsageError(str(exc)) from None
        for i, n in enumerate(req.nodes):
            if not n or len(n) > 256:
                raise UsageError(f"nodes[{i}]: expected a node name or id")
        return [s.to_dict() for s in await self.images.push(req.image, list(req.nodes))]

    @method("image.built", ImageRef)
    async def built(self, req: ImageRef) -> Any:
        """The build hash of an image on this manager's engine, for a remote
        CLI's ``stack deploy`` deciding what to build (manager/builds.py)."""
        try:
            check_ref(req.image)
        except MessageError as exc:
            raise UsageError(str(exc)) from None
        return await built_hash(self.images, req.image)

    @method("image.chains")
    async def chains(self, req: object) -> Any:
        """Every layer chain this manager's engine holds: a remote CLI sends
        ``image.load`` only the layers whose chain is not among them (the
        comparison a node's ``have`` answer serves for shipping)."""
        return {"chains": sorted(await engine_chains(self.images.docker))}

    @method("image.to_leader", ImageRef)
    async def to_leader(self, req: ImageRef) -> Any:
        """A CLI built an image with this manager's own engine: on a follower
        it goes on to the leader's node (only missing layers), where automatic
        shipping reads it. ``{"sent_to": leader}``, "" on the leader."""
        try:
            check_ref(req.image)
        except MessageError as exc:
            raise UsageError(str(exc)) from None
        if await self.images.docker.inspect_image(req.image) is None:
            raise UsageError(f"image {req.image} is not on the engine of this manager")
        return {"sent_to": await to_leader(self.store, self.images, req.image, "built")}

    @method("image.ls")
    async def ls(self, req: object) -> Any:
        return await self.images.ls()

    @method("image.shipments")
    async def shipments(self, req: object) -> Any:
        return self.images.shipments()
