"""The API's methods against a real single-manager store (no sockets)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec  # noqa: E402
from test_store import free_port, started  # noqa: E402

from pyswarm.errors import NotFoundError, UsageError  # noqa: E402
from pyswarm.manager.api import Api, Self  # noqa: E402
from pyswarm.models import Cluster, ServiceSpec  # noqa: E402


def with_api(tmp_path: Path, body: Callable[[Api], Awaitable[None]]) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            cluster = Cluster(id="c1", ssh_public_key="ssh-ed25519 AAAA", worker_token_secret="w" * 25)
            await store.commit([["put", "cluster", cluster.id, cluster.to_dict()]])
            await body(Api(store, Self("n0", "127.0.0.1", 2377, "f" * 52)))
        finally:
            store.stop()
    asyncio.run(go())


def spec(name: str, replicas: int = 1, image: str = "img:1") -> dict[str, Any]:
    return ServiceSpec(name=name, container=make_container_spec(image=image), replicas=replicas).to_dict()


def test_join_gives_each_node_its_own_subnet_and_keeps_it_on_rejoin(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        a = await api.call("join", {"hostname": "w1", "addr": "10.0.0.2", "ssh_host_key": "k1"})
        b = await api.call("join", {"hostname": "w2", "addr": "10.0.0.3", "ssh_host_key": "k2"})
        assert a["subnet"] != b["subnet"], f"two nodes got {a['subnet']}"
        again = await api.call("join", {"hostname": "w1", "addr": "10.0.0.2", "ssh_host_key": "k1b"})
        assert again == a, f"rejoin changed identity: {again} != {a}"
        rows = await api.call("node.ls", {})
        assert sorted(r["hostname"] for r in rows) == ["w1", "w2"]
    with_api(tmp_path, body)


def test_deploy_update_scale_and_remove_a_stack(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        first = await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 3), spec("demo_db")]})
        assert [r["action"] for r in first] == ["created", "created"]
        again = await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 3), spec("demo_db", image="img:2")]})
        assert [r["action"] for r in again] == ["unchanged", "updated"]
        db = await api.call("service.inspect", {"service": "demo_db"})
        assert db["version"] == 2 and db["previous_spec"]["container"]["image"] == "img:1"
        await api.call("service.scale", {"scales": {"demo_web": 5}})
        web = await api.call("service.inspect", {"service": "demo_web"})
        assert web["spec"]["replicas"] == 5 and web["version"] == 1, "a scale must not bump the version"
        assert await api.call("stack.ls", {}) == [{"name": "demo", "services": 2}]
        assert await api.call("stack.rm", {"stack": "demo"}) == ["demo_db", "demo_web"]
        assert await api.call("service.ls", {}) == []
        with pytest.raises(NotFoundError, match="nothing found in stack: demo"):
            await api.call("stack.rm", {"stack": "demo"})
    with_api(tmp_path, body)


def test_scale_refuses_bad_input_before_changing_anything(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 2)]})
        with pytest.raises(NotFoundError, match="service nope not found"):
            await api.call("service.scale", {"scales": {"demo_web": 4, "nope": 1}})
        with pytest.raises(UsageError, match="non-negative"):
            await api.call("service.scale", {"scales": {"demo_web": -1}})
        web = await api.call("service.inspect", {"service": "demo_web"})
        assert web["spec"]["replicas"] == 2
    with_api(tmp_path, body)
