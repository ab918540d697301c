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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

PERIOD = 0.05  # seconds between wake-ups
STALL = 0.02  # a wake-up this late counts as a stall (recorded as an interval)
WARN_AFTER = 0.1  # a stall this long is logged
WINDOW = 60.0  # seconds of history kept for the figures


_CURRENT: LoopLag | None = None


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
        self._stalls: deque[tuple[float, float]] = deque()  # (from, to) the loop was held
        self.stalls_total = 0
        self._last_warned = 0.0

    async def run(self) -> None:
        global _CURRENT
        _CURRENT = self
        expected = self._clock() + self.period
        while True:
            await asyncio.sleep(max(0.0, expected - self._clock()))
            now = self._clock()
            self.record(expected, now)
            expected = now + self.period

    def record(self, expected: float, woke: float) -> None:
        """One wake-up that was due at ``expected`` and came at ``woke``."""
        lag = max(0.0, woke - expected)
        self.last = lag
        self._samples.append((woke, lag))
        if lag >= STALL:
            self._stalls.append((expected, woke))
            self.stalls_total += 1
        if lag >= WARN_AFTER and woke - self._last_warned > 5.0:
            self._last_warned = woke
            log.warning("event loop stalled for %.0f ms (heartbeats, DNS and the API waited)", lag * 1000)
        horizon = woke - WINDOW
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        while self._stalls and self._stalls[0][1] < horizon:
            self._stalls.popleft()

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
        return {
            "loop_lag_ms": round(self.last * 1000, 1),
            "loop_lag_max_10s_ms": round(self.worst(10.0) * 1000, 1),
            "loop_lag_max_60s_ms": round(self.worst(WINDOW) * 1000, 1),
            "loop_lag_p99_60s_ms": round(p99 * 1000, 1),
            "loop_stalls_total": self.stalls_total,
        }
