"""The agent's side of the streams the manager opens (logs, exec, stats).

The manager opens a stream with ``{"op": "stream", "id", "kind", "params"}``
(:mod:`pyswarm.streamwire`); the agent answers with ``chunk`` lines and one
``end``. Each stream is one asyncio task beside the agent's reconcile work;
it may only send while it holds credit, so a slow reader on the manager's
side stops this task reading the engine (the engine's socket fills and the
container's logs wait on disk) and never grows the agent's memory or delays
its pings.

Engine access goes through aiodocker (aio-libs): its exec support does the
hijacked connection, stdin and TTY resize, and its stats stream the JSON
samples, which are the parts a hand-written client gets wrong. Its
``container.log()`` however drops the stream byte of every multiplexed
frame (aiodocker/multiplexed.py), so stdout and stderr could not be told
apart: logs are read from the same endpoint through aiodocker's request
helper and the 8-byte frame headers are split here (:func:`split_frames`).

Log lines carry the engine's own timestamps (``timestamps=1``), so the
manager can merge the nodes' lines in time order. A ``logs`` stream first
reads the history (``--tail``, ``--since``, ``--until``) to its end, then,
with ``follow``, follows from the last line read; while following and idle
it sends a ``mark`` every :data:`MARK_EVERY` seconds: no later line of this
stream will be stamped before ``now - SLACK`` (the engine stamps a line when
it reads it from the container, a few milliseconds before we see it).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import aiodocker
import aiohttp

from pyswarm import protocol, streamwire

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], None]

MARK_EVERY = 0.1  # seconds between idle marks of a following logs stream
SLACK_NS = 150_000_000  # a mark promises nothing newer than now - 150 ms
MAX_LINE = 16 * 1024  # longer lines are cut (the engine splits at 16 KiB too)
_HEADER = struct.Struct(">BxxxL")


_SECONDS: dict[str, int] = {}  # "2026-12-01T09:00:00" -> its Unix time: lines share their seconds


def parse_timestamp(text: str) -> int:
    """RFC 3339 with nanoseconds (the engine's ``2026-12-01T09:00:00.123456789Z``)
    → nanoseconds since the epoch; 0 if it is not one. The engine's own form
    takes a cached lookup of its whole seconds (this runs for every line:
    the general parse cost ~20 µs a line, most of a logs stream's CPU)."""
    if len(text) == 30 and text[19] == "." and text[29] == "Z":
        base = _SECONDS.get(text[:19])
        if base is None:
            base = _parse_timestamp(text[:19] + "Z")
            if not base:
                return 0
            if len(_SECONDS) > 4096:
                _SECONDS.clear()
            _SECONDS[text[:19]] = base
        frac = text[20:29]
        return base + int(frac) if frac.isdigit() else 0
    return _parse_timestamp(text)


def _parse_timestamp(text: str) -> int:
    import calendar

    try:
        date, _, rest = text.partition("T")
        year, month, day = (int(x) for x in date.split("-"))
        clock = rest.rstrip("Z")
        offset = 0
        for sign in ("+", "-"):
            if sign in clock:
                clock, _, tz = clock.partition(sign)
                hh, _, mm = tz.partition(":")
                offset = (int(hh) * 3600 + int(mm or 0) * 60) * (1 if sign == "+" else -1)
        whole, _, frac = clock.partition(".")
        hour, minute, second = (int(x) for x in whole.split(":"))
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
        return seconds * 1_000_000_000 + int((frac + "000000000")[:9] or 0)
    except ValueError:
        return 0


def split_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take the complete multiplexed frames (stream byte 1 stdout, 2 stderr)
    off the front of ``buf``; a partial frame stays for the next read."""
    frames = []
    while len(buf) >= _HEADER.size:
        kind, length = _HEADER.unpack_from(buf)
        end = _HEADER.size + length
        if len(buf) < end:
            break
        frames.append((kind, bytes(buf[_HEADER.size:end])))
        del buf[:end]
    return frames


def log_item(kind: int, payload: bytes) -> dict[str, Any] | None:
    """One engine log line (``TIMESTAMP text``) as a stream item (the
    stream's task is the manager's to know: not repeated per line)."""
    text = payload.decode(errors="replace")
    stamp, _, line = text.partition(" ")
    t = parse_timestamp(stamp)
    if not t:
        return None
    if line.endswith("\n"):
        line = line[:-1]
    return {"t": t, "stream": "stderr" if kind == 2 else "stdout", "line": line[:MAX_LINE]}


def stats_item(task_id: str, s: dict[str, Any]) -> dict[str, Any]:
    """An engine stats sample in ``docker stats``'s terms: CPU % of one
    core × cores, memory without the page cache, summed network and block I/O."""
    cpu = s.get("cpu_stats") or {}
    pre = s.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    sys_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cpus = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    percent = cpu_delta / sys_delta * cpus * 100.0 if cpu_delta > 0 and sys_delta > 0 else 0.0
    mem = s.get("memory_stats") or {}
    stats = mem.get("stats") or {}
    usage = int(mem.get("usage", 0))
    cache = stats.get("inactive_file", stats.get("total_inactive_file", stats.get("cache", 0)))
    usage = max(0, usage - int(cache or 0))
    rx = tx = 0
    for net in (s.get("networks") or {}).values():
        rx += int(net.get("rx_bytes", 0))
        tx += int(net.get("tx_bytes", 0))
    read = write = 0
    for entry in ((s.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []):
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += int(entry.get("value", 0))
        elif op == "write":
            write += int(entry.get("value", 0))
    return {
        "task": task_id, "cpu_percent": round(percent, 2), "mem_usage": usage,
        "mem_limit": int(mem.get("limit", 0)), "net_rx": rx, "net_tx": tx,
        "block_read": read, "block_write": write, "pids": int((s.get("pids_stats") or {}).get("current", 0)),
    }


class StreamError(Exception):
    """A stream cannot go on; the message goes to the manager in ``end``."""


class _Stream:
    """One open stream: its credit, its stdin queue, its task."""

    def __init__(self, server: StreamServer, open_: streamwire.Open) -> None:
        self.id = open_.id
        self.kind = open_.kind
        self.params = open_.params
        self._server = server
        self._credit = streamwire.WINDOW
        self._credit_ready = asyncio.Event()
        self._credit_ready.set()
        self.stdin: asyncio.Queue[streamwire.Stdin] = asyncio.Queue()
        self.resizes: asyncio.Queue[streamwire.Resize] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def grant(self, n: int) -> None:
        self._credit += n
        if self._credit > 0:
            self._credit_ready.set()

    async def emit(self, items: list[dict[str, Any]], mark: int = 0) -> None:
        """Send ``items`` (split to chunk size) once credit allows; ``mark``
        goes with the last chunk."""
        start = 0
        while True:
            end, size = start, 0
            while end < len(items) and size < streamwire.MAX_CHUNK_BYTES and end - start < streamwire.MAX_ITEMS:
                size += streamwire.item_size(items[end])
                end += 1
            await self._credit_ready.wait()
            self._credit -= size
            if self._credit <= 0:
                self._credit_ready.clear()
            done = end >= len(items)
            self._server.send(streamwire.Chunk(self.id, tuple(items[start:end]), mark if done else 0).to_message())
            # an Event that is set does not yield: give the loop to the pings
            # and the other streams between chunks
            await asyncio.sleep(0)
            if done:
                return
            start = end


class StreamServer:
    """Runs the streams of one agent session."""

    def __init__(self, send: Send, docker_url: str | None = None) -> None:
        self.send = send
        self._url = docker_url
        self._docker: aiodocker.Docker | None = None
        self._streams: dict[int, _Stream] = {}

    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def close(self) -> None:
        for s in list(self._streams.values()):
            if s.task is not None:
                s.task.cancel()
        await asyncio.gather(*(s.task for s in self._streams.values() if s.task is not None),
                             return_exceptions=True)
        self._streams.clear()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    def handle(self, msg: dict[str, Any]) -> None:
        """One of :data:`streamwire.TO_AGENT`'s ops from the manager."""
        op = msg.get("op")
        try:
            parsed = streamwire.TO_AGENT[str(op)](msg)
        except (KeyError, ValueError) as exc:
            self.send({"op": "error", "message": f"bad stream message: {exc}"})
            return
        if isinstance(parsed, streamwire.Open):
            if parsed.id in self._streams:
                self.send(streamwire.End(parsed.id, f"stream {parsed.id} is already open").to_message())
                return
            s = _Stream(self, parsed)
            self._streams[s.id] = s
            s.task = asyncio.ensure_future(self._run(s))
            return
        found = self._streams.get(parsed.id)
        if found is None:
            return  # ended meanwhile
        s = found
        if isinstance(parsed, streamwire.Credit):
            s.grant(parsed.bytes)
        elif isinstance(parsed, streamwire.Stdin):
            s.stdin.put_nowait(parsed)
        elif isinstance(parsed, streamwire.Resize):
            s.resizes.put_nowait(parsed)
        elif isinstance(parsed, streamwire.Cancel) and s.task is not None:
            s.task.cancel()

    async def _run(self, s: _Stream) -> None:
        error, result = "", {}
        try:
            if s.kind == "logs":
                await self._logs(s)
            elif s.kind == "exec":
                result = await self._exec(s)
            else:
                await self._stats(s)
        except asyncio.CancelledError:
            error = "cancelled"
        except StreamError as exc:
            error = str(exc)
        except aiodocker.DockerError as exc:
            error = f"engine: {exc.message}"
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            error = f"engine connection: {exc or type(exc).__name__}"
        except Exception as exc:  # report it to the manager, keep the agent
            log.exception("stream %d (%s) failed", s.id, s.kind)
            error = f"agent internal error: {exc!r}"
        finally:
            self._streams.pop(s.id, None)
        self.send(streamwire.End(s.id, error, result).to_message())

    async def _container(self, task_id: str, running: bool = False) -> aiodocker.containers.DockerContainer:
        """The task's container (the running one, else the newest)."""
        found = await self.docker().containers.list(
            all=True, filters=f'{{"label":["{protocol.LABEL_TASK_ID}={task_id}"]}}')
        if running:
            found = [c for c in found if c._container.get("State") == "running"]
        if not found:
            raise StreamError(f"task {task_id} has no {'running ' if running else ''}container on this node")
        found.sort(key=lambda c: (c._container.get("State") == "running", c._container.get("Created", 0)))
        return found[-1]

    # -- logs ---------------------------------------------------------------

    async def _logs(self, s: _Stream) -> None:
        p = s.params
        task_id = str(p.get("task_id", ""))
        container = await self._container(task_id)
        info = await container.show()
        tty = bool((info.get("Config") or {}).get("Tty"))
        if p.get("follow"):
            await self._wait_started(s, container, info)
        since, until = int(p.get("since") or 0), int(p.get("until") or 0)
        after = int(p.get("after") or 0)  # a reopened stream: what was already sent
        tail = p.get("tail")
        params: dict[str, str] = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "0",
                                  "tail": str(int(tail)) if isinstance(tail, int) and tail >= 0 and not after else "all"}
        if since or after:
            params["since"] = _engine_time(max(since, after))
        if until:
            params["until"] = _engine_time(until)
        started = time.time_ns()
        last = await self._read_logs(s, container.id, params, tty, after)
        if not p.get("follow") or until:
            return
        params.update(follow="1", tail="all", since=_engine_time(max(last, since, started - SLACK_NS)))
        await self._read_logs(s, container.id, params, tty, last, follow=True)

    async def _wait_started(self, s: _Stream, container: Any, info: dict[str, Any]) -> None:
        """A task joins a follow as soon as its container exists (``starting``),
        so that its first lines are merged in order with the others'; the
        engine ends a follow on a container not yet started at once, so wait
        for the start, promising meanwhile that nothing older than now will
        come (a line is stamped when the engine reads it, after the start)."""
        deadline = time.monotonic() + 60
        while str((info.get("State") or {}).get("Status")) == "created" and time.monotonic() < deadline:
            await s.emit([], mark=time.time_ns() - SLACK_NS)
            await asyncio.sleep(MARK_EVERY)
            info = await container.show()

    async def _read_logs(self, s: _Stream, cid: str, params: dict[str, str], tty: bool, after: int,
                         follow: bool = False) -> int:
        """Read one logs request to its end; return the newest line's time."""
        last = after
        marker: asyncio.Task[None] | None = None
        seen = [time.monotonic()]
        if follow:
            marker = asyncio.ensure_future(self._marks(s, seen, lambda: last))
        try:
            async with self.docker()._query(f"containers/{cid}/logs", params=params,
                                            timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                buf = bytearray()
                async for data in resp.content.iter_any():
                    buf += data
                    if tty:
                        lines = buf.split(b"\n")
                        buf[:] = lines.pop()
                        frames = [(1, bytes(line)) for line in lines]
                    else:
                        frames = split_frames(buf)
                    items = []
                    for kind, payload in frames:
                        item = log_item(kind, payload)
                        if item is not None and item["t"] > after:
                            items.append(item)
                    if items:
                        last = max(last, max(i["t"] for i in items))
                        seen[0] = time.monotonic()
                        await s.emit(items)
        finally:
            if marker is not None:
                marker.cancel()
        return last

    async def _marks(self, s: _Stream, seen: list[float], last: Callable[[], int]) -> None:
        """While following: an idle stream still promises the manager that
        nothing older than ``now - SLACK`` will come (the low watermark)."""
        await asyncio.sleep(2 * MARK_EVERY)  # the follow's replay comes first
        while True:
            if time.monotonic() - seen[0] >= MARK_EVERY:
                await s.emit([], mark=max(last(), time.time_ns() - SLACK_NS))
            await asyncio.sleep(MARK_EVERY)

    # -- exec ---------------------------------------------------------------

    async def _exec(self, s: _Stream) -> dict[str, Any]:
        p = s.params
        cmd = p.get("cmd")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            raise StreamError("exec: cmd must be a non-empty list of strings")
        tty, stdin = bool(p.get("tty")), bool(p.get("stdin"))
        container = await self._container(str(p.get("task_id", "")), running=True)
        env = p.get("env") or []
        execution = await container.exec(cmd, stdin=stdin, tty=tty, user=str(p.get("user") or ""),
                                         environment=[str(e) for e in env] or None,
                                         workdir=str(p["workdir"]) if p.get("workdir") else None)
        async with execution.start(detach=False) as stream:
            if tty and p.get("h") and p.get("w"):
                await _resize(execution, int(p["h"]), int(p["w"]))
            helpers = [asyncio.ensure_future(self._exec_input(s, stream, execution))]
            try:
                while (msg := await stream.read_out()) is not None:
                    await s.emit([{"stream": "stderr" if msg.stream == 2 else "stdout",
                                   "data": base64.b64encode(msg.data).decode()}])
            finally:
                for h in helpers:
                    h.cancel()
        for _ in range(50):  # the process may be finishing after its output closed
            state = await execution.inspect()
            if not state.get("Running"):
                return {"exit_code": int(state.get("ExitCode") or 0)}
            await asyncio.sleep(0.05)
        return {"exit_code": int(state.get("ExitCode") or 0)}

    async def _exec_input(self, s: _Stream, stream: Any, execution: Any) -> None:
        async def stdin() -> None:
            while True:
                msg = await s.stdin.get()
                if msg.data:
                    await stream.write_in(msg.data)
                    self.send(streamwire.Credit(s.id, len(msg.data)).to_message())
                if msg.eof:
                    _half_close(stream)
                    return

        async def resizes() -> None:
            while True:
                r = await s.resizes.get()
                await _resize(execution, r.h, r.w)

        await asyncio.gather(stdin(), resizes())

    # -- stats --------------------------------------------------------------

    async def _stats(self, s: _Stream) -> None:
        """Samples of the tasks' containers: one chunk a second with the
        latest of each (``stream`` false: one sample each, then end)."""
        task_ids = [str(t) for t in s.params.get("task_ids") or []]
        live = bool(s.params.get("stream", True))
        latest: dict[str, dict[str, Any]] = {}

        async def watch(task_id: str) -> None:
            try:
                container = await self._container(task_id, running=True)
                if not live:
                    samples = await container.stats(stream=False)
                    if samples:
                        latest[task_id] = stats_item(task_id, samples[-1])
                    return
                async for sample in container.stats(stream=True):
                    latest[task_id] = stats_item(task_id, sample)
            except (StreamError, aiodocker.DockerError, aiohttp.ClientError):
                latest.pop(task_id, None)

        watchers = [asyncio.ensure_future(watch(t)) for t in task_ids]
        try:
            if not live:
                await asyncio.gather(*watchers)
                await s.emit(list(latest.values()), mark=time.time_ns())
                return
            while True:
                await asyncio.sleep(1.0)
                await s.emit(list(latest.values()), mark=time.time_ns())
        finally:
            for w in watchers:
                w.cancel()


def _engine_time(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


async def _resize(execution: Any, h: int, w: int) -> None:
    try:
        await execution.resize(h=h, w=w)
    except aiodocker.DockerError as exc:  # the process may have just ended
        log.info("exec resize: %s", exc.message)


def _half_close(stream: Any) -> None:
    """Close the exec's stdin only (``stream.close()`` would also stop its
    output): what ``docker exec -i`` does when its stdin ends."""
    resp = getattr(stream, "_resp", None)
    transport = resp.connection.transport if resp is not None and resp.connection is not None else None
    if transport is not None and transport.can_write_eof():
        transport.write_eof()
