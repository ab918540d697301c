"""manager/daemon.py's DNS wiring: a real store and a real DNS process
(dns/process.py) fed by ``feed_dns``; dnspython asks it as a container would."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from factories import make_node, make_service, make_task  # noqa: E402
from test_store import free_port  # noqa: E402

from pyswarm.dns.process import DnsProcess  # noqa: E402
from pyswarm.manager.daemon import feed_dns  # noqa: E402
from pyswarm.manager.store import RaftConfig, Store  # noqa: E402
from pyswarm.models import Cluster, TaskState  # noqa: E402


async def answer(port: int, name: str) -> tuple[int, list[str]]:
    query = dns.message.make_query(name, "A")
    reply = await asyncio.get_running_loop().run_in_executor(
        None, lambda: dns.query.udp(query, "127.0.0.1", port=port, timeout=5))
    return reply.rcode(), sorted(rd.address for rrset in reply.answer for rd in rrset)


async def until(port: int, name: str, wanted: tuple[int, list[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen: object = None
    while time.monotonic() < deadline:
        seen = await answer(port, name)
        if seen == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}: wanted {wanted} within {timeout:.0f}s, last answer {seen}")


def test_the_dns_process_follows_the_store(tmp_path: Path) -> None:
    async def go() -> None:
        store = Store(RaftConfig(f"127.0.0.1:{free_port()}", [], tmp_path, "test-secret"))
        store.start()
        deadline = time.monotonic() + 10
        while not store.is_leader:
            assert time.monotonic() < deadline, f"no leader after 10s: {store.status()}"
            await asyncio.sleep(0.02)
        child = DnsProcess(["127.0.0.1"], 0)
        await child.start()
        feeding = asyncio.ensure_future(feed_dns(store, child))
        try:
            node = make_node()
            web = make_service("web", stack="demo")
            task = make_task(web, node_id=node.id, state=TaskState.RUNNING, ip="10.240.1.2")
            await store.commit([["put", "cluster", "c", Cluster(id="c").to_dict()],
                                ["put", "node", node.id, node.to_dict()],
                                ["put", "service", web.id, web.to_dict()], ["put", "task", task.id, task.to_dict()]])
            await until(child.port, "web.demo", (dns.rcode.NOERROR, ["10.240.1.2"]), 15)
            # a task-only change: the table follows it without a rebuild (DnsTables)
            more = make_task(web, node_id=node.id, state=TaskState.RUNNING, ip="10.240.1.3")
            await store.commit([["put", "task", more.id, more.to_dict()]])
            await until(child.port, "web.demo", (dns.rcode.NOERROR, ["10.240.1.2", "10.240.1.3"]), 15)
            await store.commit([["delete", "task", more.id]])
            # a replica going away leaves DNS: the name stays, without addresses (NODATA)
            await store.commit([["delete", "task", task.id]])
            await until(child.port, "web.demo", (dns.rcode.NOERROR, []), 15)
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            await child.stop()
            store.stop()

    asyncio.run(go())
