"""The leader's CPU per heartbeat round trip over asyncssh: one sleeping task
per session (the dispatcher before) against one loop pinging the due
sessions in bursts (manager/dispatcher.py ``Dispatcher._heartbeat``), in
the same run, on loopback.

A child process serves N SSH sessions that answer each ping with a pong
(as nodesim's fake agents do); this process opens them with the
dispatcher's ciphers and pings RATE times a second in all, then reads its
own CPU time (getrusage) over SECONDS. No lab, no root needed.

    .venv/bin/python bench/heartbeat_cost.py --sessions 200 --rate 200 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from typing import Any

import asyncssh

from pyswarm import protocol
from pyswarm.manager.dispatcher import ENCRYPTION_ALGS


async def serve(port: int) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")

    class Open(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    async def agent(process: Any) -> None:
        while line := await process.stdin.readline():
            process.stdout.write(protocol.encode({"op": "pong", "seq": protocol.decode(line).get("seq")}))

    server = await asyncssh.create_server(Open, "127.0.0.1", port, server_host_keys=[key], process_factory=agent,
                                          encoding=None, line_editor=False, keepalive_interval=0)
    print("ready", flush=True)
    await server.wait_closed()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


MODES = (("a task per session", None), ("bursts every 0.25 s", 0.25), ("bursts every 1 s", 1.0))


async def measure_all(port: int, sessions: int, rate: float, seconds: float) -> dict[str, float]:
    """Leader CPU seconds per round trip of each of :data:`MODES`, over the same sessions."""
    conns, procs = [], []
    for _ in range(sessions):
        conn = await asyncssh.connect("127.0.0.1", port, username="bench", known_hosts=None, agent_path=None,
                                      config=[], encryption_algs=ENCRYPTION_ALGS, client_keys=None)
        conns.append(conn)
        procs.append(await conn.create_process("agent", encoding=None))
    readers = [asyncio.ensure_future(_read(p)) for p in procs]
    out = {name: await _measure(procs, rate, seconds, burst) for name, burst in MODES}
    for t in readers:
        t.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for conn in conns:
        conn.close()
    return out


async def _read(p: Any) -> None:
    buf = b""
    while chunk := await p.stdout.read(65536):
        buf += chunk
        *lines, buf = buf.split(b"\n")


async def _measure(procs: list[Any], rate: float, seconds: float, burst: float | None) -> float:
    """``burst``: the tick of the one-loop heartbeat; None: one sleeping task per session."""
    sessions = len(procs)

    async def one(i: int, p: Any) -> None:
        period = sessions / rate
        await asyncio.sleep(period * i / sessions)
        seq = 0
        while True:
            await asyncio.sleep(period)
            seq += 1
            p.stdin.write(protocol.encode({"op": "ping", "seq": seq}))

    async def bursts(tick: float) -> None:
        i, owed, seq = 0, 0.0, 0
        while True:
            await asyncio.sleep(tick)
            owed += rate * tick
            seq += 1
            while owed >= 1:
                owed -= 1
                procs[i].stdin.write(b'{"op":"ping","seq":%d}\n' % seq)
                i = (i + 1) % sessions

    if burst is None:
        tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(procs)]
    else:
        tasks = [asyncio.ensure_future(bursts(burst))]
    await asyncio.sleep(2)
    c0, t0 = cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    used, took = cpu() - c0, time.monotonic() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return used / (rate * took)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--rate", type=float, default=200.0, help="pings a second over all sessions")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--port", type=int, default=22990)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.port))
        return 0
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(args.port)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            print("heartbeat_cost: the session server did not start", file=sys.stderr)
            return 1
        print(f"load average {os.getloadavg()[0]:.1f}; {args.sessions} sessions, {args.rate:g} pings/s, "
              f"{args.seconds:g} s each")
        figures = asyncio.run(measure_all(args.port, args.sessions, args.rate, args.seconds))
        for name in figures:
            print(f"  {name:22s} {figures[name] * 1e6:6.0f} us of leader CPU a round trip "
                  f"({figures[name] * args.rate * 100:.1f} % of a core)")
        base = figures["a task per session"]
        for name in list(figures)[1:]:
            print(f"  {name} / a task per session: {figures[name] / base:.2f}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        child.kill()
        child.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
