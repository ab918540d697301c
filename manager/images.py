"""Shipping images from this manager's engine to nodes, over SSH, without a registry.

The sender is the engine of the manager that does the work: the one an
operator's ``pyswarm image push`` reached (its CLI runs there), or the
leader for automatic shipping (a task landed on a node that lacks its
image). Why this shape (the wire is in :mod:`pyswarm.images`):

- **A spool, then per-node archives.** ``docker save`` writes the layers
  before the manifest that names them, so it cannot be filtered on the fly.
  The archive is saved once to this manager's disk and indexed; each node
  then gets a tar holding the config, the manifest and only the layers
  whose *chain* it lacks, read from the spool (several nodes at once read
  the same file). ``docker load`` skips every layer it already has, so the
  result is the same image ID.
- **The node's own SSH connection.** On the leader the dispatcher's
  connection to the node carries a second session (the image channel);
  elsewhere (``image push`` on a follower) this manager opens one with the
  cluster key, as the dispatcher would.
- **Bounded.** At most :data:`PARALLEL` nodes receive at once, over all
  pushes and automatic shipments of this manager, so a big push cannot
  saturate the sender's link or disk. Every shipment is recorded (bytes on
  the wire, layers sent and skipped, seconds) for ``pyswarm image
  shipments`` and the tests.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from pyswarm.errors import NotFoundError, PyswarmError, UsageError
from pyswarm.images import (
    CHANNEL_COMMAND,
    Engine,
    PLAN_PULL,
    PLAN_SHIP,
    SavedArchive,
    ChannelRequest,
    ExportReply,
    HaveReply,
    ImageDone,
    ImagePlan,
    ImageWanted,
    LoadHeader,
    LoadReply,
    MessageError,
    NodeImage,
    check_ref,
    engine_client,
    inventory_from_line,
)
from pyswarm.models import Node, NodeStatus, TaskState

from .store import Snapshot, Store

log = logging.getLogger(__name__)

PARALLEL = 8  # nodes receiving at once from this manager (4 made a 5th node wait a whole shipment)
CHUNK = 1 << 20
REPLY_TIMEOUT = 60.0  # seconds for a node's channel to say what it has
SPOOL_LINGER = 120.0  # seconds a spool is kept for the next node that wants the image
HISTORY = 500  # shipments remembered
FETCH_TRIES = 3  # nodes asked for an image this manager's engine lacks

Connect = Callable[[Node], Awaitable[tuple[Any, bool]]]  # → (connection, close it after)


class ShipError(Exception):
    """A shipment failed; the message names the node and the reason."""


# -- the spool ------------------------------------------------------------------


@dataclass
class Spool:
    """One image's ``docker save`` archive on this manager's disk, indexed
    (:class:`pyswarm.images.SavedArchive`: each node gets it cut to the
    layers it lacks)."""

    ref: str
    image_id: str
    saved: SavedArchive
    users: int = 0
    expires: float = 0.0

    @property
    def path(self) -> Path:
        return self.saved.path

    @property
    def chains(self) -> list[str]:
        return self.saved.chains

    @classmethod
    async def make(cls, docker: Engine, ref: str, directory: Path) -> Spool:
        data = await docker.inspect_image(ref)
        if data is None:
            raise NotFoundError(f"image {ref} is not on this manager's engine")
        image_id = str(data.get("Id", ""))
        diff_ids = [str(d) for d in (data.get("RootFS") or {}).get("Layers") or ()]
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix="image-", suffix=".tar", dir=directory)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in docker.save_image(ref):
                    await asyncio.to_thread(fh.write, chunk)
            saved = await asyncio.to_thread(SavedArchive.index, path, diff_ids, f"image {ref}")
        except MessageError as exc:
            path.unlink(missing_ok=True)
            raise ShipError(str(exc)) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return cls(ref, image_id, saved)

    def needed(self, have: HaveReply) -> list[int]:
        return self.saved.needed(have.chains)

    def archive_size(self, needed: list[int]) -> int:
        return self.saved.size(needed)

    async def archive(self, needed: list[int]) -> AsyncIterator[bytes]:
        """A ``docker load``-able tar: config, the ``needed`` layers, manifest."""
        with open(self.path, "rb") as fh:
            for head, offset, size in self.saved.pieces(needed):
                yield head
                fh.seek(offset)
                left = size
                while left > 0:
                    chunk = await asyncio.to_thread(fh.read, min(CHUNK, left))
                    if not chunk:
                        raise ShipError(f"spool of {self.ref} is truncated")
                    left -= len(chunk)
                    yield chunk


# -- one shipment ------------------------------------------------------------------


@dataclass
class Shipment:
    """What happened when one image went (or did not go) to one node."""

    image: str
    node: str
    result: str = ""  # sent | present | failed | fetched (this manager's engine got it from ``node``)
    bytes: int = 0
    layers_sent: int = 0
    layers_total: int = 0
    seconds: float = 0.0
    # where the seconds went: the node's channel answering `have` (its
    # process start and layer inventory), the bytes into the session, the
    # node's load after the last byte
    seconds_have: float = 0.0
    seconds_send: float = 0.0
    seconds_load: float = 0.0
    node_cpu: float = 0.0  # CPU seconds of the node's channel process (its start, inventory, the bytes)
    error: str = ""
    reason: str = ""  # push | task | fetch
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _read_line(proc: Any, what: str, timeout: float | None) -> bytes:
    line = bytes(await asyncio.wait_for(proc.stdout.readline(), timeout))
    if not line:
        said = b""
        try:
            said = bytes(await asyncio.wait_for(proc.stderr.read(2000), 1.0))
        except (asyncio.TimeoutError, asyncssh.Error):
            pass
        raise ShipError(f"{what}: the node's image channel ended" +
                        (f": {said.decode(errors='replace').strip()}" if said else ""))
    return line


@dataclass
class Pending:
    """A spool still being saved: the node's channel can start (its process,
    its layer inventory) while the engine exports, since ``have`` needs only
    the image's ID; the layers wait for the spool."""

    ref: str
    image_id: str
    future: asyncio.Future[Spool]

    async def get(self) -> Spool:
        try:
            return await asyncio.shield(self.future)
        except (PyswarmError, OSError) as exc:
            raise ShipError(f"cannot save {self.ref}: {exc}") from None


