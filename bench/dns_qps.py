"""Queries per second of pyswarm's DNS server over UDP on loopback.

Usage::

    .venv/bin/python bench/dns_qps.py [--count 50000] [--window 64] [--replicas 5]
    .venv/bin/python bench/dns_qps.py --server 127.0.0.1:5353   # an already running server

Without ``--server`` it starts a DnsServer in a child process (so that the
client does not share the server's GIL) with a table of one stack of 20
services, and sends a mix of names: service names (A), ``tasks.`` names,
AAAA for a known name (NODATA) and unknown names (NXDOMAIN). The client
keeps ``--window`` queries in flight on one socket and prints queries/s and
latency percentiles. A bounded count, not a duration, so a run always ends.
This is a quick figure for development; issue 6's dnsperf comparison is the
recorded benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import time

import dns.message

MIX = [
    ("svc0.demo.pyswarm", "A"),
    ("svc1.demo", "A"),
    ("tasks.svc2.demo.pyswarm", "A"),
    ("demo_svc3", "A"),
    ("svc4.demo.pyswarm", "AAAA"),
    ("nope.demo.pyswarm", "A"),
]


def _serve(port_out: multiprocessing.Queue[int], replicas: int) -> None:  # pragma: no cover - child
    from pyswarm.dns import DnsServer, TableCache
    from pyswarm.models import ContainerSpec, Cluster, Service, ServiceSpec, Task, TaskState

    services = [Service(id=f"s{i}", spec=ServiceSpec(name=f"demo_svc{i}", stack="demo",
                                                     container=ContainerSpec(image="x")))
                for i in range(20)]
    tasks = [Task(id=f"t{i}-{r}", service_id=s.id, service_name=s.name, slot=r, spec=s.spec.container,
                  state=TaskState.RUNNING, ip=f"10.240.{i}.{r + 2}")
             for i, s in enumerate(services) for r in range(replicas)]
    cache = TableCache()
    cache.update(Cluster(id="bench"), services, tasks)

    async def main() -> None:
        server = DnsServer(cache, ["127.0.0.1"], 0)
        await server.start()
        port_out.put(server.port)
        await server.run()

    asyncio.run(main())


def measure(host: str, port: int, count: int, window: int) -> tuple[float, list[float], int]:
    wires = []
    for name, rdtype in MIX:
        q = dns.message.make_query(name, rdtype)
        q.id = 0
        wires.append(q.to_wire())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    sent = lost = 0
    next_id = 1
    start = time.perf_counter()
    while len(latencies) + lost < count:
        while sent < count and len(sent_at) < window:
            ident = next_id
            next_id = next_id % 65535 + 1
            wire = wires[sent % len(wires)]
            sock.send(ident.to_bytes(2, "big") + wire[2:])
            sent_at[ident] = time.perf_counter()
            sent += 1
        if not sel.select(1.0):
            lost += len(sent_at)  # nothing for a second: count what is in flight as lost
            sent_at.clear()
            continue
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            t0 = sent_at.pop(int.from_bytes(data[:2], "big"), None)
            if t0 is not None:
                latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    sock.close()
    sel.close()
    return len(latencies) / elapsed, latencies, lost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--window", type=int, default=64, help="queries in flight")
    ap.add_argument("--replicas", type=int, default=5, help="running tasks per service (own server only)")
    ap.add_argument("--server", help="HOST:PORT of a running server instead of starting one")
    args = ap.parse_args(argv)

    child = None
    if args.server:
        host, _, p = args.server.rpartition(":")
        port = int(p)
    else:
        ctx = multiprocessing.get_context("spawn")
        ports: multiprocessing.Queue[int] = ctx.Queue()
        child = ctx.Process(target=_serve, args=(ports, args.replicas), daemon=True)
        child.start()
        host, port = "127.0.0.1", ports.get(timeout=30)
    try:
        measure(host, port, min(2000, args.count), args.window)  # warm up
        qps, lat, lost = measure(host, port, args.count, args.window)
    finally:
        if child is not None:
            child.terminate()
            child.join(10)
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    print(f"python {sys.version.split()[0]} on {os.cpu_count()} cpus, {args.count} queries, "
          f"window {args.window}, mix of {len(MIX)} names")
    print(f"{qps:,.0f} queries/s  latency ms: p50 {pct(0.5):.2f}  p99 {pct(0.99):.2f}  "
          f"mean {statistics.fmean(lat) * 1000:.2f}  lost {lost}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
