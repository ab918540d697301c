"""Helpers for the DNS tests: running tasks, address lists, and a DNS server
running on a loopback port in a thread of its own.

The server runs on its own event loop in a thread so that the tests can use
dnspython's ordinary blocking client, exactly as a user's program would,
and so that a client that hangs cannot hang the server.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factories import make_task  # noqa: E402

from pyswarm.dns import DnsServer, TableCache  # noqa: E402
from pyswarm.models import Service, Task, TaskState  # noqa: E402


def running(service: Service, *ips: str, **overrides: Any) -> list[Task]:
    """One running task of ``service`` per address, slots 1..n."""
    return [
        make_task(service, slot=i, state=TaskState.RUNNING, ip=ip, node_id="node-1", **overrides)
        for i, ip in enumerate(ips, start=1)
    ]


def ips(n: int, base: str = "10.240.1.") -> list[str]:
    """``n`` distinct addresses; past 250 they spill into the next /24."""
    prefix = base.rsplit(".", 2)[0]
    third = int(base.split(".")[2])
    return [f"{prefix}.{third + i // 250}.{i % 250 + 2}" for i in range(n)]


class ServerThread:
    """A started :class:`DnsServer` on 127.0.0.1, its loop in a thread."""

    def __init__(self, cache: TableCache, **kwargs: Any) -> None:
        self.cache = cache
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dns-test-server", daemon=True)
        self.thread.start()
        self.server = DnsServer(cache, ["127.0.0.1"], 0, **kwargs)
        self.call(self.server.start())
        self.port = self.server.port

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
