"""``image.build``: a build on this manager's engine for a CLI that has none.

A CLI on an operator's machine without an engine (``stack deploy`` through
``--host ssh://`` or a context, pyswarm/build.py's :class:`ManagerBuilder`)
streams its build context here, over the API connection it already has,
and this manager's engine builds it. Why this shape:

- **The API's streaming call, with a window.** The context (a tar made on
  the operator's machine, ``.dockerignore`` applied) arrives as input lines
  of :data:`pyswarm.build.UPLOAD_CHUNK` bytes (base64); every chunk handed to
  the engine is acknowledged with an ``ack`` item, and the CLI keeps at most
  :data:`pyswarm.build.UPLOAD_WINDOW` chunks unacknowledged, so a big
  context never piles up in the manager's memory. The engine's progress
  messages come back as ``build`` items, read on the CLI by the same code
  that reads a local engine's (:class:`pyswarm.build.BuildProgress`).
- **Served here, never forwarded:** the image ends on the engine of the
  manager the CLI reached. Automatic shipping reads the leader's engine
  (manager/images.py), so a follower that built sends the image on to the
  leader's node (only the layers it lacks) before it answers: the deploy
  that follows finds it where the shipper looks. If that fails, the call
  fails, and the deploy stops with nothing changed.
- **Only build options.** The engine's ``/build`` query is checked key by
  key against what :func:`pyswarm.build.build_params` sends; the tag must be
  the image asked for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pyswarm.build import BUILD_QUERY_KEYS, UPLOAD_CHUNK
from pyswarm.errors import PyswarmError, UsageError
from pyswarm.images import MAX_REF, MessageError, check_ref
from pyswarm.models import NodeRole
from pyswarm.rpc import Final
from pyswarm.wire import rule

from .images import ImageService
from .store import Store

log = logging.getLogger(__name__)

MAX_CONTEXT = 8 << 30  # bytes: what one build may upload


@dataclass(frozen=True)
class BuildRequest:
    service: str = field(metadata=rule(max_len=256))
    image: str = field(metadata=rule(max_len=MAX_REF))
    query: list[list[str]] = field(metadata=rule(max_len=256))
    size: int = field(metadata=rule(min=0, max=MAX_CONTEXT))


def check_request(req: BuildRequest) -> list[tuple[str, str]]:
    """The engine query of ``req``, or a UsageError naming what is wrong."""
    try:
        check_ref(req.image)
    except MessageError as exc:
        raise UsageError(str(exc)) from None
    query: list[tuple[str, str]] = []
    for i, pair in enumerate(req.query):
        if len(pair) != 2 or len(pair[1]) > 1 << 16:
            raise UsageError(f"query[{i}]: expected [key, value]")
        if pair[0] not in BUILD_QUERY_KEYS:
            raise UsageError(f"query[{i}]: {pair[0]!r} is not a build option pyswarm sends")
        query.append((pair[0], pair[1]))
    tags = [v for k, v in query if k == "t"]
    if tags != [req.image]:
        raise UsageError(f"query: the tag must be the image {req.image} (got {', '.join(tags) or 'none'})")
    return query


async def built_hash(images: ImageService, ref: str) -> dict[str, Any] | None:
    """``image.built``: the build hash label of ``ref`` on this engine
    ("" when it has none), None when the image is not here."""
    from pyswarm.images import LABEL_BUILD_HASH

    data = await images.docker.inspect_image(ref)
    if data is None:
        return None
    return {"hash": str(((data.get("Config") or {}).get("Labels") or {}).get(LABEL_BUILD_HASH, "")),
            "id": str(data.get("Id", ""))}


@dataclass(frozen=True)
class LoadRequest:
    image: str = field(metadata=rule(max_len=MAX_REF))
    size: int = field(metadata=rule(min=0, max=MAX_CONTEXT))


Inputs = asyncio.Queue[dict[str, Any] | None]


class _Upload:
    """The bytes a CLI streams in (``{"data": b64}`` lines, then ``{"eof":
    true}``), handed to the engine as they come, each chunk acknowledged."""

    def __init__(self, size: int, inputs: Inputs, out: asyncio.Queue[Any]) -> None:
        self.size, self.inputs, self.out = size, inputs, out
        self.received = self.chunks = 0

    async def body(self) -> AsyncIterator[bytes]:
        while self.received < self.size:
            msg = await self.inputs.get()
            if msg is None or msg.get("eof"):
                return  # cut short: the engine sees a truncated tar and fails
            try:
                data = base64.b64decode(str(msg.get("data", "")), validate=True)
            except (binascii.Error, ValueError):
                return
            if len(data) > UPLOAD_CHUNK or self.received + len(data) > self.size:
                return
            self.received += len(data)
            self.chunks += 1
            self.out.put_nowait({"ack": self.chunks})
            yield data


async def _relay(engine_call: Callable[[AsyncIterator[bytes]], Awaitable[None]], upload: _Upload,
                 what: str) -> AsyncIterator[Any]:
    """Run ``engine_call`` on the upload's bytes and yield what it and the
    upload put out (acks, progress) as it comes; an engine failure raises
    one line naming this manager."""
    done = object()

    async def run() -> None:
        try:
            await engine_call(upload.body())
        except PyswarmError as exc:
            upload.out.put_nowait(UsageError(f"{what}: the engine of manager {socket.gethostname()}: {exc}"))
        finally:
            upload.out.put_nowait(done)

    runner = asyncio.ensure_future(run())
    try:
        while (item := await upload.out.get()) is not done:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def build(store: Store, images: ImageService, req: BuildRequest, inputs: Inputs) -> AsyncIterator[Any]:
    """The streaming method ``image.build``. Inputs: the context's bytes.
    Items: ``{"ack": n}`` (chunks taken), ``{"build": msg}`` (the engine's
    progress). Answer: ``{"id", "builder", "sent_to"}``."""
    query = check_request(req)
    out: asyncio.Queue[Any] = asyncio.Queue()
    upload = _Upload(req.size, inputs, out)
    failed = False

    async def call(body: AsyncIterator[bytes]) -> None:
        async for msg in images.docker.build_image(query, body):
            out.put_nowait({"build": {k: msg[k] for k in ("stream", "aux", "error") if k in msg}})

    async for item in _relay(call, upload, f"service {req.service}: cannot build"):
        failed = failed or bool(item.get("build", {}).get("error"))
        yield item
    if failed:  # the CLI shows the engine's error with the failing step
        yield Final({"id": "", "builder": socket.gethostname(), "sent_to": ""})
        return
    data = await images.docker.inspect_image(req.image)
    if data is None:
        raise UsageError(f"service {req.service}: the engine of manager {socket.gethostname()} finished "
                         f"the build but has no image {req.image}")
    log.info("built %s for service %s (%d bytes of context)", req.image, req.service, upload.received)
    sent_to = await to_leader(store, images, req.image, f"service {req.service}: built")
    yield Final({"id": str(data.get("Id", "")), "builder": socket.gethostname(), "sent_to": sent_to})


async def load(store: Store, images: ImageService, req: LoadRequest, inputs: Inputs) -> AsyncIterator[Any]:
    """The streaming method ``image.load``: a ``docker save`` archive of an
    image a remote CLI built with its own engine, into this manager's
    engine (then the leader's, as for a build). Answer: ``{"loaded", "sent_to"}``."""
    try:
        check_ref(req.image)
    except MessageError as exc:
        raise UsageError(str(exc)) from None
    out: asyncio.Queue[Any] = asyncio.Queue()
    upload = _Upload(req.size, inputs, out)
    loaded: list[str] = []

    async def call(body: AsyncIterator[bytes]) -> None:
        loaded.extend(await images.docker.load_image(body))

    async for item in _relay(call, upload, f"image {req.image}: cannot load"):
        yield item
    if await images.docker.inspect_image(req.image) is None:
        raise UsageError(f"image {req.image}: the archive sent did not load it on manager {socket.gethostname()} "
                         f"(loaded: {', '.join(loaded) or 'nothing'})")
    sent_to = await to_leader(store, images, req.image, "loaded")
    log.info("loaded %s from a CLI (%d bytes)", req.image, upload.received)
    yield Final({"loaded": loaded, "sent_to": sent_to, "bytes": upload.received})


async def to_leader(store: Store, images: ImageService, ref: str, what: str) -> str:
    """On a follower: send the image to the leader's node, where automatic
    shipping reads it. Returns the leader's hostname ("" on the leader)."""
    if store.is_leader:
        return ""
    snap = store.snapshot()
    leader = next((n for n in snap.nodes() if n.role == NodeRole.MANAGER
                   and f"{n.addr}:{n.raft_port}" == store.leader), None)
    if leader is None:
        raise UsageError(f"{what} {ref} on manager {socket.gethostname()}, "
                         "but there is no leader to send it to (retry when one is elected)")
    shipment = (await images.push(ref, [leader.id]))[0]
    if shipment.result == "failed":
        raise UsageError(f"{what} {ref} on manager {socket.gethostname()}, but "
                         f"sending it to the leader {leader.hostname} failed: {shipment.error}")
    return leader.hostname
