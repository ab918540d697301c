"""The DNS server in a process of its own, fed the name table's changes.

Why a process: in the manager's process DNS shared the GIL and the event
loop with the planners' thread, the Raft thread applying and pickling big
transactions, and the API. While the leader planned 100,000 tasks a query
waited 150-650 ms for the interpreter (bench/scale_store.py), however cheap
answering it is. A process has its own interpreter: it answers from its own
copy of the table whatever the manager is busy with, and the kernel
schedules it as soon as a query arrives.

The manager keeps building the table from its store replica (it is the
only one who reads the store) and sends what changed down the child's stdin
(:mod:`.feed`: checked JSON lines). The child binds the sockets itself and
says so on its stdout, one JSON line: ``{"ready": PORT}`` or ``{"error":
{...}}`` for a bind failure, which :meth:`DnsProcess.start` raises as the
same :class:`~pyswarm.dns.errors.DnsBindError` an in-process server would.
The child ends when its stdin closes, so it never outlives the manager (a
SIGKILLed manager closes the pipe too); if the child dies, :meth:`run`
starts a new one and sends it the whole table.

The answering rules (refusal, forwarding, views, UDP and TCP) are the ones
of :class:`~pyswarm.dns.server.DnsServer`, which the child runs unchanged.

Run by the manager as ``python -P -m pyswarm.dns.process CONFIG_JSON``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyswarm import wire

from . import feed
from .errors import DnsBindError, DnsError
from .records import NameTable
from .server import ADDRESS_IN_USE, DnsServer

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds for the child to import and bind (a loaded machine is slow)
RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)
IN_USE_GRACE = 5.0  # seconds a port in use is tried again at start
LINE_LIMIT = 256 << 20  # bytes of one message (a chunk of CHUNK entries is a few MB)


@dataclass(frozen=True)
class ChildConfig:
    """What the child is started with (its argv, checked like any message)."""

    addresses: list[str] = field(metadata=wire.rule(max_len=16))
    port: int = field(metadata=wire.rule(min=0, max=65535))
    upstreams: list[str] = field(default_factory=list, metadata=wire.rule(max_len=16))


class DnsProcess:
    """The manager's handle on its DNS process: start, publish, run, stop.

    :meth:`publish` is cheap enough for the store watch: it diffs the new
    table against the last one sent and writes the difference to a pipe.
    """

    def __init__(self, addresses: list[str], port: int = 53, *, upstreams: Iterable[str] = ()) -> None:
        if not addresses:
            raise ValueError("DnsProcess needs at least one address to listen on")
        self.addresses = list(addresses)
        self.port = port
        self.upstreams = [str(u) for u in upstreams]
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._latest: NameTable | None = None
        self._sent: NameTable | None = None
        self._stopping = False

    def _argv(self) -> list[str]:
        config = {"addresses": self.addresses, "port": self.port, "upstreams": self.upstreams}
        return [sys.executable, "-P", "-m", "pyswarm.dns.process", json.dumps(config)]

    async def start(self) -> None:
        """Start the child and wait until it listens; raise
        :class:`DnsBindError` (naming address, port and cause) if it cannot.

        A port in use is tried again for a few seconds: the child of a
        manager that was just killed may still be closing its sockets."""
        deadline = time.monotonic() + IN_USE_GRACE
        while True:
            try:
                return await self._start()
            except DnsBindError as exc:
                if exc.reason != ADDRESS_IN_USE or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.25)

    async def _start(self) -> None:
        self._stopping = False
        proc = await asyncio.create_subprocess_exec(
            *self._argv(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True)  # a Ctrl-C to the manager's terminal is the manager's to handle
        assert proc.stdout is not None and proc.stdin is not None
        # the whole table first: the child says ready once it answers from it
        self._proc, self._sent = proc, None
        self.publish(self._latest if self._latest is not None else NameTable())
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except asyncio.TimeoutError:
            line = b""
        try:
            said = json.loads(line) if line else {}
        except ValueError:
            said = {}
        if not isinstance(said, dict) or not isinstance(said.get("ready"), int):
            self._proc = None
            await _end(proc)
            err = said.get("error") if isinstance(said, dict) else None
            if isinstance(err, dict):
                raise DnsBindError(str(err.get("address", "")), int(err.get("port", self.port)),
                                   str(err.get("proto", "")), str(err.get("reason", "")))
            raise DnsError(f"the DNS process did not start (said {line[:200]!r}, exit {proc.returncode})")
        self.port = int(said["ready"])  # a restart binds the port the first start got (port 0: tests)

    def publish(self, table: NameTable) -> None:
        """Make ``table`` the one answered from: send what changed since the
        last table sent (the whole table to a new child)."""
        self._latest = table
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None or table is self._sent:
            return
        for message in feed.changes(self._sent, table):
            proc.stdin.write(message)
        self._sent = table

    async def send(self, table: NameTable) -> None:
        """:meth:`publish` for the loop that feeds every change: the diff
        (every name compared, ~100 ms at 100,000 tasks) is made in a thread;
        only the writes run on the loop. A child started meanwhile gets the
        whole table from :meth:`_start`, so a diff against what it never had
        is dropped."""
        base = self._sent
        if table is base:
            return
        messages = await asyncio.to_thread(lambda: list(feed.changes(base, table)))
        proc = self._proc
        if self._sent is not base or proc is None or proc.stdin is None or proc.returncode is not None:
            self.publish(table)
            return
        self._latest = table
        for message in messages:
            proc.stdin.write(message)
        self._sent = table

    async def drain(self) -> None:
        """Wait until the child has taken what was published (flow control)."""
        proc = self._proc
        if proc is not None and proc.stdin is not None and proc.returncode is None:
            try:
                await proc.stdin.drain()
            except (ConnectionError, BrokenPipeError):
                pass  # the child died: run() starts another

    async def run(self) -> None:
        """Keep a child running until :meth:`stop` (start it first)."""
        failures: list[float] = []
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                log.warning("DNS process exited (code %s): starting another", code)
                self._proc = None
            now = time.monotonic()
            failures = [t for t in failures if now - t < 60] + [now]
            await asyncio.sleep(RESTART_BACKOFF[min(len(failures), len(RESTART_BACKOFF)) - 1])
            try:
                await self.start()
                self.restarts += 1
            except DnsError as exc:
                log.error("DNS process could not start again: %s", exc)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def stop(self) -> None:
        self._stopping = True
        proc, self._proc = self._proc, None
        if proc is not None:
            await _end(proc)


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Close the child's stdin (it ends by itself), then terminate, then kill."""
    if proc.stdin is not None:
        proc.stdin.close()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            break
        if sig is not None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                break
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except asyncio.TimeoutError:
            continue
    if proc.returncode is None:
        await proc.wait()


