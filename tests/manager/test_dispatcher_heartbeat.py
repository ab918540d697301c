"""The dispatcher's heartbeat stretches with the number of sessions, so that
the leader's pings stay bounded (the footprint bench's 1,000 nodes), while a
small cluster keeps its fast failure detection."""

from __future__ import annotations

from typing import Any

from pyswarm.manager.dispatcher import MAX_PINGS_PER_SECOND, Dispatcher


def dispatcher_with(sessions: int) -> Dispatcher:
    d = Dispatcher(store=None, client_keys=[])  # type: ignore[arg-type]
    d._sessions = {f"n{i}": (Any, Any) for i in range(sessions)}  # type: ignore[misc]
    return d


def test_small_clusters_keep_the_fast_heartbeat() -> None:
    for n in (0, 8, 100):
        assert dispatcher_with(n).heartbeat() == (0.5, 2.0), n


def test_large_clusters_stay_within_the_ping_budget() -> None:
    every, dead_after = dispatcher_with(1000).heartbeat()
    assert (every, dead_after) == (5.0, 20.0)
    assert 1000 / every <= MAX_PINGS_PER_SECOND
