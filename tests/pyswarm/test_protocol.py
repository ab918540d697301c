"""The typed agent <-> dispatcher messages (pyswarm/protocol.py on the
project's checker, pyswarm/wire.py): every message type with wrong types,
missing fields, huge values and unknown fields, what the manager really sends
parses back to itself, and generated garbage (hypothesis) in both
directions gets a clear BadRequest or a correct parse, never another
exception."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_manager, make_node, make_service, make_snapshot, make_task  # noqa: E402

from pyswarm import protocol  # noqa: E402
from pyswarm.wire import BadRequest  # noqa: E402
from pyswarm.manager.dispatcher import assignments_by_node, node_configuration  # noqa: E402
from pyswarm.manager.networks import mesh_message  # noqa: E402
from pyswarm.models import Cluster, TaskState  # noqa: E402

HELLO = {"op": "hello", "hostname": "w1", "resources": {"nano_cpus": 2_000_000_000, "memory_bytes": 2**31},
         "platform": {"os": "linux", "arch": "x86_64"}, "engine_version": "27.1", "engine_labels": {"a": "b"}}
STATUS = {"op": "status", "task_id": "t1", "state": "running", "container_id": "c" * 64, "ip": "10.240.1.5",
          "exit_code": None, "message": "started", "error": "", "ts": 1.7e9}
CONFIGURE = {"op": "configure", "node_id": "n1", "cluster_id": "c", "subnet": "10.240.1.0/24",
             "pool": "10.240.0.0/16", "routes": [{"subnet": "10.240.2.0/24", "via": "10.0.0.2"}],
             "dns": ["10.0.0.1"], "zone": "pyswarm", "term": 4, "overlay": "", "addr": "10.0.0.3"}


def line(message: Any) -> bytes:
    return json.dumps(message).encode()


def refused(parse: Any, message: Any) -> str:
    with pytest.raises(BadRequest) as info:
        parse(line(message))
    return str(info.value)


# -- agent -> manager ------------------------------------------------------------------


def test_a_real_hello_and_status_parse() -> None:
    hello = protocol.parse_agent(line(HELLO))
    assert isinstance(hello, protocol.Hello)
    assert hello.resources == protocol.HostResources(2_000_000_000, 2**31)
    status = protocol.parse_agent(line(STATUS))
    assert isinstance(status, protocol.Status) and status.state is TaskState.RUNNING and status.ip == "10.240.1.5"
    assert protocol.parse_agent(line({"op": "pong", "seq": -3})) == protocol.Pong(-3)
    assert protocol.parse_agent(line({"op": "error", "message": "x"})) == protocol.AgentError("x")


def test_hello_with_lots_of_cpus_names_the_field() -> None:
    text = refused(protocol.parse_agent, {**HELLO, "resources": {"nano_cpus": "lots"}})
    assert text == "hello.resources.nano_cpus: expected an integer, got the string 'lots'"


@pytest.mark.parametrize("change, field", [
    ({"resources": {"nano_cpus": -1}}, "resources.nano_cpus"),
    ({"resources": {"memory_bytes": 2**70}}, "resources.memory_bytes"),
    ({"resources": {"nano_cpus": True}}, "resources.nano_cpus"),  # a bool is no count
    ({"resources": "4"}, "resources"),
    ({"hostname": "h" * 300}, "hostname"),
    ({"platform": {"os": 1}}, "platform.os"),
    ({"engine_labels": {f"k{i}": "v" for i in range(200)}}, "engine_labels"),
    ({"status": "ready"}, "status"),  # unknown fields are refused: a node cannot set what it likes
])
def test_hello_refusals_name_the_field(change: dict[str, Any], field: str) -> None:
    assert f"hello.{field}:" in refused(protocol.parse_agent, {**HELLO, **change})


@pytest.mark.parametrize("change, field", [
    ({"state": "exploded"}, "state"),
    ({"state": None}, "state"),
    ({"task_id": ""}, "task_id"),
    ({"task_id": "a b"}, "task_id"),
    ({"task_id": ["t1"]}, "task_id"),
    ({"ip": "not-an-ip"}, "ip"),
    ({"ip": 5}, "ip"),
    ({"exit_code": "1"}, "exit_code"),
    ({"exit_code": 2**40}, "exit_code"),
    ({"ts": float("inf")}, "ts"),
    ({"ts": "now"}, "ts"),
    ({"message": "m" * 5000}, "message"),
])
def test_status_refusals_name_the_field(change: dict[str, Any], field: str) -> None:
    assert f"status.{field}:" in refused(protocol.parse_agent, {**STATUS, **change})


def test_missing_required_fields_are_named() -> None:
    assert refused(protocol.parse_agent, {"op": "status", "state": "running"}) == "status.task_id: missing (required)"
    assert refused(protocol.parse_agent, {"op": "status", "task_id": "t"}) == "status.state: missing (required)"


def test_unknown_fields_are_refused_by_name() -> None:
    text = refused(protocol.parse_agent, {**STATUS, "node_id": "someone-else"})
    assert text.startswith("status.node_id: unknown field"), text


def test_not_a_message() -> None:
    for bad in (b"not json", b"[1, 2]", b'{"no": "op"}', b'{"op": 7}', b'{"op": "configure"}',
                b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(BadRequest):
            protocol.parse_agent(bad)


def test_an_oversize_line_is_refused_before_it_is_decoded() -> None:
    big = line({**STATUS, "message": "m" * protocol.MAX_AGENT_LINE})
    assert "bytes, at most" in str(pytest.raises(BadRequest, protocol.parse_agent, big).value)


# -- manager -> agent ------------------------------------------------------------------


def test_configure_term_must_be_an_integer() -> None:
    assert "configure.term: expected an integer" in refused(protocol.parse_manager, {**CONFIGURE, "term": "7"})
    assert "configure.term:" in refused(protocol.parse_manager, {**CONFIGURE, "term": 7.5})
    assert "configure.term:" in refused(protocol.parse_manager, {**CONFIGURE, "term": True})
    assert protocol.parse_manager(line({**CONFIGURE, "term": 9})).term == 9


@pytest.mark.parametrize("change, field", [
    ({"subnet": "nonsense"}, "subnet"),
    ({"routes": [{"subnet": "10.240.2.0/24", "via": "x"}]}, "routes[0].via"),
    ({"routes": {"subnet": "a"}}, "routes"),
    ({"dns": ["10.0.0.1", 5]}, "dns[1]"),
    ({"overlay": "geneve"}, "overlay"),
    ({"manager": {"api_port": 70000}}, "manager.api_port"),
])
def test_configure_refusals_name_the_field(change: dict[str, Any], field: str) -> None:
    assert f"configure.{field}:" in refused(protocol.parse_manager, {**CONFIGURE, **change})


def test_a_bad_secret_field_never_shows_its_value() -> None:
    text = refused(protocol.parse_manager, {**CONFIGURE, "manager": {"raft_secret": ["s3cr3t-value"]}})
    assert "manager.raft_secret" in text and "s3cr3t" not in text


def test_assign_mesh_ping() -> None:
    assert protocol.parse_manager(b'{"op":"assign","tasks":[]}') == protocol.Assign([])
    assert "assign.tasks: missing" in refused(protocol.parse_manager, {"op": "assign"})
    assert "assign.tasks:" in refused(protocol.parse_manager, {"op": "assign", "tasks": {"t": 1}})
    assert "mesh.gateways[0]:" in refused(protocol.parse_manager, {"op": "mesh", "gateways": [7]})
    assert "mesh.networks.psw-a[0]:" in refused(protocol.parse_manager, {"op": "mesh", "networks": {"psw-a": [1]}})
    assert "mesh.ingress[0].protocol:" in refused(protocol.parse_manager, {
        "op": "mesh", "ingress": [{"port": "80", "protocol": "sctp"}]})
    assert protocol.parse_manager(b'{"op":"ping","seq":3}') == protocol.Ping(3)
    assert "unknown op 'hello'" in refused(protocol.parse_manager, HELLO)  # agent ops are not manager ops


def test_what_the_leader_sends_parses() -> None:
    """The dispatcher's real configure (a manager's, with its grant),
    assignments and mesh all pass the agent's parser."""
    cluster = Cluster(id="c1", ssh_public_key="ssh-ed25519 AAAA k", raft_secret="r" * 50,
                      api_host_private_key="-----BEGIN OPENSSH PRIVATE KEY-----\n...")
    manager = make_manager(subnet="10.240.0.0/24", ssh_host_key="k")
    worker = make_node(subnet="10.240.1.0/24", ssh_host_key="k")
    service = make_service("web")
    task = make_task(service, node_id=worker.id, state=TaskState.RUNNING, ip="10.240.1.2")
    snap = make_snapshot(cluster, manager, worker, service, task)
    for node in (manager, worker):
        sent = node_configuration(snap, node, term=3_000_000_007)
        parsed = protocol.parse_manager(protocol.encode(sent))
        assert isinstance(parsed, protocol.Configure) and parsed.term == 3_000_000_007
        assert (parsed.manager is not None) == (node is manager)
    tasks = assignments_by_node(snap, "pyswarm")[worker.id]
    assert protocol.parse_manager(protocol.encode({"op": "assign", "tasks": tasks})).tasks == tasks
    assert isinstance(protocol.parse_manager(protocol.encode(mesh_message(snap))), protocol.MeshMessage)


