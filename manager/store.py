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
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from pyswarm.errors import ClusterError, ElectionError, NoQuorumError, UncertainWriteError
from pyswarm.models import KINDS, Cluster, Node, Service, Task, TaskState

from . import disk
from .ops import InvalidOperation
from .raft import RaftNode
from .ops import check as check_op
from . import sealing
from .tables import Frozen, RawView, Tables, slot_key

log = logging.getLogger(__name__)

Op = list[Any]


class TransactionAborted(Exception):
    """A precondition of the transaction did not hold; nothing was applied."""


class _State(SyncObjConsumer):  # type: ignore[misc]
    """The replicated part: ``objects[kind][id] -> dict`` and an index.

    In memory the objects live in :class:`.tables.Tables` (copy-on-write
    maps, indexes, typed objects cached per version); what Raft persists
    and sends is still the plain ``{kind: {id: dict}}``."""

    def __init__(self, on_change: Any) -> None:
        # attributes set before SyncObjConsumer.__init__ are not serialised
        self._lock = threading.Lock()
        self._on_change = on_change
        self._tables = Tables()
        # (index, [(kind, id), ...]) per transaction, for planners that only
        # look at what changed since their last pass
        self._changes: deque[tuple[int, list[tuple[str, str]]]] = deque(maxlen=CHANGES_KEPT)
        self._published: tuple[int, Frozen] = (0, self._tables.freeze())
        self.dumped_objects = 0  # in the last dump written or read (manager/compaction.py)
        super().__init__()
        self.index = 0

    def live_objects(self) -> int:
        return sum(len(pm) for pm in self._tables.kinds.values())

    def _serialize(self) -> dict[str, Any]:
        # on pysyncobj's thread, between applies: the published view is this state
        index, frozen = self._published
        self.dumped_objects = sum(len(pm) for pm in frozen.kinds.values())
        return {"objects": Tables.plain_of(frozen), "index": index}

    def _deserialize(self, data: dict[str, Any]) -> None:
        tables = Tables.load(data.get("objects") or {})
        with self._lock:
            self._tables = tables
            self.index = int(data.get("index", 0))
            self._changes.clear()
            self._published = (self.index, tables.freeze())
        self.dumped_objects = self.live_objects()
        self._on_change()

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, ops: list[Op]) -> dict[str, Any]:
        # no lock while applying: readers take the view published at the end
        # of the previous transaction (a freeze is O(1)), so a 5,000-op
        # transaction never holds up the event loop that takes a snapshot
        touched: list[tuple[str, str]] = []
        try:
            changes = _apply_ops(self._tables, ops, touched)
        except TransactionAborted as exc:
            return {"ok": False, "error": str(exc)}
        # an aborted transaction has written nothing: preconditions are checked first
        self.index += 1
        index = self.index
        frozen = self._tables.freeze()
        with self._lock:
            self._changes.append((index, touched))
            self._published = (index, frozen)
        self._on_change()
        return {"ok": True, "index": index, "changes": changes}

    def freeze(self) -> tuple[int, Frozen]:
        return self._published

    def changed_since(self, since: int, until: int) -> set[tuple[str, str]] | None:
        """(kind, id) of everything changed after index ``since`` up to
        ``until``; None when that is older than the changes kept."""
        kept = self.changes_between(since, until)
        if kept is None:
            return None
        out: set[tuple[str, str]] = set()
        for touched in kept:
            out.update(touched)
        return out

    def changes_between(self, since: int, until: int) -> list[list[tuple[str, str]]] | None:
        """What each transaction after ``since`` up to ``until`` touched, in
        order and not merged (a pair may repeat); None when older than the
        changes kept. For a reader that goes through them a part at a time:
        merging a scale's 100,000 changes took tens of ms of the loop."""
        if since >= until:
            return []
        with self._lock:
            if not self._changes or self._changes[0][0] > since + 1:
                return None
            return [touched for index, touched in self._changes if since < index <= until]


