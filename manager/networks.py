"""Cluster networks, the manager's side: which networks a stack needs, which
services are attached to which, and the *mesh* every node enforces.

Pure functions over a store snapshot, so the decisions are unit tested
without a cluster; :mod:`.api` commits what they return and
:mod:`.dispatcher` pushes :func:`mesh_message` to every agent.

The design (docs/networking.md): a cluster network has no addresses of its
own. Every node keeps its one bridge on its own /24 of the pool; a network
is the set of its member tasks' addresses, pushed to every node, where the
agent turns it into an ipset and lets pool→pool traffic through only when
source and destination are members of one common set. DNS answers each
container only the names of services that share a network with it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pyswarm.addrs import SortedAddrs
from pyswarm.addrs import ip_key as _ip_key
from pyswarm.errors import UsageError
from pyswarm.models import Network, ServiceSpec, Task, TaskState, new_id

from .store import Snapshot

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
DEFAULT = "default"
LEGACY = ""  # the one network of services deployed before networks existed


def all_networks(snap: Snapshot) -> list[Network]:
    return [Network.from_dict(d) for d in snap.raw.get("network", {}).values()]


def network_by_name(snap: Snapshot, name: str) -> Network | None:
    for data in snap.raw.get("network", {}).values():
        if data.get("name") == name or data.get("id") == name:
            return Network.from_dict(data)
    return None


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise UsageError(f"invalid network name {name!r}: use letters, digits, '_', '.' and '-', "
                         "starting with a letter or digit, at most 63 characters")


def attached(spec: ServiceSpec) -> list[str]:
    """The names of the networks ``spec`` is attached to (``[LEGACY]`` for a
    service deployed before networks existed, so it keeps sharing with its
    peers of that time)."""
    names = [str(a.get("target", "")) for a in spec.networks if a.get("target")]
    return names or [LEGACY]


def stack_networks(stack: str, declared: Mapping[str, Any], specs: Iterable[ServiceSpec],
                   existing: Mapping[str, Network], now: float) -> list[Network]:
    """Attach every spec of ``stack`` to its cluster networks and return the
    networks that must be created.

    ``declared`` is the stack file's top-level ``networks`` (normalised by
    pyswarm.compose). A declared network ``N`` becomes ``STACK_N`` (or its
    ``name:``); ``external: true`` refers to an existing one by ``name`` or
    ``N`` and is never created; a service with no ``networks`` key is on
    ``STACK_default``. Raises :class:`UsageError` naming the service and
    network when an external network does not exist.
    """
    creating: dict[str, Network] = {}

    def resolve(key: str, service: str) -> str:
        opts = declared.get(key) or {}
        if opts.get("external"):
            name = str(opts.get("name") or key)
            if name not in existing:
                raise UsageError(f"stack {stack}: service {service}: network {key!r} is external but "
                                 f"network {name!r} does not exist (create it with "
                                 f"`pyswarm network create {name}`)")
            return name
        name = str(opts.get("name") or f"{stack}_{key}")
        check_name(name)
        if name in existing:
            net = existing[name]
            if net.stack and net.stack != stack:
                raise UsageError(f"stack {stack}: network {name!r} belongs to stack {net.stack}")
            return name
        if name not in creating:
            labels = {str(k): str(v) for k, v in (opts.get("labels") or {}).items()}
            labels["com.docker.stack.namespace"] = stack
            creating[name] = Network(id=new_id(), name=name, stack=stack, labels=labels,
                                     internal=bool(opts.get("internal")),
                                     attachable=bool(opts.get("attachable")), created_at=now)
        return name

    for spec in specs:
        short = spec.name[len(stack) + 1:] if spec.name.startswith(stack + "_") else spec.name
        wanted = spec.container.options.get("networks") or {DEFAULT: None}
        out = []
        for key, opts in wanted.items():
            aliases = [str(a) for a in ((opts or {}).get("aliases") or [])]
            out.append({"target": resolve(str(key), short), "aliases": aliases})
        spec.networks = out
    return list(creating.values())


def users(snap: Snapshot, name: str) -> list[str]:
    """Services attached to network ``name``."""
    return sorted(s.name for s in snap.services() if name in attached(s.spec))


def ipset_name(network: str) -> str:
    """A stable ipset name for a network (ipset names are at most 31 bytes)."""
    return "psw-" + hashlib.sha1(network.encode()).hexdigest()[:12]


def gateway_of(subnet: str) -> str:
    net = ipaddress.ip_network(subnet, strict=False)
    return str(net.network_address + 1)


# the states in which a task can have an address (the agent reports it)
LIVE_STATES = tuple(s for s in TaskState if not s.terminal and s.rank >= TaskState.ASSIGNED.rank)


def ingress_ports(spec: ServiceSpec) -> list[dict[str, Any]]:
    """The service's ports published in ingress mode (the default)."""
    out = []
    for p in spec.container.options.get("ports") or []:
        if not isinstance(p, dict) or p.get("published") in (None, ""):
            continue
        if p.get("mode", "ingress") != "ingress" or p.get("protocol", "tcp") not in ("tcp", "udp"):
            continue
        out.append(p)
    return out


