"""Network isolation and the published-port mesh on one node (the ``mesh``
message; see pyswarm.protocol and docs/networking.md).

Both are kernel state built from one message that the leader pushes to
every node whenever a task comes, goes or changes address:

- **Isolation.** Each cluster network is an ipset of its members'
  addresses (every task on the network, on any node). Pool→pool traffic
  through this host's forward path (another node's container to ours, ours
  to another node's, and between two of ours, since bridged frames pass
  iptables when ``bridge-nf-call-iptables`` is on) is accepted only when
  source and destination are in one common set; anything else is dropped.
  Replies of accepted connections, and traffic the mesh DNATed, pass.
- **Ingress.** A published port is DNATed, on every node's own addresses,
  to the service's serving replicas wherever they run, spread by
  ``-m statistic --mode random`` with probabilities 1/n, 1/(n-1), … 1 (an
  even spread). The packet is marked and SNATed to this node's bridge
  address, so the replica answers through this node (the conntrack entry
  lives here) and the receiving node accepts it as coming from a gateway
  (``psw-gw``).

Sets are rebuilt into a temporary set and swapped in, and the two chains
are replaced by one ``iptables-restore --noflush``, so a change is atomic
per table and never leaves a moment with no rules.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyswarm.worker import NetworkSetupError

from .network import FORWARD_CHAIN, INGRESS_CHAIN, INGRESS_MARK, Runner, run_command

log = logging.getLogger(__name__)

GATEWAYS_SET = "psw-gw"
INTERNAL_SET = "psw-internal"  # tasks only on internal networks
SET_PREFIX = "psw-"
_SET_NAME = re.compile(r"^psw-[0-9a-f]{12}$")


@dataclass(frozen=True)
class IngressPort:
    port: str  # "8080", or a range "8000-8010"
    protocol: str  # tcp | udp
    backends: tuple[str, ...]  # "ip:port"
    service: str = ""


@dataclass(frozen=True)
class Mesh:
    gateways: tuple[str, ...] = ()
    networks: Mapping[str, tuple[str, ...]] | None = None  # ipset name → members; None: no isolation
    ingress: tuple[IngressPort, ...] = ()
    internal: tuple[str, ...] = ()  # addresses that may not leave the pool (but for the managers' DNS)

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> Mesh:
        """Validate a ``mesh`` message; ValueError names what is wrong."""
        def ip(text: Any) -> str:
            return str(ipaddress.ip_address(str(text)))

        try:
            gateways = tuple(ip(g) for g in msg.get("gateways") or [])
            internal = tuple(ip(a) for a in msg.get("internal") or [])
            networks = None
            if msg.get("networks") is not None:
                networks = {}
                for name, members in dict(msg["networks"]).items():
                    if not _SET_NAME.match(str(name)):
                        raise ValueError(f"bad network set name {name!r}")
                    networks[str(name)] = tuple(ip(m) for m in members)
            ingress = []
            for entry in msg.get("ingress") or []:
                port = str(entry["port"])
                if not re.match(r"^\d{1,5}(-\d{1,5})?$", port):
                    raise ValueError(f"bad published port {port!r}")
                proto = str(entry.get("protocol", "tcp"))
                if proto not in ("tcp", "udp"):
                    raise ValueError(f"bad protocol {proto!r}")
                backends = []
                for b in entry.get("backends") or []:
                    host, _, p = str(b).rpartition(":")
                    if not p.isdigit():
                        raise ValueError(f"bad backend {b!r}")
                    backends.append(f"{ip(host)}:{int(p)}")
                ingress.append(IngressPort(port, proto, tuple(backends), str(entry.get("service", ""))))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"mesh: {exc}") from exc
        return cls(gateways, networks, tuple(ingress), internal)


def filter_rules(mesh: Mesh | None, pool: str, dns: Sequence[str] = ()) -> list[str]:
    """The contents of :data:`FORWARD_CHAIN` (``iptables-restore`` lines).

    Without a mesh carrying networks (before the first one arrives, or from
    a leader that does not send them) pool→pool traffic is accepted as a
    whole, which is how the cluster worked before networks existed.

    A task only on ``internal`` networks may not leave the pool, except to
    ask the managers' DNS (``dns``: the engine's resolver in the container
    forwards to them from the container's address); what the mesh DNATed
    to it, and its replies, pass by the first rule.
    """
    chain = FORWARD_CHAIN
    lines = [f"-A {chain} -m conntrack --ctstate DNAT -j ACCEPT"]
    if mesh is None or mesh.networks is None:
        return lines + [f"-A {chain} -s {pool} -d {pool} -j ACCEPT"]
    inside = f"-m set --match-set {INTERNAL_SET} src"
    for server in (d for d in dns if ":" not in d):  # iptables is IPv4; ip6tables is not managed (docs)
        lines += [f"-A {chain} {inside} -d {server}/32 -p {proto} -m {proto} --dport 53 -j RETURN"
                  for proto in ("udp", "tcp")]
    lines.append(f"-A {chain} {inside} ! -d {pool} -j DROP")
    lines += [
        f"-A {chain} ! -s {pool} -j RETURN",
        f"-A {chain} ! -d {pool} -j RETURN",
        f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {chain} -m set --match-set {GATEWAYS_SET} src -j ACCEPT",
    ]
    for name in sorted(mesh.networks):
        lines.append(f"-A {chain} -m set --match-set {name} src -m set --match-set {name} dst -j ACCEPT")
    lines.append(f"-A {chain} -j DROP")
    return lines


def nat_rules(mesh: Mesh | None) -> list[str]:
    """The contents of :data:`INGRESS_CHAIN`: per published port, mark, then
    DNAT to one backend with an even random spread. A port with no serving
    replica gets no rule: the host then refuses the connection."""
    chain = INGRESS_CHAIN
    lines: list[str] = []
    for entry in mesh.ingress if mesh else ():
        if not entry.backends:
            continue
        match = f"-p {entry.protocol} -m {entry.protocol} --dport {entry.port.replace('-', ':')}"
        lines.append(f"-A {chain} {match} -j MARK --set-xmark {INGRESS_MARK}")
        n = len(entry.backends)
        for i, backend in enumerate(entry.backends):
            left = n - i
            spread = "" if left == 1 else f" -m statistic --mode random --probability {1 / left:.11f}"
            lines.append(f"-A {chain} {match}{spread} -j DNAT --to-destination {backend}")
    return lines


def restore_input(mesh: Mesh | None, pool: str, dns: Sequence[str] = ()) -> str:
    """One ``iptables-restore --noflush`` document for both tables: the two
    chains are declared (so flushed and refilled atomically), nothing else
    is touched."""
    out = ["*filter", f":{FORWARD_CHAIN} - [0:0]", *filter_rules(mesh, pool, dns), "COMMIT",
           "*nat", f":{INGRESS_CHAIN} - [0:0]", *nat_rules(mesh), "COMMIT", ""]
    return "\n".join(out)


def ipset_input(mesh: Mesh) -> str:
    """``ipset restore`` input: every set filled in a temporary twin and
    swapped in, so a member never disappears for a moment."""
    sets: dict[str, Sequence[str]] = {GATEWAYS_SET: mesh.gateways, INTERNAL_SET: mesh.internal}
    sets.update(mesh.networks or {})
    out = []
    for name, members in sets.items():
        tmp = name + "-t"
        out += [f"create {name} hash:ip -exist", f"create {tmp} hash:ip -exist", f"flush {tmp}"]
        out += [f"add {tmp} {m} -exist" for m in members]
        out += [f"swap {tmp} {name}", f"destroy {tmp}"]
    return "\n".join(out) + "\n"


class MeshFirewall:
    """Applies a :class:`Mesh` (or the no-isolation default) to this host."""

    def __init__(self, runner: Runner = run_command) -> None:
        self.run = runner

    async def apply(self, mesh: Mesh | None, pool: str, dns: Sequence[str] = ()) -> None:
        if mesh is not None and mesh.networks is not None:
            await self._run_input(["ipset", "restore"], ipset_input(mesh))
        await self._run_input(["iptables-restore", "-w", "--noflush"], restore_input(mesh, pool, dns))
        if mesh is not None and mesh.networks is not None:
            await self._drop_stale_sets(set(mesh.networks) | {GATEWAYS_SET, INTERNAL_SET})

    async def _drop_stale_sets(self, keep: set[str]) -> None:
        _, out, _ = await self.run(["ipset", "list", "-n"], False)
        for name in out.split():
            if name.startswith(SET_PREFIX) and name not in keep:
                await self.run(["ipset", "destroy", name], False)  # still referenced: next time

    async def _run_input(self, argv: list[str], text: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise NetworkSetupError(f"{argv[0]}: {exc}") from exc
        _, err = await proc.communicate(text.encode())
        if proc.returncode != 0:
            raise NetworkSetupError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")


def host_port_bindings(options: Mapping[str, Any]) -> dict[str, Any]:
    """``mode: host`` ports as the engine's own port bindings: published
    only on the node that runs the task, straight to its container (the
    engine DNATs them; no mesh involved). Returns the ``ExposedPorts`` and
    ``PortBindings`` to merge into the create body, or {} when none."""
    exposed: dict[str, Any] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for p in options.get("ports") or []:
        if not isinstance(p, dict) or p.get("mode") != "host" or "target" not in p:
            continue
        key = f"{p['target']}/{p.get('protocol', 'tcp')}"
        exposed[key] = {}
        binding = {"HostPort": str(p.get("published") or "")}
        if p.get("host_ip"):
            binding["HostIp"] = str(p["host_ip"])
        bindings.setdefault(key, []).append(binding)
    return {"ExposedPorts": exposed, "PortBindings": bindings} if exposed else {}
