"""The mesh the leader pushes to every node (issue 6): network members,
gateways, and the ingress backends, which follow DNS's ``serves``."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec, make_node, make_service, make_snapshot, make_task  # noqa: E402

from pyswarm.manager.networks import ipset_name, mesh_message  # noqa: E402
from pyswarm.models import DESIRED_SHUTDOWN, Network, TaskState  # noqa: E402

PORT = [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"},
        {"target": 53, "published": 53, "protocol": "udp", "mode": "host"}]


def test_mesh_lists_members_gateways_and_serving_backends() -> None:
    web = make_service("web", networks=[{"target": "demo_front", "aliases": []},
                                        {"target": "demo_back", "aliases": []}],
                       container=make_container_spec(options={"ports": PORT}))
    db = make_service("db", networks=[{"target": "demo_back", "aliases": []}])
    old = make_service("old", stack="legacy")  # deployed before networks: the unnamed network
    tasks = [
        make_task(web, ip="10.240.2.2", state=TaskState.RUNNING),
        make_task(web, ip="10.240.1.2", state=TaskState.RUNNING),
        make_task(web, ip="10.240.1.9", state=TaskState.STARTING),  # a member, not yet a backend
        make_task(web, ip="10.240.1.7", state=TaskState.RUNNING, desired_state=DESIRED_SHUTDOWN),
        make_task(web, ip="10.240.1.8", state=TaskState.FAILED),  # gone: neither
        make_task(db, ip="10.240.2.3", state=TaskState.RUNNING),
        make_task(old, ip="10.240.2.4", state=TaskState.RUNNING),
    ]
    nodes = [make_node(subnet="10.240.1.0/24"), make_node(subnet="10.240.2.0/24")]
    mesh = mesh_message(make_snapshot(web, db, old, *nodes, *tasks))
    assert mesh["op"] == "mesh"
    assert mesh["gateways"] == ["10.240.1.1", "10.240.2.1"]
    nets = mesh["networks"]
    assert nets[ipset_name("demo_front")] == ["10.240.1.2", "10.240.1.7", "10.240.1.9", "10.240.2.2"]
    assert nets[ipset_name("demo_back")] == ["10.240.1.2", "10.240.1.7", "10.240.1.9", "10.240.2.2", "10.240.2.3"]
    assert nets[ipset_name("")] == ["10.240.2.4"]
    # only the ingress port, and only replicas that DNS would answer
    assert mesh["ingress"] == [{"service": "demo_web", "port": "8080", "protocol": "tcp",
                                "backends": ["10.240.1.2:80", "10.240.2.2:80"]}]


def test_ipset_names_fit_the_kernel_limit() -> None:
    name = ipset_name("a" * 63)
    assert len(name + "-t") <= 31 and name != ipset_name("b")


def test_tasks_only_on_internal_networks_are_listed_as_internal() -> None:
    back = Network(id="n1", name="demo_back", stack="demo", internal=True)
    front = Network(id="n2", name="demo_front", stack="demo")
    db = make_service("db", networks=[{"target": "demo_back", "aliases": []}])
    web = make_service("web", networks=[{"target": "demo_front", "aliases": []},
                                        {"target": "demo_back", "aliases": []}])
    tasks = [make_task(db, ip="10.240.1.2", state=TaskState.RUNNING),
             make_task(web, ip="10.240.1.3", state=TaskState.RUNNING)]
    mesh = mesh_message(make_snapshot(back, front, db, web, *tasks))
    # web also has a way out (demo_front), as with Docker's internal networks
    assert mesh["internal"] == ["10.240.1.2"], mesh