def mesh_message(snap: Snapshot) -> dict[str, Any]:
    """The ``mesh`` message: the same for every node (see pyswarm.protocol).

    ``networks`` maps each network's ipset name to its members' addresses
    (every live task attached to it, on any node); ``ingress`` lists each
    published port with the addresses of the replicas that serve it
    (:attr:`pyswarm.models.Task.serves`: running, desired running, and
    healthy once health exists), so a task leaves the mesh exactly when it
    leaves DNS. The dispatcher keeps a :class:`MeshIndex` instead, which
    follows the store's changes.
    """
    return MeshIndex().update(snap)


# what one task adds to the mesh: (service id, address, network names, only on internal networks, serves)
_Part = tuple[str, str, tuple[str, ...], bool, bool]
# what the mesh needs of a service: (name, network names, only on internal networks, ingress ports)
_ServiceView = tuple[str, tuple[str, ...], bool, list[dict[str, Any]]]


class MeshIndex:
    """The mesh of the latest snapshot, kept from the store's changes: a
    changed task moves only its own address in and out of the sets. A
    change to a service or a network (which networks, which ports, which
    are internal) or changes older than the store keeps rebuild it whole.

    Rebuilt per change, as it was, the mesh at 100,000 running tasks was
    ~0.6 s of CPU (every live task typed, every address keyed and sorted),
    a tenth of the leader's CPU converging 100,000 tasks and a fifth of it
    in the 20 s after (bench/RESULTS.md, footprint). Not thread-safe: one
    user (the dispatcher) calls :meth:`update`."""

    def __init__(self) -> None:
        self._at: int | None = None
        self._parts: dict[str, _Part] = {}  # task id -> what it adds
        self._services: dict[str, _ServiceView] = {}
        self._members: dict[str, SortedAddrs] = {}  # network name -> addresses
        self._internal = SortedAddrs()
        self._backends: dict[str, SortedAddrs] = {}  # service id with ingress ports -> serving addresses
        self._gateways: list[str] = []

    def update(self, snap: Snapshot) -> dict[str, Any]:
        """The ``mesh`` message of ``snap`` (fresh lists: a message given out is never changed)."""
        changed = None if self._at is None else snap.changed_since(self._at)
        if changed is None or any(kind in ("service", "network") for kind, _ in changed):
            self._rebuild(snap)
        else:
            if any(kind == "node" for kind, _ in changed):
                self._gateways = _gateways(snap)
            for kind, oid in changed:
                if kind == "task":
                    self._set(oid, _part(self._services, snap.task(oid)))
        self._at = snap.index
        return self._message()

    def _rebuild(self, snap: Snapshot) -> None:
        internal_nets = {str(d.get("name")) for d in snap.raw.get("network", {}).values() if d.get("internal")}
        self._services = {}
        self._members = {}
        self._backends = {}
        for service in sorted(snap.services(), key=lambda s: s.name):
            nets = tuple(attached(service.spec))
            ports = ingress_ports(service.spec)
            self._services[service.id] = (service.name, nets, all(n in internal_nets for n in nets), ports)
            for name in nets:
                self._members.setdefault(name, SortedAddrs())
            if ports:
                self._backends[service.id] = SortedAddrs()
        self._internal = SortedAddrs()
        self._parts = {}
        self._gateways = _gateways(snap)
        for task in snap.tasks_in(*LIVE_STATES):  # the state index: pending tasks cost nothing here
            self._set(task.id, _part(self._services, task))

    def _set(self, task_id: str, part: _Part | None) -> None:
        old = self._parts.get(task_id)
        if old == part:
            return
        if old is not None:
            del self._parts[task_id]
            self._apply(old, SortedAddrs.remove)
        if part is not None:
            self._parts[task_id] = part
            self._apply(part, SortedAddrs.add)

    def _apply(self, part: _Part, how: Callable[[SortedAddrs, str], None]) -> None:
        service_id, ip, nets, internal_only, serves = part
        for name in nets:
            how(self._members[name], ip)
        if internal_only:
            how(self._internal, ip)
        backends = self._backends.get(service_id)
        if serves and backends is not None:
            how(backends, ip)

    def _message(self) -> dict[str, Any]:
        ingress = []
        for service_id, (name, _, _, ports) in self._services.items():  # by service name (the rebuild's order)
            for p in ports:
                ingress.append({
                    "service": name, "port": str(p["published"]), "protocol": p.get("protocol", "tcp"),
                    "backends": [f"{ip}:{p['target']}" for ip in self._backends[service_id].ips()],
                })
        ingress.sort(key=lambda e: (e["protocol"], e["port"]))
        return {
            "op": "mesh",
            "gateways": list(self._gateways),
            "networks": {ipset_name(name): self._members[name].ips() for name in sorted(self._members)},
            "internal": self._internal.ips(),
            "ingress": ingress,
        }


