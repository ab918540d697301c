"""The node's container network: one bridge, routes to the other nodes, and
the firewall rules that let containers on different nodes talk without NAT.

Each node owns one subnet of the cluster's pool (``configure`` says which).
Containers join the engine bridge network :data:`protocol.NETWORK_NAME` on
that subnet; every other node's subnet is reached through a plain host route
via that node's address (host-gateway routing: the hosts share a link). The
engine's own masquerading is switched off for this network, so a container
sees its peers' real addresses — that is what DNS answers and what
``service ps`` shows. Traffic leaving the pool (to the managers' DNS, to the
outside) is still masqueraded, by our own rule, because nothing outside the
pool routes back to container subnets.

Every step checks before it changes (``iptables -C``, comparing routes and
the network's settings), so ``configure`` can be sent any number of times.
Our firewall rules carry the comment :data:`RULE_COMMENT`, which is how stale
ones (after a subnet or pool change) are found and removed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyswarm import protocol
from pyswarm.worker import EngineAPIError, EngineConflictError, NetworkSetupError
from pyswarm.worker.docker import DockerClient

log = logging.getLogger(__name__)

RULE_COMMENT = "pyswarm"
FORWARD_CHAIN = "PYSWARM-FORWARD"  # filled by worker/ingress.py
INGRESS_CHAIN = "PYSWARM-INGRESS"  # filled by worker/ingress.py
INGRESS_MARK = "0x8000/0x8000"
VXLAN_DEV = "pswvx0"
VXLAN_VNI = 4242
VXLAN_PORT = 4789
VXLAN_MTU = 1450  # 1500 less the 50 bytes of VXLAN, UDP, IP and Ethernet headers
MASQ_OPTION = "com.docker.network.bridge.enable_ip_masquerade"
BRIDGE_OPTION = "com.docker.network.bridge.name"

Runner = Callable[[Sequence[str], bool], Awaitable[tuple[int, str, str]]]


@dataclass(frozen=True)
class Route:
    subnet: str
    via: str


@dataclass(frozen=True)
class NetworkConfig:
    """The network part of a ``configure`` message."""

    subnet: str
    pool: str
    routes: tuple[Route, ...] = ()
    dns: tuple[str, ...] = ()
    overlay: str = ""  # "" (host routes) or "vxlan"
    addr: str = ""  # this node's own address (the VXLAN tunnel's local end)

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> NetworkConfig:
        """Validate and normalise; raises ValueError naming the bad field."""
        try:
            subnet = str(ipaddress.ip_network(str(msg["subnet"]), strict=False))
            pool = str(ipaddress.ip_network(str(msg["pool"]), strict=False))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"configure: bad or missing subnet/pool: {exc}") from exc
        routes = []
        for r in msg.get("routes") or []:
            try:
                routes.append(Route(str(ipaddress.ip_network(str(r["subnet"]), strict=False)),
                                    str(ipaddress.ip_address(str(r["via"])))))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"configure: bad route {r!r}: {exc}") from exc
        dns = tuple(str(ipaddress.ip_address(str(d))) for d in msg.get("dns") or [])
        overlay = str(msg.get("overlay") or "")
        if overlay not in ("", "vxlan"):
            raise ValueError(f"configure: unknown overlay {overlay!r} (want vxlan or nothing)")
        addr = str(ipaddress.ip_address(str(msg["addr"]))) if msg.get("addr") else ""
        return cls(subnet=subnet, pool=pool, routes=tuple(routes), dns=dns, overlay=overlay, addr=addr)


def gateway_of(subnet: str) -> str:
    """The bridge's address: the subnet's first host (``.1`` for a /24)."""
    net = ipaddress.ip_network(subnet, strict=False)
    return str(net.network_address + 1)


def vtep_addr(subnet: str) -> str:
    """A node's end of the overlay: its subnet's network address (never a
    container's), as a /32 on the VXLAN device."""
    return str(ipaddress.ip_network(subnet, strict=False).network_address)


def vtep_mac(subnet: str) -> str:
    """A node's VXLAN device address, derived from its subnet so that every
    node can compute every peer's without asking (02: locally administered)."""
    octets = ipaddress.ip_network(subnet, strict=False).network_address.packed
    return ":".join(f"{b:02x}" for b in (0x02, 0x70, *octets[-4:]))


def overlay_config(cfg: NetworkConfig) -> NetworkConfig:
    """With VXLAN, a peer's subnet is reached via its VTEP address on the
    VXLAN device instead of via its host address."""
    return dataclasses.replace(cfg, routes=tuple(Route(r.subnet, vtep_addr(r.subnet)) for r in cfg.routes))


def _in_pool(dst: str, pool: str) -> bool:
    try:
        net = ipaddress.ip_network(dst, strict=False)
        return net.subnet_of(ipaddress.ip_network(pool))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False


@dataclass
class RoutePlan:
    replace: list[Route] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)


