"""Images on a node: the image channel, and waiting for a shipped image.

Two parts (the wire is described in :mod:`pyswarm.images`):

- :func:`serve_channel` is the process sshd starts for an *image channel*
  (the forced command with ``SSH_ORIGINAL_COMMAND`` = ``pyswarm worker
  --images``): it answers one request — which layer chains this engine
  has, its image inventory, or removing images — and for ``have`` streams
  the tar that follows into the engine's ``/images/load`` as it arrives,
  never holding it in memory or on disk.
- :class:`ImageFetcher` is the agent's side of automatic shipping. A task
  whose image is missing asks the leader (``image_wanted``) *before* trying
  a pull: an image built by ``stack deploy`` is in no registry, and a pull
  that cannot reach one takes 20 s to fail in the lab. The leader answers
  ``ship`` (it sends the image, then ``image_done``) or ``pull``. Every task
  of the node waiting for one image shares one request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyswarm.images import (
    LABEL_BUILD_HASH,
    PLAN_SHIP,
    ChannelRequest,
    HaveReply,
    ImageDone,
    ImagePlan,
    ImageWanted,
    MAX_LINE,
    LoadReply,
    MessageError,
    NodeImage,
    encode_line,
    engine_chains,
    inventory_line,
)
from pyswarm.worker import EngineNotFoundError, ImageNotFoundError, RuntimeError_
from pyswarm.worker.docker import DockerClient, loaded_refs

log = logging.getLogger(__name__)

CHUNK = 1 << 20
KEEP_IMAGES = 2  # built images of one service kept on a node: the running one and one to roll back to
PLAN_TIMEOUT = 5.0  # an older leader (or none, in a test) never answers image_wanted: pull after this
SHIP_TIMEOUT = 1800.0  # a shipment that has not ended by then has failed


# -- the image channel (its own process) --------------------------------------


class Reader(Protocol):
    async def readline(self) -> bytes: ...

    async def read(self, n: int) -> bytes: ...


async def _body(first: bytes, reader: Reader, counted: list[int]) -> AsyncIterator[bytes]:
    counted[0] += len(first)
    yield first
    while chunk := await reader.read(CHUNK):
        counted[0] += len(chunk)
        yield chunk


async def serve_channel(docker: DockerClient, reader: Reader, write: Callable[[bytes], None],
                        load_stdin: LoadStdin | None = None) -> int:
    """Answer one image channel request; 0 when it was served, 1 when not.
    ``load_stdin``: what loads the tar that follows a ``have`` when not this
    process (:func:`docker_cli_load`); ``reader`` must then have read no
    further than the request line."""
    try:
        req = ChannelRequest.from_line(await reader.readline())
    except MessageError as exc:
        write(encode_line({"op": "error", "error": str(exc)}))
        return 1
    if req.op == "inventory":
        write(inventory_line(NodeImage.from_engine(i) for i in await docker.list_images()))
        return 0
    if req.op == "remove":
        removed, errors = [], []
        for ref in req.images:
            try:
                await docker.remove_image(ref)
                removed.append(ref)
            except EngineNotFoundError:
                pass
            except RuntimeError_ as exc:
                errors.append(f"{ref}: {exc}")
        write(encode_line({"op": "removed", "removed": removed, "error": "; ".join(errors)}))
        return 0
    have = await docker.inspect_image(req.image)
    present = have is not None and have.get("Id") == req.image_id
    write(HaveReply(present, frozenset(await engine_chains(docker))).to_line())
    if present:
        return 0  # the sender sends nothing
    if load_stdin is not None:
        ok, loaded, error = await load_stdin()
        if not ok:
            while await reader.read(CHUNK):  # let the sender finish writing
                pass
            write(LoadReply(False, error=error).to_line())
            return 1
        log.info("loaded %s", ", ".join(loaded))
        write(LoadReply(True, tuple(loaded), cpu=_cpu()).to_line())
        return 0
    first = await reader.read(CHUNK)
    if not first:
        return 0  # the sender had nothing to send
    counted = [0]
    try:
        loaded = await docker.load_image(_body(first, reader, counted))
    except RuntimeError_ as exc:
        while await reader.read(CHUNK):  # let the sender finish writing
            pass
        write(LoadReply(False, error=str(exc)).to_line())
        return 1
    log.info("loaded %s (%d bytes)", ", ".join(loaded), counted[0])
    write(LoadReply(True, tuple(loaded), cpu=_cpu()).to_line())
    return 0


def _cpu() -> float:
    """CPU seconds of this channel process and the ``docker load`` it ran."""
    import resource

    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(time.process_time() + child.ru_utime + child.ru_stime, 3)


LoadStdin = Callable[[], Awaitable[tuple[bool, list[str], str]]]


def docker_cli_load(docker: DockerClient, fd: int = 0) -> LoadStdin | None:
    """The tar that follows on ``fd`` straight into the docker CLI's ``docker
    load`` (stdin handed over, so this process never touches the bytes),
    where the host has the CLI. Why: the channel's own copy (sshd's pipe →
    this process → aiohttp → the engine) was ~0.4 s of CPU per 100 MB in
    Python, five of them at once on a shipment to five nodes, on the cores
    the engines load with (bench/RESULTS.md, issue 15). None: no CLI here."""
    import shutil

    cli = shutil.which("docker")
    if cli is None:
        return None

    async def load() -> tuple[bool, list[str], str]:
        env = {**os.environ, "DOCKER_HOST": f"unix://{docker.socket}"}
        proc = await asyncio.create_subprocess_exec(cli, "load", stdin=fd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            return False, [], (err.decode(errors="replace").strip() or f"docker load exited {proc.returncode}")[-2000:]
        return True, loaded_refs(out.decode(errors="replace")), ""
    return load


class _Stdin:
    """stdin read by a thread in big blocks (a pipe, a socket or a file alike),
    with room for a few blocks only: the sender waits on SSH's window."""

    def __init__(self, fd: int = 0, depth: int = 8) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(depth)
        self._fd = fd
        self._buf = b""
        self._eof = False
        self._started = False

    def request_line(self) -> None:
        """Read the request line alone, a byte at a time, before any thread
        reads ahead: what follows may be handed over whole (:func:`docker_cli_load`)."""
        while not self._buf.endswith(b"\n") and len(self._buf) <= MAX_LINE:
            byte = os.read(self._fd, 1)
            if not byte:
                self._eof = True
                return
            self._buf += byte

    def _run(self, fd: int) -> None:
        _grow_pipe(fd)
        while True:
            chunk, eof = _read_ready(fd)
            for block in ((chunk, b"") if eof and chunk else (chunk,)):
                asyncio.run_coroutine_threadsafe(self._queue.put(block), self._loop).result()
            if eof or not chunk:
                return

    async def _fill(self) -> bool:
        if self._eof:
            return False
        if not self._started:
            self._started = True
            threading.Thread(target=self._run, args=(self._fd,), name="stdin", daemon=True).start()
        chunk = await self._queue.get()
        if not chunk:
            self._eof = True
            return False
        self._buf = self._buf + chunk if self._buf else chunk
        return True

    async def readline(self) -> bytes:
        while b"\n" not in self._buf and len(self._buf) <= MAX_LINE and await self._fill():
            pass
        line, nl, self._buf = self._buf.partition(b"\n")
        return line + nl

    async def read(self, n: int) -> bytes:
        if not self._buf:
            await self._fill()
        if len(self._buf) <= n:  # the usual case: a block handed on whole, no copy
            out, self._buf = self._buf, b""
            return out
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe where stdin is one (sshd writes into it): fewer, bigger reads."""
    import fcntl

    try:
        fcntl.fcntl(fd, 1031, CHUNK)  # F_SETPIPE_SZ
    except OSError:
        pass


def _read_ready(fd: int) -> tuple[bytes, bool]:
    """One read that waits, then whatever else is there already, up to
    :data:`CHUNK`: a pipe gives at most what sshd wrote last (32-64 KiB),
    and each block handed to the loop costs a thread switch, so 100 MB was
    thousands of them. Never waits for more than one read (the request line
    comes alone, and its answer must not wait on a full block). Returns the
    bytes and whether stdin ended after them."""
    import select

    try:
        first = os.read(fd, CHUNK)
    except OSError:
        return b"", True
    if not first:
        return b"", True
    parts, size = [first], len(first)
    try:
        while size < CHUNK and select.select([fd], [], [], 0)[0]:
            more = os.read(fd, CHUNK - size)
            if not more:
                return b"".join(parts), True
            parts.append(more)
            size += len(more)
    except (OSError, ValueError):
        pass
    return b"".join(parts), False


async def _serve_stdio(out_fd: int) -> int:
    reader = _Stdin()
    reader.request_line()

    def write(data: bytes) -> None:
        while data:
            data = data[os.write(out_fd, data):]

    async with DockerClient() as docker:
        try:
            return await serve_channel(docker, reader, write, docker_cli_load(docker))
        except RuntimeError_ as exc:
            write(encode_line({"op": "error", "error": str(exc)}))
            return 1


def main_channel(out_fd: int) -> int:
    """The image channel's process (``pyswarm worker --stdio`` run for
    ``SSH_ORIGINAL_COMMAND`` = :data:`pyswarm.images.CHANNEL_COMMAND`)."""
    return asyncio.run(_serve_stdio(out_fd))


# -- automatic shipping, the agent's side ---------------------------------------


Report = Callable[[str], None]


@dataclass
class _Wanted:
    """One image this node asked the leader for; every waiting task shares it."""

    plan: asyncio.Future[ImagePlan | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    done: asyncio.Future[ImageDone] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ImageFetcher:
    def __init__(self, docker: DockerClient, send: Callable[[dict[str, Any]], None], hostname: str,
                 plan_timeout: float = PLAN_TIMEOUT, ship_timeout: float = SHIP_TIMEOUT) -> None:
        self.docker = docker
        self._send = send
        self.hostname = hostname
        self.plan_timeout = plan_timeout
        self.ship_timeout = ship_timeout
        self._wanted: dict[str, _Wanted] = {}

    async def ensure(self, ref: str, task_id: str, report: Report, auth: str = "") -> None:
        """Make ``ref`` present: here already, shipped by the leader, or
        pulled. ``report`` gets the task's one ``preparing`` message.
        Raises :class:`ImageNotFoundError` with what the user sees."""
        if await self.docker.inspect_image(ref) is not None:
            report("preparing")
            return
        wanted = self._wanted.get(ref)
        if wanted is None:
            wanted = self._wanted[ref] = _Wanted()
            self._send(ImageWanted(ref, task_id).to_message())
        try:
            plan = await asyncio.wait_for(asyncio.shield(wanted.plan), self.plan_timeout)
        except asyncio.TimeoutError:
            plan = None  # a leader that does not ship: pull as before
            if not wanted.plan.done():
                wanted.plan.set_result(None)
        if plan is not None and plan.plan == PLAN_SHIP:
            report(f"shipping image {ref} from {plan.source}")
            try:
                done = await asyncio.wait_for(asyncio.shield(wanted.done), self.ship_timeout)
            except asyncio.TimeoutError:
                self._forget(ref, wanted)
                raise ImageNotFoundError(f"shipping image {ref} to {self.hostname}: no word in "
                                         f"{self.ship_timeout:.0f}s") from None
            self._forget(ref, wanted)
            if done.error:
                raise ImageNotFoundError(f"shipping image {ref} to {self.hostname} failed: {done.error}")
            if await self.docker.inspect_image(ref) is None:
                raise ImageNotFoundError(f"image {ref} was shipped to {self.hostname} but is not there")
            return
        self._forget(ref, wanted)
        report(f"pulling image {ref}")
        try:
            await self.docker.ensure_image(ref, self.hostname, auth)
        except ImageNotFoundError as exc:
            reason = plan.reason if plan is not None else ""
            raise ImageNotFoundError(f"{exc}; {reason}" if reason else str(exc)) from exc

    def _forget(self, ref: str, wanted: _Wanted) -> None:
        if self._wanted.get(ref) is wanted:
            del self._wanted[ref]

    def on_message(self, msg: dict[str, Any]) -> str | None:
        """An ``image_plan`` or ``image_done`` from the leader; returns an
        error to report when the message is malformed."""
        try:
            if msg.get("op") == "image_plan":
                plan = ImagePlan.from_message(msg)
                wanted = self._wanted.get(plan.image)
                if wanted is not None and not wanted.plan.done():
                    wanted.plan.set_result(plan)
            else:
                done = ImageDone.from_message(msg)
                wanted = self._wanted.get(done.image)
                if wanted is not None and not wanted.done.done():
                    wanted.done.set_result(done)
        except MessageError as exc:
            return f"bad {msg.get('op')}: {exc}"
        return None


# -- garbage: older built images of a service -----------------------------------


async def collect_garbage(docker: DockerClient, service: str, keep_refs: set[str], keep: int = KEEP_IMAGES) -> list[str]:
    """Remove this node's images of ``service``'s older builds past the
    ``keep`` newest. Only images ``stack deploy`` built (label
    ``pyswarm.build.hash``, repository ``STACK_SERVICE``) are candidates,
    never one a container uses or ``keep_refs`` names (a desired task's).
    Returns the references removed."""
    try:
        images = [i for i in await docker.list_images()
                  if LABEL_BUILD_HASH in (i.get("Labels") or {})
                  and any(str(t).rsplit(":", 1)[0] == service for t in i.get("RepoTags") or ())]
        if len(images) <= keep:
            return []
        used = {str(c.get("ImageID", "")) for c in await docker.list_containers({}, all=True)}
    except RuntimeError_ as exc:
        log.warning("image garbage of %s: %s", service, exc)
        return []
    images.sort(key=lambda i: int(i.get("Created") or 0), reverse=True)
    removed: list[str] = []
    for item in images[keep:]:
        tags = [str(t) for t in item.get("RepoTags") or () if str(t).rsplit(":", 1)[0] == service]
        if str(item.get("Id")) in used or any(t in keep_refs for t in tags):
            continue
        for tag in tags:
            try:
                await docker.remove_image(tag)
                removed.append(tag)
            except RuntimeError_ as exc:  # in use meanwhile, or gone: next time
                log.info("image garbage: %s stays: %s", tag, exc)
    if removed:
        log.info("removed older images of %s: %s", service, ", ".join(removed))
    return removed
