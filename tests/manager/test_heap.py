"""The manager's garbage collection (manager/heap.py): over a big store no
full collection visits what survived (it is frozen), young cycles are still
collected, and once the store is small again everything is looked at."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pyswarm.manager import heap
from pyswarm.manager.heap import BIG, FREEZE_AFTER, FULL_AFTER, Heap


class Cyclic:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector() -> Iterator[None]:
    """This test's process under the manager's policy, restored after."""
    before = gc.get_threshold()
    heap.install()
    gc.disable()  # only the collections a test runs: each counts
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*before)
        heap._INSTALLED = False


def young_collections(n: int) -> None:
    for _ in range(n):
        gc.collect(1)


def test_install_switches_automatic_full_collections_off(collector: None) -> None:
    assert gc.get_threshold()[2] == heap.NEVER


def test_over_a_big_store_what_survives_is_frozen_and_young_cycles_still_die(collector: None) -> None:
    size = [BIG]
    keeper = Heap(lambda: size[0])
    keeper.attach()
    try:
        kept = [{"task": i, "spec": {"image": "x"}} for i in range(1000)]
        garbage = weakref.ref(Cyclic())  # a cycle that dies young
        young_collections(FREEZE_AFTER - 1)
        keeper.step()
        assert keeper.freezes == 0, "froze before enough young collections promoted anything"
        young_collections(1)
        keeper.step()
        assert keeper.freezes == 1
        assert gc.get_freeze_count() >= len(kept), "what survived was not frozen"
        assert garbage() is None, "a young cycle survived into the permanent generation"
        late = Cyclic()
        later = weakref.ref(late)
        young_collections(FREEZE_AFTER)
        keeper.step()  # frozen with it
        del late
        gc.collect()
        assert later() is not None, "a full collection looked at frozen objects"
        # the store back to a handful: everything is looked at again
        size[0] = 3
        for _ in range(heap.UNFREEZE_AFTER - 1):
            keeper.step()
        assert gc.get_freeze_count() > 0, "unfrozen the moment the store was small: the old snapshots still held it"
        keeper.step()
        assert gc.get_freeze_count() == 0 and later() is None, "the frozen cycle was not collected once small"
        assert keeper.full_collections == 1
        assert keeper.stats()["gc_pause_max_60s_ms"] >= 0.0
    finally:
        keeper.detach()


def test_a_small_store_gets_a_full_collection_as_often_as_cpython_would(collector: None) -> None:
    keeper = Heap(lambda: 3)
    keeper.attach()
    try:
        young_collections(FULL_AFTER - 1)
        keeper.step()
        assert keeper.full_collections == 0
        old = Cyclic()
        young_collections(2)  # promoted to the oldest generation, then dropped
        ref = weakref.ref(old)
        del old
        keeper.step()
        assert keeper.full_collections == 1 and ref() is None
    finally:
        keeper.detach()


def test_the_pause_record_stays_bounded_however_many_collections_run(collector: None) -> None:
    """A record per collection, pruned only when the figures were read, grew
    a manager that nobody asked by every young collection it ran."""
    now = [1000.0]
    keeper = Heap(lambda: 3, clock=lambda: now[0])
    for i in range(20_000):
        now[0] = 1000.0 + i * 0.01  # 100 collections a second for 200 s
        generation = 2 if i == 19_990 else 1
        keeper._on_gc("start", {"generation": generation})
        keeper._on_gc("stop", {"generation": generation})
    assert len(keeper._pauses) <= heap.WINDOW + 2, f"{len(keeper._pauses)} records kept"
    stats = keeper.stats()
    assert stats["gc_pause_max_60s_ms"] >= 0 and stats["gc_pause_max_60s_generation"] in (1, 2)
