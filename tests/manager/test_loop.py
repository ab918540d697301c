"""The planners' shared loop on a real single-node store: a look that no
store change asked for costs at most 1/IDLE_SHARE of the time, while a
change still wakes the planner at once."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_service  # noqa: E402
from test_store import free_port, started  # noqa: E402

from pyswarm.manager.loop import IDLE_SHARE, Plan, StoreLoop  # noqa: E402
from pyswarm.manager.store import Snapshot, Store  # noqa: E402

COST = 0.02  # seconds a plan takes


class SlowPlanner(StoreLoop):
    name = "slow"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.looks: list[tuple[float, int]] = []  # (when, store index seen)

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        time.sleep(COST)  # a big cluster's deserialization, in miniature
        self.looks.append((time.monotonic(), snapshot.index))
        return [], 0.01  # asks to look again very soon


def test_unprompted_looks_are_paced_by_their_cost_and_changes_still_wake_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        planner = SlowPlanner(store)
        task = asyncio.create_task(planner.run())
        try:
            await asyncio.sleep(2.0)
            idle = [t for t, _ in planner.looks]
            gaps = [b - a for a, b in zip(idle, idle[1:])]
            assert gaps and min(gaps) >= COST * IDLE_SHARE * 0.9, f"looked every {gaps} s at rest"
            before = len(planner.looks)
            committed = time.monotonic()
            svc = make_service("web")
            await store.commit([["put", "service", svc.id, svc.to_dict()]])
            deadline = committed + COST * IDLE_SHARE / 2
            while not any(index >= store.snapshot().index for _, index in planner.looks[before:]):
                assert time.monotonic() < deadline, "a store change did not wake the planner before its idle pause ended"
                await asyncio.sleep(0.005)
        finally:
            planner.stop()
            await asyncio.wait_for(task, 5)
            store.stop()
    asyncio.run(go())


def test_a_full_pass_costs_at_most_one_hundredth_of_the_time() -> None:
    """At 100,000 tasks a full pass is ~1 s: every 30 s it was 3 % of a core at rest."""
    from pyswarm.manager.loop import FULL_PASS_EVERY, next_full_pass

    assert next_full_pass(1000.0, time.monotonic()) == 1000.0 + FULL_PASS_EVERY  # a cheap pass: every 30 s
    due = next_full_pass(1000.0, time.monotonic() - 2.0)  # a pass that took 2 s
    assert 1200.0 <= due < 1210.0, due
