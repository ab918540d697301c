"""The name table's changes, as they cross from the manager to its DNS process.

The manager builds the :class:`~pyswarm.dns.records.NameTable` from its store
replica; the DNS process (:mod:`.process`) answers from its own copy. What
goes down the pipe between them is not the table but what changed since the
last one sent: the names, scopes and client addresses added or replaced, the
ones removed, and the small sets (stacks, parents, nodes) only when they
differ. A change is plain JSON, checked by :mod:`pyswarm.wire` into the
typed :class:`TableChange` on arrival, like every message that crosses a
process boundary, so a bug on one side is a clear error on the other and
never a half-applied table.

An address list of :data:`SHARED_FROM` or more is sent once a message, in
its ``lists``, however many entries carry it (a service's names all carry
its one list).

A change of more than :data:`CHUNK` entries (the first, full table of a big
cluster) is cut into several messages; the receiver installs the table only
after the last (``partial`` false), so no query ever sees half of one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyswarm import wire

from .records import NameEntry, NameTable, Scoped

CHUNK = 20_000  # entries a message (the checker refuses mappings over 100,000)

V = TypeVar("V")


@dataclass(frozen=True)
class WireSrv:
    port: int = field(metadata=wire.rule(min=0, max=65535))
    target: str = field(metadata=wire.rule(max_len=1024))


@dataclass(frozen=True)
class WireEntry:
    """A :class:`~pyswarm.dns.records.NameEntry` on the wire. A long
    address list is sent once a message, in its ``lists``, and named here
    by ``ips_list`` / ``extra_list`` instead (:data:`SHARED_FROM`)."""

    ips: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    srv: list[WireSrv] = field(default_factory=list)
    ptr: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    ips_list: str = field(default="", metadata=wire.rule(max_len=16))
    extra_list: str = field(default="", metadata=wire.rule(max_len=16))

    @staticmethod
    def of(entry: NameEntry, lists: _Lists) -> dict[str, Any]:
        out: dict[str, Any] = {"ids": list(entry.service_ids)}
        _addresses(out, "ips", entry.ips, lists)
        if entry.srv:
            out["srv"] = [{"port": p, "target": t} for p, t in entry.srv]
        if entry.ptr:
            out["ptr"] = list(entry.ptr)
        if entry.extra:
            _addresses(out, "extra", entry.extra, lists)
        return out

    def entry(self, lists: Mapping[str, tuple[str, ...]]) -> NameEntry:
        return NameEntry(_resolve(self.ips, self.ips_list, lists), tuple(self.ids),
                         tuple((s.port, s.target) for s in self.srv), tuple(self.ptr),
                         _resolve(self.extra, self.extra_list, lists))


SHARED_FROM = 16
"""An address list this long is sent once a message however many entries
carry it. A service's names (N.S, N.S.Z, tasks.N.S, S_N, ... and their
per-network parts, its SRV names' extras) all carry its one list: at
100,000 replicas each update wrote the same 1.4 MB list ~20 times, the
largest share of the leader's CPU in the 20 s after converging."""


class _Lists:
    """The long lists of one message being encoded: one key per tuple object."""

    def __init__(self) -> None:
        self.keys: dict[int, str] = {}
        self.lists: dict[str, list[str]] = {}
        self._held: list[tuple[str, ...]] = []  # keeps each tuple alive, so its id stays its own

    def key(self, ips: tuple[str, ...]) -> str:
        key = self.keys.get(id(ips))
        if key is None:
            key = self.keys[id(ips)] = f"L{len(self.keys)}"
            self.lists[key] = list(ips)
            self._held.append(ips)
        return key


def _addresses(out: dict[str, Any], field_name: str, ips: tuple[str, ...], lists: _Lists) -> None:
    if len(ips) >= SHARED_FROM:
        out[f"{field_name}_list"] = lists.key(ips)
    else:
        out[field_name] = list(ips)