# -- garbage (hypothesis) ----------------------------------------------------------------

json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
GARBAGE = settings(max_examples=300, deadline=None)


def _mutated(base: dict[str, Any]) -> Any:
    """A real message with one field replaced, removed or added."""
    keys = st.sampled_from(sorted(base) + ["extra"])
    return st.tuples(keys, json_values, st.booleans()).map(
        lambda kv: {k: v for k, v in {**base, kv[0]: kv[1]}.items() if not (kv[2] and k == kv[0] and k != "op")})


def _never_crashes(parse: Any, data: bytes) -> None:
    try:
        parsed = parse(data)
    except BadRequest as exc:
        assert str(exc), "an error says what is wrong"
        return
    if isinstance(parsed, protocol.StreamMessage):  # logs/exec/stats frames: pyswarm/streamwire.py checks them
        return
    assert type(parsed).op in (protocol.AGENT_OPS if parse is protocol.parse_agent else protocol.MANAGER_OPS)


@GARBAGE
@given(st.binary(max_size=200))
def test_agent_parser_takes_any_bytes(data: bytes) -> None:
    _never_crashes(protocol.parse_agent, data)


@GARBAGE
@given(st.binary(max_size=200))
def test_manager_parser_takes_any_bytes(data: bytes) -> None:
    _never_crashes(protocol.parse_manager, data)


