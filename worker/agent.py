"""The node agent: ``pyswarm worker --stdio``.

sshd's forced command starts it for the leader's dispatcher; it speaks
:mod:`pyswarm.protocol` on stdin/stdout and converges the local engine on the
latest ``assign``. Design choices, and why:

- **Level-triggered, per task.** Every trigger (an ``assign``, an engine event,
  a reconnect) only *kicks* a task; the kicked task then reads the latest
  desired set and the engine's containers for it and does what
  :func:`pyswarm.worker.tasks.plan_reconcile` says. Engine operations of one
  task are serialised by its lock, different tasks run concurrently, and at
  most one converge per task waits in line, so a burst of assigns costs one
  pass per task, not one per message.
- **Events, not polling.** Container deaths come from the engine's event
  stream (``die``/``destroy`` of containers labelled with a task id), which
  is subscribed *before* the first reconcile so nothing falls between.
- **Never act on a guess.** Until the first ``assign`` has been applied the
  agent removes nothing; when stdin closes (the manager is gone) it exits at
  once and leaves every container as it is: the next leader's agent session
  adopts them by their labels.
- **stdout is the protocol.** Everything else goes to stderr; the real stdout
  is moved aside at start so a stray print or a child process cannot corrupt
  the stream.
- **Reports only move forward** (:meth:`TaskState.can_move_to`), one per change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pyswarm import config as cfg
from pyswarm import deltas, protocol, streamwire
from pyswarm.models import TaskState
from pyswarm.wire import BadRequest
from pyswarm.worker import (
    EngineAPIError,
    EngineConflictError,
    EngineNotFoundError,
    ImageNotFoundError,
    RuntimeError_,
)
from pyswarm.worker import fence, promotion
from pyswarm.worker.docker import DockerClient, EngineInfo
from pyswarm.worker.health import is_health_event
from pyswarm.worker.files import DEFAULT_ROOT, make_bind_sources, remove_task_files, write_task_files
from pyswarm.worker.images import ImageFetcher, collect_garbage
from pyswarm.worker.ingress import Mesh, MeshFirewall
from pyswarm.worker.network import HostNetwork, NetworkConfig
from pyswarm.worker.streams import StreamServer
from pyswarm.worker.tasks import (
    DONE_STATES,
    LIVE_STATES,
    Assignment,
    ExistingContainer,
    Observed,
    container_config,
    observe,
    observe_exit,
    plan_reconcile,
)

log = logging.getLogger("pyswarm.worker")

Send = Callable[[dict[str, Any]], None]

STOP_GRACE = 10  # seconds between SIGTERM and SIGKILL, Swarm's default
# seconds between a running task leaving the node's assignment and its stop.
# The managers' DNS drops a task in the same commit that takes it off the
# node, so a client that resolved it just before still reaches it and an
# in-flight request finishes: rolling updates lose no request. Swarm waits
# 2 s here for its gossip to converge (defaultGossipConvergeDelay).
DNS_DRAIN = 1.0
PONGS_KEPT = 64  # pongs whose sending time is kept for the manager's acknowledgement (Ping.ack)
MANAGER_TIMEOUT = 5.0  # seconds without a ping before a session counts as stale (or 2 ping periods)
RESYNC_AGAIN = 2.0  # seconds between two asks for a whole set (a resync)
# containers created and started at once. The engine is CPU-bound: 20
# parallel starts finish no sooner than 3 at a time, and all come up
# together at the end. On the bench (bench/RESULTS.md) 3 at a time brought
# the first of 100 replicas up at 2.5 s instead of 7.2 s, and all of them
# in 24.9 s instead of 27.6 s.
START_CONCURRENCY = 3
ENGINE_PROBE_EVERY = 0.5  # seconds between /info tries while the event stream fails
CONFIGURE_RETRY = 5.0  # seconds between network setups while the last one had problems
EVENT_FILTERS = {"type": ["container"], "label": [protocol.LABEL_TASK_ID]}


@dataclass
class _Tracked:
    """What the agent knows about one task between converges."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False
    reported: TaskState | None = None
    container_id: str = ""


