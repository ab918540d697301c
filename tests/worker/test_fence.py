"""Fencing (worker/fence.py): the lease, the linger after a session, the record."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, cast

from test_worker_agent import CONFIGURE, Session, labels, task
from worker_fakes import FakeDocker

from pyswarm import protocol
from pyswarm.worker import fence


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def cut_off() -> bool:
    return False


def test_a_session_that_ended_leaves_everything_to_a_newer_one(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(protocol, "AGENT_LEASE", 5.0)
    lease = fence.Lease(tmp_path)
    docker = FakeDocker()
    cid = docker.add("demo_web.1.t1", labels("t1"))
    lease.renew()
    ended = time.time()

    async def main() -> str:
        outcome = asyncio.ensure_future(fence.linger(cast(Any, docker), lease, ended))
        await asyncio.sleep(0.3)
        assert not outcome.done(), "it left before the lease ran out or another agent renewed it"
        lease.renew()  # the next session's agent
        return await outcome
    assert run(main()) == "taken over"
    assert docker.containers[cid]["State"] == "running" and ("stop", cid) not in docker.calls


def test_no_manager_for_the_lease_stops_every_task_container(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(protocol, "AGENT_LEASE", 0.4)
    lease = fence.Lease(tmp_path)
    docker = FakeDocker()
    ours = [docker.add(f"demo_web.{i}.t{i}", labels(f"t{i}")) for i in (1, 2)]
    done = docker.add("demo_web.3.t3", labels("t3"), state="exited")
    foreign = docker.add("someone-elses", {})
    lease.renew()
    started = time.monotonic()
    assert run(fence.linger(cast(Any, docker), lease, time.time(), cut_off)) == "fenced"
    assert time.monotonic() - started >= 0.35, "fenced before the lease ran out"
    assert [docker.containers[c]["State"] for c in ours] == ["exited", "exited"]
    assert docker.containers[foreign]["State"] == "running", "a container without our labels was stopped"
    assert ("stop", done) not in docker.calls
    assert set(lease.fenced()) >= set(ours), "the stopped containers were not recorded"
    assert os.stat(lease.record_path).st_mode & 0o077 == 0


def test_a_fenced_container_is_reported_stopped_by_the_cluster(tmp_path: Path) -> None:
    """Its exit (0 on SIGTERM) is not the task completing by itself: a
    ``condition: on-failure`` service would keep it dead. The agent reports
    ``shutdown`` and the orchestrator refills the slot."""
    lease = fence.Lease(tmp_path)
    docker = FakeDocker()
    cid = docker.add("demo_web.1.t1", labels("t1"), state="exited", exit_code=0)
    other = docker.add("demo_web.2.t2", labels("t2"), state="exited", exit_code=0)
    lease.record([cid])

    async def main() -> None:
        s = Session(docker)
        s.agent.lease = lease
        async with s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1"), task("t2", 2)]})
            await s.wait_for("both reported", lambda: s.statuses("t1") and s.statuses("t2"))
            assert s.statuses("t1") == ["shutdown"], s.out
            assert s.statuses("t2") == ["complete"], "an unfenced exit is the task's own"
            report = next(m for m in s.out if m.get("task_id") == "t1")
            assert "fenced" in report["error"] and report["container_id"] == cid
    run(main())
    assert other


def test_the_lease_is_renewed_to_when_the_acknowledged_pong_was_sent(tmp_path: Path) -> None:
    """The lease follows the manager's acknowledgement (Ping.ack), not the
    ping's arrival: a ping delivered late (a link that comes back, a
    loaded host) renews the lease only to when we sent the pong the
    manager says it heard, which is before the manager heard it, so the
    leader's grace (counted from what it last heard) always ends later.
    Nothing renews it before a configure was accepted, nor an ack of a
    pong this agent never sent, nor the agent's start."""
    lease = fence.Lease(tmp_path)
    lease.renew(1.0)
    assert lease.renewed_at() == 1.0
    assert lease.renew(0.5) == 1.0 and lease.renewed_at() == 1.0, "the lease went back in time"

    async def main() -> None:
        s = Session(FakeDocker())
        s.agent.lease = lease
        async with s:
            await s.wait_for("hello", lambda: any(m["op"] == "hello" for m in s.out))
            assert lease.renewed_at() == 1.0, "the agent's start renewed the lease"
            s.send({"op": "ping", "seq": 1})
            s.send({"op": "ping", "seq": 2, "ack": 1})
            await s.wait_for("pong 2", lambda: any(m.get("seq") == 2 for m in s.out))
            assert lease.renewed_at() == 1.0, "a ping before any configure renewed the lease"
            s.send(CONFIGURE)
            before = time.time()
            s.send({"op": "ping", "seq": 3, "ack": 99})  # a pong we never sent
            await s.wait_for("pong 3", lambda: any(m.get("seq") == 3 for m in s.out))
            assert lease.renewed_at() == 1.0, "an ack of an unknown pong renewed the lease"
            await asyncio.sleep(0.3)
            s.send({"op": "ping", "seq": 4, "ack": 3})
            await s.wait_for("pong 4", lambda: any(m.get("seq") == 4 for m in s.out))
            renewed = lease.renewed_at()
            assert before - 0.05 <= renewed <= before + 0.25, \
                f"renewed to {renewed - before:+.2f}s: not to when pong 3 was sent"
    run(main())


