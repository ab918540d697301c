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
    assert run(fence.linger(cast(Any, docker), lease, time.time())) == "fenced"
    assert time.monotonic() - started >= 0.35, "fenced before the lease ran out"
    assert [docker.containers[c]["State"] for c in ours] == ["exited", "exited"]
    assert docker.containers[foreign]["State"] == "running", "a container without our labels was stopped"
    assert ("stop", done) not in docker.calls
    assert lease.fenced() >= set(ours), "the stopped containers were not recorded"
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


def test_pings_renew_the_lease_only_after_a_configure_was_accepted(tmp_path: Path) -> None:
    lease = fence.Lease(tmp_path)

    async def main() -> None:
        s = Session(FakeDocker())
        s.agent.lease = lease
        async with s:
            await s.wait_for("hello", lambda: any(m["op"] == "hello" for m in s.out))
            os.utime(lease.path, (1.0, 1.0))
            s.send({"op": "ping", "seq": 1})
            await s.wait_for("pong", lambda: any(m["op"] == "pong" for m in s.out))
            assert lease.renewed_at() == 1.0, "a ping before any configure renewed the lease"
            s.send(CONFIGURE)
            s.send({"op": "ping", "seq": 2})
            await s.wait_for("pong 2", lambda: any(m.get("seq") == 2 for m in s.out))
            assert time.time() - lease.renewed_at() < 5
    run(main())