async def ship_to(conn: Any, source: Spool | Pending, node: str, reason: str = "push") -> Shipment:
    """Send the image to the node behind ``conn``, only the layers it
    lacks. If the load fails although layers were left out (the node lost
    one since it answered), try once more with every layer."""
    shipment = Shipment(source.ref, node, reason=reason)
    started = time.monotonic()
    full = False
    try:
        while True:
            begun = time.monotonic()
            proc = await conn.create_process(CHANNEL_COMMAND, encoding=None)
            try:
                proc.stdin.write(ChannelRequest("have", image=source.ref, image_id=source.image_id).to_line())
                have = HaveReply.from_line(await _read_line(proc, "have", REPLY_TIMEOUT))
                spool = source if isinstance(source, Spool) else await source.get()
                shipment.layers_total = len(spool.chains)
                mark = time.monotonic()
                shipment.seconds_have += round(mark - begun, 3)
                if have.present:
                    proc.stdin.write_eof()
                    shipment.result = "present"
                    return shipment
                needed = list(range(len(spool.chains))) if full else spool.needed(have)
                if have.sized:
                    proc.stdin.write(LoadHeader(spool.archive_size(needed)).to_line())
                send_file = getattr(proc, "send_file", None)  # the openssh transport: the kernel copies
                if send_file is not None:
                    shipment.bytes += await send_file(spool.path, spool.saved.pieces(needed))
                else:
                    async for chunk in spool.archive(needed):
                        proc.stdin.write(chunk)
                        shipment.bytes += len(chunk)
                        await proc.stdin.drain()
                proc.stdin.write_eof()
                shipment.layers_sent = len(needed)
                sent = time.monotonic()
                shipment.seconds_send += round(sent - mark, 3)
                reply = LoadReply.from_line(await _read_line(proc, "load", None))
                shipment.seconds_load += round(time.monotonic() - sent, 3)
                shipment.node_cpu += reply.cpu
            finally:
                proc.close()
            if reply.ok:
                shipment.result = "sent"
                return shipment
            if full or len(needed) == len(spool.chains):
                raise ShipError(reply.error)
            log.info("%s: load of %s without %d layers failed (%s); sending them all",
                     node, spool.ref, len(spool.chains) - len(needed), reply.error)
            full = True
    except (ShipError, MessageError, asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
        shipment.result, shipment.error = "failed", str(exc) or type(exc).__name__
        return shipment
    finally:
        shipment.seconds = round(time.monotonic() - started, 3)


async def fetch_from(conn: Any, ref: str, docker: Engine) -> int:
    """Load ``ref`` into ``docker`` from the engine of the node behind
    ``conn`` (the channel's ``export``); the bytes received, 0 when that node
    does not hold it. Raises :class:`ShipError` when what arrived is not it."""
    proc = await conn.create_process(CHANNEL_COMMAND, encoding=None)
    try:
        proc.stdin.write(ChannelRequest("export", image=ref).to_line())
        proc.stdin.write_eof()
        reply = ExportReply.from_line(await _read_line(proc, "export", REPLY_TIMEOUT))
        if not reply.present:
            return 0
        counted = [0]

        async def body() -> AsyncIterator[bytes]:
            while chunk := await proc.stdout.read(CHUNK):
                counted[0] += len(chunk)
                yield chunk
        await docker.load_image(body())
    finally:
        proc.close()
    data = await docker.inspect_image(ref)
    if data is None or data.get("Id") != reply.image_id:
        raise ShipError(f"the archive of {ref} that arrived ({counted[0]} bytes) did not load as {reply.image_id[:19]}")
    return counted[0]


async def node_inventory(conn: Any) -> list[NodeImage]:
    proc = await conn.create_process(CHANNEL_COMMAND, encoding=None)
    try:
        proc.stdin.write(ChannelRequest("inventory").to_line())
        proc.stdin.write_eof()
        return inventory_from_line(await _read_line(proc, "inventory", REPLY_TIMEOUT))
    finally:
        proc.close()


async def remove_images(conn: Any, refs: list[str]) -> None:
    proc = await conn.create_process(CHANNEL_COMMAND, encoding=None)
    try:
        proc.stdin.write(ChannelRequest("remove", images=tuple(refs)).to_line())
        proc.stdin.write_eof()
        await _read_line(proc, "remove", REPLY_TIMEOUT)
    finally:
        proc.close()


# -- the service ---------------------------------------------------------------------


class ImageService:
    """Image shipping on one manager: ``image push``/``ls``/``shipments``
    from the API, and (on the leader) the agents' ``image_wanted``."""

    def __init__(self, store: Store, spool_dir: Path, docker: Engine | None = None) -> None:
        self._store = store
        self.spool_dir = spool_dir
        self.docker = docker or engine_client()
        self.connect: Connect | None = None  # the leader's dispatcher lends its connections
        self.history: collections.deque[Shipment] = collections.deque(maxlen=HISTORY)
        self.bytes_sent = 0
        self._slots = asyncio.Semaphore(PARALLEL)
        self._spools: dict[str, Spool] = {}
        self._spool_locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[Shipment]] = {}
        self._holders: dict[str, Node] = {}  # image → the node plan_for found holding it
        self._fetch_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for spool in self._spools.values():
            spool.path.unlink(missing_ok=True)
        self._spools.clear()
        await self.docker.close()

    # -- connections ----------------------------------------------------------

    async def _connection(self, node: Node) -> tuple[Any, bool]:
        if self.connect is not None:
            conn, owned = await self.connect(node)
            if conn is not None:
                return conn, owned
        cluster = self._store.snapshot().cluster
        keys = [asyncssh.import_private_key(k) for k in
                ((cluster.ssh_private_key, cluster.previous_ssh_private_key) if cluster else ()) if k]
        from .dispatcher import connect_node

        return await connect_node(node, keys), True

    async def _byte_connection(self, node: Node) -> tuple[Any, bool]:
        """The connection a shipment's bytes take: an ``ssh`` process of its
        own where there is a client (manager/openssh.py: the encryption off
        this manager's one event loop), else the node's asyncssh connection."""
        from . import openssh

        cluster = self._store.snapshot().cluster
        if cluster is not None and cluster.ssh_private_key and openssh.available():
            try:
                return openssh.OpenSSHConnection(node, cluster.ssh_private_key, self.spool_dir), True
            except (asyncssh.Error, ValueError, OSError) as exc:
                log.warning("%s: shipping over asyncssh (cannot set up ssh: %s)", node.hostname, exc)
        return await self._connection(node)

    async def _inventory(self, node: Node) -> list[NodeImage] | str:
        """The images on ``node``'s engine, or why they cannot be listed."""
        try:
            conn, owned = await self._connection(node)
            try:
                return await node_inventory(conn)
            finally:
                if owned:
                    conn.close()
        except (ShipError, MessageError, asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
            return str(exc) or type(exc).__name__

    # -- spools ------------------------------------------------------------------

    async def _spool(self, ref: str) -> Spool:
        lock = self._spool_locks.setdefault(ref, asyncio.Lock())
        async with lock:
            spool = self._spools.get(ref)
            if spool is not None:
                data = await self.docker.inspect_image(ref)
                if data is not None and data.get("Id") == spool.image_id:
                    spool.users += 1
                    return spool
                self._drop(spool)
            spool = await Spool.make(self.docker, ref, self.spool_dir)
            spool.users += 1
            self._spools[ref] = spool
            return spool

    def _release(self, spool: Spool) -> None:
        spool.users -= 1
        if spool.users <= 0:
            spool.expires = time.monotonic() + SPOOL_LINGER
            self._spawn(self._expire(spool))

    async def _expire(self, spool: Spool) -> None:
        await asyncio.sleep(SPOOL_LINGER)
        if spool.users <= 0 and time.monotonic() >= spool.expires:
            self._drop(spool)

    def _drop(self, spool: Spool) -> None:
        if self._spools.get(spool.ref) is spool:
            del self._spools[spool.ref]
        spool.path.unlink(missing_ok=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- shipping -------------------------------------------------------------------

    async def _ship(self, spool: Spool | Pending, node: Node, reason: str) -> Shipment:
        async with self._slots:
            try:
                conn, owned = await self._byte_connection(node)
            except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
                shipment = Shipment(spool.ref, node.hostname, "failed", error=f"cannot reach {node.hostname}: {exc}",
                                    reason=reason)
            else:
                try:
                    shipment = await ship_to(conn, spool, node.hostname, reason)
                finally:
                    if owned:
                        conn.close()
        self.bytes_sent += shipment.bytes
        self.history.append(shipment)
        log.info("image %s to %s: %s, %d bytes, %d/%d layers, %.2fs%s", shipment.image, node.hostname,
                 shipment.result, shipment.bytes, shipment.layers_sent, shipment.layers_total, shipment.seconds,
                 f" ({shipment.error})" if shipment.error else "")
        return shipment

    async def push(self, ref: str, node_refs: list[str]) -> list[Shipment]:
        """``pyswarm image push``: ``ref`` from this manager's engine to the
        named nodes (every ready node when none is named). The nodes' channels
        open while the engine saves the image (:class:`Pending`)."""
        check_ref(ref)
        snap = self._store.snapshot()
        nodes = _pick_nodes(snap, node_refs)
        data = await self.docker.inspect_image(ref)
        if data is None:
            raise NotFoundError(f"image {ref} is not on this manager's engine")
        future = asyncio.ensure_future(self._spool(ref))
        cpu = time.process_time()
        try:
            shipments = list(await asyncio.gather(*(self._ship(Pending(ref, str(data.get("Id", "")), future), n, "push")
                                                    for n in nodes)))
            await future  # its failure is the push's
        except (NotFoundError, UsageError):
            raise
        except (PyswarmError, ShipError, OSError) as exc:
            raise UsageError(f"image {ref}: {exc}") from None
        finally:
            if not future.done():
                future.cancel()
            elif not future.cancelled() and future.exception() is None:
                self._release(future.result())
            log.info("image push %s to %d nodes: %.2fs of this manager's CPU", ref, len(nodes),
                     time.process_time() - cpu)
        return shipments

    async def ls(self) -> list[dict[str, Any]]:
        """Which nodes hold which images of the cluster's services (asked
        of every ready node now, at most :data:`PARALLEL` at once)."""
        snap = self._store.snapshot()
        wanted: dict[str, list[str]] = {}
        for svc in snap.services():
            wanted.setdefault(svc.spec.container.image, []).append(svc.spec.name)
        nodes = [n for n in snap.nodes() if n.status == NodeStatus.READY]

        async def one(node: Node) -> tuple[Node, list[NodeImage] | str]:
            async with self._slots:
                return node, await self._inventory(node)

        rows: dict[str, dict[str, Any]] = {
            _with_latest(image): {"image": image, "services": sorted(names), "nodes": [], "id": "", "size": 0}
            for image, names in wanted.items()}
        problems = []
        for node, images in await asyncio.gather(*(one(n) for n in nodes)):
            if isinstance(images, str):
                problems.append(f"{node.hostname}: {images}")
                continue
            for img in images:
                for ref in {*img.tags, *img.digests}:
                    row = rows.get(_with_latest(ref))
                    if row is not None and node.hostname not in row["nodes"]:
                        row["nodes"].append(node.hostname)
                        row["id"], row["size"] = img.id, img.size
        out = sorted(rows.values(), key=lambda r: str(r["image"]))
        for row in out:
            row["nodes"].sort()
        if problems:
            out.append({"image": "", "services": [], "nodes": [], "id": "", "size": 0, "errors": problems})
        return out

    def shipments(self) -> dict[str, Any]:
        return {"bytes_sent": self.bytes_sent, "shipments": [s.to_dict() for s in self.history]}

    # -- automatic shipping (the leader) -------------------------------------------

    async def plan_for(self, ref: str, asking: str = "") -> ImagePlan:
        """Can this manager send ``ref`` (to the node ``asking``)? Only an
        image that came from no registry (no repo digest: built or loaded)
        is shipped; one from a registry is pulled by the node, as before.
        When this engine lacks it (a leader elected after the build, say),
        a node whose tasks ran it is asked (:meth:`_holder`): the image
        comes from there to this engine first (:meth:`_fetch`)."""
        try:
            data = await self.docker.inspect_image(ref)
        except PyswarmError as exc:
            return ImagePlan(ref, PLAN_PULL, reason=f"the leader's engine cannot be asked: {exc}")
        if data is None:
            holder, reason = await self._holder(ref, asking)
            if holder is None:
                return ImagePlan(ref, PLAN_PULL, reason=reason)
            self._holders[ref] = holder
        elif data.get("RepoDigests"):
            return ImagePlan(ref, PLAN_PULL, reason="it comes from a registry")
        return ImagePlan(ref, PLAN_SHIP, source=_hostname())

    def _may_hold(self, ref: str, asking: str) -> list[Node]:
        """Ready nodes (not ``asking``) that ran tasks of ``ref``, those
        running it first: the nodes whose engines should hold it."""
        snap = self._store.snapshot()
        rank: dict[str, int] = {}
        for svc in snap.services():
            if svc.spec.container.image != ref:
                continue
            for t in snap.tasks_of(svc.id):
                if t.node_id and t.node_id != asking and t.spec.image == ref:
                    r = 0 if t.state == TaskState.RUNNING else 1
                    rank[t.node_id] = min(rank.get(t.node_id, r), r)
        nodes = [snap.node(n) for n in sorted(rank, key=lambda n: (rank[n], n))]
        return [n for n in nodes if n is not None and n.status == NodeStatus.READY]

    async def _holder(self, ref: str, asking: str) -> tuple[Node | None, str]:
        """A node whose engine holds ``ref`` built or loaded, asked in turn
        (at most :data:`FETCH_TRIES`), or None and why not."""
        tried = []
        for node in self._may_hold(ref, asking)[:FETCH_TRIES]:
            images = await self._inventory(node)
            if isinstance(images, str):
                tried.append(f"{node.hostname}: {images}")
                continue
            for img in images:
                if _with_latest(ref) in {_with_latest(t) for t in img.tags}:
                    if img.digests:
                        return None, "it comes from a registry"
                    return node, ""
            tried.append(f"{node.hostname}: not there")
        return None, ("no engine of the cluster has it to ship (build it or push it to a registry)" +
                      (f"; asked {'; '.join(tried)}" if tried else ""))

    async def _fetch(self, ref: str, asking: Node) -> None:
        """Get ``ref`` into this manager's engine from the node that holds it
        (one fetch per image at a time; recorded as a ``fetched`` shipment)."""
        lock = self._fetch_locks.setdefault(ref, asyncio.Lock())
        async with lock:
            if await self.docker.inspect_image(ref) is not None:
                return  # an earlier fetch brought it
            holder = self._holders.pop(ref, None)
            if holder is None:
                holder, reason = await self._holder(ref, asking.id)
                if holder is None:
                    raise ShipError(reason)
            shipment = Shipment(ref, holder.hostname, "fetched", reason="fetch")
            started = time.monotonic()
            try:
                conn, owned = await self._byte_connection(holder)
                try:
                    shipment.bytes = await fetch_from(conn, ref, self.docker)
                finally:
                    if owned:
                        conn.close()
                if not shipment.bytes:
                    raise ShipError(f"{holder.hostname} no longer holds it")
            except (ShipError, MessageError, PyswarmError, asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
                shipment.result, shipment.error = "failed", f"from {holder.hostname}: {exc or type(exc).__name__}"
                raise ShipError(shipment.error) from None
            finally:
                shipment.seconds = round(time.monotonic() - started, 3)
                self.history.append(shipment)
                log.info("image %s from %s to this manager's engine: %s, %d bytes, %.2fs%s", ref, holder.hostname,
                         shipment.result, shipment.bytes, shipment.seconds,
                         f" ({shipment.error})" if shipment.error else "")

    def on_wanted(self, node: Node, message: dict[str, Any], reply: Callable[[dict[str, Any]], None]) -> None:
        """An agent's ``image_wanted``: answer with a plan, ship, answer done.
        One shipment per (node, image) at a time, however many tasks wait."""
        try:
            wanted = ImageWanted.from_message(message)
        except MessageError as exc:
            log.warning("%s: bad image_wanted: %s", node.hostname, exc)
            return
        self._spawn(self._serve_wanted(node, wanted, reply))

    async def _serve_wanted(self, node: Node, wanted: ImageWanted, reply: Callable[[dict[str, Any]], None]) -> None:
        plan = await self.plan_for(wanted.image, node.id)
        reply(plan.to_message())
        if plan.plan != PLAN_SHIP:
            return
        key = (node.id, wanted.image)
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.ensure_future(self._ship_for_task(wanted.image, node))
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        shipment = await asyncio.shield(task)
        reply(ImageDone(wanted.image, shipment.error if shipment.result == "failed" else "").to_message())

    async def _ship_for_task(self, ref: str, node: Node) -> Shipment:
        try:
            await self._fetch(ref, node)
        except ShipError as exc:
            return Shipment(ref, node.hostname, "failed", reason="task",
                            error=f"{_hostname()}'s engine lacks {ref} and could not get it: {exc}")
        try:
            spool = await self._spool(ref)
        except (PyswarmError, ShipError, OSError) as exc:
            return Shipment(ref, node.hostname, "failed", error=f"cannot save {ref} on {_hostname()}: {exc}",
                            reason="task")
        try:
            return await self._ship(spool, node, "task")
        finally:
            self._release(spool)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _with_latest(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last or "@" in ref else f"{ref}:latest"


def _pick_nodes(snap: Snapshot, refs: list[str]) -> list[Node]:
    nodes = snap.nodes()
    if not refs:
        ready = [n for n in nodes if n.status == NodeStatus.READY]
        if not ready:
            raise UsageError("no node is ready to receive the image")
        return ready
    out = []
    for ref in refs:
        matches = [n for n in nodes if ref in (n.id, n.hostname)] or [n for n in nodes if n.id.startswith(ref)]
        if not matches:
            raise NotFoundError(f"node {ref} not found")
        if len(matches) > 1:
            raise UsageError(f"node {ref} is ambiguous ({', '.join(n.hostname for n in matches)})")
        if matches[0] not in out:
            out.append(matches[0])
    return out


REGISTRY_AUTH = "registry_auth"  # ContainerSpec.options key: the name of the secret holding it


def registry_auth(snap: Snapshot, spec: Any) -> dict[str, str]:
    """The ``X-Registry-Auth`` of a task's image, for its node's assignment
    only (``stack deploy --with-registry-auth`` keeps it as a stack secret)."""
    name = spec.options.get(REGISTRY_AUTH) if isinstance(spec.options, dict) else None
    if not name:
        return {}
    from .objects import by_name
    from .sealing import reveal

    secret = by_name(snap, "secret").get(str(name))
    if secret is None:
        return {}
    import base64

    # secret data rests sealed in the store (manager/sealing.py): open it for the node
    return {"registry_auth": base64.b64decode(reveal(secret.data)).decode(errors="replace")}
