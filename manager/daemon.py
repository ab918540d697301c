"""The manager process: the store, the API doors, DNS, and the leader loops.

Every manager runs the store replica, the API and the DNS server. Only the
leader runs the orchestrator, the scheduler and the dispatcher: they are
started when this manager becomes leader and stopped when it stops being
one, so a failover is a restart of loops with nothing to migrate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from pyswarm import aio
from pyswarm import config as cfg
from pyswarm.wire import rule
from pyswarm.dns.cache import TableCache
from pyswarm.dns.records import NameTable, TableBuilder
from pyswarm.dns import upstreams_from_resolv_conf
from pyswarm.dns.process import DnsProcess
from pyswarm.host import retire_local_manager, running_manager_pid

from pyswarm.models import Cluster, NodeRole, Service, Task

from .api import Api, Method, Self
from .api.base import Empty
from .api.images import Images
from .api.streams import StreamApi
from .demotion import Demotions
from .dispatcher import Dispatcher
from .events import EventLog
from .images import ImageService
from .heap import Heap
from .heap import install as install_gc_policy
from .lag import LoopLag
from .networks import LIVE_STATES
from .orchestrator import Orchestrator
from .scheduling import Scheduler
from .servers import SSHApiServer, UnixApiServer
from . import ops, sealing
from .autolock import LockedApi, wanted_form
from .store import RaftConfig, Snapshot, Store
from .streams import StreamHub
from .supervise import WINDOW, Supervised, describe
from .updater import Updater

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds


@dataclass(frozen=True)
class FailLoop:
    """``debug.fail_loop``'s request."""

    loop: str = field(metadata=rule(max_len=64))


class _Leading:
    """The loops that run only on the leader, each supervised
    (manager/supervise.py): restarted when it fails, and the manager gives
    up leading when one keeps failing."""

    def __init__(self, store: Store, client_keys: list[Any], on_give_up: Any,
                 images: ImageService | None = None, hub: StreamHub | None = None,
                 lag: LoopLag | None = None) -> None:
        self.hub = hub
        led_since = time.time()  # no grace of a down node counts from earlier (healing.lost_at)

        def dispatcher() -> Dispatcher:
            d = Dispatcher(store, client_keys, images=images, lag=lag)
            if hub is not None:
                hub.attach(d)  # logs/exec/stats over its sessions (manager/streams.py); each restart's anew
            return d

        makers: dict[str, Any] = {
            "orchestrator": lambda: Orchestrator(store, led_since), "updater": lambda: Updater(store),
            "scheduler": lambda: Scheduler(store), "dispatcher": dispatcher,
        }
        self.loops = [Supervised(name, make, on_give_up) for name, make in makers.items()]
        self.tasks = [aio.spawn(s.run(), s.name, log) for s in self.loops]
        self.started = time.monotonic()

    def loop(self, name: str) -> Supervised | None:
        return next((s for s in self.loops if s.name == name), None)

    def failing_since(self) -> float:
        """The monotonic time of the latest failure of any loop (0: none)."""
        return max((s.failures[-1] for s in self.loops if s.failures), default=0.0)

    async def stop(self) -> None:
        if self.hub is not None:
            self.hub.detach()
        for s in self.loops:
            s.stop()
        await aio.reap(*self.tasks)


def dns_snapshot(store: Store) -> Any:
    """What the DNS table is built from: only tasks that can have an address
    matter (the state index: pending tasks cost nothing here)."""
    return _dns_parts(store.snapshot())


def _dns_parts(snap: Snapshot) -> tuple[Cluster, list[Service], list[Task], list[str]]:
    return snap.cluster or Cluster(id=""), snap.services(), snap.tasks_in(*LIVE_STATES), [n.addr for n in snap.nodes()]