def test_deltas_resync_and_the_ping_period() -> None:
    """The messages of protocol 2 (pyswarm/deltas.py): each field checked
    and named, as every message is."""
    delta = protocol.parse_manager(protocol.encode(
        {"op": "assign_delta", "base": 3, "version": 4, "put": [{"task_id": "t1"}], "remove": ["t0"]}))
    assert delta == protocol.AssignDelta(3, 4, [{"task_id": "t1"}], ["t0"])
    assert "assign_delta.base: missing" in refused(protocol.parse_manager, {"op": "assign_delta", "version": 1})
    assert "assign_delta.remove[0]:" in refused(protocol.parse_manager, {
        "op": "assign_delta", "base": 1, "version": 2, "remove": [5]})
    assert "assign_delta.version: -1 is below" in refused(protocol.parse_manager, {
        "op": "assign_delta", "base": 1, "version": -1})
    assert protocol.parse_manager(b'{"op":"assign","tasks":[],"version":7}') == protocol.Assign([], 7)
    mesh = protocol.parse_manager(protocol.encode({
        "op": "mesh_delta", "base": 1, "version": 2, "gateways": {"add": ["10.240.3.1"]},
        "networks": {"psw-a": {"add": ["10.240.1.2"], "remove": ["10.240.1.3"]}}, "networks_gone": ["psw-b"]}))
    assert isinstance(mesh, protocol.MeshDelta) and mesh.networks["psw-a"].remove == ["10.240.1.3"]
    assert mesh.ingress is None and mesh.internal is None
    assert "mesh_delta.networks.psw-a.add[0]:" in refused(protocol.parse_manager, {
        "op": "mesh_delta", "base": 1, "version": 2, "networks": {"psw-a": {"add": [1]}}})
    assert "mesh_delta.gateways.keep: unknown field" in refused(protocol.parse_manager, {
        "op": "mesh_delta", "base": 1, "version": 2, "gateways": {"keep": []}})
    assert protocol.parse_manager(b'{"op":"ping","seq":3,"every":4}') == protocol.Ping(3, every=4.0)
    assert "ping.every:" in refused(protocol.parse_manager, {"op": "ping", "every": "soon"})
    assert protocol.parse_agent(b'{"op":"resync","what":"mesh","have":null}') == protocol.Resync("mesh", None)
    assert "resync.what:" in refused(protocol.parse_agent, {"op": "resync", "what": "everything"})
    hello = protocol.parse_agent(protocol.encode({**HELLO, "protocol": protocol.PROTOCOL}))
    assert hello.protocol == 2 and protocol.parse_agent(protocol.encode(HELLO)).protocol == 1
    assert "hello.protocol:" in refused(protocol.parse_agent, {**HELLO, "protocol": 0})


@GARBAGE
@given(st.one_of(json_values, _mutated(HELLO), _mutated(STATUS), _mutated({"op": "pong", "seq": 1}),
                 _mutated({"op": "error", "message": "m"}), _mutated({"op": "resync", "what": "assign", "have": 1})))
def test_agent_parser_takes_any_json(value: Any) -> None:
    _never_crashes(protocol.parse_agent, json.dumps(value).encode())


@GARBAGE
@given(st.one_of(json_values, _mutated(CONFIGURE), _mutated({"op": "assign", "tasks": []}),
                 _mutated({"op": "mesh", "gateways": ["10.240.0.1"], "networks": {"psw-a": []}}),
                 _mutated({"op": "ping", "seq": 1}),
                 _mutated({"op": "assign_delta", "base": 1, "version": 2, "put": [], "remove": ["t"]}),
                 _mutated({"op": "mesh_delta", "base": 1, "version": 2, "networks": {"psw-a": {"add": []}}})))
def test_manager_parser_takes_any_json(value: Any) -> None:
    _never_crashes(protocol.parse_manager, json.dumps(value).encode())
