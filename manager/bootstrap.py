"""``pyswarm init`` and ``pyswarm join``: making a host part of a cluster.

init creates the cluster's identity (id, the SSH key pair the leader uses to
reach every node, the API host key whose fingerprint goes into every join
token, the Raft secret) and starts the manager. join checks the manager's
host key against the token *before* sending the token's secret, installs the
cluster key for root restricted to the agent (no shell, no forwarding), and
registers the node. A host only ever lets the cluster in through that one
forced command.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from typing import Any

import asyncssh

from pyswarm import config as cfg
from pyswarm import rpc
from pyswarm.errors import AlreadyInSwarmError, ConnectionError_, PyswarmError, UsageError
from pyswarm.models import Cluster, Node, NodeRole, NodeStatus, new_id
from pyswarm.host import (
    KEY_COMMENT,
    forget_local_state,
    install_cluster_key,
    read_sshd_host_key,
    remove_cluster_key,
    start_manager_service,
    stop_manager_process,
    wait_for_manager,
    write_manager_files,
)
from pyswarm.tokens import fingerprint, new_secret, parse_token

from . import sealing
from .autolock import new_unlock_key


# -- host facts -------------------------------------------------------------------


def _ip_json(*args: str) -> Any:
    try:
        out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PyswarmError(f"`ip {' '.join(args)}` failed: {exc}") from None
    return json.loads(out or "[]")


def default_advertise_addr() -> str:
    """The address of the interface that holds the default route."""
    routes = _ip_json("-4", "route", "show", "default")
    if not routes:
        raise UsageError("this host has no default route, so no address to advertise: pass --advertise-addr IP")
    dev = routes[0].get("dev")
    addrs = [a["local"] for link in _ip_json("-4", "addr", "show", "dev", dev) for a in link.get("addr_info", [])]
    if len(addrs) != 1:
        raise UsageError(f"interface {dev} has {len(addrs)} IPv4 addresses ({', '.join(addrs) or 'none'}): "
                         "pass --advertise-addr IP")
    return str(addrs[0])


def source_addr_towards(ip: str) -> str:
    """The local address this host uses to reach ``ip`` (asks the routing table; sends nothing)."""
    routes = _ip_json("route", "get", ip)
    if not routes or "prefsrc" not in routes[0]:
        raise UsageError(f"no route to {ip} from this host: pass --advertise-addr IP")
    return str(routes[0]["prefsrc"])








def _platform() -> dict[str, str]:
    u = os.uname()
    return {"os": u.sysname.lower(), "arch": u.machine}


# -- init ----------------------------------------------------------------------------


def init(advertise_addr: str | None, foreground: bool, api_port: int = cfg.DEFAULT_API_PORT,
         raft_port: int = cfg.DEFAULT_RAFT_PORT, dns_port: int = cfg.DEFAULT_DNS_PORT,
         addr_pool: str = "10.240.0.0/16", dns_upstreams: list[str] | None = None,
         overlay: str = "", api_group: str = "", autolock: bool = False) -> str:
    """Create the cluster on this host; return the node id once the manager answers.
    ``overlay`` "vxlan" carries container traffic between hosts in VXLAN
    (hosts not on one link); "" routes it (hosts on one link)."""
    if cfg.load_node_config() is not None:
        raise AlreadyInSwarmError("this node is already part of a swarm: run `pyswarm leave` first")
    if api_group:
        import grp

        try:
            grp.getgrnam(api_group)
        except KeyError:
            raise UsageError(f"--api-group {api_group}: no such group on this host (create it with groupadd)") from None
    addr = advertise_addr or default_advertise_addr()
    host_key = read_sshd_host_key()
    state = cfg.state_dir()
    cfg.make_private_dir(state)
    try:
        sealing.write_key_file(state, {"key": sealing.DataKey.new().export()})
        cluster_key = asyncssh.generate_private_key("ssh-ed25519", comment=KEY_COMMENT)
        api_key = asyncssh.generate_private_key("ssh-ed25519", comment="pyswarm-api")
        api_key_path = state / "api_host_key"
        api_key.write_private_key(str(api_key_path))
        os.chmod(api_key_path, 0o600)
        cluster = Cluster(
            id=new_id(), addr_pool=addr_pool, overlay=overlay,
            ssh_public_key=cluster_key.export_public_key().decode().strip(),
            ssh_private_key=cluster_key.export_private_key().decode(),
            worker_token_secret=new_secret(), manager_token_secret=new_secret(),
            api_host_key_fingerprint=fingerprint(api_key.public_data),
            api_host_private_key=api_key.export_private_key().decode(),
            raft_secret=new_secret() + new_secret(), dns_upstreams=dns_upstreams,
            autolock=autolock, unlock_key=new_unlock_key() if autolock else "", api_group=api_group,
        )
        import ipaddress

        subnet = str(next(ipaddress.ip_network(addr_pool).subnets(new_prefix=cluster.subnet_size)))
        node = Node(
            id=new_id(), hostname=socket.gethostname(), addr=addr, role=NodeRole.MANAGER, held_keys=True,
            status=NodeStatus.UNKNOWN, subnet=subnet, ssh_host_key=host_key,
            api_port=api_port, raft_port=raft_port, platform=_platform(),
        )
        manager = cfg.ManagerConfig(
            node_id=node.id, cluster_id=cluster.id, advertise_addr=addr, api_port=api_port,
            raft_port=raft_port, dns_port=dns_port, raft_secret=cluster.raft_secret,
            raft_peers=[f"{addr}:{raft_port}"], dns_upstreams=dns_upstreams, api_group=api_group,
            bootstrap={"objects": [
                ["cluster", cluster.id, cluster.to_dict()],
                ["node", node.id, node.to_dict()],
                ["subnet", subnet, {"node_id": node.id}],
            ]},
        )
        install_cluster_key(cluster.ssh_public_key, cluster.id)
        cfg.save_manager_config(manager)
        cfg.save_node_config(cfg.NodeConfig(node_id=node.id, cluster_id=cluster.id, role="manager",
                                            addr=addr, managers=[f"{addr}:{api_port}"]))
    except BaseException:
        forget_local_state()
        raise
    if foreground:
        return node.id
    start_manager_service()
    wait_for_manager(timeout=30)
    return node.id


def force_new_cluster() -> str:
    """Make this manager the only one of a cluster that lost its quorum,
    keeping every service, node and task it knows of.

    The new cluster gets a new Raft secret and a new cluster SSH key (the
    dispatcher hands the new key to every agent, which replaces the old one
    in authorized_keys), so managers of the old membership, should they come
    back, can neither rejoin this quorum nor keep driving the nodes; they
    also find themselves demoted in this cluster's store and retire."""
    manager = cfg.load_manager_config()
    if manager is None:
        raise UsageError("--force-new-cluster needs a manager host: this host has no manager state")
    try:
        exported = rpc.call_unix(cfg.socket_path(), "store.export", timeout=10)
    except PyswarmError as exc:
        raise UsageError(f"--force-new-cluster reads this manager's replica, but: {exc}; "
                         "start it first with `pyswarm manager start` (it serves reads without quorum)") from None
    objects: dict[str, dict[str, dict[str, Any]]] = exported["objects"]
    if not objects.get("cluster"):
        raise UsageError("this manager's replica holds no cluster yet: nothing to rebuild from")
    stop_manager_process(timeout=15)
    cluster = Cluster.from_dict(next(iter(objects["cluster"].values())))
    key = asyncssh.generate_private_key("ssh-ed25519", comment=KEY_COMMENT)
    cluster.previous_ssh_private_key = cluster.ssh_private_key
    cluster.ssh_public_key = key.export_public_key().decode().strip()
    cluster.ssh_private_key = key.export_private_key().decode()
    cluster.raft_secret = new_secret() + new_secret()
    cluster.epoch += 1
    objects["cluster"] = {cluster.id: cluster.to_dict()}
    for node_id, data in objects.get("node", {}).items():
        if node_id != manager.node_id and data.get("role") == NodeRole.MANAGER.value:
            # its host stays a node (its agent answers as before); its manager,
            # if it ever comes back, finds itself demoted and retires
            objects["node"][node_id] = {**data, "role": NodeRole.WORKER.value}
    manager.raft_secret = cluster.raft_secret
    manager.raft_peers = [f"{manager.advertise_addr}:{manager.raft_port}"]
    manager.bootstrap = {"objects": [[kind, oid, data] for kind, objs in objects.items() for oid, data in objs.items()]}
    shutil.rmtree(cfg.state_dir() / "raft", ignore_errors=True)
    cfg.save_manager_config(manager)
    install_cluster_key(cluster.ssh_public_key, cluster.id)
    start_manager_service()
    wait_for_manager(timeout=30)
    return manager.node_id










