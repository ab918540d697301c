"""Placement beyond the basics (issue 5): host-mode ports, spread
preferences, engine labels, restart delays, and the exact explanations."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_container_spec, make_node, make_service, make_snapshot, make_task, make_tasks  # noqa: E402

from pyswarm.manager.scheduler import schedule  # noqa: E402
from pyswarm.manager.scheduling import next_wakeup, plan_ops  # noqa: E402
from pyswarm.models import DESIRED_SHUTDOWN, Node, NodeStatus, Service, TaskState  # noqa: E402


def by_id(*services: Service) -> dict[str, Service]:
    return {s.id: s for s in services}


def port(published: Any, mode: str = "host", proto: str = "tcp", target: int = 80) -> dict[str, Any]:
    return {"target": target, "published": published, "protocol": proto, "mode": mode}


def with_ports(name: str, replicas: int, *ports: dict[str, Any]) -> Service:
    return make_service(name, replicas=replicas, container=make_container_spec(options={"ports": list(ports)}))


def zone_nodes(*zones: str) -> list[Node]:
    return [make_node(labels={"zone": z} if z else {}) for z in zones]


# -- host-mode published ports ---------------------------------------------------


def test_host_port_takes_one_task_per_node() -> None:
    nodes = [make_node(), make_node()]
    web = with_ports("web", 3, port(8080))
    plan = schedule(nodes, by_id(web), make_tasks(web))
    assert sorted(Counter(a.node_id for a in plan.assignments).values()) == [1, 1]
    assert list(plan.unplaced.values()) == ["no suitable node (host port 8080/tcp in use on 2 nodes)"]


def test_host_port_in_use_by_another_service_and_by_a_stopping_task() -> None:
    a, b, c = make_node(), make_node(), make_node()
    other = with_ports("other", 1, port(8080))
    running = make_task(other, node_id=a.id, state=TaskState.RUNNING)
    stopping = make_task(other, node_id=b.id, state=TaskState.RUNNING, desired_state=DESIRED_SHUTDOWN)
    web = with_ports("web", 1, port(8080))
    plan = schedule([a, b, c], by_id(other, web), [running, stopping, *make_tasks(web)])
    assert [x.node_id for x in plan.assignments] == [c.id]


def test_ingress_ports_udp_and_ranges() -> None:
    a = make_node()
    ingress = with_ports("ing", 2, port(80, mode="ingress"))
    assert len(schedule([a], by_id(ingress), make_tasks(ingress)).assignments) == 2
    tcp = with_ports("tcp", 1, port(53))
    udp = with_ports("udp", 1, port(53, proto="udp"))
    plan = schedule([a], by_id(tcp, udp), make_tasks(tcp) + make_tasks(udp))
    assert len(plan.assignments) == 2, "53/tcp and 53/udp do not collide"
    ranged = with_ports("rng", 1, port("9000-9002"))
    taker = with_ports("taker", 1, port(9001))
    plan = schedule([a], by_id(ranged), [make_task(taker, node_id=a.id, state=TaskState.RUNNING),
                                         *make_tasks(ranged)])
    assert list(plan.unplaced.values()) == ["no suitable node (host port 9001/tcp in use on 1 node)"]


def test_explanations_count_each_filter_in_pipeline_order() -> None:
    down = make_node(status=NodeStatus.DOWN)
    eu = make_node(labels={"zone": "eu"}, resources={"memory_bytes": 2**20})
    us = make_node(labels={"zone": "us"})
    busy = make_node(labels={"zone": "eu"}, resources={"memory_bytes": 2**30})
    other = with_ports("other", 1, port(80))
    taken = make_task(other, node_id=busy.id, state=TaskState.RUNNING)
    web = make_service("web", replicas=1, constraints=["node.labels.zone==eu"],
                       reservations={"memory_bytes": 2**29},
                       container=make_container_spec(options={"ports": [port(80)]}))
    plan = schedule([down, eu, us, busy], by_id(other, web), [taken, *make_tasks(web)])
    assert list(plan.unplaced.values()) == [
        "no suitable node (1 node down; constraint node.labels.zone==eu not met on 1 node; "
        "insufficient memory on 1 node; host port 80/tcp in use on 1 node)"
    ]


# -- spread preferences ------------------------------------------------------------


def test_spread_over_zones_before_nodes() -> None:
    nodes = zone_nodes("a", "a", "a", "b")
    web = make_service("web", replicas=4, deploy={"placement": {"preferences": [{"spread": "node.labels.zone"}]}})
    plan = schedule(nodes, by_id(web), make_tasks(web))
    zone = {n.id: n.labels["zone"] for n in nodes}
    assert Counter(zone[a.node_id] for a in plan.assignments) == {"a": 2, "b": 2}
    within_a = Counter(a.node_id for a in plan.assignments if zone[a.node_id] == "a")
    assert sorted(within_a.values()) == [1, 1], "inside a zone the usual spread applies"


def test_spread_counts_running_tasks_and_unlabelled_nodes_form_their_own_group() -> None:
    nodes = zone_nodes("a", "b", "")
    web = make_service("web", replicas=6, deploy={"placement": {"preferences": [{"spread": "node.labels.zone"}]}})
    running = [make_task(web, slot=s, node_id=nodes[0].id, state=TaskState.RUNNING) for s in (1, 2)]
    waiting = [make_task(web, slot=s) for s in (3, 4, 5, 6)]
    plan = schedule(nodes, by_id(web), running + waiting)
    got = Counter(a.node_id for a in plan.assignments)
    assert got == {nodes[1].id: 2, nodes[2].id: 2}


def test_nested_spread_and_dynamic_filters_inside_groups() -> None:
    n = [make_node(labels={"dc": "x", "rack": "1"}), make_node(labels={"dc": "x", "rack": "2"}),
         make_node(labels={"dc": "y", "rack": "1"})]
    prefs = [{"spread": "node.labels.dc"}, {"spread": "node.labels.rack"}]
    web = make_service("web", replicas=4, max_replicas_per_node=2, deploy={"placement": {"preferences": prefs}})
    plan = schedule(n, by_id(web), make_tasks(web))
    got = Counter(a.node_id for a in plan.assignments)
    assert got == {n[0].id: 1, n[1].id: 1, n[2].id: 2}
    web6 = make_service("web6", replicas=7, max_replicas_per_node=2, deploy={"placement": {"preferences": prefs}})
    plan = schedule(n, by_id(web6), make_tasks(web6))
    assert len(plan.assignments) == 6
    assert list(plan.unplaced.values()) == ["no suitable node (max replicas per node (2) reached on 3 nodes)"]


def test_bad_spread_key_is_explained() -> None:
    web = make_service("web", deploy={"placement": {"preferences": [{"spread": "zone"}]}})
    plan = schedule([make_node()], by_id(web), make_tasks(web))
    (why,) = plan.unplaced.values()
    assert why.startswith("no suitable node (invalid placement preference spread='zone'"), why


# -- engine labels, pending until a node fits, restart delay ------------------------


def test_engine_labels_constraint() -> None:
    a, b = make_node(), make_node(engine_labels={"ssd": "true"})
    db = make_service("db", constraints=["engine.labels.ssd==true"])
    plan = schedule([a, b], by_id(db), make_tasks(db))
    assert [x.node_id for x in plan.assignments] == [b.id]


def test_pending_task_is_placed_once_a_node_gets_the_label() -> None:
    a = make_node(hostname="w1")
    db = make_service("db", constraints=["node.labels.disk==ssd"])
    task = make_task(db)
    snap = make_snapshot(a, db, task)
    ops = plan_ops(snap, now=1.0)
    assert ops == [["patch", "task", task.id,
                    {"message": "no suitable node (constraint node.labels.disk==ssd not met on 1 node)"}]]
    a.labels = {"disk": "ssd"}
    ops = plan_ops(make_snapshot(a, db, task), now=2.0)
    assert ["advance", task.id, "assigned", {"node_id": a.id, "message": "scheduled", "state_since": 2.0}] in ops


def test_a_delayed_restart_waits_for_its_time() -> None:
    a = make_node()
    web = make_service("web")
    task = make_task(web, not_before=105.0)
    assert schedule([a], by_id(web), [task], now=100.0).assignments == []
    assert schedule([a], by_id(web), [task], now=100.0).unplaced == {}
    assert len(schedule([a], by_id(web), [task], now=105.5).assignments) == 1
    snap = make_snapshot(a, web, task)
    assert abs(next_wakeup(snap, 104.5) - 0.5) < 1e-9
    assert next_wakeup(snap, 90.0) == 1.0


def test_ten_thousand_tasks_with_spread_and_host_ports_stay_fast() -> None:
    nodes = [make_node(labels={"zone": f"z{i % 5}"}) for i in range(1000)]
    spread = make_service("spread", replicas=5000, deploy={"placement": {"preferences": [{"spread": "node.labels.zone"}]}})
    ported = with_ports("ported", 1000, port(443))
    tasks = make_tasks(spread) + make_tasks(ported)
    t0 = time.perf_counter()
    plan = schedule(nodes, by_id(spread, ported), tasks)
    elapsed = time.perf_counter() - t0
    assert len(plan.assignments) == 6000 and not plan.unplaced
    assert elapsed < 5.0, f"{elapsed:.2f}s"


def test_a_cluster_at_rest_costs_the_scheduler_no_pipeline(monkeypatch: Any) -> None:
    """Nothing waiting: no plan, and the pipeline (which counts every task
    on a node) is not even started; one waiting task starts it again."""
    from pyswarm.manager import scheduling

    node = make_node()
    svc = make_service("web", replicas=3)
    running = [make_task(svc, slot=i, node_id=node.id, state=TaskState.RUNNING) for i in (1, 2)]
    calls: list[int] = []
    real = scheduling.schedule

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduling, "schedule", counted)
    assert plan_ops(make_snapshot(node, svc, *running), 1.0) == []
    assert calls == [], "the scheduler ran its pipeline with nothing to place"
    ops = plan_ops(make_snapshot(node, svc, *running, make_task(svc, slot=3)), 1.0)
    assert calls == [1] and any(op[0] == "advance" for op in ops), ops
