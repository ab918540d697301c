"""``service.update`` and ``service.rollback`` against a real single-manager store."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from test_api import spec, with_api  # noqa: E402

from pyswarm.errors import UsageError  # noqa: E402
from pyswarm.manager.api import Api  # noqa: E402


def test_update_bumps_version_keeps_previous_and_rollback_swaps(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 3, image="img:1")]})
        done = await api.call("service.update", {"service": "demo_web", "image": "img:2",
                                                 "env_add": ["A=1", "B=x=y"], "env_rm": []})
        assert done == {"service": "demo_web", "action": "updated", "version": 2}
        svc = await api.call("service.inspect", {"service": "demo_web"})
        assert svc["spec"]["container"]["image"] == "img:2"
        assert svc["spec"]["container"]["env"] == {"A": "1", "B": "x=y"}
        assert svc["previous_spec"]["container"]["image"] == "img:1"

        # replicas alone is a scale: no new version
        done = await api.call("service.update", {"service": "demo_web", "replicas": 5, "env_rm": ["A"]})
        assert done["action"] == "updated" and done["version"] == 3  # env_rm changed the container
        done = await api.call("service.update", {"service": "demo_web", "replicas": 2})
        assert done == {"service": "demo_web", "action": "scaled", "version": 3}

        back = await api.call("service.rollback", {"service": "demo_web"})
        assert back == {"service": "demo_web", "version": 4}
        svc = await api.call("service.inspect", {"service": "demo_web"})
        assert svc["spec"]["container"]["env"] == {"A": "1", "B": "x=y"}
        assert svc["update_status"]["state"] == "rollback_started"
        assert svc["update_status"]["message"] == "manually requested rollback"
        rows = await api.call("service.ls", {})
        assert rows[0]["update_state"] == "rollback_started"

        forced = await api.call("service.update", {"service": "demo_web", "force": True})
        assert forced["version"] == 5
        svc = await api.call("service.inspect", {"service": "demo_web"})
        assert svc["update_status"]["force"] is True and svc["update_status"]["version"] == 5
    with_api(tmp_path, body)


def test_update_errors_are_one_line(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web")]})
        with pytest.raises(UsageError, match="has no previous spec"):
            await api.call("service.rollback", {"service": "demo_web"})
        with pytest.raises(UsageError, match="expected KEY=VALUE"):
            await api.call("service.update", {"service": "demo_web", "env_add": ["NOEQUALS"]})
        with pytest.raises(UsageError, match="^replicas: -1 is below the minimum 0$"):
            await api.call("service.update", {"service": "demo_web", "replicas": -1})
    with_api(tmp_path, body)


def test_an_update_with_no_change_resumes_a_paused_one(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web")]})
        svc = await api.call("service.inspect", {"service": "demo_web"})
        await api._store.commit([["patch", "service", svc["id"], {"update_status": {
            "state": "paused", "version": 1, "message": "update paused due to x", "dirty": 1, "started_at": 1.0}}]])
        done = await api.call("service.update", {"service": "demo_web"})
        assert done["action"] == "resumed"
        status = (await api.call("service.inspect", {"service": "demo_web"}))["update_status"]
        assert status["state"] == "updating" and status["started_at"] > 1.0 and "dirty" not in status
    with_api(tmp_path, body)
