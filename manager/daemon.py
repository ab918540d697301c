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
from pathlib import Path
from typing import Any

import asyncssh

from pyswarm import config as cfg
from pyswarm.dns.cache import TableCache
from pyswarm.dns import upstreams_from_resolv_conf
from pyswarm.dns.server import DnsServer
from pyswarm.host import retire_local_manager, running_manager_pid

from pyswarm.models import NodeRole

from .api import Api, Self
from .api.images import Images
from .api.streams import StreamApi
from .dispatcher import Dispatcher
from .events import EventLog
from .images import ImageService
from .lag import LoopLag
from .networks import LIVE_STATES
from .orchestrator import Orchestrator
from .scheduling import Scheduler
from .servers import SSHApiServer, UnixApiServer
from .store import RaftConfig, Store
from .streams import StreamHub
from .updater import Updater

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds


class _Leading:
    """The loops that run only on the leader."""

    def __init__(self, store: Store, client_keys: list[Any], images: ImageService | None = None,
                 hub: StreamHub | None = None, lag: LoopLag | None = None) -> None:
        dispatcher = Dispatcher(store, client_keys, images=images, lag=lag)
        self.hub = hub
        if hub is not None:
            hub.attach(dispatcher)  # logs/exec/stats over its sessions (manager/streams.py)
        self.components: list[Any] = [Orchestrator(store), Updater(store), Scheduler(store), dispatcher]
        self.tasks = [asyncio.create_task(c.run(), name=type(c).__name__) for c in self.components]

    async def stop(self) -> None:
        if self.hub is not None:
            self.hub.detach()
        for c in self.components:
            c.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Manager:
    def __init__(self, config: cfg.ManagerConfig, state_dir: Path | None = None) -> None:
        self.config = config
        self.state_dir = state_dir or cfg.state_dir()
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
        self._dns_cache = TableCache(loader=self._dns_snapshot)
        self.hub = StreamHub()
        self.event_log = EventLog(self.store)
        self.streams = StreamApi(self.store, self.hub, self.event_log)
        self.lag = LoopLag()

    def _dns_snapshot(self) -> Any:
        snap = self.store.snapshot()
        cluster = snap.cluster
        if cluster is None:
            from pyswarm.models import Cluster

            cluster = Cluster(id="")
        # only tasks that can have an address matter (the state index: no scan)
        return cluster, snap.services(), snap.tasks_in(*LIVE_STATES)

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
        self.store.start()
        unix = UnixApiServer(self.api, cfg.socket_path(), self.streams, group=self.config.api_group)
        ssh = SSHApiServer(self.api, self.config.advertise_addr, self.config.api_port,
                           self.state_dir / "api_host_key", self._join_secrets, self.streams)
        upstreams = self.config.dns_upstreams
        if upstreams is None:
            upstreams = [f"{h}:{p}" for h, p in upstreams_from_resolv_conf(exclude=[self.config.advertise_addr])]
        dns = DnsServer(self._dns_cache.get, [self.config.advertise_addr], self.config.dns_port,
                        upstreams=upstreams)
        await unix.start()
        await ssh.start()
        await dns.start()
        log.info("manager %s up: api %s:%d, raft %s, dns %s:%d", self.config.node_id,
                 self.config.advertise_addr, self.config.api_port, self.store.self_addr,
                 self.config.advertise_addr, self.config.dns_port)
        dns_watch = asyncio.create_task(self._watch_dns())
        events = asyncio.create_task(self.event_log.run(), name="EventLog")
        lag_watch = asyncio.create_task(self.lag.run())
        try:
            await self._lead_while_leader()
        finally:
            dns_watch.cancel()
            events.cancel()
            lag_watch.cancel()
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

    async def _watch_dns(self) -> None:
        watcher = self.store.watcher()
        while True:
            if await watcher.wait(timeout=5.0):
                self._dns_cache.invalidate()

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
            if self.store.is_leader and self._leading is None and self.store.in_sync:
                await self._bootstrap()
                cluster = self.store.snapshot().cluster
                if cluster is not None:
                    keys = [asyncssh.import_private_key(k) for k in
                            (cluster.ssh_private_key, cluster.previous_ssh_private_key) if k]
                    log.info("became leader: starting orchestrator, updater, scheduler, dispatcher")
                    self._leading = _Leading(self.store, keys, self.images, self.hub, self.lag)
            elif not self.store.is_leader and self._leading is not None:
                log.info("no longer leader: stopping orchestrator, updater, scheduler, dispatcher")
                await self._leading.stop()
                self._leading = None
            try:
                await asyncio.wait_for(self._stop.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    # the planners run in a thread: let the event loop (heartbeats, DNS, API)
    # have the GIL back within 1 ms of asking rather than CPython's 5 ms
    sys.setswitchinterval(SWITCH_INTERVAL)
    config = cfg.load_manager_config()
    if config is None:
        from pyswarm.errors import NotManagerError

        raise NotManagerError(f"this host is not a manager (no {cfg.state_dir() / 'manager.json'}); run `pyswarm init`")
    asyncio.run(Manager(config).run())
    return 0
