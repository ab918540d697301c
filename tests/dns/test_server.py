"""The DNS server on real sockets: dnspython queries over UDP and TCP to a
server on 127.0.0.1 and a free port."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest
from dns_helpers import ServerThread, ips, running
from factories import make_service

from pyswarm.dns import DnsBindError, DnsServer, TableCache
from pyswarm.models import Cluster

Start = Callable[..., ServerThread]
WEB_IPS = ["10.240.1.2", "10.240.2.2", "10.240.3.2"]
TIMEOUT = 5.0


@pytest.fixture
def cache(cluster: Cluster) -> TableCache:
    web = make_service("web", stack="demo")
    big = make_service("big", stack="demo")
    cache = TableCache()
    cache.update(cluster, [web, big], running(web, *WEB_IPS) + running(big, *ips(60, "10.241.0.")))
    return cache


def query(name: str, rdtype: str = "A", **kw: object) -> dns.message.QueryMessage:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


def addresses(msg: dns.message.Message) -> list[str]:
    return [rd.address for rrset in msg.answer for rd in rrset]


def udp(st: ServerThread, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(query(name, rdtype), "127.0.0.1", port=st.port, timeout=TIMEOUT)


def test_rotation_is_visible_across_consecutive_udp_queries(cache: TableCache, dns_server: Start) -> None:
    st = dns_server(cache)
    answers = [addresses(udp(st, "web.demo.pyswarm")) for _ in range(4)]
    assert [a[0] for a in answers] == WEB_IPS + WEB_IPS[:1]
    assert all(sorted(a) == WEB_IPS for a in answers)


def test_tcp_answers_several_queries_on_one_connection(cache: TableCache, dns_server: Start) -> None:
    st = dns_server(cache)
    with socket.create_connection(("127.0.0.1", st.port), timeout=TIMEOUT) as sock:
        firsts = []
        for _ in range(3):
            msg = dns.query.tcp(query("tasks.web.demo"), "127.0.0.1", port=st.port, sock=sock, timeout=TIMEOUT)
            firsts.append(addresses(msg)[0])
    assert firsts == WEB_IPS


def test_unknown_names_are_nxdomain_and_foreign_names_refused(cache: TableCache, dns_server: Start) -> None:
    st = dns_server(cache)
    assert udp(st, "nope.demo.pyswarm").rcode() == dns.rcode.NXDOMAIN
    assert udp(st, "example.com").rcode() == dns.rcode.REFUSED
    assert udp(st, "web.demo.pyswarm", "AAAA").rcode() == dns.rcode.NOERROR


def test_a_large_answer_sets_tc_over_udp_and_comes_whole_over_tcp(cache: TableCache, dns_server: Start) -> None:
    st = dns_server(cache)
    truncated = udp(st, "big.demo.pyswarm")
    assert truncated.flags & dns.flags.TC

    msg, used_tcp = dns.query.udp_with_fallback(query("big.demo.pyswarm"), "127.0.0.1", port=st.port,
                                                timeout=TIMEOUT)
    assert used_tcp
    assert len(set(addresses(msg))) == 60

    resolver = dns.resolver.Resolver(configure=False)  # what a program's stub resolver does
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = st.port
    resolver.use_edns(-1)  # no EDNS: plain 512-byte UDP, so it must fall back to TCP
    answer = resolver.resolve("big.demo.pyswarm", "A", lifetime=TIMEOUT)
    assert len({rd.address for rd in answer}) == 60


def test_concurrent_queries_are_all_answered_and_rotation_stays_fair(cache: TableCache,
                                                                      dns_server: Start) -> None:
    st = dns_server(cache)
    per_worker, workers = 30, 20

    def work(i: int) -> list[str]:
        firsts = []
        for _ in range(per_worker):
            if i % 4 == 0:
                msg = dns.query.tcp(query("web.demo.pyswarm"), "127.0.0.1", port=st.port, timeout=TIMEOUT)
            else:
                msg = udp(st, "web.demo.pyswarm")
            assert sorted(addresses(msg)) == WEB_IPS
            firsts.append(addresses(msg)[0])
        return firsts

    with ThreadPoolExecutor(workers) as pool:
        firsts = [ip for chunk in pool.map(work, range(workers)) for ip in chunk]
    # one counter per name: 600 answers start at each address exactly 200 times
    assert Counter(firsts) == {ip: per_worker * workers // 3 for ip in WEB_IPS}


def test_malformed_packets_do_not_stop_the_server(cache: TableCache, dns_server: Start) -> None:
    st = dns_server(cache)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        for junk in (b"", b"\x00", b"\xff" * 7, b"\x00\x01" + b"\xff" * 40, bytes(range(256)) * 4):
            sock.sendto(junk, ("127.0.0.1", st.port))
        sock.sendto(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fbroken", ("127.0.0.1", st.port))
        # the junk before produced either nothing or FORMERRs; read until ours
        while True:
            data, _ = sock.recvfrom(4096)
            if data[:2] == b"\xab\xcd":
                break
        assert dns.message.from_wire(data).rcode() == dns.rcode.FORMERR

    with socket.create_connection(("127.0.0.1", st.port), timeout=TIMEOUT) as conn:
        conn.sendall(struct.pack("!H", 5) + b"\x00\x07\xff\xff\xff")  # runt: dropped, connection kept
        garbage = b"\x00\x09\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f"
        conn.sendall(struct.pack("!H", len(garbage)) + garbage)
        (size,) = struct.unpack("!H", _recv_exactly(conn, 2))
        assert dns.message.from_wire(_recv_exactly(conn, size)).rcode() == dns.rcode.FORMERR
    with socket.create_connection(("127.0.0.1", st.port), timeout=TIMEOUT) as conn:
        conn.sendall(b"\x00")  # half a length prefix, then gone

    assert sorted(addresses(udp(st, "web.demo.pyswarm"))) == WEB_IPS
    msg = dns.query.tcp(query("web.demo.pyswarm"), "127.0.0.1", port=st.port, timeout=TIMEOUT)
    assert sorted(addresses(msg)) == WEB_IPS


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def test_idle_tcp_connections_are_closed(cache: TableCache, dns_server: Start) -> None:
    st = dns_server(cache, tcp_idle_timeout=0.2)
    with socket.create_connection(("127.0.0.1", st.port), timeout=TIMEOUT) as conn:
        assert conn.recv(1) == b""  # blocks until the server hangs up (or the timeout fails us)


def test_a_table_update_shows_in_the_next_answer(cluster: Cluster, cache: TableCache, dns_server: Start) -> None:
    st = dns_server(cache)
    assert sorted(addresses(udp(st, "web.demo"))) == WEB_IPS
    web = make_service("web", stack="demo")
    cache.update(cluster, [web], running(web, "10.240.9.9"))
    assert addresses(udp(st, "web.demo")) == ["10.240.9.9"]
    assert udp(st, "big.demo").rcode() == dns.rcode.NXDOMAIN


def test_outside_names_are_forwarded_to_an_upstream(cluster: Cluster, cache: TableCache,
                                                     dns_server: Start) -> None:
    other = make_service("api", stack="shop")
    upstream_cache = TableCache()
    upstream_cache.update(Cluster(id="other", zone="elsewhere"), [other], running(other, "192.0.2.7"))
    upstream = dns_server(upstream_cache)
    front = dns_server(cache, upstreams=[f"127.0.0.1:{upstream.port}"])

    msg = udp(front, "api.shop.elsewhere")
    assert addresses(msg) == ["192.0.2.7"]
    assert udp(front, "nope.elsewhere").rcode() == dns.rcode.NXDOMAIN  # the upstream's verdict, relayed
    msg = dns.query.tcp(query("api.shop.elsewhere"), "127.0.0.1", port=front.port, timeout=TIMEOUT)
    assert addresses(msg) == ["192.0.2.7"]
    assert sorted(addresses(udp(front, "web.demo"))) == WEB_IPS  # ours still answered locally


def test_a_silent_upstream_gives_servfail(cache: TableCache, dns_server: Start) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        port = black_hole.getsockname()[1]
        st = dns_server(cache, upstreams=[f"127.0.0.1:{port}"], forward_timeout=0.2)
        assert udp(st, "example.com").rcode() == dns.rcode.SERVFAIL


def test_concurrent_forwards_each_get_their_own_answer_and_id(cluster: Cluster, cache: TableCache,
                                                              dns_server: Start) -> None:
    """Forwards share one upstream socket: 200 queries in flight at once,
    each with its client's id, must each come back with that id and the
    answer to its own question."""
    other = make_service("api", stack="shop")
    names = [f"n{i}.shop.elsewhere" for i in range(200)]
    upstream_cache = TableCache()
    upstream_cache.update(Cluster(id="other", zone="elsewhere"), [other], running(other, "192.0.2.7"))
    upstream = dns_server(upstream_cache)
    front = dns_server(cache, upstreams=[f"127.0.0.1:{upstream.port}"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        sent = {}
        for i, name in enumerate(names + ["api.shop.elsewhere"]):
            q = query(name)
            q.id = 1000 + i
            sent[q.id] = name
            client.sendto(q.to_wire(), ("127.0.0.1", front.port))
        seen = {}
        while len(seen) < len(sent):
            msg = dns.message.from_wire(client.recv(4096))
            seen[msg.id] = msg
    assert {i: str(m.question[0].name).rstrip(".") for i, m in seen.items()} == sent
    assert all(m.rcode() == dns.rcode.NXDOMAIN for i, m in seen.items() if sent[i] != "api.shop.elsewhere")
    assert addresses(seen[1000 + len(names)]) == ["192.0.2.7"]
    assert front.server.forwarder.in_flight == 0


def test_a_silent_first_upstream_fails_over_to_the_next(cluster: Cluster, cache: TableCache,
                                                        dns_server: Start) -> None:
    other = make_service("api", stack="shop")
    upstream_cache = TableCache()
    upstream_cache.update(Cluster(id="other", zone="elsewhere"), [other], running(other, "192.0.2.7"))
    upstream = dns_server(upstream_cache)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        silent = black_hole.getsockname()[1]
        front = dns_server(cache, upstreams=[f"127.0.0.1:{silent}", f"127.0.0.1:{upstream.port}"],
                           forward_timeout=0.2)
        assert addresses(udp(front, "api.shop.elsewhere")) == ["192.0.2.7"]


def test_an_answer_to_another_question_is_not_relayed(cache: TableCache, dns_server: Start) -> None:
    """An upstream (or a spoofer) that answers the right id with another
    question is ignored: the client gets SERVFAIL after the timeout, not a
    wrong address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as liar:
        liar.bind(("127.0.0.1", 0))
        liar.settimeout(TIMEOUT)
        st = dns_server(cache, upstreams=[f"127.0.0.1:{liar.getsockname()[1]}"], forward_timeout=0.5)
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(udp, st, "example.com")
            data, peer = liar.recvfrom(4096)
            wrong = dns.message.make_response(dns.message.from_wire(data))
            wrong.question = [dns.message.make_query("evil.example", "A").question[0]]
            liar.sendto(wrong.to_wire(), peer)
            assert asked.result(TIMEOUT).rcode() == dns.rcode.SERVFAIL


