"""depends_on as a scheduler-side gate, and secrets/configs in the store."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec, make_node, make_service, make_snapshot, make_task  # noqa: E402
from test_api import with_api  # noqa: E402

from pyswarm.errors import NotFoundError, UsageError  # noqa: E402
from pyswarm.manager import objects  # noqa: E402
from pyswarm.manager.api import Api  # noqa: E402
from pyswarm.manager.dependencies import blocked_services  # noqa: E402
from pyswarm.manager.dispatcher import node_assignments  # noqa: E402
from pyswarm.manager.scheduling import plan_ops  # noqa: E402
from pyswarm.models import Secret, ServiceSpec, TaskState  # noqa: E402

STARTED = {"condition": "service_started", "required": True}


def test_dependent_waits_until_its_dependency_runs() -> None:
    db = make_service("db")
    web = make_service("web", depends_on={"db": STARTED})
    node = make_node()
    db_task, web_task = make_task(db), make_task(web)
    ops = plan_ops(make_snapshot(node, db, web, db_task, web_task), 0.0)
    assigned = [op[1] for op in ops if op[0] == "advance"]
    assert assigned == [db_task.id], f"only db may be placed first: {ops}"
    assert ["patch", "task", web_task.id, {"message": "waiting for dependency db"}] in ops

    running = make_task(db, id=db_task.id, node_id=node.id, state=TaskState.RUNNING)
    ops = plan_ops(make_snapshot(node, db, web, running, web_task), 0.0)
    assert [op[1] for op in ops if op[0] == "advance"] == [web_task.id], ops


@pytest.mark.parametrize("condition, state, health, exit_code, met", [
    ("service_started", TaskState.STARTING, None, None, False),
    ("service_started", TaskState.RUNNING, None, None, True),
    ("service_healthy", TaskState.RUNNING, None, None, True),  # no health info: running means healthy
    ("service_healthy", TaskState.RUNNING, "starting", None, False),
    ("service_healthy", TaskState.RUNNING, "healthy", None, True),
    ("service_completed_successfully", TaskState.RUNNING, None, None, False),
    ("service_completed_successfully", TaskState.FAILED, None, 1, False),
    ("service_completed_successfully", TaskState.COMPLETE, None, 0, True),
])
def test_conditions(condition: str, state: TaskState, health: str | None, exit_code: int | None,
                    met: bool) -> None:
    dep = make_service("dep")
    svc = make_service("app", depends_on={"dep": {"condition": condition, "required": True}})
    task = make_task(dep, state=state, node_id="n1", exit_code=exit_code)
    if health is not None:
        object.__setattr__(task, "health", health)  # the field issue 5 may add
    held = blocked_services({dep.id: dep, svc.id: svc}, [task])
    assert (svc.id not in held) is met, held
    if not met:
        assert held[svc.id].startswith("waiting for dependency dep")


def test_missing_and_optional_dependencies() -> None:
    svc = make_service("app", depends_on={"gone": STARTED, "maybe": {"condition": "service_started",
                                                                      "required": False}})
    assert blocked_services({svc.id: svc}, []) == {svc.id: "waiting for dependency gone (not deployed)"}


def test_dependencies_are_per_stack() -> None:
    other_db = make_service("db", stack="other")
    web = make_service("web", depends_on={"db": STARTED})
    running = make_task(other_db, state=TaskState.RUNNING, node_id="n1")
    assert web.id in blocked_services({other_db.id: other_db, web.id: web}, [running])


# -- secrets and configs -----------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def with_secret(name: str) -> dict[str, Any]:
    container = make_container_spec(options={"secrets": [{"source": "pw", "name": name, "target": "pw",
                                                          "mode": 0o400, "uid": "1000"}]})
    return ServiceSpec(name="demo_web", container=container).to_dict()


def test_secret_lifecycle_and_data_never_shown(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        created = await api.call("secret.create", {"name": "db_pw", "data": b64(b"hunter2"),
                                                   "labels": {"a": "b"}})
        assert created["name"] == "db_pw"
        with pytest.raises(UsageError, match="already exists"):
            await api.call("secret.create", {"name": "db_pw", "data": b64(b"other")})
        with pytest.raises(UsageError, match="invalid secret name"):
            await api.call("secret.create", {"name": "-bad", "data": b64(b"x")})
        rows = await api.call("secret.ls", {})
        shown = await api.call("secret.inspect", {"name": "db_pw"})
        assert [r["name"] for r in rows] == ["db_pw"] and shown["labels"] == {"a": "b"}
        assert "data" not in shown and "data" not in rows[0] and shown["size"] == 7
        # a service using it: it cannot be removed, and inspect shows no data
        await api.call("stack.deploy", {"stack": "demo", "services": [with_secret("db_pw")]})
        inspected = str(await api.call("service.inspect", {"service": "demo_web"}))
        assert "hunter2" not in inspected and b64(b"hunter2") not in inspected
        with pytest.raises(UsageError, match="in use by the following services: demo_web"):
            await api.call("secret.rm", {"names": ["db_pw"]})
        await api.call("stack.rm", {"stack": "demo"})
        assert await api.call("secret.rm", {"names": ["db_pw"]}) == ["db_pw"]
        with pytest.raises(NotFoundError):
            await api.call("secret.inspect", {"name": "db_pw"})
        # configs show their data
        await api.call("config.create", {"name": "conf", "data": b64(b"a=1")})
        assert (await api.call("config.inspect", {"name": "conf"}))["data"] == b64(b"a=1")
    with_api(tmp_path, body)


def test_stack_deploy_creates_its_objects_and_rm_removes_them(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        params = {"stack": "demo", "services": [with_secret("demo_pw")],
                  "secrets": [{"name": "demo_pw", "data": b64(b"s3cret"), "labels": {}}],
                  "configs": [{"name": "ext_conf", "external": True}]}
        with pytest.raises(UsageError, match="external config ext_conf not found"):
            await api.call("stack.deploy", params)
        assert await api.call("secret.ls", {}) == [], "a refused deploy created something"
        await api.call("config.create", {"name": "ext_conf", "data": b64(b"x")})
        report = await api.call("stack.deploy", params)
        assert {"secret": "demo_pw", "action": "created"}.items() <= report[0].items()
        shown = await api.call("secret.inspect", {"name": "demo_pw"})
        assert shown["labels"] == {"com.docker.stack.namespace": "demo"}
        # same data again: fine; other data: refused, nothing changed
        await api.call("stack.deploy", params)
        changed = {**params, "secrets": [{"name": "demo_pw", "data": b64(b"new"), "labels": {}}]}
        with pytest.raises(UsageError, match="secret demo_pw exists with other content"):
            await api.call("stack.deploy", changed)
        await api.call("stack.rm", {"stack": "demo"})
        assert await api.call("secret.ls", {}) == []
        assert [c["name"] for c in await api.call("config.ls", {})] == ["ext_conf"], "external config removed"
    with_api(tmp_path, body)


def test_stack_deploy_refuses_a_reference_to_a_missing_secret(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        with pytest.raises(UsageError, match="service demo_web: secret nope not found"):
            await api.call("stack.deploy", {"stack": "demo", "services": [with_secret("nope")]})
    with_api(tmp_path, body)


def test_only_nodes_running_a_user_get_the_data() -> None:
    secret = Secret(id="s1", name="demo_pw", data=b64(b"hunter2"))
    user = make_service("web", container=make_container_spec(
        options={"secrets": [{"source": "pw", "name": "demo_pw", "target": "pw", "uid": "1000", "mode": 0o400}]}))
    other = make_service("other")
    n1, n2 = make_node(), make_node()
    t1 = make_task(user, node_id=n1.id, state=TaskState.ASSIGNED)
    t2 = make_task(other, node_id=n2.id, state=TaskState.ASSIGNED)
    snap = make_snapshot(n1, n2, user, other, t1, t2, secret)
    [a1] = node_assignments(snap, n1.id, "pyswarm")
    [a2] = node_assignments(snap, n2.id, "pyswarm")
    assert a1["secrets"] == [{"name": "demo_pw", "target": "/run/secrets/pw", "uid": "1000", "gid": "0",
                              "mode": 0o400, "data": b64(b"hunter2")}]
    assert "secrets" not in a2 and b64(b"hunter2") not in str(a2)


def test_file_targets() -> None:
    assert objects.file_target("secret", {"source": "pw"}) == "/run/secrets/pw"
    assert objects.file_target("secret", {"source": "pw", "target": "db"}) == "/run/secrets/db"
    assert objects.file_target("secret", {"source": "pw", "target": "/etc/pw"}) == "/etc/pw"
    assert objects.file_target("config", {"source": "conf"}) == "/conf"
    assert objects.file_target("config", {"source": "conf", "target": "/etc/c.conf"}) == "/etc/c.conf"


def test_size_limit() -> None:
    """Swarm's 500 KB (500 * 1024 bytes), for `secret create` and `stack deploy` alike."""
    assert objects.MAX_SIZE == 512_000
    assert len(objects.decode_data("secret", "ok", b64(b"x" * objects.MAX_SIZE))) == objects.MAX_SIZE
    message = r"secret big: larger than Swarm's 500 KB limit for a secret \(512,000 bytes\)"
    with pytest.raises(UsageError, match=message):
        objects.decode_data("secret", "big", b64(b"x" * (objects.MAX_SIZE + 1)))
    with pytest.raises(UsageError, match=message):  # refused on its length, not decoded
        objects.decode_data("secret", "big", "A" * (1 << 20))
    with pytest.raises(UsageError, match="not valid base64"):
        objects.decode_data("secret", "bad", "***")
