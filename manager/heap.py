"""The manager's garbage collection: no full collection over a big heap.

CPython's cyclic collector runs a *full* collection (every tracked object)
whenever the long-lived objects grew by a quarter. The store's objects are
tracked containers (each task a few nested dicts, its typed model, its
entry), so at 100,000 tasks a full collection visits about 3 million
objects and holds the GIL for 0.5-1.5 s, on whatever thread allocated
last: the event loop, the planning thread or the Raft thread
(bench/RESULTS.md, issue 11: 402 collections over 5 ms during one scale to
100,000 and back, the worst 1.5 s; that, not the loop's own callbacks, was
the loop lag). Young collections (generations 0 and 1) stay as they are:
they cost what was allocated since the last one.

No automatic full collection runs in the manager (generation 2's
threshold is :data:`NEVER`, :func:`install`); :class:`Heap`, a task on the
event loop, runs them where they are cheap:

* **While the store is small** (under :data:`BIG` objects), a full
  collection once :data:`FULL_AFTER` young collections ran since the last
  one (CPython's own default), of a heap of ~50,000 objects: a few ms.
* **Over it, what survives is frozen.** Once :data:`FREEZE_AFTER` young
  collections promoted objects since the last freeze, the young
  generations are collected once more and everything left is moved to the
  permanent generation (``gc.freeze()``, a list splice), which no
  collection visits. What a big manager keeps is mostly the store's
  objects, which are acyclic (plain data, freed by reference counting
  whatever their generation).
* **Once the store has been small again for a while**
  (:data:`UNFREEZE_AFTER` looks) everything is unfrozen and collected. At
  once, it visited the 100,000 tasks that the last snapshots and caches
  still held (179-217 ms, the longest pause left at 100,000); 10 s later
  reference counting has freed them.
  Cycles among objects that outlived two young collections while the store
  was big (a connection open then and closed later) wait until then: the
  price of never scanning 100,000 tasks.

The pause of every collection of generations 1 and 2 is recorded and
exported by ``manager metrics`` beside the loop lag. Only the manager's ``main`` calls :func:`install` (a
manager run inside a test's process leaves the interpreter's collector as
it is).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

NEVER = 2**30  # generation 2's threshold: no automatic full collection
BIG = 2000  # store objects: over this, no full collection (a manager's own heap is ~50,000 objects)
FREEZE_AFTER = 5  # young (generation 1) collections since the last freeze: ~35,000 objects at most
FULL_AFTER = 10  # young collections before a full one under BIG (CPython's default threshold)
UNFREEZE_AFTER = 20  # looks (10 s) the store stays small before what was frozen is unfrozen and collected
LOOK_EVERY = 0.5  # seconds
WINDOW = 60.0  # seconds of pauses kept for the figures

_CURRENT: Heap | None = None
_INSTALLED = False


def current() -> Heap | None:
    """The keeper of this process's manager (one manager a process)."""
    return _CURRENT


def install() -> None:
    """No automatic full collection in this process: :class:`Heap` runs
    them, where they are cheap."""
    global _INSTALLED
    _INSTALLED = True
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


class Heap:
    """Run :meth:`run` on the manager's loop; ``live`` counts the store's objects."""

    def __init__(self, live: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self._live = live
        self._clock = clock
        # per second: [second, longest pause by the clock, its generation,
        # most CPU of one pause]: bounded (WINDOW entries) however many
        # collections run. A record per collection was pruned only when the
        # figures were read, so a manager nobody asked grew by every young
        # collection it ran (thousands a second while it converged).
        self._pauses: deque[list[Any]] = deque()
        self._started: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._promotions = 0  # generation-1 collections since the last freeze
        self._small_looks = 0  # looks in a row that found the store small
        self.freezes = 0
        self.full_collections = 0
        # whether this keeper froze since its last unfreeze: not
        # gc.get_freeze_count(), which walks the whole permanent generation
        # (~100 ms of the loop at 100,000 tasks, per metrics call and look)
        self.frozen = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # any thread: a collection runs in whichever thread allocated last.
        # Generation 0 is not timed: it runs every 700 allocations and costs
        # what they were (well under a ms). What is left of this callback's
        # 3.5 % of a converging leader's CPU is CPython calling it at all
        # (bench/RESULTS.md, session 22: a larger threshold cut the calls but
        # made the longest collection 57-64 ms of CPU)
        if info["generation"] == 0:
            return
        me = threading.get_ident()
        if phase == "start":
            self._started[me] = (time.perf_counter(), time.thread_time())
            return
        if info["generation"] == 1:
            self._promotions += 1
        began = self._started.pop(me, None)
        if began is not None:
            wall, cpu = time.perf_counter() - began[0], time.thread_time() - began[1]
            second = int(self._clock())
            with self._lock:
                pauses = self._pauses
                if pauses and pauses[-1][0] == second:
                    last = pauses[-1]
                    if wall > last[1]:
                        last[1], last[2] = wall, int(info["generation"])
                    if cpu > last[3]:
                        last[3] = cpu
                else:
                    pauses.append([second, wall, int(info["generation"]), cpu])
                    while pauses[0][0] < second - WINDOW:
                        pauses.popleft()

    async def run(self) -> None:
        global _CURRENT
        _CURRENT = self
        self.attach()
        try:
            while True:
                await asyncio.sleep(LOOK_EVERY)
                if _INSTALLED:
                    self.step()
        finally:
            self.detach()

    def attach(self) -> None:
        """Count and time this process's collections from now on."""
        gc.callbacks.append(self._on_gc)

    def detach(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def step(self) -> None:
        """Over :data:`BIG` store objects, freeze what the young collections
        promoted; under it, a full collection of everything (unfrozen) once
        as many young collections ran as CPython waits for."""
        if self._live() >= BIG:
            self._small_looks = 0
            if self._promotions >= FREEZE_AFTER:
                gc.collect(1)  # young cycles die here, not in the permanent generation
                gc.freeze()
                self.frozen = True
                self._promotions = 0
                self.freezes += 1
            return
        self._small_looks += 1
        if self.frozen and self._small_looks < UNFREEZE_AFTER:
            return  # the old snapshots, caches and answers that still hold the big store let go first
        if self._promotions >= FULL_AFTER or self.frozen:
            gc.unfreeze()
            self.frozen = False
            gc.collect()
            self._promotions = 0
            self.full_collections += 1

    def stats(self) -> dict[str, Any]:
        horizon = self._clock() - WINDOW
        with self._lock:
            recent = [p for p in self._pauses if p[0] >= int(horizon)]
        worst = max(recent, key=lambda p: p[1], default=[0, 0.0, 0, 0.0])
        cpu = max((p[3] for p in recent), default=0.0)
        return {
            # by the clock (what the other threads waited: on a loaded machine
            # it includes the collector's own waits for a core) and by CPU
            "gc_pause_max_60s_ms": round(worst[1] * 1000, 1),
            "gc_pause_max_60s_generation": worst[2],
            "gc_pause_cpu_max_60s_ms": round(cpu * 1000, 1),
            "gc_frozen": self.frozen,
            "gc_freezes": self.freezes,
            "gc_full_collections": self.full_collections,
        }
