"""``manager.metrics``: this manager's health figures (issue 11).

The event loop's lag (:mod:`..lag`: scheduled against actual wake-ups),
the garbage collector's pauses (:mod:`..heap`),
the store's size and Raft's state, and why the manager stopped
acknowledging writes if it did (:mod:`..disk`). ``node inspect`` of the
manager that answers carries the same figures as ``manager_metrics``.
"""

from __future__ import annotations

from typing import Any

from .. import heap, lag
from ..store import Store
from .base import Resource, method


def manager_metrics(store: Store) -> dict[str, Any]:
    snap = store.snapshot()
    status = store.status()
    monitor = lag.current()
    keeper = heap.current()
    return {
        **(monitor.stats() if monitor is not None else {}),
        **(keeper.stats() if keeper is not None else {}),
        "store_index": snap.index,
        "tasks": snap.count("task"),
        "services": snap.count("service"),
        "nodes": snap.count("node"),
        "raft_log_entries": int(status.get("log_len", 0)),
        "raft_term": int(status.get("raft_term", 0)),
        "raft_patience_s": round(store.raft_patience, 2),
        "leader": store.is_leader,
        "disk_error": store.disk_error,
    }


class ManagerApi(Resource):
    @method("manager.metrics")
    async def metrics(self, req: object) -> Any:
        return manager_metrics(self.store)
