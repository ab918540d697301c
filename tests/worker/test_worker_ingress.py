"""The mesh on one node (isolation sets and chains, ingress DNAT spread) and
the VXLAN overlay's plan, without touching the host: pure functions and a
recording runner. The real kernel applies them in tests/e2e/test_networks.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, cast

import pytest

from pyswarm.worker.ingress import Mesh, filter_rules, ipset_input, nat_rules, restore_input
from pyswarm.worker.network import HostNetwork, NetworkConfig, overlay_config, vtep_addr, vtep_mac

POOL = "10.240.0.0/16"
SET_A = "psw-" + "a" * 12
SET_B = "psw-" + "b" * 12
MESH = Mesh.from_message({
    "op": "mesh", "gateways": ["10.240.1.1", "10.240.2.1"],
    "networks": {SET_A: ["10.240.1.2", "10.240.2.2"], SET_B: []},
    "ingress": [
        {"service": "demo_web", "port": "8080", "protocol": "tcp",
         "backends": ["10.240.1.2:80", "10.240.2.2:80", "10.240.2.3:80"]},
        {"service": "demo_dns", "port": "5300-5301", "protocol": "udp", "backends": ["10.240.1.9:53"]},
        {"service": "demo_idle", "port": "9000", "protocol": "tcp", "backends": []},
    ],
})


def test_mesh_message_is_validated() -> None:
    for bad in ({"networks": {"not-ours": []}}, {"gateways": ["x"]},
                {"ingress": [{"port": "80; rm", "backends": []}]},
                {"ingress": [{"port": "80", "protocol": "sctp"}]},
                {"ingress": [{"port": "80", "backends": ["10.0.0.1"]}]}):
        with pytest.raises(ValueError, match="mesh:"):
            Mesh.from_message(bad)
    assert Mesh.from_message({}).networks is None  # an old leader: no isolation


def test_without_networks_pool_traffic_is_accepted_as_before() -> None:
    assert filter_rules(None, POOL)[-1] == f"-A PYSWARM-FORWARD -s {POOL} -d {POOL} -j ACCEPT"
    assert not any("DROP" in r for r in filter_rules(Mesh(), POOL))


def test_isolation_accepts_only_a_shared_set_then_drops() -> None:
    rules = filter_rules(MESH, POOL)
    assert rules[0].endswith("--ctstate DNAT -j ACCEPT")  # the published ports, from anywhere
    shared = [r for r in rules if "--match-set psw-a" in r]
    assert shared == [f"-A PYSWARM-FORWARD -m set --match-set {SET_A} src -m set --match-set {SET_A} dst -j ACCEPT"]
    assert rules[-1] == "-A PYSWARM-FORWARD -j DROP"
    # only pool→pool is judged; anything else returns to the engine's chains
    assert rules.index(f"-A PYSWARM-FORWARD ! -s {POOL} -j RETURN") < rules.index(rules[-1])


def test_ingress_spreads_evenly_over_every_backend() -> None:
    rules = [r for r in nat_rules(MESH) if "--dport 8080" in r]
    assert "MARK --set-xmark 0x8000/0x8000" in rules[0]
    dnat = rules[1:]
    probs = [float(m.group(1)) if (m := re.search(r"--probability ([0-9.]+)", r)) else 1.0 for r in dnat]
    assert probs == pytest.approx([1 / 3, 1 / 2, 1.0])
    # the chance of each backend: 1/3 each
    chances, left = [], 1.0
    for p in probs:
        chances.append(left * p)
        left *= 1 - p
    assert chances == pytest.approx([1 / 3] * 3)
    assert [r.rsplit(" ", 1)[-1] for r in dnat] == ["10.240.1.2:80", "10.240.2.2:80", "10.240.2.3:80"]


def test_ingress_ranges_udp_and_ports_without_replicas() -> None:
    rules = nat_rules(MESH)
    assert any("-p udp -m udp --dport 5300:5301" in r and r.endswith("10.240.1.9:53") for r in rules)
    assert not any("9000" in r for r in rules)  # refused by the host rather than sent nowhere


def test_restore_document_declares_only_our_chains() -> None:
    doc = restore_input(MESH, POOL)
    assert re.findall(r"^:(\S+)", doc, re.M) == ["PYSWARM-FORWARD", "PYSWARM-INGRESS"]
    assert doc.count("COMMIT") == 2


def test_ipsets_are_swapped_in_whole() -> None:
    text = ipset_input(MESH)
    assert "create psw-gw hash:ip -exist" in text and "add psw-gw-t 10.240.2.1 -exist" in text
    assert text.index(f"add {SET_A}-t 10.240.2.2") < text.index(f"swap {SET_A}-t {SET_A}")
    assert f"flush {SET_B}-t" in text  # an empty network empties its set


def test_vtep_is_derived_from_the_subnet() -> None:
    assert vtep_addr("10.240.3.0/24") == "10.240.3.0"
    assert vtep_mac("10.240.3.0/24") == "02:70:0a:f0:03:00"
    assert vtep_mac("10.240.3.0/24") != vtep_mac("10.240.4.0/24")


CFG = NetworkConfig.from_message({
    "subnet": "10.240.1.0/24", "pool": POOL, "overlay": "vxlan", "addr": "10.99.0.1",
    "routes": [{"subnet": "10.240.2.0/24", "via": "10.99.0.2"}],
})


def test_overlay_routes_go_via_the_peer_vtep() -> None:
    assert [(r.subnet, r.via) for r in overlay_config(CFG).routes] == [("10.240.2.0/24", "10.240.2.0")]
    with pytest.raises(ValueError, match="overlay"):
        NetworkConfig.from_message({"subnet": "10.240.1.0/24", "pool": POOL, "overlay": "gre"})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], check: bool) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if argv[:3] == ["ip", "-j", "route"]:
            return 0, "[]", ""
        if list(argv[:3]) == ["ip", "link", "show"]:
            return 1, "", "does not exist"
        return (1 if "-C" in argv else 0), "", ""


def test_configure_with_vxlan_builds_the_device_and_static_peer_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    class Docker:
        async def inspect_network(self, name: str) -> dict[str, Any]:
            return {"IPAM": {"Config": [{"Subnet": "10.240.1.0/24"}]},
                    "Options": {"com.docker.network.bridge.name": "pyswarm0",
                                "com.docker.network.bridge.enable_ip_masquerade": "false"}}

    async def nothing(self: HostNetwork) -> None:
        return None

    monkeypatch.setattr(HostNetwork, "ensure_forwarding", nothing)
    runner = Recorder()
    problems = asyncio.run(HostNetwork(cast(Any, Docker()), "n1", runner).configure(CFG))
    assert problems == []
    calls = [" ".join(c) for c in runner.calls]
    assert "ip link add pswvx0 type vxlan id 4242 dstport 4789 local 10.99.0.1 nolearning" in calls
    assert "ip neigh replace 10.240.2.0 lladdr 02:70:0a:f0:02:00 dev pswvx0 nud permanent" in calls
    assert "bridge fdb replace 02:70:0a:f0:02:00 dev pswvx0 dst 10.99.0.2 self permanent" in calls
    assert "ip route replace 10.240.2.0/24 via 10.240.2.0 dev pswvx0 onlink" in calls


def test_host_mode_ports_become_engine_port_bindings() -> None:
    from pyswarm.worker.ingress import host_port_bindings

    ports = [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"},
             {"target": 53, "published": 5353, "protocol": "udp", "mode": "host", "host_ip": "0.0.0.0"}]
    assert host_port_bindings({"ports": ports}) == {
        "ExposedPorts": {"53/udp": {}},
        "PortBindings": {"53/udp": [{"HostPort": "5353", "HostIp": "0.0.0.0"}]},
    }
    assert host_port_bindings({"ports": ports[:1]}) == {}


def test_internal_tasks_reach_the_pool_and_the_managers_dns_only() -> None:
    mesh = Mesh.from_message({"networks": {SET_A: ["10.240.1.2"]}, "internal": ["10.240.1.2"]})
    rules = filter_rules(mesh, POOL, dns=("10.0.0.11", "fd00::11"))  # an IPv6 manager: not for iptables
    inside = "-m set --match-set psw-internal src"
    drop = f"-A PYSWARM-FORWARD {inside} ! -d {POOL} -j DROP"
    dns = [r for r in rules if "--dport 53" in r]
    assert dns == [f"-A PYSWARM-FORWARD {inside} -d 10.0.0.11/32 -p {p} -m {p} --dport 53 -j RETURN" for p in ("udp", "tcp")]
    assert rules.index(dns[-1]) < rules.index(drop) < rules.index(f"-A PYSWARM-FORWARD ! -d {POOL} -j RETURN"), rules
    assert rules[0].endswith("--ctstate DNAT -j ACCEPT"), "published ports must still reach internal tasks"
    assert "add psw-internal-t 10.240.1.2 -exist" in ipset_input(mesh)
    assert "create psw-internal-t hash:ip -exist" in ipset_input(MESH), "the set the rule names must always exist"