def _gateways(snap: Snapshot) -> list[str]:
    return sorted({gateway_of(n.subnet) for n in snap.nodes() if n.subnet}, key=_ip_key)


def _part(services: Mapping[str, _ServiceView], task: Task | None) -> _Part | None:
    if task is None or not task.has_address or task.state not in LIVE_STATES:
        return None
    service = services.get(task.service_id)
    if service is None:
        return None
    _, nets, internal_only, _ = service
    return (task.service_id, task.ip, nets, internal_only, task.serves)


def check_published(snap: Snapshot, specs: Iterable[ServiceSpec]) -> None:
    """Refuse an ingress port that another service already publishes: on
    every node one published port leads to one service."""
    replacing = {s.name for s in specs}
    taken: dict[tuple[str, str], str] = {}
    for service in snap.services():
        if service.name not in replacing:
            for p in ingress_ports(service.spec):
                taken[(str(p["published"]), p.get("protocol", "tcp"))] = service.name
    for spec in specs:
        for p in ingress_ports(spec):
            key = (str(p["published"]), p.get("protocol", "tcp"))
            if key in taken and taken[key] != spec.name:
                raise UsageError(f"service {spec.name}: port {key[0]}/{key[1]} is already published "
                                 f"by service {taken[key]}")
            taken[key] = spec.name


def network_row(net: Network, snap: Snapshot) -> dict[str, Any]:
    return {"id": net.id, "name": net.name, "driver": net.driver, "scope": "swarm", "stack": net.stack,
            "labels": net.labels, "internal": net.internal, "attachable": net.attachable,
            "created_at": net.created_at, "services": users(snap, net.name)}
