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
        again = await api.call("join", {"hostname": "w1", "addr": "10.0.0.2", "ssh_host_key": "k1"})
        assert again == a, f"rejoin changed identity: {again} != {a}"
        with pytest.raises(UsageError, match="another SSH host key.*node rm w1"):  # not a silent re-pin
            await api.call("join", {"hostname": "w1", "addr": "10.0.0.2", "ssh_host_key": "k1b"})
        rows = await api.call("node.ls", {})
        assert sorted(r["hostname"] for r in rows) == ["w1", "w2"]
    with_api(tmp_path, body)


def test_forty_hosts_joining_at_once_all_get_in_with_their_own_subnets(tmp_path: Path) -> None:
    """Joins race for the first free subnet; the losers must retry, not fail
    (the footprint bench joins 16 at a time and got 'subnet … exists')."""
    async def body(api: Api) -> None:
        answers = await asyncio.gather(*(api.call("join", {"hostname": f"w{i}", "addr": f"10.0.1.{i + 2}",
                                                           "ssh_host_key": f"k{i}"}) for i in range(40)),
                                       return_exceptions=True)
        failed = [a for a in answers if isinstance(a, BaseException)]
        assert not failed, f"{len(failed)} of 40 concurrent joins failed: {failed[:3]}"
        subnets = [a["subnet"] for a in answers if isinstance(a, dict)]
        assert len(set(subnets)) == 40, f"subnets handed out twice: {sorted(subnets)}"
    with_api(tmp_path, body)


def test_deploy_update_scale_and_remove_a_stack(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        first = await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 3), spec("demo_db")]})
        assert [r["action"] for r in first if "service" in r] == ["created", "created"]
        again = await api.call("stack.deploy", {"stack": "demo", "services": [spec("demo_web", 3), spec("demo_db", image="img:2")]})
        assert [r["action"] for r in again if "service" in r] == ["unchanged", "updated"]
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


def _net_spec(name: str, networks: dict[str, Any] | None = None, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if networks is not None:
        options["networks"] = networks
    if ports is not None:
        options["ports"] = ports
    return ServiceSpec(name=name, container=make_container_spec(options=options)).to_dict()


def test_stack_networks_external_networks_and_rm(tmp_path: Path) -> None:
    """Issue 6: a stack's networks are created as STACK_NAME (STACK_default
    for services that name none), aliases are kept, an external network
    must exist, and a network in use cannot be removed."""
    async def body(api: Api) -> None:
        services = [_net_spec("demo_web", {"front": {"aliases": ["www"]}, "shared": None}),
                    _net_spec("demo_db", {"shared": {}}), _net_spec("demo_lone")]
        declared = {"front": {}, "shared": {"external": True}}
        with pytest.raises(UsageError, match="network 'shared' is external but network 'shared' does not exist"):
            await api.call("stack.deploy", {"stack": "demo", "services": services, "networks": declared})
        await api.call("network.create", {"name": "shared"})
        with pytest.raises(UsageError, match="already exists"):
            await api.call("network.create", {"name": "shared"})
        with pytest.raises(UsageError, match="invalid network name"):
            await api.call("network.create", {"name": "-bad"})
        report = await api.call("stack.deploy", {"stack": "demo", "services": services, "networks": declared})
        assert sorted(r["network"] for r in report if "network" in r) == ["demo_default", "demo_front"]
        web = await api.call("service.inspect", {"service": "demo_web"})
        assert web["spec"]["networks"] == [{"target": "demo_front", "aliases": ["www"]},
                                           {"target": "shared", "aliases": []}]
        lone = await api.call("service.inspect", {"service": "demo_lone"})
        assert lone["spec"]["networks"] == [{"target": "demo_default", "aliases": []}]
        rows = {r["name"]: r for r in await api.call("network.ls", {})}
        assert rows["shared"]["services"] == ["demo_db", "demo_web"] and rows["shared"]["stack"] == ""
        with pytest.raises(UsageError, match="network shared is in use by the following services: demo_db, demo_web"):
            await api.call("network.rm", {"names": ["shared"]})
        await api.call("stack.rm", {"stack": "demo"})
        assert [r["name"] for r in await api.call("network.ls", {})] == ["shared"]  # the stack's own went with it
        assert await api.call("network.rm", {"names": ["shared"]}) == ["shared"]
        with pytest.raises(NotFoundError):
            await api.call("network.inspect", {"name": "shared"})
    with_api(tmp_path, body)


def test_an_ingress_port_is_published_by_one_service(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        port = [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"}]
        await api.call("stack.deploy", {"stack": "a", "services": [_net_spec("a_web", ports=port)]})
        with pytest.raises(UsageError, match="port 8080/tcp is already published by service a_web"):
            await api.call("stack.deploy", {"stack": "b", "services": [_net_spec("b_web", ports=port)]})
        # the same service may deploy again
        await api.call("stack.deploy", {"stack": "a", "services": [_net_spec("a_web", ports=port)]})
    with_api(tmp_path, body)


def test_a_replica_still_replaying_its_log_answers_only_once_caught_up(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted manager loads its last dump before the journal after it:
    a read in between answered from the past (CI saw ``unlock-key --rotate``
    say autolock was off a minute after it was turned on)."""
    import pyswarm.manager.api as api_module
    from pyswarm.errors import ElectionError
    from pyswarm.manager.store import Store

    behind = {"now": True}
    monkeypatch.setattr(Store, "in_sync", property(lambda self: not behind["now"]))

    async def body(api: Api) -> None:
        assert (await api.call("ping", {}))["node_id"] == "n0", "ping must answer while catching up"
        read = asyncio.ensure_future(api.call("node.ls", {}))
        await asyncio.sleep(0.2)
        assert not read.done(), f"node.ls answered from a replica that had not caught up: {read.result()}"
        behind["now"] = False
        assert await asyncio.wait_for(read, 2) == []
        behind["now"] = True  # the next start of this manager, and no leader to catch up from
        monkeypatch.setattr(api_module, "CATCH_UP_WAIT", 0.1)
        with pytest.raises(ElectionError, match="still catching up"):
            await Api(api._store, api._me).call("service.ls", {})
    with_api(tmp_path, body)


def test_once_caught_up_a_manager_never_waits_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that stepped down over a full disk is not "in sync" by
    Raft's flags; it must go on answering (and saying why it refuses writes),
    not wait for a catch-up that is not coming (CI: the full-disk test)."""
    from pyswarm.manager.store import Store

    behind = {"now": False}
    monkeypatch.setattr(Store, "in_sync", property(lambda self: not behind["now"]))

    async def body(api: Api) -> None:
        assert await api.call("node.ls", {}) == []
        behind["now"] = True
        assert await asyncio.wait_for(api.call("node.ls", {}), 1) == []
    with_api(tmp_path, body)
