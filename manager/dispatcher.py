"""The dispatcher: one long-lived SSH session per node, on the leader only.

Each session runs the node's forced command, ``pyswarm worker --stdio``, and
speaks :mod:`pyswarm.protocol`. A new session (a reconnect, a new leader) is
sent the node's whole desired task set and the whole mesh once its agent's
hello came; after that, when the store changes, only what changed since the
version the session was sent (``assign_delta``, ``mesh_delta``:
pyswarm/deltas.py), to agents that say they take deltas. An agent that
finds a gap asks for the whole set again (``resync``). What the agents
report goes back into the store as forward-only task state changes,
batched into few transactions.

The heartbeat is one loop for all sessions (:meth:`Dispatcher._heartbeat`):
each tick it pings the sessions that are due, together, and ends those
silent for ``dead_after`` seconds (their node is marked down; the session
keeps reconnecting with a short back-off). Pings written in one burst come
back in few reads of the event loop: a ping round trip cost ~0.4 ms of the
leader's CPU sent from a sleeping task per session, ~0.15 ms in bursts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from pyswarm import aio, deltas, protocol
from pyswarm.models import DESIRED_RUNNING, ENGINE_UNREACHABLE, Node, NodeRole, NodeStatus, Task, TaskState
from pyswarm.wire import BadRequest

from . import ops, sealing
from .images import ImageService, registry_auth
from .lag import STALL, LoopLag
from .objects import task_files
from .networks import MeshIndex
from .store import Op, Snapshot, Store

# a pong as the agent encodes it (protocol.encode); anything else is parsed
# and checked in full
_PONG = re.compile(rb'\{"op":"pong","seq":([0-9]{1,18})\}')

if TYPE_CHECKING:
    from .streams import StreamHub

log = logging.getLogger(__name__)

# task id -> (its stored spec dict, its node, its assignment): see node_assignments
AssignmentCache = dict[str, tuple[object, str, dict[str, Any]]]


def node_assignments(snap: Snapshot, node_id: str, zone: str,
                     cache: AssignmentCache | None = None) -> list[dict[str, Any]]:
    """The whole set of tasks ``node_id`` should run, as the agent wants it
    (from the store's by-node index: no scan of the other nodes' tasks).
    ``cache``: assignments built before, reused while the task's stored spec
    is the same dict and its node the same (a state report replaces the
    task's dict, not its spec); the caller empties it when a secret, config
    or the cluster changes. Rebuilding a node's 100 tasks' specs on each of
    their reports was a fifth of the leader's time converging 100,000."""
    raw_tasks = snap.raw["task"] if cache is not None else None
    out = [_assignment_of(snap, task, zone, cache, raw_tasks) for task in snap.tasks_on(node_id) if _in_set(task)]
    out.sort(key=lambda a: str(a["task_id"]))
    return out


def _assignment_of(snap: Snapshot, task: Task, zone: str, cache: AssignmentCache | None,
                   raw_tasks: Any) -> dict[str, Any]:
    """``task``'s assignment: the one in ``cache`` while its stored spec is
    the same dict and its node the same, else built (and cached)."""
    spec = raw_tasks[task.id].get("spec") if raw_tasks is not None else None
    if cache is not None:
        hit = cache.get(task.id)
        if hit is not None and hit[0] is spec and hit[1] == task.node_id:
            return hit[2]
    # secret/config data only to the node of a task that uses it
    a = {**_assignment(task, zone), **task_files(snap, task.spec), **registry_auth(snap, task.spec)}
    if cache is not None:
        cache[task.id] = (spec, task.node_id, a)
    return a


async def _sorted_changes(changed: list[list[tuple[str, str]]]) -> tuple[list[str], list[str], bool]:
    """The changed tasks and nodes, each once, and whether a cluster, secret
    or config changed (then every set is rebuilt), from the store's changes
    per transaction (:meth:`Snapshot.changes_since`), :data:`PATCH_CHUNK` at
    a time: a scale's change is 100,000 entries."""
    tasks: list[str] = []
    nodes: list[str] = []
    seen: set[tuple[str, str]] = set()
    count = 0
    for touched in changed:
        for pair in touched:
            count += 1
            if count % PATCH_CHUNK == 0:
                await asyncio.sleep(0)
            if pair in seen:
                continue
            seen.add(pair)
            kind = pair[0]
            if kind == "task":
                tasks.append(pair[1])
            elif kind == "node":
                nodes.append(pair[1])
            elif kind in ("cluster", "secret", "config"):
                return tasks, nodes, True
    return tasks, nodes, False


def _in_set(task: Task) -> bool:
    """Whether ``task`` is in its node's task set."""
    return task.desired_state == DESIRED_RUNNING and not task.state.terminal and \
        task.state.rank >= TaskState.ASSIGNED.rank


def assignments_by_node(snap: Snapshot, zone: str, only: Iterable[str] | None = None,
                        cache: AssignmentCache | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every node's task set (``only``: just these nodes'). The dispatcher
    rebuilds only the nodes a store change touched: with 100,000 tasks a
    rebuild of all of them per change took the event loop for seconds."""
    nodes = [n.id for n in snap.nodes()] if only is None else only
    return {node_id: node_assignments(snap, node_id, zone, cache) for node_id in nodes}


def _assignment(task: Task, zone: str) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "service_id": task.service_id,
        "service_name": task.service_name,
        "stack": task.stack,
        "slot": task.slot,
        "node_id": task.node_id,
        "spec": task.spec.to_dict(),
        "dns_search": [protocol.search_domain(task.stack, zone)],
    }


class ClusterView:
    """What every node's ``configure`` shares, computed once per store
    change: with N nodes, building it per node made each change O(N²)."""

    def __init__(self, snap: Snapshot) -> None:
        self.cluster = snap.cluster
        nodes = sorted((n for n in snap.nodes() if n.subnet), key=lambda n: n.subnet)
        self._routes = [{"subnet": n.subnet, "via": n.addr} for n in nodes]
        self._at = {n.id: i for i, n in enumerate(nodes)}
        managers = [n for n in nodes if n.role == NodeRole.MANAGER]
        self.dns = sorted(n.addr for n in managers)
        self.raft_peers = sorted(f"{n.addr}:{n.raft_port}" for n in managers)

    def routes(self, node_id: str) -> list[dict[str, str]]:
        """Every other node's subnet: two slices, the same dicts for every node."""
        i = self._at.get(node_id)
        return list(self._routes) if i is None else self._routes[:i] + self._routes[i + 1:]


def node_configuration(snap: Snapshot, node: Node, term: int = 0, view: ClusterView | None = None) -> dict[str, Any]:
    """The ``configure`` message for ``node``; ``term`` fences deposed leaders.
    A manager node also gets what it needs to run (or start) its manager."""
    view = view or ClusterView(snap)
    cluster = view.cluster
    message: dict[str, Any] = {
        "op": "configure",
        "node_id": node.id,
        "cluster_id": cluster.id if cluster else "",
        "subnet": node.subnet,
        "pool": cluster.addr_pool if cluster else "",
        "routes": view.routes(node.id),
        "dns": view.dns,
        "zone": cluster.zone if cluster else "pyswarm",
        "term": term,
        "authorized_key": cluster.ssh_public_key if cluster else "",
        "overlay": cluster.overlay if cluster else "",
        "addr": node.addr,
    }
    if node.role == NodeRole.MANAGER and cluster is not None:
        message["manager"] = {
            "addr": node.addr, "api_port": node.api_port, "raft_port": node.raft_port,
            "raft_secret": cluster.raft_secret, "api_host_private_key": cluster.api_host_private_key,
            "data_key": sealing.KEY.export() if sealing.KEY is not None else "",
            "raft_peers": view.raft_peers,
            "dns_upstreams": cluster.dns_upstreams,
            "api_group": cluster.api_group,
        }
    return message


async def connect_node(node: Node, client_keys: list[Any]) -> Any:
    """An SSH connection to ``node`` with the cluster key, its host key
    pinned at join (the dispatcher's sessions, image shipping)."""
    host_key = asyncssh.import_public_key(node.ssh_host_key)
    return await asyncio.wait_for(asyncssh.connect(
        node.addr, port=node.ssh_port, username="root",
        client_keys=client_keys, known_hosts=([host_key], [], []),
        # no SSH keepalives: the pings below detect a dead session sooner,
        # and with 1,000 nodes each keepalive is another 1,000 messages/s
        agent_path=None, config=[], encryption_algs=ENCRYPTION_ALGS,
    ), timeout=5)


# AES-GCM first (OpenSSH offers it by default): in asyncssh it costs ~7 us a
# small packet against chacha20-poly1305's ~51 us (its default first), and
# a third of the time for a 32 kB one; a ping or an assign to 1,000 nodes
# pays it twice per message. chacha20 and CTR remain for hosts without it.
ENCRYPTION_ALGS = ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes256-ctr", "aes192-ctr", "aes128-ctr"]


_GONE = "no such task"


REFUSALS_LOGGED = 20  # per node and 10 s


class HeartbeatLost(Exception):
    """The agent went silent: the node is presumed down."""


class _Session:
    """One node's SSH session, reconnecting until stopped."""

    def __init__(self, dispatcher: Dispatcher, node: Node) -> None:
        self.node = node
        self._d = dispatcher
        self._process: Any = None
        self._conn: Any = None
        self._sent_config: dict[str, Any] | None = None
        # what the configure last compared was made of (view, node, term, key): comparing
        # every pushed node's configure, 999 routes each, was 8 % of the leader
        # converging 1,000 x 100,000 on passes that changed no node
        self._config_of: tuple[Any, ...] = ()
        # the task set this session was sent last (by task id), as version
        # _tasks_version; the last whole set went out as _full_tasks
        # (version, monotonic time): a resync asked before it arrived is moot
        self._sent_tasks: dict[str, dict[str, Any]] | None = None
        self._tasks_version = 0
        self._full_tasks = (0, 0.0)
        self._sent_mesh = 0  # the dispatcher's mesh_version this session has
        self._full_mesh = (0, 0.0)
        self.protocol = 1  # the agent's (its hello): what it understands
        self._stopped = False
        self._last_heard = 0.0
        self._acked: int | None = None  # the last pong heard: the next ping acknowledges it (the agent's lease)
        self._next_ping = 0.0
        self._ping_seq = 0
        self._silent = asyncio.Event()  # set by the heartbeat: the agent said nothing for too long
        self._silent_reason = ""
        # set while the agent has not said hello in a live session: only
        # then does _watch_reach probe (a ready session's watcher sleeps on
        # it, where it woke every second: 1,000 wake-ups a second at 1,000 nodes)
        self._unready = asyncio.Event()
        self._ready = False
        self._end_reason = "session closed"
        self.engine_down = False  # the agent said its engine is unreachable
        self._refusals = 0
        self._refusals_since = 0.0

    @property
    def _ready(self) -> bool:
        """The agent said hello in this session (and it has not ended)."""
        return not self._unready.is_set()

    @_ready.setter
    def _ready(self, ready: bool) -> None:
        if ready:
            self._unready.clear()
        else:
            self._unready.set()

    def _heard_at(self) -> float:
        """Wall time of the last word from the agent in this session (0:
        none). Its lease is never newer than the last pong we heard
        (``Ping.ack``), so the grace may count from here."""
        if not self._last_heard:
            return 0.0
        return time.time() - (time.monotonic() - self._last_heard)

    async def run(self) -> None:
        # a new leader (or a new node): whatever an earlier leader last heard
        # from it is not in the store, so its grace starts now
        self._d.restart_grace(self.node, force=True)
        watch = aio.spawn(self._watch_reach(), f"reach {self.node.hostname}", log)
        try:
            await self._reconnect()
        finally:
            await aio.reap(watch)

    async def _watch_reach(self) -> None:
        """The leader's half of the fence's reachability rule (docs/healing.md,
        "Why it is sound"): while this node has no live session, probe its
        sshd every :data:`protocol.REACH_PROBE_EVERY` s as its lingering agent
        probes the managers' hosts; an answer restarts its grace
        (``Dispatcher.restart_grace``). An agent keeps its containers past
        its lease only while it reaches a manager's host, so while the link
        is up the leader does not replace them either."""
        while not self._stopped:
            await self._unready.wait()
            started = time.monotonic()
            if await aio.host_answers(self.node.addr, self.node.ssh_port,
                                      protocol.REACH_PROBE_TIMEOUT, refused_answers=False):
                if not self._ready:
                    self._d.restart_grace(self.node)
            elif self._held_since(started) > protocol.REACH_PROBE_TIMEOUT / 5:
                continue  # our own loop was held: the timeout may be ours, not the host's; probe again now
            await asyncio.sleep(protocol.REACH_PROBE_EVERY)

    def _held_since(self, started: float) -> float:
        """How long this manager's loop was held since ``started``
        (monotonic): measured stalls, or a wake-up later than the probe's
        timeout asked (a stall the monitor has not seen yet)."""
        lag, now = self._d.lag, time.monotonic()
        held = lag.stalled_between(started, now) if lag is not None else 0.0
        return max(held, now - started - protocol.REACH_PROBE_TIMEOUT)

    async def _reconnect(self) -> None:
        backoff = 0.2
        while not self._stopped:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncssh.Error, asyncio.TimeoutError, ValueError, HeartbeatLost) as exc:
                reason = self._end_reason = _describe(exc)
                log.info("session to %s (%s) ended: %s%s", self.node.hostname, self.node.addr, reason,
                         "" if isinstance(exc, HeartbeatLost) else self._d.lag_note())  # its reason has it
                self._d.mark_down(self.node, reason, was_ready=self._ready, heard_at=self._heard_at())
            except Exception as exc:  # a bug here must not end the node's session for good
                reason = f"session failed: {type(exc).__name__}: {exc}"
                log.error("session to %s (%s) failed; reconnecting", self.node.hostname, self.node.addr,
                          exc_info=exc)
                self._d.mark_down(self.node, reason, was_ready=self._ready, heard_at=self._heard_at())
            finally:
                self._close()
            if self._stopped:
                break
            if time.monotonic() - started > 5:
                backoff = 0.2
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _session(self) -> None:
        self._last_heard = 0.0
        self._acked = None
        # a few handshakes at a time: 1,000 sessions opened at once (a new
        # leader, the footprint bench at load ~70) all hit connect_node's
        # 5 s timeout, retried together, and none was up after 4 minutes
        async with self._d.connecting:
            self._conn = await connect_node(self.node, self._d.client_keys)
            self._process = await self._conn.create_process("pyswarm worker --stdio", encoding=None)
        self._last_heard = time.monotonic()
        self._sent_config = None
        self._config_of = ()
        self._sent_tasks = None
        self._sent_mesh = 0
        self.protocol = 1
        self._silent.clear()
        # the first ping at a random point of the period: sessions opened
        # together (a new leader) do not all ping in the same tick
        every, _ = self._d.heartbeat()
        self._next_ping = self._last_heard + random.uniform(0, every)
        self.push()  # configure; tasks and mesh once the hello says what the agent takes
        reader = asyncio.create_task(self._read())
        pinger = asyncio.create_task(self._until_silent())
        try:
            await asyncio.wait({reader, pinger}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed = await aio.reap(reader, pinger)  # both read, whichever ended first
        if failed:
            raise failed[0]  # why the session ended

    async def _read(self) -> None:
        stdout = self._process.stdout
        buf = b""
        while True:
            chunk = await stdout.read(65536)
            if not chunk:
                stderr = b""
                try:
                    stderr = await asyncio.wait_for(self._process.stderr.read(2000), 0.5)
                except (asyncio.TimeoutError, asyncssh.Error):
                    pass
                raise ValueError("agent exited" + (f": {stderr.decode(errors='replace').strip()}" if stderr else ""))
            self._last_heard = time.monotonic()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            if len(buf) > protocol.MAX_AGENT_LINE:
                # a line that never ends: a broken or hostile agent; the
                # session ends (and reconnects) rather than buffer it all
                raise ValueError(f"agent sent a line longer than {protocol.MAX_AGENT_LINE} bytes")
            for line in lines:
                if not line.strip():
                    continue
                pong = _PONG.fullmatch(line.rstrip())
                if pong is not None:
                    # hearing anything is the heartbeat: a pong needs no
                    # full parse, only its seq (the next ping acknowledges it)
                    self._acked = int(pong[1])
                    continue
                try:
                    message = protocol.parse_agent(line)
                except BadRequest as exc:
                    self.refused(f"refused a message: {exc}")
                    continue
                self._d.handle(self, message)

    def refused(self, what: str) -> None:
        """Log a refusal, at most :data:`REFUSALS_LOGGED` per 10 s and node
        (then one line with the count): a broken or hostile agent must not
        flood the manager's log."""
        now = time.monotonic()
        if now - self._refusals_since > 10:
            if self._refusals > REFUSALS_LOGGED:
                log.warning("%s: %d more refusals in %.0fs not logged", self.node.hostname,
                            self._refusals - REFUSALS_LOGGED, now - self._refusals_since)
            self._refusals, self._refusals_since = 0, now
        self._refusals += 1
        if self._refusals <= REFUSALS_LOGGED:
            log.warning("%s: %s", self.node.hostname, what)

    async def _until_silent(self) -> None:
        await self._silent.wait()
        raise HeartbeatLost(self._silent_reason)

    def beat(self, now: float, every: float, dead_after: float, judge: bool) -> None:
        """One heartbeat tick (:meth:`Dispatcher._heartbeat`): ping when due;
        silence for ``dead_after`` ends the session. Until the agent's hello,
        it gets ``hello_timeout`` (a cold Python start on a loaded host takes
        seconds). ``judge``: False when this manager's own loop was held, so
        that what the agent sent meanwhile is still unread."""
        if self._process is None or self._silent.is_set():
            return
        if now >= self._next_ping:
            self._next_ping = max(self._next_ping + every, now + every / 2)
            self._ping_seq += 1
            if self.protocol >= 2:
                ack = b"null" if self._acked is None else b"%d" % self._acked
                self._write(b'{"op":"ping","seq":%d,"ack":%s,"every":%g}\n' % (self._ping_seq, ack, every))
            else:
                self._write(b'{"op":"ping","seq":%d}\n' % self._ping_seq)
        if not judge:
            return
        limit = dead_after if self._ready else self._d.hello_timeout
        silent = now - self._last_heard
        if silent > limit:
            # time the loop was stalled does not count as the node's silence
            lag = self._d.lag
            held = lag.stalled_between(self._last_heard, now) if lag is not None else 0.0
            if silent - held > limit:
                self._silent_reason = f"no heartbeat for {limit:.0f}s" + self._d.lag_note()
                self._silent.set()

    def _send(self, message: dict[str, Any]) -> None:
        self._write(protocol.encode(message))

    send = _send

    def _write(self, line: bytes) -> None:
        process = self._process
        if process is None:
            return
        try:
            process.stdin.write(line)
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            log.info("%s: write failed: %s", self.node.hostname, exc)

    def push(self) -> None:
        """Send what changed of the configuration, the task set and the mesh
        since they were last sent; the task set and the mesh only once the
        agent's hello said which messages it takes."""
        if self._process is None:
            return
        snap = self._d.snapshot
        node = snap.node(self.node.id) if snap else None
        if node is None or snap is None:
            return
        self.node = node
        made_of = (self._d.view, node, self._d.term, sealing.KEY)
        if made_of != self._config_of:  # the same view, node, term and data key make the same configure
            config = node_configuration(snap, node, self._d.term, self._d.view)
            if config != self._sent_config:
                self._send(config)
                self._sent_config = config
            self._config_of = made_of
        if not self._ready:
            return
        self._push_tasks(self._d.assignments.get(node.id, {}))
        self.push_mesh()

    def _push_tasks(self, by_id: Mapping[str, dict[str, Any]]) -> None:
        """The whole set on a new session (or a resync), or to an agent
        that takes no deltas; else what was put and removed since the set
        this session was sent last."""
        sent = self._sent_tasks
        tasks = list(by_id.values())
        put, remove = (tasks, []) if sent is None else deltas.assign_changes(sent, tasks)
        if sent is not None and not put and not remove:
            return
        if sent is None or self.protocol < 2:  # a whole set: in task id order, as node_assignments gives it
            tasks.sort(key=lambda a: str(a["task_id"]))
        base, version = self._tasks_version, self._tasks_version + 1
        if self.protocol < 2:
            self._send({"op": "assign", "tasks": tasks})
        elif sent is None:
            self._send({"op": "assign", "tasks": tasks, "version": version})
            self._full_tasks = (version, time.monotonic())
        else:
            self._send({"op": "assign_delta", "base": base, "version": version, "put": put, "remove": remove})
        self._tasks_version = version
        self._sent_tasks = {a["task_id"]: a for a in tasks}

    def push_mesh(self) -> int:
        """Networks and ingress (manager/networks.py): the same lines for
        every node, encoded once by the dispatcher; the change since the
        version this session has, or the whole mesh. The bytes written."""
        d = self._d
        if self._process is None or not self._ready or d.mesh_version == 0 or self._sent_mesh == d.mesh_version:
            return 0
        if self.protocol >= 2 and self._sent_mesh and self._sent_mesh == d.mesh_version - 1 and d.mesh_delta_line:
            line = d.mesh_delta_line
        else:
            line = d.mesh_full(versioned=self.protocol >= 2)
            self._full_mesh = (d.mesh_version, time.monotonic())
        self._write(line)
        self._sent_mesh = d.mesh_version
        return len(line)

    def resync(self, message: protocol.Resync) -> None:
        """The agent found a gap (a delta whose base it does not hold): send
        the whole set again, unless a whole set newer than what it holds is
        on its way (it asked before that arrived)."""
        full, sent_at = self._full_tasks if message.what == "assign" else self._full_mesh
        have = -1 if message.have is None else message.have
        if full > have and time.monotonic() - sent_at < RESYNC_IN_FLIGHT:
            return
        log.info("%s: agent asked for the whole %s again (it holds version %s)", self.node.hostname,
                 "task set" if message.what == "assign" else "mesh", message.have)
        if message.what == "assign":
            self._sent_tasks = None
            self.push()
        else:
            self._sent_mesh = 0
            self.push_mesh()

    def _close(self) -> None:
        self._ready = False
        self.engine_down = False  # the next session's agent says it again
        if self._d.streams is not None:  # its logs/exec/stats streams end (manager/streams.py)
            self._d.streams.session_closed(self, self._end_reason)
        if self._process is not None:
            try:
                self._process.close()
            except Exception:
                pass
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stop(self) -> None:
        self._stopped = True
        self._close()


# Heartbeat. Up to MAX_PINGS_PER_SECOND / 2 nodes are pinged every
# ping_every (0.5 s) and declared dead after dead_after (2 s); beyond that
# the period stretches to keep the pings per second within the bound, and
# dead_after with it (4 periods), up to MAX_PING_PERIOD: the agent must hear
# from its leader well within its fencing lease (protocol.AGENT_LEASE: two
# pings in one lease), so past 750 nodes the rate grows instead. A round
# trip costs the leader ~0.15 ms of a core sent in bursts (bench/RESULTS.md,
# footprint): 250/s is ~4 % of a core. A longer dead_after only delays the
# node's down, and fencing stays sound: its containers stop by
# AGENT_LEASE + probe + FENCE_STOP_GRACE after the pong its lease is
# anchored to, and the leader replaces them LOST_GRACE after the last word
# it heard, which is no earlier (pyswarm/protocol.py, docs/healing.md).
MAX_PINGS_PER_SECOND = 250
# (AGENT_LEASE - 2 s) / 2: a lease is renewed to a pong one period old, by
# the next ping, so a live session's lease is at most two periods and the
# delays old; under AGENT_LEASE it never runs out on a working link (where
# it would set every node probing the managers' sshd each second)
MAX_PING_PERIOD = (protocol.AGENT_LEASE - 2.0) / 2
# at least; a quarter of the period on big clusters (1 s at 1,000 nodes): the
# bigger a burst, the cheaper a ping (0.5 s bursts ~0.13 ms, 1 s ~0.10 ms)
HEARTBEAT_TICK = 0.25
RESYNC_IN_FLIGHT = 10.0  # seconds a whole set sent counts as on its way (Session.resync)
PATCH_CHUNK = 500  # changed tasks looked at per turn of the loop (Dispatcher._patch_sets)
CONNECTS_AT_ONCE = 16  # SSH handshakes under way together (each is ~10 ms of the leader's CPU or more)
MESH_BYTES_PER_SECOND = 20_000_000
MESH_PUBLISH_SHARE = 0.1
"""At most this share of the time goes to writing mesh changes to every
session: a broadcast to 1,000 nodes is 1,000 SSH writes (~50 ms). Once the
mesh followed the store's changes, its builds took milliseconds and a
scale-up published a delta to every node several times a second; the
leader's CPU converging 100,000 tasks went up, not down."""
MESH_BUILD_SHARE = 0.25
"""At most this share of the time goes to building the mesh while the store
keeps changing: after a build that took T, the next starts no sooner than
T / share - T later. A build follows the store's changes
(manager/networks.py MeshIndex); the first, and one after a service or
network changed, is whole: ~0.6 s of CPU at 100,000 running tasks, which
on the loop held the heartbeats for that long."""


class Dispatcher:
    def __init__(self, store: Store, client_keys: list[Any], ping_every: float = 0.5, dead_after: float = 2.0,
                 hello_timeout: float = 15.0, images: ImageService | None = None,
                 lag: LoopLag | None = None) -> None:
        self._store = store
        self.lag = lag  # this manager's loop lag: its own stalls are not the nodes' silence
        self.images = images  # ships images the agents ask for (manager/images.py)
        if images is not None:
            images.connect = self.connection
        self.client_keys = client_keys  # the cluster key, then the one it replaced (if any)
        self._key_texts: tuple[str, ...] = ()
        self.ping_every = ping_every
        self.dead_after = dead_after
        self.hello_timeout = hello_timeout
        self.snapshot: Snapshot | None = None
        self.assignments: dict[str, dict[str, dict[str, Any]]] = {}  # node id -> task id -> assignment
        self._assignment_cache: AssignmentCache = {}
        self.view: ClusterView | None = None
        # the mesh (manager/networks.py) is the same for every node: encoded
        # once per change, sent to the sessions that have an older version
        self._mesh_index = MeshIndex()  # follows the store's changes; its first build is whole (in a thread)
        self.mesh: dict[str, Any] | None = None  # the latest built
        self._published: dict[str, Any] | None = None  # the mesh of mesh_version
        self._mesh_lines: dict[bool, bytes] = {}  # whole mesh_version, by versioned (encoded when wanted)
        self.mesh_delta_line = b""  # mesh_version - 1 -> mesh_version ("" when only a whole mesh says it)
        self.mesh_version = 0
        self._mesh_next_at = 0.0
        self._mesh_timer: asyncio.TimerHandle | None = None
        self._mesh_build: asyncio.Task[None] | None = None
        self._mesh_stale = False
        self._mesh_build_at = 0.0  # the next build starts no sooner (MESH_BUILD_SHARE)
        self.term = 0
        self._sessions: dict[str, tuple[_Session, asyncio.Task[None]]] = {}
        self.connecting = asyncio.Semaphore(CONNECTS_AT_ONCE)
        self.streams: StreamHub | None = None  # set by StreamHub.attach
        self._pending: list[Op] = []
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        watcher = self._store.watcher()
        writer = aio.spawn(self._writer(), "dispatcher writer", log)
        heart = aio.spawn(self._heartbeat(), "dispatcher heartbeat", log)
        try:
            while not self._stopped.is_set():
                changed = await watcher.wait(timeout=1.0)
                if self._stopped.is_set():
                    break
                for part in (writer, heart):
                    if part.done():  # reports would pile up unrecorded, nodes unjudged: fail, and be restarted
                        part.result()
                        raise RuntimeError("the dispatcher's writer or heartbeat stopped")
                if not changed and self.snapshot is not None and self._term() == self.term:
                    continue  # nothing new: with 10,000 tasks a needless pass costs ~0.3 s
                previous = self.snapshot
                self.snapshot = self._store.snapshot()
                cluster_now = self.snapshot.cluster
                self._refresh_keys(cluster_now)
                touched = await self._update_assignments(previous, self.snapshot)
                term = self._term()
                everyone = touched is None or term != self.term or self.view is None
                if everyone:  # a node (its routes), the cluster or the term changed: every configure may
                    self.view = ClusterView(self.snapshot)
                    self._sync_sessions(self.snapshot)
                self.term = term
                self._want_mesh()
                # only the sessions whose tasks changed: comparing every node's
                # configure (all routes) and task set per change was O(nodes x
                # tasks), ~1 s a pass at 1,000 nodes x 100,000 tasks
                for node_id, (session, _) in self._sessions.items():
                    if everyone or (touched is not None and node_id in touched):
                        session.push()
        finally:
            if self._mesh_timer is not None:
                self._mesh_timer.cancel()
            if self._mesh_build is not None:
                self._mesh_build.cancel()
            watcher.close()
            writer.cancel()
            heart.cancel()
            for session, task in self._sessions.values():
                session.stop()
                task.cancel()
            self._sessions.clear()

    def stop(self) -> None:
        self._stopped.set()
        if self.images is not None and self.images.connect == self.connection:
            self.images.connect = None

    async def connection(self, node: Node) -> tuple[Any, bool]:
        """The live SSH connection of ``node``'s session (not to be closed), or None."""
        entry = self._sessions.get(node.id)
        conn = entry[0]._conn if entry is not None and entry[0]._ready else None
        return conn, False

    async def _update_assignments(self, previous: Snapshot | None, snap: Snapshot) -> set[str] | None:
        """Bring the nodes' task sets up to ``snap``: all of them after a
        change to secrets, configs or the cluster, or when the changes are
        not known; else only the entries of the tasks that changed. The
        nodes whose sets changed; None when a node itself changed or all
        were rebuilt (then every session's configure may have changed too)."""
        cluster = snap.cluster
        zone = cluster.zone if cluster else "pyswarm"
        changed = None if previous is None else snap.changes_since(previous.index)
        task_ids, node_ids, everything = ([], [], True) if changed is None else await _sorted_changes(changed)
        if everything:
            self._assignment_cache = {}
            self.assignments = {node_id: {a["task_id"]: a for a in tasks} for node_id, tasks
                                in assignments_by_node(snap, zone, cache=self._assignment_cache).items()}
            return None
        touched = await self._patch_sets(snap, task_ids, zone)
        for node_id in node_ids:
            if snap.node(node_id) is None:
                for tid in self.assignments.pop(node_id, {}):
                    self._assignment_cache.pop(tid, None)
        return None if node_ids else touched

    async def _patch_sets(self, snap: Snapshot, changed: list[str], zone: str) -> set[str]:
        """Apply the changed tasks to the nodes' sets, entry by entry; the
        nodes whose sets changed: a task came or left, or its spec changed.
        Most task changes are state reports (assigned ... running), which
        change no set. Rebuilding a node's whole set per changed task (the
        node's 100 tasks for each of its reports, then for each of its
        assignments) was the largest share of the leader's time converging
        100,000 tasks on 1,000 nodes (bench/RESULTS.md).

        The changes are looked at :data:`PATCH_CHUNK` at a time with the
        loop free in between (a scale's 100,000 new tasks in one go held it
        for 0.1-0.4 s), and what they find goes into the sets at the end, in
        one go: a session's push in between sends the sets as they were,
        never half of a change (a replacement without the stop of the task
        it replaces)."""
        nodes: set[str] = set()
        raw_tasks = snap.raw["task"]
        leave: list[tuple[str, str]] = []  # (node, task) out of that node's set
        enter: list[tuple[str, str, dict[str, Any]]] = []  # (node, task, assignment) into it
        for i, tid in enumerate(changed):
            if i % PATCH_CHUNK == PATCH_CHUNK - 1:
                await asyncio.sleep(0)
            hit = self._assignment_cache.get(tid)  # an entry for every task in a set, with its node
            was = hit[1] if hit is not None else None
            if was is None and not (raw_tasks.get(tid) or {}).get("node_id"):
                continue  # pending, or gone: in no set before or now (typing 100,000 of them cost seconds)
            task = snap.task(tid)
            now = task.node_id if task is not None and _in_set(task) else None
            if was is not None and was != now:
                self._assignment_cache.pop(tid, None)  # the cache is the dispatcher's alone: no push reads it
                leave.append((was, tid))
            if task is None or now is None:
                continue
            a = _assignment_of(snap, task, zone, self._assignment_cache, raw_tasks)
            if a is not self.assignments.get(now, {}).get(tid):
                enter.append((now, tid, a))
        for node_id, tid in leave:
            self.assignments.get(node_id, {}).pop(tid, None)
            nodes.add(node_id)
        for node_id, tid, a in enter:
            self.assignments.setdefault(node_id, {})[tid] = a
            nodes.add(node_id)
        return nodes

    def _refresh_keys(self, cluster: Any) -> None:
        """Connect with the cluster's current SSH key, then the one it
        replaced (a rotation, swarm ca --rotate): a node that has not
        installed the new key yet is still reached, and installs it."""
        texts = (cluster.ssh_private_key, cluster.previous_ssh_private_key) if cluster is not None else ()
        if texts and texts != self._key_texts:
            self._key_texts = texts
            self.client_keys = [asyncssh.import_private_key(k) for k in texts if k]

    def _term(self) -> int:
        """The fencing token: Raft terms restart after --force-new-cluster,
        the cluster's epoch does not."""
        cluster = self.snapshot.cluster if self.snapshot is not None else None
        return (cluster.epoch if cluster else 0) * 1_000_000_000 + self._store.term

    def _want_mesh(self) -> None:
        """The store changed: build the mesh of the latest snapshot, in a
        thread (the loop goes on meanwhile) and paced by
        :data:`MESH_BUILD_SHARE`; changes that come while one is built or
        paced are all in the next build."""
        self._mesh_stale = True
        if self._mesh_build is None or self._mesh_build.done():
            self._mesh_build = aio.spawn(self._build_meshes(), "mesh build", log)

    async def _build_meshes(self) -> None:
        while self._mesh_stale and self.snapshot is not None:
            wait = self._mesh_build_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._mesh_stale = False
            started = time.monotonic()
            mesh = await asyncio.to_thread(self._mesh_index.update, self.snapshot)
            took = time.monotonic() - started
            self._mesh_build_at = time.monotonic() + took * (1 / MESH_BUILD_SHARE - 1)
            self._update_mesh(mesh)

    def _update_mesh(self, mesh: dict[str, Any]) -> None:
        """Publish a changed mesh, at most :data:`MESH_BYTES_PER_SECOND`
        worth of it to all sessions together: on a lab that is every change
        at once; 10,000 tasks over 1,000 nodes make each broadcast ~150 MB
        through SSH, and a big stack converging changes it many times a
        second. The latest mesh always goes out, after the pause."""
        if mesh == self.mesh:
            return
        self.mesh = mesh
        if self._mesh_timer is not None:
            return  # already waiting: the timer publishes the latest
        wait = self._mesh_next_at - time.monotonic()
        if wait > 0:
            self._mesh_timer = asyncio.get_running_loop().call_later(wait, self._publish_mesh)
            return
        self._publish_mesh()

    def _publish_mesh(self) -> None:
        self._mesh_timer = None
        if self.mesh is None or self.mesh is self._published:
            return
        previous, self._published = self._published, self.mesh
        changes = deltas.mesh_changes(previous, self.mesh) if previous is not None else None
        if changes == {}:
            return  # changed and back again while paced
        self.mesh_version += 1
        self._mesh_lines = {}
        self.mesh_delta_line = b"" if changes is None else protocol.encode(
            {"op": "mesh_delta", "base": self.mesh_version - 1, "version": self.mesh_version, **changes})
        started = time.monotonic()
        written = 0
        for session, _ in self._sessions.values():
            written += session.push_mesh() or 0
        # the next broadcast waits until this one's bytes are paid for, and
        # its writes (MESH_PUBLISH_SHARE)
        took = time.monotonic() - started
        self._mesh_next_at = started + took + max(written / MESH_BYTES_PER_SECOND, took * (1 / MESH_PUBLISH_SHARE - 1))

    def mesh_full(self, versioned: bool = True) -> bytes:
        """The whole mesh of ``mesh_version`` as a line, encoded once (with
        its version for agents that take deltas)."""
        line = self._mesh_lines.get(versioned)
        if line is None and self._published is not None:
            mesh = {**self._published, "version": self.mesh_version} if versioned else self._published
            line = self._mesh_lines[versioned] = protocol.encode(mesh)
        return line or b""

    @property
    def mesh_line(self) -> bytes:
        """The whole mesh as an agent that takes deltas gets it."""
        return self.mesh_full()

    def heartbeat(self) -> tuple[float, float]:
        """(ping period, silence that ends a session), stretched past
        :data:`MAX_PINGS_PER_SECOND` sessions' worth up to
        :data:`MAX_PING_PERIOD` (see there): every ping is an SSH message
        out and one back through Python. Small clusters keep the fast
        failure detection; 1,000 nodes get 3 s and 12 s."""
        scale = max(1.0, len(self._sessions) / (self.ping_every * MAX_PINGS_PER_SECOND))
        scale = min(scale, max(1.0, MAX_PING_PERIOD / self.ping_every))
        return self.ping_every * scale, self.dead_after * scale

    async def _heartbeat(self) -> None:
        """Ping every due session in one burst per tick, and end the silent
        ones. A tick that starts late (this manager's own loop was held)
        pings but judges no one: what the agents sent meanwhile is unread."""
        due = time.monotonic()
        while True:
            every, dead_after = self.heartbeat()
            tick = max(HEARTBEAT_TICK, every / 4)
            due += tick
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            judge = now - due < STALL
            if not judge:
                due = now  # no catching up in a burst
            for session, _ in list(self._sessions.values()):
                session.beat(now, every, dead_after, judge)

    def _sync_sessions(self, snap: Snapshot) -> None:
        nodes = {n.id: n for n in snap.nodes() if n.ssh_host_key}
        for node_id in list(self._sessions):
            if node_id not in nodes:
                session, task = self._sessions.pop(node_id)
                session.stop()
                task.cancel()
        for node_id, node in nodes.items():
            if node_id not in self._sessions:
                session = _Session(self, node)
                self._sessions[node_id] = (session, aio.spawn(session.run(), f"session {node.hostname}", log))

    # -- what the agents say --------------------------------------------------------

    def handle(self, session: _Session, message: protocol.AgentMessage) -> None:
        """Act on one checked message (pyswarm.protocol.parse_agent) of
        ``session``'s node. A node speaks only for itself: a status report
        for a task not assigned to it, or with an address outside its
        subnet, is refused and logged (swarmkit: "cannot update a task not
        assigned this node"), and the store, DNS and the mesh never see it."""
        node = session.node
        if isinstance(message, protocol.Hello):
            first = not session._ready
            session._ready = True
            session.protocol = message.protocol
            if node.status != NodeStatus.READY:
                log.info("node %s ready (was %s%s)%s", node.hostname, node.status.value,
                         f": {node.status_message}" if node.status_message else "", self.lag_note())
            fields: dict[str, Any] = {
                "status": NodeStatus.READY.value, "status_message": "", "down_since": 0.0,
                "updated_at": time.time(), "problems": {},  # a new agent: it says again what is wrong
            }
            if message.resources is not None:
                fields["resources"] = {"nano_cpus": message.resources.nano_cpus,
                                       "memory_bytes": message.resources.memory_bytes}
            if message.platform is not None:
                fields["platform"] = dict(message.platform)
            if message.engine_labels is not None:
                fields["engine_labels"] = dict(message.engine_labels)
            if message.engine_version:
                fields["engine_version"] = message.engine_version
            self._queue(ops.patch("node", node.id, **fields))
            if first:  # now it is known which messages it takes: its tasks and the mesh
                session.push()
        elif isinstance(message, protocol.Resync):
            session.resync(message)
        elif isinstance(message, protocol.Status):
            refused = self._refuse_report(node, message)
            if refused == _GONE:
                log.debug("%s: report for task %s, which is gone", node.hostname, message.task_id)
                return
            if refused:
                session.refused(f"refused a report for task {message.task_id} ({message.state.value}): {refused}")
                return
            fields = {"state_since": message.ts or time.time()}
            for key in ("container_id", "ip", "message", "error"):
                if getattr(message, key):
                    fields[key] = getattr(message, key)
            if message.exit_code is not None:
                fields["exit_code"] = message.exit_code
            self._queue(ops.advance(message.task_id, message.state, **fields))
        elif isinstance(message, protocol.AgentError):
            log.warning("%s agent: %s", node.hostname, message.message)
        elif isinstance(message, protocol.Condition):
            if message.problems:
                log.warning("%s cannot: %s", node.hostname, "; ".join(f"{k}: {v}" for k, v in message.problems.items()))
            else:
                log.info("%s: no problems any more", node.hostname)
            self._queue(ops.patch("node", node.id, problems=dict(message.problems)))
        elif isinstance(message, protocol.ImageWantedMessage):
            if self.images is not None:
                self.images.on_wanted(node, message.as_dict(), session.send)
        elif isinstance(message, protocol.StreamMessage):
            if self.streams is not None:
                self.streams.on_message(session, message.raw)
        elif isinstance(message, protocol.EngineState):
            snap = self.snapshot
            current = snap.node(node.id) if snap else None
            change = engine_change(current or node, message, hello_seen=session._ready,
                                   said_down=session.engine_down, now=time.time())
            session.engine_down = not message.reachable
            if change is not None:
                log.info("node %s: %s", node.hostname, message.reason if not message.reachable else "engine reachable again")
                self._queue(change)
        elif isinstance(message, protocol.Pong):
            if message.seq is not None:
                session._acked = message.seq
        # hearing anything is the heartbeat

    def lag_note(self) -> str:
        """The measured loop lag, for the record of a node's down/up decision."""
        if self.lag is None:
            return ""
        return f" (manager loop lag: max {self.lag.worst(10.0) * 1000:.0f} ms in 10s)"

    def _refuse_report(self, node: Node, report: protocol.Status) -> str:
        """Why ``node`` may not say ``report``, or "" when it may."""
        snap = self.snapshot
        task = snap.task(report.task_id) if snap is not None else None
        if task is None:
            return _GONE  # removed meanwhile (a late receipt), or made up
        if task.node_id != node.id:
            return f"cannot update a task not assigned to this node (it is assigned to {task.node_id or 'no node'})"
        if report.ip and node.subnet:
            try:
                inside = ipaddress.ip_address(report.ip) in ipaddress.ip_network(node.subnet, strict=False)
            except ValueError:
                inside = False
            if not inside:
                return f"address {report.ip} is outside the node's subnet {node.subnet}"
        return ""

    def restart_grace(self, node: Node, force: bool = False) -> None:
        """``node``'s host answered this leader while it has no session: its
        lingering agent may be keeping its containers (worker/fence.py), so
        the grace before its tasks are lost (``healing.lost_at``) starts
        again (at most every :data:`protocol.REACH_PROBE_EVERY` s a write).
        Not for a node down for its engine with a live session (it is not
        probed) nor one not down."""
        snap = self.snapshot
        current = snap.node(node.id) if snap else None
        if current is None or current.status != NodeStatus.DOWN or current.engine_unreachable:
            return
        now = time.time()
        if force or now - current.down_since >= protocol.REACH_PROBE_EVERY:
            self._queue(ops.patch("node", node.id, down_since=now))

    def mark_down(self, node: Node, reason: str, was_ready: bool = False, heard_at: float = 0.0) -> None:
        """``was_ready``: the session that ended had the agent's hello (the
        node was ready, whatever a snapshot that lags our own patches says).
        ``heard_at``: wall time of the session's last word from the agent
        (0: none).

        The grace before its tasks are lost (healing.lost_at) counts from
        ``down_since``: the last word heard from the agent, when it went down
        from ready (or now, if none came), and never earlier than it was.
        The agent's lease is anchored no later than that (``Ping.ack``), so
        it runs out LOST_GRACE - AGENT_LEASE seconds before the grace does;
        counting from the down mark instead would add ``dead_after`` for
        nothing. A down_since left from an earlier outage would end it at
        once (the soak saw a node's tasks orphaned 2 s after a link cut that
        followed an engine outage): it is replaced when the node was ready."""
        snap = self.snapshot
        current = snap.node(node.id) if snap else None
        already_down = current is not None and current.status == NodeStatus.DOWN and not was_ready
        if already_down and current is not None and current.status_message == reason \
                and heard_at <= current.down_since:
            return
        now = time.time()
        fields: dict[str, Any] = {"status": NodeStatus.DOWN.value, "status_message": reason, "updated_at": now}
        if not already_down:
            fields["down_since"] = heard_at or now
        elif current is not None and heard_at > current.down_since:
            fields["down_since"] = heard_at
        self._queue(ops.patch("node", node.id, **fields))

    def _queue(self, op: Op) -> None:
        self._pending.append(op)
        self._wake.set()

    async def _writer(self) -> None:
        """Commit what the agents reported, many reports per transaction."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                await self._store.commit(batch)
            except Exception as exc:
                log.warning("dispatcher: could not record %d reports: %s", len(batch), exc)
                self._pending = batch + self._pending
                await asyncio.sleep(0.2)
                self._wake.set()


def engine_change(node: Node, state: protocol.EngineState, *, hello_seen: bool, said_down: bool,
                  now: float) -> Op | None:
    """The store op for an agent's word on its engine, or None: an engine
    gone makes the node ``down`` with the reason (the scheduler skips it and
    the orchestrator replaces its tasks, as for a node down); an engine back
    makes it ``ready`` again only if it was down for its engine and the
    session's hello came (before the hello, the hello itself does it).
    ``said_down``: this session reported the engine gone (its patch may not
    be in the snapshot yet)."""
    if not state.reachable:
        reason = f"{ENGINE_UNREACHABLE}: {state.reason or 'no answer'}"
        if node.status is NodeStatus.DOWN and node.status_message == reason:
            return None
        if node.status is NodeStatus.DOWN and not (hello_seen and not said_down):
            # already down (and not ready since in this session): its grace started then
            return ops.patch("node", node.id, status=NodeStatus.DOWN.value, status_message=reason, updated_at=now)
        return ops.patch("node", node.id, status=NodeStatus.DOWN.value, status_message=reason, updated_at=now,
                         down_since=now)
    if not hello_seen or not (said_down or node.engine_unreachable):
        return None
    return ops.patch("node", node.id, status=NodeStatus.READY.value, status_message="", updated_at=now,
                     down_since=0.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "connection timed out"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "ssh permission denied (is the cluster key in root's authorized_keys?)"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "ssh host key does not match the one pinned at join"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
