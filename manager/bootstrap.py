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
import time
from pathlib import Path
from typing import Any

import asyncssh

from pyswarm import config as cfg
from pyswarm import rpc
from pyswarm.errors import AlreadyInSwarmError, ConnectionError_, PyswarmError, UsageError
from pyswarm.models import Cluster, Node, NodeRole, NodeStatus, new_id
from pyswarm.tokens import fingerprint, new_secret, parse_token

KEY_COMMENT = "pyswarm-cluster"


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


def read_sshd_host_key() -> str:
    path = cfg.sshd_host_key_path()
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise UsageError(f"this host has no sshd host key at {path}: install and start openssh-server "
                         "(the managers reach every node over SSH)") from None


def install_cluster_key(public_key: str, cluster_id: str) -> None:
    """Let the cluster's key run the agent as root, and nothing else."""
    ssh = cfg.ssh_dir()
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = ssh / "authorized_keys"
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if KEY_COMMENT not in line]
    command = f"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin exec {cfg.pyswarm_executable()} worker --stdio"
    key = " ".join(public_key.split()[:2])
    lines.append(f'restrict,command="{command}" {key} {KEY_COMMENT}-{cluster_id}')
    tmp = path.with_suffix(".pyswarm-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def remove_cluster_key() -> None:
    path = cfg.ssh_dir() / "authorized_keys"
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if KEY_COMMENT not in line]
        path.write_text("".join(line + "\n" for line in kept))


def _platform() -> dict[str, str]:
    u = os.uname()
    return {"os": u.sysname.lower(), "arch": u.machine}


# -- init ----------------------------------------------------------------------------


