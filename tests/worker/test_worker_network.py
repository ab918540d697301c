"""Node network planning, without touching the host (a recording runner)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from pyswarm import protocol
from pyswarm.worker import EngineConflictError, NetworkSetupError
from pyswarm.worker.docker import split_image, socket_path, _event_since
from pyswarm.worker.network import (
    HostNetwork,
    NetworkConfig,
    Route,
    desired_rules,
    docker_network_config,
    gateway_of,
    network_matches,
    parse_our_rules,
    plan_routes,
)

CFG = NetworkConfig.from_message({
    "subnet": "10.240.1.0/24", "pool": "10.240.0.0/16",
    "routes": [{"subnet": "10.240.2.0/24", "via": "10.99.0.2"}, {"subnet": "10.240.3.0/24", "via": "10.99.0.3"},
               {"subnet": "10.240.1.0/24", "via": "10.99.0.1"}],
    "dns": ["10.99.0.1"],
})


def test_config_parsing_and_errors() -> None:
    assert CFG.subnet == "10.240.1.0/24" and CFG.dns == ("10.99.0.1",)
    assert Route("10.240.2.0/24", "10.99.0.2") in CFG.routes
    with pytest.raises(ValueError, match="subnet"):
        NetworkConfig.from_message({"pool": "10.240.0.0/16"})
    with pytest.raises(ValueError, match="bad route"):
        NetworkConfig.from_message({"subnet": "10.240.1.0/24", "pool": "10.240.0.0/16", "routes": [{"subnet": "x"}]})


def test_gateway() -> None:
    assert gateway_of("10.240.7.0/24") == "10.240.7.1"


def test_plan_routes() -> None:
    current = [
        {"dst": "default", "gateway": "10.99.0.254", "dev": "eth0"},
        {"dst": "10.99.0.0/24", "dev": "eth0", "protocol": "kernel"},
        {"dst": "10.240.1.0/24", "dev": "pyswarm0", "protocol": "kernel"},  # ours, connected: keep
        {"dst": "10.240.2.0/24", "gateway": "10.99.0.2", "dev": "eth0"},    # right already
        {"dst": "10.240.3.0/24", "gateway": "10.99.0.9", "dev": "eth0"},    # wrong gateway
        {"dst": "10.240.4.0/24", "gateway": "10.99.0.4", "dev": "eth0"},    # node left
        {"dst": "192.168.5.0/24", "gateway": "10.99.0.4", "dev": "eth0"},   # not the pool's
    ]
    plan = plan_routes(current, CFG)
    assert plan.replace == [Route("10.240.3.0/24", "10.99.0.3")]
    assert plan.delete == ["10.240.4.0/24"]


def test_plan_routes_drops_gateway_route_to_own_subnet() -> None:
    plan = plan_routes([{"dst": "10.240.1.0/24", "gateway": "10.99.0.7"}], CFG)
    assert plan.delete == ["10.240.1.0/24"]


def test_rules_round_trip_through_listing() -> None:
    rules = desired_rules(CFG, "DOCKER-USER")
    listing = "\n".join(["-N DOCKER-USER"] + [f"-A {r.chain} " + " ".join(r.args) for r in rules if r.table == "filter"]
                        + ["-A DOCKER-USER -j RETURN"])
    parsed = parse_our_rules("filter", "DOCKER-USER", listing)
    assert [p.args for p in parsed] == [r.args for r in rules if r.table == "filter"]
    assert [r.args[-1] for r in rules if r.table == "filter"] == ["PYSWARM-FORWARD"]
    masq = [r for r in rules if r.table == "nat" and r.args[-1] == "MASQUERADE"]
    assert len(masq) == 1 and masq[0].args[:4] == ("-s", "10.240.1.0/24", "!", "-d") and not masq[0].insert
    # everything else in POSTROUTING must come before the MASQUERADE: inserted
    assert all(r.insert for r in rules if r not in masq)


def test_network_matches() -> None:
    net = dict(docker_network_config("10.240.1.0/24"))
    assert net["Options"]["com.docker.network.bridge.name"] == protocol.BRIDGE_NAME
    assert network_matches(net, "10.240.1.0/24")
    assert not network_matches(net, "10.240.2.0/24")
    net["Options"] = {}
    assert not network_matches(net, "10.240.1.0/24")


class FakeNetDocker:
    def __init__(self, existing: dict[str, Any] | None) -> None:
        self.existing = existing
        self.created: list[dict[str, Any]] = []
        self.removed = 0

    async def inspect_network(self, name: str) -> dict[str, Any] | None:
        return self.existing

    async def create_network(self, config: dict[str, Any]) -> str:
        if self.existing is not None:
            raise EngineConflictError(409, "exists")
        self.created.append(config)
        self.existing = {**config, "Containers": {}}
        return "id"

    async def remove_network(self, name: str) -> None:
        self.removed += 1
        self.existing = None


class Recorder:
    def __init__(self, routes: str = "[]", chain_exists: bool = True, present: Sequence[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.routes = routes
        self.chain_exists = chain_exists
        self.present = list(present)

    async def __call__(self, argv: Sequence[str], check: bool) -> tuple[int, str, str]:
        argv = list(argv)
        self.calls.append(argv)
        if argv[:3] == ["ip", "-j", "route"]:
            return 0, self.routes, ""
        if argv[0] == "iptables" and "-S" in argv:
            if argv[-1] == "DOCKER-USER" and not self.chain_exists:
                return 1, "", "No chain/target/match by that name."
            return 0, "\n".join(self.present), ""
        if argv[0] == "iptables" and "-C" in argv:
            return 1, "", ""
        return 0, "", ""


def _configure(docker: FakeNetDocker, runner: Recorder, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    async def no_forwarding(self: HostNetwork) -> None:
        return None

    monkeypatch.setattr(HostNetwork, "ensure_forwarding", no_forwarding)
    net = HostNetwork(cast(Any, docker), "n1", runner)
    return asyncio.run(net.configure(CFG))


def test_configure_creates_network_routes_and_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    docker, runner = FakeNetDocker(None), Recorder()
    assert _configure(docker, runner, monkeypatch) == []
    assert docker.created[0]["IPAM"]["Config"] == [{"Subnet": "10.240.1.0/24", "Gateway": "10.240.1.1"}]
    assert ["ip", "route", "replace", "10.240.2.0/24", "via", "10.99.0.2"] in runner.calls
    assert not any(c[:3] == ["ip", "route", "replace"] and "10.240.1.0/24" in c for c in runner.calls)
    inserts = [c for c in runner.calls if "-I" in c]
    assert inserts and inserts[0][inserts[0].index("-I") + 1] == "DOCKER-USER"
    assert any("-A" in c and "POSTROUTING" in c and "MASQUERADE" in c for c in runner.calls)


def test_configure_uses_forward_without_docker_user(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = Recorder(chain_exists=False)
    _configure(FakeNetDocker(None), runner, monkeypatch)
    assert any("-I" in c and "FORWARD" in c for c in runner.calls)


def test_configure_removes_stale_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    stale = "-A POSTROUTING -s 10.240.9.0/24 ! -d 10.240.0.0/16 -m comment --comment pyswarm -j MASQUERADE"
    runner = Recorder(present=[stale, "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"])
    _configure(FakeNetDocker(None), runner, monkeypatch)
    deletes = [c for c in runner.calls if "-D" in c]
    assert len(deletes) == 1 and "10.240.9.0/24" in deletes[0]


def test_configure_recreates_network_with_wrong_subnet(monkeypatch: pytest.MonkeyPatch) -> None:
    old = {**docker_network_config("10.240.5.0/24"), "Containers": {}}
    docker = FakeNetDocker(old)
    assert _configure(docker, Recorder(), monkeypatch) == []
    assert docker.removed == 1 and docker.created[0]["IPAM"]["Config"][0]["Subnet"] == "10.240.1.0/24"


def test_configure_refuses_to_cut_off_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    old = {**docker_network_config("10.240.5.0/24"), "Containers": {"abc": {}}}
    docker, runner = FakeNetDocker(old), Recorder()
    problems = _configure(docker, runner, monkeypatch)
    assert docker.removed == 0
    assert len(problems) == 1 and "1 container(s) attached" in problems[0]
    # the rest still happened
    assert any(c[:3] == ["ip", "route", "replace"] for c in runner.calls)


def test_network_setup_error_is_a_runtime_error() -> None:
    from pyswarm.errors import PyswarmError
    from pyswarm.worker import RuntimeError_

    assert issubclass(NetworkSetupError, RuntimeError_) and issubclass(RuntimeError_, PyswarmError)


def test_docker_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_image("busybox") == ("busybox", "latest")
    assert split_image("pyswarm-lab/busybox:latest") == ("pyswarm-lab/busybox", "latest")
    assert split_image("reg:5000/app") == ("reg:5000/app", "latest")
    assert split_image("reg:5000/app:2") == ("reg:5000/app", "2")
    assert split_image("app@sha256:ab") == ("app", "sha256:ab")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert socket_path() == "/var/run/docker.sock"
    assert socket_path("unix:///tmp/d.sock") == "/tmp/d.sock"
    from pyswarm.worker import EngineUnavailableError

    with pytest.raises(EngineUnavailableError, match="only unix"):
        socket_path("tcp://1.2.3.4:2375")
    assert _event_since({"timeNano": 1_700_000_000_123_456_789}) == "1700000000.123456789"
    assert _event_since({"time": 5}) == "5"
