"""``service logs`` / ``stack logs``: every task's lines, merged in time order.

The leader opens one ``logs`` stream per task on the task's node
(:mod:`.streams`, :mod:`pyswarm.worker.streams`) and merges them with a low
watermark (:class:`Merger`): a line is handed on only once every other open
stream has promised (by a later line or an idle ``mark``) that nothing older
will come from it, so a line never appears before an older one from another
node. A stream that stops promising for :data:`LAG` seconds (a node cut off
but not yet declared down) no longer holds the others back; should its lines
arrive later they are printed late, never dropped.

Swarm's own ``service logs`` loses nodes, hangs, and follows forever; here:

* a node that is down, or whose session drops, is named in a ``warning``
  item and the others go on; with ``follow`` its tasks' streams reopen when
  it is back (from the last line sent, so nothing is repeated);
* a task whose container stops ends its stream; with ``follow`` new tasks of
  the service join as they get a container, and the call ends once the
  service is removed (after its streams have said their last lines).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pyswarm import streamwire
from pyswarm.errors import NotFoundError, UsageError
from pyswarm.models import Task, TaskState
from pyswarm.wire import rule

from .store import Snapshot, Store
from .streams import Event, Lost, NodeUnavailable, RemoteStream, StreamHub

LAG = 3.0  # seconds a silent stream may hold the merge back
DRAIN = 10.0  # seconds to wait for a removed service's last lines
BATCH = 2000  # lines handed on per step
INF = 1 << 62


class Merger:
    """A k-way merge of per-source ordered lines by a low watermark.

    Each source's watermark is the newest of its last line's time and its
    last mark; lines up to the lowest watermark of the open sources are
    ready. Pure logic (the clock is injected), so the order rules are tested
    without a cluster."""

    def __init__(self, lag: float = LAG, clock: Callable[[], float] = time.monotonic) -> None:
        self._lag = lag
        self._clock = clock
        self._heap: list[tuple[int, int, str, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._marks: dict[str, int] = {}
        self._moved: dict[str, float] = {}

    def open(self, key: str) -> None:
        self._marks.setdefault(key, 0)
        self._moved[key] = self._clock()

    def close(self, key: str) -> None:
        self._marks.pop(key, None)
        self._moved.pop(key, None)

    @property
    def sources(self) -> int:
        return len(self._marks)

    def push(self, key: str, items: list[dict[str, Any]] | tuple[dict[str, Any], ...], mark: int = 0) -> None:
        newest = mark
        for item in items:
            t = int(item.get("t", 0))
            heapq.heappush(self._heap, (t, next(self._seq), key, item))
            newest = max(newest, t)
        if key in self._marks and newest > self._marks[key]:
            self._marks[key] = newest
            self._moved[key] = self._clock()

    def low_watermark(self) -> int:
        now = self._clock()
        held = [m for k, m in self._marks.items() if now - self._moved[k] < self._lag]
        return min(held) if held else INF

    def ready(self, limit: int = 1 << 62) -> list[tuple[str, dict[str, Any]]]:
        """Lines no open source can precede any more, oldest first (at most ``limit``)."""
        low = self.low_watermark()
        out: list[tuple[str, dict[str, Any]]] = []
        while self._heap and self._heap[0][0] <= low and len(out) < limit:
            t, _, key, item = heapq.heappop(self._heap)
            out.append((key, item))
        return out

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while self._heap:
            _, _, key, item = heapq.heappop(self._heap)
            out.append((key, item))
        return out

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True)
class LogsRequest:
    """What ``service logs`` / ``stack logs`` asks (times in ns since the epoch)."""

    service: str = field(default="", metadata=rule(max_len=256))
    task: str = field(default="", metadata=rule(max_len=256))
    stack: str = field(default="", metadata=rule(max_len=256))
    follow: bool = False
    tail: int = field(default=-1, metadata=rule(min=-1, max=1 << 31))  # lines per task; -1: all
    since: int = field(default=0, metadata=rule(min=0, max=1 << 62))
    until: int = field(default=0, metadata=rule(min=0, max=1 << 62))
    node: str = field(default="", metadata=rule(max_len=256))

    def __post_init__(self) -> None:
        if sum(1 for x in (self.service, self.task, self.stack) if x) != 1:
            raise UsageError("logs: give exactly one of a service, a task or a stack")
        if self.until and self.since and self.until < self.since:
            raise UsageError("logs: --until is before --since")


def find_task(snap: Snapshot, ref: str) -> Task | None:
    """A task by id, unique id prefix, or ``service.slot`` (the live or newest one)."""
    tasks = snap.tasks()
    exact = snap.task(ref)
    if exact is not None:
        return exact
    name, _, slot = ref.rpartition(".")
    if name and slot.isdigit():
        mine = [t for t in tasks if t.service_name == name and t.slot == int(slot)]
        if mine:
            return max(mine, key=lambda t: (not t.state.terminal, t.created_at))
    matches = [t for t in tasks if t.id.startswith(ref)]
    return matches[0] if len(matches) == 1 else None


class _Targets:
    """Which tasks a logs call covers, re-read on every store change."""

    def __init__(self, req: LogsRequest, snap: Snapshot) -> None:
        self.req = req
        self.task_id = ""
        self.service_ids: set[str] = set()
        if req.task:
            task = find_task(snap, req.task)
            if task is None:
                service = snap.service_by_name(req.task)
                if service is None:
                    raise NotFoundError(f"no such service or task: {req.task}")
                self.service_ids = {service.id}
            else:
                self.task_id = task.id
        elif req.service:
            from .api.base import find_service  # (the api package imports this module)

            try:
                self.service_ids = {find_service(snap, req.service).id}
            except NotFoundError:
                task = find_task(snap, req.service)  # SERVICE|TASK: a task then
                if task is None:
                    raise NotFoundError(f"no such service or task: {req.service}") from None
                self.task_id = task.id
        else:
            self.service_ids = {s.id for s in snap.services() if s.spec.stack == req.stack}
            if not self.service_ids:
                raise NotFoundError(f"nothing found in stack: {req.stack}")
        self.node_id = ""
        if req.node:
            from .api.base import find_node

            self.node_id = find_node(snap, req.node).id

    def tasks(self, snap: Snapshot) -> list[Task]:
        if self.task_id:
            task = snap.task(self.task_id)
            found = [task] if task is not None else []
        else:
            found = [t for t in snap.tasks() if t.service_id in self.service_ids]
        # from starting on (its container exists; the agent waits for its start)
        return [t for t in found if t.node_id and t.container_id and t.state.rank >= TaskState.STARTING.rank
                and (not self.node_id or t.node_id == self.node_id)]

    def gone(self, snap: Snapshot) -> bool:
        if self.task_id:
            task = snap.task(self.task_id)
            return task is None or task.state.terminal
        return not any(snap.service(sid) for sid in self.service_ids)


class _Out:
    """Lines as the CLI gets them: ``{"tasks": {id: {...}}, "lines": [[task_id,
    t, stream, text], ...]}``, each task's service/slot/node sent only with its
    first lines (at 10,000s of lines a second, repeating them per line was a
    third of the bytes)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._sent: set[str] = set()

    def item(self, rows: list[tuple[Task, dict[str, Any]]]) -> dict[str, Any]:
        tasks: dict[str, Any] = {}
        lines = []
        for task, line in rows:
            if task.id not in self._sent:
                self._sent.add(task.id)
                tasks[task.id] = {"service": task.service_name, "slot": task.slot or task.node_id,
                                  "node": _node_name(self._store, task.node_id)}
            lines.append([task.id, line.get("t", 0), line.get("stream", "stdout"), line.get("line", "")])
        return {"tasks": tasks, "lines": lines} if tasks else {"lines": lines}


