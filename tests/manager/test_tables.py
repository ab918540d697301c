"""The store's in-memory tables: snapshots that never change under their
reader, indexes kept by the apply, typed objects cached per version, and a
dump that stays plain dicts."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_service, make_task  # noqa: E402

from pyswarm.manager.store import Snapshot, _apply_ops  # noqa: E402
from pyswarm.manager.tables import NBUCKETS, PMap, Tables  # noqa: E402
from pyswarm.models import TaskState  # noqa: E402


def test_a_frozen_map_never_sees_later_writes() -> None:
    tables = Tables()
    for i in range(NBUCKETS * 4):
        tables.put("task", f"t{i}", {"id": f"t{i}", "service_id": "s", "state": "pending"})
    frozen = tables.freeze()
    tables.put("task", "t1", {"id": "t1", "service_id": "s", "state": "running"})
    tables.delete("task", "t2")
    tables.put("task", "new", {"id": "new", "service_id": "s2", "state": "pending"})
    old = frozen.kinds["task"]
    assert old.get("t1").raw["state"] == "pending", "a snapshot saw a later write"
    assert "t2" in old and "new" not in old and len(old) == NBUCKETS * 4
    assert sorted(frozen.ids("state", "running")) == [], "the snapshot's index moved"
    assert len(frozen.ids("service", "s")) == NBUCKETS * 4
    now = tables.freeze()
    assert now.ids("state", "running") == ["t1"]
    assert "t2" not in now.ids("service", "s") and now.ids("service", "s2") == ["new"]


def test_writes_without_a_snapshot_in_between_do_not_copy() -> None:
    tables = Tables()
    tables.put("task", "a", {"id": "a", "service_id": "s", "state": "new"})
    first = tables.kinds["task"]
    tables.put("task", "b", {"id": "b", "service_id": "s", "state": "new"})
    assert tables.kinds["task"] is first
    tables.freeze()
    tables.put("task", "c", {"id": "c", "service_id": "s", "state": "new"})
    assert tables.kinds["task"] is not first, "wrote into a map a snapshot holds"


def test_indexes_follow_patch_advance_and_delete() -> None:
    svc = make_service("web")
    task = make_task(svc)
    tables = Tables()
    _apply_ops(tables, [["put", "task", task.id, task.to_dict()]])
    _apply_ops(tables, [["advance", task.id, "assigned", {"node_id": "n1"}]])
    snap = Snapshot(1, frozen=tables.freeze())
    assert [t.id for t in snap.tasks_on("n1")] == [task.id]
    assert [t.id for t in snap.tasks_in(TaskState.ASSIGNED)] == [task.id]
    assert snap.tasks_in(TaskState.PENDING) == []
    assert [t.id for t in snap.tasks_of(svc.id)] == [task.id]
    _apply_ops(tables, [["delete", "task", task.id]])
    snap = Snapshot(2, frozen=tables.freeze())
    assert snap.tasks_on("n1") == [] and snap.tasks_of(svc.id) == [] and snap.service_ids_with_tasks() == []


def test_typed_objects_are_built_once_per_version() -> None:
    svc = make_service("web")
    task = make_task(svc)
    tables = Tables()
    _apply_ops(tables, [["put", "task", task.id, task.to_dict()]])
    a = Snapshot(1, frozen=tables.freeze()).task(task.id)
    b = Snapshot(1, frozen=tables.freeze()).task(task.id)
    assert a is b, "the same version was deserialized twice"
    _apply_ops(tables, [["patch", "task", task.id, {"message": "x"}]])
    c = Snapshot(2, frozen=tables.freeze()).task(task.id)
    assert c is not a and c is not None and c.message == "x" and a is not None and a.message == ""


def test_a_dump_pickles_plain_dicts() -> None:
    svc = make_service("web")
    tables = Tables()
    tables.put("service", svc.id, svc.to_dict())
    data = pickle.loads(pickle.dumps({"objects": tables.plain(), "index": 3}))
    assert type(data["objects"]["service"]) is dict and data["objects"]["service"][svc.id] == svc.to_dict()
    again = Tables.load(data["objects"])
    assert Snapshot(3, frozen=again.freeze()).service(svc.id) == svc


def test_pmap_counts_and_iterates() -> None:
    pm = PMap(0)
    for i in range(500):
        pm.set(str(i), i)
    pm.set("7", 70)
    assert len(pm) == 500 and pm.get("7") == 70
    assert pm.pop("7") == 70 and pm.pop("7") is None and len(pm) == 499
    assert sorted(pm.values()) == sorted(i for i in range(500) if i != 7)


def test_the_running_index_counts_tasks_running_and_meant_to() -> None:
    """What ``service ls`` counts per service, without a pass over 100,000 tasks."""
    svc = make_service("web")
    a, b = make_task(svc, slot=1), make_task(svc, slot=2)
    tables = Tables()
    _apply_ops(tables, [["put", "task", t.id, t.to_dict()] for t in (a, b)])
    _apply_ops(tables, [["advance", t.id, "running", {"node_id": "n1"}] for t in (a, b)])
    assert Snapshot(1, frozen=tables.freeze()).count_tasks("running", svc.id) == 2
    _apply_ops(tables, [["patch", "task", a.id, {"desired_state": "shutdown"}]])
    assert Snapshot(2, frozen=tables.freeze()).count_tasks("running", svc.id) == 1, "a task asked to stop counted"
    _apply_ops(tables, [["advance", b.id, "failed", {}]])
    assert Snapshot(3, frozen=tables.freeze()).count_tasks("running", svc.id) == 0
