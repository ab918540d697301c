"""Deltas of a node's task set and of the mesh (pyswarm/protocol.py
``assign_delta``, ``mesh_delta``): built on the leader, applied by the agent.

With 1,000 nodes and 100,000 tasks the leader sent every node its whole
mesh (1.4 MB) on each change and each node its whole task set on each of
its changes: a third of the leader's time converging went to writing and
encrypting those lines. A delta says only what changed since a version the
session was sent before; both ends keep the version, and an agent that
does not hold a delta's base applies nothing and asks for the whole set
(``resync``), so a lost or reordered message costs a resend, never a
node left wrong. Order inside an address set carries no meaning (they are
ipsets), so an applied delta equals the whole message as a set of members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyswarm.protocol import MeshDelta, SetChange


def assign_changes(sent: Mapping[str, Mapping[str, Any]],
                   tasks: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[str]]:
    """(assignments to put, task ids to remove) that take the set ``sent``
    (by task id) to ``tasks``. The dispatcher reuses one assignment dict
    while its task is unchanged, so most entries compare by identity."""
    put = [a for a in tasks if (old := sent.get(a["task_id"])) is not a and old != a]
    if len(sent) + len(put) == len(tasks):  # nothing can have left
        return put, []
    ids = {a["task_id"] for a in tasks}
    return put, [tid for tid in sent if tid not in ids]


def mesh_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fields of a ``mesh_delta`` taking the mesh ``old`` to ``new``
    (both as manager/networks.py ``mesh_message`` builds them; ``{}`` when
    they are the same), or None when only a whole mesh can say it
    (isolation turned on or off: ``networks`` None on one side)."""
    old_nets, new_nets = old.get("networks"), new.get("networks")
    if old_nets is None or new_nets is None:
        return None
    out: dict[str, Any] = {}
    for key in ("gateways", "internal"):
        change = _set_change(old.get(key) or (), new.get(key) or ())
        if change is not None:
            out[key] = change
    nets: dict[str, Any] = {}
    for name, members in new_nets.items():
        before = old_nets.get(name)
        if before is None:
            nets[name] = {"add": list(members), "remove": []}
        elif before is not members:
            change = _set_change(before, members)
            if change is not None:
                nets[name] = change
    if nets:
        out["networks"] = nets
    gone = [name for name in old_nets if name not in new_nets]
    if gone:
        out["networks_gone"] = gone
    if (old.get("ingress") or []) != (new.get("ingress") or []):
        out["ingress"] = list(new.get("ingress") or [])
    return out


def _set_change(old: Iterable[str], new: Iterable[str]) -> dict[str, list[str]] | None:
    old, new = list(old), list(new)
    if old == new:
        return None
    before, after = set(old), set(new)
    add = [m for m in new if m not in before]
    remove = [m for m in old if m not in after]
    return {"add": add, "remove": remove} if add or remove else None


def apply_mesh(mesh: Mapping[str, Any], delta: MeshDelta) -> dict[str, Any]:
    """The mesh message ``mesh`` (the one of ``delta.base``) with ``delta``
    applied: a new dict, ``mesh`` is left as it was."""
    out = dict(mesh)
    if delta.gateways is not None:
        out["gateways"] = _apply_set(mesh.get("gateways") or (), delta.gateways)
    if delta.internal is not None:
        out["internal"] = _apply_set(mesh.get("internal") or (), delta.internal)
    if delta.networks or delta.networks_gone:
        nets = dict(mesh.get("networks") or {})
        for name in delta.networks_gone:
            nets.pop(name, None)
        for name, change in delta.networks.items():
            nets[name] = _apply_set(nets.get(name) or (), change)
        out["networks"] = nets
    if delta.ingress is not None:
        out["ingress"] = [dataclasses.asdict(e) for e in delta.ingress]
    out["version"] = delta.version
    return out


def _apply_set(members: Iterable[str], change: SetChange) -> list[str]:
    gone = set(change.remove)
    kept = [m for m in members if m not in gone]
    present = set(kept)
    return kept + [m for m in dict.fromkeys(change.add) if m not in present]
