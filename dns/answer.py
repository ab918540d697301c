"""From one query's bytes to the reply's bytes, with no sockets involved.

The transport (``server.py``) hands every datagram or TCP frame to
:meth:`Responder.respond` and sends back what it returns. Keeping the DNS
logic here, free of I/O, lets the tests check every decision (rotation,
NODATA, NXDOMAIN with SOA, REFUSED, truncation, FORMERR) on bytes alone, and
keeps one code path for UDP and TCP: they differ only in the size limit.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnslib import CLASS, PTR, QTYPE, RCODE, RR, SOA, SRV, A, AAAA, DNSError, DNSHeader, DNSLabel, DNSRecord, EDNS0

from .records import Classification, Kind, NameTable, Rotator

log = logging.getLogger(__name__)

UDP_MIN = 512  # RFC 1035: what a client without EDNS accepts over UDP
TCP_MAX = 65535  # the 2-byte length prefix
OPT = 41
BADVERS = 16
CACHE_MAX = 4096  # distinct queries remembered between table changes
CACHE_BYTES_MAX = 8 << 20  # and the bytes of their replies: a 60-replica TCP answer is ~1 kB an offset


@dataclass(frozen=True)
class DnsSettings:
    """How the server answers; the defaults are what a cluster wants.

    ``ttl`` is short (2 s) because replicas come and go and a client that
    caches an address longer keeps calling a task that is gone. The negative
    TTL is as short, so a name queried just before its service is deployed
    resolves moments later. ``edns_udp_size`` is what we advertise; 1232 is
    the DNS flag day 2020 figure that avoids IP fragmentation.
    """

    ttl: int = 2
    negative_ttl: int = 2
    edns_udp_size: int = 1232
    forwarding: bool = False  # set when upstream resolvers are configured


@dataclass(frozen=True)
class Reply:
    """What to do with one query: send ``data``, forward it, or drop it."""

    data: bytes | None
    forward: bool = False


DROP = Reply(None)
FORWARD = Reply(None, forward=True)
_FORWARDED: tuple[str, list[bytes | None]] = ("", [])  # reply-cache marker: "forward this query"


def _header_only(data: bytes, rcode: int) -> bytes | None:
    """A bare reply (no sections) to a packet we could not parse.

    Built by hand from the first 12 bytes, since dnslib could not parse the
    rest. Responses (QR set) are dropped, never answered: answering them
    would let two servers bounce a packet between each other forever.
    """
    if len(data) < 12:
        return None
    ident, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:
        return None
    opcode_rd = flags & 0x7900  # opcode and RD copied from the query
    return struct.pack("!HHHHHH", ident, 0x8000 | opcode_rd | rcode, 0, 0, 0, 0)


def formerr(data: bytes) -> bytes | None:
    return _header_only(data, int(RCODE.FORMERR))


def servfail(data: bytes) -> bytes | None:
    """SERVFAIL for ``data``, echoing its question when it parses (for forwarding failures)."""
    try:
        query = DNSRecord.parse(data)
    except Exception:
        return _header_only(data, int(RCODE.SERVFAIL))
    reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, rd=query.header.rd, ra=1, rcode=int(RCODE.SERVFAIL)),
                      questions=list(query.questions))
    return bytes(reply.pack())


class Responder:
    """Answers queries from the table that ``table_source`` returns.

    Holds the only state on the query path: the per-name rotation counters.
    Not thread-safe; the server calls it from its event loop only.
    """

    def __init__(self, table_source: Callable[[], NameTable], settings: DnsSettings | None = None) -> None:
        self.table_source = table_source
        self.settings = settings or DnsSettings()
        self.rotator = Rotator()
        # packed replies without their 2-byte id, keyed by the query without
        # its id: the rotation key and one slot per rotation offset
        self._cache: dict[tuple[frozenset[str] | None, bytes, bool], tuple[str, list[bytes | None]]] = {}
        self._cache_table: NameTable | None = None
        self._cache_bytes = 0

    def respond(self, data: bytes, *, tcp: bool = False, client: str | None = None) -> Reply:
        """The reply to one query packet from ``client`` (its address: a
        task's container gets its networks' view); never raises."""
        try:
            return self._respond(data, tcp, client)
        except Exception:
            log.exception("DNS: internal error answering a query")
            try:
                return Reply(servfail(data))
            except Exception:
                return DROP

    def _respond(self, data: bytes, tcp: bool, client: str | None = None) -> Reply:
        """Answer from the reply cache when this exact query was seen since
        the table last changed; otherwise build the reply with dnslib.

        dnslib costs some 200 µs a query; the cache makes a repeated query a
        few dict reads. A reply depends only on the query's bytes (less its
        id), the transport, the client's view, the table and the rotation
        offset, so those are the key; the cache is emptied whenever the
        table changes.
        """
        if len(data) < 12:
            return DROP
        base = self.table_source()
        if base is not self._cache_table:
            self._clear_cache()
            self._cache_table = base
            self.rotator.prune(base)
        table = base.for_client(client)
        key = (table.view_key, data[2:], tcp)
        hit = self._cache.get(key)
        offset: int | None = None
        if hit is _FORWARDED:
            if table.may_forward(client):
                return FORWARD
            hit = None  # a client that may not have it forwarded: REFUSED, built below
        if hit is not None:
            name, variants = hit
            offset = self.rotator.next_offset(name, len(variants)) if len(variants) > 1 else 0
            body = variants[offset]
            if body is not None:
                return Reply(data[:2] + body)
        reply, rotation = self._build(data, tcp, table, offset, client)
        if reply.forward and len(self._cache) < CACHE_MAX:
            # the decision to forward depends on the same key: skip the parse next time
            self._cache[key] = _FORWARDED
        elif rotation is not None and reply.data is not None:
            name, count, at = rotation
            if len(self._cache) >= CACHE_MAX or self._cache_bytes >= CACHE_BYTES_MAX:
                self._clear_cache()  # crude, but bounded; refills at the query rate
            slots = self._cache.setdefault(key, (name, [None] * count))[1]
            if len(slots) == count:
                slots[at] = reply.data[2:]
                self._cache_bytes += len(reply.data)
        return reply

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0

    def _build(self, data: bytes, tcp: bool, table: NameTable, offset: int | None,
               client: str | None = None) -> tuple[Reply, tuple[str, int, int] | None]:
        """The reply built with dnslib, and how to cache it: (rotation key,
        number of offsets, this reply's offset), or None if not cacheable."""
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, UnicodeError, struct.error):
            return Reply(formerr(data)), None
        header = query.header
        if header.qr:
            return DROP, None
        if header.opcode != 0:
            return Reply(_header_only(data, int(RCODE.NOTIMP))), None
        if len(query.questions) != 1:
            return Reply(formerr(data)), None
        opts = [rr for rr in query.ar if rr.rtype == OPT]
        if len(opts) > 1:
            return Reply(formerr(data)), None
        opt = opts[0] if opts else None
        limit = TCP_MAX if tcp else (max(UDP_MIN, int(opt.rclass)) if opt is not None else UDP_MIN)
        question = query.q
        qname = str(question.qname)
        fixed = (qname, 1, 0)  # a reply that does not rotate

        reply = DNSRecord(DNSHeader(id=header.id, qr=1, aa=1, rd=header.rd, ra=int(self.settings.forwarding)),
                          q=question)
        if opt is not None:
            version = (int(opt.ttl) >> 16) & 0xFF
            if version != 0:
                # BADVERS: extended rcode 16 = 1 in the OPT's high bits, 0 in the header
                reply.header.aa = 0
                reply.add_ar(EDNS0(udp_len=self.settings.edns_udp_size, ext_rcode=BADVERS >> 4))
                return Reply(bytes(reply.pack())), fixed
            reply.add_ar(EDNS0(udp_len=self.settings.edns_udp_size))

        if question.qclass not in (CLASS.IN, 255):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return Reply(bytes(reply.pack())), fixed

        found = table.classify(qname)
        if found.kind is Kind.OUTSIDE:
            if self.settings.forwarding and table.may_forward(client):
                return FORWARD, None
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            # not cached when forwarding: the same query from a node is forwarded
            return Reply(bytes(reply.pack())), None if self.settings.forwarding else fixed

        rotation = self._fill(reply, question.qname, int(question.qtype), found, table, offset)
        return Reply(self._pack(reply, limit)), rotation

    def _fill(self, reply: DNSRecord, qname: Any, qtype: int, found: Classification, table: NameTable,
              offset: int | None) -> tuple[str, int, int]:
        """Add the answer (or the negative answer's SOA) to ``reply``; return
        its rotation (key, number of offsets, offset used)."""
        ttl = self.settings.ttl
        name = str(qname)
        rotation = (name, 1, 0)
        if found.kind is Kind.ADDRESSES and found.entry is not None and qtype == int(QTYPE.SRV) \
                and found.entry.srv:
            for port, target in found.entry.srv:
                reply.add_answer(RR(qname, QTYPE.SRV, ttl=ttl, rdata=SRV(0, 10, port, target)))
                for ip in found.entry.extra:
                    reply.add_ar(RR(target, QTYPE.A, ttl=ttl, rdata=A(ip)))
        elif found.kind is Kind.ADDRESSES and found.entry is not None and qtype == int(QTYPE.PTR) \
                and found.entry.ptr:
            for target in found.entry.ptr:
                reply.add_answer(RR(qname, QTYPE.PTR, ttl=ttl, rdata=PTR(target)))
        elif found.kind is Kind.ADDRESSES and found.entry is not None:
            want = {int(QTYPE.A): 4, int(QTYPE.AAAA): 6, int(QTYPE.ANY): 4}.get(qtype)
            if want is not None:
                ips = found.entry.v4 if want == 4 else found.entry.v6
                if ips:
                    at = self.rotator.next_offset(name, len(ips)) if offset is None else offset
                    rtype = QTYPE.A if want == 4 else QTYPE.AAAA
                    for ip in ips[at:] + ips[:at]:
                        rdata = A(ip) if want == 4 else AAAA(ip)
                        reply.add_answer(RR(qname, rtype, ttl=ttl, rdata=rdata))
                    rotation = (name, len(ips), at)
        elif found.kind is Kind.EMPTY and qtype in (int(QTYPE.SOA), int(QTYPE.ANY)) \
                and DNSLabel(qname) == DNSLabel(table.zone):
            reply.add_answer(self._soa(table, table.zone))
        elif found.kind is Kind.NXDOMAIN:
            reply.header.rcode = RCODE.NXDOMAIN
        if not reply.rr:
            # NODATA or NXDOMAIN: the SOA tells caches how long to remember it
            reply.add_auth(self._soa(table, found.authority or table.zone))
        return rotation

    def _soa(self, table: NameTable, owner: str) -> RR:
        zone = table.zone
        neg = self.settings.negative_ttl
        times = (table.serial, 60, 10, 600, neg)
        return RR(owner + ".", QTYPE.SOA, ttl=neg, rdata=SOA(f"ns.{zone}.", f"hostmaster.{zone}.", times))

    @staticmethod
    def _pack(reply: DNSRecord, limit: int) -> bytes:
        """Pack ``reply`` within ``limit`` bytes, truncating if it must.

        A truncated reply keeps as many whole answers as fit and sets TC:
        resolvers that retry over TCP (glibc, dnspython, dig) get the whole
        set there, and those that do not (older musl) still get addresses.
        """
        packed = bytes(reply.pack())
        if len(packed) <= limit:
            return packed
        extra = [rr for rr in reply.ar if rr.rtype != OPT]
        if extra:
            # additional data (an SRV target's addresses) goes first, without
            # TC: the client can still ask for the target's addresses itself
            reply.ar = [rr for rr in reply.ar if rr.rtype == OPT]
            packed = bytes(reply.pack())
            if len(packed) <= limit:
                return packed
        answers = list(reply.rr)
        reply.auth = []
        reply.header.tc = 1
        lo, hi = 0, len(answers)  # invariant: lo answers fit
        best = b""
        while lo <= hi:
            mid = (lo + hi) // 2
            reply.rr = answers[:mid]
            attempt = bytes(reply.pack())
            if len(attempt) <= limit:
                best, lo = attempt, mid + 1
            else:
                hi = mid - 1
        if not best:
            reply.rr = []
            reply.ar = []
            best = bytes(reply.pack())
        return best

