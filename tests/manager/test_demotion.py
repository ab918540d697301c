"""manager/demotion.py: the order of a demotion's steps on the leader —
leadership off the node, its Raft membership, only then its role — with a
recording store (the lab's two-manager `machine rm` proves it on real Raft:
tests/e2e/test_machine.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pyswarm.errors import NoQuorumError
from pyswarm.models import Node, NodeRole

from pyswarm.manager.demotion import Demotions


@dataclass
class _Snap:
    listed: list[Node]

    def nodes(self) -> list[Node]:
        return self.listed


@dataclass
class _Store:
    """What Demotions reads and does, recorded in ``steps``."""

    listed: list[Node]
    members: list[str] = field(default_factory=list)
    is_leader: bool = True
    in_sync: bool = True
    fail_removal: bool = False
    steps: list[Any] = field(default_factory=list)

    def snapshot(self) -> _Snap:
        return _Snap(self.listed)

    def step_down(self) -> bool:
        self.steps.append("step_down")
        return True

    async def change_membership(self, action: str, addr: str, wait: float | None = None) -> None:
        if self.fail_removal:
            raise NoQuorumError("the membership change did not commit")
        self.steps.append((action, addr))
        self.members.remove(addr)

    async def commit(self, txn: list[Any], timeout: float = 5.0) -> dict[str, Any]:
        for op in txn:
            self.steps.append(("patch", op[2], op[3]))
        return {}


def _manager(node_id: str, demoting: bool = False) -> Node:
    return Node(id=node_id, hostname=node_id, addr=f"10.0.0.{len(node_id)}", role=NodeRole.MANAGER,
                raft_port=2378, demoting=demoting)


def _settle(store: _Store, me: str) -> list[Any]:
    asyncio.run(Demotions(store, me).settle())  # type: ignore[arg-type]
    return store.steps


def test_the_membership_change_commits_before_the_role_changes() -> None:
    b = _manager("bb", demoting=True)
    store = _Store([_manager("a"), b], members=["10.0.0.2:2378"])
    assert _settle(store, "a") == [("remove", "10.0.0.2:2378"),
                                   ("patch", "bb", {"role": "worker", "demoting": False, "updated_at": store.steps[1][2]["updated_at"]})]


def test_a_demoting_leader_hands_leadership_over_and_changes_nothing() -> None:
    store = _Store([_manager("a", demoting=True), _manager("bb")], members=["10.0.0.2:2378"])
    assert _settle(store, "a") == ["step_down"]


def test_no_role_change_while_the_removal_has_not_committed() -> None:
    store = _Store([_manager("a"), _manager("bb", demoting=True)], members=["10.0.0.2:2378"], fail_removal=True)
    assert _settle(store, "a") == []


def test_a_follower_does_nothing() -> None:
    store = _Store([_manager("a"), _manager("bb", demoting=True)], members=["10.0.0.2:2378"], is_leader=False)
    assert _settle(store, "a") == []


def test_a_node_already_out_of_raft_only_gets_its_role() -> None:
    store = _Store([_manager("a"), _manager("bb", demoting=True)], members=[])
    steps = _settle(store, "a")
    assert [s[0] for s in steps] == ["patch"] and steps[0][2]["role"] == "worker"
