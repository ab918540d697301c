"""The name table: which names the cluster answers, and with which addresses.

The table is built from a snapshot of the store by a pure function, so that
the question "what should ``web.demo`` resolve to right now" can be tested
without sockets, and so that the server never reads the store on the query
path: it asks a :class:`~pyswarm.dns.cache.TableCache` for the current table,
which is rebuilt only when the store changes.

For a service ``N`` in stack ``S`` and cluster zone ``Z`` the table holds::

    N.S.Z   N.S          what ``N`` becomes through the search domain ``S.Z``
    tasks.N.S.Z  tasks.N.S   the same addresses, Swarm's name for "every task"
    S_N     S_N.Z        the full service name, as ``docker service ls`` shows it

each answered with the addresses of the service's tasks that are observed
running, are desired running and have an address. A service without a stack
gets ``N.Z``, ``N``, ``tasks.N.Z`` and ``tasks.N``.

Deciding the response code lives here too (:meth:`NameTable.classify`),
because it depends only on the table: a name that exists answers (possibly
with no address at all: NODATA, never NXDOMAIN, so that a resolver does not
cache "this service does not exist" while its first replica is starting);
an unknown name inside the cluster's namespace is NXDOMAIN; anything else is
not ours (the server forwards or refuses it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from pyswarm.addrs import SortedAddrs
from pyswarm.addrs import ip_key as _ip_key
from pyswarm.addrs import reverse_pointer
from pyswarm.models import Cluster, Service, Task

DEFAULT_ZONE = "pyswarm"


def normalize(name: str) -> str:
    """The table's key for ``name``: lowercase, no trailing dot.

    DNS names compare case-insensitively (RFC 4343) and a client may send
    either the absolute (``web.demo.``) or the relative form.
    """
    return name.rstrip(".").lower()


class Kind(str, Enum):
    """What the table says about a name, before the query type is looked at."""

    ADDRESSES = "addresses"  # a service name: A records (maybe none yet)
    EMPTY = "empty"  # exists only as a parent of other names (``demo.pyswarm``)
    NXDOMAIN = "nxdomain"  # inside our namespace, but nothing by that name
    OUTSIDE = "outside"  # not ours: forward upstream, or refuse


@dataclass(frozen=True)
class NameEntry:
    """One answerable name.

    ``ips`` is in a fixed base order (numeric); the server rotates it per
    answer. ``service_ids`` lets later features (health, networks, SRV) find
    their way back to the services behind a name.
    """

    ips: tuple[str, ...]
    service_ids: tuple[str, ...]
    srv: tuple[tuple[int, str], ...] = ()  # SRV names: (port, target name)
    ptr: tuple[str, ...] = ()  # reverse names: the service name a task address belongs to
    extra: tuple[str, ...] = ()  # SRV names: the target's addresses, for the additional section

    @property
    def v4(self) -> tuple[str, ...]:
        return tuple(ip for ip in self.ips if _ip_key(ip)[0] == 4)

    @property
    def v6(self) -> tuple[str, ...]:
        return tuple(ip for ip in self.ips if _ip_key(ip)[0] == 6)


@dataclass(frozen=True)
class Classification:
    kind: Kind
    entry: NameEntry | None = None
    authority: str = ""  # the zone whose SOA goes in a negative answer


@dataclass(frozen=True)
class NameTable:
    """An immutable snapshot of every name the cluster answers.

    Immutable so that the server can read it from the event loop while the
    manager builds the next one in another thread, and swap it in with a
    single assignment.
    """

    zone: str = DEFAULT_ZONE
    names: Mapping[str, NameEntry] = field(default_factory=dict)
    stacks: frozenset[str] = frozenset()
    parents: frozenset[str] = frozenset()  # empty non-terminals
    serial: int = 1
    # per-network views (issue 6): which networks each name's parts are
    # visible on, and which networks each task address (a client) is on
    scoped: Mapping[str, tuple[Scoped, ...]] = field(default_factory=dict)
    clients: Mapping[str, frozenset[str]] = field(default_factory=dict)
    hidden: frozenset[str] = frozenset()  # names of the cluster this view may not see
    pool: str = ""  # the address pool: its reverse names are ours
    view_key: frozenset[str] | None = None  # None: the whole table (clients outside the pool)
    _views: dict[frozenset[str], NameTable] = field(default_factory=dict, compare=False, repr=False)
    # the cluster's nodes' addresses: with the pool and loopback, the clients
    # whose queries for outside names are forwarded (:meth:`may_forward`)
    nodes: frozenset[str] = frozenset()
    _forward_ok: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def may_forward(self, ip: str | None) -> bool:
        """Whether a query from ``ip`` for a name outside the zone may be
        forwarded: only for the cluster's own containers (the pool), its
        nodes and this host (loopback), as Docker's embedded DNS answers
        only its own containers; anyone else gets REFUSED, so a manager is
        no open resolver. ``None`` (no address known: a direct call) may."""
        if ip is None:
            return True
        known = self._forward_ok.get(ip)
        if known is None:
            known = ip in self.nodes or _inside(ip, self.pool)
            if len(self._forward_ok) < 65536:
                self._forward_ok[ip] = known
        return known

    def for_client(self, ip: str | None) -> NameTable:
        """The table as client ``ip`` may see it: a task's container sees
        only the services that share a network with it; anyone else (an
        operator's dig, a node) sees everything."""
        nets = self.clients.get(ip) if ip else None
        if nets is None:
            return self
        view = self._views.get(nets)
        if view is None:
            view = self._views[nets] = self._view(nets)
        return view

    def _view(self, nets: frozenset[str]) -> NameTable:
        names: dict[str, NameEntry] = {}
        for name, parts in self.scoped.items():
            seen = [p for p in parts if p.networks & nets]
            if seen:
                names[name] = _merge(seen)
        hidden = frozenset(n for n in self.names if n not in names)
        return dataclasses.replace(self, names=names, hidden=hidden, view_key=nets, _views={})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize(name) in self.names

    def lookup(self, name: str) -> NameEntry | None:
        return self.names.get(normalize(name))

    def classify(self, name: str) -> Classification:
        """Decide what kind of answer ``name`` gets (see the module docstring).

        A name is inside the cluster's namespace when it is the zone or ends
        in ``.ZONE``; when its last label is a stack (``web.demo``); when it
        starts with ``tasks.``; or when it is one label of the form
        ``STACK_x`` for an existing stack. Inside the namespace an unknown
        name is NXDOMAIN, which lets a container's resolver stop walking its
        search list quickly and lets clients cache the miss briefly (the SOA's
        minimum).
        """
        key = normalize(name)
        entry = self.names.get(key)
        zone = self.zone
        in_zone = key == zone or key.endswith("." + zone)
        authority = zone if in_zone else key.rsplit(".", 1)[-1]
        if entry is not None:
            return Classification(Kind.ADDRESSES, entry, authority)
        if key in self.parents:
            return Classification(Kind.EMPTY, None, authority)
        if in_zone or key in self.hidden:
            return Classification(Kind.NXDOMAIN, None, zone)
        if key.endswith(".in-addr.arpa"):
            rzone = reverse_zone(self.pool)
            if rzone and (key == rzone or key.endswith("." + rzone)):
                return Classification(Kind.NXDOMAIN, None, rzone)
        last = key.rsplit(".", 1)[-1]
        if "." in key and last in self.stacks:
            return Classification(Kind.NXDOMAIN, None, last)
        if key.startswith("tasks."):
            return Classification(Kind.NXDOMAIN, None, last)
        if "." not in key and "_" in key and key.split("_", 1)[0] in self.stacks:
            return Classification(Kind.NXDOMAIN, None, key)
        return Classification(Kind.OUTSIDE)


@dataclass(frozen=True)
class Scoped:
    """One service's part of a name, visible on ``networks`` only."""

    networks: frozenset[str]
    entry: NameEntry


def _merge(parts: Sequence[Scoped]) -> NameEntry:
    if len(parts) == 1:
        return parts[0].entry  # one service's part: built sorted and without repeats
    ips: set[str] = set()
    ids: list[str] = []
    srv: list[tuple[int, str]] = []
    ptr: list[str] = []
    extra: set[str] = set()
    for p in parts:
        ips.update(p.entry.ips)
        extra.update(p.entry.extra)
        ids += [i for i in p.entry.service_ids if i not in ids]
        srv += [r for r in p.entry.srv if r not in srv]
        ptr += [r for r in p.entry.ptr if r not in ptr]
    return NameEntry(tuple(sorted(ips, key=_ip_key)), tuple(ids), tuple(srv), tuple(ptr),
                     tuple(sorted(extra, key=_ip_key)))


def reverse_name(ip: str) -> str:
    return reverse_pointer(ip)


def reverse_zone(pool: str) -> str:
    """The in-addr.arpa zone covering ``pool`` (its whole octets):
    ``240.10.in-addr.arpa`` for 10.240.0.0/16."""
    if not pool:
        return ""
    try:
        net = ipaddress.ip_network(pool, strict=False)
    except ValueError:
        return ""
    if net.version != 4:
        return ""
    octets = str(net.network_address).split(".")[: max(1, net.prefixlen // 8)]
    return ".".join(reversed(octets)) + ".in-addr.arpa"


def networks_of(service: Service) -> frozenset[str]:
    """The networks a service is attached to; a service deployed before
    networks existed is on the one unnamed network ("")."""
    nets = frozenset(str(a.get("target", "")) for a in service.spec.networks if a.get("target"))
    return nets or frozenset({""})


def service_names(service: Service, zone: str) -> list[str]:
    """Every name under which ``service`` is answered (normalized)."""
    short = normalize(service.short_name)
    stack = normalize(service.spec.stack)
    if stack:
        base = [f"{short}.{stack}", f"{short}.{stack}.{zone}"]
        full = normalize(service.name)
        extra = [full, f"{full}.{zone}"]
    else:
        base = [short, f"{short}.{zone}"]
        extra = []
    return base + [f"tasks.{n}" for n in base] + extra


def alias_names(service: Service, alias: str, zone: str) -> list[str]:
    """An alias answers bare (any stack, through the search list's last
    step) and under the service's stack (the first step, so it costs no
    NXDOMAIN round trip inside the stack)."""
    a = normalize(alias)
    stack = normalize(service.spec.stack)
    out = [a, f"{a}.{zone}"]
    if stack:
        out += [f"{a}.{stack}", f"{a}.{stack}.{zone}"]
    return out


def srv_names(service: Service, zone: str) -> list[tuple[str, int]]:
    """``_PUBLISHED._PROTO.NAME`` (and ``_PORTNAME._PROTO.NAME`` for a named
    port) for every published port, with the container port they lead to."""
    short = normalize(service.short_name)
    stack = normalize(service.spec.stack)
    bases = [f"{short}.{stack}", f"{short}.{stack}.{zone}"] if stack else [short, f"{short}.{zone}"]
    out = []
    for p in service.spec.container.options.get("ports") or []:
        if not isinstance(p, dict) or p.get("published") in (None, "") or "target" not in p:
            continue
        proto = str(p.get("protocol", "tcp"))
        labels = [str(p["published"])] + ([normalize(str(p["name"]))] if p.get("name") else [])
        for label in labels:
            for base in bases:
                out.append((f"_{label}._{proto}.{base}", int(p["target"])))
    return out


def _inside(ip: str, pool: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return True
    try:
        return bool(pool) and addr in ipaddress.ip_network(pool, strict=False)
    except ValueError:
        return False


def build_table(cluster: Cluster, services: Iterable[Service], tasks: Iterable[Task],
                nodes: Iterable[str] = ()) -> NameTable:
    """Build the name table for one snapshot of the store.

    Pure: the same snapshot always gives the same table. Tasks are matched to
    services by ``service_id``; tasks of unknown services are ignored (the
    store may hold them briefly while a service is being removed). When two
    services claim the same name (a stackless ``web`` and stack ``pyswarm``'s
    ``web`` both answer ``web.pyswarm``) their addresses are merged rather
    than one silently winning.

    Every part of a name remembers the networks it is visible on (a
    service's names: all its networks; an alias: the network it is set on),
    so :meth:`NameTable.for_client` can cut the view of a client. The
    manager keeps a :class:`TableBuilder` instead, which follows changes.
    """
    return TableBuilder().rebuild(cluster, services, tasks, nodes)


# what one task gives the table: (service id, address, serves, a client: not over)
_TaskPart = tuple[str, str, bool, bool]


class TableBuilder:
    """:func:`build_table`, kept from changed tasks: a task that starts or
    stops serving rebuilds only its service's names and its own reverse
    name; the tables it returns share every unchanged entry with the last.

    Built whole per change, the table over 100,000 running tasks took a few
    hundred ms of the leader's CPU (every task typed, every address keyed,
    sorted and given its PTR), a third of its CPU in the 20 s after such a
    convergence (bench/RESULTS.md, footprint). Not thread-safe: one user."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._zone = DEFAULT_ZONE
        self._pool = ""
        self._nodes: frozenset[str] = frozenset()
        self._services: dict[str, Service] = {}
        self._order: dict[str, int] = {}
        self._nets: dict[str, frozenset[str]] = {}
        self._targets: dict[str, str] = {}  # service id -> its primary name with the dot (PTR, SRV)
        self._ptr_part: dict[str, Scoped] = {}  # service id -> its part of each reverse name (one object)
        self._own: dict[str, dict[str, list[Scoped]]] = {}  # service id -> its names' parts (not PTR)
        self._owners: dict[str, list[str]] = {}  # name (not PTR) -> service ids, in order
        self._serving: dict[str, SortedAddrs] = {}
        self._ptr: dict[str, set[str]] = {}  # PTR name -> service ids serving that address
        self._parts: dict[str, _TaskPart] = {}  # task id -> what it gives
        self._client_tasks: dict[str, set[str]] = {}  # address -> live task ids holding it
        self._stacks: frozenset[str] = frozenset()
        self._parents: frozenset[str] = frozenset()
        self._names: dict[str, NameEntry] = {}
        self._scoped: dict[str, tuple[Scoped, ...]] = {}
        self._clients: dict[str, frozenset[str]] = {}

    def rebuild(self, cluster: Cluster, services: Iterable[Service], tasks: Iterable[Task],
                nodes: Iterable[str] = ()) -> NameTable:
        """The table of this whole snapshot (``tasks``: those that can have an address)."""
        self._reset()
        zone = self._zone = normalize(cluster.zone or DEFAULT_ZONE)
        self._pool = cluster.addr_pool
        self._nodes = frozenset(nodes)
        for i, service in enumerate(services):
            self._services[service.id] = service
            self._order[service.id] = i
            self._nets[service.id] = networks_of(service)
            self._serving[service.id] = SortedAddrs()
            own = service_names(service, zone)
            primary = own[1] if service.spec.stack else own[0]  # N.S.Z, or N for a stackless one
            target = primary if primary.endswith("." + zone) or primary == zone else f"{primary}.{zone}"
            self._targets[service.id] = target + "."
            self._ptr_part[service.id] = Scoped(self._nets[service.id],
                                                NameEntry((), (service.id,), ptr=(target + ".",)))
        for task in tasks:
            self._set(task.id, task)
        for sid in self._services:
            self._own[sid] = self._service_parts(sid)
            for name in self._own[sid]:
                self._owners.setdefault(name, []).append(sid)
        names = set(self._owners) | set(self._ptr)
        for name in names:
            self._recompute(name)
        self._stacks = frozenset(normalize(s.spec.stack) for s in self._services.values() if s.spec.stack)
        parents: set[str] = {zone}
        for name in self._owners:
            if name.endswith(".in-addr.arpa"):
                continue
            labels = name.split(".")
            for i in range(1, len(labels)):
                parent = ".".join(labels[i:])
                if parent not in self._names:
                    parents.add(parent)
        # a bare top label such as "demo" (parent of "web.demo") is a parent, but
        # a bare unrelated TLD must not become one: only keep ours
        self._parents = frozenset(p for p in parents if p == zone or p.endswith("." + zone)
                                  or p.rsplit(".", 1)[-1] in self._stacks)
        return self._table()

    def update(self, tasks: Iterable[tuple[str, Task | None]], nodes: Iterable[str] | None = None) -> NameTable:
        """The table after these tasks changed (None: gone, or no longer
        able to have an address), and the nodes' addresses if given; the
        services and the cluster must be those of the last :meth:`rebuild`."""
        if nodes is not None:
            self._nodes = frozenset(nodes)
        dirty: set[str] = set()
        ptr_names: set[str] = set()
        for tid, task in tasks:
            dirty.update(self._set(tid, task, ptr_names))
        for sid in dirty:
            self._own[sid] = self._service_parts(sid)
        for name in {n for sid in dirty for n in self._own[sid]} | ptr_names:
            self._recompute(name)
        return self._table()

    def _set(self, tid: str, task: Task | None, ptr_names: set[str] | None = None) -> set[str]:
        """Record what ``task`` gives now; the services whose addresses changed."""
        new: _TaskPart | None = None
        if task is not None and task.service_id in self._services:
            new = (task.service_id, task.ip, task.serves, bool(task.ip) and not task.state.terminal)
        old = self._parts.get(tid)
        if old == new:
            return set()
        dirty: set[str] = set()
        if old is not None:
            del self._parts[tid]
            sid, ip, serves, client = old
            if serves:
                self._serve(sid, ip, False, ptr_names)
                dirty.add(sid)
            if client:
                holders = self._client_tasks[ip]
                holders.discard(tid)
                if holders:
                    self._clients[ip] = self._nets[self._parts[next(iter(holders))][0]]
                else:
                    del self._client_tasks[ip], self._clients[ip]
        if new is not None:
            self._parts[tid] = new
            sid, ip, serves, client = new
            if serves:
                self._serve(sid, ip, True, ptr_names)
                dirty.add(sid)
            if client:
                self._client_tasks.setdefault(ip, set()).add(tid)
                self._clients[ip] = self._nets[sid]
        return dirty

    def _serve(self, sid: str, ip: str, on: bool, ptr_names: set[str] | None) -> None:
        serving = self._serving[sid]
        had = ip in serving
        (serving.add if on else serving.remove)(ip)
        if had != (ip in serving):
            name = reverse_name(ip)
            owners = self._ptr.setdefault(name, set())
            (owners.add if on else owners.discard)(sid)
            if not owners:
                del self._ptr[name]
            if ptr_names is not None:
                ptr_names.add(name)

    def _service_parts(self, sid: str) -> dict[str, list[Scoped]]:
        service, zone, nets = self._services[sid], self._zone, self._nets[sid]
        ips = self._serving[sid].frozen()
        parts: dict[str, list[Scoped]] = {}
        entry = NameEntry(ips, (sid,))
        for name in service_names(service, zone):
            parts.setdefault(name, []).append(Scoped(nets, entry))
        for attachment in service.spec.networks:
            for alias in attachment.get("aliases") or []:
                for name in alias_names(service, str(alias), zone):
                    parts.setdefault(name, []).append(Scoped(frozenset({str(attachment.get("target", ""))}), entry))
        for name, port in srv_names(service, zone):
            parts.setdefault(name, []).append(
                Scoped(nets, NameEntry((), (sid,), srv=((port, self._targets[sid]),), extra=ips)))
        return parts

    def _recompute(self, name: str) -> None:
        """One name's parts, in the services' order (each service's own
        parts, then its reverse name's), and its merged entry."""
        owners = set(self._owners.get(name, ())) | self._ptr.get(name, set())
        parts: list[Scoped] = []
        for sid in sorted(owners, key=self._order.__getitem__):
            parts += self._own[sid].get(name, ())
            if sid in self._ptr.get(name, ()):
                parts.append(self._ptr_part[sid])
        if parts:
            self._scoped[name] = tuple(parts)
            self._names[name] = _merge(parts)
        else:
            self._scoped.pop(name, None)
            self._names.pop(name, None)

    def _table(self) -> NameTable:
        # new dicts: a table given out never changes (the feed diffs the last against the next)
        return NameTable(zone=self._zone, names=dict(self._names), stacks=self._stacks, parents=self._parents,
                         scoped=dict(self._scoped), clients=dict(self._clients), pool=self._pool,
                         nodes=self._nodes)


class Rotator:
    """Per-name round robin over a name's addresses.

    Each answer for a name starts one address further than the previous
    answer for that name, so that clients which take the first address
    (most do) spread over the replicas. Counters are keyed by the normalized
    name and survive table rebuilds, so a replica coming or going does not
    restart every name at its first address.
    """

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._table: NameTable | None = None

    def next_offset(self, name: str, count: int) -> int:
        """Where the next answer for ``name`` starts among ``count`` addresses."""
        key = normalize(name)
        n = self._counters.get(key, 0)
        self._counters[key] = n + 1
        return n % count if count else 0

    def rotate(self, name: str, ips: tuple[str, ...]) -> list[str]:
        if not ips:
            return []
        offset = self.next_offset(name, len(ips))
        return list(ips[offset:] + ips[:offset])

    def prune(self, table: NameTable) -> None:
        """Forget counters of names that ``table`` no longer has.

        Called when the table changes, so memory stays bounded by the names
        that exist rather than by every name ever asked.
        """
        if table is self._table:
            return
        self._table = table
        self._counters = {k: v for k, v in self._counters.items() if k in table.names}
