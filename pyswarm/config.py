"""Where a host keeps pyswarm's local state, and what it keeps there.

``/var/lib/pyswarm`` holds what must survive a reboot (the Raft log, this
host's identity in the cluster, the manager's SSH host key); ``/run/pyswarm``
holds the API socket. Both can be moved with environment variables, which is
how tests run several managers on one machine without the lab.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyswarm.models import Model
from pyswarm.paths import (  # re-exported: callers keep reading them from here
    pyswarm_executable as pyswarm_executable, run_dir as run_dir, socket_path as socket_path, state_dir as state_dir,
)

DEFAULT_API_PORT = 2377
DEFAULT_RAFT_PORT = 2378
DEFAULT_DNS_PORT = 53


def ssh_dir() -> Path:
    """root's ~/.ssh, where join installs the cluster's key."""
    return Path(os.environ.get("PYSWARM_SSH_DIR", str(Path.home() / ".ssh")))


def sshd_host_key_path() -> Path:
    return Path(os.environ.get("PYSWARM_SSHD_HOST_KEY", "/etc/ssh/ssh_host_ed25519_key.pub"))


@dataclass
class NodeConfig(Model):
    """This host's membership, written by init and join."""

    node_id: str
    cluster_id: str
    role: str
    addr: str
    managers: list[str] = field(default_factory=list)  # api addresses host:port


@dataclass
class ManagerConfig(Model):
    """What the manager daemon needs to start (and restart) on this host."""

    node_id: str
    cluster_id: str
    advertise_addr: str
    api_port: int = DEFAULT_API_PORT
    raft_port: int = DEFAULT_RAFT_PORT
    dns_port: int = DEFAULT_DNS_PORT
    raft_secret: str = ""
    raft_peers: list[str] = field(default_factory=list)
    # where DNS forwards names outside the cluster: None = this host's
    # /etc/resolv.conf, [] = nowhere (answer REFUSED)
    dns_upstreams: list[str] | None = None
    api_group: str = ""  # besides root, this group may use the API socket (init --api-group)
    bootstrap: dict[str, Any] = field(default_factory=dict)  # first start only


def make_private_dir(path: Path) -> None:
    """``path`` (and missing parents) as a root-only directory (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def harden(root: Path) -> None:
    """Make ``root`` and everything under it root-only (0700 directories,
    0600 files): state written by older versions, or under a laxer umask."""
    if not root.is_dir():
        return
    os.chmod(root, 0o700)
    for base, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(base, name), 0o700)
        for name in files:
            p = os.path.join(base, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & 0o700)


def _write_json(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    make_private_dir(path.parent)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def load_node_config() -> NodeConfig | None:
    path = state_dir() / "node.json"
    if not path.exists():
        return None
    return NodeConfig.from_dict(json.loads(path.read_text()))


def save_node_config(config: NodeConfig) -> None:
    _write_json(state_dir() / "node.json", config.to_dict())


def load_manager_config() -> ManagerConfig | None:
    path = state_dir() / "manager.json"
    if not path.exists():
        return None
    return ManagerConfig.from_dict(json.loads(path.read_text()))


def save_manager_config(config: ManagerConfig) -> None:
    _write_json(state_dir() / "manager.json", config.to_dict())
