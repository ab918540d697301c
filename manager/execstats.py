"""``service exec`` and ``stats``: the leader's side of the exec and stats streams.

exec picks one running task of the service (a given slot, a given task, or
the first running one; a task reads as running only once its healthcheck
passes, so "any running" is "any healthy"), opens an ``exec`` stream on its
node and relays: the command's output to the caller, the caller's stdin and
window size to the agent (stdin paced by the agent's credit), and the exit
code as the answer.

stats opens one ``stats`` stream per node that runs a target task and
yields, once a second, a table of every task's latest sample with the sums
per service and per node.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pyswarm.errors import NotFoundError, UsageError
from pyswarm.models import DESIRED_RUNNING, Task, TaskState
from pyswarm import rpc, streamwire
from pyswarm.wire import rule

from .logs import find_task
from .store import Snapshot, Store
from .streams import Event, Lost, NodeUnavailable, RemoteStream, StreamHub

Inputs = asyncio.Queue[dict[str, Any] | None]
RESCAN = 5.0  # seconds between looks for new or gone tasks while stats stream


def _running(t: Task) -> bool:
    return t.state == TaskState.RUNNING and t.desired_state == DESIRED_RUNNING


def exec_target(snap: Snapshot, service: str, slot: int = 0, task: str = "") -> Task:
    """The task to run a command in, or a clear NotFoundError."""
    if task:
        found = find_task(snap, task)
        if found is None:
            raise NotFoundError(f"task {task} not found")
        if not _running(found):
            raise UsageError(f"task {task} is {found.state.value}, not running")
        return found
    from .api.base import find_service  # (the api package imports this module)

    try:
        svc = find_service(snap, service)
    except NotFoundError:
        found = find_task(snap, service)  # SERVICE|TASK
        if found is None:
            raise NotFoundError(f"no such service or task: {service}") from None
        return exec_target(snap, "", 0, found.id)
    mine = sorted((t for t in snap.tasks() if t.service_id == svc.id and _running(t)),
                  key=lambda t: (t.slot, t.node_id))
    if slot:
        mine = [t for t in mine if t.slot == slot]
    if not mine:
        raise NotFoundError(f"service {svc.name} has no running task" + (f" in slot {slot}" if slot else ""))
    return mine[0]


@dataclass(frozen=True)
class ExecRequest:
    """``service exec``: where, what, and how."""

    cmd: list[str] = field(metadata=rule(max_len=4096))
    service: str = field(default="", metadata=rule(max_len=256))
    task: str = field(default="", metadata=rule(max_len=256))
    slot: int = field(default=0, metadata=rule(min=0, max=1_000_000))
    tty: bool = False
    stdin: bool = False
    h: int = field(default=0, metadata=rule(min=0, max=10_000))
    w: int = field(default=0, metadata=rule(min=0, max=10_000))
    env: list[str] = field(default_factory=list, metadata=rule(max_len=1000))
    user: str = field(default="", metadata=rule(max_len=256))
    workdir: str = field(default="", metadata=rule(max_len=4096))

    def __post_init__(self) -> None:
        if not self.cmd:
            raise UsageError("exec: give the command to run")
        if not self.service and not self.task:
            raise UsageError("exec: give a service or a task")


@dataclass(frozen=True)
class StatsRequest:
    service: str = field(default="", metadata=rule(max_len=256))
    stream: bool = True


async def exec_(store: Store, hub: StreamHub, req: ExecRequest, inputs: Inputs) -> AsyncIterator[Any]:
    """The streaming API method ``service.exec``. Items: ``{"stream", "data"}``
    (base64); inputs: ``{"stdin": b64}``, ``{"eof": true}``, ``{"resize": [h, w]}``.
    Its answer: ``{"exit_code", "task", "node"}``."""
    snap = store.snapshot()
    task = exec_target(snap, req.service, req.slot, req.task)
    sink: asyncio.Queue[tuple[RemoteStream, Event]] = asyncio.Queue()
    agent_params = {"task_id": task.id, "cmd": req.cmd, "tty": req.tty, "stdin": req.stdin, "h": req.h,
                    "w": req.w, "env": req.env, "user": req.user, "workdir": req.workdir}
    try:
        stream = hub.open(task.node_id, "exec", agent_params, sink, tag=task.id)
    except NodeUnavailable as exc:
        raise UsageError(str(exc)) from None
    relay = asyncio.ensure_future(_relay_input(stream, inputs))
    try:
        while True:
            _, event = await sink.get()
            if isinstance(event, streamwire.Chunk):
                for item in event.items:
                    yield {"stream": item.get("stream", "stdout"), "data": item.get("data", "")}
                    stream.consumed(streamwire.item_size(item))
            elif isinstance(event, Lost):
                raise UsageError(f"{event.reason}: the command's end is unknown")
            else:
                if event.error:
                    raise UsageError(f"exec in {task.service_name}.{task.slot or task.node_id[:12]} "
                                     f"on {stream.node_name}: {event.error}")
                code = event.result.get("exit_code", 0)
                yield rpc.Final({"exit_code": int(code) if isinstance(code, int) else 1,
                                 "task": task.id, "node": stream.node_name})
                return
    finally:
        relay.cancel()
        stream.cancel()


async def _relay_input(stream: RemoteStream, inputs: Inputs) -> None:
    while True:
        msg = await inputs.get()
        if msg is None:  # the caller hung up: stop the command
            stream.cancel()
            return
        if "resize" in msg:
            size = msg["resize"]
            if isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) and 0 < x < 10_000 for x in size):
                stream.resize(size[0], size[1])
        if "stdin" in msg or msg.get("eof"):
            try:
                data = base64.b64decode(str(msg.get("stdin", "")), validate=True)
            except ValueError:
                continue
            await stream.stdin(data, eof=bool(msg.get("eof")))


# -- stats -------------------------------------------------------------------


def stats_targets(snap: Snapshot, service: str = "") -> list[Task]:
    tasks = [t for t in snap.tasks() if _running(t) and t.node_id]
    if service:
        from .api.base import find_service

        sid = find_service(snap, service).id
        tasks = [t for t in tasks if t.service_id == sid]
    return tasks


def stats_table(samples: dict[str, dict[str, Any]], tasks: dict[str, Task], nodes: dict[str, str]) -> dict[str, Any]:
    """Rows per task, and their sums per service and per node."""
    rows = []
    sums: dict[str, dict[str, dict[str, Any]]] = {"services": {}, "nodes": {}}
    fields = ("cpu_percent", "mem_usage", "mem_limit", "net_rx", "net_tx", "block_read", "block_write", "pids")
    for task_id, sample in sorted(samples.items(), key=lambda kv: (tasks[kv[0]].service_name, tasks[kv[0]].slot)):
        task = tasks[task_id]
        row = {"task_id": task_id, "name": f"{task.service_name}.{task.slot or task.node_id[:12]}",
               "service": task.service_name, "node": nodes.get(task.node_id, task.node_id[:12]),
               **{f: sample.get(f, 0) for f in fields}}
        rows.append(row)
        for group, key in (("services", row["service"]), ("nodes", row["node"])):
            total = sums[group].setdefault(key, {"name": key, "tasks": 0, **{f: 0 for f in fields}})
            total["tasks"] += 1
            for f in fields:
                if f != "mem_limit" or group == "services":
                    total[f] += row[f]
    for total in sums["services"].values():
        total["cpu_percent"] = round(total["cpu_percent"], 2)
    for total in sums["nodes"].values():
        total["cpu_percent"] = round(total["cpu_percent"], 2)
    return {"tasks": rows, "services": sorted(sums["services"].values(), key=lambda r: r["name"]),
            "nodes": sorted(sums["nodes"].values(), key=lambda r: r["name"]), "time": time.time()}


async def stats(store: Store, hub: StreamHub, req: StatsRequest) -> AsyncIterator[Any]:
    """The streaming API method ``stats``: ``{"stats": table}`` once a second
    (``stream`` false: once), and ``{"warning"}`` for nodes out of reach."""
    service, live = req.service, req.stream
    sink: asyncio.Queue[tuple[RemoteStream, Event]] = asyncio.Queue()
    streams: dict[str, tuple[RemoteStream, frozenset[str]]] = {}
    samples: dict[str, dict[str, Any]] = {}
    tasks: dict[str, Task] = {}
    warned: set[str] = set()

    def rescan() -> list[str]:
        snap = store.snapshot()
        warnings = []
        by_node: dict[str, set[str]] = {}
        for t in stats_targets(snap, service):
            tasks[t.id] = t
            by_node.setdefault(t.node_id, set()).add(t.id)
        for node_id, (s, ids) in list(streams.items()):
            if frozenset(by_node.get(node_id, ())) != ids:
                s.cancel()
                del streams[node_id]
                for tid in ids:
                    samples.pop(tid, None)
        for node_id, wanted in by_node.items():
            if node_id in streams:
                continue
            try:
                s = hub.open(node_id, "stats", {"task_ids": sorted(wanted), "stream": live}, sink, tag=node_id)
            except NodeUnavailable as exc:
                if node_id not in warned:
                    warned.add(node_id)
                    warnings.append(f"{exc}: its tasks are not shown")
                continue
            warned.discard(node_id)
            streams[node_id] = (s, frozenset(wanted))
        return warnings

    def node_names() -> dict[str, str]:
        return {n.id: n.hostname for n in store.snapshot().nodes()}

    for w in rescan():
        yield {"warning": w}
    try:
        if not live:
            pending = {s.id for s, _ in streams.values()}
            while pending:
                stream, event = await sink.get()
                _take(stream, event, samples, tasks)
                if not isinstance(event, streamwire.Chunk):
                    pending.discard(stream.id)
                if isinstance(event, Lost):
                    yield {"warning": f"{event.reason}: its tasks are not shown"}
            yield {"stats": stats_table(samples, tasks, node_names())}
            return
        next_scan = time.monotonic() + RESCAN
        next_tick = time.monotonic() + 1.0
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                stream, event = await asyncio.wait_for(sink.get(), timeout)
                _take(stream, event, samples, tasks)
                if isinstance(event, (Lost, streamwire.End)):
                    streams.pop(str(stream.tag), None)
                    if isinstance(event, Lost):
                        yield {"warning": f"{event.reason}: its tasks are not shown"}
                continue
            except asyncio.TimeoutError:
                pass
            next_tick = time.monotonic() + 1.0
            yield {"stats": stats_table(samples, tasks, node_names())}
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + RESCAN
                for w in rescan():
                    yield {"warning": w}
    finally:
        for s, _ in streams.values():
            s.cancel()


def _take(stream: RemoteStream, event: Event, samples: dict[str, dict[str, Any]], tasks: dict[str, Task]) -> None:
    if isinstance(event, streamwire.Chunk):
        for item in event.items:
            tid = str(item.get("task", ""))
            if tid in tasks:
                samples[tid] = item
        stream.consumed(sum(streamwire.item_size(i) for i in event.items))
