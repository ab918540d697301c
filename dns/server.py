"""The DNS server's transport: UDP and TCP listeners on asyncio.

Every manager runs one, on its advertise address, so that a container whose
resolv.conf lists all managers keeps resolving when one of them is lost.
Answers come from the local store replica through ``table_source``; this
module only moves bytes. Local answers are computed synchronously inside
the datagram callback (no task per query: a cluster lookup is a dict read
and a pack), and only forwarded queries, which wait on the network, get a
task of their own.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from typing import cast

from .answer import DnsSettings, Responder, servfail
from .errors import DnsBindError
from .forward import Forwarder, Upstream, parse_upstream
from .records import NameTable

log = logging.getLogger(__name__)

_BIND_HINTS = {
    errno.EADDRINUSE: "the port is already in use (another DNS server such as systemd-resolved or dnsmasq?)",
    errno.EADDRNOTAVAIL: "the address is not one of this host's addresses",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
}


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's datagram transport does not subclass
        # DatagramTransport on every Python version, hence a cast, not a check
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.server.responder.respond(data, client=str(addr[0]))
        if reply.forward:
            self.server._spawn_forward(data, addr, self)
        elif reply.data is not None and self.transport is not None:
            self.transport.sendto(reply.data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do
        log.debug("DNS: UDP error: %r", exc)


class DnsServer:
    """Answers DNS over UDP and TCP on ``addresses`` × ``port``.

    ``table_source`` is called once per query and must be cheap (a
    :class:`~pyswarm.dns.cache.TableCache` is). ``port=0`` picks one free
    port shared by every address and both protocols (for tests); read it
    back from :attr:`port` after :meth:`start`.
    """

    def __init__(
        self,
        table_source: Callable[[], NameTable],
        addresses: list[str],
        port: int = 53,
        *,
        upstreams: Iterable[str | Upstream] = (),
        ttl: int = 2,
        negative_ttl: int = 2,
        tcp_idle_timeout: float = 10.0,
        max_tcp_connections: int = 256,
        max_forwards: int = 1024,
        forward_timeout: float = 2.0,
    ) -> None:
        if not addresses:
            raise ValueError("DnsServer needs at least one address to listen on")
        ups = [parse_upstream(u) if isinstance(u, str) else u for u in upstreams]
        self.addresses = list(addresses)
        self.port = port
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self.max_forwards = max_forwards
        self.responder = Responder(table_source, DnsSettings(ttl=ttl, negative_ttl=negative_ttl,
                                                             forwarding=bool(ups)))
        self.forwarder = Forwarder(ups, timeout=forward_timeout)
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()  # forwards and TCP connections
        self._connections = 0
        self._stopped: asyncio.Event | None = None
        self._serving = False

    # -- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        """Bind every socket, or none: on any bind error, close what was
        opened and raise :class:`DnsBindError` naming the address and port."""
        self._stopped = asyncio.Event()
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._bind_all(self.port)
                self._serving = True
                return
            except DnsBindError as exc:
                await self._close_sockets()
                if self.port != 0 or exc.reason != _BIND_HINTS[errno.EADDRINUSE] or attempt == attempts - 1:
                    raise

    async def _bind_all(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        for address in self.addresses:
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(address, port),
                    family=socket.AF_INET6 if ":" in address else socket.AF_INET)
            except OSError as exc:
                raise _bind_error(address, port, "udp", exc) from exc
            self._udp.append(transport)
            if port == 0:
                port = int(transport.get_extra_info("sockname")[1])
            try:
                server = await asyncio.start_server(self._serve_tcp, address, port, reuse_address=True)
            except OSError as exc:
                raise _bind_error(address, port, "tcp", exc) from exc
            self._tcp.append(server)
        self.port = port
        log.info("DNS: listening on %s port %d (udp, tcp)", ", ".join(self.addresses), port)

    async def run(self) -> None:
        """Start (unless started) and serve until :meth:`stop` is called."""
        if not self._serving:
            await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self) -> None:
        """Close every socket and connection and cancel forwards in flight."""
        self._serving = False
        await self._close_sockets()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._stopped is not None:
            self._stopped.set()

    async def _close_sockets(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for server in self._tcp:
            await server.wait_closed()
        self._udp.clear()
        self._tcp.clear()

    @property
    def serving(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._serving

    # -- forwarding -----------------------------------------------------

    def _spawn_forward(self, data: bytes, addr: tuple[str | int, ...], proto: _UdpProtocol) -> None:
        if len(self._tasks) >= self.max_forwards:
            return  # overloaded: dropping lets the client retry another manager
        task = asyncio.get_running_loop().create_task(self._forward_udp(data, addr, proto))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_udp(self, data: bytes, addr: tuple[str | int, ...], proto: _UdpProtocol) -> None:
        answer = await self.forwarder.forward(data) or servfail(data)
        if answer is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.sendto(answer, addr)

    # -- TCP ------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection: length-prefixed queries, answered in order,
        until the client closes, sends garbage, or stays idle too long."""
        task = asyncio.current_task()
        if self._connections >= self.max_tcp_connections or task is None:
            writer.close()
            return
        self._connections += 1
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else None
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                (size,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(size), self.tcp_idle_timeout)
                reply = self.responder.respond(data, tcp=True, client=client)
                out = reply.data
                if reply.forward:
                    out = await self.forwarder.forward(data, tcp=True) or servfail(data)
                if out is None:
                    continue
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): close below, and let the handler end quietly
        except Exception:
            log.exception("DNS: error on a TCP connection")
        finally:
            self._connections -= 1
            self._tasks.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, asyncio.CancelledError):
                pass


def _bind_error(address: str, port: int, proto: str, exc: OSError) -> DnsBindError:
    reason = _BIND_HINTS.get(exc.errno or 0) or (exc.strerror or str(exc))
    return DnsBindError(address, port, proto, reason)
