"""The cluster state, replicated by Raft (pysyncobj) between the managers.

Every change is a *transaction*: a list of operations applied atomically and
in the same order on every manager. Operations patch fields rather than
replace whole objects, so that two components writing different fields of one
task (the orchestrator its desired state, the dispatcher its observed state)
never undo each other. A task's observed state is only ever moved forward,
inside the apply function itself, so a late or repeated report cannot move a
task backwards on any replica.

Apply functions run on pysyncobj's thread and must be deterministic: callers
put timestamps into the operations, the apply never reads the clock.

Operations (plain lists, because they travel through the Raft log)::

    ["put", kind, id, object_dict]          create or replace
    ["patch", kind, id, {field: value}]     merge fields into an existing object
    ["advance", task_id, state, {field: value}]
                                            move a task's state forward, with fields
    ["delete", kind, id]
    ["expect", kind, id, field, value]      precondition: abort the whole
                                            transaction unless it holds
                                            (value None with field None: object absent)
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from pyswarm.errors import NoQuorumError
from pyswarm.models import KINDS, Cluster, Node, Service, Task, TaskState

from .ops import InvalidOperation
from .ops import check as check_op
from . import sealing

log = logging.getLogger(__name__)

Op = list[Any]


class TransactionAborted(Exception):
    """A precondition of the transaction did not hold; nothing was applied."""


class _State(SyncObjConsumer):  # type: ignore[misc]
    """The replicated part: ``objects[kind][id] -> dict`` and an index."""

    def __init__(self, on_change: Any) -> None:
        # attributes set before SyncObjConsumer.__init__ are not serialised
        self._lock = threading.Lock()
        self._on_change = on_change
        super().__init__()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in [*KINDS, "subnet"]}
        self.index = 0

    def _deserialize(self, data: dict[str, Any]) -> None:
        with self._lock:
            super()._deserialize(data)
        self._on_change()

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, ops: list[Op]) -> dict[str, Any]:
        with self._lock:
            try:
                changes = _apply_ops(self.objects, ops)
            except TransactionAborted as exc:
                return {"ok": False, "error": str(exc)}
            self.index += 1
            index = self.index
        self._on_change()
        return {"ok": True, "index": index, "changes": changes}

    def copy(self) -> tuple[int, dict[str, dict[str, dict[str, Any]]]]:
        with self._lock:
            raw: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in [*KINDS, "subnet"]}
            raw.update({kind: dict(objs) for kind, objs in self.objects.items()})
            return self.index, raw


def _apply_ops(objects: dict[str, dict[str, dict[str, Any]]], ops: list[Op]) -> int:
    """Apply a transaction in place; check every operation and precondition first."""
    for op in ops:
        try:
            check_op(op)
        except InvalidOperation as exc:
            raise TransactionAborted(f"invalid operation: {exc}") from None
        if op[0] == "expect":
            _, kind, oid, fieldname, value = op
            obj = objects.get(kind, {}).get(oid)
            if fieldname is None:
                if (obj is None) != (value is None):
                    raise TransactionAborted(f"{kind} {oid} {'exists' if obj else 'is gone'}")
            elif obj is None or obj.get(fieldname) != value:
                seen = None if obj is None else obj.get(fieldname)
                raise TransactionAborted(f"{kind} {oid}: {fieldname} is {seen!r}, expected {value!r}")
    changes = 0
    for op in ops:
        kind_ops = op[0]
        if kind_ops == "put":
            _, kind, oid, data = op
            objects.setdefault(kind, {})[oid] = data
            changes += 1
        elif kind_ops == "patch":
            _, kind, oid, fields = op
            current = objects.get(kind, {}).get(oid)
            if current is not None:
                objects[kind][oid] = {**current, **fields}
                changes += 1
        elif kind_ops == "advance":
            _, oid, state, fields = op
            current = objects["task"].get(oid)
            if current is None:
                continue
            if state is not None and not TaskState(current["state"]).can_move_to(TaskState(state)):
                continue
            update = dict(fields)
            if state is not None:
                update["state"] = state
            objects["task"][oid] = {**current, **update}
            changes += 1
        elif kind_ops == "delete":
            _, kind, oid = op
            if objects.get(kind, {}).pop(oid, None) is not None:
                changes += 1
        elif kind_ops != "expect":
            raise TransactionAborted(f"unknown operation {kind_ops!r}")
    return changes


@dataclass(frozen=True)
class Snapshot:
    """A consistent, read-only view of the store at one index."""

    index: int
    raw: dict[str, dict[str, dict[str, Any]]]

    @property
    def cluster(self) -> Cluster | None:
        for data in self.raw["cluster"].values():
            return Cluster.from_dict(sealing.open_cluster(data))  # credentials sealed at rest
        return None

    def nodes(self) -> list[Node]:
        return [Node.from_dict(d) for d in self.raw["node"].values()]

    def services(self) -> list[Service]:
        return [Service.from_dict(d) for d in self.raw["service"].values()]

    def tasks(self) -> list[Task]:
        return [Task.from_dict(d) for d in self.raw["task"].values()]

    def node(self, node_id: str) -> Node | None:
        data = self.raw["node"].get(node_id)
        return Node.from_dict(data) if data else None

    def service(self, service_id: str) -> Service | None:
        data = self.raw["service"].get(service_id)
        return Service.from_dict(data) if data else None

    def task(self, task_id: str) -> Task | None:
        data = self.raw["task"].get(task_id)
        return Task.from_dict(data) if data else None

    def service_by_name(self, name: str) -> Service | None:
        for data in self.raw["service"].values():
            if data["spec"]["name"] == name or data["id"] == name:
                return Service.from_dict(data)
        return None


@dataclass(frozen=True)
class RaftConfig:
    self_addr: str  # host:port this manager's Raft listens on
    partners: Sequence[str]
    data_dir: Path
    secret: str


class _SyncObj(SyncObj):  # type: ignore[misc]
    """pysyncobj, sending the entries a tick appended at once.

    In batched mode pysyncobj appends queued commands at the end of a tick
    and sends them with the next heartbeat (up to ``appendEntriesPeriod``
    later); unbatched, it sends one message per command, which collapses
    under load. This sends each tick's new entries right away, in one
    message per follower: batched throughput with unbatched latency."""

    def _checkCommandsToApply(self) -> None:
        before = self._SyncObj__getCurrentLogIndex()
        super()._checkCommandsToApply()
        if self._isLeader() and self._SyncObj__getCurrentLogIndex() != before:
            self._SyncObj__sendAppendEntries()


class Store:
    """The local replica: reads are local, writes go through Raft.

    Components wait on a :class:`Watcher` and read :meth:`snapshot`; they
    never call each other. A follower's writes are forwarded to the leader by
    pysyncobj itself.
    """

    def __init__(self, config: RaftConfig) -> None:
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: set[asyncio.Event] = set()
        self._version = 0
        self._state = _State(self._notify)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        conf = SyncObjConf(
            password=config.secret,
            journalFile=str(config.data_dir / "raft.journal"),
            fullDumpFile=str(config.data_dir / "raft.dump"),
            dynamicMembershipChange=True,
            commandsWaitLeader=True,
            # Batched appends (one message carries every queued entry) keep
            # throughput up under load; pysyncobj's unbatched mode sends one
            # message per entry and falls over at a few hundred writes/s.
            # Latency comes from waking the Raft thread on every command
            # (commit() pokes it) and sending what a tick appended at once
            # (_SyncObj); the short append period is the heartbeat.
            appendEntriesUseBatch=True,
            # a compaction forks the manager to write its dump; every 10 s
            # that pause showed in the DNS server's latency tail
            logCompactionMinEntries=10000,
            logCompactionMinTime=60,
            raftMinTimeout=0.4,
            raftMaxTimeout=1.0,
            appendEntriesPeriod=0.01,
            autoTickPeriod=0.005,
            connectionTimeout=2.0,
            connectionRetryTime=0.5,
            # a leader that hears from no majority for this long steps down,
            # so a partitioned leader stops its loops (and its dispatcher)
            # about when the others elect a new one
            leaderFallbackTimeout=1.0,
        )
        self._syncobj: SyncObj | None = None
        self._conf = conf

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._syncobj = _SyncObj(self._config.self_addr, list(self._config.partners), self._conf, consumers=[self._state])

    def stop(self) -> None:
        if self._syncobj is not None:
            self._syncobj.destroy()
            self._syncobj = None

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        self._version += 1
        for event in self._watchers:
            event.set()

    # -- reading -------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        index, raw = self._state.copy()
        return Snapshot(index, raw)

    def watcher(self) -> Watcher:
        return Watcher(self)

    @property
    def version(self) -> int:
        return self._version

    # -- Raft status -----------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        so = self._syncobj
        return so is not None and so._isLeader()

    @property
    def leader(self) -> str | None:
        so = self._syncobj
        if so is None:
            return None
        leader = so._getLeader()
        return None if leader is None else str(getattr(leader, "id", leader))

    @property
    def in_sync(self) -> bool:
        """True once this replica has applied everything the cluster had
        committed when it last (re)joined: as leader, up to the no-op that
        opened its term; as follower, up to the first commit index the leader
        sent it. Until then the snapshot may be an old one loaded from disk
        (a restarted manager replays its dump first), and nothing may act on
        it: not the leader's loops, not the "have I been demoted?" check."""
        so = self._syncobj
        if so is None:
            return False
        if so._isLeader():
            noop = getattr(so, "_SyncObj__noopIDx", None)
            return noop is not None and int(so.raftLastApplied) >= int(noop)
        return bool(so.isReady())

    @property
    def has_quorum(self) -> bool:
        so = self._syncobj
        return so is not None and bool(so.hasQuorum)

    @property
    def term(self) -> int:
        """The Raft term: a fencing token for what this leader tells agents."""
        return int(self.status().get("raft_term", 0))

    @property
    def members(self) -> list[str]:
        """The Raft addresses of the other managers in the current membership."""
        status = self.status()
        return [k[len("partner_node_status_server_"):] for k in status if k.startswith("partner_node_status_server_")]

    async def change_membership(self, action: str, addr: str, wait: float | None = None) -> None:
        """Add (``"add"``) or remove (``"remove"``) a manager's Raft address.

        Adding a manager that is not running yet cannot commit until it
        runs (the new membership counts it), so callers pass ``wait=None``
        there and let the joiner start; removal waits for the commit."""
        so = self._syncobj
        if so is None:
            raise NoQuorumError("the store is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, Any]] = loop.create_future()

        def done(result: Any, error: Any) -> None:
            loop.call_soon_threadsafe(_settle, fut, (result, error))

        if action == "add":
            so.addNodeToCluster(addr, callback=done)
        elif action == "remove":
            so.removeNodeFromCluster(addr, callback=done)
        else:
            raise ValueError(action)
        if wait is None:
            return
        try:
            _, error = await asyncio.wait_for(fut, wait)
        except asyncio.TimeoutError:
            raise NoQuorumError(self._no_quorum_message(f"the membership change ({action} {addr}) did not commit")) from None
        if error != FAIL_REASON.SUCCESS:
            raise NoQuorumError(self._no_quorum_message(f"membership change failed ({_fail_reason(error)})"))

    def step_down(self) -> bool:
        """Hand leadership to the most caught-up other manager (Raft's
        TimeoutNow); False when this is not the leader or no one can take it."""
        so = self._syncobj
        if so is None or not so._isLeader() or not self.members:
            return False
        so.transferLeadership()
        return True

    @property
    def self_addr(self) -> str:
        return self._config.self_addr

    def status(self) -> dict[str, Any]:
        so = self._syncobj
        return dict(so.getStatus()) if so is not None else {}

    # -- writing ---------------------------------------------------------------

    async def commit(self, ops: Iterable[Op], timeout: float = 5.0) -> dict[str, Any]:
        """Commit one transaction; raise on failure, return the apply result.

        Raises :class:`TransactionAborted` when a precondition failed and
        :class:`NoQuorumError` when no leader committed it in time.
        """
        ops = sealing.seal_ops([list(op) for op in ops])  # credentials enter the Raft log sealed
        if not ops:
            return {"ok": True, "index": self._state.index, "changes": 0}
        if self._syncobj is None:
            raise NoQuorumError("the store is not running")
        loop = asyncio.get_running_loop()
        # without a leader, fail within a few seconds rather than queue the
        # write for whenever one appears (the caller is a person waiting)
        deadline = loop.time() + min(timeout, 2.0)
        while self.leader is None:
            if loop.time() > deadline:
                raise NoQuorumError(self._no_quorum_message("no leader"))
            await asyncio.sleep(0.05)
        fut: asyncio.Future[tuple[Any, Any]] = loop.create_future()

        def done(result: Any, error: Any) -> None:
            loop.call_soon_threadsafe(_settle, fut, (result, error))

        self._state.apply(ops, callback=done)
        self._wake_raft()
        try:
            result, error = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise NoQuorumError(self._no_quorum_message("no leader committed the change")) from None
        if error != FAIL_REASON.SUCCESS:
            raise NoQuorumError(self._no_quorum_message(f"write failed ({_fail_reason(error)})"))
        if not result.get("ok"):
            raise TransactionAborted(result.get("error", "precondition failed"))
        return dict(result)

    def _wake_raft(self) -> None:
        """Have the Raft thread take the command now rather than at its next
        tick (pysyncobj only does this itself in its unbatched mode)."""
        notifier = getattr(self._syncobj, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            notifier.notify()

    def _no_quorum_message(self, what: str) -> str:
        status = self.status()
        total = int(status.get("partner_nodes_count", 0)) + 1
        reachable = 1 + sum(1 for k, v in status.items() if k.startswith("partner_node_status_server_") and v == 2)
        return f"no quorum: {reachable} of {total} managers reachable ({what}); reads still work"


def _settle(fut: asyncio.Future[tuple[Any, Any]], value: tuple[Any, Any]) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail_reason(code: Any) -> str:
    names = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}
    return str(names.get(code, code)).lower().replace("_", " ")


class Watcher:
    """One component's view of changes: each has its own event, so several
    loops share one store without stealing each other's wake-ups."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._event = asyncio.Event()
        self._event.set()  # the first wait returns at once: look at the state
        store._watchers.add(self._event)

    async def wait(self, timeout: float) -> bool:
        """Wait for a change (or the timeout); True when something changed."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self._event.clear()
        return True

    def close(self) -> None:
        self._store._watchers.discard(self._event)