CHANGES_KEPT = 2000  # transactions
OFF_LOOP_OPS = 200  # operations in a transaction from which Store.commit seals and pickles it in a thread


class _PlainTables:
    """:func:`_apply_ops` on a plain ``{kind: {id: dict}}`` (tests, tools)."""

    def __init__(self, objects: dict[str, dict[str, dict[str, Any]]]) -> None:
        self._objects = objects

    def get(self, kind: str, oid: str) -> dict[str, Any] | None:
        return self._objects.get(kind, {}).get(oid)

    def put(self, kind: str, oid: str, data: dict[str, Any]) -> None:
        self._objects.setdefault(kind, {})[oid] = data

    def delete(self, kind: str, oid: str) -> bool:
        return self._objects.get(kind, {}).pop(oid, None) is not None


def _apply_ops(objects: dict[str, dict[str, dict[str, Any]]] | Tables, ops: list[Op],
               touched: list[tuple[str, str]] | None = None) -> int:
    """Apply a transaction in place; check every operation and precondition first."""
    tables: Tables | _PlainTables = objects if isinstance(objects, Tables) else _PlainTables(objects)
    for op in ops:
        try:
            check_op(op)
        except InvalidOperation as exc:
            raise TransactionAborted(f"invalid operation: {exc}") from None
        if op[0] == "expect":
            _, kind, oid, fieldname, value = op
            obj = tables.get(kind, oid)
            if fieldname is None:
                if (obj is None) != (value is None):
                    raise TransactionAborted(f"{kind} {oid} {'exists' if obj else 'is gone'}")
            elif obj is None or obj.get(fieldname) != value:
                seen = None if obj is None else obj.get(fieldname)
                raise TransactionAborted(f"{kind} {oid}: {fieldname} is {seen!r}, expected {value!r}")
    changes = 0
    for op in ops:
        kind_ops = op[0]
        before_task = None
        if touched is not None and (kind_ops == "advance" or len(op) > 1 and op[1] == "task"):
            before_task = tables.get("task", op[1] if kind_ops == "advance" else op[2])
        if kind_ops == "put":
            _, kind, oid, data = op
            tables.put(kind, oid, data)
        elif kind_ops == "patch":
            _, kind, oid, fields = op
            current = tables.get(kind, oid)
            if current is None:
                continue
            tables.put(kind, oid, {**current, **fields})
        elif kind_ops == "advance":
            _, oid, state, fields = op
            kind = "task"
            current = tables.get(kind, oid)
            if current is None:
                continue
            if state is not None and not TaskState(current["state"]).can_move_to(TaskState(state)):
                continue
            update = dict(fields)
            if state is not None:
                update["state"] = state
            tables.put(kind, oid, {**current, **update})
        elif kind_ops == "delete":
            _, kind, oid = op
            if not tables.delete(kind, oid):
                continue
        elif kind_ops == "expect":
            continue
        else:
            raise TransactionAborted(f"unknown operation {kind_ops!r}")
        changes += 1
        if touched is not None:
            touched.append((kind, oid))
            if kind == "task":
                _touch_task(touched, before_task, tables.get(kind, oid))
    return changes


def _touch_task(touched: list[tuple[str, str]], *versions: dict[str, Any] | None) -> None:
    """A task change also touches its service and its node (as
    ``task.service`` / ``task.node``), for planners that follow changes."""
    for data in versions:
        if data is not None:
            touched.append(("task.service", str(data.get("service_id", ""))))
            if data.get("slot"):
                touched.append(("task.slot", slot_key(str(data.get("service_id", "")), int(data["slot"]))))
            if data.get("node_id"):
                touched.append(("task.node", str(data["node_id"])))


