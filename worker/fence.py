"""Fencing: a node no manager has reached for a while stops its task containers.

The leader replaces the tasks of a node that has been ``down`` for
:data:`protocol.LOST_GRACE` seconds. A node is down for the leader when its
session went silent, which is also what a node whose *link* was cut sees
from its side: its containers go on running, and without fencing its slots
ran twice until the link came back (and longer under load: 174 slot pairs
in the soak, bench/RESULTS.md). So the node's side keeps a lease, shorter
than the leader's grace (:data:`protocol.AGENT_LEASE`): when no manager has
reached this host for that long, whichever agent process is still here stops
every task container with :data:`protocol.FENCE_STOP_GRACE` between SIGTERM
and SIGKILL, before the replacements are even scheduled (Nomad's
``stop_after_client_disconnect``).

The lease is host-wide, a file's mtime under the run directory, because an
agent process lives for one SSH session: a leader failover ends every
session at once, and the new leader's sessions start new agents. Every
agent renews it when it starts (a manager with the cluster's key has just
reached us) and on every ping of a session whose ``configure`` it accepted
(a deposed leader's pings do not count). An agent whose session ended does
not exit at once: it waits until another agent renews the lease (a newer
session took over: it exits and leaves everything as it is) or the lease
runs out (it fences, then exits).

The containers it stops are recorded (:meth:`Lease.record`), so the next agent
reports their tasks as ``shutdown`` by the cluster, not as tasks that
completed by themselves: their slots are then refilled whatever the restart
policy (a ``condition: on-failure`` service would otherwise keep them dead).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from pyswarm import config as cfg
from pyswarm import protocol
from pyswarm.worker.tasks import LIVE_STATES

log = logging.getLogger("pyswarm.worker.fence")

CHECK_EVERY = 0.25  # seconds between looks at the lease
RECORD_LIMIT = 10_000  # container ids kept in the record of fenced ones


class Lease:
    """The host's lease and the record of fenced containers, files in
    ``directory`` (the run directory: gone with a reboot, as the containers are)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "agent-lease"
        self.record_path = directory / "fenced"
        self._cache: tuple[float, frozenset[str]] = (-1.0, frozenset())

    def renew(self) -> float:
        """Renew the lease; returns its time."""
        try:
            os.utime(self.path)
        except FileNotFoundError:
            cfg.make_private_dir(self.path.parent)
            self.path.touch(mode=0o600)
        except OSError as exc:
            log.warning("cannot renew the lease %s: %s", self.path, exc)
        return time.time()

    def renewed_at(self) -> float:
        """When any agent on this host last renewed the lease (0: never)."""
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def record(self, container_ids: list[str]) -> None:
        """Add ``container_ids`` to the record of fenced containers (written
        before they are stopped: the next agent may already watch their deaths)."""
        ids = [*self.fenced(), *container_ids][-RECORD_LIMIT:]
        cfg.make_private_dir(self.record_path.parent)
        tmp = self.record_path.with_name(f"fenced.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f"{cid}\n" for cid in dict.fromkeys(ids)))
        os.replace(tmp, self.record_path)

    def fenced(self) -> frozenset[str]:
        """The ids of the containers a fence stopped on this host (cached by
        the record's mtime: read on every container death)."""
        try:
            mtime = self.record_path.stat().st_mtime
        except OSError:
            return frozenset()
        if mtime != self._cache[0]:
            try:
                text = self.record_path.read_text()
            except OSError:
                return self._cache[1]
            self._cache = (mtime, frozenset(line.strip() for line in text.splitlines() if line.strip()))
        return self._cache[1]


async def fence(docker: Any, lease: Lease, silent: float) -> int:
    """Stop every running task container on this host; returns how many."""
    raw = await docker.list_containers({protocol.LABEL_TASK_ID: None}, all=False)
    ids = [str(c.get("Id")) for c in raw if c.get("Id") and c.get("State") in LIVE_STATES]
    if not ids:
        return 0
    log.warning("no manager has reached this host for %.1fs (lease %gs): stopping its %d task container(s)",
                silent, protocol.AGENT_LEASE, len(ids))
    lease.record(ids)

    async def stop(cid: str) -> None:
        try:
            await docker.stop_container(cid, protocol.FENCE_STOP_GRACE)
        except Exception as exc:  # gone meanwhile, or the engine is: nothing else to do
            log.warning("fence: stop %s: %s", cid[:12], exc)
    await asyncio.gather(*(stop(cid) for cid in ids))
    return len(ids)


async def linger(docker: Any, lease: Lease, ended_at: float) -> str:
    """After this agent's session ended at ``ended_at`` (wall clock): wait
    until another agent renews the lease ("taken over") or it runs out
    ("fenced", after stopping the containers)."""
    while True:
        last = lease.renewed_at()
        if last > ended_at:
            return "taken over"
        silent = time.time() - last
        if silent >= protocol.AGENT_LEASE:
            try:
                await fence(docker, lease, silent)
            except Exception as exc:  # the engine is gone: its containers went with it
                log.warning("fence: cannot list this host's containers: %s", exc)
            return "fenced"
        await asyncio.sleep(min(CHECK_EVERY, protocol.AGENT_LEASE - silent))
