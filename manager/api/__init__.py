"""The manager's API: what the CLI and joining hosts may ask.

One module per resource, each a :class:`~.base.Resource` whose handlers are
marked ``@method("name", RequestType)``:

    cluster.py    ping, store.export, cluster.update
    nodes.py      node.ls/inspect/promote/demote/rm/update
    join.py       join.info, join, join_token   (JOIN_METHODS: the join port's)
    services.py   stack.deploy/ls/ps/rm, service.ls/ps/inspect/update/rollback/scale
    service_admin.py  service.create/rm/progress, node.ps
    info.py       version
    objects.py    secret.* and config.*
    networks.py   network.*
    images.py     image.push/ls/shipments (given to Api as ``extra``: it needs the image service)
    streams.py    service.restart, task.restart; and the streaming methods
                  (service.logs/exec, stats, events: StreamApi, served by ..servers)
    metrics.py    manager.metrics (loop lag, store size, Raft, disk)
    security.py   swarm.unlock_key, swarm.unlock (autolock; docs/security.md)

To add methods, write a Resource subclass (in a new module when it is a new
resource) and list it in ``RESOURCES`` below. :meth:`Api.call` parses the
params into the method's request dataclass (:mod:`pyswarm.wire`) before the
handler runs, so a request of the wrong shape is refused with the field
named and never reaches a handler or the store.

Each handler reads the local replica (reads are served by any manager) or
commits a transaction (a follower's write is forwarded to the leader by the
store). The transports (unix socket, SSH) live in :mod:`..servers`; this
package maps a method name and its parameters to an answer, so it can be
tested against a real single-node store without any socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from pyswarm.errors import ElectionError, UsageError
from pyswarm.wire import parse

from ..store import Store
from .base import Method, Resource, Self
from .cluster import ClusterApi
from .info import InfoApi
from .join import JOIN_METHODS, JoinApi
from .metrics import ManagerApi
from .networks import Networks
from .nodes import Nodes
from .objects import Objects
from .service_admin import ServiceAdmin
from .security import Security
from .services import Services
from .streams import Restarts

__all__ = ["Api", "JOIN_METHODS", "Method", "RESOURCES", "Resource", "Self"]

CATCH_UP_WAIT = 10.0
"""How long a call waits for a just-started manager to catch up with the
cluster's log before it is refused (the CLI retries a safe one)."""

ANSWERED_BEHIND = frozenset({"ping", "version", "store.export", "manager.metrics", "swarm.unlock"})
"""Methods answered from whatever this replica holds: they say who this
manager is, or they are how a person recovers one that cannot catch up
(``store.export`` for ``init --force-new-cluster``)."""

RESOURCES: tuple[type[Resource], ...] = (ClusterApi, InfoApi, Nodes, JoinApi, Services, ServiceAdmin, Objects, Networks,
                                         Restarts, ManagerApi, Security)


class Api:
    def __init__(self, store: Store, me: Self, extra: Sequence[Resource] = ()) -> None:
        """``extra``: resources that need more than the store (images.py's
        needs the manager's image service)."""
        self._store = store
        self._me = me
        self._caught_up_once = False  # see _caught_up
        self._methods: dict[str, Method] = {}
        for resource in [*(r(store, me) for r in RESOURCES), *extra]:
            for m in resource.methods():
                if m.name in self._methods:
                    raise RuntimeError(f"API method {m.name} is defined twice")
                self._methods[m.name] = m

    def register(self, m: Method) -> None:
        """Add a method served by another component (the daemon's debug.*)."""
        if m.name in self._methods:
            raise RuntimeError(f"API method {m.name} is defined twice")
        self._methods[m.name] = m

    @property
    def method_names(self) -> list[str]:
        return sorted(self._methods)

    async def call(self, method: str, params: Any) -> Any:
        m = self._methods.get(method)
        if m is None:
            raise UsageError(f"unknown API method {method[:80]!r}")
        request: Any = parse(m.request, params if params is not None else {})
        if method not in ANSWERED_BEHIND and not method.startswith("debug."):
            await self._caught_up()
        return await m.handler(request)

    async def _caught_up(self) -> None:
        """Wait until this replica has applied what the cluster had committed
        when it (re)joined. A restarted manager first loads its last dump and
        replays the journal after it; a read served in between answered from
        the past (``unlock-key --rotate`` said autolock was off, on a cluster
        where it had been on for a minute). Only until it first has: a
        leader that stepped down (a full disk) is not "in sync" by Raft's
        flags, yet holds everything it committed, and must go on saying why
        it refuses writes."""
        if self._caught_up_once:
            return  # from then on a follower is as current as Raft makes it
        deadline = time.monotonic() + CATCH_UP_WAIT
        while not self._store.in_sync:
            if time.monotonic() > deadline:
                why = self._store.disk_error
                raise ElectionError("this manager is still catching up with the cluster's log (restarted or "
                                    "rejoined, and no leader has brought it up to date yet"
                                    + (f"; {why}" if why else "") + "): retry, or ask another manager")
            await asyncio.sleep(0.02)
        self._caught_up_once = True
