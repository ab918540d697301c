"""manager/ops.py: operations are checked against the model, at build and at apply."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_task  # noqa: E402
from test_store import free_port, started  # noqa: E402

from pyswarm.manager import ops  # noqa: E402
from pyswarm.manager.store import TransactionAborted  # noqa: E402
from pyswarm.models import TaskState  # noqa: E402


@pytest.mark.parametrize("build, message", [
    (lambda: ops.patch("task", "t1", desired_sate="shutdown"), "patch task: unknown field 'desired_sate'"),
    (lambda: ops.patch("task", "t1", state="running"), "field 'state' cannot be written .*advance"),
    (lambda: ops.patch("tsak", "t1", message="x"), "patch: unknown kind 'tsak'"),
    (lambda: ops.check(["advance", "t1", "running", {"state": "failed"}]), "field 'state' cannot be written"),
    (lambda: ops.advance("t1", None, ipp="10.0.0.1"), "advance task: unknown field 'ipp'"),
    (lambda: ops.expect("service", "s1", "verison", 1), "expect service: unknown field 'verison'"),
    (lambda: ops.put_raw("node", "n1", {"id": "n1", "hostname": "h", "addr": "a", "colour": "red"}),
     "put node: unknown field 'colour'"),
    (lambda: ops.check(["advance", "t1", "sideways", {}]), "unknown task state 'sideways'"),
    (lambda: ops.check(["upsert", "task", "t1", {}]), "unknown operation 'upsert'"),
    (lambda: ops.check(["delete", "task"]), "delete takes 2 arguments, got 1"),
])
def test_an_operation_naming_what_the_model_lacks_is_refused_when_built(build: object, message: str) -> None:
    with pytest.raises(ops.InvalidOperation, match=message):
        build()  # type: ignore[operator]


def test_the_store_refuses_a_bad_operation_and_applies_none_of_its_transaction(tmp_path: Path) -> None:
    """A raw list that skips the constructors is checked by the apply itself, on every replica."""
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            task = make_task()
            await store.commit([ops.put(task)])
            for bad in (["patch", "task", task.id, {"state": "complete"}],
                        ["patch", "task", task.id, {"desired_sate": "shutdown"}]):
                with pytest.raises(TransactionAborted, match="invalid operation"):
                    await store.commit([ops.patch("task", task.id, message="first half"), bad])
            seen = store.snapshot().task(task.id)
            assert seen is not None and seen.state == task.state and seen.message == task.message, \
                f"a refused transaction changed the task: {seen}"
            await store.commit([ops.advance(task.id, TaskState.RUNNING, ip="10.240.0.5")])
            moved = store.snapshot().task(task.id)
            assert moved is not None and (moved.state, moved.ip) == (TaskState.RUNNING, "10.240.0.5")
        finally:
            store.stop()
    asyncio.run(go())
