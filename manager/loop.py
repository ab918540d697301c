"""The shape every leader-only planner shares: watch the store, plan from a
snapshot, commit, repeat.

The orchestrator, the updater and the scheduler differ only in their pure
planning function; this loop is the rest (waking on store changes or a
deadline, committing, and retrying a plan that went stale), written once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .store import Op, Snapshot, Store, TransactionAborted

log = logging.getLogger(__name__)

Plan = tuple[list[list[Op]], float]  # transactions to commit, seconds until the next look
IDLE_SHARE = 20  # unprompted looks: at most 1/20 of the time planning


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
                await watcher.wait(timeout=timeout)
                if self._stopped.is_set():
                    break
                started = time.monotonic()
                commits, timeout = self.plan(self._store.snapshot(), time.time())
                # a look that no change asked for (time-based work: restart
                # delays, update pauses) may cost at most 1/IDLE_SHARE of the
                # time: with 10,000 tasks one plan takes ~0.2 s, and three
                # planners looking every second kept the leader's core busy
                # on a cluster at rest
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

    def stop(self) -> None:
        self._stopped.set()
