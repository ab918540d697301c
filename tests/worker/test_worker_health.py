"""Healthchecks (worker/health.py): the engine's form of the stack file's
key, task states from the engine's health, the agent on health events, and
the agent ending a session whose manager went silent."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from test_worker_agent import CONFIGURE, Session, run, task
from worker_fakes import FakeDocker

from pyswarm.models import ContainerSpec, TaskState
from pyswarm.worker.health import engine_healthcheck, unhealthy_reason
from pyswarm.worker.tasks import Assignment, container_config, observe

HEALTHCHECK = {"test": ["CMD-SHELL", "test -f /tmp/ok"], "interval": "500ms", "timeout": "2s",
               "retries": 2, "start_period": "1m"}


def test_engine_healthcheck_from_compose_long_syntax() -> None:
    assert engine_healthcheck({"healthcheck": HEALTHCHECK}) == {
        "Test": ["CMD-SHELL", "test -f /tmp/ok"], "Interval": 500_000_000, "Timeout": 2_000_000_000,
        "Retries": 2, "StartPeriod": 60_000_000_000,
    }
    assert engine_healthcheck({"healthcheck": {"test": ["NONE"]}}) == {"Test": ["NONE"]}
    assert engine_healthcheck({}) is None


def test_container_config_carries_the_healthcheck() -> None:
    a = Assignment(task_id="t1", spec=ContainerSpec(image="img", options={"healthcheck": HEALTHCHECK}))
    assert container_config(a, ["10.0.0.1"])["Healthcheck"]["Test"] == ["CMD-SHELL", "test -f /tmp/ok"]
    plain = Assignment(task_id="t2", spec=ContainerSpec(image="img"))
    assert "Healthcheck" not in container_config(plain, [])


def _inspect(health: str | None, log: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"Status": "running", "ExitCode": 0}
    if health is not None:
        state["Health"] = {"Status": health, "Log": log or []}
    return {"Id": "c1", "State": state, "NetworkSettings": {"Networks": {"pyswarm": {"IPAddress": "10.240.1.5"}}}}


def test_running_means_healthy() -> None:
    assert observe(_inspect(None)).state == TaskState.RUNNING  # type: ignore[union-attr]
    assert observe(_inspect("healthy")).state == TaskState.RUNNING  # type: ignore[union-attr]
    starting = observe(_inspect("starting"))
    assert starting is not None and starting.state == TaskState.STARTING
    bad = observe(_inspect("unhealthy", [{"ExitCode": 1, "Output": "no /tmp/ok\n"}]))
    assert bad is not None and bad.state == TaskState.FAILED
    assert bad.error == "container unhealthy (last probe exit 1: no /tmp/ok)"
    assert unhealthy_reason(_inspect("unhealthy")) == "container unhealthy"


class HealthDocker(FakeDocker):
    """The fake engine, with health for containers created with a healthcheck."""

    async def create_container(self, name: str, config: Mapping[str, Any]) -> str:
        cid = await super().create_container(name, config)
        if "Healthcheck" in config:
            self.containers[cid]["Health"] = "starting"
        return cid

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        data = await super().inspect_container(ref)
        health = self.containers[data["Id"]].get("Health")
        if health:
            data["State"]["Health"] = {"Status": health, "Log": []}
        return data

    def set_health(self, cid: str, status: str) -> None:
        self.containers[cid]["Health"] = status
        self._emit(f"health_status: {status}", self.containers[cid])


def test_agent_reports_running_once_healthy_and_failed_when_unhealthy() -> None:
    async def main() -> None:
        docker = HealthDocker()
        async with Session(docker) as s:
            s.send(CONFIGURE)
            t = task("t1")
            t["spec"]["options"] = {"healthcheck": HEALTHCHECK}
            s.send({"op": "assign", "tasks": [t]})
            await s.wait_for("starting", lambda: "starting" in s.statuses("t1"))
            await asyncio.sleep(0.1)
            assert "running" not in s.statuses("t1"), s.statuses("t1")
            cid = docker.by_task("t1")[0]["Id"]
            docker.set_health(cid, "healthy")
            await s.wait_for("running", lambda: "running" in s.statuses("t1"))
            docker.set_health(cid, "unhealthy")
            await s.wait_for("failed", lambda: "failed" in s.statuses("t1"))
            failed = [m for m in s.out if m.get("state") == "failed"][0]
            assert failed["error"].startswith("container unhealthy"), failed
    run(main())


def test_agent_ends_a_session_whose_manager_went_silent() -> None:
    async def main() -> None:
        docker = FakeDocker()
        s = Session(docker)
        s.agent.manager_timeout = 0.3
        async with s:
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [task("t1")]})
            await s.wait_for("running", lambda: "running" in s.statuses("t1"))
            s.send({"op": "ping", "seq": 1})
            assert s.task is not None
            code = await asyncio.wait_for(s.task, 3)
            assert code == 0
            assert docker.by_task("t1")[0]["State"] == "running", "containers are left alone"
            s.inbox.put_nowait(None)
    run(main())