def init(advertise_addr: str | None, foreground: bool, api_port: int = cfg.DEFAULT_API_PORT,
         raft_port: int = cfg.DEFAULT_RAFT_PORT, dns_port: int = cfg.DEFAULT_DNS_PORT,
         addr_pool: str = "10.240.0.0/16", dns_upstreams: list[str] | None = None,
         overlay: str = "") -> str:
    """Create the cluster on this host; return the node id once the manager answers.
    ``overlay`` "vxlan" carries container traffic between hosts in VXLAN
    (hosts not on one link); "" routes it (hosts on one link)."""
    if cfg.load_node_config() is not None:
        raise AlreadyInSwarmError("this node is already part of a swarm: run `pyswarm leave` first")
    addr = advertise_addr or default_advertise_addr()
    host_key = read_sshd_host_key()
    state = cfg.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    try:
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
        )
        import ipaddress

        subnet = str(next(ipaddress.ip_network(addr_pool).subnets(new_prefix=cluster.subnet_size)))
        node = Node(
            id=new_id(), hostname=socket.gethostname(), addr=addr, role=NodeRole.MANAGER,
            status=NodeStatus.UNKNOWN, subnet=subnet, ssh_host_key=host_key,
            api_port=api_port, raft_port=raft_port, platform=_platform(),
        )
        manager = cfg.ManagerConfig(
            node_id=node.id, cluster_id=cluster.id, advertise_addr=addr, api_port=api_port,
            raft_port=raft_port, dns_port=dns_port, raft_secret=cluster.raft_secret,
            raft_peers=[f"{addr}:{raft_port}"], dns_upstreams=dns_upstreams,
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
        _forget_local_state()
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


def stop_manager_process(timeout: float) -> None:
    """SIGTERM this host's manager (from its pid file) and wait for it to exit."""
    import signal

    pidfile = cfg.run_dir() / "manager.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return  # exited; its parent has not reaped it
        time.sleep(0.05)
    raise ConnectionError_(f"the manager (pid {pid}) did not stop within {timeout:.0f}s")


def _forget_local_state() -> None:
    state = cfg.state_dir()
    for name in ("node.json", "manager.json", "api_host_key"):
        (state / name).unlink(missing_ok=True)
    shutil.rmtree(state / "raft", ignore_errors=True)
    remove_cluster_key()


def start_manager_service() -> None:
    """Start ``pyswarm manager run`` so that it outlives this shell: a systemd
    unit where systemd runs, otherwise a detached process of its own session."""
    exe = cfg.pyswarm_executable()
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        from pyswarm.deploy.units import install_manager_unit

        install_manager_unit(exe)
        return
    log_path = cfg.state_dir() / "manager.log"
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        subprocess.Popen([exe, "manager", "run"], stdin=devnull, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True, env=os.environ.copy())


def wait_for_manager(timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            answer = rpc.call_unix(cfg.socket_path(), "ping", timeout=2)
            if answer.get("ready"):
                return dict(answer)
            last = None
        except PyswarmError as exc:
            last = exc
        time.sleep(0.1)
    tail = ""
    log_path = cfg.state_dir() / "manager.log"
    if log_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    raise ConnectionError_(f"the manager did not come up within {timeout:.0f}s ({last or 'not ready'})"
                           + (f"; last lines of {log_path}:\n{tail}" if tail else ""))


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


def write_manager_files(node_id: str, cluster_id: str, addr: str, manager: dict[str, Any], *,
                        api_port: int, raft_port: int, dns_port: int, dns_upstreams: list[str] | None) -> None:
    """What a host needs to run a manager of an existing cluster (join as
    manager, or promotion through the agent)."""
    state = cfg.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    key_path = state / "api_host_key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(manager["api_host_private_key"])
    shutil.rmtree(state / "raft", ignore_errors=True)  # a fresh replica catches up from the others
    cfg.save_manager_config(cfg.ManagerConfig(
        node_id=node_id, cluster_id=cluster_id, advertise_addr=addr, api_port=api_port,
        raft_port=raft_port, dns_port=dns_port, raft_secret=manager["raft_secret"],
        raft_peers=list(manager["raft_peers"]), dns_upstreams=dns_upstreams,
    ))


def leave(force: bool = False) -> None:
    """Forget the cluster on this host. A manager first demotes itself (with
    ``force``: leaving can cost the cluster its quorum), which stops its
    manager process; then the host forgets the cluster key and its identity."""
    node = cfg.load_node_config()
    if node is None:
        raise UsageError("this node is not part of a swarm")
    manager = cfg.load_manager_config()
    if manager is not None:
        if not force:
            raise UsageError("this node is a manager: leaving removes it from the Raft quorum; "
                             "demote it first (`pyswarm node demote`) or use `pyswarm leave --force`")
        rpc.call_unix(cfg.socket_path(), "node.demote", {"nodes": [node.node_id]})
        deadline = time.monotonic() + 15
        while cfg.load_manager_config() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if cfg.load_manager_config() is not None:
            raise ConnectionError_("demoted, but the manager did not stop within 15s; see its log")
    remove_cluster_key()  # no new session gets in
    _end_agent_sessions()  # and the open one stops converging this node
    (cfg.state_dir() / "node.json").unlink(missing_ok=True)
    asyncio.run(_remove_task_containers())


def _end_agent_sessions() -> None:
    """Stop this host's agents (``pyswarm worker --stdio`` under sshd): once
    the node leaves, a session still open would recreate what leave removes.
    Only processes in this host's mount namespace count (several lab hosts
    share one process table)."""
    import signal

    def mnt_ns(pid: str) -> str:
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            return ""

    mine = mnt_ns("self")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmdline and b"--stdio" in cmdline and mnt_ns(pid) == mine and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass


async def _remove_task_containers() -> int:
    """What this node ran for the cluster goes with it, as in Swarm (the
    managers reschedule it elsewhere once the node is down)."""
    from pyswarm import protocol
    from pyswarm.worker.docker import DockerClient

    try:
        async with DockerClient() as docker:
            found = await docker.list_containers({protocol.LABEL_TASK_ID: None})
            for c in found:
                await docker.remove_container(str(c["Id"]), force=True)
            return len(found)
    except (OSError, PyswarmError):
        return 0  # no engine to clean up here