class Snapshot:
    """A consistent, read-only view of the store at one index, taken in
    O(1) (:mod:`.tables`). Objects it returns are shared by every reader of
    the same version: do not mutate them (``dataclasses.replace`` first).

    ``Snapshot(index, raw)`` builds one from plain dicts (tests, tools)."""

    __slots__ = ("index", "_frozen", "_store_state")

    def __init__(self, index: int, raw: Mapping[str, Mapping[str, dict[str, Any]]] | None = None, *,
                 frozen: Frozen | None = None, state: _State | None = None) -> None:
        self.index = index
        self._frozen = frozen if frozen is not None else Tables.load(raw or {}).freeze()
        self._store_state = state

    @property
    def raw(self) -> RawView:
        """kind -> id -> plain dict, read-only and without a copy."""
        return RawView(self._frozen)

    def _all(self, kind: str) -> list[Any]:
        pm = self._frozen.kinds.get(kind)
        if pm is None:
            return []
        model = KINDS[kind]
        return [e.typed(model) for e in pm.values()]

    def _one(self, kind: str, oid: str) -> Any:
        pm = self._frozen.kinds.get(kind)
        entry = pm.get(oid) if pm is not None else None
        return None if entry is None else entry.typed(KINDS[kind])

    def count(self, kind: str) -> int:
        pm = self._frozen.kinds.get(kind)
        return 0 if pm is None else len(pm)

    @property
    def cluster(self) -> Cluster | None:
        for entry in self._frozen.kinds["cluster"].values():
            return Cluster.from_dict(sealing.open_cluster(entry.raw))  # credentials sealed at rest
        return None

    def nodes(self) -> list[Node]:
        return self._all("node")

    def services(self) -> list[Service]:
        return self._all("service")

    def tasks(self) -> list[Task]:
        return self._all("task")

    def node(self, node_id: str) -> Node | None:
        return self._one("node", node_id)  # type: ignore[no-any-return]

    def service(self, service_id: str) -> Service | None:
        return self._one("service", service_id)  # type: ignore[no-any-return]

    def task(self, task_id: str) -> Task | None:
        return self._one("task", task_id)  # type: ignore[no-any-return]

    def service_by_name(self, name: str) -> Service | None:
        for entry in self._frozen.kinds["service"].values():
            data = entry.raw
            if data["spec"]["name"] == name or data["id"] == name:
                return entry.typed(Service)  # type: ignore[no-any-return]
        return None

    # -- indexes (kept by the apply: no scan) ---------------------------------

    def _tasks(self, index: str, key: str) -> list[Task]:
        pm = self._frozen.kinds["task"]
        out = []
        for tid in self._frozen.ids(index, key):
            entry = pm.get(tid)
            if entry is not None:
                out.append(entry.typed(Task))
        return out

    def tasks_of(self, service_id: str) -> list[Task]:
        """The tasks of one service."""
        return self._tasks("service", service_id)

    def tasks_on(self, node_id: str) -> list[Task]:
        """The tasks that have ``node_id`` (assigned there at some point)."""
        return self._tasks("node", node_id)

    def tasks_in_slot(self, service_id: str, slot: int) -> list[Task]:
        """The tasks of one replica slot of a replicated service."""
        return self._tasks("slot", slot_key(service_id, slot))

    def tasks_in(self, *states: TaskState) -> list[Task]:
        """The tasks whose observed state is one of ``states``."""
        out: list[Task] = []
        for state in states:
            out += self._tasks("state", state.value)
        return out

    def count_tasks(self, index: str, key: str) -> int:
        """How many tasks ``index`` (service, node, state) holds under ``key``."""
        return self._frozen.count(index, key)

    def service_ids_with_tasks(self) -> list[str]:
        return self._frozen.keys_of("service")

    def changed_since(self, index: int) -> set[tuple[str, str]] | None:
        """(kind, id) changed after ``index`` up to this snapshot; None when
        unknown (too old, or a snapshot not taken from a store)."""
        if self._store_state is None:
            return None
        return self._store_state.changed_since(index, self.index)

    def changes_since(self, index: int) -> list[list[tuple[str, str]]] | None:
        """:meth:`changed_since` per transaction, not merged (see
        ``_State.changes_between``)."""
        if self._store_state is None:
            return None
        return self._store_state.changes_between(index, self.index)