# -- the child ---------------------------------------------------------------

def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _serve(config: ChildConfig) -> int:

    receiver = feed.Receiver()
    server = DnsServer(receiver, config.addresses, config.port, upstreams=config.upstreams)
    try:
        await server.start()
    except DnsBindError as exc:
        _say({"error": {"address": exc.address, "port": exc.port, "proto": exc.proto, "reason": exc.reason}})
        return 1
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    if await _read(reader, receiver, until_installed=True) != 0:  # the whole table, then answer
        await server.stop()
        return 2
    _say({"ready": server.port})
    reading = asyncio.ensure_future(_read(reader, receiver))
    stopped = asyncio.ensure_future(done.wait())
    try:
        await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reading.cancel()
        stopped.cancel()
        await server.stop()
    return reading.result() if reading.done() and not reading.cancelled() else 0


async def _read(reader: asyncio.StreamReader, receiver: feed.Receiver, until_installed: bool = False) -> int:
    """Apply messages until the manager closes the pipe (0; with
    ``until_installed``, until a table is installed), or one fails its
    check (2: the manager starts a new child and sends the whole table)."""
    while True:
        line = await reader.readline()
        if not line:
            return 1 if until_installed else 0
        try:
            installed = receiver.apply(feed.parse(line))
        except wire.BadRequest as exc:
            log.error("DNS process: a table change from the manager failed its check: %s", exc)
            return 2
        if installed and until_installed:
            return 0


DNS_NICE = -10  # the answer is what a container waits on; planning and applies can wait a little


def _before_the_rest() -> None:
    """Wake first when a query arrives: on a busy host the scheduler, not
    pyswarm, set DNS's tail (p99 5.8 ms during a 20,000-task scale at nice 0
    against 1.1 ms at rest). Only root may raise a priority; elsewhere this
    is left as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, DNS_NICE)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the manager decides when DNS stops
    _before_the_rest()
    try:
        config = wire.parse(ChildConfig, json.loads(args[0]) if args else None)
    except (ValueError, wire.BadRequest) as exc:
        print(f"pyswarm DNS process: bad configuration: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config))


if __name__ == "__main__":  # pragma: no cover - the child's entry point
    os.umask(0o077)
    sys.exit(main())
