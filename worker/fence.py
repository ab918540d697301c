"""Fencing: a node no manager has reached for a while stops its task containers.

The leader replaces the tasks of a node that has been ``down`` for
:data:`protocol.LOST_GRACE` seconds. A node is down for the leader when its
session went silent, which is also what a node whose *link* was cut sees
from its side: its containers go on running, and without fencing its slots
ran twice until the link came back (and longer under load: 174 slot pairs
in the soak, bench/RESULTS.md). So the node's side keeps a lease, shorter
than the leader's grace (:data:`protocol.AGENT_LEASE`): when no leader has
reached this host for that long *and* no manager's host answers at all (a
TCP connect to its sshd, accepted or refused: :func:`reaches_a_manager`),
whichever agent process is still here stops every task container with
:data:`protocol.FENCE_STOP_GRACE` between SIGTERM and SIGKILL, before the
replacements are even scheduled (Nomad's ``stop_after_client_disconnect``).
A host that still reaches a manager is not cut off: the managers have no
leader (a failover, a lost quorum, all of them restarting), so nobody can
replace its tasks, and stopping them would only break a cluster that Swarm
keeps running through the same.

The lease is host-wide, a file's mtime under the run directory, because an
agent process lives for one SSH session: a leader failover ends every
session at once, and the new leader's sessions start new agents. An agent
renews it only on a ping of a session whose ``configure`` it accepted (a
deposed leader's pings do not count), and only to the time it *sent* the
pong that ping acknowledges (:class:`protocol.Ping` ``ack``): that is before
the leader heard the pong, and the leader's grace counts from the last word
it heard, so the lease always ends first, however late a ping or a
configure arrives (a link that comes back, a loaded host). Neither an
agent's start nor a configure renews it. An agent whose session ended does
not exit at once: it waits until another agent renews the lease (a newer
session took over: it exits and leaves everything as it is) or the lease
runs out (it fences, then exits). While it stays because a manager's host
answers, the leader's probe of this host's sshd is accepted too, which
restarts its grace (manager/dispatcher.py): the two rules restart on the
same event, a TCP answer across this host's link (docs/healing.md, "Why it
is sound").

The containers it stops are recorded (:meth:`Lease.record`), so the next agent
reports their tasks as ``shutdown`` by the cluster, not as tasks that
completed by themselves: their slots are then refilled whatever the restart
policy (a ``condition: on-failure`` service would otherwise keep them dead).
The agent records the same way the containers a stopping engine takes with
it: with the grace, a dockerd restart shorter than it no longer orphans the
node's tasks first, and their exit 0 on SIGTERM read as completions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pyswarm import aio, protocol
from pyswarm.worker.tasks import LIVE_STATES

log = logging.getLogger("pyswarm.worker.fence")

CHECK_EVERY = 0.25  # seconds between looks at the lease
PROBE_EVERY = protocol.REACH_PROBE_EVERY  # between probes of the managers' hosts once the lease ran out
PROBE_TIMEOUT = protocol.REACH_PROBE_TIMEOUT
RECORD_LIMIT = 10_000  # container ids kept in the record of fenced ones
FENCED = "no manager reached the node (fenced)"
ENGINE_STOPPED = "the engine stopped it as it went away"


def _make_run_dir(directory: Path) -> None:
    """Create the run directory root-only if it is missing, and leave an
    existing one as it is: the manager opens it to the ``--api-group`` for
    search (manager/servers.py), which a chmod to 0700 here took away."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once (another agent of this host may
    read it meanwhile), root-only: the host's state is (tests/e2e/test_trust.py)."""
    _make_run_dir(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class Lease:
    """The host's lease and the record of fenced containers, files in
    ``directory`` (the run directory: gone with a reboot, as the containers are)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "agent-lease"
        self.record_path = directory / "fenced"
        self.peers_path = directory / "agent-peers"
        self._cache: tuple[float, dict[str, str]] = (-1.0, {})

    def remember_peers(self, sole_manager: bool, managers: tuple[str, ...], peers: tuple[str, ...]) -> None:
        """Keep whom fencing probes (from the latest configure) host-wide:
        an agent of a new leader's session has had no configure yet when the
        lease runs out, and with no address known it fenced at once. After
        every manager restarted and a partition deposed the new leader, every
        agent of the cluster stopped its containers (tests/e2e/test_managers.py)."""
        if (sole_manager, managers, peers) == self.remembered_peers():
            return  # every configure says it again: most say nothing new
        text = json.dumps({"sole_manager": sole_manager, "managers": list(managers), "peers": list(peers)})
        try:
            _write_private(self.peers_path, text)
        except OSError as exc:
            log.warning("cannot keep the managers' addresses in %s: %s", self.peers_path, exc)

    def remembered_peers(self) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
        """What :meth:`remember_peers` kept last: (sole manager, managers' hosts,
        other nodes' hosts); nothing known: (False, (), ())."""
        try:
            data = json.loads(self.peers_path.read_text())
            return (bool(data["sole_manager"]), tuple(str(a) for a in data["managers"]),
                    tuple(str(a) for a in data["peers"]))
        except (OSError, ValueError, KeyError, TypeError):
            return False, (), ()

    def renew(self, at: float | None = None) -> float:
        """Renew the lease to ``at`` (wall clock; default now), never back
        in time (another agent of this host may have renewed it later);
        returns the lease's time."""
        at = time.time() if at is None else at
        if at <= self.renewed_at():
            return self.renewed_at()
        try:
            os.utime(self.path, (at, at))
        except FileNotFoundError:
            _make_run_dir(self.path.parent)
            self.path.touch(mode=0o600)
            os.utime(self.path, (at, at))
        except OSError as exc:
            log.warning("cannot renew the lease %s: %s", self.path, exc)
        return at

    def renewed_at(self) -> float:
        """When any agent on this host last renewed the lease (0: never)."""
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def record(self, container_ids: list[str], why: str = FENCED) -> None:
        """Add ``container_ids`` to the record of containers this node
        stopped (written before they are stopped: the next agent may
        already watch their deaths), with ``why`` (one line)."""
        known = {**self.fenced(), **{cid: why.replace("\n", " ") for cid in container_ids}}
        kept = list(known.items())[-RECORD_LIMIT:]
        _write_private(self.record_path, "".join(f"{cid} {reason}\n" for cid, reason in kept))

    def fenced(self) -> dict[str, str]:
        """Container id -> why this node stopped it (cached by the record's
        mtime: read on every container death)."""
        try:
            mtime = self.record_path.stat().st_mtime
        except OSError:
            return {}
        if mtime != self._cache[0]:
            try:
                text = self.record_path.read_text()
            except OSError:
                return self._cache[1]
            found = {}
            for line in text.splitlines():
                cid, _, reason = line.strip().partition(" ")
                if cid:
                    found[cid] = reason or FENCED
            self._cache = (mtime, found)
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


async def reaches_a_manager(addrs: list[str] | tuple[str, ...], port: int = 22, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether this host reaches any manager's host at all: a TCP connect
    to its sshd that is accepted *or refused* (the host answered). A host
    that reaches one is not cut off: the managers lost their leader or
    their quorum, or are restarting, and no leader can replace our tasks
    meanwhile; nobody needs us to stop. No address known: False."""
    found = await asyncio.gather(*(aio.host_answers(a, port, timeout) for a in addrs))
    return any(found) if addrs else False


async def linger(docker: Any, lease: Lease, ended_at: float,
                 reachable: Callable[[], Awaitable[bool]] | None = None) -> str:
    """After this agent's session ended at ``ended_at`` (wall clock): wait
    until another agent renews the lease ("taken over") or it runs out
    while ``reachable`` says no manager's host answers ("fenced", after
    stopping the containers). While one answers (a leader failover, a lost
    quorum, every manager restarting) it goes on waiting."""
    said = False
    while True:
        last = lease.renewed_at()
        if last > ended_at:
            return "taken over"
        silent = time.time() - last
        if silent < protocol.AGENT_LEASE:
            await asyncio.sleep(min(CHECK_EVERY, protocol.AGENT_LEASE - silent))
            continue
        if reachable is not None and await reachable():
            if not said:
                log.warning("no leader has reached this host for %.0fs, but a manager's host answers: "
                            "not fencing (no leader can replace our tasks while it cannot reach us)", silent)
                said = True
            await asyncio.sleep(PROBE_EVERY)
            continue
        try:
            await fence(docker, lease, silent)
        except Exception as exc:  # the engine is gone: its containers went with it
            log.warning("fence: cannot list this host's containers: %s", exc)
        return "fenced"
