"""``pyswarm events``: what happens in the cluster, read from the store's changes.

Every manager keeps an :class:`EventLog`: after each change of its replica
it compares the objects the store says changed since its last look
(``changed_since``; the store replaces an object's dict on every write, so
an identity check tells a real change) and records services created/updated/removed, task state changes with their
messages, nodes up/down/drained/promoted and leader changes.

The log is in memory and bounded (:data:`LIMIT` events), on each manager,
rather than in the store: the changes are already in the Raft log once;
writing each event again would double the writes of a busy cluster (every
task state change) for a history that only needs to bridge a CLI's
reconnect. The price: a manager that restarts starts a new history, and two
managers' histories can differ in timestamps by the time their replicas
applied a change. ``--since`` reaches back as far as the log does.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pyswarm.errors import UsageError
from pyswarm.wire import rule

from .store import Snapshot, Store

LIMIT = 10_000
TYPES = frozenset({"service", "task", "node"})
SUBSCRIBER_LIMIT = 10_000  # events a slow reader may be behind before it is cut off
LOOK_CHUNK = 200  # objects compared per turn of the loop (EventLog.run): a few ms


@dataclass(frozen=True)
class ClusterEvent:
    seq: int
    time: float
    type: str  # service | task | node
    action: str
    id: str
    name: str
    message: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Raw = Mapping[str, Mapping[str, dict[str, Any]]]  # a snapshot's raw view (manager/tables.py)
Found = tuple[str, str, str, str, str, dict[str, Any]]  # (type, action, id, name, message, attrs)


def to_compare(old: Raw, new: Raw, only: set[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(kind, id) to compare from ``old`` to ``new``, services first, then
    tasks and nodes. ``only``: the (kind, id) pairs the store says changed in
    between (:meth:`Snapshot.changed_since`), so that the cost follows the
    change: a task's report at 100,000 tasks looks at one task, not at all of
    them. None: everything (the first look, or changes too old)."""
    if only is not None:  # one pass, unsorted: sorting a scale's 100,000 ids took 50 ms of the loop
        by_kind: dict[str, list[tuple[str, str]]] = {"service": [], "task": [], "node": []}
        for pair in only:
            found = by_kind.get(pair[0])
            if found is not None:
                found.append(pair)
        return by_kind["service"] + by_kind["task"] + by_kind["node"]
    out: list[tuple[str, str]] = []
    for kind in ("service", "task", "node"):
        before, after = old.get(kind, {}), new.get(kind, {})
        out += [(kind, oid) for oid in after]
        out += [(kind, oid) for oid in before if oid not in after]
    return out


def diff(old: Raw, new: Raw, nodes: Mapping[str, dict[str, Any]], ids: Iterable[tuple[str, str]]) -> list[Found]:
    """(type, action, id, name, message, attrs) for what changed of ``ids``
    (:func:`to_compare`) from ``old`` to ``new``."""
    out: list[Found] = []
    events_of = {"service": _service_events, "task": _task_events, "node": _node_events}
    for kind, oid in ids:
        prev, now = old.get(kind, {}).get(oid), new.get(kind, {}).get(oid)
        if prev is not now:
            out += events_of[kind](oid, prev, now, nodes)
    return out


def _service_events(sid: str, prev: dict[str, Any] | None, svc: dict[str, Any] | None,
                    nodes: Mapping[str, dict[str, Any]]) -> list[Found]:
    if svc is None:
        assert prev is not None
        return [("service", "remove", sid, str((prev.get("spec") or {}).get("name", sid[:12])), "", {})]
    name = str((svc.get("spec") or {}).get("name", sid[:12]))
    if prev is None:
        return [("service", "create", sid, name, "", {})]
    msg = _service_change(prev, svc) if prev != svc else ""
    return [("service", "update", sid, name, msg, {"version": svc.get("version", 0)})] if msg else []


def _task_events(tid: str, prev: dict[str, Any] | None, task: dict[str, Any] | None,
                 nodes: Mapping[str, dict[str, Any]]) -> list[Found]:
    if task is None or (prev is not None and prev.get("state") == task.get("state")):
        return []  # a removed task (the reaper's) says nothing, as before
    slot = task.get("slot") or str(task.get("node_id", ""))[:12]
    name = f"{task.get('service_name', '')}.{slot}"
    node = nodes.get(str(task.get("node_id", "")), {})
    attrs = {"service": task.get("service_name", ""), "node": node.get("hostname", ""),
             "state": task.get("state", ""), "desired_state": task.get("desired_state", "")}
    if task.get("exit_code") is not None:
        attrs["exit_code"] = task.get("exit_code")
    message = str(task.get("error") or task.get("message") or "")
    return [("task", "create" if prev is None else str(task.get("state", "")), tid, name, message, attrs)]


def _node_events(nid: str, prev: dict[str, Any] | None, node: dict[str, Any] | None,
                 nodes: Mapping[str, dict[str, Any]]) -> list[Found]:
    if node is None:
        assert prev is not None
        return [("node", "remove", nid, str(prev.get("hostname", nid[:12])), "", {})]
    name = str(node.get("hostname", nid[:12]))
    if prev is None:
        return [("node", "create", nid, name, "", {"role": node.get("role", "")})]
    out: list[Found] = []
    if prev.get("status") != node.get("status"):
        action = {"ready": "up", "down": "down"}.get(str(node.get("status")), str(node.get("status")))
        out.append(("node", action, nid, name, str(node.get("status_message") or ""), {}))
    if prev.get("availability") != node.get("availability"):
        out.append(("node", str(node.get("availability")), nid, name, "", {}))
    if prev.get("role") != node.get("role"):
        out.append(("node", "promote" if node.get("role") == "manager" else "demote", nid, name, "", {}))
    return out


