"""This host's own pyswarm state, in one place that manager/ and worker/ both use.

The cluster key in root's authorized_keys (restricted to the agent), the
sshd host key the managers pin, this host's manager process (start as a
service, stop, wait for, find, retire) and its state files, and leaving the
cluster. ``manager/`` (init, join, the daemon) and ``worker/`` (promotion,
fencing) both act on this host through here, so neither imports the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from pyswarm import config as cfg
from pyswarm import rpc
from pyswarm.errors import ConnectionError_, PyswarmError, UsageError

KEY_COMMENT = "pyswarm-cluster"


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



# -- this host's manager ------------------------------------------------------------


def start_manager_service() -> None:
    """Start ``pyswarm manager run`` so that it outlives this shell: a systemd
    unit where systemd runs, otherwise a detached process of its own session."""
    exe = cfg.pyswarm_executable()
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        from pyswarm.deploy.units import install_manager_unit

        install_manager_unit(exe)
        return
    log_path = cfg.state_dir() / "manager.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # root-only, like the state
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as log, open(os.devnull, "rb") as devnull:
        subprocess.Popen([exe, "manager", "run"], stdin=devnull, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True, env=os.environ.copy(), umask=0o077)


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


def wait_for_manager(timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            answer = rpc.call_unix(cfg.socket_path(), "ping", timeout=2)
            if answer.get("ready") or answer.get("locked"):  # locked: up, waiting for `swarm unlock`
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


def running_manager_pid() -> int | None:
    """The pid of this host's running manager, from its pid file, if alive."""
    try:
        pid = int((cfg.run_dir() / "manager.pid").read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ValueError):
        return None
    return None if stat.rsplit(")", 1)[-1].split()[0] == "Z" else pid


DATA_KEY_FILE = "data_key"  # the managers' data key (manager/sealing.py), 0600


def write_key_file(state_dir: Path, content: dict[str, Any]) -> None:
    """``{"key": base64}`` or, with autolock, ``{"locked": ...}`` (manager/autolock.py)."""
    path = state_dir / DATA_KEY_FILE
    cfg.make_private_dir(state_dir)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(content, fh)
    os.replace(tmp, path)


def read_key_file(state_dir: Path) -> dict[str, Any] | None:
    """The key file's content; None when there is none."""
    path = state_dir / DATA_KEY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PyswarmError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise PyswarmError(f"{path} is not a data key file")
    return data


def write_manager_files(node_id: str, cluster_id: str, addr: str, manager: dict[str, Any], *,
                        api_port: int, raft_port: int, dns_port: int, dns_upstreams: list[str] | None) -> None:
    """What a host needs to run a manager of an existing cluster (join as
    manager, or promotion through the agent)."""
    state = cfg.state_dir()
    cfg.make_private_dir(state)
    if manager.get("data_key"):
        write_key_file(state, {"key": str(manager["data_key"])})
    key_path = state / "api_host_key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(manager["api_host_private_key"])
    shutil.rmtree(state / "raft", ignore_errors=True)  # a fresh replica catches up from the others
    cfg.save_manager_config(cfg.ManagerConfig(
        node_id=node_id, cluster_id=cluster_id, advertise_addr=addr, api_port=api_port,
        raft_port=raft_port, dns_port=dns_port, raft_secret=manager["raft_secret"],
        raft_peers=list(manager["raft_peers"]), dns_upstreams=dns_upstreams,
        api_group=str(manager.get("api_group") or ""),  # the cluster's, set at init
    ))


def retire_local_manager(state_dir: Path) -> None:
    """Forget this host's manager state; the host stays a node of the cluster."""
    import shutil

    (state_dir / "manager.json").unlink(missing_ok=True)
    (state_dir / "api_host_key").unlink(missing_ok=True)
    (state_dir / DATA_KEY_FILE).unlink(missing_ok=True)
    shutil.rmtree(state_dir / "raft", ignore_errors=True)
    node = cfg.load_node_config()
    if node is not None:
        node.role = "worker"
        cfg.save_node_config(node)
    if Path("/run/systemd/system").is_dir():
        import subprocess

        subprocess.run(["systemctl", "disable", "pyswarm-manager.service"], capture_output=True)


def forget_local_state() -> None:
    state = cfg.state_dir()
    for name in ("node.json", "manager.json", "api_host_key", DATA_KEY_FILE):
        (state / name).unlink(missing_ok=True)
    shutil.rmtree(state / "raft", ignore_errors=True)
    remove_cluster_key()



# -- leaving -------------------------------------------------------------------------


# how long a demoted manager may take to retire (its agent hears of the role
# change from the new leader) once the demotion answered
LEAVE_TIMEOUT = 30.0


def leave(force: bool = False) -> None:
    """Forget the cluster on this host. A manager first demotes itself (with
    ``force``: leaving can cost the cluster its quorum), which stops its
    manager process; then the host forgets the cluster key and its identity."""
    from pyswarm.worker import cleanup

    node = cfg.load_node_config()
    if node is None:
        raise UsageError("this node is not part of a swarm")
    manager = cfg.load_manager_config()
    if manager is not None:
        if not force:
            raise UsageError("this node is a manager: leaving removes it from the Raft quorum; "
                             "demote it first (`pyswarm node demote`) or use `pyswarm leave --force`")
        with rpc.connect_unix(cfg.socket_path()) as conn:  # no manager running: its error, as it says
            try:
                conn.call("node.demote", {"nodes": [node.node_id]})
                lost = ""
            except ConnectionError_ as exc:
                # once out of Raft and a worker, the manager is stopped by this
                # host's agent (worker/promotion.py retire_stray_manager), which
                # may be before it answered: what counts is that it retires
                lost = str(exc)
        deadline = time.monotonic() + LEAVE_TIMEOUT
        while cfg.load_manager_config() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if cfg.load_manager_config() is not None:
            raise ConnectionError_(lost or f"demoted, but the manager did not stop within {LEAVE_TIMEOUT:.0f}s; "
                                   "see its log")
    remove_cluster_key()  # no new session gets in
    cleanup.end_agent_sessions()  # and the open one stops converging this node
    (cfg.state_dir() / "node.json").unlink(missing_ok=True)
    asyncio.run(cleanup.remove_task_containers())
