"""Admission limits: what the cluster refuses before it commits anything.

A typo (``service scale web=100000`` for ``=10``) must not be able to wedge
the managers. The store, planners and dispatcher now cost what changes,
and pending tasks are cheap (manager/scheduling.py), but every task is
still an object in every manager's memory and in every Raft dump. So a
service may have at most ``Cluster.max_replicas`` replicas (default
:data:`DEFAULT_MAX_REPLICAS`, set with ``pyswarm swarm update
--max-replicas N``): far above what the lab or a few thousand hosts run,
and at the footprint bench's 100,000 tasks the leader still converges.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyswarm.errors import UsageError
from pyswarm.models import Cluster, ServiceSpec

DEFAULT_MAX_REPLICAS: int = Cluster.max_replicas  # the model's default


def check_replicas(cluster: Cluster | None, specs: Iterable[ServiceSpec]) -> None:
    """Refuse a replicated service with more replicas than the cluster allows."""
    limit = cluster.max_replicas if cluster is not None else DEFAULT_MAX_REPLICAS
    for spec in specs:
        if spec.mode != "global" and spec.replicas > limit:
            raise UsageError(
                f"service {spec.name}: {spec.replicas} replicas exceed the cluster's limit of {limit} "
                "tasks a service (raise it with `pyswarm swarm update --max-replicas N`)")