async def logs(store: Store, hub: StreamHub, req: LogsRequest) -> AsyncIterator[Any]:
    """The streaming API method ``service.logs``: yields lines (:class:`_Out`)
    merged in time order, and ``{"warning": …}`` items."""
    snap = store.snapshot()
    targets = _Targets(req, snap)
    sink: asyncio.Queue[tuple[RemoteStream, Event]] = asyncio.Queue()
    merger = Merger()
    open_: dict[str, RemoteStream] = {}
    finished: set[str] = set()
    last: dict[str, int] = {}
    known: dict[str, Task] = {}
    down_nodes: set[str] = set()
    back: set[str] = set()  # nodes whose streams were reopened after a loss
    warnings: list[str] = []
    seen_version = store.version
    drain_until = 0.0
    out = _Out(store)

    def open_missing(snap: Snapshot) -> None:
        for task in targets.tasks(snap):
            known[task.id] = task
            if task.id in open_ or task.id in finished:
                continue
            stream_params: dict[str, Any] = {"task_id": task.id, "follow": req.follow, "tail": req.tail,
                                             "since": req.since, "until": req.until}
            if task.id in last:
                stream_params["after"] = last[task.id]
            try:
                stream = hub.open(task.node_id, "logs", stream_params, sink, tag=task.id)
            except NodeUnavailable as exc:
                if task.node_id not in down_nodes:
                    down_nodes.add(task.node_id)
                    warnings.append(f"{exc}: logs of its tasks are missing")
                if not req.follow:
                    finished.add(task.id)
                continue
            down_nodes.discard(task.node_id)
            if task.id in last and task.node_id not in back:
                back.add(task.node_id)
                warnings.append(f"node {stream.node_name} is back: lines its tasks wrote while it was "
                                "unreachable come now, after newer ones")
            open_[task.id] = stream
            merger.open(task.id)

    try:
        open_missing(snap)
        while True:
            for w in warnings:
                yield {"warning": w}
            warnings.clear()
            if not open_ and (not req.follow or drain_until):
                break
            try:
                stream, event = await asyncio.wait_for(sink.get(), 0.1 if len(merger) < BATCH else 0)
            except asyncio.TimeoutError:
                stream = None
            if stream is not None:
                _apply(stream, event, merger, open_, finished, last, warnings, req.follow)
                while not sink.empty():
                    stream, event = sink.get_nowait()
                    _apply(stream, event, merger, open_, finished, last, warnings, req.follow)
            batch = []
            for key, item in merger.ready(BATCH):
                task = known.get(key)
                if task is None:
                    continue
                batch.append((task, item))
                s = open_.get(key)
                if s is not None:
                    s.consumed(streamwire.item_size(item))
            if batch:
                yield out.item(batch)
                # a backlog goes out BATCH lines at a time with the loop free
                # in between: this loop also answers the nodes' heartbeats
                await asyncio.sleep(0)
            if req.follow and store.version != seen_version:
                seen_version = store.version
                snap = store.snapshot()
                if not drain_until and targets.gone(snap):
                    drain_until = time.monotonic() + DRAIN
                if not drain_until:
                    open_missing(snap)
            if drain_until and time.monotonic() > drain_until:
                break
        rest = [(known[key], item) for key, item in merger.drain() if key in known]
        for start in range(0, len(rest), BATCH):
            yield out.item(rest[start:start + BATCH])
            await asyncio.sleep(0)
    finally:
        for s in open_.values():
            s.cancel()


def _apply(stream: RemoteStream, event: Event, merger: Merger, open_: dict[str, RemoteStream],
           finished: set[str], last: dict[str, int], warnings: list[str], follow: bool) -> None:
    key = str(stream.tag)
    if open_.get(key) is not stream:
        return  # a stream we already gave up on
    if isinstance(event, streamwire.Chunk):
        merger.push(key, event.items, event.mark)
        if event.items:
            last[key] = max(last.get(key, 0), max(int(i.get("t", 0)) for i in event.items))
        return
    del open_[key]
    merger.close(key)
    if isinstance(event, Lost):
        warnings.append(f"{event.reason}: logs of its tasks are missing until it is back")
        if not follow:
            finished.add(key)
        return
    finished.add(key)
    if event.error and event.error != "cancelled":
        warnings.append(f"task {key[:12]} on {stream.node_name}: {event.error}")


def _node_name(store: Store, node_id: str) -> str:
    node = store.snapshot().node(node_id)
    return node.hostname if node else node_id[:12]