class Agent:
    """One protocol session. ``send`` writes one message to the manager;
    :meth:`run` consumes the manager's lines until they end."""

    def __init__(
        self,
        docker: DockerClient,
        send: Send,
        *,
        hostname: str | None = None,
        network: HostNetwork | None = None,
        stop_grace: int = STOP_GRACE,
        dns_drain: float = DNS_DRAIN,
        files_root: str = DEFAULT_ROOT,
        lease: fence.Lease | None = None,
    ) -> None:
        self.docker = docker
        self._send = send
        self.hostname = hostname or socket.gethostname()
        self.network = network
        self.stop_grace = stop_grace
        self.dns_drain = dns_drain
        self.files_root = files_root  # secrets/configs of tasks (pyswarm.worker.files)
        self.info: EngineInfo | None = None
        self._dns: tuple[str, ...] = ()
        self._net_cfg: NetworkConfig | None = None
        self._mesh: Mesh | None = None  # latest `mesh` received (isolation, ingress)
        self._mesh_queued = False
        self.firewall = MeshFirewall(network.run) if network is not None else None
        self._configured = False
        self._fenced = False  # a deposed leader's session: ignore what it says
        self._accepted = False  # a configure of a current leader came: its pings renew the lease (fence.py)
        self._pongs_sent: dict[int, float] = {}  # pong seq -> wall time we sent it (the lease's anchor)
        self._started_at = time.time()  # a fresh agent gets AGENT_LEASE for its first acknowledged pong
        self.lease = lease  # the host's fencing lease (worker/fence.py); None: no fencing (unit tests)
        self.manager_addrs: tuple[str, ...] = ()
        self._sole_manager = False  # this host runs the cluster's only manager
        self._peer_addrs: tuple[str, ...] = ()  # the other nodes' hosts, on a manager's host only
        self._ended = False  # the session is over (the process may linger: worker/fence.py)
        self._config_lock = asyncio.Lock()
        self._pending: dict[str, Assignment] | None = None  # latest assign received
        self._pending_version: int | None = None  # its version (what an assign_delta builds on)
        self._mesh_raw: dict[str, Any] | None = None  # latest mesh as a message (what a mesh_delta builds on)
        self._resync_asked: dict[str, float] = {}  # what -> when this agent last asked for a whole set
        self._desired: dict[str, Assignment] | None = None  # latest assign applied
        self._tracked: dict[str, _Tracked] = {}
        self._reconcile_wanted = asyncio.Event()
        self._events_ready = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._hello_sent = False
        self._engine_said_down = False  # the manager was told the engine is unreachable
        self._engine_probe: asyncio.Task[Any] | None = None
        self._oom: set[str] = set()  # tasks whose container had an oom event
        self.last_die: dict[str, float] = {}  # task id → monotonic time of its die event
        # once the manager pings, this much silence means our session is a
        # stale one (its link was cut and a new session may run beside us)
        self.manager_timeout = MANAGER_TIMEOUT
        self._heard = time.monotonic()
        self._watchdog: asyncio.Task[Any] | None = None
        self._start_slots = asyncio.Semaphore(START_CONCURRENCY)
        self.images = ImageFetcher(docker, self.send, self.hostname)  # shipped images (worker/images.py)
        # logs, exec and stats the manager opens (worker/streams.py)
        engine = getattr(docker, "socket", None)
        self.streams = StreamServer(self.send, f"unix://{engine}" if engine else None)
        # what this host cannot do right now, by kind (see :meth:`_problem`)
        self._problems: dict[str, str] = {}
        self._failing: dict[str, str] = {}  # task id -> why its last converge failed

    # -- session -----------------------------------------------------------

    async def run(self, lines: AsyncIterator[bytes]) -> int:
        """Serve until ``lines`` ends. Returns the exit status (0: the
        manager hung up, which is the normal way for a session to end)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        eof = asyncio.Event()
        self._spawn(self._pump(lines, queue, eof))
        try:
            info = await self._wait_for_engine(eof)
            if info is None:
                return 0
            self.info = info
            self.send({
                "op": "hello",
                "hostname": self.hostname,
                "resources": {"nano_cpus": info.ncpu * 1_000_000_000, "memory_bytes": info.mem_total},
                "platform": {"os": info.os_type, "arch": info.architecture},
                "engine_version": info.server_version,
                "engine_labels": dict(info.labels),
                "protocol": protocol.PROTOCOL,
            })
            self._hello_sent = True
            if self._problems:
                self.send({"op": "condition", "problems": dict(self._problems)})
            self._spawn(self._supervised("events", self._watch_events))
            if not await _first(self._events_ready.wait(), eof.wait()):
                return 0
            self._spawn(self._supervised("reconcile", self._reconcile_loop))
            while (line := await queue.get()) is not None:
                self._dispatch(line)
            return 0
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Cancel everything in flight; containers are left exactly as they
        are (an interrupted create is adopted or removed by the next session)."""
        self._ended = True
        tasks = list(self._background)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.streams.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("internal error: %r", exc, exc_info=exc)
            self.send({"op": "error", "message": f"agent internal error: {exc!r}"})

    async def _supervised(self, name: str, loop: Callable[[], Any]) -> None:
        """Run one of the agent's endless loops, restarting it when it fails
        (with a growing pause); while it fails, the node says so
        (problem ``name``, shown by ``node ls``)."""
        pause = 0.5
        while True:
            started = time.monotonic()
            try:
                await loop()
                why = "ended"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                log.error("agent loop %s failed: %s", name, why, exc_info=exc)
            self._problem(name, f"agent loop {name} failed ({why}); restarting it")
            if time.monotonic() - started > 60:
                pause = 0.5
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)

    def _problem(self, kind: str, why: str) -> None:
        """Record (``why``) or clear ("") something this host cannot do, and
        tell the manager the whole set when it changes: the node shows it
        (``node ls``) and the scheduler keeps tasks that need it away
        (manager/filters.py HostProblemFilter). Kinds: firewall (the mesh:
        isolation, ingress), network (the node's bridge and routes), mounts,
        converge, and the names of the agent's loops (events, reconcile)."""
        if self._problems.get(kind, "") == why:
            return
        if why:
            self._problems[kind] = why[:1000]
        else:
            self._problems.pop(kind, None)
        if self._hello_sent:
            self.send({"op": "condition", "problems": dict(self._problems)})

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._send(message)
        except Exception as exc:  # the manager is gone; stdin's EOF ends us
            log.warning("cannot send %s: %s", message.get("op"), exc)

    async def _pump(self, lines: AsyncIterator[bytes], queue: asyncio.Queue[bytes | None],
                    eof: asyncio.Event) -> None:
        try:
            async for line in lines:
                self._heard = time.monotonic()
                if not line.strip():
                    continue
                if (self._hello_sent or self._engine_said_down) and b'"ping"' in line:
                    # answered here, ahead of anything queued: the dispatcher
                    # drops a session that is silent for a couple of seconds
                    try:
                        msg = protocol.parse_manager(line)
                    except BadRequest:
                        msg = None
                    if isinstance(msg, protocol.Ping):
                        self._on_ping(msg)
                        if self._watchdog is None:
                            self._watchdog = self._spawn(self._watch_manager(queue))
                        continue
                queue.put_nowait(line)
        finally:
            eof.set()
            queue.put_nowait(None)

    async def reaches_a_manager(self) -> bool:
        """Whether this host is not cut off from the managers (fencing's
        second condition, worker/fence.py). The host of the only manager
        is never cut off from the only leader there can be. A manager's
        host that reaches no other manager but still reaches other nodes
        is a survivor of a lost quorum (as in ``init --force-new-cluster``'s
        case), not a host cut off: it keeps its containers too."""
        sole, managers, peers = self._sole_manager, self.manager_addrs, self._peer_addrs
        if not self._net_cfg and self.lease is not None:  # no configure in this session yet: the host's last
            sole, managers, peers = self.lease.remembered_peers()
        if sole:
            return True
        if await fence.reaches_a_manager(managers):
            return True
        return bool(peers) and await fence.reaches_a_manager(peers)

    def _on_ping(self, msg: protocol.Ping) -> None:
        """Answer, and renew the host's lease to when we sent the pong the
        manager acknowledges (``msg.ack``): that is before the manager heard
        it, and the leader's grace counts from what it last heard from us
        (manager/dispatcher.py), so the lease ends first whatever the delays
        on the link (a ping delivered late renews nothing newer than the
        pong it acknowledges). Only a session whose ``configure`` we accepted
        renews it (a deposed leader's pings do not)."""
        if msg.seq is not None:
            self._pongs_sent[msg.seq] = time.time()  # before the pong leaves: never later than its sending
            while len(self._pongs_sent) > PONGS_KEPT:
                del self._pongs_sent[next(iter(self._pongs_sent))]
        self.send({"op": "pong", "seq": msg.seq})
        if msg.every is not None:
            # a big cluster's leader pings less often (manager/dispatcher.py
            # heartbeat): two of its periods of silence, not one, end us
            self.manager_timeout = max(MANAGER_TIMEOUT, 2 * msg.every)
        sent = self._pongs_sent.get(msg.ack) if msg.ack is not None else None
        if sent is not None and self.lease is not None and self._accepted and not self._fenced:
            self.lease.renew(sent)

    async def _watch_manager(self, queue: asyncio.Queue[bytes | None]) -> None:
        """End the session when the manager has gone silent, or when no
        current leader has renewed the host's lease for
        :data:`protocol.AGENT_LEASE` (only a deposed one pings us). The
        dispatcher pings every 0.5 s and gives up on us after 2 s; an agent
        whose link was cut would otherwise live on beside the next session's
        agent and could act on its old assignment (say, when the engine's
        event stream reconnects). The process then lingers and fences
        (worker/fence.py): unless a newer session renews the lease in time,
        it stops the task containers before the leader replaces them."""
        while True:
            await asyncio.sleep(self.manager_timeout / 5)
            silent = time.monotonic() - self._heard
            if silent > self.manager_timeout:
                log.warning("no word from the manager for %.1fs: ending this session", silent)
                queue.put_nowait(None)
                return
            # a fresh agent counts from its start: its first acknowledged pong renews the lease
            since = max(self.lease.renewed_at(), self._started_at) if self.lease is not None else time.time()
            if time.time() - since >= protocol.AGENT_LEASE:
                log.warning("no current leader has reached this host for %.0fs: ending this session",
                            protocol.AGENT_LEASE)
                queue.put_nowait(None)
                return

    async def _wait_for_engine(self, eof: asyncio.Event) -> EngineInfo | None:
        """Engine info for ``hello``; while the engine is unreachable, tell
        the manager once (the node shows it) and keep trying; the pings are
        answered meanwhile, so the session lives on and the node says why
        it is down instead of "no heartbeat"."""
        delay, told = 0.5, False
        while not eof.is_set():
            try:
                return await self.docker.info()
            except RuntimeError_ as exc:
                if not told:
                    self._say_engine(False, str(exc))
                    told = True
                log.warning("engine unavailable: %s", exc)
            try:
                await asyncio.wait_for(eof.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 5.0)
        return None

    # -- messages ----------------------------------------------------------

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = protocol.parse_manager(line)
        except BadRequest as exc:  # names the op and the field
            self.send({"op": "error", "message": f"bad message: {exc}"})
            return
        if isinstance(msg, protocol.Ping):
            self._on_ping(msg)
        elif isinstance(msg, protocol.Configure):
            self._on_configure(msg)
        elif isinstance(msg, protocol.Assign):
            self._on_assign(msg)
        elif isinstance(msg, protocol.AssignDelta):
            self._on_assign_delta(msg)
        elif isinstance(msg, protocol.MeshMessage):
            self._on_mesh(msg)
        elif isinstance(msg, protocol.MeshDelta):
            self._on_mesh_delta(msg)
        elif isinstance(msg, (protocol.ImagePlanMessage, protocol.ImageDoneMessage)):
            problem = self.images.on_message(msg.as_dict())
            if problem:
                self.send({"op": "error", "message": problem})
        elif isinstance(msg, protocol.StreamMessage):
            if not self._fenced:  # a deposed leader gets no logs, exec or stats either
                self.streams.handle(msg.raw)

    def _resync(self, what: str, have: int | None) -> None:
        """A delta's base is not what this agent holds: ask for the whole
        set, at most once per :data:`RESYNC_AGAIN` (the deltas that follow
        it while the whole set is on its way have the same gap)."""
        now = time.monotonic()
        if now - self._resync_asked.get(what, -RESYNC_AGAIN) < RESYNC_AGAIN:
            return
        self._resync_asked[what] = now
        log.info("%s delta does not follow version %s: asking for the whole set", what, have)
        self.send({"op": "resync", "what": what, "have": have})

    def _on_configure(self, msg: protocol.Configure) -> None:
        if self._fenced or not promotion.accept_term(msg.term):
            self._fenced = True
            self.send({"op": "error", "message": f"{self.hostname}: ignoring a deposed leader (term {msg.term})"})
            return
        self._accepted = True
        raw = msg.as_dict()
        if msg.manager is not None:
            self._spawn(self._become_manager(raw))
        else:
            self._spawn(self._retire_stray_manager())
        if msg.authorized_key:
            try:
                if promotion.ensure_cluster_key(msg.authorized_key, msg.cluster_id):
                    log.info("installed the cluster's new SSH key")
            except OSError as exc:
                self.send({"op": "error", "message": f"{self.hostname}: could not update authorized_keys: {exc}"})
        try:
            cfg = NetworkConfig.from_message(raw)
        except ValueError as exc:
            self.send({"op": "error", "message": str(exc)})
            return
        self._spawn(self._configure(cfg))

    async def _configure(self, cfg: NetworkConfig) -> None:
        async with self._config_lock:
            if self.network is not None:
                try:
                    problems = await self.network.configure(cfg)
                except RuntimeError_ as exc:
                    # the engine went away meanwhile (EngineUnavailableError is
                    # no NetworkSetupError): this used to end the configure
                    # as an internal error with the session never configured,
                    # so the node stayed ready and started no task again
                    problems = [f"network setup on {self.hostname}: {exc}"]
                for problem in problems:
                    log.warning("configure: %s", problem)
                    self.send({"op": "error", "message": f"configure on {self.hostname}: {problem}"})
                self._problem("network", "; ".join(problems))
                if problems:  # the node takes no task while it has them: try again
                    asyncio.get_running_loop().call_later(CONFIGURE_RETRY, self._configure_again, cfg)
            self._dns = cfg.dns
            # the other managers' hosts (their DNS): whom fencing probes; this
            # host's own address answers even when its link is down
            self.manager_addrs = tuple(a for a in cfg.dns if a != cfg.addr)
            self._sole_manager = bool(cfg.addr) and cfg.dns == (cfg.addr,)
            # a manager's host also asks the other nodes (reaches_a_manager)
            self._peer_addrs = tuple(r.via for r in cfg.routes if r.via not in cfg.dns) \
                if cfg.addr and cfg.addr in cfg.dns else ()
            if self.lease is not None:
                self.lease.remember_peers(self._sole_manager, self.manager_addrs, self._peer_addrs)
            self._net_cfg = cfg
            await self._apply_mesh_locked()  # our chains' contents, for this pool
            # configured even after a problem: tasks then fail with their own
            # clear reason instead of waiting silently for a configure that
            # will not come again
            self._configured = True
            self._reconcile_wanted.set()

    def _configure_again(self, cfg: NetworkConfig) -> None:
        if not self._ended and self._net_cfg is cfg and self._problems.get("network"):  # no newer one, not fixed
            self._spawn(self._configure(cfg))

    async def _retire_stray_manager(self) -> None:
        try:
            if await asyncio.to_thread(promotion.retire_stray_manager):
                log.info("stopped a manager that this cluster does not count as one")
        except Exception as exc:
            self.send({"op": "error", "message": f"{self.hostname}: could not stop a stray manager: {exc}"})

    async def _become_manager(self, msg: dict[str, Any]) -> None:
        try:
            done = await asyncio.to_thread(promotion.become_manager, msg)
        except Exception as exc:  # report it; the leader shows it in the log
            self.send({"op": "error", "message": f"{self.hostname}: could not start a manager: {exc}"})
            return
        log.info("promotion: %s", done)

    def _on_mesh(self, msg: protocol.MeshMessage) -> None:
        """Isolation sets and ingress rules (worker/ingress.py); a burst of
        meshes costs one apply of the latest."""
        self._resync_asked.pop("mesh", None)
        self._take_mesh(msg.as_dict())

    def _on_mesh_delta(self, msg: protocol.MeshDelta) -> None:
        """The mesh's changes since the version this agent holds (pyswarm/deltas.py)."""
        held = self._mesh_raw
        have = held.get("version") if held is not None else None
        if held is None or have != msg.base:
            self._resync("mesh", have)
            return
        self._take_mesh(deltas.apply_mesh(held, msg))

    def _take_mesh(self, raw: dict[str, Any]) -> None:
        self._mesh_raw = raw
        try:
            self._mesh = Mesh.from_message(raw)
        except ValueError as exc:
            self.send({"op": "error", "message": str(exc)})
            return
        if not self._mesh_queued:
            self._mesh_queued = True
            self._spawn(self._apply_mesh())

    async def _apply_mesh(self) -> None:
        async with self._config_lock:
            await self._apply_mesh_locked()

    async def _apply_mesh_locked(self) -> None:
        self._mesh_queued = False
        cfg = self._net_cfg
        if self.firewall is None or cfg is None:
            return  # applied by the configure that comes first
        try:
            await self.firewall.apply(self._mesh, cfg.pool, cfg.dns)
        except RuntimeError_ as exc:
            log.warning("mesh: %s", exc)
            self.send({"op": "error", "message": f"mesh on {self.hostname}: {exc}"})
            self._problem("firewall", f"cannot apply the network firewall: {exc}")
        else:
            self._problem("firewall", "")

    def _on_assign(self, msg: protocol.Assign) -> None:
        if self._fenced:
            return
        self._resync_asked.pop("assign", None)
        self._take_assign({}, msg.tasks, msg.version)

    def _on_assign_delta(self, msg: protocol.AssignDelta) -> None:
        """What changed in this node's set since the version it holds; a
        new dict, since the reconcile may be reading the one it replaces."""
        if self._fenced:
            return
        if self._pending is None or self._pending_version != msg.base:
            self._resync("assign", self._pending_version if self._pending is not None else None)
            return
        desired = dict(self._pending)
        for task_id in msg.remove:
            desired.pop(task_id, None)
        for raw in msg.put:  # one that fails its check leaves the set, as in a whole one
            if isinstance(raw, dict):
                desired.pop(str(raw.get("task_id")), None)
        self._take_assign(desired, msg.put, msg.version)

    def _take_assign(self, desired: dict[str, Assignment], raws: list[Any], version: int | None) -> None:
        for raw in raws:
            try:
                a = Assignment.parse(raw)
            except (ValueError, TypeError) as exc:
                self.send({"op": "error", "message": str(exc)})
                continue
            desired[a.task_id] = a
        self._pending = desired
        self._pending_version = version
        self._reconcile_wanted.set()

    # -- reconciliation ----------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            if not self._configured or self._pending is None:
                continue  # an assign before configure waits for it
            self._desired = self._pending
            try:
                await self._reconcile_once(self._desired)
            except RuntimeError_ as exc:
                log.warning("reconcile: %s", exc)
                self.send({"op": "error", "message": f"reconcile on {self.hostname}: {exc}"})
                self._problem("reconcile", f"cannot list this host's containers: {exc}")
                await asyncio.sleep(2.0)
                self._reconcile_wanted.set()
            else:
                self._problem("reconcile", "")

    async def _reconcile_once(self, desired: dict[str, Assignment]) -> None:
        raw = await self.docker.list_containers({protocol.LABEL_TASK_ID: None})
        existing = [ExistingContainer.from_api(c) for c in raw]
        plan = plan_reconcile(desired.values(), existing)
        touched = {a.task_id for a in plan.create}
        touched |= {a.task_id for a, _ in plan.adopt}
        touched |= {c.task_id for c in plan.remove}
        touched |= {tid for tid in self._tracked if tid not in desired}
        log.info("reconcile: %d desired, %d create, %d adopt, %d remove",
                 len(desired), len(plan.create), len(plan.adopt), len(plan.remove))
        for task_id in sorted(touched):
            self.kick(task_id)

    def kick(self, task_id: str) -> None:
        """Make sure one converge of ``task_id`` is queued."""
        t = self._tracked.get(task_id)
        if t is None:
            t = self._tracked[task_id] = _Tracked()
        if t.queued:
            return
        t.queued = True
        self._spawn(self._converge(task_id, t))

    async def _converge(self, task_id: str, t: _Tracked) -> None:
        async with t.lock:
            t.queued = False
            desired = self._desired
            if desired is None:
                return  # before the first assign nothing is ours to judge
            a = desired.get(task_id)
            try:
                raw = await self.docker.list_containers({protocol.LABEL_TASK_ID: task_id})
                containers = [ExistingContainer.from_api(c) for c in raw]
                plan = plan_reconcile([a] if a else [], containers)
                if a is None and t.reported == TaskState.RUNNING and self.dns_drain > 0 \
                        and any(c.state in LIVE_STATES for c in plan.remove):
                    await asyncio.sleep(self.dns_drain)  # DNS has dropped it: let clients move on
                for c in plan.remove:
                    await self._remove(c)
                if a is None:
                    if plan.remove:
                        # sent even after complete/failed: it is the manager's
                        # receipt that the container is gone
                        self._report(t, task_id, Observed(
                            TaskState.SHUTDOWN, plan.remove[0].id, message="removed"), force=True)
                elif plan.create:
                    await self._create(t, a)
                else:
                    for assignment, c in plan.adopt:
                        await self._adopt(t, assignment, c)
                self._converged(task_id, "")
            except RuntimeError_ as exc:
                log.warning("task %s: %s", task_id, exc)
                self.send({"op": "error", "message": f"task {task_id} on {self.hostname}: {exc}"})
            except Exception as exc:  # a bug: say so, and look again later rather than never
                log.error("task %s: converge failed", task_id, exc_info=exc)
                self._converged(task_id, f"{type(exc).__name__}: {exc}")
                asyncio.get_running_loop().call_later(5.0, self.kick, task_id)
            finally:
                if a is None and not t.queued and self._tracked.get(task_id) is t:
                    del self._tracked[task_id]

    def _converged(self, task_id: str, error: str) -> None:
        """Track tasks whose converge failed; the node shows it while any does."""
        if error:
            self._failing[task_id] = error
        elif self._failing.pop(task_id, None) is None:
            return
        first = next(iter(self._failing.items()), None)
        self._problem("converge", "" if first is None else
                      f"{len(self._failing)} task(s) cannot converge; task {first[0]}: {first[1]}")

    async def _remove(self, c: ExistingContainer) -> None:
        if c.state in LIVE_STATES:
            try:
                # the service's stop_grace_period, else Swarm's default
                await self.docker.stop_container(c.id, self.stop_grace if c.stop_grace is None else c.stop_grace)
            except EngineNotFoundError:
                remove_task_files(self.files_root, c.task_id)
                return
            except RuntimeError_ as exc:
                log.info("stop %s: %s; removing by force", c.id[:12], exc)
        await self.docker.remove_container(c.id, force=True)
        remove_task_files(self.files_root, c.task_id)

    async def _create(self, t: _Tracked, a: Assignment) -> None:
        if t.reported is not None and t.reported.rank >= TaskState.STARTING.rank:
            # we made its container before and it is gone: someone removed
            # it; the task is over, the orchestrator makes a new one
            self._report(t, a.task_id, Observed(
                TaskState.FAILED, t.container_id, message="removed",
                error="container removed outside pyswarm"))
            return
        if t.reported is not None and t.reported.terminal:
            return  # rejected before: do not retry under the same task id
        firewall = self._problems.get("firewall")
        if firewall and self._mesh is not None and self._mesh.networks is not None:
            # fail closed: the cluster isolates networks and this host cannot
            self._report(t, a.task_id, Observed(TaskState.REJECTED, "", message="rejected",
                                                error=f"node {self.hostname} cannot isolate networks: {firewall}"))
            return
        def preparing(message: str) -> None:
            self._report(t, a.task_id, Observed(TaskState.PREPARING, "", message=message))

        try:
            await self.images.ensure(a.spec.image, a.task_id, preparing, a.registry_auth)
        except (ImageNotFoundError, RuntimeError_) as exc:
            self._report(t, a.task_id, Observed(TaskState.REJECTED, "", message="preparing failed",
                                                error=str(exc)))
            return
        try:
            make_bind_sources(a.spec)
            files = write_task_files(self.files_root, a.task_id, {"secrets": a.secrets, "configs": a.configs})
        except RuntimeError_ as exc:
            self._report(t, a.task_id, Observed(TaskState.REJECTED, "", message="preparing failed",
                                                error=f"{exc} (on node {self.hostname})"))
            self._problem("mounts", f"task {a.task_id}: {exc}")
            return
        self._problem("mounts", "")
        async with self._start_slots:
            await self._create_and_start(t, a, files)
        if t.reported == TaskState.RUNNING:  # older builds of the service past the kept ones go
            keep = {d.spec.image for d in (self._desired or {}).values()}
            self._spawn(collect_garbage(self.docker, a.service_name, keep))

    async def _create_and_start(self, t: _Tracked, a: Assignment, files: Any) -> None:
        try:
            cid = await self.docker.create_container(a.container_name, container_config(a, self._dns, files))
        except EngineConflictError as exc:
            if await self._adopt_by_name(t, a):
                return
            self._report(t, a.task_id, Observed(TaskState.REJECTED, "", message="create failed",
                                                error=exc.message))
            return
        except EngineAPIError as exc:
            self._report(t, a.task_id, Observed(TaskState.REJECTED, "", message="create failed",
                                                error=f"{exc.message} (on node {self.hostname})"))
            return
        await self._start(t, a, cid)

    async def _start(self, t: _Tracked, a: Assignment, cid: str) -> None:
        self._report(t, a.task_id, Observed(TaskState.STARTING, cid, message="starting"))
        try:
            await self.docker.start_container(cid)
        except EngineAPIError as exc:
            self._report(t, a.task_id, Observed(TaskState.FAILED, cid, message="start failed",
                                                error=exc.message))
            return
        self._report_inspect(t, a, await self.docker.inspect_container(cid))

    async def _adopt_by_name(self, t: _Tracked, a: Assignment) -> bool:
        """A container already has this task's name (a create raced us, or
        its labels were lost): adopt it only if it really is this task's."""
        try:
            data = await self.docker.inspect_container(a.container_name)
        except EngineNotFoundError:
            return False
        labels = (data.get("Config") or {}).get("Labels") or {}
        if labels.get(protocol.LABEL_TASK_ID) != a.task_id:
            return False
        state = str((data.get("State") or {}).get("Status", ""))
        await self._adopt(t, a, ExistingContainer(str(data.get("Id")), a.task_id, a.container_name, state))
        return True

    async def _adopt(self, t: _Tracked, a: Assignment, c: ExistingContainer) -> None:
        try:
            data = await self.docker.inspect_container(c.id)
        except EngineNotFoundError:
            self.kick(a.task_id)  # gone meanwhile: look again
            return
        status = str((data.get("State") or {}).get("Status", ""))
        if status == "created" and not (t.reported and t.reported.terminal):
            await self._start(t, a, c.id)  # interrupted between create and start
            return
        seen = observe(data)
        if seen is not None and seen.state in (TaskState.COMPLETE, TaskState.FAILED) \
                and await self._engine_going(a.task_id):
            return
        self._report_inspect(t, a, data)

    def _report_inspect(self, t: _Tracked, a: Assignment, data: dict[str, Any]) -> None:
        seen = observe(data)
        if seen is not None:
            self._report(t, a.task_id, self._unless_fenced(seen))

    def _unless_fenced(self, seen: Observed) -> Observed:
        """A container this host's fence stopped did not end by itself: its
        task was stopped by the cluster (``shutdown``), so the orchestrator
        refills the slot whatever the restart policy (worker/fence.py)."""
        if self.lease is None or seen.state not in (TaskState.COMPLETE, TaskState.FAILED):
            return seen
        why = self.lease.fenced().get(seen.container_id)
        if why is None:
            return seen
        return Observed(TaskState.SHUTDOWN, seen.container_id, message="stopped by its node", error=why)

    def _report(self, t: _Tracked, task_id: str, seen: Observed, *, force: bool = False) -> None:
        if t.reported is not None and not t.reported.can_move_to(seen.state) and not force:
            return
        if t.reported is None or not t.reported.terminal:
            t.reported = seen.state
        if seen.container_id:
            t.container_id = seen.container_id
        died = self.last_die.pop(task_id, None) if seen.state.terminal else None
        if died is not None:
            log.debug("task %s: %s reported %.1f ms after its die event",
                      task_id, seen.state.value, (time.monotonic() - died) * 1000)
        self.send({
            "op": "status",
            "task_id": task_id,
            "state": seen.state.value,
            "container_id": seen.container_id or t.container_id,
            "ip": seen.ip,
            "exit_code": seen.exit_code,
            "message": seen.message,
            "error": seen.error,
            "ts": time.time(),
        })

    # -- engine events -----------------------------------------------------

    async def _engine_going(self, task_id: str) -> bool:
        """A stopping dockerd stops its containers (they exit 0 on SIGTERM)
        and still serves its open connections (the event stream, our pooled
        ones) after it has closed its listener: their deaths, reported,
        would read as tasks that completed by themselves, and a service with
        ``condition: on-failure`` would lose them. So a death is reported
        only while the engine takes a new connection; otherwise it is going
        away, :meth:`_probe_engine` says so, and the tasks are replaced as
        the node's, whatever the policy."""
        if await self.docker.accepts_connections():
            return False
        log.warning("task %s: its container died as the engine went away; not reported as its own exit", task_id)
        self._on_events_error("the engine refuses new connections")
        self._record_engine_stopped()
        return True

    def _record_engine_stopped(self) -> None:
        """The engine is going away and stops every container as it goes:
        record the ones we ran, so their exits read as the node's doing
        (``shutdown``) when the engine is back, and their slots are refilled
        whatever the restart policy (worker/fence.py)."""
        if self.lease is None:
            return
        ids = [t.container_id for t in self._tracked.values()
               if t.container_id and t.reported == TaskState.RUNNING]
        if ids:
            try:
                self.lease.record(ids, fence.ENGINE_STOPPED)
            except OSError as exc:
                log.warning("cannot record the containers the engine stopped: %s", exc)

    def _say_engine(self, reachable: bool, reason: str = "") -> None:
        self._engine_said_down = not reachable
        self.send(protocol.EngineState(reachable, reason[:1024]).message())

    def _on_events_error(self, reason: str) -> None:
        """The event stream failed: find out whether the engine is gone."""
        if self._engine_probe is None or self._engine_probe.done():
            self._engine_probe = self._spawn(self._probe_engine(reason))

    async def _probe_engine(self, reason: str) -> None:
        """Ask the engine for ``/info`` until it answers. Unreachable for
        :data:`protocol.ENGINE_GRACE` seconds: tell the manager (the node
        goes down with the reason); answering again after that: tell it too
        (the node is ready again; the event stream's reconnect makes the
        agent look at every container and remove or adopt it)."""
        since = time.monotonic()
        while True:
            try:
                await self.docker.info()
            except RuntimeError_ as exc:
                reason = str(exc) or reason
                if not self._engine_said_down and time.monotonic() - since >= protocol.ENGINE_GRACE:
                    log.warning("engine unreachable for %.0fs: %s", time.monotonic() - since, reason)
                    self._record_engine_stopped()
                    self._say_engine(False, reason)
                await asyncio.sleep(ENGINE_PROBE_EVERY)
                continue
            if self._engine_said_down:
                log.info("engine reachable again")
                self._say_engine(True)
            return

    async def _watch_events(self) -> None:
        async for event in self.docker.events(EVENT_FILTERS, on_connect=self._on_events_connect,
                                              on_error=self._on_events_error):
            action = str(event.get("Action") or event.get("status") or "")
            if action not in ("die", "destroy", "oom") and not is_health_event(action):
                continue
            attrs = (event.get("Actor") or {}).get("Attributes") or {}
            task_id = attrs.get(protocol.LABEL_TASK_ID)
            if not task_id:
                continue
            task_id = str(task_id)
            if action == "oom":
                self._oom.add(task_id)
            elif action == "die":
                self.last_die[task_id] = time.monotonic()
                if len(self.last_die) > 10_000:
                    self.last_die.pop(next(iter(self.last_die)))
                self._report_die(task_id, event, attrs)
            self.kick(task_id)

    def _report_die(self, task_id: str, event: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Report a death straight from the event (it carries the exit code):
        an inspect right after ``die`` waits for the engine to finish tearing
        the container down, tens of milliseconds. Only for the container we
        run for a desired task; the converge that follows confirms it from
        inspect, and anything unusual is left to that converge."""
        t = self._tracked.get(task_id)
        desired = self._desired
        if t is None or desired is None or task_id not in desired:
            return
        if t.reported is None or t.reported.terminal:
            return
        cid = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
        if not cid or cid != t.container_id:
            return
        try:
            code = int(attrs.get("exitCode", ""))
        except (TypeError, ValueError):
            return
        self._spawn(self._report_die_if_engine_lives(t, task_id, cid, code))

    async def _report_die_if_engine_lives(self, t: _Tracked, task_id: str, cid: str, code: int) -> None:
        """Report a death from its event unless the engine is going away
        (:meth:`_engine_going`)."""
        if await self._engine_going(task_id):
            return
        if t.reported is None or t.reported.terminal or t.container_id != cid:
            return  # a converge reported it meanwhile
        self._report(t, task_id, self._unless_fenced(observe_exit(cid, code, oom=task_id in self._oom)))
        self._oom.discard(task_id)

    async def _on_events_connect(self, reconnected: bool) -> None:
        self._problem("events", "")
        if not reconnected:
            self._events_ready.set()
            return
        # the engine replays from `since`, but its buffer is finite: recheck all
        for task_id in list(self._tracked):
            self.kick(task_id)
        self._reconcile_wanted.set()


async def _first(*aws: Any) -> bool:
    """Await the first of ``aws`` to finish; True if it was the first one."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for p in pending:
        p.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return tasks[0] in done


# -- stdio -------------------------------------------------------------------


class _StdioWriter:
    """Writes protocol lines to the real stdout from a thread, so a slow
    reader on the manager's side never blocks the event loop."""

    def __init__(self, fd: int, on_broken: Callable[[], None]) -> None:
        self.fd = fd
        self.on_broken = on_broken
        self._lock = threading.Condition()
        self._buf: list[bytes] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stdout", daemon=True)
        self._thread.start()

    def __call__(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        with self._lock:
            self._buf.append(data)
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._buf and not self._closed:
                    self._lock.wait()
                if not self._buf and self._closed:
                    return
                data, self._buf = b"".join(self._buf), []
            try:
                while data:
                    data = data[os.write(self.fd, data):]
            except OSError:
                self.on_broken()
                return

    def close(self, timeout: float = 2.0) -> None:
        """Flush what is queued, then close the protocol stream: the session
        is over for the other side (the manager, sshd) even while this
        process lingers to fence (worker/fence.py)."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout)
        if self.fd >= 0 and not self._thread.is_alive():
            fd, self.fd = self.fd, -1
            try:
                os.close(fd)
            except OSError:
                pass


async def _stdin_lines(fd: int, stop: asyncio.Event) -> AsyncIterator[bytes]:
    """Lines from ``fd``, read by a daemon thread (works for pipes, sockets,
    files and ttys alike, and never keeps the process alive at exit)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def reader() -> None:
        with os.fdopen(fd, "rb", buffering=1 << 16, closefd=False) as f:
            try:
                for line in f:
                    loop.call_soon_threadsafe(queue.put_nowait, line)
            except (OSError, ValueError):
                pass
            finally:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, None)
                except RuntimeError:  # loop already closed
                    pass

    threading.Thread(target=reader, name="stdin", daemon=True).start()
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                return
            line = get.result()
            if line is None:
                return
            yield line
    finally:
        stop_wait.cancel()


async def serve_stdio(proto_fd: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signalled = asyncio.Event()  # told to stop: no lingering either (a unit stop, machine rm)

    def on_signal() -> None:
        signalled.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):
            pass

    def broken() -> None:
        loop.call_soon_threadsafe(stop.set)

    writer = _StdioWriter(proto_fd, broken)
    docker = DockerClient()
    hostname = socket.gethostname()
    lease = fence.Lease(cfg.run_dir())
    agent = Agent(docker, writer, hostname=hostname, network=HostNetwork(docker, hostname), lease=lease)
    try:
        code = await agent.run(_stdin_lines(0, stop))
        writer.close()
        # the session is over; unless a newer one renews the lease in time,
        # stop the task containers before the leader replaces them
        if not signalled.is_set():
            lingering = asyncio.ensure_future(fence.linger(docker, lease, time.time(), agent.reaches_a_manager))
            told = asyncio.ensure_future(signalled.wait())
            await asyncio.wait({lingering, told}, return_when=asyncio.FIRST_COMPLETED)
            told.cancel()
            if lingering.done():
                log.info("session ended; %s", lingering.result())
            else:
                lingering.cancel()
                log.info("session ended; told to stop while lingering: containers left as they are")
        return code
    finally:
        await docker.close()
        writer.close()


def main_stdio() -> int:
    """Entry point of ``pyswarm worker --stdio``."""
    level = os.environ.get("PYSWARM_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level, logging.WARNING),
                        format="pyswarm-agent %(levelname)s %(name)s: %(message)s")
    # keep the protocol stream to ourselves: fd 1 becomes stderr for
    # everything else (prints, libraries, child processes)
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return asyncio.run(serve_stdio(proto_fd))  # its writer closes proto_fd as the session ends
    except KeyboardInterrupt:
        return 130
