"""Forwarding names that are not the cluster's to upstream resolvers.

Containers get only the managers as nameservers, so the managers must also
resolve the rest of the world for them. The query is passed through as is
(same id, same EDNS options), so the upstream's answer can be relayed back
byte for byte; each upstream is tried in order with a timeout, and the
caller answers SERVFAIL when none replies.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Iterable
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


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, ident: bytes) -> None:
        self.ident = ident
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if data[:2] == self.ident and len(data) >= 12 and data[2] & 0x80 and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class Forwarder:
    """Sends queries to the upstreams in order until one answers."""

    def __init__(self, upstreams: Iterable[Upstream], timeout: float = 2.0) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout

    async def forward(self, query: bytes, *, tcp: bool = False) -> bytes | None:
        """The first upstream answer to ``query``, or None when none answered.

        Over UDP first; when the client asked over TCP and the UDP answer is
        truncated, the same upstream is asked again over TCP.
        """
        for host, port in self.upstreams:
            try:
                answer = await self._udp(query, host, port)
                if tcp and len(answer) > 2 and answer[2] & 0x02:
                    answer = await self._tcp(query, host, port)
                return answer
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("DNS: upstream %s:%s failed: %r", host, port, exc)
        return None

    async def _udp(self, query: bytes, host: str, port: int) -> bytes:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _OneShot(query[:2]), remote_addr=(host, port))
        try:
            transport.sendto(query)
            return await asyncio.wait_for(proto.answer, self.timeout)
        finally:
            transport.close()

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
