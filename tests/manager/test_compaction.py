"""The Raft journal and dump on disk follow the live state, up and down, on
a real pysyncobj store: scaled to 20,000 tasks and back to 3, the files
shrink to what 3 tasks need within seconds (20 s on a quiet machine; the wait allows 60) (pysyncobj alone kept the
journal file at its peak for good and the dump for a minute), and the
store comes back whole from them after a restart."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_service, make_tasks  # noqa: E402
from support import wait_until  # noqa: E402
from test_store import free_port, started  # noqa: E402

from pyswarm.manager import compaction, ops  # noqa: E402

TASKS = 20_000
BATCH = 2_000  # what the planners commit at once (manager/loop.py MAX_OPS_PER_COMMIT)


def sizes(data_dir: Path) -> dict[str, int]:
    """Bytes on disk of the journal file and the dump (0 when absent)."""
    out = {}
    for name in ("raft.journal", "raft.dump"):
        path = data_dir / name
        out[name] = path.stat().st_size if path.exists() else 0
    return out


def test_journal_and_dump_follow_the_live_state_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # these test tasks are ~300 bytes each (a real one ~1 kB): 20,000 make a 6 MB journal
    monkeypatch.setattr(compaction, "JOURNAL_FLOOR", 1 << 20)

    async def go() -> None:
        port = free_port()
        store = await started(tmp_path, port)
        svc = make_service("web", replicas=TASKS)
        tasks = make_tasks(svc)
        try:
            await store.commit([ops.put(svc)])
            # the journal file's largest size, sampled as it grows: a compaction
            # may cut it back at any point of the way up, so one late look can
            # see it already cut (the full run saw 3.1 MB against 6.1 MB)
            grown = 0
            for i in range(0, TASKS, BATCH):
                await store.commit([ops.put(t) for t in tasks[i:i + BATCH]], timeout=60)  # a loaded machine
                grown = max(grown, sizes(tmp_path)["raft.journal"])
            state = store._state
            # the journal outgrew the (empty) dump: a compaction wrote the tasks out
            # (the forked child writes the dump and renames it in place: a look
            # in between reads no file, so wait for the file of that dump)
            def dumped() -> tuple[bool, tuple[int, dict[str, int]]]:
                now = sizes(tmp_path)
                return state.dumped_objects > TASKS // 2 and now["raft.dump"] > 200 << 10, (state.dumped_objects, now)

            peak = wait_until(dumped, 60, "a dump of the scaled-up state")[1]
            peak["raft.journal"] = max(grown, peak["raft.journal"])
            kept = tasks[:3]
            for i in range(3, TASKS, BATCH):
                await store.commit([ops.delete("task", t.id) for t in tasks[i:i + BATCH]], timeout=60)
            assert state.live_objects() < 10, state.live_objects()

            def small() -> tuple[bool, dict[str, int]]:
                now = sizes(tmp_path)
                return now["raft.journal"] <= 2 * compaction.FILE_MIN and now["raft.dump"] < 64 << 10, now

            after = wait_until(small, 60, f"journal and dump back to 3 tasks' size (at {TASKS}: {peak})")
            assert peak["raft.journal"] > 2 * after["raft.journal"], (peak, after)
            assert peak["raft.dump"] > 4 * after["raft.dump"], (peak, after)
            index = store.snapshot().index
        finally:
            store.stop()
        again = await started(tmp_path, port)  # from the cut journal and the new dump
        try:
            snap = again.snapshot()
            assert sorted(t.id for t in snap.tasks()) == sorted(t.id for t in kept), len(snap.tasks())
            assert snap.index == index and snap.service(svc.id) is not None, (snap.index, index)
            await again.commit([ops.delete("task", kept[0].id)], timeout=60)  # and the journal takes writes again
            assert len(again.snapshot().tasks()) == 2
        finally:
            again.stop()
    asyncio.run(go())
