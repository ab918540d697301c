"""The Raft store on a real pysyncobj node: transactions, forward-only task
state, watchers, and recovery from its journal after a restart."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_service, make_task  # noqa: E402

from pyswarm.manager.store import RaftConfig, Store, TransactionAborted  # noqa: E402
from pyswarm.models import TaskState  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def started(data_dir: Path, port: int) -> Store:
    store = Store(RaftConfig(f"127.0.0.1:{port}", [], data_dir, "test-secret"))
    store.start()
    deadline = asyncio.get_running_loop().time() + 10
    while not store.is_leader:
        assert asyncio.get_running_loop().time() < deadline, f"no leader after 10s: {store.status()}"
        await asyncio.sleep(0.02)
    return store


@pytest.fixture
def run() -> object:
    return asyncio.run


def test_transaction_and_precondition(tmp_path: Path) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            svc = make_service("web")
            await store.commit([["put", "service", svc.id, svc.to_dict()]])
            assert store.snapshot().service(svc.id) == svc
            with pytest.raises(TransactionAborted, match="version is 1, expected 7"):
                await store.commit([["expect", "service", svc.id, "version", 7],
                                    ["delete", "service", svc.id]])
            assert store.snapshot().service(svc.id) is not None, "an aborted transaction applied its delete"
        finally:
            store.stop()
    asyncio.run(go())


def test_task_state_only_moves_forward(tmp_path: Path) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            task = make_task(make_service("web"), state=TaskState.ASSIGNED)
            await store.commit([["put", "task", task.id, task.to_dict()]])
            await store.commit([["advance", task.id, "running", {"ip": "10.240.1.2"}]])
            await store.commit([["advance", task.id, "starting", {"ip": "10.9.9.9"}]])  # late report
            got = store.snapshot().task(task.id)
            assert got is not None and got.state == TaskState.RUNNING and got.ip == "10.240.1.2"
            await store.commit([["advance", task.id, "failed", {"exit_code": 1}]])
            await store.commit([["advance", task.id, "running", {}]])
            got = store.snapshot().task(task.id)
            assert got is not None and got.state == TaskState.FAILED, f"terminal state moved: {got}"
        finally:
            store.stop()
    asyncio.run(go())


def test_watchers_each_see_a_change(tmp_path: Path) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            a, b = store.watcher(), store.watcher()
            await a.wait(0.1)
            await b.wait(0.1)  # the first wait returns at once
            svc = make_service("web")
            await store.commit([["put", "service", svc.id, svc.to_dict()]])
            assert await a.wait(2.0) and await b.wait(2.0), "a watcher missed the change"
            assert not await a.wait(0.05)
        finally:
            store.stop()
    asyncio.run(go())


def test_state_survives_restart(tmp_path: Path) -> None:
    port = free_port()
    svc = make_service("web")

    async def first() -> None:
        store = await started(tmp_path, port)
        try:
            for i in range(50):
                await store.commit([["put", "service", f"s{i}", make_service(f"s{i}").to_dict()]])
            await store.commit([["put", "service", svc.id, svc.to_dict()]])
        finally:
            store.stop()

    async def second() -> None:
        store = await started(tmp_path, port)
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while store.snapshot().service(svc.id) is None:
                assert asyncio.get_running_loop().time() < deadline, "state not recovered from the journal"
                await asyncio.sleep(0.05)
            assert len(store.snapshot().services()) == 51
        finally:
            store.stop()

    asyncio.run(first())
    asyncio.run(second())


def test_changes_since_an_index_name_what_changed(tmp_path: Path) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            svc = make_service("web")
            await store.commit([["put", "service", svc.id, svc.to_dict()]])
            before = store.snapshot()
            task = make_task(svc, node_id="n1", state=TaskState.ASSIGNED)
            await store.commit([["put", "task", task.id, task.to_dict()]])
            after = store.snapshot()
            assert after.changed_since(before.index) == {("task", task.id), ("task.service", svc.id),
                                                         ("task.node", "n1"), ("task.slot", f"{svc.id}/1")}
            assert after.changed_since(after.index) == set()
            assert before.task(task.id) is None, "an older snapshot saw a later commit"
            assert after.changed_since(-10_000) is None, "changes older than those kept must read as unknown"
        finally:
            store.stop()
    asyncio.run(go())


def test_without_a_leader_a_reachable_majority_reads_as_an_election(tmp_path: Path) -> None:
    from pyswarm.errors import ElectionError, NoQuorumError

    store = Store(RaftConfig("127.0.0.1:1", [], tmp_path, "s"))
    three = {"partner_nodes_count": 2, "partner_node_status_server_a:1": 2, "partner_node_status_server_b:1": 0}
    store.status = lambda: three  # type: ignore[method-assign]
    err = store._no_leader_error("no leader")
    assert isinstance(err, ElectionError) and str(err).startswith("leader election in progress, retry"), err
    three["partner_node_status_server_a:1"] = 0
    err = store._no_leader_error("no leader")
    assert type(err) is NoQuorumError and "no quorum: 1 of 3 managers reachable" in str(err), err


def test_a_write_that_lost_its_leader_mid_commit_is_not_called_refused(tmp_path: Path) -> None:
    """pysyncobj's LEADER_CHANGED (and a commit that timed out) leave the
    write in some log: it may still be applied, so the error must not read
    as a refusal to retry (the soak saw such a create applied everywhere)."""
    from pyswarm.errors import NoQuorumError, UncertainWriteError

    store = Store(RaftConfig("127.0.0.1:1", [], tmp_path, "s"))
    three = {"partner_nodes_count": 2, "partner_node_status_server_a:1": 2, "partner_node_status_server_b:1": 0}
    store.status = lambda: three  # type: ignore[method-assign]
    err = store._uncertain("the leader changed before it committed")
    assert isinstance(err, UncertainWriteError), err
    assert "may still be applied; check before repeating it" in str(err) and "retry" not in str(err), err
    three["partner_node_status_server_a:1"] = 0
    err = store._uncertain("the leader changed before it committed")
    assert type(err) is NoQuorumError and "may still be applied" in str(err), err


def test_a_full_state_directory_stops_acknowledging_and_recovers(tmp_path: Path) -> None:
    """The guard's decision on a real store, with the free space faked: off
    Raft and every write refused with the reason, back once space is free."""
    from pyswarm.errors import ClusterError
    from pyswarm.manager import disk

    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            free = [10 * disk.RESERVE]
            store._guard._free = lambda path: free[0]
            svc = make_service("web")
            await store.commit([["put", "service", svc.id, svc.to_dict()]])
            free[0] = disk.RESERVE - 1
            store._guard.step()
            assert store.disk_error.startswith(f"no space left on {tmp_path}: 32.0 MiB free"), store.disk_error
            assert not store.is_leader, "a leader that cannot journal kept leading"
            with pytest.raises(ClusterError, match="no space left on"):
                await store.commit([["delete", "service", svc.id]])
            assert store.snapshot().service(svc.id) is not None, "reads stop working"
            free[0] = disk.RESERVE + 1
            store._guard.step()
            assert store.disk_error, "recovered without the hysteresis (1.5 x the reserve)"
            free[0] = 2 * disk.RESERVE
            store._guard.step()
            assert store.disk_error == ""
            deadline = asyncio.get_running_loop().time() + 10
            while not store.is_leader:
                assert asyncio.get_running_loop().time() < deadline, "did not lead again once space was free"
                await asyncio.sleep(0.05)
            await store.commit([["delete", "service", svc.id]])
            assert store.snapshot().service(svc.id) is None
        finally:
            store.stop()
    asyncio.run(go())


def test_a_damaged_journal_is_refused_at_start_with_the_way_out(tmp_path: Path) -> None:
    from pyswarm.errors import ClusterError

    port = free_port()

    async def first() -> None:
        store = await started(tmp_path, port)
        try:
            for i in range(20):
                await store.commit([["put", "service", f"s{i}", make_service(f"s{i}").to_dict()]])
        finally:
            store.stop()

    asyncio.run(first())
    journal = tmp_path / "raft.journal"
    data = bytearray(journal.read_bytes())
    data[60:64] = b"\xff\xff\xff\x00"  # the first record's size
    journal.write_bytes(bytes(data))

    async def second() -> None:
        store = Store(RaftConfig(f"127.0.0.1:{port}", [], tmp_path, "test-secret"))
        with pytest.raises(ClusterError, match=r"the Raft journal is damaged: .*raft.journal is damaged at byte 40.*"
                                               r"move just the journal aside"):
            store.start()
        store.stop()

    asyncio.run(second())
