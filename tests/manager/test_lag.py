"""The event loop's lag monitor: stalls recorded as intervals, figures
exported, and a real stall on a running loop seen."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pyswarm.manager.lag import LoopLag


def test_stalls_are_intervals_that_heartbeats_can_discount() -> None:
    lag = LoopLag(period=0.05, clock=lambda: 100.0)
    lag.record(10.0, 10.001)  # on time
    lag.record(11.0, 13.0)  # held for 2 s
    lag.record(20.0, 20.5)
    assert lag.stalled_between(9.0, 14.0) == 2.0
    assert lag.stalled_between(12.0, 20.25) == 1.25
    assert lag.stalled_between(14.0, 19.0) == 0.0
    assert lag.stalls_total == 2


def test_a_blocked_loop_shows_in_the_figures() -> None:
    async def go() -> dict[str, float]:
        lag = LoopLag(period=0.01)
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # what a planner pass on the loop used to do
        await asyncio.sleep(0.05)
        task.cancel()
        return lag.stats()
    stats = asyncio.run(go())
    assert stats["loop_lag_max_10s_ms"] >= 250, stats
    assert stats["loop_stalls_total"] >= 1, stats


def test_a_stall_says_how_much_of_it_was_the_loops_own_work() -> None:
    """The loop's own CPU in the worst stall: most of a stall spent
    computing on the loop, little of one spent waiting (here a sleep: the
    GIL held by another thread or a core given to another process look
    the same to the loop)."""
    async def go(hold: Any) -> dict[str, Any]:
        lag = LoopLag(period=0.01)
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.05)
        hold()
        await asyncio.sleep(0.05)
        task.cancel()
        return lag.stats()

    def compute() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass

    busy = asyncio.run(go(compute))
    assert busy["loop_lag_max_60s_ms"] >= 250 and busy["loop_lag_max_60s_cpu_ms"] >= 250, busy
    assert busy["loop_stall_cpu_max_60s_ms"] >= busy["loop_lag_max_60s_cpu_ms"], busy
    waited = asyncio.run(go(lambda: time.sleep(0.3)))
    assert waited["loop_lag_max_60s_ms"] >= 250 and waited["loop_lag_max_60s_cpu_ms"] < 100, waited
    if waited["loop_lag_max_60s_runqueue_ms"] is not None:  # Linux: a sleep is no wait for a core
        assert waited["loop_lag_max_60s_runqueue_ms"] < 100, waited
