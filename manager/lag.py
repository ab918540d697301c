"""How late the manager's event loop runs: scheduled versus actual wake-ups.

The event loop answers heartbeats, DNS and the API. Anything that holds it
(a planner pass over 100,000 tasks did, for seconds) shows here as lag: a
sleep of ``period`` that returns later than asked. The monitor keeps the
recent lags and the intervals the loop was stalled, so that

* the dispatcher can tell its own stall from a node's silence (a heartbeat
  that could not be read because the loop was stuck is not the node's
  fault: :meth:`LoopLag.stalled_between`);
* the figures are exported (``manager.metrics``, ``node inspect`` of a
  manager) and a stall over :data:`WARN_AFTER` is logged.

A stall has three possible causes, and each wake-up says how much of
each it saw since the one before: the loop's own work (the loop thread's
CPU time), waiting for a core (the thread's run-queue wait, from
``/proc/thread-self/schedstat``: the machine is oversubscribed), and the
rest, waiting for the GIL while another thread (planning, Raft) holds it.
On a loaded 2-core lab host the worst lag was 0.6 s with 8 ms of the
loop's own CPU in it: a figure without its causes blamed the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

PERIOD = 0.05  # seconds between wake-ups
STALL = 0.02  # a wake-up this late counts as a stall (recorded as an interval)
WARN_AFTER = 0.1  # a stall this long is logged
WINDOW = 60.0  # seconds of history kept for the figures


_CURRENT: LoopLag | None = None


def _runqueue_wait(fd: int | None) -> float | None:
    """This thread's run-queue wait so far in seconds, read from its open
    ``/proc/thread-self/schedstat``; None where the kernel does not say."""
    if fd is None:
        return None
    try:
        return int(os.pread(fd, 64, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def current() -> LoopLag | None:
    """The monitor of this process's manager loop (one manager a process)."""
    return _CURRENT


class LoopLag:
    """Run :meth:`run` as a task on the loop to measure; read from the loop."""

    def __init__(self, period: float = PERIOD, clock: Any = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self.last = 0.0  # seconds, the latest wake-up's lag
        self._samples: deque[tuple[float, float]] = deque()  # (when, lag) over WINDOW
        # (when, lag, own CPU, run-queue wait) of the stalled wake-ups over WINDOW;
        # the last two cover the interval since the wake-up before
        self._stall_causes: deque[tuple[float, float, float, float | None]] = deque()
        self._stalls: deque[tuple[float, float]] = deque()  # (from, to) the loop was held
        self.stalls_total = 0
        self._last_warned = 0.0

    async def run(self) -> None:
        global _CURRENT
        _CURRENT = self
        try:
            fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)  # the loop's own thread
        except OSError:
            fd = None
        try:
            expected = self._clock() + self.period
            cpu, waited = time.thread_time(), _runqueue_wait(fd)
            while True:
                await asyncio.sleep(max(0.0, expected - self._clock()))
                now = self._clock()
                cpu_now, waited_now = time.thread_time(), _runqueue_wait(fd)
                self.record(expected, now, cpu_now - cpu,
                            None if waited is None or waited_now is None else waited_now - waited)
                cpu, waited = cpu_now, waited_now
                expected = now + self.period
        finally:
            if fd is not None:
                os.close(fd)

    def record(self, expected: float, woke: float, cpu: float = 0.0, waited: float | None = None) -> None:
        """One wake-up that was due at ``expected`` and came at ``woke``;
        ``cpu`` and ``waited``: the loop thread's CPU time and run-queue
        wait since the wake-up before."""
        lag = max(0.0, woke - expected)
        self.last = lag
        self._samples.append((woke, lag))
        if lag >= STALL:
            self._stalls.append((expected, woke))
            self._stall_causes.append((woke, lag, cpu, waited))
            self.stalls_total += 1
        if lag >= WARN_AFTER and woke - self._last_warned > 5.0:
            self._last_warned = woke
            log.warning("event loop stalled for %.0f ms (heartbeats, DNS and the API waited)", lag * 1000)
        horizon = woke - WINDOW
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        while self._stalls and self._stalls[0][1] < horizon:
            self._stalls.popleft()
        while self._stall_causes and self._stall_causes[0][0] < horizon:
            self._stall_causes.popleft()

    def stalled_between(self, start: float, end: float) -> float:
        """Seconds of [start, end] (monotonic) during which the loop was held."""
        total = 0.0
        for a, b in self._stalls:
            lo, hi = max(a, start), min(b, end)
            if hi > lo:
                total += hi - lo
        # a stall still going on (the wake-up that ends it has not run yet)
        # is seen from the next check, once the loop runs again
        return total

    def worst(self, seconds: float) -> float:
        """The largest lag of the last ``seconds``."""
        horizon = self._clock() - seconds
        return max((lag for when, lag in self._samples if when >= horizon), default=0.0)

    def stats(self) -> dict[str, Any]:
        lags = sorted(lag for _, lag in self._samples)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
        worst = max(self._stall_causes, key=lambda s: s[1], default=(0.0, 0.0, 0.0, None))
        return {
            # of the worst stall: the loop's own CPU and the wait for a core
            # in it (the rest of it: the GIL, held by another thread)
            "loop_lag_max_60s_cpu_ms": round(worst[2] * 1000, 1),
            "loop_lag_max_60s_runqueue_ms": None if worst[3] is None else round(worst[3] * 1000, 1),
            # the most CPU the loop's own work took in any stalled interval:
            # an upper bound on what one callback of it held the loop for
            "loop_stall_cpu_max_60s_ms": round(max((s[2] for s in self._stall_causes), default=0.0) * 1000, 1),
            "loop_lag_ms": round(self.last * 1000, 1),
            "loop_lag_max_10s_ms": round(self.worst(10.0) * 1000, 1),
            "loop_lag_max_60s_ms": round(self.worst(WINDOW) * 1000, 1),
            "loop_lag_p99_60s_ms": round(p99 * 1000, 1),
            "loop_stalls_total": self.stalls_total,
        }