def plan_routes(current: Sequence[Mapping[str, Any]], cfg: NetworkConfig) -> RoutePlan:
    """Given ``ip -j route show`` output, what to replace and delete.

    Only gateway routes inside the pool are ours to delete: connected routes
    (the bridge's own subnet) and anything outside the pool belong to the
    host. A gateway route to our *own* subnet is stale (the subnet used to be
    another node's) and would shadow the bridge, so it goes too.
    """
    want = {r.subnet: r.via for r in cfg.routes if r.subnet != cfg.subnet}
    have: dict[str, str] = {}
    plan = RoutePlan()
    for entry in current:
        dst = str(entry.get("dst", ""))
        gw = entry.get("gateway")
        if not gw or dst in ("", "default") or not _in_pool(dst, cfg.pool):
            continue
        dst = str(ipaddress.ip_network(dst, strict=False))
        if dst in want:
            have[dst] = str(gw)
        else:
            plan.delete.append(dst)
    for subnet, via in sorted(want.items()):
        if have.get(subnet) != via:
            plan.replace.append(Route(subnet, via))
    return plan


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    args: tuple[str, ...]
    insert: bool = False  # -I CHAIN 1 (must come before a RETURN) or -A


def desired_rules(cfg: NetworkConfig, forward_chain: str) -> list[Rule]:
    """Accept pool→pool forwarding (the engine's FORWARD policy is DROP and
    its own chains only admit published ports), and masquerade what leaves
    the pool from our subnet. Args are in ``iptables -S`` order so that
    listed rules compare equal."""
    comment = ("-m", "comment", "--comment", RULE_COMMENT)
    local = ("-m", "addrtype", "--dst-type", "LOCAL")
    # what passes between containers is decided in PYSWARM-FORWARD
    # (worker/ingress.py: isolation by network, ingress); published ports
    # on this node's addresses go to PYSWARM-INGRESS; ingress packets are
    # SNATed to our bridge address so replies come back through us
    rules = [
        Rule("filter", forward_chain, (*comment, "-j", FORWARD_CHAIN), insert=True),
        Rule("nat", "PREROUTING", (*local, *comment, "-j", INGRESS_CHAIN), insert=True),
        Rule("nat", "OUTPUT", ("!", "-d", "127.0.0.0/8", *local, *comment, "-j", INGRESS_CHAIN), insert=True),
        Rule("nat", "POSTROUTING", ("-m", "mark", "--mark", INGRESS_MARK, *comment, "-j", "SNAT",
                                    "--to-source", gateway_of(cfg.subnet)), insert=True),
    ]
    # queries to the managers' DNS keep the container's address (the
    # managers route to every subnet), so DNS can answer by network
    for manager in cfg.dns:
        rules.append(Rule("nat", "POSTROUTING", ("-s", cfg.subnet, "-d", f"{manager}/32", *comment, "-j", "RETURN"),
                          insert=True))
    rules.append(Rule("nat", "POSTROUTING", ("-s", cfg.subnet, "!", "-d", cfg.pool, *comment, "-j", "MASQUERADE")))
    return rules


def parse_our_rules(table: str, chain: str, listing: str) -> list[Rule]:
    """Our rules (by comment) in one chain's ``iptables -S`` output."""
    out = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if len(words) < 2 or words[0] != "-A" or words[1] != chain:
            continue
        if RULE_COMMENT not in words or "--comment" not in words:
            continue
        i = words.index("--comment")
        if i + 1 >= len(words) or words[i + 1] != RULE_COMMENT:
            continue
        out.append(Rule(table, chain, tuple(words[2:])))
    return out


