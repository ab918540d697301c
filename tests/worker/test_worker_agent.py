"""The agent's protocol behaviour against an in-memory engine (no dockerd)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from worker_fakes import FakeDocker

from pyswarm import protocol
from pyswarm.worker.agent import Agent

IMAGE = "busybox:latest"
CONFIGURE = {"op": "configure", "node_id": "n1", "cluster_id": "c", "subnet": "10.240.1.0/24",
             "pool": "10.240.0.0/16", "routes": [], "dns": ["10.99.0.1"], "zone": "pyswarm"}


def task(task_id: str, slot: int = 1, image: str = IMAGE) -> dict[str, Any]:
    return {"task_id": task_id, "service_id": "s1", "service_name": "demo_web", "stack": "demo", "slot": slot,
            "node_id": "n1", "spec": {"image": image, "command": ["httpd", "-f"]}, "dns_search": ["demo.pyswarm"]}


def labels(task_id: str) -> dict[str, str]:
    return {protocol.LABEL_TASK_ID: task_id, protocol.LABEL_SERVICE_NAME: "demo_web"}


class Session:
    """Drives one agent: ``send`` a manager message, ``wait_for`` replies."""

    def __init__(self, docker: FakeDocker) -> None:
        self.docker = docker
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.out: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.agent = Agent(cast(Any, docker), self._record, hostname="node1", stop_grace=0, dns_drain=0)
        self.task: asyncio.Task[int] | None = None

    def _record(self, message: dict[str, Any]) -> None:
        json.dumps(message)  # must be serialisable
        self.out.append(message)
        self._changed.set()

    async def _lines(self) -> AsyncIterator[bytes]:
        while (line := await self.inbox.get()) is not None:
            yield line

    async def __aenter__(self) -> Session:
        self.task = asyncio.ensure_future(self.agent.run(self._lines()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> int:
        self.inbox.put_nowait(None)
        assert self.task is not None
        return await asyncio.wait_for(self.task, 5)

    def send(self, message: dict[str, Any]) -> None:
        self.inbox.put_nowait(protocol.encode(message))

    def statuses(self, task_id: str) -> list[str]:
        return [m["state"] for m in self.out if m["op"] == "status" and m["task_id"] == task_id]

    async def wait_for(self, what: str, cond: Callable[[], bool], timeout: float = 3.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; agent said: {self.out}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_hello_then_pong() -> None:
    async def main() -> None:
        async with Session(FakeDocker()) as s:
            s.send({"op": "ping", "seq": 7})
            await s.wait_for("pong", lambda: any(m["op"] == "pong" for m in s.out))
            hello = s.out[0]
            assert hello["op"] == "hello" and hello["hostname"] == "node1"
            assert hello["resources"] == {"nano_cpus": 2_000_000_000, "memory_bytes": 4 << 30}
            assert hello["platform"] == {"os": "linux", "arch": "x86_64"}
            assert hello["engine_version"] == "20.10.24"
            assert s.out[1] == {"op": "pong", "seq": 7}
    run(main())


def test_assign_waits_for_configure_then_runs() -> None:
    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.send({"op": "assign", "tasks": [task("t1"), task("t2", 2)]})
            s.send({"op": "ping", "seq": 1})
            await s.wait_for("pong", lambda: any(m["op"] == "pong" for m in s.out))
            await asyncio.sleep(0.05)
            assert not docker.containers, "created before configure"
            s.send(CONFIGURE)
            await s.wait_for("both running", lambda: "running" in s.statuses("t1") and "running" in s.statuses("t2"))
            assert s.statuses("t1") == ["preparing", "starting", "running"]
            run1 = [m for m in s.out if m.get("task_id") == "t1" and m.get("state") == "running"][0]
            assert run1["ip"].startswith("10.240.1.") and run1["container_id"]
            c = docker.by_task("t1")[0]
            assert c["Name"] == "demo_web.1.t1"
            assert c["Config"]["HostConfig"]["Dns"] == ["10.99.0.1"]
    run(main())


def test_missing_image_is_rejected_with_reason() -> None:
    async def main() -> None:
        async with Session(FakeDocker()) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1", image="nope:1")]})
            await s.wait_for("image_wanted", lambda: any(m.get("op") == "image_wanted" for m in s.out))
            s.send({"op": "image_plan", "image": "nope:1", "plan": "pull", "reason": "no engine of the cluster has it"})
            await s.wait_for("rejected", lambda: "rejected" in s.statuses("t1"))
            msg = [m for m in s.out if m.get("state") == "rejected"][0]
            assert msg["error"] == "image nope:1 not found on node node1; no engine of the cluster has it"
            assert [m["message"] for m in s.out if m.get("state") == "preparing"] == ["pulling image nope:1"]
    run(main())


def test_missing_image_is_shipped_by_the_leader_then_started() -> None:
    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1", image="built:1"), task("t2", 2, image="built:1")]})
            await s.wait_for("preparing", lambda: "preparing" in s.statuses("t2") or
                             any(m.get("op") == "image_wanted" for m in s.out))
            wanted = [m for m in s.out if m.get("op") == "image_wanted"]
            assert len(wanted) == 1 and wanted[0]["image"] == "built:1"  # one request for both tasks
            s.send({"op": "image_plan", "image": "built:1", "plan": "ship", "source": "manager1"})
            await s.wait_for("shipping", lambda: "preparing" in s.statuses("t1") and "preparing" in s.statuses("t2"))
            assert {m["message"] for m in s.out if m.get("state") == "preparing"} == {"shipping image built:1 from manager1"}
            docker.images.add("built:1")
            s.send({"op": "image_done", "image": "built:1", "error": ""})
            await s.wait_for("running", lambda: "running" in s.statuses("t1") and "running" in s.statuses("t2"))
    run(main())


def test_failed_shipment_rejects_the_task_with_its_reason() -> None:
    async def main() -> None:
        async with Session(FakeDocker()) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1", image="built:1")]})
            await s.wait_for("image_wanted", lambda: any(m.get("op") == "image_wanted" for m in s.out))
            s.send({"op": "image_plan", "image": "built:1", "plan": "ship", "source": "manager1"})
            s.send({"op": "image_done", "image": "built:1", "error": "no space left on device"})
            await s.wait_for("rejected", lambda: "rejected" in s.statuses("t1"))
            msg = [m for m in s.out if m.get("state") == "rejected"][0]
            assert msg["error"] == "shipping image built:1 to node1 failed: no space left on device"
    run(main())


def test_leader_that_does_not_ship_means_a_pull() -> None:
    async def main() -> None:
        async with Session(FakeDocker()) as s:
            s.agent.images.plan_timeout = 0.05
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1", image="nope:1")]})
            await s.wait_for("rejected", lambda: "rejected" in s.statuses("t1"))
            msg = [m for m in s.out if m.get("state") == "rejected"][0]
            assert msg["error"] == "image nope:1 not found on node node1"
    run(main())


def test_malformed_image_plan_is_an_error_not_a_crash() -> None:
    async def main() -> None:
        async with Session(FakeDocker()) as s:
            s.send(CONFIGURE)
            s.send({"op": "image_plan", "image": "x:1", "plan": "teleport"})
            await s.wait_for("error", lambda: any(m.get("op") == "error" for m in s.out))
            assert "image_plan.plan" in [m for m in s.out if m.get("op") == "error"][0]["message"]
    run(main())


def test_die_event_reports_failed_and_complete() -> None:
    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1"), task("t2", 2)]})
            await s.wait_for("running", lambda: "running" in s.statuses("t1") and "running" in s.statuses("t2"))
            docker.kill(docker.by_task("t1")[0]["Id"], 137)
            docker.kill(docker.by_task("t2")[0]["Id"], 0)
            await s.wait_for("terminal", lambda: "failed" in s.statuses("t1") and "complete" in s.statuses("t2"))
            failed = [m for m in s.out if m.get("state") == "failed"][0]
            assert failed["exit_code"] == 137 and "137" in failed["error"]
            # a dead task is not restarted by the agent (the orchestrator replaces it)
            assert len(docker.by_task("t1")) == 1 and docker.by_task("t1")[0]["State"] == "exited"
    run(main())


def test_reassign_removes_unlisted_and_reports_shutdown() -> None:
    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1"), task("t2", 2)]})
            await s.wait_for("running", lambda: "running" in s.statuses("t2"))
            s.send({"op": "assign", "tasks": [task("t1")]})
            await s.wait_for("shutdown", lambda: "shutdown" in s.statuses("t2"))
            assert docker.by_task("t2") == [] and len(docker.by_task("t1")) == 1
            # the stop's die event must not turn into a "failed" report
            await asyncio.sleep(0.05)
            assert "failed" not in s.statuses("t2")
    run(main())


def test_adopts_existing_containers_and_removes_strangers() -> None:
    async def main() -> None:
        docker = FakeDocker()
        live = docker.add("demo_web.1.t1", labels("t1"))
        docker.add("demo_web.2.t2", labels("t2"), state="exited", exit_code=3)
        stranger = docker.add("demo_web.3.old", labels("old"))
        unlabelled = docker.add("someone-elses", {})
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1"), task("t2", 2)]})
            await s.wait_for("adopted", lambda: s.statuses("t1") == ["running"] and s.statuses("t2") == ["failed"]
                             and s.statuses("old") == ["shutdown"])
            assert live in docker.containers and stranger not in docker.containers
            assert unlabelled in docker.containers
            assert not any(c[0] == "create" for c in docker.calls)
            failed = [m for m in s.out if m.get("task_id") == "t2"][0]
            assert failed["exit_code"] == 3
    run(main())


def test_created_but_not_started_container_is_started() -> None:
    async def main() -> None:
        docker = FakeDocker()
        cid = docker.add("demo_web.1.t1", labels("t1"), state="created")
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1")]})
            await s.wait_for("running", lambda: "running" in s.statuses("t1"))
            assert docker.containers[cid]["State"] == "running"
    run(main())


def test_stdin_close_leaves_containers_alone() -> None:
    async def main() -> None:
        docker = FakeDocker()
        docker.add("demo_web.9.old", labels("old"))
        s = Session(docker)
        await s.__aenter__()
        s.send({"op": "assign", "tasks": []})  # no configure yet: must not act
        s.send(CONFIGURE)
        s.send({"op": "assign", "tasks": [task("t1")]})
        await s.wait_for("running", lambda: "running" in s.statuses("t1"))
        before = dict(docker.containers)
        # the old task is removed by this assign, so wait for that first
        await s.wait_for("shutdown", lambda: "shutdown" in s.statuses("old"))
        assert await s.close() == 0
        assert set(docker.containers) == set(before) - {c for c in before if before[c]["Name"] == "demo_web.9.old"}
        assert all(c["State"] == "running" for c in docker.containers.values())
    run(main())


def test_nothing_removed_before_first_assign() -> None:
    async def main() -> None:
        docker = FakeDocker()
        cid = docker.add("demo_web.1.t1", labels("t1"))
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "ping", "seq": 1})
            await s.wait_for("pong", lambda: any(m["op"] == "pong" for m in s.out))
            docker.kill(cid)  # a die event before any assign
            await asyncio.sleep(0.05)
        assert cid in docker.containers
        assert not any(c[0] == "remove" for c in docker.calls)
    run(main())


def test_bad_messages_become_errors() -> None:
    async def main() -> None:
        async with Session(FakeDocker()) as s:
            s.inbox.put_nowait(b"not json\n")
            s.send({"op": "frobnicate"})
            s.send({"op": "assign", "tasks": [{"spec": {"image": "x"}}]})
            s.send({"op": "configure", "subnet": "nonsense"})
            await s.wait_for("4 errors", lambda: sum(m["op"] == "error" for m in s.out) >= 4)
            errors = [m["message"] for m in s.out if m["op"] == "error"]
            assert any("unknown op 'frobnicate'" in e for e in errors)
            assert any("task_id" in e for e in errors)
            assert any("subnet" in e for e in errors)
    run(main())


def test_many_assigns_coalesce() -> None:
    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.send(CONFIGURE)
            tasks = [task(f"t{i:02d}", i) for i in range(1, 21)]
            for n in range(1, 21):  # scale 1 → 20 one step at a time
                s.send({"op": "assign", "tasks": tasks[:n]})
            await s.wait_for("20 running", lambda: sum(m.get("state") == "running" for m in s.out) == 20)
            assert len(docker.containers) == 20
            assert sum(c[0] == "create" for c in docker.calls) == 20
    run(main())


def test_engine_loss_and_return_are_reported(monkeypatch: Any) -> None:
    """The event stream fails and /info does not answer for the grace
    period: the agent says the engine is unreachable, with the reason, once;
    when /info answers again it says so. A blip shorter than the grace is
    not reported."""
    from pyswarm.worker import agent as agent_mod

    monkeypatch.setattr(protocol, "ENGINE_GRACE", 0.3)
    monkeypatch.setattr(agent_mod, "ENGINE_PROBE_EVERY", 0.05)

    def engine_said(s: Session) -> list[dict[str, Any]]:
        return [m for m in s.out if m["op"] == "engine"]

    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.send(CONFIGURE)
            await s.wait_for("hello", lambda: any(m["op"] == "hello" for m in s.out))
            docker.stop_engine("blip")
            await asyncio.sleep(0.1)
            docker.start_engine()
            await asyncio.sleep(0.5)
            assert engine_said(s) == [], "a blip shorter than the grace was reported"
            docker.stop_engine()
            await s.wait_for("engine down", lambda: len(engine_said(s)) == 1)
            assert engine_said(s)[0] == {"op": "engine", "reachable": False,
                                         "reason": "cannot reach the engine at /run/docker.sock: refused"}
            docker.stop_engine()  # the stream fails again while down: said once
            await asyncio.sleep(0.4)
            assert len(engine_said(s)) == 1, engine_said(s)
            docker.start_engine()
            await s.wait_for("engine back", lambda: len(engine_said(s)) == 2)
            assert engine_said(s)[1] == {"op": "engine", "reachable": True, "reason": ""}
    run(main())


def test_an_engine_down_at_start_is_reported_and_pings_answered() -> None:
    """Before the hello, an unreachable engine is said at once and the
    session stays alive (pings answered), so the node shows why."""
    async def main() -> None:
        docker = FakeDocker()
        docker.unreachable = "cannot reach the engine at /run/docker.sock: no such file"
        async with Session(docker) as s:
            await s.wait_for("engine down", lambda: any(m["op"] == "engine" for m in s.out))
            assert s.out[0] == {"op": "engine", "reachable": False, "reason": docker.unreachable}
            s.send({"op": "ping", "seq": 3})
            await s.wait_for("pong", lambda: {"op": "pong", "seq": 3} in s.out)
            docker.start_engine()
            await s.wait_for("hello", lambda: any(m["op"] == "hello" for m in s.out), timeout=5)
    run(main())


def test_deaths_as_the_engine_goes_away_are_not_reported_as_exits(monkeypatch: Any) -> None:
    """dockerd stopping stops its containers (exit 0 on SIGTERM) and streams
    their die events with its API already closed: the agent does not report
    them as tasks that completed (an on-failure service would lose them); it
    reports the engine gone instead."""
    from pyswarm.worker import agent as agent_mod

    monkeypatch.setattr(protocol, "ENGINE_GRACE", 0.1)
    monkeypatch.setattr(agent_mod, "ENGINE_PROBE_EVERY", 0.05)

    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1")]})
            await s.wait_for("running", lambda: "running" in s.statuses("t1"))
            docker.closing = True  # listener closed; the stream and pooled connections still served
            docker.kill(docker.by_task("t1")[0]["Id"], 0)
            await asyncio.sleep(0.3)  # the die event's report and the converge it kicks
            docker.stop_engine()
            await s.wait_for("engine down", lambda: any(m["op"] == "engine" for m in s.out))
            assert s.statuses("t1")[-1] == "running" and "complete" not in s.statuses("t1"), s.out


def _conditions(s: Session) -> list[dict[str, str]]:
    return [m["problems"] for m in s.out if m["op"] == "condition"]


class FailingFirewall:
    """A host without ipset: every mesh apply fails, as MeshFirewall would."""

    def __init__(self) -> None:
        self.ok = False

    async def apply(self, mesh: Any, pool: str, dns: Any = ()) -> None:
        from pyswarm.worker import NetworkSetupError

        if not self.ok:
            raise NetworkSetupError("ipset restore: [Errno 2] No such file or directory: 'ipset'")


def test_a_host_that_cannot_isolate_says_so_and_starts_no_task() -> None:
    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            firewall = FailingFirewall()
            s.agent.firewall = firewall  # type: ignore[assignment]
            s.send(CONFIGURE)
            s.send({"op": "mesh", "gateways": ["10.240.1.1"], "networks": {"psw-000000000001": []}})
            await s.wait_for("a firewall condition", lambda: any("firewall" in c for c in _conditions(s)))
            assert "ipset" in _conditions(s)[-1]["firewall"]
            s.send({"op": "assign", "tasks": [task("t1")]})
            await s.wait_for("t1 rejected", lambda: "rejected" in s.statuses("t1"))
            [report] = [m for m in s.out if m["op"] == "status" and m["task_id"] == "t1"]
            assert "cannot isolate networks" in report["error"] and "ipset" in report["error"], report
            assert not any(c[0] == "create" for c in docker.calls), "a container was made on a host that cannot isolate"
            firewall.ok = True  # ipset installed: the next mesh clears the condition
            s.send({"op": "mesh", "gateways": ["10.240.1.1"], "networks": {"psw-000000000001": ["10.240.1.2"]}})
            await s.wait_for("the condition cleared", lambda: _conditions(s)[-1] == {})
    run(main())


def test_a_failing_agent_loop_is_restarted_and_reported() -> None:
    async def main() -> None:
        docker = FakeDocker()
        real = docker.list_containers
        failures = [TypeError("boom")]

        async def flaky(labels: Any, **kw: Any) -> Any:
            if failures and labels == {protocol.LABEL_TASK_ID: None}:
                raise failures.pop()
            return await real(labels, **kw)

        docker.list_containers = flaky  # type: ignore[method-assign]
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1")]})
            await s.wait_for("a reconcile condition", lambda: any("reconcile" in c for c in _conditions(s)))
            assert "TypeError: boom" in _conditions(s)[0]["reconcile"]
            s.send({"op": "assign", "tasks": [task("t1"), task("t2", 2)]})  # the restarted loop converges
            await s.wait_for("t2 running", lambda: "running" in s.statuses("t2"), timeout=10)
            await s.wait_for("the condition cleared", lambda: _conditions(s)[-1] == {})
    run(main())


class _FlakyNetwork:
    """A host network whose first setup meets a vanished engine."""

    def __init__(self) -> None:
        self.calls = 0

    async def configure(self, cfg: Any) -> list[str]:
        from pyswarm.worker import EngineUnavailableError

        self.calls += 1
        if self.calls == 1:
            raise EngineUnavailableError("cannot reach the engine at /run/docker.sock: refused")
        return []


def test_a_network_setup_that_meets_a_vanished_engine_is_retried(monkeypatch: Any) -> None:
    """It used to end as an internal error with the session never
    configured: the node stayed ready and started no task again (one cause
    of the soak's services short of replicas after its last fault)."""
    from pyswarm.worker import agent as agent_mod

    monkeypatch.setattr(agent_mod, "CONFIGURE_RETRY", 0.1)

    async def main() -> None:
        docker = FakeDocker()
        s = Session(docker)
        net = _FlakyNetwork()
        s.agent.network = cast(Any, net)
        async with s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1")]})
            await s.wait_for("the problem said", lambda: any(
                "network" in m.get("problems", {}) for m in s.out if m["op"] == "condition"))
            await s.wait_for("t1 running", lambda: "running" in s.statuses("t1"))
            await s.wait_for("the problem cleared by a retry", lambda: net.calls == 2 and [
                m["problems"] for m in s.out if m["op"] == "condition"][-1] == {})
            assert not any("internal error" in str(m.get("message", "")) for m in s.out), s.out
    run(main())


def test_task_set_deltas_apply_and_a_gap_asks_for_the_whole_set() -> None:
    """assign_delta on the version held; one on another base changes
    nothing and asks once for the whole set, which then holds."""
    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1"), task("t2", 2)], "version": 1})
            await s.wait_for("t1, t2 running", lambda: "running" in s.statuses("t1") and "running" in s.statuses("t2"))
            s.send({"op": "assign_delta", "base": 1, "version": 2, "put": [task("t3", 3)], "remove": ["t1"]})
            await s.wait_for("t3 running, t1 shut down",
                             lambda: "running" in s.statuses("t3") and "shutdown" in s.statuses("t1"))
            assert len(docker.by_task("t2")) == 1 and docker.by_task("t1") == []
            # a gap: version 2 is held, this builds on 5
            s.send({"op": "assign_delta", "base": 5, "version": 6, "put": [task("t4", 4)], "remove": ["t2"]})
            s.send({"op": "assign_delta", "base": 6, "version": 7, "put": [task("t5", 5)], "remove": []})
            await s.wait_for("a resync", lambda: any(m["op"] == "resync" for m in s.out))
            await asyncio.sleep(0.1)
            asks = [m for m in s.out if m["op"] == "resync"]
            assert asks == [{"op": "resync", "what": "assign", "have": 2}], asks
            assert docker.by_task("t4") == docker.by_task("t5") == [] and len(docker.by_task("t2")) == 1
            s.send({"op": "assign", "tasks": [task("t2", 2), task("t4", 4)], "version": 8})
            await s.wait_for("t4 running, t3 shut down",
                             lambda: "running" in s.statuses("t4") and "shutdown" in s.statuses("t3"))
            s.send({"op": "assign_delta", "base": 8, "version": 9, "put": [task("t4", 4, image="other:1")],
                    "remove": ["t2"]})
            await s.wait_for("t2 shut down", lambda: "shutdown" in s.statuses("t2"))
            assert s.agent._pending is not None and set(s.agent._pending) == {"t4"}
            assert s.agent._pending["t4"].spec.image == "other:1"
    run(main())


def test_mesh_deltas_apply_and_a_gap_asks_for_the_whole_mesh() -> None:
    async def main() -> None:
        async with Session(FakeDocker()) as s:
            s.send({"op": "mesh", "gateways": ["10.240.1.1"], "networks": {"psw-aaaaaaaaaaaa": ["10.240.1.2"]},
                    "version": 3})
            s.send({"op": "mesh_delta", "base": 3, "version": 4, "networks": {
                "psw-aaaaaaaaaaaa": {"add": ["10.240.2.2"], "remove": ["10.240.1.2"]}}})
            for _ in range(200):  # messages are taken after the hello; nothing is said back
                if s.agent._mesh_raw is not None and s.agent._mesh_raw.get("version") == 4:
                    break
                await asyncio.sleep(0.01)
            mesh = s.agent._mesh
            assert mesh is not None and dict(mesh.networks or {}) == {"psw-aaaaaaaaaaaa": ("10.240.2.2",)}
            assert mesh.gateways == ("10.240.1.1",)
            s.send({"op": "mesh_delta", "base": 7, "version": 8, "networks_gone": ["psw-aaaaaaaaaaaa"]})
            await s.wait_for("a resync", lambda: any(m["op"] == "resync" for m in s.out))
            assert [m for m in s.out if m["op"] == "resync"] == [{"op": "resync", "what": "mesh", "have": 4}]
            assert s.agent._mesh is mesh, "a delta on another base was applied"
    run(main())


def test_a_slower_leader_ping_stretches_the_agents_silence_limit() -> None:
    async def main() -> None:
        async with Session(FakeDocker()) as s:
            assert s.agent.manager_timeout == 5.0
            s.send({"op": "ping", "seq": 1, "every": 4})
            await s.wait_for("pong", lambda: any(m["op"] == "pong" for m in s.out))
            assert s.agent.manager_timeout == 8.0
            assert s.out[0]["protocol"] == protocol.PROTOCOL, "the hello says what the agent takes"
    run(main())
