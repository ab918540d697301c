"""Demotion in the order that keeps the quorum: leadership off the node,
then its Raft membership, then its role.

``node demote`` / ``node rm --force`` of a manager (manager/api/nodes.py)
only marks the node ``demoting``. The leader settles it here, as swarmkit's
role manager does:

1. a demoting leader hands leadership to a caught-up manager first (Raft
   removes no leader from its own membership);
2. the new leader takes the node out of the Raft membership and waits for
   that change to commit — while the demoted manager still runs and
   acknowledges, so two managers becoming one never sit in a two-member
   membership with one of them gone;
3. only then is its role made worker. The demoted manager, out of Raft by
   now, hears of it from its agent (the dispatcher's ``configure`` without a
   manager part, worker/promotion.py ``retire_stray_manager``), or from the
   store if the entry reached it, and stops for good.

Before this order a demoted manager saw its role change first and retired
at once, before its removal had committed: with two managers the survivor
was left alone in a membership of two, without quorum.
"""

from __future__ import annotations

import logging
import time

from pyswarm.errors import PyswarmError
from pyswarm.models import NodeRole

from . import ops
from .store import Store, TransactionAborted

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds between tries of a step that failed (or a step-down not taken yet)
IDLE_LOOK = 1.0  # seconds between looks while no node is demoting (a look reads every node: 1,000 at 10/s was
# a few % of a big leader's loop at rest)


class Demotions:
    """Run by every manager's main loop; acts only while this one leads."""

    def __init__(self, store: Store, self_node_id: str) -> None:
        self.store = store
        self.me = self_node_id
        self._next_try = 0.0

    async def settle(self) -> None:
        """One pass over the demoting managers (cheap when there are none)."""
        if not self.store.is_leader or not self.store.in_sync or time.monotonic() < self._next_try:
            return
        snap = self.store.snapshot()
        self._next_try = time.monotonic() + IDLE_LOOK  # unless a demotion goes on below
        for node in snap.nodes():
            if not node.demoting:
                continue
            self._next_try = 0.0
            try:
                if node.role != NodeRole.MANAGER:
                    await self.store.commit([ops.patch("node", node.id, demoting=False)])
                elif node.id == self.me:
                    if self.store.step_down():
                        log.info("this manager is being demoted: handing leadership over")
                    self._next_try = time.monotonic() + RETRY  # the next leader goes on from here
                    return
                else:
                    addr = f"{node.addr}:{node.raft_port}"
                    if addr in self.store.members:
                        log.info("demoting %s: removing %s from the Raft membership", node.hostname, addr)
                        await self.store.change_membership("remove", addr, wait=15)
                    await self.store.commit([ops.patch("node", node.id, role=NodeRole.WORKER.value, demoting=False,
                                                       updated_at=time.time())])
                    log.info("demoted %s: out of the Raft membership, now a worker", node.hostname)
            except (PyswarmError, TransactionAborted) as exc:
                log.warning("demoting %s: %s (trying again)", node.hostname, exc)
                self._next_try = time.monotonic() + RETRY
                return
