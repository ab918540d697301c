"""The mesh the leader pushes to every node (issue 6): network members,
gateways, and the ingress backends, which follow DNS's ``serves``."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec, make_node, make_service, make_snapshot, make_task  # noqa: E402

from pyswarm.manager.networks import MeshIndex, ipset_name, mesh_message  # noqa: E402
from pyswarm.manager.store import Snapshot  # noqa: E402
from pyswarm.models import DESIRED_SHUTDOWN, Network, Task, TaskState  # noqa: E402

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


class _ChangeLog:
    """What a store's state answers a snapshot's ``changed_since``: the
    (kind, id) touched per index, here written by the test itself."""

    def __init__(self) -> None:
        self.touched: dict[int, set[tuple[str, str]]] = {}

    def changed_since(self, since: int, until: int) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for index in range(since + 1, until + 1):
            out |= self.touched.get(index, set())
        return out


@pytest.mark.parametrize("seed", range(6))
def test_the_mesh_index_kept_from_changes_equals_a_whole_build(seed: int) -> None:
    """The dispatcher's mesh follows the store's changes (a changed task
    moves only its address); after any sequence of task, node and service
    changes it must say exactly what a build from scratch says."""
    rng = random.Random(seed)
    back = Network(id="n1", name="demo_back", stack="demo", internal=True)
    front = Network(id="n2", name="demo_front", stack="demo")
    web = make_service("web", networks=[{"target": "demo_front", "aliases": []}, {"target": "demo_back", "aliases": []}],
                       container=make_container_spec(options={"ports": PORT}))
    db = make_service("db", networks=[{"target": "demo_back", "aliases": []}])
    services = [web, db]
    nodes = [make_node(subnet=f"10.240.{i}.0/24") for i in range(1, 4)]
    tasks: dict[str, Task] = {}
    log = _ChangeLog()
    index = MeshIndex()
    states = [TaskState.ASSIGNED, TaskState.PREPARING, TaskState.RUNNING, TaskState.FAILED, TaskState.SHUTDOWN]
    for step in range(1, 150):
        touched: set[tuple[str, str]] = set()
        for _ in range(rng.randint(1, 4)):
            roll = rng.random()
            if roll < 0.4 or not tasks:  # a new task, sometimes reusing an address still held
                t = make_task(rng.choice(services), ip=f"10.240.{rng.randint(1, 3)}.{rng.randint(2, 12)}",
                              state=rng.choice(states[:3]))
                tasks[t.id] = t
            elif roll < 0.8:  # a state report, or shut down
                t = tasks[rng.choice(sorted(tasks))]
                t = dataclasses.replace(t, state=rng.choice(states)) if rng.random() < 0.7 else \
                    dataclasses.replace(t, desired_state=DESIRED_SHUTDOWN)
                tasks[t.id] = t
            elif roll < 0.92:  # removed (the reaper)
                t = tasks.pop(rng.choice(sorted(tasks)))
            elif roll < 0.96:  # a node's subnet
                n = rng.randrange(len(nodes))
                nodes[n] = dataclasses.replace(nodes[n], subnet=rng.choice([None, f"10.240.{n + 1}.0/24"]))
                touched.add(("node", nodes[n].id))
                continue
            else:  # a service's ports: a whole rebuild
                s = rng.randrange(len(services))
                ports = PORT if rng.random() < 0.5 else []
                spec = dataclasses.replace(services[s].spec, container=make_container_spec(options={"ports": ports}))
                services[s] = dataclasses.replace(services[s], spec=spec)
                touched.add(("service", services[s].id))
                continue
            touched.add(("task", t.id))
        log.touched[step] = touched
        raw = make_snapshot(back, front, *services, *nodes, *tasks.values(), index=step).raw
        snap = Snapshot(step, {kind: dict(objs) for kind, objs in raw.items()}, state=log)  # type: ignore[arg-type]
        assert index.update(snap) == mesh_message(make_snapshot(back, front, *services, *nodes, *tasks.values())), step


def test_sorted_addresses_take_big_and_small_batches() -> None:
    """A scale-up adds thousands of addresses between two publishes (merged
    in one sort), a report adds one (bisected): both keep the mesh's order."""
    from pyswarm.addrs import SortedAddrs, ip_key

    rng = random.Random(7)
    held: dict[str, int] = {}
    s = SortedAddrs()
    for batch in (5000, 3, 2000, 1, 4000, 8):
        for _ in range(batch):
            ip = f"10.{rng.randint(0, 3)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            if ip in held and rng.random() < 0.5:
                s.remove(ip)
                held[ip] -= 1
                if not held[ip]:
                    del held[ip]
            else:
                s.add(ip)
                held[ip] = held.get(ip, 0) + 1
        assert s.ips() == sorted(held, key=ip_key), batch
