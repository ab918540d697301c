"""The event log on a real store: what it records, and that each look
compares only what the store says changed (``changed_since``), so its cost
follows the change and not the cluster's size."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_node, make_service, make_tasks  # noqa: E402
from test_store import free_port, started  # noqa: E402

from pyswarm.manager import events, ops, store as store_mod  # noqa: E402
from pyswarm.manager.events import EventLog  # noqa: E402
from pyswarm.manager.store import Store  # noqa: E402
from pyswarm.models import TaskState  # noqa: E402


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids the log compares task by task, in order."""
    seen: list[str] = []
    real = events._task_events

    def counted(tid: str, *rest: Any) -> list[events.Found]:
        seen.append(tid)
        return real(tid, *rest)

    monkeypatch.setattr(events, "_task_events", counted)
    return seen


async def _seeded(store: Store, tasks: int) -> tuple[EventLog, Any, list[Any]]:
    node = make_node(hostname="w1")
    svc = make_service("web", replicas=tasks)
    placed = make_tasks(svc, node_id=node.id, state=TaskState.ASSIGNED)
    await store.commit([ops.put(node), ops.put(svc)])
    for i in range(0, tasks, 500):
        await store.commit([ops.put(t) for t in placed[i:i + 500]], timeout=60)  # a loaded machine
    log = EventLog(store)
    log.observe()  # the first look: the baseline; only who leads is news
    assert [e.action for e in log.events] == ["leader"], f"the first look recorded the store as new: {log.events}"
    log.events.clear()
    return log, node, placed


def test_a_task_report_compares_that_task_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            log, node, placed = await _seeded(store, 2000)
            seen = _counting(monkeypatch)
            await store.commit([ops.advance(placed[7].id, TaskState.RUNNING, ip="10.240.1.9")])
            log.observe()
            assert seen == [placed[7].id], f"one report compared {len(seen)} tasks"
            got = [(e.type, e.action, e.id, e.attrs.get("node")) for e in log.events]
            assert got == [("task", "running", placed[7].id, "w1")], got
            seen.clear()
            log.observe()  # nothing changed since
            assert seen == [] and len(log.events) == 1, (seen, list(log.events))
        finally:
            store.stop()
    asyncio.run(go())


def test_changes_between_looks_are_all_recorded(tmp_path: Path) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            log, node, placed = await _seeded(store, 10)
            svc_id = placed[0].service_id
            await store.commit([ops.advance(placed[1].id, TaskState.RUNNING, ip="10.240.1.2")])
            await store.commit([ops.patch("service", svc_id, version=2)])
            await store.commit([ops.patch("node", node.id, availability="drain")])
            await store.commit([ops.advance(placed[1].id, TaskState.FAILED, error="boom")])
            await store.commit([ops.delete("task", placed[2].id)])
            log.observe()  # one look after five changes
            got = sorted((e.type, e.action, e.id, e.message) for e in log.events)
            assert got == sorted([("task", "failed", placed[1].id, "boom"),
                                  ("service", "update", svc_id, "version 2"),
                                  ("node", "drain", node.id, "")]), got
        finally:
            store.stop()
    asyncio.run(go())


def test_changes_older_than_the_store_keeps_fall_back_to_a_full_compare(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Too many transactions between two looks: the store no longer knows
    what changed, and the log compares everything (and misses nothing)."""
    async def go() -> None:
        monkeypatch.setattr(store_mod, "CHANGES_KEPT", 3)
        store = await started(tmp_path, free_port())
        try:
            log, node, placed = await _seeded(store, 10)
            for t in placed[:5]:  # five transactions: more than the three kept
                await store.commit([ops.advance(t.id, TaskState.RUNNING, ip="10.240.1.3")])
            assert store.snapshot().changed_since(log._index) is None, "the changes were still known"
            log.observe()
            assert sorted(e.id for e in log.events) == sorted(t.id for t in placed[:5]), list(log.events)
        finally:
            store.stop()
    asyncio.run(go())


def test_a_look_in_chunks_records_each_change_once_and_ends(tmp_path: Path) -> None:
    """EventLog.run compares LOOK_CHUNK objects per turn of the loop (a
    scale's 100,000 new tasks in one look held it 0.2-0.4 s): the chunks
    together record what one look would, changes meanwhile go to the next."""
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            log, node, placed = await _seeded(store, 10)
            await store.commit([ops.advance(t.id, TaskState.RUNNING, ip="10.240.1.4") for t in placed[:7]])
            assert log.observe(3) and log.observe(3), "seven changes were done in fewer than three chunks of 3"
            await store.commit([ops.advance(placed[9].id, TaskState.RUNNING, ip="10.240.1.5")])
            assert not log.observe(3), "the look did not end with its seventh object"
            assert sorted(e.id for e in log.events) == sorted(t.id for t in placed[:7]), list(log.events)
            assert not log.observe(3)  # the next look: the change made during the chunks
            assert [e.id for e in log.events][7:] == [placed[9].id], list(log.events)
        finally:
            store.stop()
    asyncio.run(go())
