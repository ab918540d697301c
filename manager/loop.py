"""The shape every leader-only planner shares: watch the store, plan from a
snapshot, commit, repeat.

The orchestrator, the updater and the scheduler differ only in their pure
planning function; this loop is the rest (waking on store changes or a
deadline, committing, and retrying a plan that went stale), written once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

from .store import Op, Snapshot, Store, TransactionAborted, Watcher

log = logging.getLogger(__name__)

# one thread plans for every planner, one pass at a time: passes in parallel
# only fight over the GIL, with the event loop as a third contender
_PLANNING = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="planning")

Plan = tuple[list[list[Op]], float]  # transactions to commit, seconds until the next look
IDLE_SHARE = 20  # unprompted looks: at most 1/20 of the time planning
FULL_PASS_EVERY = 30.0  # seconds: planners that follow changes also look at everything this often
FULL_PASS_SHARE = 100  # ... and no more often than 100 times what the last full pass took


def next_full_pass(now: float, started: float) -> float:
    """When the next full pass is due, after one that began at ``started``
    (``time.monotonic()``): a safety net, not the way changes are followed,
    so at most 1/:data:`FULL_PASS_SHARE` of a core goes to it. At 100,000
    tasks a full pass is ~1 s of CPU: every 30 s it was 3 % of a core at
    rest, most of the 5 % goal."""
    return now + max(FULL_PASS_EVERY, (time.monotonic() - started) * FULL_PASS_SHARE)


class StoreLoop:
    """Subclasses implement :meth:`plan`; :meth:`run` and :meth:`stop` are the
    ``run()``/``stop()`` pair the daemon starts and stops with leadership."""

    name = "loop"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._stopped = asyncio.Event()

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        raise NotImplementedError

    async def run(self) -> None:
        watcher = self._store.watcher()
        timeout = 1.0
        try:
            while not self._stopped.is_set():
                await self._wait(watcher, timeout)
                if self._stopped.is_set():
                    break
                started = time.monotonic()
                # off the event loop (it answers heartbeats and DNS): a plan
                # reads an immutable snapshot and returns operations
                commits, timeout = await asyncio.get_running_loop().run_in_executor(
                    _PLANNING, self.plan, self._store.snapshot(), time.time())
                # a look that no change asked for (time-based work: restart
                # delays, update pauses) may cost at most 1/IDLE_SHARE of the
                # time: with 10,000 tasks one plan takes ~0.2 s, and three
                # planners looking every second kept the leader's core busy
                # on a cluster at rest
                if timeout > 0:  # 0: the plan was cut short (a budget), go on at once
                    timeout = max(timeout, (time.monotonic() - started) * IDLE_SHARE)
                for ops in commits:
                    try:
                        await self._store.commit(ops)
                    except TransactionAborted as exc:
                        log.info("%s: plan went stale (%s); planning again", self.name, exc)
                        timeout = 0.05
                    except Exception:  # retried on the next round
                        log.exception("%s commit failed", self.name)
                        await asyncio.sleep(0.2)
        finally:
            watcher.close()

    async def _wait(self, watcher: Watcher, timeout: float) -> None:
        """A store change, the timeout, or :meth:`stop`, whichever is first
        (a planner that follows changes may wait 30 s between looks)."""
        change = asyncio.ensure_future(watcher.wait(timeout=timeout))
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({change, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            change.cancel()
            stopped.cancel()

    def stop(self) -> None:
        self._stopped.set()


MAX_OPS_PER_COMMIT = 2000


def chunked(ops: list[Op], size: int = MAX_OPS_PER_COMMIT) -> list[list[Op]]:
    """Split a plan into transactions of at most about ``size`` operations
    (a huge Raft entry stalls every replica that pickles, journals and
    applies it), never between two operations on one object, so that a
    task's ``patch`` and ``advance`` commit together."""
    out: list[list[Op]] = []
    current: list[Op] = []
    last: object = None
    for op in ops:
        key = op[1] if op[0] == "advance" else op[2] if len(op) > 2 else None
        if len(current) >= size and key != last:
            out.append(current)
            current = []
        current.append(op)
        last = key
    if current:
        out.append(current)
    return out


def touched_services(snapshot: Snapshot, changed: set[tuple[str, str]] | int) -> set[str] | None:
    """The services to look at whole after the changes ``changed`` (or all
    changes after that store index): a changed service, the services with
    tasks on a changed node, global services when a node changed or one of
    their tasks did, and replicated services whose tasks changed unless the
    caller looks at slots (``task.slot`` changes, :mod:`.orchestrator`).
    None when that is unknown (then look at every service)."""
    if isinstance(changed, int):
        found = snapshot.changed_since(changed)
        if found is None:
            return None
        changed, by_slot = found, False
    else:
        by_slot = True
    out: set[str] = set()
    for kind, oid in changed:
        if kind == "service":
            out.add(oid)
        elif kind == "task.service":
            if not by_slot:
                out.add(oid)
            else:
                service = snapshot.service(oid)
                if service is not None and service.spec.mode == "global":
                    out.add(oid)
        elif kind == "node":
            out.update(t.service_id for t in snapshot.tasks_on(oid))
            out.update(s.id for s in snapshot.services() if s.spec.mode == "global")
        elif kind == "cluster":
            return None
    return out
