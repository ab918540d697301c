"""The DNS server's transport: UDP and TCP listeners on asyncio.

Every manager runs one, on its advertise address, so that a container whose
resolv.conf lists all managers keeps resolving when one of them is lost.
Answers come from the local store replica through ``table_source``; this
module only moves bytes. UDP queries are read and answered synchronously in
the selector's callback (no task, no transport per query: a cluster lookup
is a dict read), several per wake-up; forwarded ones are handed to the
:class:`~pyswarm.dns.forward.Forwarder`, whose callback sends the answer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable

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

ADDRESS_IN_USE = _BIND_HINTS[errno.EADDRINUSE]  # the reason of a DnsBindError for a port in use


class _UdpListener:
    """One UDP socket read straight from the event loop's selector.

    Not an asyncio DatagramProtocol: its transport wakes the loop once per
    datagram (a selector pass and a callback each) and wraps every send,
    which under dnsperf cost more than answering. Here one wake-up drains
    up to :data:`_BATCH` queued datagrams and answers each with a direct
    ``sendto``; a cache hit never leaves this function. A reply that does
    not fit the socket's send buffer is dropped, as the network may drop
    it: the client asks again (a UDP client always must be ready to).
    """

    def __init__(self, server: DnsServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.dropped = 0

    def read(self) -> None:
        sock = self.sock
        respond = self.server.responder.respond
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(_MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # an ICMP error for an earlier reply (client gone): nothing to do
                log.debug("DNS: UDP error: %r", exc)
                continue
            reply = respond(data, client=addr[0])
            if reply.forward:
                self.server._forward_udp(data, addr, self)
            elif reply.data is not None:
                self.send(reply.data, addr)

    def send(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
        except OSError as exc:
            log.debug("DNS: UDP send to %s failed: %r", addr[0], exc)


_BATCH = 64  # datagrams read per wake-up before other callbacks get a turn
_MAX_QUERY = 4096  # a query is a few dozen bytes; EDNS options do not get near this
_RCVBUF = 1 << 20  # asked; the kernel doubles it, within net.core.rmem_max


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
        self.forwarder = Forwarder(ups, timeout=forward_timeout, max_pending=max_forwards)
        self._udp: list[_UdpListener] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()  # TCP connections
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
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                # room for bursts while the manager's other threads hold the
                # CPU: the default (~200 kB, a few hundred queries) overflowed
                # under dnsperf on a busy machine, and a dropped query costs
                # the client a retry seconds later (glibc: 5 s)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                raise _bind_error(address, port, "udp", exc) from exc
            listener = _UdpListener(self, sock)
            loop.add_reader(sock.fileno(), listener.read)
            self._udp.append(listener)
            if port == 0:
                port = int(sock.getsockname()[1])
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
        self.forwarder.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._stopped is not None:
            self._stopped.set()

    async def _close_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._udp:
            loop.remove_reader(listener.sock.fileno())
            listener.sock.close()
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

    def _forward_udp(self, data: bytes, addr: tuple[str | int, ...], listener: _UdpListener) -> None:
        """Hand ``data`` to the forwarder; its answer (or SERVFAIL) goes back
        to ``addr`` from the callback. No task: a forward is a dict entry and
        a timer until the upstream answers. Over ``max_forwards`` in flight
        the query is dropped, so the client retries another manager."""
        def done(answer: bytes | None, _upstream: int) -> None:
            out = answer if answer is not None else servfail(data)
            if out is not None and self._serving:
                listener.send(out, addr)

        self.forwarder.submit(data, done)

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