async def run_command(argv: Sequence[str], check: bool = True) -> tuple[int, str, str]:
    """Run a host command; its output never reaches our stdout (that carries
    the protocol)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise NetworkSetupError(f"{argv[0]}: {exc}") from exc
    out, err = await proc.communicate()
    rc = proc.returncode if proc.returncode is not None else -1
    if check and rc != 0:
        raise NetworkSetupError(f"{shlex.join(argv)}: {err.decode(errors='replace').strip() or f'exit {rc}'}")
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def docker_network_config(subnet: str) -> dict[str, Any]:
    return {
        "Name": protocol.NETWORK_NAME,
        "Driver": "bridge",
        "CheckDuplicate": True,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": subnet, "Gateway": gateway_of(subnet)}]},
        "Options": {BRIDGE_OPTION: protocol.BRIDGE_NAME, MASQ_OPTION: "false"},
        "Labels": {"pyswarm.network": "node"},
    }


def network_matches(net: Mapping[str, Any], subnet: str) -> bool:
    """Whether an existing engine network already is what we would create."""
    configs = (net.get("IPAM") or {}).get("Config") or []
    subnets = {str(c.get("Subnet")) for c in configs if isinstance(c, dict)}
    options = net.get("Options") or {}
    return (
        subnets == {subnet}
        and options.get(BRIDGE_OPTION) == protocol.BRIDGE_NAME
        and options.get(MASQ_OPTION) == "false"
    )


class HostNetwork:
    """Applies a :class:`NetworkConfig` to this host and its engine."""

    def __init__(self, docker: DockerClient, node: str, runner: Runner = run_command) -> None:
        self.docker = docker
        self.node = node
        self.run = runner

    async def configure(self, cfg: NetworkConfig) -> list[str]:
        """Converge; returns problems that did not stop the rest (each step
        is attempted, so one bad route does not leave iptables unset)."""
        problems: list[str] = []
        routes: RoutePlan | None = None
        via_dev: list[str] = []
        try:
            if cfg.overlay == "vxlan":
                await self.ensure_vxlan(cfg)
                via_dev = ["dev", VXLAN_DEV, "onlink"]
            else:
                await self.run(["ip", "link", "del", VXLAN_DEV], False)  # no overlay (any more)
        except NetworkSetupError as exc:
            problems.append(str(exc))
        try:
            routes = plan_routes(await self._routes(), overlay_config(cfg) if via_dev else cfg)
            for dst in routes.delete:
                await self.run(["ip", "route", "del", dst], False)
        except NetworkSetupError as exc:
            problems.append(str(exc))
        try:
            await self.ensure_docker_network(cfg.subnet)
        except NetworkSetupError as exc:
            problems.append(str(exc))
        for route in routes.replace if routes else []:
            try:
                await self.run(["ip", "route", "replace", route.subnet, "via", route.via, *via_dev], True)
            except NetworkSetupError as exc:
                problems.append(str(exc))
        try:
            await self.ensure_forwarding()
            await self.ensure_iptables(cfg)
        except NetworkSetupError as exc:
            problems.append(str(exc))
        return problems

    async def ensure_vxlan(self, cfg: NetworkConfig) -> None:
        """The overlay device and, for every peer node, the static entries
        that make it a point-to-point mesh with no learning and no
        multicast: a neighbour (peer VTEP → peer MAC) and a forwarding
        entry (peer MAC → peer host address)."""
        rc, _, _ = await self.run(["ip", "link", "show", VXLAN_DEV], False)
        if rc != 0:
            local = ["local", cfg.addr] if cfg.addr else []
            await self.run(["ip", "link", "add", VXLAN_DEV, "type", "vxlan", "id", str(VXLAN_VNI),
                            "dstport", str(VXLAN_PORT), *local, "nolearning"], True)
        await self.run(["ip", "link", "set", VXLAN_DEV, "address", vtep_mac(cfg.subnet),
                        "mtu", str(VXLAN_MTU), "up"], True)
        await self.run(["ip", "addr", "replace", f"{vtep_addr(cfg.subnet)}/32", "dev", VXLAN_DEV], True)
        for r in cfg.routes:
            if r.subnet == cfg.subnet:
                continue
            await self.run(["ip", "neigh", "replace", vtep_addr(r.subnet), "lladdr", vtep_mac(r.subnet),
                            "dev", VXLAN_DEV, "nud", "permanent"], True)
            await self.run(["bridge", "fdb", "replace", vtep_mac(r.subnet), "dev", VXLAN_DEV,
                            "dst", r.via, "self", "permanent"], True)

    async def _routes(self) -> list[dict[str, Any]]:
        _, out, _ = await self.run(["ip", "-j", "route", "show"], True)
        data = json.loads(out or "[]")
        return [d for d in data if isinstance(d, dict)]

    async def ensure_docker_network(self, subnet: str) -> None:
        """Create the bridge network, or recreate it when its subnet or
        options are wrong and nothing is attached (with containers attached
        we refuse: removing it would cut them off)."""
        name = protocol.NETWORK_NAME
        try:
            existing = await self.docker.inspect_network(name)
            if existing is not None:
                if network_matches(existing, subnet):
                    return
                attached = existing.get("Containers") or {}
                if attached:
                    raise NetworkSetupError(
                        f"network {name} on {self.node} has subnet "
                        f"{[c.get('Subnet') for c in (existing.get('IPAM') or {}).get('Config') or []]}, "
                        f"want {subnet}, and {len(attached)} container(s) attached; not recreating")
                log.info("recreating network %s for subnet %s", name, subnet)
                await self.docker.remove_network(name)
            try:
                await self.docker.create_network(docker_network_config(subnet))
            except EngineConflictError:
                again = await self.docker.inspect_network(name)
                if again is None or not network_matches(again, subnet):
                    raise
        except EngineAPIError as exc:
            raise NetworkSetupError(f"network {name} ({subnet}) on {self.node}: {exc.message}") from exc

    async def ensure_forwarding(self) -> None:
        """IP forwarding on, and bridged frames through iptables (so that
        isolation also holds between two containers of this node)."""
        for path, required in (("/proc/sys/net/ipv4/ip_forward", True),
                               ("/proc/sys/net/bridge/bridge-nf-call-iptables", False)):
            try:
                with open(path) as f:
                    if f.read().strip() == "1":
                        continue
                with open(path, "w") as f:
                    f.write("1\n")
            except OSError as exc:
                if required or os.path.exists(path):
                    raise NetworkSetupError(f"cannot set {path} to 1: {exc}") from exc
                log.warning("%s missing (no br_netfilter): containers of one node are not isolated", path)

    async def forward_chain(self) -> str:
        """DOCKER-USER when the engine made it (dockerd does; Podman does
        not, and then FORWARD itself is where our accept goes)."""
        rc, _, _ = await self.run(["iptables", "-w", "-t", "filter", "-S", "DOCKER-USER"], False)
        return "DOCKER-USER" if rc == 0 else "FORWARD"

    async def ensure_chains(self, cfg: NetworkConfig) -> None:
        """Our own chains must exist before a rule can jump to them. A new
        forward chain starts out accepting pool→pool traffic (what the
        cluster did before networks), until the agent's first mesh says
        which networks there are."""
        for table, chain in (("filter", FORWARD_CHAIN), ("nat", INGRESS_CHAIN)):
            rc, _, _ = await self.run(["iptables", "-w", "-t", table, "-S", chain], False)
            if rc != 0:
                await self.run(["iptables", "-w", "-t", table, "-N", chain], True)
                if chain == FORWARD_CHAIN:
                    await self.run(["iptables", "-w", "-A", chain, "-s", cfg.pool, "-d", cfg.pool,
                                    "-j", "ACCEPT"], True)

    async def ensure_iptables(self, cfg: NetworkConfig) -> None:
        chain = await self.forward_chain()
        await self.ensure_chains(cfg)
        want = desired_rules(cfg, chain)
        # stale rules first: a subnet or pool change leaves old ones behind
        for table, ch in {(r.table, r.chain) for r in want}:
            _, listing, _ = await self.run(["iptables", "-w", "-t", table, "-S", ch], True)
            for rule in parse_our_rules(table, ch, listing):
                if all(rule.args != w.args or w.chain != ch for w in want):
                    await self.run(["iptables", "-w", "-t", table, "-D", ch, *rule.args], False)
        for rule in want:
            rc, _, _ = await self.run(["iptables", "-w", "-t", rule.table, "-C", rule.chain, *rule.args], False)
            if rc == 0:
                continue
            if rule.insert:
                await self.run(["iptables", "-w", "-t", rule.table, "-I", rule.chain, "1", *rule.args], True)
            else:
                await self.run(["iptables", "-w", "-t", rule.table, "-A", rule.chain, *rule.args], True)