# -- join -----------------------------------------------------------------------------


class _PinnedClient(asyncssh.SSHClient):
    def __init__(self, expected: str) -> None:
        self.expected = expected
        self.seen = ""

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.seen = fingerprint(key.public_data)
        return self.seen == self.expected


def _split_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return host or text, int(port) if port else cfg.DEFAULT_API_PORT
    except ValueError:
        raise UsageError(f"invalid manager address {text!r}: expected HOST[:PORT]") from None


async def _join_calls(host: str, port: int, token_text: str, calls: Any) -> Any:
    token = parse_token(token_text)
    client = _PinnedClient(token.fingerprint)
    try:
        conn, _ = await asyncio.wait_for(asyncssh.create_connection(
            lambda: client, host, port, username="join", password=token.secret,
            known_hosts=([], [], []), client_keys=None, agent_path=None, config=[],
        ), timeout=10)
    except asyncssh.HostKeyNotVerifiable:
        raise ConnectionError_(
            f"refusing to join: the manager at {host}:{port} presented host key fingerprint "
            f"{client.seen or '?'}, but the token expects {token.fingerprint} (wrong token, or not the real manager)"
        ) from None
    except asyncssh.PermissionDenied:
        raise ConnectionError_(f"the manager at {host}:{port} rejected the join token (rotated or mistyped?)") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectionError_(f"cannot reach the manager at {host}:{port}: "
                               f"{getattr(exc, 'strerror', None) or 'timed out'}") from None
    async with conn:
        process = await conn.create_process("join", encoding=None)
        return await calls(process)


