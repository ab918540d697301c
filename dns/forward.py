"""Forwarding names that are not the cluster's to upstream resolvers.

Containers get only the managers as nameservers, so the managers must also
resolve the rest of the world for them. The query is passed through as is
(same id, same EDNS options), so the upstream's answer can be relayed back
byte for byte (but for the id: each query in flight gets its own id on the
upstream socket); each upstream is tried in order with a timeout, and the
caller answers SERVFAIL when none replies.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import DnsConfigError

log = logging.getLogger(__name__)

Upstream = tuple[str, int]


def parse_upstream(text: str) -> Upstream:
    """``"1.2.3.4"``, ``"1.2.3.4:5353"``, ``"::1"`` or ``"[::1]:5353"`` → (ip, port)."""
    raw = text.strip()
    host, port = raw, 53
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise DnsConfigError(f"bad upstream resolver {text!r}: expected [IPv6]:PORT")
        if rest:
            port = _port(text, rest[1:])
    elif raw.count(":") == 1:
        host, _, p = raw.partition(":")
        port = _port(text, p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise DnsConfigError(f"bad upstream resolver {text!r}: {host!r} is not an IP address") from None
    return host, port


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise DnsConfigError(f"bad upstream resolver {text!r}: port must be 1-65535")
    return int(value)


def upstreams_from_resolv_conf(path: str | Path = "/etc/resolv.conf", exclude: Iterable[str] = ()) -> list[Upstream]:
    """The host's nameservers, minus ``exclude`` (our own addresses: forwarding
    to ourselves would loop). A missing file gives an empty list."""
    skip = set(exclude)
    out: list[Upstream] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] not in skip:
            try:
                out.append(parse_upstream(parts[1].split("%")[0]))
            except DnsConfigError:
                continue
    return out


def _question_end(packet: bytes) -> int:
    """Offset just past the first question (name, type, class), or -1.

    Used to check that an upstream's answer is for the question we sent, not
    only for an id we chose: a spoofed or stale answer must match both.
    """
    at = 12
    while at < len(packet):
        size = packet[at]
        if size == 0:
            end = at + 5
            return end if end <= len(packet) else -1
        if size & 0xC0:
            return -1  # a compressed question: not from a sane query
        at += size + 1
    return -1


class _Pending:
    """One forwarded query waiting for an upstream."""

    __slots__ = ("query", "question", "done", "upstream", "timer")

    def __init__(self, query: bytes, question: bytes, done: Callable[[bytes | None, int], None]) -> None:
        self.query = query
        self.question = question
        self.done = done
        self.upstream = -1
        self.timer: asyncio.TimerHandle | None = None


class Forwarder:
    """Sends queries to the upstreams in order until one answers.

    One long-lived, connected UDP socket per upstream, opened on first use:
    a forwarded query costs one ``sendto`` and one ``recv``, not a socket, a
    task and an event-loop registration each (that was a third of the
    server's time under dnsperf with 10% forwarded names). Each query in
    flight gets its own random id on the upstream socket; the answer is
    matched on that id *and* its question (a stray or spoofed datagram that
    only guesses the id is ignored; the socket being connected already
    drops datagrams from other addresses), then given back the client's id.
    A timeout moves the query to the next upstream; after the last, the
    caller gets None and answers SERVFAIL. An upstream whose port refuses
    (ICMP) fails over its queries at once.
    """

    def __init__(self, upstreams: Iterable[Upstream], timeout: float = 2.0, max_pending: int = 4096) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self.max_pending = max_pending
        self._socks: dict[int, socket.socket] = {}
        self._pending: dict[int, dict[int, _Pending]] = {}  # upstream index -> id -> query
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_flight(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def submit(self, query: bytes, done: Callable[[bytes | None, int], None]) -> bool:
        """Forward ``query``; ``done(answer or None, upstream index)`` is
        called from the event loop exactly once. False (and no call) when
        the query cannot be forwarded: no upstream, too many in flight, or
        too short to be a query."""
        if not self.upstreams or len(query) < 12 or self.in_flight >= self.max_pending:
            return False
        end = _question_end(query)
        question = query[12:end].lower() if end > 0 else b""
        self._loop = asyncio.get_running_loop()
        self._send(_Pending(query, question, done), 0)
        return True

    async def forward(self, query: bytes, *, tcp: bool = False) -> bytes | None:
        """The first upstream answer to ``query``, or None when none answered.

        Over UDP first; when the client asked over TCP and the UDP answer is
        truncated, the same upstream is asked again over TCP.
        """
        loop = asyncio.get_running_loop()
        got: asyncio.Future[tuple[bytes | None, int]] = loop.create_future()

        def done(answer: bytes | None, upstream: int) -> None:
            if not got.done():
                got.set_result((answer, upstream))

        if not self.submit(query, done):
            return None
        answer, index = await got
        if answer is not None and tcp and answer[2] & 0x02:
            host, port = self.upstreams[index]
            try:
                return await self._tcp(query, host, port)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("DNS: upstream %s:%s failed over TCP: %r", host, port, exc)
        return answer

    def close(self) -> None:
        """Close the sockets; queries in flight get None."""
        pending = [p for by_id in self._pending.values() for p in by_id.values()]
        self._pending.clear()
        for index, sock in self._socks.items():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
        for p in pending:
            if p.timer is not None:
                p.timer.cancel()
            p.done(None, p.upstream)

    # -- internals -------------------------------------------------------

    def _sock(self, index: int) -> socket.socket:
        sock = self._socks.get(index)
        if sock is None:
            host, port = self.upstreams[index]
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # answers arrive in bursts too
            sock.connect((host, port))
            assert self._loop is not None
            self._loop.add_reader(sock.fileno(), self._read, index, sock)
            self._socks[index] = sock
            self._pending[index] = {}
        return sock

    def _send(self, p: _Pending, index: int) -> None:
        """Send ``p`` to upstream ``index`` or, past the last, give up."""
        while index < len(self.upstreams):
            try:
                sock = self._sock(index)
                waiting = self._pending[index]
                ident = secrets.randbits(16)
                while ident in waiting:
                    ident = secrets.randbits(16)
                sock.send(struct.pack("!H", ident) + p.query[2:])
            except OSError as exc:
                log.debug("DNS: upstream %s:%s failed: %r", *self.upstreams[index], exc)
                index += 1
                continue
            p.upstream = index
            waiting[ident] = p
            assert self._loop is not None
            p.timer = self._loop.call_later(self.timeout, self._expire, index, ident)
            return
        p.done(None, p.upstream)

    def _expire(self, index: int, ident: int) -> None:
        p = self._pending.get(index, {}).pop(ident, None)
        if p is not None:
            log.debug("DNS: upstream %s:%s did not answer in %.1fs", *self.upstreams[index], self.timeout)
            self._send(p, index + 1)

    def _read(self, index: int, sock: socket.socket) -> None:
        waiting = self._pending.get(index)
        for _ in range(64):  # drain what is there, but let the loop breathe
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP port unreachable and the like: this upstream is not
                # answering, so everything sent to it moves on now
                log.debug("DNS: upstream %s:%s failed: %r", *self.upstreams[index], exc)
                if waiting:
                    stuck = list(waiting.values())
                    waiting.clear()
                    for lost in stuck:
                        if lost.timer is not None:
                            lost.timer.cancel()
                        self._send(lost, index + 1)
                return
            if waiting is None or len(data) < 12 or not data[2] & 0x80:
                continue
            (ident,) = struct.unpack_from("!H", data)
            p = waiting.get(ident)
            if p is None:
                continue
            end = _question_end(data)
            if p.question and (end < 0 or data[12:end].lower() != p.question):
                continue  # the right id for the wrong question: not our answer
            del waiting[ident]
            if p.timer is not None:
                p.timer.cancel()
            p.done(p.query[:2] + data[2:], index)

    async def _tcp(self, query: bytes, host: str, port: int) -> bytes:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.timeout))
            return await asyncio.wait_for(reader.readexactly(size), self.timeout)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