def test_bind_errors_name_the_address_and_port(cache: TableCache, dns_server: Start) -> None:
    st = dns_server(cache)

    async def start(addresses: list[str], port: int) -> None:
        server = DnsServer(cache, addresses, port)
        try:
            await server.start()
        finally:
            await server.stop()

    with pytest.raises(DnsBindError) as in_use:
        asyncio.run(start(["127.0.0.1"], st.port))
    assert f"127.0.0.1:{st.port}/udp" in str(in_use.value)
    assert "already in use" in str(in_use.value)

    with pytest.raises(DnsBindError) as not_local:
        asyncio.run(start(["192.0.2.1"], 0))  # TEST-NET-1: never a local address
    assert "192.0.2.1:0" in str(not_local.value)
    assert "not one of this host's addresses" in str(not_local.value)


def test_stop_frees_the_port_and_closes_open_connections(cache: TableCache) -> None:
    st = ServerThread(cache)
    port = st.port
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        dns.query.tcp(query("web.demo"), "127.0.0.1", port=port, sock=conn, timeout=TIMEOUT)
        st.close()
        assert conn.recv(1) == b""  # the server hung up on its open connection

    async def rebind() -> int:
        server = DnsServer(cache, ["127.0.0.1"], port)
        await server.start()  # the very same port, both protocols
        await server.stop()
        return int(server.port)

    assert asyncio.run(rebind()) == port


def test_run_serves_until_stop(cache: TableCache) -> None:
    async def main() -> list[str]:
        server = DnsServer(cache, ["127.0.0.1"], 0)
        runner = asyncio.create_task(server.run())
        while not server.serving:  # wait for the bind, not for a fixed time
            await asyncio.sleep(0)
        port = server.port
        loop = asyncio.get_running_loop()
        msg = await loop.run_in_executor(None, lambda: dns.query.udp(query("web.demo"), "127.0.0.1",
                                                                    port=port, timeout=TIMEOUT))
        assert not runner.done()
        await server.stop()
        await asyncio.wait_for(runner, TIMEOUT)
        return sorted(addresses(msg))

    assert asyncio.run(main()) == WEB_IPS