@dataclass(frozen=True)
class RaftConfig:
    self_addr: str  # host:port this manager's Raft listens on
    partners: Sequence[str]
    data_dir: Path
    secret: str


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
            # (raft.RaftNode); the short append period is the heartbeat.
            appendEntriesUseBatch=True,
            # a compaction forks the manager to write its dump; every 10 s
            # that pause showed in the DNS server's latency tail
            logCompactionMinEntries=10000,
            logCompactionMinTime=60,
            # a quiet cluster's: a silence that was not a death lengthens
            # them for a while (raft.Patience)
            raftMinTimeout=0.4,
            raftMaxTimeout=1.0,
            # The heartbeat, and how often the Raft thread wakes with nothing
            # to do. Commands wake it (commit() pokes it), so neither sets a
            # leader's write latency; a follower alone, with no write after,
            # sees a commit up to one heartbeat late. At rest they were the
            # manager's largest cost: 5 ms ticks and 10 ms heartbeats, 200
            # wake-ups a second (bench/RESULTS.md, session 20). 50 ms is
            # still 8 heartbeats inside the shortest election timeout.
            appendEntriesPeriod=0.05,
            autoTickPeriod=0.05,
            connectionTimeout=2.0,
            connectionRetryTime=0.5,
            # a leader that hears from no majority for this long steps down,
            # so a partitioned leader stops its loops (and its dispatcher)
            # about when the others elect a new one (raft.Patience too)
            leaderFallbackTimeout=1.0,
        )
        self._syncobj: SyncObj | None = None
        self._conf = conf
        self._raft_lock = threading.Lock()
        self._guard = disk.DiskGuard(config.data_dir, self._disk_fault, self._disk_clear)

    def start(self) -> None:
        """Start this replica; a damaged journal is refused with what to do
        (:mod:`.disk`), a full or unwritable state directory is watched for."""
        self._loop = asyncio.get_running_loop()
        why = disk.check_journal(self._config.data_dir / "raft.journal")
        if why is not None:
            raise ClusterError(disk.damaged_message(self._config.data_dir, why))
        self._guard.step(probe=True)
        if not self.disk_error:
            self._start_raft()
        self._guard.start()

    def _start_raft(self) -> None:
        with self._raft_lock:
            if self._syncobj is None:
                self._syncobj = RaftNode(self._config.self_addr, list(self._config.partners), self._conf, self._state,
                                         self._state.live_objects, lambda: self._state.dumped_objects)

    def _stop_raft(self) -> None:
        with self._raft_lock:
            so, self._syncobj = self._syncobj, None
        if so is not None:
            if isinstance(so, RaftNode):
                so.shut()
            else:
                so.destroy()

    @property
    def disk_error(self) -> str:
        """Why this manager stopped acknowledging writes ("" when it did not)."""
        return self._guard.reason

    def _disk_fault(self, reason: str) -> None:
        # off Raft before the journal touches a page the disk cannot back (a
        # SIGBUS): a leader steps down, a follower stops appending
        self._stop_raft()
        self._notify()

    def _disk_clear(self) -> None:
        self._start_raft()
        self._notify()

    def stop(self) -> None:
        self._guard.stop()
        self._stop_raft()

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
        index, frozen = self._state.freeze()
        return Snapshot(index, frozen=frozen, state=self._state)

    def watcher(self) -> Watcher:
        return Watcher(self)

    def live_objects(self) -> int:
        """How many objects the store holds now (every kind)."""
        return self._state.live_objects()

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
    def raft_patience(self) -> float:
        """Seconds this replica's elections and step-down wait beyond
        pysyncobj's timeouts, after silences that were not deaths (raft.Patience)."""
        so = self._syncobj
        return so.patience.extra(time.monotonic()) if isinstance(so, RaftNode) else 0.0

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
        ops = [list(op) for op in ops]
        # big transactions (a planner's 2,000 tasks) are sealed and pickled
        # for Raft in a thread: on the loop one took up to 40 ms of it
        big = len(ops) >= OFF_LOOP_OPS
        ops = await asyncio.to_thread(sealing.seal_ops, ops) if big else sealing.seal_ops(ops)  # sealed in the log
        if not ops:
            return {"ok": True, "index": self._state.index, "changes": 0}
        if self.disk_error:
            raise ClusterError(self.disk_error)
        if self._syncobj is None:
            raise NoQuorumError("the store is not running")
        loop = asyncio.get_running_loop()
        # without a leader, fail within a few seconds rather than queue the
        # write for whenever one appears (the caller is a person waiting)
        deadline = loop.time() + min(timeout, 2.0)
        while self.leader is None:
            if loop.time() > deadline:
                raise self._no_leader_error("no leader")
            await asyncio.sleep(0.05)
        fut: asyncio.Future[tuple[Any, Any]] = loop.create_future()

        def done(result: Any, error: Any) -> None:
            loop.call_soon_threadsafe(_settle, fut, (result, error))

        if big:
            await asyncio.to_thread(self._state.apply, ops, callback=done)
        else:
            self._state.apply(ops, callback=done)
        self._wake_raft()
        try:
            result, error = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise self._uncertain("no leader committed it in time") from None
        if error == FAIL_REASON.LEADER_CHANGED:
            raise self._uncertain("the leader changed before it committed")
        if error in _ELECTION_FAILURES:
            raise self._no_leader_error(f"write failed ({_fail_reason(error)})")
        if error != FAIL_REASON.SUCCESS:
            raise NoQuorumError(self._no_quorum_message(f"write failed ({_fail_reason(error)})"))
        if not result.get("ok"):
            raise TransactionAborted(result.get("error", "precondition failed"))
        return dict(result)

    def _wake_raft(self) -> None:
        """Have the Raft thread take the command now rather than at its next
        tick (pysyncobj only does this itself in its unbatched mode)."""
        if isinstance(self._syncobj, RaftNode):
            self._syncobj.poke()

    def _reachable(self) -> tuple[int, int]:
        status = self.status()
        total = int(status.get("partner_nodes_count", 0)) + 1
        reachable = 1 + sum(1 for k, v in status.items() if k.startswith("partner_node_status_server_") and v == 2)
        return reachable, total

    def _no_quorum_message(self, what: str) -> str:
        reachable, total = self._reachable()
        return f"no quorum: {reachable} of {total} managers reachable ({what}); reads still work"

    def _no_leader_error(self, what: str) -> NoQuorumError:
        """Without a leader: an election, when a majority of the managers is
        reachable (it ends within about a second: retry); no quorum otherwise."""
        reachable, total = self._reachable()
        if reachable > total // 2:
            return ElectionError(f"leader election in progress, retry ({what}; {reachable} of {total} "
                                 "managers reachable)")
        return NoQuorumError(self._no_quorum_message(what))

    def _uncertain(self, what: str) -> NoQuorumError:
        """A write that reached a leader's log but was not seen to commit: it
        may yet be applied, so it is neither acknowledged nor refused."""
        reachable, total = self._reachable()
        if reachable > total // 2:
            return UncertainWriteError(f"{what}: the write may still be applied; check before repeating it "
                                       f"({reachable} of {total} managers reachable)")
        return NoQuorumError(self._no_quorum_message(f"{what}: the write may still be applied once a leader "
                                                     "is elected; check before repeating it"))


def _settle(fut: asyncio.Future[tuple[Any, Any]], value: tuple[Any, Any]) -> None:
    if not fut.done():
        fut.set_result(value)


# a write that never entered a log that can commit: refused, safe to send
# again (LEADER_CHANGED is not here: that entry may still commit)
_ELECTION_FAILURES = frozenset({FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED})


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
