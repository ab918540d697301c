"""Issue 6 in the name table: per-network views keyed by the client's
address, network aliases, SRV for published ports, PTR for task addresses.

Replies are read with dnspython, independent of the dnslib code under test.
"""

from __future__ import annotations

from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dns_helpers import running
from factories import make_container_spec, make_service, make_task

from pyswarm.dns import NameTable, Responder, build_table
from pyswarm.models import Cluster, TaskState

WEB = ["10.240.1.2", "10.240.2.2"]
DB = ["10.240.1.3"]
CACHE = ["10.240.2.9"]
OTHER = ["10.240.3.4"]  # another stack, default network


def net(*names: str, aliases: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    return [{"target": n, "aliases": (aliases or {}).get(n, [])} for n in names]


@pytest.fixture
def table(cluster: Cluster) -> NameTable:
    ports = [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress", "name": "http"}]
    web = make_service("web", stack="demo", networks=net("demo_front", "demo_back"),
                       container=make_container_spec(options={"ports": ports}))
    db = make_service("db", stack="demo", networks=net("demo_back", aliases={"demo_back": ["primary"]}))
    cache = make_service("cache", stack="demo", networks=net("demo_front"))
    other = make_service("api", stack="shop", networks=net("shop_default"))
    tasks = running(web, *WEB) + running(db, *DB) + running(cache, *CACHE) + running(other, *OTHER)
    # a task still starting is a client already (it resolves before it serves)
    tasks.append(make_task(other, ip="10.240.3.5", state=TaskState.STARTING))
    return build_table(cluster, [web, db, cache, other], tasks)


def ask(table: NameTable, name: str, rdtype: str = "A", client: str | None = None) -> dns.message.Message:
    responder = Responder(lambda: table)
    reply = responder.respond(dns.message.make_query(name, rdtype).to_wire(), client=client)
    assert reply.data is not None and not reply.forward
    return dns.message.from_wire(reply.data)


def addrs(msg: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in msg.answer for rd in rrset)


@pytest.mark.parametrize("client,name,want", [
    (CACHE[0], "web.demo", WEB),  # cache shares demo_front with web
    (DB[0], "web.demo", WEB),  # db shares demo_back with web
    (WEB[0], "db.demo", DB),
    (WEB[0], "cache.demo", CACHE),
    ("10.250.0.5", "db.demo", DB),  # not a task: an operator sees everything
    ("10.250.0.5", "api.shop", OTHER),
    ("10.240.3.5", "api.shop", OTHER),  # a starting task of shop sees its own stack
])
def test_a_container_resolves_the_services_it_shares_a_network_with(
        table: NameTable, client: str, name: str, want: list[str]) -> None:
    msg = ask(table, name, client=client)
    assert msg.rcode() == dns.rcode.NOERROR and addrs(msg) == want, msg


@pytest.mark.parametrize("client,name", [
    (CACHE[0], "db.demo"),  # front only: db is on back only
    (DB[0], "cache.demo"),
    (OTHER[0], "web.demo"),  # another stack's default network shares nothing
    (WEB[0], "api.shop"),
    (CACHE[0], "primary"),  # db's alias lives on demo_back only
    (OTHER[0], "demo_web"),
])
def test_a_service_on_no_shared_network_is_nxdomain(table: NameTable, client: str, name: str) -> None:
    msg = ask(table, name, client=client)
    assert msg.rcode() == dns.rcode.NXDOMAIN and not msg.answer, msg
    assert msg.authority and msg.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize("name", ["primary", "primary.demo", "primary.demo.pyswarm", "primary.pyswarm"])
def test_an_alias_answers_on_its_network(table: NameTable, name: str) -> None:
    assert addrs(ask(table, name, client=WEB[0])) == DB


def test_views_are_cached_per_network_set(table: NameTable) -> None:
    a = table.for_client(WEB[0])
    assert a is table.for_client(WEB[1]) and a is not table.for_client(DB[0])
    assert table.for_client("192.0.2.1") is table


@pytest.mark.parametrize("name", ["_8080._tcp.web.demo", "_http._tcp.web.demo.pyswarm"])
def test_srv_for_a_published_port(table: NameTable, name: str) -> None:
    msg = ask(table, name, "SRV", client=CACHE[0])
    srv = [rd for rrset in msg.answer for rd in rrset]
    assert [(r.port, str(r.target)) for r in srv] == [(80, "web.demo.pyswarm.")], msg
    extra = sorted(rd.address for rrset in msg.additional for rd in rrset if rrset.rdtype == dns.rdatatype.A)
    assert extra == WEB


def test_srv_name_has_no_address_and_unknown_port_is_nxdomain(table: NameTable) -> None:
    assert ask(table, "_8080._tcp.web.demo", "A").answer == []
    assert ask(table, "_9999._tcp.web.demo", "SRV").rcode() == dns.rcode.NXDOMAIN


def test_ptr_for_a_task_address(table: NameTable) -> None:
    msg = ask(table, "2.1.240.10.in-addr.arpa", "PTR")
    assert [str(rd.target) for rrset in msg.answer for rd in rrset] == ["web.demo.pyswarm."], msg


def test_ptr_in_the_pool_unknown_is_nxdomain_and_outside_is_not_ours(table: NameTable) -> None:
    assert ask(table, "77.1.240.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN
    assert ask(table, "1.2.0.192.in-addr.arpa", "PTR").rcode() == dns.rcode.REFUSED  # forwarded when upstreams


def test_ptr_respects_the_view(table: NameTable) -> None:
    assert ask(table, "3.1.240.10.in-addr.arpa", "PTR", client=CACHE[0]).rcode() == dns.rcode.NXDOMAIN


def test_services_without_networks_share_one_view(cluster: Cluster) -> None:
    """Services deployed before networks existed keep seeing each other."""
    a, b = make_service("a", stack="x"), make_service("b", stack="y")
    table = build_table(cluster, [a, b], running(a, "10.240.1.7") + running(b, "10.240.1.8"))
    assert addrs(ask(table, "b.y", client="10.240.1.7")) == ["10.240.1.8"]
