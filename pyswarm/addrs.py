"""Address keys that the per-change paths (the DNS table, the mesh) sort by.

:mod:`ipaddress` parses an address octet by octet in Python: ~10 µs an
address, so sorting 100,000 task addresses cost the DNS table ~5 s of CPU
per rebuild. ``socket.inet_pton`` does the IPv4 case in C; anything else
falls back to :mod:`ipaddress`.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket

__all__ = ["SortedAddrs", "ip_key", "reverse_pointer"]


def ip_key(ip: str) -> tuple[int, int, str]:
    """Sort key: IPv4 before IPv6 by numeric value; what is not an address last."""
    try:
        return (4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big"), ip)
    except OSError:
        pass
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0, ip)
    return (a.version, int(a), ip)


def reverse_pointer(ip: str) -> str:
    """The PTR name of ``ip`` (``4.3.2.1.in-addr.arpa`` for 1.2.3.4)."""
    try:
        socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        return ipaddress.ip_address(ip).reverse_pointer
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


class SortedAddrs:
    """A set of addresses kept in :func:`ip_key` order as they come and go,
    for the per-change paths (the mesh, the DNS table): reading it copies a
    list instead of sorting 100,000 addresses by a key computed in Python.
    Changes are applied in a batch when it is next read: a few by
    bisection, many by one merge (the list and the sorted newcomers are two
    runs, which Python's sort merges in one pass); inserting 100,000 new
    tasks one by one into a growing list was quadratic."""

    __slots__ = ("keys", "counts", "_adds", "_removes", "_ips")

    def __init__(self) -> None:
        self.keys: list[tuple[int, int, str]] = []
        self.counts: dict[str, int] = {}  # two live tasks may hold one address for a moment (a reused one)
        self._adds: set[str] = set()
        self._removes: set[str] = set()
        self._ips: tuple[str, ...] | None = ()

    def add(self, ip: str) -> None:
        n = self.counts.get(ip, 0)
        self.counts[ip] = n + 1
        if not n:
            if ip in self._removes:
                self._removes.discard(ip)
            else:
                self._adds.add(ip)

    def remove(self, ip: str) -> None:
        n = self.counts.get(ip, 0)
        if n > 1:
            self.counts[ip] = n - 1
        elif n == 1:
            del self.counts[ip]
            if ip in self._adds:
                self._adds.discard(ip)
            else:
                self._removes.add(ip)

    def ips(self) -> list[str]:
        """A new list (a message given out is never changed)."""
        return list(self.frozen())

    def frozen(self) -> tuple[str, ...]:
        """The addresses in order, as one tuple shared until the next change."""
        self._flush()
        if self._ips is None:
            self._ips = tuple(k[2] for k in self.keys)
        return self._ips

    def __contains__(self, ip: object) -> bool:
        return ip in self.counts

    def _flush(self) -> None:
        if not self._adds and not self._removes:
            return
        self._ips = None
        keys = self.keys
        few = max(8, len(keys) // 64)
        if len(self._removes) <= few:
            for ip in self._removes:
                del keys[bisect.bisect_left(keys, ip_key(ip))]
        else:
            gone = self._removes
            keys[:] = [k for k in keys if k[2] not in gone]
        adds = sorted(map(ip_key, self._adds))
        if len(adds) <= few:
            for key in adds:
                bisect.insort(keys, key)
        else:
            keys += adds
            keys.sort()
        self._adds, self._removes = set(), set()