async def _rpc(process: Any, method: str, params: dict[str, Any]) -> Any:
    process.stdin.write(rpc.encode_request(method, params))
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    return rpc.decode_response(line)


def join(token: str, manager: str, advertise_addr: str | None, api_port: int = cfg.DEFAULT_API_PORT,
         raft_port: int = cfg.DEFAULT_RAFT_PORT, dns_port: int = cfg.DEFAULT_DNS_PORT,
         dns_upstreams: list[str] | None = None) -> dict[str, Any]:
    """Join with a token; a manager token also starts a manager here, which
    catches up from the others before this returns."""
    if cfg.load_node_config() is not None:
        raise AlreadyInSwarmError("this node is already part of a swarm: run `pyswarm leave` first")
    host, port = _split_addr(manager)
    addr = advertise_addr or source_addr_towards(socket.gethostbyname(host))
    host_key = read_sshd_host_key()

    async def calls(process: Any) -> Any:
        info = await _rpc(process, "join.info", {})
        refuse_unless_ready(info)
        install_cluster_key(info["ssh_public_key"], info["cluster_id"])
        try:
            return await _rpc(process, "join", {
                "hostname": socket.gethostname(), "addr": addr, "ssh_host_key": host_key, "ssh_port": 22,
                "api_port": api_port, "raft_port": raft_port, "platform": _platform(),
            })
        except BaseException:
            remove_cluster_key()
            raise

    result = asyncio.run(_join_calls(host, port, token, calls))
    granted = result.get("manager")
    role = "manager" if granted else "worker"
    if granted:
        write_manager_files(result["node_id"], result["cluster_id"], addr, granted, api_port=api_port,
                            raft_port=raft_port, dns_port=dns_port, dns_upstreams=dns_upstreams)
    cfg.save_node_config(cfg.NodeConfig(node_id=result["node_id"], cluster_id=result["cluster_id"],
                                        role=role, addr=addr, managers=[f"{host}:{port}"]))
    if granted:
        start_manager_service()
        wait_for_manager(timeout=60)
    result["role"] = role
    return dict(result)


def refuse_unless_ready(info: Any) -> None:
    """Run the host preflight against the cluster's pool, overlay and clock
    (from ``join.info``) and refuse, listing every problem with its fix,
    before this host changes anything."""
    from pyswarm import preflight

    if not isinstance(info, dict):
        raise UsageError("join.info: the manager's answer is not an object")
    pool = info.get("addr_pool") if isinstance(info.get("addr_pool"), str) else preflight.DEFAULT_POOL
    overlay = "vxlan" if info.get("overlay") == "vxlan" else "routes"
    clock = info.get("time")
    report = preflight.run(overlay, str(pool), float(clock) if isinstance(clock, (int, float)) else None)
    if not report["ok"]:
        lines = "".join(f"\n  - {p}" for p in report["problems"])
        fix = f"\ninstall what is missing with: {report['install']}" if report["install"] else ""
        raise PreflightError(f"this host is not ready to join; nothing was changed:{lines}{fix}")


class PreflightError(UsageError):
    """The host preflight found problems (pyswarm/preflight.py)."""