def _service_change(prev: dict[str, Any], svc: dict[str, Any]) -> str:
    p_spec, spec = prev.get("spec") or {}, svc.get("spec") or {}
    if p_spec != spec:
        if {k: v for k, v in p_spec.items() if k != "replicas"} == {k: v for k, v in spec.items() if k != "replicas"}:
            return f"replicas {p_spec.get('replicas')} -> {spec.get('replicas')}"
        return f"spec changed (version {svc.get('version', 0)})"
    if prev.get("version") != svc.get("version"):
        return f"version {svc.get('version', 0)}"
    p_state = (prev.get("update_status") or {}).get("state")
    state = (svc.get("update_status") or {}).get("state")
    if p_state != state and state:
        return f"update {state}: {(svc.get('update_status') or {}).get('message', '')}".rstrip(": ")
    return ""


class EventLog:
    """The bounded history of one manager's replica, and its live subscribers."""

    def __init__(self, store: Store, limit: int = LIMIT) -> None:
        self._store = store
        self.events: deque[ClusterEvent] = deque(maxlen=limit)
        self._seq = itertools.count(1)
        self._subscribers: set[asyncio.Queue[ClusterEvent | None]] = set()
        self._stopped = asyncio.Event()
        self._raw: Raw | None = None
        self._index = 0  # the store index ``_raw`` was taken at
        self._leader: str | None = None
        self._look: tuple[Snapshot, list[tuple[str, str]], int] | None = None  # a look under way: its ids, how far

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        watcher = self._store.watcher()
        try:
            while not self._stopped.is_set():
                await watcher.wait(timeout=1.0)
                while self.observe(LOOK_CHUNK):
                    await asyncio.sleep(0)  # heartbeats and the API between the chunks
        finally:
            watcher.close()

    def observe(self, budget: int | None = None) -> bool:
        """Record what changed since the last look (called after each
        change). With ``budget``, compare at most that many objects and say
        whether some are left: the next call goes on with them, on the same
        snapshot. A scale to 100,000 is 100,000 new tasks; one look at all of
        them held the event loop for 0.2-0.4 s."""
        if self._look is None:
            snap = self._store.snapshot()
            todo = [] if self._raw is None else to_compare(self._raw, snap.raw, snap.changed_since(self._index))
            self._look = (snap, todo, 0)
        snap, todo, done = self._look
        end = len(todo) if budget is None else min(len(todo), done + budget)
        if self._raw is not None and end > done:
            now = time.time()
            for kind, action, oid, name, message, attrs in diff(self._raw, snap.raw, snap.raw.get("node", {}),
                                                               todo[done:end]):
                self._record(ClusterEvent(next(self._seq), now, kind, action, oid, name, message, attrs))
        if end < len(todo):
            self._look = (snap, todo, end)
            return True
        self._look = None
        self._raw = snap.raw
        self._index = snap.index
        leader = self._store.leader
        if leader != self._leader:
            if self._leader is not None or leader is not None:
                node = next((n for n in snap.nodes() if leader and f"{n.addr}:{n.raft_port}" == leader), None)
                name = node.hostname if node else (leader or "")
                self._record(ClusterEvent(next(self._seq), time.time(), "node", "leader", node.id if node else "",
                                          name, "no leader" if leader is None else f"{name} is the leader", {}))
            self._leader = leader
        return False

    def _record(self, event: ClusterEvent) -> None:
        self.events.append(event)
        for q in list(self._subscribers):
            if q.qsize() >= SUBSCRIBER_LIMIT:
                self._subscribers.discard(q)
                q.put_nowait(None)  # fell behind: it ends with an error
            else:
                q.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[ClusterEvent | None]:
        q: asyncio.Queue[ClusterEvent | None] = asyncio.Queue()
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[ClusterEvent | None]) -> None:
        self._subscribers.discard(q)


@dataclass(frozen=True)
class EventsRequest:
    since: float = field(default=0.0, metadata=rule(min=0))  # seconds since the epoch
    until: float = field(default=0.0, metadata=rule(min=0))
    types: list[str] = field(default_factory=list, metadata=rule(max_len=3))

    def __post_init__(self) -> None:
        if not set(self.types) <= TYPES:
            raise UsageError(f"events: the type filter takes {', '.join(sorted(TYPES))}, not {', '.join(self.types)}")


async def events(log: EventLog, req: EventsRequest) -> AsyncIterator[Any]:
    """The streaming API method ``events``: ``{"event": …}`` items from
    ``since`` (or from now), until ``until`` (or forever)."""
    since, until = req.since, req.until
    wanted = set(req.types) or TYPES
    q = log.subscribe()  # before reading the history: nothing falls between
    try:
        last = 0
        if since:
            for e in list(log.events):
                if e.time >= since and (not until or e.time <= until) and e.type in wanted:
                    last = e.seq
                    yield {"event": e.to_dict()}
        if until and until <= time.time():
            return
        while True:
            timeout = None if not until else max(0.0, until - time.time())
            try:
                got: ClusterEvent | None = await asyncio.wait_for(q.get(), timeout)
            except asyncio.TimeoutError:
                return
            if got is None:
                raise UsageError("events: this reader fell too far behind; reconnect with --since")
            e = got
            if e.seq <= last or e.type not in wanted:
                continue
            if until and e.time > until:
                return
            yield {"event": e.to_dict()}
    finally:
        log.unsubscribe(q)
