"""Admission: a service may not have more replicas than the cluster's
limit; the refusal names the service, the limit and how to raise it, and
nothing is committed (against a real single-manager store, no sockets)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec  # noqa: E402
from test_api import spec, with_api  # noqa: E402

from pyswarm.errors import UsageError  # noqa: E402
from pyswarm.manager.api import Api  # noqa: E402
from pyswarm.manager.limits import DEFAULT_MAX_REPLICAS  # noqa: E402


def test_more_replicas_than_the_limit_are_refused_until_it_is_raised(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 2)]})
        over = DEFAULT_MAX_REPLICAS + 1
        with pytest.raises(UsageError, match=f"service demo_web: {over} replicas exceed the cluster's limit of "
                                             f"{DEFAULT_MAX_REPLICAS} .*swarm update --max-replicas"):
            await api.call("service.scale", {"scales": {"demo_web": over}})
        with pytest.raises(UsageError, match="exceed the cluster's limit"):
            await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", over)]})
        with pytest.raises(UsageError, match="exceed the cluster's limit"):
            await api.call("service.update", {"service": "demo_web", "replicas": over})
        web = await api.call("service.inspect", {"service": "demo_web"})
        assert web["spec"]["replicas"] == 2, "a refused scale changed the service"
        await api.call("cluster.update", {"max_replicas": 10})
        with pytest.raises(UsageError, match="11 replicas exceed the cluster's limit of 10 "):
            await api.call("service.scale", {"scales": {"demo_web": 11}})
        await api.call("service.scale", {"scales": {"demo_web": 10}})
        with pytest.raises(UsageError, match="max_replicas: 0 is below the minimum 1"):
            await api.call("cluster.update", {"max_replicas": 0})
    with_api(tmp_path, body)


def test_task_lists_come_in_pages(tmp_path: Path) -> None:
    from pyswarm.models import Task, TaskState

    async def body(api: Api) -> None:
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 25)]})
        svc = await api.call("service.inspect", {"service": "demo_web"})
        tasks = [Task(id=f"t{i:03d}", service_id=svc["id"], service_name="demo_web", slot=i,
                      spec=make_container_spec(), state=TaskState.PENDING) for i in range(1, 26)]
        await api._store.commit([["put", "task", t.id, t.to_dict()] for t in tasks])
        first = await api.call("service.ps", {"service": "demo_web", "limit": 10})
        rest = await api.call("service.ps", {"service": "demo_web", "offset": 10, "limit": 100})
        assert [r["slot"] for r in first] == list(range(1, 11)) and [r["slot"] for r in rest] == list(range(11, 26))
        with pytest.raises(UsageError, match="offset: -1 is below the minimum 0"):
            await api.call("service.ps", {"service": "demo_web", "offset": -1})
    with_api(tmp_path, body)


def test_task_lists_filter_on_desired_state_in_the_manager(tmp_path: Path) -> None:
    """A service scaled to 100,000 and back lists three running rows, not
    ten pages of shut-down tasks (the lab's scale test waited 10 s on them)."""
    from pyswarm.models import DesiredState, Task, TaskState

    async def body(api: Api) -> None:
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 3)]})
        svc = await api.call("service.inspect", {"service": "demo_web"})
        desired = [DesiredState.RUNNING] * 3 + [DesiredState.SHUTDOWN] * 20 + [DesiredState.READY]
        tasks = [Task(id=f"t{i:03d}", service_id=svc["id"], service_name="demo_web", slot=i, spec=make_container_spec(),
                      state=TaskState.PENDING, desired_state=d) for i, d in enumerate(desired, 1)]
        await api._store.commit([["put", "task", t.id, t.to_dict()] for t in tasks])
        running = await api.call("service.ps", {"service": "demo_web", "desired_state": ["running"], "limit": 2})
        assert [r["slot"] for r in running] == [1, 2], running
        accepted = await api.call("stack.ps", {"stack": "demo", "desired_state": ["accepted"]})
        assert [r["desired_state"] for r in accepted] == ["ready"], accepted
        both = await api.call("service.ps", {"service": "demo_web", "desired_state": ["running", "shutdown"]})
        assert len(both) == 23, both
        with pytest.raises(UsageError, match=r"desired_state\[0\]: expected one of 'running', 'shutdown', 'accepted'"):
            await api.call("service.ps", {"service": "demo_web", "desired_state": ["runing"]})
    with_api(tmp_path, body)
