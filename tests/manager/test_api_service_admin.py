"""service.create/rm/progress, node.ps, update with a whole spec, and stack
deploy's dry run and prune, against a real single-manager store."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec, make_node, make_task  # noqa: E402
from test_api import spec, with_api  # noqa: E402

from pyswarm.errors import NotFoundError, UsageError  # noqa: E402
from pyswarm.manager.api import Api  # noqa: E402
from pyswarm.manager.api.service_admin import progress_row  # noqa: E402
from pyswarm.models import Service, ServiceSpec, TaskState  # noqa: E402


def _lone(name: str, **options: object) -> dict[str, object]:
    return ServiceSpec(name=name, container=make_container_spec(options=dict(options))).to_dict()


def test_create_checks_references_and_names(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        done = await api.call("service.create", {"spec": _lone("web")})
        assert done["service"] == "web" and done["version"] == 1
        svc = await api.call("service.inspect", {"service": "web"})
        assert svc["spec"]["stack"] == "" and svc["spec"]["name"] == "web"
        with pytest.raises(UsageError, match="service web already exists"):
            await api.call("service.create", {"spec": _lone("web")})
        with pytest.raises(NotFoundError, match="network front not found"):
            bad = _lone("api")
            bad["networks"] = [{"target": "front", "aliases": []}]
            await api.call("service.create", {"spec": bad})
        with pytest.raises(NotFoundError, match="secret pw not found"):
            await api.call("service.create", {"spec": _lone("db", secrets=[{"source": "pw", "name": "pw"}])})
        port = [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"}]
        await api.call("service.create", {"spec": _lone("a", ports=port)})
        with pytest.raises(UsageError, match="port 8080/tcp is already published by service a"):
            await api.call("service.create", {"spec": _lone("b", ports=port)})
        stacked = _lone("x_y")
        stacked["stack"] = "x"
        with pytest.raises(UsageError, match="without a stack"):
            await api.call("service.create", {"spec": stacked})
        assert [s["name"] for s in await api.call("service.ls", {})] == ["a", "web"]
        assert await api.call("stack.ls", {}) == []
        with pytest.raises(NotFoundError, match="service nope not found"):
            await api.call("service.rm", {"services": ["web", "nope"]})
        assert await api.call("service.rm", {"services": ["web", "a"]}) == ["web", "a"]
        assert await api.call("service.ls", {}) == []
    with_api(tmp_path, body)


def test_update_with_a_whole_spec(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        await api.call("service.create", {"spec": _lone("web")})
        new = _lone("web", user="nobody")
        done = await api.call("service.update", {"service": "web", "spec": new, "version": 1})
        assert done["action"] == "updated" and done["version"] == 2
        with pytest.raises(UsageError, match="changed meanwhile"):
            await api.call("service.update", {"service": "web", "spec": new, "version": 1})
        renamed = _lone("other")
        with pytest.raises(UsageError, match="cannot change the name"):
            await api.call("service.update", {"service": "web", "spec": renamed, "version": 2})
        scaled = ServiceSpec.from_dict(new)
        scaled.replicas = 3
        done = await api.call("service.update", {"service": "web", "spec": scaled.to_dict(), "version": 2})
        assert done["action"] == "scaled" and done["version"] == 2
    with_api(tmp_path, body)


def test_dry_run_commits_nothing_and_prune_removes(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 2), spec("demo_db")]})
        before = await api.call("store.export", {})
        plan = await api.call("stack.deploy", {
            "stack": "demo", "services": [spec("demo_web", 2, image="img:2"), spec("demo_new")],
            "prune": True, "dry_run": True})
        actions = {r["service"]: r["action"] for r in plan if "service" in r}
        assert actions == {"demo_web": "updated", "demo_new": "created", "demo_db": "removed"}
        web = next(r for r in plan if r.get("service") == "demo_web")
        assert web["old"]["container"]["image"] == "img:1" and web["new"]["container"]["image"] == "img:2"
        after = await api.call("store.export", {})
        assert after == before, "a dry run changed the store"
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 2)], "prune": True})
        assert [s["name"] for s in await api.call("service.ls", {})] == ["demo_web"]
    with_api(tmp_path, body)


def test_node_ps_defaults_to_this_node(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        await api.call("join", {"hostname": "w1", "addr": "10.0.0.2", "ssh_host_key": "k1"})
        with pytest.raises(NotFoundError, match="node n0 not found"):
            await api.call("node.ps", {})  # this manager (n0) is not a node of the test store
        assert await api.call("node.ps", {"nodes": ["w1"]}) == []
    with_api(tmp_path, body)


def test_progress_row_counts_current_tasks_and_names_the_reason() -> None:
    svc = Service(id="s1", spec=ServiceSpec(name="web", container=make_container_spec(), replicas=3), version=2)
    nodes = [make_node()]
    tasks = [
        make_task(service_id="s1", spec_version=2, state=TaskState.RUNNING),
        make_task(service_id="s1", spec_version=2, state=TaskState.PENDING,
                  message="no suitable node (scheduling constraints not satisfied on 1 node)"),
        make_task(service_id="s1", spec_version=1, state=TaskState.RUNNING),
        make_task(service_id="s1", spec_version=2, state=TaskState.REJECTED, desired_state="shutdown",
                  error="pull access denied for nope"),
    ]
    row = progress_row(svc, tasks, nodes)
    assert (row["running"], row["desired"], row["outdated"], row["failures"]) == (1, 3, 1, 1)
    assert row["reason"].startswith("no suitable node") and row["unplaced"].startswith("no suitable node")
    assert row["last_error"] == "pull access denied for nope"
