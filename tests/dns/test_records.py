"""The DNS decisions, without sockets: which names exist, which addresses
they carry, the rotation, and NXDOMAIN vs NODATA vs REFUSED.

Queries are built and replies read with dnspython, a client independent of
the dnslib code under test, so a wire-format mistake cannot cancel out.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from dns_helpers import ips, running
from factories import make_service, make_task

from pyswarm.dns import NameTable, Responder, TableCache, build_table
from pyswarm.dns.answer import DnsSettings
from pyswarm.dns.records import Kind, Rotator, TableBuilder
from pyswarm.models import DESIRED_SHUTDOWN, Cluster, Service, Task, TaskState

WEB_IPS = ["10.240.1.2", "10.240.2.2", "10.240.3.2"]


@pytest.fixture
def table(cluster: Cluster) -> NameTable:
    web = make_service("web", stack="demo")
    db = make_service("db", stack="demo")  # deployed, nothing running yet
    return build_table(cluster, [web, db], running(web, *reversed(WEB_IPS)) + [make_task(db)])


def ask(responder: Responder, name: str, rdtype: str = "A", *, tcp: bool = False,
        **kw: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    reply = responder.respond(query.to_wire(), tcp=tcp)
    assert reply.data is not None and not reply.forward
    return dns.message.from_wire(reply.data)


def addresses(msg: dns.message.Message) -> list[str]:
    return [rd.address for rrset in msg.answer for rd in rrset]


# -- names -----------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "web.demo.pyswarm", "web.demo", "tasks.web.demo.pyswarm", "tasks.web.demo",
    "demo_web", "demo_web.pyswarm",
])
def test_every_name_of_a_service_carries_its_running_addresses(table: NameTable, name: str) -> None:
    entry = table.lookup(name)
    assert entry is not None
    assert entry.ips == tuple(WEB_IPS)  # numeric base order, whatever the task order


@pytest.mark.parametrize("name", ["WEB.Demo.PySwarm", "web.demo.pyswarm.", "Tasks.WEB.demo.", "DEMO_web"])
def test_names_are_case_insensitive_and_the_trailing_dot_optional(table: NameTable, name: str) -> None:
    assert name in table
    assert table.classify(name).kind is Kind.ADDRESSES


def test_only_tasks_running_and_meant_to_run_with_an_address_are_answered(cluster: Cluster) -> None:
    web = make_service("web", stack="demo")
    tasks = [
        make_task(web, state=TaskState.RUNNING, ip="10.240.1.2"),
        make_task(web, state=TaskState.STARTING, ip="10.240.1.3"),
        make_task(web, state=TaskState.RUNNING, ip="10.240.1.4", desired_state=DESIRED_SHUTDOWN),
        make_task(web, state=TaskState.RUNNING, ip=""),
        make_task(web, state=TaskState.FAILED, ip="10.240.1.5"),
        make_task(web, state=TaskState.PENDING),
    ]
    entry = build_table(cluster, [web], tasks).lookup("web.demo")
    assert entry is not None and entry.ips == ("10.240.1.2",)


def test_tasks_of_services_not_in_the_snapshot_are_ignored(cluster: Cluster) -> None:
    web = make_service("web", stack="demo")
    gone = make_service("gone", stack="demo")
    table = build_table(cluster, [web], running(web, "10.0.0.1") + running(gone, "10.0.0.9"))
    assert "gone.demo" not in table
    assert table.classify("gone.demo").kind is Kind.NXDOMAIN


def test_a_service_without_a_stack_is_named_in_the_zone(cluster: Cluster) -> None:
    solo = make_service("solo", stack="")
    table = build_table(cluster, [solo], running(solo, "10.0.0.1"))
    for name in ("solo", "solo.pyswarm", "tasks.solo", "tasks.solo.pyswarm"):
        entry = table.lookup(name)
        assert entry is not None and entry.ips == ("10.0.0.1",), name


def test_the_cluster_zone_is_used_and_names_outside_it_are_not_ours() -> None:
    web = make_service("web", stack="demo")
    table = build_table(Cluster(id="c", zone="Swarm.Internal."), [web], running(web, "10.0.0.1"))
    assert "web.demo.swarm.internal" in table
    assert "web.demo.pyswarm" not in table
    assert table.classify("web.demo.pyswarm").kind is Kind.OUTSIDE
    assert table.classify("nope.swarm.internal").kind is Kind.NXDOMAIN


def test_two_services_claiming_one_name_merge_their_addresses(cluster: Cluster) -> None:
    solo = make_service("web", stack="")  # web.pyswarm
    inner = make_service("web", stack="pyswarm")  # web.pyswarm too
    table = build_table(cluster, [solo, inner], running(solo, "10.0.0.1") + running(inner, "10.0.0.2"))
    entry = table.lookup("web.pyswarm")
    assert entry is not None
    assert entry.ips == ("10.0.0.1", "10.0.0.2")
    assert set(entry.service_ids) == {solo.id, inner.id}


# -- classification --------------------------------------------------------

@pytest.mark.parametrize("name, kind", [
    ("db.demo.pyswarm", Kind.ADDRESSES),  # exists, no running task yet
    ("nope.demo.pyswarm", Kind.NXDOMAIN),  # in the zone
    ("nope.pyswarm", Kind.NXDOMAIN),
    ("nope.demo", Kind.NXDOMAIN),  # last label is a stack
    ("tasks.nope", Kind.NXDOMAIN),  # tasks. is ours
    ("tasks.nope.other", Kind.NXDOMAIN),
    ("demo_nope", Kind.NXDOMAIN),  # full-name form of a known stack
    ("demo.pyswarm", Kind.EMPTY),  # the stack's search domain exists
    ("pyswarm", Kind.EMPTY),  # the zone apex
    ("demo", Kind.EMPTY),  # parent of web.demo
    ("example.com", Kind.OUTSIDE),
    ("web", Kind.OUTSIDE),  # a bare short name only exists through a search domain
    ("other_web", Kind.OUTSIDE),  # no stack named "other"
    ("web.other", Kind.OUTSIDE),
])
def test_classification(table: NameTable, name: str, kind: Kind) -> None:
    assert table.classify(name).kind is kind


def test_a_known_service_with_no_running_task_has_no_addresses(table: NameTable) -> None:
    entry = table.lookup("db.demo")
    assert entry is not None and entry.ips == ()


# -- rotation --------------------------------------------------------------

def test_rotation_moves_by_one_per_answer_and_wraps() -> None:
    rot = Rotator()
    base = ("a", "b", "c")
    assert [rot.rotate("web.demo", base) for _ in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_rotation_counters_are_per_name_and_case_insensitive() -> None:
    rot = Rotator()
    base = ("a", "b")
    assert rot.rotate("web.demo", base) == ["a", "b"]
    assert rot.rotate("tasks.web.demo", base) == ["a", "b"]  # its own counter
    assert rot.rotate("WEB.demo.", base) == ["b", "a"]  # same name as the first


def test_rotation_forgets_names_the_table_lost(cluster: Cluster) -> None:
    rot = Rotator()
    web = make_service("web", stack="demo")
    rot.rotate("web.demo", ("a", "b"))
    rot.rotate("old.demo", ("a", "b"))
    rot.prune(build_table(cluster, [web], []))
    assert rot.rotate("old.demo", ("a", "b")) == ["a", "b"]  # restarted
    assert rot.rotate("web.demo", ("a", "b")) == ["b", "a"]  # kept


# -- replies ---------------------------------------------------------------

def test_answers_rotate_across_queries_with_a_short_ttl(table: NameTable) -> None:
    responder = Responder(lambda: table, DnsSettings(ttl=3))
    seen = [addresses(ask(responder, "web.demo.pyswarm")) for _ in range(3)]
    assert seen == [WEB_IPS, WEB_IPS[1:] + WEB_IPS[:1], WEB_IPS[2:] + WEB_IPS[:2]]
    msg = ask(responder, "web.demo.pyswarm")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA
    assert msg.answer[0].ttl == 3


def test_the_answer_echoes_the_question_as_asked(table: NameTable) -> None:
    msg = ask(Responder(lambda: table), "WeB.DeMo.pySwarm.")
    assert msg.answer[0].name.to_text() == "WeB.DeMo.pySwarm."
    assert sorted(addresses(msg)) == WEB_IPS


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT", "SRV"])
def test_other_types_for_a_known_name_are_nodata_not_nxdomain(table: NameTable, rdtype: str) -> None:
    msg = ask(Responder(lambda: table), "web.demo.pyswarm", rdtype)
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == []
    assert msg.authority[0].rdtype == dns.rdatatype.SOA


def test_a_service_whose_tasks_are_not_running_yet_is_nodata(table: NameTable) -> None:
    msg = ask(Responder(lambda: table), "db.demo.pyswarm")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == []


def test_unknown_names_in_the_zone_are_nxdomain_with_a_short_lived_soa(table: NameTable) -> None:
    msg = ask(Responder(lambda: table, DnsSettings(negative_ttl=5)), "nope.demo.pyswarm")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert msg.answer == []
    (soa,) = msg.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text() == "pyswarm."
    assert soa[0].minimum == 5 and soa.ttl == 5


def test_the_zone_apex_answers_its_soa(table: NameTable) -> None:
    msg = ask(Responder(lambda: table), "pyswarm", "SOA")
    assert msg.rcode() == dns.rcode.NOERROR
    assert [rrset.rdtype for rrset in msg.answer] == [dns.rdatatype.SOA]


def test_names_outside_are_refused_without_upstreams_and_forwarded_with(table: NameTable) -> None:
    msg = ask(Responder(lambda: table), "example.com")
    assert msg.rcode() == dns.rcode.REFUSED
    assert not msg.flags & dns.flags.RA
    forwarding = Responder(lambda: table, DnsSettings(forwarding=True))
    reply = forwarding.respond(dns.message.make_query("example.com", "A").to_wire())
    assert reply.forward and reply.data is None


def test_a_large_answer_over_udp_is_truncated_and_whole_over_tcp(cluster: Cluster) -> None:
    big = make_service("big", stack="demo")
    many = ips(60)
    table = build_table(cluster, [big], running(big, *many))
    responder = Responder(lambda: table)

    udp = ask(responder, "big.demo.pyswarm")
    assert udp.flags & dns.flags.TC
    assert 0 < len(addresses(udp)) < 60  # as many as fit, for clients that do not retry
    assert len(responder.respond(dns.message.make_query("big.demo", "A").to_wire()).data or b"") <= 512

    tcp = ask(responder, "big.demo.pyswarm", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert sorted(addresses(tcp)) == sorted(many)

    edns = ask(responder, "big.demo.pyswarm", use_edns=0, payload=4096)
    assert not edns.flags & dns.flags.TC
    assert len(addresses(edns)) == 60
    assert edns.edns == 0

    small = ask(responder, "big.demo.pyswarm", use_edns=0, payload=600)
    assert small.flags & dns.flags.TC
    assert len(addresses(udp)) < len(addresses(small)) < 60


def test_an_unsupported_edns_version_is_badvers(table: NameTable) -> None:
    msg = ask(Responder(lambda: table), "web.demo", use_edns=1)
    assert msg.rcode() == dns.rcode.BADVERS


# -- malformed input -------------------------------------------------------

def test_garbage_with_a_header_is_formerr_and_keeps_the_id(table: NameTable) -> None:
    responder = Responder(lambda: table)
    packet = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff"
    reply = responder.respond(packet)
    assert reply.data is not None
    msg = dns.message.from_wire(reply.data)
    assert msg.id == 0x1234 and msg.rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize("packet", [b"", b"\x00", b"short", b"\x12\x34\x81\x80" + b"\x00" * 8])
def test_runts_and_responses_are_dropped(table: NameTable, packet: bytes) -> None:
    assert Responder(lambda: table).respond(packet).data is None


def test_no_question_is_formerr_and_other_opcodes_notimp(table: NameTable) -> None:
    responder = Responder(lambda: table)
    empty = dns.message.Message(id=7)
    msg = dns.message.from_wire(responder.respond(empty.to_wire()).data or b"")
    assert msg.rcode() == dns.rcode.FORMERR
    notify = dns.message.make_query("web.demo", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    msg = dns.message.from_wire(responder.respond(notify.to_wire()).data or b"")
    assert msg.rcode() == dns.rcode.NOTIMP


def test_a_failing_table_source_is_servfail_not_a_crash() -> None:
    def broken() -> NameTable:
        raise RuntimeError("store gone")

    reply = Responder(broken).respond(dns.message.make_query("web.demo", "A").to_wire())
    assert reply.data is not None
    assert dns.message.from_wire(reply.data).rcode() == dns.rcode.SERVFAIL


# -- the cache -------------------------------------------------------------

def test_table_cache_update_swaps_the_table_and_bumps_the_serial(cluster: Cluster) -> None:
    cache = TableCache()
    web = make_service("web", stack="demo")
    first = cache.update(cluster, [web], running(web, "10.0.0.1"))
    second = cache.update(cluster, [web], running(web, "10.0.0.2"))
    assert cache() is second and second.serial > first.serial
    entry = cache().lookup("web.demo")
    assert entry is not None and entry.ips == ("10.0.0.2",)


def test_table_cache_rebuilds_lazily_once_per_invalidation(cluster: Cluster) -> None:
    web = make_service("web", stack="demo")
    loads: list[int] = []
    state = {"ip": "10.0.0.1"}

    def loader() -> tuple[Cluster, list[Service], list[Task]]:
        loads.append(1)
        return cluster, [web], running(web, state["ip"])

    cache = TableCache(loader)
    assert cache().lookup("web.demo") is not None and len(loads) == 1
    cache()
    assert len(loads) == 1  # not rebuilt without a change
    state["ip"] = "10.0.0.2"
    cache.invalidate()
    entry = cache().lookup("web.demo")
    assert entry is not None and entry.ips == ("10.0.0.2",) and len(loads) == 2


def test_invalidate_without_a_loader_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        TableCache().invalidate()


def test_repeated_queries_are_answered_from_the_reply_cache_with_their_own_id(table: NameTable) -> None:
    responder = Responder(lambda: table)
    seen = []
    for ident in (1, 2, 3, 4, 5, 6, 0xFFFF):
        query = dns.message.make_query("Web.Demo.pyswarm", "A")
        query.id = ident
        reply = responder.respond(query.to_wire())
        assert reply.data is not None
        msg = dns.message.from_wire(reply.data)
        assert msg.id == ident
        assert msg.question[0].name.to_text() == "Web.Demo.pyswarm."
        seen.append(addresses(msg)[0])
    assert seen == (WEB_IPS * 3)[:7]  # replies 4..7 came from the cache, still rotating


def test_the_reply_cache_is_dropped_when_the_table_changes(cluster: Cluster) -> None:
    web = make_service("web", stack="demo")
    current = [build_table(cluster, [web], running(web, "10.0.0.1"))]
    responder = Responder(lambda: current[0])
    assert addresses(ask(responder, "web.demo")) == ["10.0.0.1"]
    current[0] = build_table(cluster, [web], running(web, "10.0.0.2"))
    assert addresses(ask(responder, "web.demo")) == ["10.0.0.2"]
    current[0] = build_table(cluster, [web], [])
    assert ask(responder, "web.demo").answer == []


@pytest.mark.parametrize("seed", range(6))
def test_the_builder_kept_from_changes_equals_a_whole_build(cluster: Cluster, seed: int) -> None:
    """The manager's table follows changed tasks (dns/records.py
    TableBuilder); after any sequence of starts, reports, shut-downs,
    removals and node changes it must be the table built from scratch:
    names, merged names, aliases, SRV, reverse names and clients."""
    import dataclasses
    import random

    from factories import make_container_spec

    rng = random.Random(seed)
    ports = {"ports": [{"target": 80, "published": 8080, "protocol": "tcp", "name": "http"}]}
    services = [
        make_service("web", stack="demo", networks=[{"target": "demo_front", "aliases": ["www"]},
                                                    {"target": "demo_back", "aliases": []}],
                     container=make_container_spec(options=ports)),
        make_service("db", stack="demo", networks=[{"target": "demo_back", "aliases": ["www"]}]),
        make_service("web", stack="pyswarm"),  # both answer web.pyswarm: merged
        make_service("web", stack=""),
    ]
    tasks: dict[str, Task] = {}
    states = [TaskState.ASSIGNED, TaskState.STARTING, TaskState.RUNNING, TaskState.FAILED]
    builder = TableBuilder()
    nodes = ["10.0.0.1"]

    def live(t: Task) -> bool:
        return not t.state.terminal and t.state.rank >= TaskState.ASSIGNED.rank

    assert builder.rebuild(cluster, services, [], nodes) == build_table(cluster, services, [], nodes)
    made = 0  # addresses are unique: which of two live tasks on one address is its client is not defined
    for step in range(150):
        changed: list[str] = []
        for _ in range(rng.randint(1, 5)):
            roll = rng.random()
            if roll < 0.4 or not tasks:
                made += 1
                t = make_task(rng.choice(services), ip=f"10.240.{made // 250}.{made % 250 + 2}",
                              state=rng.choice(states[:3]))
            elif roll < 0.8:
                t = tasks[rng.choice(sorted(tasks))]
                t = dataclasses.replace(t, state=rng.choice(states)) if rng.random() < 0.7 else \
                    dataclasses.replace(t, desired_state=DESIRED_SHUTDOWN)
            else:
                t = tasks.pop(rng.choice(sorted(tasks)))
                changed.append(t.id)
                continue
            tasks[t.id] = t
            changed.append(t.id)
        if rng.random() < 0.1:
            nodes = nodes + [f"10.0.0.{len(nodes) + 1}"]
        got = builder.update([(tid, tasks[tid] if tid in tasks and live(tasks[tid]) else None) for tid in changed],
                             nodes)
        want = build_table(cluster, services, [t for t in tasks.values() if live(t)], nodes)
        assert got == want, (step, {k for k in want.names.keys() | got.names.keys()
                                    if want.names.get(k) != got.names.get(k)})
