"""The scheduler as a pure function: spread, filters and their explanations."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:  # tests/ is not a package; see factories.py
    sys.path.insert(0, _TESTS)

from factories import make_manager, make_node, make_service, make_task, make_tasks  # noqa: E402

from pyswarm.manager.filters import ConstraintError, parse_constraint  # noqa: E402
from pyswarm.manager.scheduler import Assignment, Plan, schedule  # noqa: E402
from pyswarm.models import (  # noqa: E402
    DESIRED_SHUTDOWN,
    Node,
    NodeAvailability,
    NodeStatus,
    Resources,
    Service,
    Task,
    TaskState,
)

MiB = 2**20


def services_of(*services: Service) -> dict[str, Service]:
    return {s.id: s for s in services}


def per_node(plan: Plan, nodes: list[Node]) -> list[int]:
    """Assignments per node, in the order of ``nodes``."""
    counts = Counter(a.node_id for a in plan.assignments)
    return [counts[n.id] for n in nodes]


# -- spread ------------------------------------------------------------------


def test_five_replicas_over_manager_and_three_workers_land_2_1_1_1() -> None:
    nodes = [make_manager(), make_node(), make_node(), make_node()]
    web = make_service("web", replicas=5)
    plan = schedule(nodes, services_of(web), make_tasks(web))
    assert sorted(per_node(plan, nodes), reverse=True) == [2, 1, 1, 1]
    assert plan.unplaced == {}
    # the tie among equal nodes goes to the smallest node id: the manager here
    assert per_node(plan, nodes) == [2, 1, 1, 1]


def test_thirty_over_three_nodes_land_ten_each() -> None:
    nodes = [make_node() for _ in range(3)]
    web = make_service("web", replicas=30)
    plan = schedule(nodes, services_of(web), make_tasks(web))
    assert per_node(plan, nodes) == [10, 10, 10]


def test_each_task_assigned_once() -> None:
    nodes = [make_node() for _ in range(3)]
    web = make_service("web", replicas=7)
    tasks = make_tasks(web)
    plan = schedule(nodes, services_of(web), tasks)
    assert sorted(a.task_id for a in plan.assignments) == sorted(t.id for t in tasks)


def test_existing_tasks_count_toward_spread() -> None:
    a, b, c = nodes = [make_node() for _ in range(3)]
    web = make_service("web", replicas=6)
    running = [make_task(web, slot=s, node_id=n.id, state=TaskState.RUNNING)
               for s, n in ((1, a), (2, a), (3, b))]
    waiting = [make_task(web, slot=s) for s in (4, 5, 6)]
    plan = schedule(nodes, services_of(web), running + waiting)
    assert per_node(plan, nodes) == [0, 1, 2]


def test_scaling_in_steps_equals_scaling_at_once() -> None:
    nodes = [make_manager(), make_node(), make_node(), make_node()]
    web = make_service("web", replicas=5)
    tasks = make_tasks(web, 3)
    first = schedule(nodes, services_of(web), tasks)
    by_id = {a.task_id: a.node_id for a in first.assignments}
    placed = [make_task(web, id=t.id, slot=t.slot, node_id=by_id[t.id], state=TaskState.ASSIGNED)
              for t in tasks]
    second = schedule(nodes, services_of(web), placed + [make_task(web, slot=4), make_task(web, slot=5)])
    total = Counter(by_id.values()) + Counter(a.node_id for a in second.assignments)
    assert sorted(total.values(), reverse=True) == [2, 1, 1, 1]


def test_tie_broken_by_total_task_count_of_the_node() -> None:
    a, b = nodes = [make_node(), make_node()]
    busy, web = make_service("busy"), make_service("web")
    others = [make_task(busy, slot=s, node_id=a.id, state=TaskState.RUNNING) for s in (1, 2)]
    plan = schedule(nodes, services_of(busy, web), others + [make_task(web)])
    assert plan.assignments == [Assignment(plan.assignments[0].task_id, b.id)]


def test_second_service_balances_totals_left_by_the_first() -> None:
    nodes = [make_node() for _ in range(3)]
    one, two = make_service("one", replicas=2), make_service("two", replicas=1)
    plan = schedule(nodes, services_of(one, two), make_tasks(one) + make_tasks(two))
    assert per_node(plan, nodes) == [1, 1, 1]


def test_terminal_and_shutting_down_tasks_do_not_count() -> None:
    a, b = nodes = [make_node(), make_node()]
    web = make_service("web")
    gone = [
        make_task(web, node_id=a.id, state=TaskState.FAILED),
        make_task(web, node_id=a.id, state=TaskState.COMPLETE),
        make_task(web, node_id=a.id, state=TaskState.RUNNING, desired_state=DESIRED_SHUTDOWN),
    ]
    plan = schedule(nodes, services_of(web), gone + [make_task(web)])
    assert [x.node_id for x in plan.assignments] == [a.id]


def test_only_waiting_tasks_are_placed() -> None:
    nodes = [make_node()]
    web = make_service("web")
    not_waiting = [
        make_task(web, state=TaskState.PENDING, desired_state=DESIRED_SHUTDOWN),
        make_task(web, state=TaskState.FAILED),
    ]
    new = make_task(web, state=TaskState.NEW)
    plan = schedule(nodes, services_of(web), not_waiting + [new])
    assert [x.task_id for x in plan.assignments] == [new.id]
    assert plan.unplaced == {}


def test_deterministic() -> None:
    nodes = [make_node() for _ in range(7)]
    svcs = [make_service(replicas=r) for r in (3, 11, 5)]
    tasks = [t for s in svcs for t in make_tasks(s)]
    first = schedule(nodes, services_of(*svcs), tasks)
    again = schedule(list(reversed(nodes)), services_of(*reversed(svcs)), list(reversed(tasks)))
    assert first == again


# -- filters and explanations -------------------------------------------------


def test_drained_paused_and_down_nodes_take_nothing_and_are_counted() -> None:
    good = make_node()
    nodes = [
        good,
        make_node(availability=NodeAvailability.DRAIN),
        make_node(availability=NodeAvailability.PAUSE),
        make_manager(availability=NodeAvailability.DRAIN),
        make_node(status=NodeStatus.DOWN),
    ]
    web = make_service("web", replicas=4)
    plan = schedule(nodes, services_of(web), make_tasks(web))
    assert {a.node_id for a in plan.assignments} == {good.id}
    assert len(plan.assignments) == 4


def test_nothing_available_explains_with_counts() -> None:
    nodes = [
        make_node(availability=NodeAvailability.DRAIN),
        make_node(availability=NodeAvailability.PAUSE),
        make_node(status=NodeStatus.DOWN),
        make_node(status=NodeStatus.DOWN, availability=NodeAvailability.DRAIN),
        make_node(status=NodeStatus.UNKNOWN),
    ]
    web = make_service("web", replicas=2)
    tasks = make_tasks(web)
    plan = schedule(nodes, services_of(web), tasks)
    assert plan.assignments == []
    msg = "no suitable node (2 nodes down; 1 node not ready; 2 nodes not available for new tasks)"
    assert plan.unplaced == {t.id: msg for t in tasks}


def test_a_node_whose_engine_is_unreachable_takes_nothing_and_says_why() -> None:
    engine_gone = make_node(status=NodeStatus.DOWN,
                            status_message="engine unreachable: cannot reach the engine at /run/docker.sock")
    nodes = [engine_gone, make_node(status=NodeStatus.DOWN, status_message="no heartbeat for 2s")]
    web = make_service("web", replicas=1)
    tasks = make_tasks(web)
    plan = schedule(nodes, services_of(web), tasks)
    assert plan.assignments == []
    assert plan.unplaced == {t.id: "no suitable node (1 node with the engine unreachable; 1 node down)" for t in tasks}


def test_no_nodes_at_all() -> None:
    web = make_service("web", replicas=2)
    tasks = make_tasks(web)
    plan = schedule([], services_of(web), tasks)
    assert plan.assignments == []
    assert plan.unplaced == {t.id: "no suitable node (no nodes in the cluster)" for t in tasks}


def test_nothing_to_do() -> None:
    assert schedule([make_node()], {}, []) == Plan()


def test_unknown_service_is_explained_not_raised() -> None:
    orphan = make_task(make_service("gone"))
    plan = schedule([make_node()], {}, [orphan])
    assert "not found" in plan.unplaced[orphan.id]


def test_insufficient_memory_is_counted_per_node() -> None:
    small = [make_node(resources={"memory_bytes": 256 * MiB, "nano_cpus": 4 * 10**9}) for _ in range(2)]
    big = make_node(resources={"memory_bytes": 1024 * MiB, "nano_cpus": 4 * 10**9})
    drained = make_node(availability=NodeAvailability.DRAIN, resources={"memory_bytes": 2**40})
    web = make_service("web", replicas=3, reservations={"memory_bytes": 512 * MiB})
    tasks = make_tasks(web)
    plan = schedule(small + [big, drained], services_of(web), tasks)
    assert [a.node_id for a in plan.assignments] == [big.id, big.id]
    msg = "no suitable node (1 node not available for new tasks; insufficient memory on 3 nodes)"
    assert plan.unplaced == {tasks[2].id: msg}


def test_existing_reservations_are_subtracted() -> None:
    node = make_node(resources={"memory_bytes": 1024 * MiB, "nano_cpus": 2 * 10**9})
    web = make_service("web", reservations=Resources(nano_cpus=10**9))
    running = make_task(web, node_id=node.id, state=TaskState.RUNNING)
    waiting = make_tasks(web, 2)
    plan = schedule([node], services_of(web), [running] + waiting)
    assert len(plan.assignments) == 1
    assert plan.unplaced[waiting[1].id] == "no suitable node (insufficient cpu on 1 node)"


def test_constraints_place_and_explain() -> None:
    eu = make_node(labels={"zone": "eu"})
    us = make_node(labels={"zone": "us"})
    bare = make_node()
    mgr = make_manager(labels={"zone": "eu"})
    nodes = [eu, us, bare, mgr]
    web = make_service("web", replicas=2, constraints=["node.labels.zone==eu", "node.role != manager"])
    plan = schedule(nodes, services_of(web), make_tasks(web))
    assert [a.node_id for a in plan.assignments] == [eu.id, eu.id]

    nowhere = make_service("nowhere", constraints=["node.labels.zone==asia"])
    [task] = make_tasks(nowhere)
    plan = schedule(nodes, services_of(nowhere), [task])
    assert plan.unplaced == {task.id: "no suitable node (constraint node.labels.zone==asia not met on 4 nodes)"}


def test_impossible_constraint_is_placed_once_a_node_gets_the_label() -> None:
    node = make_node()
    web = make_service("web", constraints=["node.labels.gpu==yes"])
    [task] = make_tasks(web)
    assert schedule([node], services_of(web), [task]).assignments == []
    node.labels["gpu"] = "yes"
    assert schedule([node], services_of(web), [task]).assignments == [Assignment(task.id, node.id)]


@pytest.mark.parametrize(
    ("constraint", "matches"),
    [
        ("node.hostname==HOST-A", True),  # values compare case-insensitively
        ("node.hostname!=host-a", False),
        ("node.id==nid", True),
        ("node.role==worker", True),
        ("node.platform.os==linux", True),
        ("node.platform.arch==amd64", True),  # x86_64 and amd64 are one machine
        ("node.platform.arch==arm64", False),
        ("node.labels.disk==ssd", True),
        ("node.labels.Disk==ssd", False),  # label names are case-sensitive
        ("node.labels.zone!=eu", True),  # a missing label reads as ""
        ("engine.labels.x==y", False),
    ],
)
def test_constraint_semantics(constraint: str, matches: bool) -> None:
    node = make_node(id="nid", hostname="host-a", labels={"disk": "ssd"},
                     platform={"os": "linux", "arch": "x86_64"})
    assert parse_constraint(constraint).matches(node) is matches


@pytest.mark.parametrize("bad", ["node.labels.zone", "node.colour==red", "node.labels.==x",
                                 "node.hostname==a>b", "node.hostname=="])
def test_invalid_constraints_are_refused(bad: str) -> None:
    with pytest.raises(ConstraintError):
        parse_constraint(bad)


def test_invalid_constraint_in_store_is_explained() -> None:
    web = make_service("web", constraints=["node.labels.zone"])
    [task] = make_tasks(web)
    plan = schedule([make_node()], services_of(web), [task])
    assert plan.unplaced[task.id].startswith("no suitable node (invalid constraint")


def test_max_replicas_per_node() -> None:
    nodes = [make_node(), make_node()]
    web = make_service("web", replicas=5, max_replicas_per_node=2)
    tasks = make_tasks(web)
    plan = schedule(nodes, services_of(web), tasks)
    assert per_node(plan, nodes) == [2, 2]
    assert plan.unplaced == {tasks[4].id: "no suitable node (max replicas per node (2) reached on 2 nodes)"}


# -- global services: the node is already chosen -------------------------------


def test_global_tasks_are_checked_on_their_own_node() -> None:
    ok, drained = make_node(), make_node(availability=NodeAvailability.DRAIN)
    agent = make_service("agent", mode="global")
    t_ok = make_task(agent, slot=0, node_id=ok.id)
    t_drained = make_task(agent, slot=0, node_id=drained.id)
    t_gone = make_task(agent, slot=0, node_id="node-that-left")
    plan = schedule([ok, drained], services_of(agent), [t_ok, t_drained, t_gone])
    assert plan.assignments == [Assignment(t_ok.id, ok.id)]
    assert plan.unplaced == {
        t_drained.id: "no suitable node (1 node not available for new tasks)",
        t_gone.id: "no suitable node (node node-that-left is not in the cluster)",
    }


def test_global_tasks_count_toward_the_spread_of_others() -> None:
    a, b = nodes = [make_node(), make_node()]
    agent, web = make_service("agent", mode="global"), make_service("web")
    pinned = make_task(agent, slot=0, node_id=a.id)
    plan = schedule(nodes, services_of(agent, web), [pinned, make_task(web)])
    assert sorted(plan.assignments, key=lambda x: x.node_id) == [
        Assignment(pinned.id, a.id), Assignment(plan.assignments[1].task_id, b.id)]


# -- speed ----------------------------------------------------------------------


def _big(nodes: int, services: int, replicas: int) -> tuple[list[Node], dict[str, Service], list[Task]]:
    ns = [make_node() for _ in range(nodes)]
    svcs = [make_service(replicas=replicas) for _ in range(services)]
    return ns, services_of(*svcs), [t for s in svcs for t in make_tasks(s)]


def test_thousand_tasks_over_hundred_nodes_is_fast() -> None:
    nodes, services, tasks = _big(100, 10, 100)
    start = time.perf_counter()
    plan = schedule(nodes, services, tasks)
    elapsed = time.perf_counter() - start
    assert len(plan.assignments) == 1000
    assert sorted(Counter(a.node_id for a in plan.assignments).values()) == [10] * 100
    assert elapsed < 0.5, f"{elapsed:.3f}s"  # typically a few ms; loose for slow CI


def test_a_node_that_cannot_isolate_takes_no_task_of_a_network() -> None:
    """Fail closed (Node.problems, reported by the agent): no firewall, no
    task attached to a cluster network; no container network, no task."""
    good = make_node()
    no_ipset = make_node(problems={"firewall": "cannot apply the network firewall: ipset: not found"})
    no_net = make_node(problems={"network": "ip route replace: failed"})
    isolated = make_service("web", replicas=3, networks=[{"target": "demo_default", "aliases": ["web"]}])
    shared = make_service("old", replicas=2)  # deployed before networks: isolates nothing
    web_tasks, old_tasks = make_tasks(isolated), make_tasks(shared)
    plan = schedule([good, no_ipset, no_net], services_of(isolated, shared), web_tasks + old_tasks)
    assert plan.unplaced == {}
    node_of = {a.task_id: a.node_id for a in plan.assignments}
    assert {node_of[t.id] for t in web_tasks} == {good.id}, "a task of an isolated network went where it is not enforced"
    assert {node_of[t.id] for t in old_tasks} <= {good.id, no_ipset.id}
    assert no_net.id not in node_of.values(), "a node without its container network got a task"


def test_why_a_node_that_cannot_isolate_is_passed_over() -> None:
    no_ipset = make_node(problems={"firewall": "ipset: not found"})
    isolated = make_service("web", replicas=1, networks=[{"target": "demo_default", "aliases": ["web"]}])
    tasks = make_tasks(isolated)
    plan = schedule([no_ipset, make_node(problems={"reconcile": "boom"})], services_of(isolated), tasks)
    assert plan.unplaced == {tasks[0].id: "no suitable node (network isolation not enforceable on 1 node; "
                                          "agent cannot converge on 1 node)"}
