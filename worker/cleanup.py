"""What leaving the cluster removes from this node's runtime side.

The agent's sessions and the task containers belong to the worker; the host
module (:mod:`pyswarm.host`) calls these when the node leaves.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyswarm.errors import PyswarmError


def end_agent_sessions() -> None:
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


async def remove_task_containers() -> int:
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
