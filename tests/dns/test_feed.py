"""dns/feed.py: the table's changes as the manager sends them to its DNS
process. The table the process rebuilds from the messages must be the
manager's, field for field, and answer every query the same."""

from __future__ import annotations

from typing import Any

import dns.message
import pytest
from dns_helpers import ips, running
from factories import make_container_spec, make_service

from pyswarm import wire
from pyswarm.dns import NameTable, Responder, TableCache, build_table
from pyswarm.dns import feed
from pyswarm.models import Cluster, Service, Task


def net(*names: str, aliases: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    return [{"target": n, "aliases": (aliases or {}).get(n, [])} for n in names]


def cluster_state() -> tuple[list[Service], list[Task]]:
    ports = [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress", "name": "http"}]
    web = make_service("web", stack="demo", networks=net("demo_front", "demo_back"),
                       container=make_container_spec(options={"ports": ports}))
    db = make_service("db", stack="demo", networks=net("demo_back", aliases={"demo_back": ["primary"]}))
    lone = make_service("lone", stack="")
    tasks = running(web, "10.240.1.2", "10.240.2.2") + running(db, "10.240.1.3") + running(lone, "10.240.3.9")
    return [web, db, lone], tasks


def replay(receiver: feed.Receiver, messages: list[bytes]) -> None:
    for line in messages:
        receiver.apply(feed.parse(line))


def same(a: NameTable, b: NameTable) -> None:
    assert a == b  # every field that answers (the per-client caches are not compared)
    assert a.serial == b.serial


def test_the_whole_table_then_a_change_rebuild_the_managers_table(cluster: Cluster) -> None:
    services, tasks = cluster_state()
    cache = TableCache()
    first = cache.update(cluster, services, tasks, ["10.0.0.1"])
    receiver = feed.Receiver()
    replay(receiver, list(feed.changes(None, first)))
    same(receiver.table, first)
    # a replica more for web, lone removed, a node more
    web = services[0]
    second = cache.update(cluster, services[:2], tasks[:3] + running(web, "10.240.2.7")[:1], ["10.0.0.1", "10.0.0.2"])
    messages = list(feed.changes(first, second))
    replay(receiver, messages)
    same(receiver.table, second)
    # only what changed travels: lone's names go, web's change, db's names are not sent again
    sent = feed.parse(messages[0])
    assert "lone" in sent.names_gone and "web.demo" in sent.names and "db.demo" not in sent.names
    assert sent.stacks is None and sent.zone is None and sent.nodes == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("client,name", [(None, "web.demo"), ("10.240.1.3", "primary"), (None, "_8080._tcp.web.demo"),
                                         (None, "2.1.240.10.in-addr.arpa"), ("10.240.1.3", "lone"), (None, "lone"),
                                         (None, "nope.pyswarm"), (None, "example.com"), ("192.0.2.1", "example.com")])
def test_the_rebuilt_table_answers_as_the_managers(cluster: Cluster, client: str | None, name: str) -> None:
    services, tasks = cluster_state()
    table = build_table(cluster.__class__(id="c", addr_pool="10.240.0.0/16"), services, tasks, ["10.0.0.1"])
    receiver = feed.Receiver()
    replay(receiver, list(feed.changes(None, table)))
    query = dns.message.make_query(name, "SRV" if name.startswith("_") else "PTR" if "arpa" in name else "A")
    query.id = 7
    wire_query = query.to_wire()
    ours = Responder(lambda: table).respond(wire_query, client=client)
    theirs = Responder(receiver).respond(wire_query, client=client)
    assert (theirs.data, theirs.forward) == (ours.data, ours.forward)


def test_a_big_change_is_cut_into_messages_and_installed_at_the_last(cluster: Cluster,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "CHUNK", 5)
    big = make_service("big", stack="demo")
    table = build_table(cluster, [big], running(big, *ips(30)))
    messages = list(feed.changes(None, table))
    assert len(messages) > 3
    receiver = feed.Receiver()
    before = receiver.table
    for line in messages[:-1]:
        assert not receiver.apply(feed.parse(line))
        assert receiver.table is before, "half a table was installed"
    assert receiver.apply(feed.parse(messages[-1]))
    same(receiver.table, table)


@pytest.mark.parametrize("line,field", [
    (b'{"serial": 2, "names": {"web": {"ips": [1]}}}', "names.web.ips[0]"),
    (b'{"serial": 2, "names": {"web": {"ips": [], "srv": [{"port": 70000, "target": "x"}]}}}', "names.web.srv[0].port"),
    (b'{"serial": "2"}', "serial"),
    (b'{"serial": 2, "colour": "red"}', "colour"),
    (b'{"serial": 2, "clients": {"10.240.1.2": "front"}}', "clients.10.240.1.2"),
    (b'not json', ""),
    (b'{"serial": 2, "names": {"web": {"ips_list": "L0"}}}', "ips_list"),
    (b'{"serial": 2, "names": {"web": {"ips": ["10.0.0.1"], "ips_list": "L0"}}, "lists": {"L0": []}}', "ips_list"),
])
def test_a_malformed_message_is_refused_naming_the_field(line: bytes, field: str) -> None:
    with pytest.raises(wire.BadRequest) as err:
        feed.parse(line)
    assert err.value.path == field


def test_a_long_address_list_travels_once_a_message(cluster: Cluster) -> None:
    """A service's names (and their per-network parts, its SRV extras) carry
    its one address list: it is sent once, and the receiver's entries share
    one tuple again."""
    services, _ = cluster_state()
    web = services[0]
    many = running(web, *(f"10.240.{i // 200}.{i % 200 + 2}" for i in range(500)))
    table = TableCache().update(cluster, services, many)
    messages = list(feed.changes(None, table))
    sent = feed.parse(messages[0])
    assert len(sent.lists) == 1 and len(next(iter(sent.lists.values()))) == 500, sent.lists.keys()
    # once in the shared list, once as a client's key
    assert sum(m.count(b'"10.240.1.2"') for m in messages) == 2
    receiver = feed.Receiver()
    replay(receiver, messages)
    same(receiver.table, table)
    assert receiver.table.names["web.demo"].ips is receiver.table.names["tasks.web.demo"].ips
