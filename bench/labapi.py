"""What the single-orchestrator bench scripts (deploy_scale, healing,
update_rolling) share: the lab's first manager through its API socket, a
scratch directory, and waiting on a condition with a deadline; and what
every bench that serves on loopback takes its ports from (free_ports).

Imported as ``labapi``: the scripts run from bench/, which Python puts first
on ``sys.path``.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyswarm import rpc
from pyswarm.deploy.lab_core import Lab


def free_ports(n: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> list[int]:
    """``n`` distinct loopback ports that were free when asked (each held until
    all are found, so they differ); ``kind`` SOCK_DGRAM for UDP servers."""
    socks = [socket.socket(socket.AF_INET, kind) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class LabBench:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.manager = lab.managers[0]
        self.socket = lab.host(self.manager).private("/run/pyswarm/manager.sock")
        self.dir = Path(tempfile.mkdtemp(prefix="pyswarm-bench-"))

    def api(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return rpc.call_unix(self.socket, method, params or {})

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 180) -> Any:
        """Poll every 20 ms until ``predicate()`` is truthy; return that value."""
        start = time.monotonic()
        while not (value := predicate()):
            if time.monotonic() - start > timeout:
                raise SystemExit(f"bench: {what} not reached in {timeout:.0f}s")
            time.sleep(0.02)
        return value