def _resolve(ips: list[str], key: str, lists: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    return lists[key] if key else tuple(ips)  # parse() checked that the key is there


@dataclass(frozen=True)
class WireScoped:
    networks: list[str]
    entry: WireEntry


@dataclass(frozen=True)
class TableChange:
    """One message: what changed in the table since the previous one.

    ``full`` starts from an empty table (the first message, and after the
    DNS process was restarted); ``None`` for a set means unchanged."""

    serial: int = field(metadata=wire.rule(min=0))
    full: bool = False
    partial: bool = False  # more messages of the same change follow: do not install yet
    zone: str | None = None
    pool: str | None = None
    stacks: list[str] | None = None
    parents: list[str] | None = None
    nodes: list[str] | None = None
    names: dict[str, WireEntry] = field(default_factory=dict)
    names_gone: list[str] = field(default_factory=list)
    scoped: dict[str, list[WireScoped]] = field(default_factory=dict)
    scoped_gone: list[str] = field(default_factory=list)
    clients: dict[str, list[str]] = field(default_factory=dict)
    clients_gone: list[str] = field(default_factory=list)
    lists: dict[str, list[str]] = field(default_factory=dict)  # the long address lists its entries name (SHARED_FROM)


def _diff(old: Mapping[str, V], new: Mapping[str, V]) -> tuple[dict[str, V], list[str]]:
    if old is new:
        return {}, []
    # the builder shares unchanged entries between tables: identity first,
    # so that 100,000 unchanged names cost no dataclass comparison each
    missing = object()
    changed = {k: v for k, v in new.items() if (was := old.get(k, missing)) is not v and was != v}
    gone = [k for k in old if k not in new]
    return changed, gone


def changes(old: NameTable | None, new: NameTable) -> Iterator[bytes]:
    """The messages (JSON lines) that turn ``old`` (None: nothing) into ``new``."""
    base = old if old is not None else NameTable(zone="", names={}, serial=0)
    names, names_gone = _diff(base.names, new.names)
    scoped, scoped_gone = _diff(base.scoped, new.scoped)
    clients, clients_gone = _diff(base.clients, new.clients)
    head: dict[str, Any] = {"serial": new.serial}
    if old is None:
        head["full"] = True
    for key in ("zone", "pool"):
        if old is None or getattr(old, key) != getattr(new, key):
            head[key] = getattr(new, key)
    for key in ("stacks", "parents", "nodes"):
        if old is None or getattr(old, key) != getattr(new, key):
            head[key] = sorted(getattr(new, key))
    parts: list[tuple[str, Any]] = [
        *(("names", (k, v)) for k, v in names.items()),
        *(("names_gone", k) for k in names_gone),
        *(("scoped", (k, v)) for k, v in scoped.items()),
        *(("scoped_gone", k) for k in scoped_gone),
        *(("clients", (k, sorted(v))) for k, v in clients.items()),
        *(("clients_gone", k) for k in clients_gone),
    ]
    for start in range(0, max(1, len(parts)), CHUNK):
        message: dict[str, Any] = dict(head)
        lists = _Lists()  # per message: each is checked and applied on its own
        for key, item in parts[start:start + CHUNK]:
            if key.endswith("_gone"):
                message.setdefault(key, []).append(item)
            elif key == "names":
                message.setdefault(key, {})[item[0]] = WireEntry.of(item[1], lists)
            elif key == "scoped":
                message.setdefault(key, {})[item[0]] = [
                    {"networks": sorted(p.networks), "entry": WireEntry.of(p.entry, lists)} for p in item[1]]
            else:
                message.setdefault(key, {})[item[0]] = item[1]
        if lists.lists:
            message["lists"] = lists.lists
        message["partial"] = start + CHUNK < len(parts)
        yield json.dumps(message, separators=(",", ":")).encode() + b"\n"


def parse(line: bytes) -> TableChange:
    """One message, checked; :class:`pyswarm.wire.BadRequest` names the field."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise wire.BadRequest("", f"not JSON: {exc}") from None
    change = wire.parse(TableChange, data)
    entries = [*change.names.values(), *(p.entry for parts in change.scoped.values() for p in parts)]
    for entry in entries:
        for key, ips, name in ((entry.ips_list, entry.ips, "ips_list"), (entry.extra_list, entry.extra, "extra_list")):
            if not key:
                continue
            if ips:
                raise wire.BadRequest(name, "both addresses and a shared list")
            if key not in change.lists:
                raise wire.BadRequest(name, f"{key!r}: no such shared list in this message")
    return change


class Receiver:
    """The DNS process's side: applies changes, and is the server's table
    source (a pointer read per query, as :class:`~pyswarm.dns.cache.TableCache`)."""

    def __init__(self) -> None:
        self.table = NameTable()
        self._pending: NameTable | None = None

    def __call__(self) -> NameTable:
        return self.table

    def apply(self, change: TableChange) -> bool:
        """Apply one message; True when a new table was installed."""
        base = self._pending if self._pending is not None else self.table
        if change.full and self._pending is None:
            base = NameTable(zone="", names={}, serial=0)
        lists = {k: tuple(v) for k, v in change.lists.items()}  # one tuple each, shared by its entries
        names = dict(base.names)
        names.update((k, v.entry(lists)) for k, v in change.names.items())
        for k in change.names_gone:
            names.pop(k, None)
        scoped = dict(base.scoped)
        scoped.update((k, tuple(Scoped(frozenset(s.networks), s.entry.entry(lists)) for s in v))
                      for k, v in change.scoped.items())
        for k in change.scoped_gone:
            scoped.pop(k, None)
        clients = dict(base.clients)
        clients.update((k, frozenset(v)) for k, v in change.clients.items())
        for k in change.clients_gone:
            clients.pop(k, None)
        sets: dict[str, Any] = {key: frozenset(value) for key in ("stacks", "parents", "nodes")
                                if (value := getattr(change, key)) is not None}
        text: dict[str, Any] = {key: value for key in ("zone", "pool") if (value := getattr(change, key)) is not None}
        # a fresh object (empty per-client caches): the responder sees a new table and drops its reply cache
        table = NameTable(**{**{f.name: getattr(base, f.name) for f in dataclasses.fields(NameTable)
                                if f.name not in ("_views", "_forward_ok")},
                             **sets, **text, "names": names, "scoped": scoped, "clients": clients,
                             "serial": change.serial})
        if change.partial:
            self._pending = table
            return False
        self._pending = None
        self.table = table
        return True