class DnsTables:
    """The DNS table of the store's latest snapshot, kept from the store's
    changes (dns/records.py TableBuilder): whole only first and after a
    change to the cluster or a service; a changed task moves only its own
    address. Not thread-safe: :func:`feed_dns` calls it from one thread at
    a time."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._builder = TableBuilder()
        self._cache = TableCache()
        self._at: int | None = None

    def update(self) -> NameTable:
        """The latest table; the same object as last time when no name changed."""
        snap = self._store.snapshot()
        changed = None if self._at is None else snap.changed_since(self._at)
        if changed is None or any(kind in ("cluster", "service") for kind, _ in changed):
            table = self._builder.rebuild(*_dns_parts(snap))
        else:
            nodes = [n.addr for n in snap.nodes()] if any(kind == "node" for kind, _ in changed) else None
            table = self._builder.update([(oid, _live(snap.task(oid))) for kind, oid in changed if kind == "task"],
                                         nodes)
        self._at = snap.index
        return self._cache.install(table)


def _live(task: Task | None) -> Task | None:
    return task if task is not None and task.state in LIVE_STATES else None


DNS_REBUILD_SHARE = 0.25
"""At most this share of the time goes to updating the DNS table while the
store keeps changing: after an update that took T, the next starts no
sooner than T / share - T later. A whole rebuild over 100,000 running
tasks takes a few hundred ms (now only the first, and after a service
changed: DnsTables); small clusters (T ~ 1 ms) see no delay."""


async def feed_dns(store: Store, dns: DnsProcess) -> None:
    """Send the DNS process the table after each store change. A rebuild
    that changes no name keeps the table object, and then nothing is sent.
    No change, no rebuild (a restarted child gets the latest from
    DnsProcess itself): one every 5 s at rest over 100,000 tasks was the
    leader's largest cost at rest after the heartbeat. The table is built
    in a thread, so the loop goes on answering heartbeats meanwhile, and
    paced by :data:`DNS_REBUILD_SHARE`."""
    tables = DnsTables(store)
    watcher = store.watcher()
    try:
        while True:
            started = time.monotonic()
            # in a thread: the first build is whole (100,000 typed tasks)
            await dns.send(await asyncio.to_thread(tables.update))
            next_at = time.monotonic() + (time.monotonic() - started) * (1 / DNS_REBUILD_SHARE - 1)
            await dns.drain()
            while not await watcher.wait(timeout=5.0):
                pass
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # a change after a quiet spell: at once
    finally:
        watcher.close()


class Manager:
    def __init__(self, config: cfg.ManagerConfig, state_dir: Path | None = None) -> None:
        self.config = config
        self.state_dir = state_dir or cfg.state_dir()
        cfg.harden(self.state_dir)  # state from before it was kept root-only
        self._key_file = sealing.read_key_file(self.state_dir)
        self._locked = self._key_file is not None and "locked" in self._key_file
        key = None if self._locked else sealing.load_plain_key(self.state_dir)
        if key is None and not self._locked:
            log.warning("no data key in %s: secrets are not encrypted at rest (a cluster from before keys)",
                        self.state_dir)
        sealing.use(key)
        self.store = Store(RaftConfig(
            self_addr=f"{config.advertise_addr}:{config.raft_port}",
            partners=[p for p in config.raft_peers if p != f"{config.advertise_addr}:{config.raft_port}"],
            data_dir=self.state_dir / "raft",
            secret=config.raft_secret,
        ))
        key_path = self.state_dir / "api_host_key"
        fingerprint = ""
        if key_path.exists():
            from pyswarm.tokens import fingerprint as fp

            fingerprint = fp(asyncssh.read_private_key(str(key_path)).public_data)
        self.images = ImageService(self.store, self.state_dir / "image-spool")
        me = Self(config.node_id, config.advertise_addr, config.api_port, fingerprint)
        self.api = Api(self.store, me, extra=[Images(self.store, me, self.images)])
        self._stop = asyncio.Event()
        self.retired = False
        self._leading: _Leading | None = None
        self.demotions = Demotions(self.store, config.node_id)
        self.hub = StreamHub()
        self.event_log = EventLog(self.store)
        self.streams = StreamApi(self.store, self.hub, self.event_log, self.images)
        self.lag = LoopLag()
        self.heap = Heap(self.store.live_objects)
        self._gave_up = ""  # why this manager last stopped leading on its own
        self.api.register(Method("debug.loops", Empty, self._debug_loops))
        self.api.register(Method("debug.fail_loop", FailLoop, self._debug_fail_loop))

    def _join_secrets(self) -> tuple[str, str]:
        cluster = self.store.snapshot().cluster
        if cluster is None:
            return "", ""
        return cluster.worker_token_secret, cluster.manager_token_secret

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        pidfile = cfg.run_dir() / "manager.pid"
        # one manager per host, decided atomically: two started at once (an
        # operator and the agent, say) must not both get as far as the socket
        self._lock = _exclusive_lock(self.state_dir / "manager.lock")
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{os.getpid()}\n")
        if self._locked and not await self._wait_unlocked():
            pidfile.unlink(missing_ok=True)
            return
        self.store.start()
        unix = UnixApiServer(self.api, cfg.socket_path(), self.streams, group=self.config.api_group)
        ssh = SSHApiServer(self.api, self.config.advertise_addr, self.config.api_port,
                           self.state_dir / "api_host_key", self._join_secrets, self.streams)
        upstreams = self.config.dns_upstreams
        if upstreams is None:
            upstreams = [f"{h}:{p}" for h, p in upstreams_from_resolv_conf(exclude=[self.config.advertise_addr])]
        # in a process of its own: the planners and Raft applies hold this
        # one's interpreter for long stretches (dns/process.py says why)
        dns = DnsProcess([self.config.advertise_addr], self.config.dns_port, upstreams=upstreams)
        dns.publish(TableCache().update(*dns_snapshot(self.store)))  # answered from the first query on
        await unix.start()
        await ssh.start()
        await dns.start()
        log.info("manager %s up: api %s:%d, raft %s, dns %s:%d", self.config.node_id,
                 self.config.advertise_addr, self.config.api_port, self.store.self_addr,
                 self.config.advertise_addr, self.config.dns_port)
        dns_watch = aio.spawn(feed_dns(self.store, dns), "dns watch", log)
        dns_keeper = aio.spawn(dns.run(), "dns process", log)
        key_watch = aio.spawn(self._keep_key_file(), "key file", log)
        events = aio.spawn(self.event_log.run(), "EventLog", log)
        lag_watch = aio.spawn(self.lag.run(), "loop lag", log)
        heap_watch = aio.spawn(self.heap.run(), "heap", log)
        try:
            await self._lead_while_leader()
        finally:
            dns_watch.cancel()
            dns_keeper.cancel()
            events.cancel()
            lag_watch.cancel()
            heap_watch.cancel()
            key_watch.cancel()
            if self._leading is not None:
                await self._leading.stop()
            await dns.stop()
            await ssh.stop()
            await unix.stop()
            await self.images.close()
            self.store.stop()
            pidfile.unlink(missing_ok=True)
            if self.retired:
                retire_local_manager(self.state_dir)

    async def _wait_unlocked(self) -> bool:
        """Locked (autolock): serve only ``swarm.unlock`` (and ``ping``) on
        the unix socket until the operator gives the unlock key; False when
        stopped first. Nothing else starts: no Raft, no DNS, no join door."""
        opened: asyncio.Future[sealing.DataKey] = asyncio.get_running_loop().create_future()

        def on_unlock(key: sealing.DataKey) -> None:
            if not opened.done():
                opened.set_result(key)

        assert self._key_file is not None
        locked = LockedApi(self.config.node_id, self.config.cluster_id, self._key_file, on_unlock)
        door = UnixApiServer(locked, cfg.socket_path())
        await door.start()
        log.warning("manager %s is locked (autolock): waiting for `pyswarm swarm unlock`", self.config.node_id)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        waiting: set[asyncio.Future[Any]] = {opened, stop}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            await door.stop()
        if not opened.done():
            return False
        sealing.use(opened.result())
        self._locked = False
        log.info("unlocked: starting")
        return True

    async def _keep_key_file(self) -> None:
        """Keep STATE/data_key in the form the cluster asks for: locked with
        the current unlock key under autolock, plain otherwise."""
        watcher = self.store.watcher()
        while True:
            await watcher.wait(timeout=5.0)
            key = sealing.KEY
            if key is None or not self.store.in_sync:
                continue
            wanted = wanted_form(key, self.store.snapshot().cluster, self._key_file)
            if wanted is not None:
                sealing.write_key_file(self.state_dir, wanted)
                self._key_file = wanted
                log.info("data key file %s", "locked with the cluster's unlock key" if "locked" in wanted
                         else "no longer locked (autolock off)")

    def _demoted(self) -> bool:
        """True once the store says this host is no longer a manager (demoted,
        or removed after having been one): the manager then stops for good."""
        snap = self.store.snapshot()
        if snap.cluster is None or not self.store.in_sync:
            return False  # still catching up: the snapshot may predate a promotion
        node = snap.node(self.config.node_id)
        return node is None or node.role != NodeRole.MANAGER

    async def _lead_while_leader(self) -> None:
        while not self._stop.is_set():
            if self._demoted():
                log.info("this node is no longer a manager: stopping the manager for good")
                self.retired = True
                return
            await self.demotions.settle()
            if self.store.is_leader and self._leading is None and self.store.in_sync:
                await self._bootstrap()
                cluster = self.store.snapshot().cluster
                if cluster is not None:
                    keys = [asyncssh.import_private_key(k) for k in
                            (cluster.ssh_private_key, cluster.previous_ssh_private_key) if k]
                    log.info("became leader: starting orchestrator, updater, scheduler, dispatcher")
                    self._leading = _Leading(self.store, keys, self._give_up, self.images, self.hub, self.lag)
            elif self._leading is not None and self._gave_up and \
                    time.monotonic() - max(self._leading.failing_since(), self._leading.started) > WINDOW:
                await self._say_why("")  # every loop has run well for a while: the trouble is over
            elif not self.store.is_leader and self._leading is not None:
                log.info("no longer leader: stopping orchestrator, updater, scheduler, dispatcher")
                await self._leading.stop()
                self._leading = None
            try:
                await asyncio.wait_for(self._stop.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    def _give_up(self, loop: str, reason: str) -> None:
        """A leader loop keeps failing: hand leadership to another manager,
        and say why in the log and on this manager's node (node ls)."""
        why = f"leader loop {loop} keeps failing ({reason})"
        if self.store.step_down():
            log.error("%s: stepping down as leader", why)
            why += "; stepped down as leader"
        else:
            log.error("%s; no other manager to take over: restarting it at the longest pause", why)
        aio.spawn(self._say_why(why), "say why", log)

    async def _say_why(self, why: str) -> None:
        self._gave_up = why
        try:
            await self.store.commit([ops.patch("node", self.config.node_id, manager_message=why)])
        except Exception as exc:  # no quorum, say: the log has it
            log.warning("could not record on the node why: %s", exc)

    async def _debug_loops(self, request: Empty) -> Any:
        """``debug.loops`` (root unix socket only): each leader loop's starts and last error."""
        return describe(self._leading.loops) if self._leading is not None else []

    async def _debug_fail_loop(self, request: FailLoop) -> Any:
        """``debug.fail_loop {"loop": NAME}`` (root unix socket only): make a
        leader loop fail now, as if it had raised; the supervisor restarts it."""
        from pyswarm.errors import ClusterError, UsageError

        if self._leading is None:
            raise ClusterError("this manager is not the leader: no leader loop runs here")
        name = request.loop
        loop = self._leading.loop(name)
        if loop is None:
            raise UsageError(f"no leader loop {name!r} (there are: {', '.join(s.name for s in self._leading.loops)})")
        if not loop.inject_fault():
            raise ClusterError(f"leader loop {name} is not running right now (restarting?)")
        return describe(self._leading.loops)

    async def _bootstrap(self) -> None:
        """On the first start after ``init``: write the cluster and this node."""
        boot = self.config.bootstrap
        if not boot or self.store.snapshot().cluster is not None:
            return
        ops = [["put", kind, oid, data] for kind, oid, data in boot["objects"]]
        await self.store.commit(ops, timeout=10)
        self.config.bootstrap = {}
        cfg.save_manager_config(self.config)
        log.info("bootstrapped cluster %s", self.config.cluster_id)


def _exclusive_lock(path: Path) -> Any:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        from pyswarm.errors import ClusterError

        raise ClusterError(f"a manager is already running on this host (pid {running_manager_pid()})") from None
    return fh  # held open, and so locked, for the life of the process






def main() -> int:
    """``pyswarm manager run``: the manager in the foreground."""
    os.umask(0o077)  # the Raft journal and dumps, the log, the pid file: root-only
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    # the planners run in a thread: let the event loop (heartbeats, DNS, API)
    # have the GIL back within 1 ms of asking rather than CPython's 5 ms
    sys.setswitchinterval(SWITCH_INTERVAL)
    # no full collection over 100,000 tasks' objects (1.5 s of GIL): heap.py
    install_gc_policy()
    config = cfg.load_manager_config()
    if config is None:
        from pyswarm.errors import NotManagerError

        raise NotManagerError(f"this host is not a manager (no {cfg.state_dir() / 'manager.json'}); run `pyswarm init`")
    asyncio.run(Manager(config).run())
    return 0