def test_a_host_that_still_reaches_a_manager_does_not_fence(tmp_path: Path, monkeypatch: Any) -> None:
    """No leader, but the managers' hosts answer (a failover, a lost quorum,
    every manager restarting): nobody can replace our tasks, so stopping
    them would only hurt; once no manager's host answers any more, fence."""
    monkeypatch.setattr(protocol, "AGENT_LEASE", 0.2)
    monkeypatch.setattr(fence, "PROBE_EVERY", 0.05)
    lease = fence.Lease(tmp_path)
    docker = FakeDocker()
    cid = docker.add("demo_web.1.t1", labels("t1"))
    lease.renew()
    answers = [True] * 6
    probes = []

    async def reachable() -> bool:
        probes.append(time.monotonic())
        return answers.pop() if answers else False
    assert run(fence.linger(cast(Any, docker), lease, time.time(), reachable)) == "fenced"
    assert len(probes) == 7 and docker.containers[cid]["State"] == "exited"


def test_reaching_a_manager_is_any_answer_from_its_host() -> None:
    """Accepted or refused, the host answered; no address known: not reached."""
    async def main() -> tuple[bool, bool, bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            accepted = await fence.reaches_a_manager(["127.0.0.1"], port)
        finally:
            server.close()
            await server.wait_closed()
        refused = await fence.reaches_a_manager(["127.0.0.1"], port)  # nothing listens now
        return accepted, refused, await fence.reaches_a_manager([], port)
    assert run(main()) == (True, True, False)


def test_containers_a_stopping_engine_took_are_reported_stopped_by_the_node(tmp_path: Path,
                                                                             monkeypatch: Any) -> None:
    """dockerd restarted within the leader's grace: the node's tasks are not
    orphaned first, and their containers' exit 0 on SIGTERM must not read as
    completions when the engine is back (an on-failure service would keep
    them dead): recorded as the engine going, reported shutdown."""
    from pyswarm.worker import agent as agent_mod

    monkeypatch.setattr(protocol, "ENGINE_GRACE", 0.1)
    monkeypatch.setattr(agent_mod, "ENGINE_PROBE_EVERY", 0.05)
    lease = fence.Lease(tmp_path)

    async def main() -> None:
        docker = FakeDocker()
        s = Session(docker)
        s.agent.lease = lease
        async with s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1")]})
            await s.wait_for("running", lambda: "running" in s.statuses("t1"))
            cid = docker.by_task("t1")[0]["Id"]
            docker.closing = True  # listener closed; the stream and pooled connections still served
            docker.kill(cid, 0)
            await asyncio.sleep(0.3)
            docker.stop_engine()
            await s.wait_for("engine down", lambda: any(m["op"] == "engine" for m in s.out))
            assert lease.fenced() == {cid: fence.ENGINE_STOPPED}
            docker.closing = False
            docker.start_engine()
            s.send({"op": "assign", "tasks": [task("t1")]})  # (the real stream's reconnect kicks every task)
            await s.wait_for("t1 reported", lambda: s.statuses("t1")[-1] != "running", timeout=5)
            assert s.statuses("t1")[-1] == "shutdown" and "complete" not in s.statuses("t1"), s.out
    run(main())



def test_whom_a_host_asks_before_it_fences(monkeypatch: Any) -> None:
    """A worker asks the managers' hosts; a manager's host the other
    managers, then the other nodes (the survivor of a lost quorum reaches
    its workers: it is not cut off); the only manager's host never fences."""
    asked: list[tuple[str, ...]] = []
    answering: set[str] = set()

    async def fake(addrs: Any, port: int = 22, timeout: float = 1.0) -> bool:
        asked.append(tuple(addrs))
        return bool(set(addrs) & answering)
    monkeypatch.setattr(fence, "reaches_a_manager", fake)
    routes = [{"subnet": "10.240.2.0/24", "via": "10.99.0.2"}, {"subnet": "10.240.3.0/24", "via": "10.99.0.21"}]

    async def configured(addr: str, dns: list[str]) -> Any:
        s = Session(FakeDocker())
        async with s:
            s.send({**CONFIGURE, "addr": addr, "dns": dns, "routes": routes})
            s.send({"op": "ping", "seq": 1})
            await s.wait_for("pong", lambda: any(m["op"] == "pong" for m in s.out))
            await s.wait_for("configured", lambda: s.agent._configured)
        return s.agent

    async def main() -> None:
        worker = await configured("10.99.0.21", ["10.99.0.1", "10.99.0.2"])
        assert not await worker.reaches_a_manager() and asked == [("10.99.0.1", "10.99.0.2")]
        asked.clear()
        manager = await configured("10.99.0.1", ["10.99.0.1", "10.99.0.2"])
        assert not await manager.reaches_a_manager()
        assert asked == [("10.99.0.2",), ("10.99.0.21",)], "its own address answers even when cut off"
        answering.add("10.99.0.21")
        assert await manager.reaches_a_manager(), "a quorum's survivor that reaches its workers fenced"
        asked.clear()
        sole = await configured("10.99.0.1", ["10.99.0.1"])
        assert await sole.reaches_a_manager() and asked == []
    run(main())


def test_an_agent_with_no_configure_yet_asks_the_managers_its_host_last_knew(tmp_path: Path,
                                                                               monkeypatch: Any) -> None:
    """A new leader's session starts a new agent; its configure may not have
    come when the lease runs out. With no address known it fenced at once:
    after every manager restarted and a partition deposed the new leader,
    every agent of the lab stopped its containers (tests/e2e/test_managers.py).
    It asks whom the host's last configure named."""
    asked: list[tuple[str, ...]] = []

    async def fake(addrs: Any, port: int = 22, timeout: float = 1.0) -> bool:
        asked.append(tuple(addrs))
        return "10.99.0.2" in addrs
    monkeypatch.setattr(fence, "reaches_a_manager", fake)
    lease = fence.Lease(tmp_path)

    async def main() -> None:
        s = Session(FakeDocker())
        s.agent.lease = lease
        async with s:
            s.send({**CONFIGURE, "addr": "10.99.0.21", "dns": ["10.99.0.1", "10.99.0.2"], "routes": []})
            await s.wait_for("configured", lambda: s.agent._configured)
        fresh = Session(FakeDocker())
        fresh.agent.lease = lease
        assert await fresh.agent.reaches_a_manager(), f"the new agent asked {asked}"
        assert asked[-1] == ("10.99.0.1", "10.99.0.2"), asked
        assert os.stat(lease.peers_path).st_mode & 0o077 == 0, "the kept addresses are not root-only"
        nothing = Session(FakeDocker())
        nothing.agent.lease = fence.Lease(tmp_path / "elsewhere")
        assert not await nothing.agent.reaches_a_manager() and asked[-1] == (), asked
    run(main())


def test_the_lease_leaves_the_run_directory_open_to_the_api_group(tmp_path: Path) -> None:
    """The manager opens /run/pyswarm to the --api-group for search; the
    lease lives there too and chmodding it back to 0700 shut the group out
    (test_machine's api-group test caught it)."""
    run = tmp_path / "run"
    run.mkdir(mode=0o710)
    os.chmod(run, 0o710)
    lease = fence.Lease(run)
    lease.renew()
    lease.record(["c1"])
    assert os.stat(run).st_mode & 0o7777 == 0o710, oct(os.stat(run).st_mode)
    assert os.stat(run / "agent-lease").st_mode & 0o077 == 0, "the lease is root-only"
    missing = fence.Lease(tmp_path / "fresh")
    missing.renew()
    assert os.stat(tmp_path / "fresh").st_mode & 0o077 == 0, "a missing run directory is made root-only"


def test_the_kept_addresses_are_written_only_when_they_change(tmp_path: Path) -> None:
    """Every configure names the managers again; rewriting the file each
    time was a write per configure for nothing."""
    lease = fence.Lease(tmp_path)
    lease.remember_peers(False, ("10.99.0.1",), ("10.99.0.21",))
    first = os.stat(lease.peers_path).st_ino
    lease.remember_peers(False, ("10.99.0.1",), ("10.99.0.21",))
    assert os.stat(lease.peers_path).st_ino == first, "the same addresses were written again"
    lease.remember_peers(False, ("10.99.0.1", "10.99.0.2"), ("10.99.0.21",))
    assert lease.remembered_peers() == (False, ("10.99.0.1", "10.99.0.2"), ("10.99.0.21",))
    assert os.stat(lease.peers_path).st_mode & 0o077 == 0, "the kept addresses are not root-only"
