"""Forwarding limits (dns/answer.py, NameTable.may_forward): names outside
the cluster's zone are forwarded only for the cluster's containers (the
pool), its nodes and this host; anyone else gets REFUSED, and the reply
cache never hands one client's decision to another. Names inside the zone
are answered to anyone."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from dns_helpers import running
from factories import make_service

from pyswarm.dns import Responder, build_table
from pyswarm.dns.answer import DnsSettings
from pyswarm.models import Cluster

NODES = ["10.250.20.2", "10.250.20.3"]


def responder() -> Responder:
    web = make_service("web", stack="demo")
    table = build_table(Cluster(id="c", addr_pool="10.240.0.0/16"), [web], running(web, "10.240.1.2"), NODES)
    return Responder(lambda: table, DnsSettings(forwarding=True))


def ask(r: Responder, name: str, client: str) -> str:
    reply = r.respond(dns.message.make_query(name, dns.rdatatype.A).to_wire(), client=client)
    if reply.forward:
        return "forward"
    assert reply.data is not None
    return str(dns.rcode.to_text(dns.message.from_wire(reply.data).rcode()))


def test_outside_names_are_forwarded_only_for_the_cluster() -> None:
    r = responder()
    for outsider in ("203.0.113.7", "10.250.20.9", "10.241.0.5", "::ffff:198.51.100.1"):
        assert ask(r, "example.com", outsider) == "REFUSED", outsider
    for member in ("10.240.1.2", "10.240.200.9", NODES[0], NODES[1], "127.0.0.1", "::1", "::ffff:10.240.3.3"):
        assert ask(r, "example.com", member) == "forward", member
    # the reply cache keys on the query: the decision must follow the client, in any order
    assert ask(r, "example.org", NODES[0]) == "forward"
    assert ask(r, "example.org", "203.0.113.7") == "REFUSED"
    assert ask(r, "example.org", NODES[0]) == "forward"


def test_names_inside_the_zone_are_answered_to_anyone() -> None:
    r = responder()
    assert ask(r, "web.demo.pyswarm", "203.0.113.7") == "NOERROR"
    assert ask(r, "nope.demo.pyswarm", "203.0.113.7") == "NXDOMAIN"


# -- garbage (issue 10): the query path answers or drops, never raises ---------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CLIENTS = st.sampled_from(["10.240.1.2", "203.0.113.7", "127.0.0.1", "::1", "not-an-ip", ""])
NAMES = st.sampled_from(["web", "web.demo", "tasks.web.demo", "demo_web", "example.com", "x" * 63, ".", "a..b"])


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600), client=CLIENTS, tcp=st.booleans())
def test_random_bytes_get_a_reply_or_nothing_never_an_exception(data: bytes, client: str, tcp: bool) -> None:
    reply = responder().respond(data, tcp=tcp, client=client)
    if reply.data is not None:
        parsed = dns.message.from_wire(reply.data)  # what comes back is valid DNS
        assert parsed.flags & dns.flags.QR


@settings(max_examples=300, deadline=None)
@given(name=NAMES, qtype=st.integers(min_value=0, max_value=65535), client=CLIENTS,
       flip=st.lists(st.tuples(st.integers(min_value=0, max_value=511), st.integers(min_value=0, max_value=255)),
                     max_size=4))
def test_mangled_queries_get_a_reply_or_nothing(name: str, qtype: int, client: str, flip: list[tuple[int, int]]) -> None:
    """A real query with bytes overwritten: truncated labels, bad counts, odd types."""
    try:
        wire = bytearray(dns.message.make_query(name, dns.rdatatype.A).to_wire())
    except Exception:  # dnspython refuses some names itself: nothing to send
        return
    wire[-4:-2] = qtype.to_bytes(2, "big")
    for at, value in flip:
        if at < len(wire):
            wire[at] = value
    reply = responder().respond(bytes(wire), client=client)
    if reply.data is not None:
        dns.message.from_wire(reply.data)
