"""Deltas of a task set and of the mesh (pyswarm/deltas.py): what the leader
builds, sent through the agent's parser and applied, gives what the whole
message would have (as sets: an address set's order means nothing), for
generated meshes (hypothesis) as for the hand-picked cases."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pyswarm import deltas, protocol


def _as_sets(mesh: dict[str, Any]) -> dict[str, Any]:
    return {
        "gateways": set(mesh.get("gateways") or ()),
        "internal": set(mesh.get("internal") or ()),
        "networks": None if mesh.get("networks") is None else {k: set(v) for k, v in mesh["networks"].items()},
        "ingress": mesh.get("ingress") or [],
    }


def _sent(base: int, changes: dict[str, Any]) -> protocol.MeshDelta:
    """A delta as the agent gets it: encoded, then parsed and checked."""
    parsed = protocol.parse_manager(protocol.encode({"op": "mesh_delta", "base": base, "version": base + 1, **changes}))
    assert isinstance(parsed, protocol.MeshDelta)
    return parsed


def test_a_task_set_delta_names_only_what_changed() -> None:
    a, b, c = ({"task_id": t, "spec": {"image": t}} for t in "abc")
    sent = {"a": a, "b": b}
    assert deltas.assign_changes(sent, [a, b]) == ([], [])
    assert deltas.assign_changes(sent, [a, dict(b)]) == ([], []), "an equal copy is no change"
    changed = {"task_id": "b", "spec": {"image": "b2"}}
    assert deltas.assign_changes(sent, [a, changed, c]) == ([changed, c], [])
    assert deltas.assign_changes(sent, [c]) == ([c], ["a", "b"])
    assert deltas.assign_changes({}, [a]) == ([a], [])


def test_a_mesh_delta_carries_only_the_change() -> None:
    ips = [f"10.240.{i // 250}.{i % 250 + 2}" for i in range(10_000)]
    old = {"op": "mesh", "gateways": ["10.240.0.1"], "networks": {"psw-a": ips, "psw-b": ["10.240.9.9"]},
           "internal": [], "ingress": []}
    new = {**old, "networks": {"psw-a": ips[1:] + ["10.241.0.2"], "psw-c": []}}
    changes = deltas.mesh_changes(old, new)
    assert changes == {"networks": {"psw-a": {"add": ["10.241.0.2"], "remove": [ips[0]]},
                                    "psw-c": {"add": [], "remove": []}},
                       "networks_gone": ["psw-b"]}
    assert len(protocol.encode(changes)) < 200 < len(protocol.encode(new)) // 500
    applied = deltas.apply_mesh({**old, "version": 4}, _sent(4, changes))
    assert _as_sets(applied) == _as_sets(new) and applied["version"] == 5
    assert old["networks"]["psw-a"] is ips and len(ips) == 10_000, "the base was changed in place"
    assert deltas.mesh_changes(old, dict(old)) == {}
    # isolation on or off: only a whole mesh says it
    assert deltas.mesh_changes({**old, "networks": None}, new) is None
    assert deltas.mesh_changes(old, {**new, "networks": None}) is None
    ingress = [{"service": "web", "port": "80", "protocol": "tcp", "backends": ["10.240.0.2:80"]}]
    with_port = deltas.mesh_changes(old, {**old, "ingress": ingress})
    assert with_port == {"ingress": ingress}
    assert deltas.apply_mesh(old, _sent(1, with_port))["ingress"] == ingress


addresses = st.lists(st.sampled_from([f"10.240.0.{i}" for i in range(2, 12)]), max_size=8, unique=True)
meshes = st.fixed_dictionaries({
    "op": st.just("mesh"),
    "gateways": addresses, "internal": addresses,
    "networks": st.none() | st.dictionaries(st.sampled_from(["psw-a", "psw-b", "psw-c"]), addresses, max_size=3),
    "ingress": st.lists(st.fixed_dictionaries({
        "service": st.sampled_from(["web", "api"]), "port": st.sampled_from(["80", "8000-8010"]),
        "protocol": st.sampled_from(["tcp", "udp"]), "backends": st.lists(st.just("10.240.0.2:80"), max_size=2)}),
        max_size=2),
})


@settings(max_examples=300, deadline=None)
@given(meshes, meshes)
def test_any_delta_applied_gives_the_new_mesh(old: dict[str, Any], new: dict[str, Any]) -> None:
    changes = deltas.mesh_changes(old, new)
    if old["networks"] is None or new["networks"] is None:
        assert changes is None
        return
    assert changes is not None
    assert _as_sets(deltas.apply_mesh(old, _sent(1, changes))) == _as_sets(new)
