"""The scheduler alone (a pure function): 10,000 tasks over 1,000 simulated
nodes, the issue's goal being under 1 s, against a peer measured in the
same run: the straightforward scheduler — for every task, run every filter
on every node and take the best-ranked node — on the same input.

    .venv/bin/python bench/schedule_pure.py [--rounds 3]

Scenarios: one plain service; 10 services with a constraint, a memory
reservation and max_replicas_per_node; 100 services; one service spread
over 5 zones (placement.preferences); one with a host-mode port on each of
1,000 nodes. Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from factories import make_container_spec, make_node, make_service, make_tasks  # noqa: E402

from pyswarm.manager.filters import (  # noqa: E402
    DYNAMIC_FILTERS,
    STATIC_FILTERS,
    Job,
    NodeInfo,
    first_rejection,
    parse_constraints,
)
from pyswarm.manager.scheduler import schedule  # noqa: E402
from pyswarm.models import Node, Service, Task  # noqa: E402

NODES = 1000
TASKS = 10_000
GiB = 2**30

Scenario = tuple[list[Node], dict[str, Service], list[Task]]


def _nodes() -> list[Node]:
    return [make_node(labels={"zone": f"z{i % 5}"}, resources={"memory_bytes": 64 * GiB, "nano_cpus": 16 * 10**9})
            for i in range(NODES)]


def plain() -> Scenario:
    svc = make_service("web", replicas=TASKS)
    return _nodes(), {svc.id: svc}, make_tasks(svc)


def constrained() -> Scenario:
    services = [make_service(f"s{i}", replicas=TASKS // 10, constraints=["node.labels.zone!=z0"],
                             reservations={"memory_bytes": GiB // 4}, max_replicas_per_node=3) for i in range(10)]
    return _nodes(), {s.id: s for s in services}, [t for s in services for t in make_tasks(s)]


def many_services() -> Scenario:
    services = [make_service(f"s{i}", replicas=TASKS // 100) for i in range(100)]
    return _nodes(), {s.id: s for s in services}, [t for s in services for t in make_tasks(s)]


def spread() -> Scenario:
    svc = make_service("web", replicas=TASKS, deploy={"placement": {"preferences": [{"spread": "node.labels.zone"}]}})
    return _nodes(), {svc.id: svc}, make_tasks(svc)


def host_ports() -> Scenario:
    ports = {"ports": [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "host"}]}
    svc = make_service("edge", replicas=NODES, container=make_container_spec(options=ports))
    rest = make_service("web", replicas=TASKS - NODES)
    return _nodes(), {svc.id: svc, rest.id: rest}, make_tasks(svc) + make_tasks(rest)


def naive(nodes: list[Node], services: Mapping[str, Service], tasks: list[Task]) -> int:
    """The peer: every filter on every node for every task, then the lowest
    (service tasks, total tasks, id). No spread preference, same filters."""
    infos = [NodeInfo(n) for n in sorted(nodes, key=lambda n: n.id)]
    jobs = {sid: Job(sid, s.spec, parse_constraints(s.spec.constraints)) for sid, s in services.items()}
    filters = STATIC_FILTERS + DYNAMIC_FILTERS
    placed = 0
    for task in sorted(tasks, key=lambda t: (t.service_id, t.slot)):
        job = jobs[task.service_id]
        best: NodeInfo | None = None
        for info in infos:
            if first_rejection(filters, job, info) is None:
                if best is None or (info.per_service[job.service_id], info.total) < (best.per_service[job.service_id], best.total):
                    best = info
        if best is not None:
            best.add(job.service_id, job.spec)
            placed += 1
    return placed


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scenarios: dict[str, Callable[[], Scenario]] = {
        "1 service": plain, "10 services, constraint+reservation+max/node": constrained,
        "100 services": many_services, "spread over 5 zones": spread, "host port + 1 service": host_ports,
    }
    print(f"{TASKS} tasks over {NODES} nodes; best of {args.rounds} rounds")
    for name, make in scenarios.items():
        nodes, services, tasks = make()
        best = min(timed(lambda: schedule(nodes, services, tasks)) for _ in range(args.rounds))
        plan = schedule(nodes, services, tasks)
        print(f"  {name:46s} {best * 1000:8.1f} ms   placed {len(plan.assignments)}, unplaced {len(plan.unplaced)}",
              flush=True)
    nodes, services, tasks = plain()
    ours = statistics.median(timed(lambda: schedule(nodes, services, tasks)) for _ in range(args.rounds))
    peer = timed(lambda: naive(nodes, services, tasks))
    print(f"\npeer (every filter on every node per task), 1 service: {peer:.2f} s; "
          f"pyswarm {ours * 1000:.1f} ms; ratio pyswarm/peer {ours / peer:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
