"""What the agent does for the cluster beyond containers: fencing stale
leaders, and turning its host into a manager when promoted.

Fencing: every ``configure`` carries the sender's Raft term. The agent keeps
the highest term it has seen on this host (in the run directory, shared by
every agent process of the host), and a session from a lower term is a
deposed leader still talking: its assignments are ignored, so two leaders
can never both drive one node.

Promotion: a ``configure`` for a node whose role is manager carries what a
manager needs (the Raft secret and peers, the API host key). If this host
runs no manager yet, the agent writes the manager's files and starts it,
the same way ``pyswarm join`` does for a manager token.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pyswarm import config as cfg
from pyswarm import host

log = logging.getLogger(__name__)


def _term_path() -> Any:
    return cfg.run_dir() / "agent-term"


def accept_term(term: Any) -> bool:
    """Record ``term`` if it is the newest seen; False if it is older, or
    not an integer (fencing never guesses: pyswarm.protocol.Configure
    already refuses one)."""
    if term is None:
        return True  # a manager that does not send terms: nothing to fence with
    if isinstance(term, bool) or not isinstance(term, int):
        return False
    path = _term_path()
    try:
        seen = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        seen = 0
    if term < seen:
        return False
    if term > seen:
        # made root-only when missing, but an existing one is left as it is:
        # the manager opens it to the --api-group for its socket (the file
        # itself is 0600)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f"agent-term.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{term}\n")
        os.replace(tmp, path)
    return True


def _manager_alive() -> bool:
    return host.running_manager_pid() is not None


def become_manager(msg: dict[str, Any]) -> str:
    """See that this host runs a manager of the current cluster; return what was done.

    Nothing, when one runs with the current Raft secret. A manager state of
    an older cluster (rebuilt with --force-new-cluster since) is replaced,
    and a manager that is not running is started."""
    manager = msg["manager"]
    current = cfg.load_manager_config()
    if current is not None and current.raft_secret == manager.get("raft_secret"):
        if _manager_alive():
            return "already a manager"
        host.start_manager_service()
        return "manager restarted"
    if current is not None:
        host.stop_manager_process(timeout=15)
    node = cfg.load_node_config()
    addr = str(manager.get("addr") or (node.addr if node else ""))
    host.write_manager_files(
        str(msg["node_id"]), str(msg["cluster_id"]), addr, manager,
        api_port=int(manager.get("api_port", cfg.DEFAULT_API_PORT)),
        raft_port=int(manager.get("raft_port", cfg.DEFAULT_RAFT_PORT)),
        dns_port=int(manager.get("dns_port", cfg.DEFAULT_DNS_PORT)),
        dns_upstreams=manager.get("dns_upstreams"),
    )
    if node is not None:
        node.role = "manager"
        cfg.save_node_config(node)
    host.start_manager_service()
    return "manager started"

def retire_stray_manager() -> bool:
    """This host is not a manager of the leader's cluster, yet runs one: a
    manager left behind by --force-new-cluster (or demoted while cut off).
    Stop it and forget its state, so it cannot go on as a second cluster."""
    if cfg.load_manager_config() is None:
        return False
    host.stop_manager_process(timeout=15)
    host.retire_local_manager(cfg.state_dir())
    return True


def ensure_cluster_key(public_key: str, cluster_id: str) -> bool:
    """Keep root's authorized_keys on the cluster's current key (it changes
    when a cluster is rebuilt with --force-new-cluster). True if changed."""
    if not public_key:
        return False
    path = cfg.ssh_dir() / "authorized_keys"
    wanted = " ".join(public_key.split()[:2])
    try:
        if any(wanted in line and host.KEY_COMMENT in line for line in path.read_text().splitlines()):
            return False
    except FileNotFoundError:
        pass
    host.install_cluster_key(public_key, cluster_id)
    return True
