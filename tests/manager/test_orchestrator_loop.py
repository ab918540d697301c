"""The orchestrator's loop on a real single-node store: a big scale is
created in bounded passes that go on where the last one stopped, scaling
back leaves what the replicas need, and a slot touched by a change is
refilled by a pass that looks at that slot only."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_node, make_service, make_task  # noqa: E402
from test_store import free_port, started  # noqa: E402

from pyswarm import protocol  # noqa: E402
from pyswarm.manager import orchestrator  # noqa: E402
from pyswarm.manager.orchestrator import Orchestrator  # noqa: E402
from pyswarm.models import Cluster, NodeStatus, TaskState  # noqa: E402


async def until(what: str, cond: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_scale_up_in_bounded_passes_then_back_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrator, "NEW_TASKS_PER_PASS", 40)

    async def go() -> None:
        store = await started(tmp_path, free_port())
        loop = Orchestrator(store)
        runner = asyncio.create_task(loop.run())
        try:
            svc = make_service("web", replicas=3)
            await store.commit([["put", "cluster", "c", Cluster(id="c").to_dict()],
                                ["put", "service", svc.id, svc.to_dict()]])
            await until("3 tasks", lambda: store.snapshot().count("task") == 3)
            big = svc.to_dict()
            big["spec"]["replicas"] = 500
            before = store.snapshot().index
            await store.commit([["put", "service", svc.id, big]])
            await until("500 tasks", lambda: store.snapshot().count("task") == 500)
            snap = store.snapshot()
            slots = sorted(t.slot for t in snap.tasks())
            assert slots == list(range(1, 501)), "a slot got two tasks, or none"
            assert snap.index - before >= 500 // 40, "the 497 new tasks did not come in bounded transactions"
            # a task of one slot ends: the pass that sees it refills that slot
            victim = snap.tasks_in_slot(svc.id, 250)[0]
            await store.commit([["advance", victim.id, TaskState.FAILED.value, {}]])
            await until("slot 250 refilled", lambda: any(
                not t.state.terminal for t in store.snapshot().tasks_in_slot(svc.id, 250)))
            small = dict(big, spec={**big["spec"], "replicas": 3})
            await store.commit([["put", "service", svc.id, small]])
            await until("what 3 replicas need", lambda: store.snapshot().count("task") == 3)
            assert sorted(t.slot for t in store.snapshot().tasks()) == [1, 2, 3]
        finally:
            loop.stop()
            await asyncio.wait_for(runner, 10)
            store.stop()
    asyncio.run(go())


def test_the_tasks_of_a_down_node_are_lost_when_its_grace_ends(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in the store changes when a down node's grace runs out
    (protocol.LOST_GRACE: its agent fences itself meanwhile), so the loop
    wakes for it; before that its task is neither orphaned nor replaced."""
    monkeypatch.setattr(protocol, "LOST_GRACE", 1.5)

    async def go() -> None:
        store = await started(tmp_path, free_port())
        led_since = time.time()
        loop = Orchestrator(store, led_since)
        runner = asyncio.create_task(loop.run())
        try:
            node = make_node()
            svc = make_service("web", replicas=1)
            task = make_task(svc, slot=1, node_id=node.id, state=TaskState.RUNNING)
            # and one an earlier leader marked down a minute ago: its grace is this leader's to count
            other, other_svc = make_node(), make_service("api", replicas=1)
            old_task = make_task(other_svc, slot=1, node_id=other.id, state=TaskState.RUNNING)
            await store.commit([["put", "cluster", "c", Cluster(id="c").to_dict()],
                                ["put", "node", node.id, node.to_dict()],
                                ["put", "node", other.id, {**other.to_dict(), "status": NodeStatus.DOWN.value,
                                                           "down_since": led_since - 60.0}],
                                ["put", "service", svc.id, svc.to_dict()],
                                ["put", "service", other_svc.id, other_svc.to_dict()],
                                ["put", "task", task.id, task.to_dict()],
                                ["put", "task", old_task.id, old_task.to_dict()]])
            down_at = time.time()
            await store.commit([["patch", "node", node.id, {"status": NodeStatus.DOWN.value, "down_since": down_at,
                                                            "status_message": "no heartbeat for 2s"}]])
            await asyncio.sleep(0.8)
            assert [t.state for t in store.snapshot().tasks()] == [TaskState.RUNNING] * 2, "lost within its grace"
            await until("both tasks orphaned once the grace ended", lambda: sum(
                t.state is TaskState.ORPHANED for t in store.snapshot().tasks()) == 2, timeout=10)
            lost_after = next(t for t in store.snapshot().tasks() if t.id == task.id).state_since - down_at
            assert 1.5 <= lost_after < 5, f"orphaned {lost_after:.2f}s after the node went down"
            assert len([t for t in store.snapshot().tasks() if t.holds_slot]) == 2, "their slots were not refilled"
            lost_after = next(t for t in store.snapshot().tasks() if t.id == old_task.id).state_since - led_since
            assert 1.5 <= lost_after < 5, \
                f"the task of a node an earlier leader marked down was orphaned {lost_after:.2f}s after this one took over"
        finally:
            loop.stop()
            await asyncio.wait_for(runner, 10)
            store.stop()
    asyncio.run(go())
