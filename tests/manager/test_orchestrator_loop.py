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

from factories import make_service  # noqa: E402
from test_store import free_port, started  # noqa: E402

from pyswarm.manager import orchestrator  # noqa: E402
from pyswarm.manager.orchestrator import Orchestrator  # noqa: E402
from pyswarm.models import Cluster, TaskState  # noqa: E402


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
