"""dns/process.py: the DNS server in a process of its own, on real sockets.

The manager's side (:class:`DnsProcess`) starts the child, feeds it the
table's changes and restarts it if it dies; dnspython asks it over UDP and
TCP from this process, as a container would."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rcode
import pytest
from dns_helpers import running
from factories import make_service

from pyswarm.dns import DnsBindError, TableCache
from pyswarm.dns.process import DnsProcess
from pyswarm.models import Cluster

T = TypeVar("T")


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


async def ask(port: int, name: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    send = dns.query.tcp if tcp else dns.query.udp
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: send(query, "127.0.0.1", port=port, timeout=5))


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in msg.answer for rd in rrset)


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            seen = await check()
        except Exception as exc:  # not up yet
            seen = repr(exc)
        else:
            if seen:
                return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen {seen!r}")


def test_answers_from_the_published_table_and_follows_its_changes(cluster: Cluster) -> None:
    web = make_service("web", stack="demo")
    cache = TableCache()

    async def go() -> None:
        child = DnsProcess(["127.0.0.1"], 0)
        child.publish(cache.update(cluster, [web], running(web, "10.240.1.2", "10.240.2.2")))
        await child.start()
        try:
            assert child.port != 0
            assert addresses(await ask(child.port, "web.demo")) == ["10.240.1.2", "10.240.2.2"]
            assert addresses(await ask(child.port, "web.demo.pyswarm", tcp=True)) == ["10.240.1.2", "10.240.2.2"]
            child.publish(cache.update(cluster, [web], running(web, "10.240.1.2", "10.240.2.2", "10.240.3.2")))
            await child.drain()

            async def three() -> bool:
                return len(addresses(await ask(child.port, "web.demo"))) == 3
            await until(three, 10, "the third replica in the answer")
            child.publish(cache.update(cluster, [], []))

            async def gone() -> bool:
                return (await ask(child.port, "web.demo.pyswarm")).rcode() == dns.rcode.NXDOMAIN
            await until(gone, 10, "web.demo.pyswarm to be NXDOMAIN once its service is gone")
        finally:
            pid = child.pid
            await child.stop()
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the child is gone, not left behind

    run(go)


def test_a_port_in_use_is_the_same_bind_error_as_in_process() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]

    async def go() -> None:
        with pytest.raises(DnsBindError) as err:
            await DnsProcess(["127.0.0.1"], port).start()
        assert f"127.0.0.1:{port}/udp" in str(err.value) and "already in use" in str(err.value)

    try:
        run(go)
    finally:
        taken.close()


def test_a_dead_child_is_replaced_and_gets_the_whole_table(cluster: Cluster) -> None:
    web = make_service("web", stack="demo")
    cache = TableCache()

    async def go() -> None:
        child = DnsProcess(["127.0.0.1"], 0)
        child.publish(cache.update(cluster, [web], running(web, "10.240.1.2")))
        await child.start()
        keeper = asyncio.ensure_future(child.run())
        try:
            first = child.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)

            # the new child answers as soon as it holds the table, which can be
            # before run() has read its "ready" and counted the restart
            async def back() -> bool:
                return child.restarts >= 1 and child.pid not in (None, first) and \
                    addresses(await ask(child.port, "web.demo")) == ["10.240.1.2"]
            await until(back, 20, "a new DNS process answering web.demo on the same port, its start counted")
            assert child.restarts == 1, f"{child.restarts} restarts after one kill"
        finally:
            await child.stop()
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    run(go)
