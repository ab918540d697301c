"""dnsperf against pyswarm's DNS server and dnsmasq, same names, same run.

Usage (needs the Debian packages dnsperf and dnsmasq-base)::

    .venv/bin/python bench/dns_dnsperf.py [--rates 2000,5000,10000,20000,40000] [--seconds 5]

Both servers listen on loopback and answer the same table: 20 services of
stack ``demo`` with 5 replicas each. The query mix, in dnsperf's input
format, is what containers send: service names (``svcN.demo.pyswarm``, the
search-domain form), ``tasks.`` names, unknown names in the zone
(NXDOMAIN) and names outside the zone, forwarded to a third server (a
dnsmasq "upstream" on loopback that answers them), in proportions 5:2:2:1.
pyswarm runs in a child process with its default settings (reply cache,
rotation, forwarding); dnsmasq is given the same names in a hosts file
(``--addn-hosts``), ``--local=/pyswarm/`` for NXDOMAIN and the same upstream.

For each rate (dnsperf ``-Q``, ``--seconds`` each, 4 sockets, at most 500
queries in flight) it prints queries/s completed, lost queries, average
latency and p99 latency (from dnsperf's per-query ``-v`` lines), and the
ratio of pyswarm's to dnsmasq's completed queries/s. Traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVICES, REPLICAS = 20, 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ip(i: int, r: int) -> str:
    return f"10.240.{i}.{r + 2}"


def _serve_pyswarm(port: int, upstream: int) -> None:  # pragma: no cover - child process
    import asyncio

    from pyswarm.dns import DnsServer, TableCache
    from pyswarm.models import Cluster, ContainerSpec, Service, ServiceSpec, Task, TaskState

    services = [Service(id=f"s{i}", spec=ServiceSpec(name=f"demo_svc{i}", stack="demo",
                                                     container=ContainerSpec(image="x")))
                for i in range(SERVICES)]
    tasks = [Task(id=f"t{i}-{r}", service_id=s.id, service_name=s.name, slot=r + 1, spec=s.spec.container,
                  state=TaskState.RUNNING, ip=ip(i, r))
             for i, s in enumerate(services) for r in range(REPLICAS)]
    cache = TableCache()
    cache.update(Cluster(id="bench"), services, tasks)

    async def main() -> None:
        server = DnsServer(cache, ["127.0.0.1"], port, upstreams=[f"127.0.0.1:{upstream}"])
        await server.run()

    asyncio.run(main())


def write_inputs(d: Path) -> tuple[Path, Path, Path]:
    hosts, ext, queries = d / "hosts", d / "ext-hosts", d / "queries"
    lines = []
    for i in range(SERVICES):
        for r in range(REPLICAS):
            lines.append(f"{ip(i, r)} svc{i}.demo.pyswarm tasks.svc{i}.demo.pyswarm")
    hosts.write_text("\n".join(lines) + "\n")
    ext.write_text("\n".join(f"192.0.2.{i + 1} ext{i}.example" for i in range(20)) + "\n")
    mix = []
    for k in range(200):
        i = k % SERVICES
        mix += [f"svc{i}.demo.pyswarm A"] * 5 + [f"tasks.svc{i}.demo.pyswarm A"] * 2
        mix += [f"nope{k}.demo.pyswarm A", f"gone{i}.demo.pyswarm A", f"ext{i}.example A"]
    queries.write_text("\n".join(mix) + "\n")
    return hosts, ext, queries


def dnsmasq(port: int, hosts: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    argv = ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--no-resolv", "--no-hosts", "--user=root",
            f"--addn-hosts={hosts}", "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}",
            "--cache-size=10000", "--pid-file=", "--log-facility=/dev/null", *extra]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_udp(port: int) -> None:
    import dns.message
    import dns.query

    deadline = time.monotonic() + 10
    while True:
        try:
            dns.query.udp(dns.message.make_query("svc0.demo.pyswarm", "A"), "127.0.0.1", port=port, timeout=0.5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_dnsperf(port: int, queries: Path, rate: int, seconds: int) -> dict[str, float]:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds),
            "-Q", str(rate), "-c", "4", "-q", "500", "-t", "2", "-v"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    got: dict[str, float] = {}
    if m := re.search(r"Queries per second:\s+([\d.]+)", out):
        got["qps"] = float(m.group(1))
    if m := re.search(r"Queries lost:\s+(\d+)", out):
        got["lost"] = float(m.group(1))
    if m := re.search(r"Average Latency \(s\):\s+([\d.]+)", out):
        got["avg_ms"] = float(m.group(1)) * 1000
    got["p99_ms"] = _p99(out)
    return got


def _p99(out: str) -> float:
    """p99 latency in ms from dnsperf's verbose lines (``> RCODE NAME TYPE SECONDS``)."""
    lat = sorted(float(line.rsplit(" ", 1)[1]) for line in out.splitlines()
                 if line.startswith("> ") and line.count(" ") >= 4)
    return lat[int(0.99 * (len(lat) - 1))] * 1000 if lat else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,5000,10000,20000,40000")
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install dnsperf dnsmasq-base", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="psw-dnsperf-"))
    hosts, ext, queries = write_inputs(tmp)
    up_port, ps_port, dm_port = free_port(), free_port(), free_port()
    upstream = dnsmasq(up_port, ext, [])
    masq = dnsmasq(dm_port, hosts, ["--local=/pyswarm/", f"--server=127.0.0.1#{up_port}"])
    child = multiprocessing.get_context("spawn").Process(target=_serve_pyswarm, args=(ps_port, up_port), daemon=True)
    child.start()
    try:
        wait_udp(ps_port)
        wait_udp(dm_port)
        print(f"mix: 50% service names, 20% tasks. names, 20% NXDOMAIN, 10% forwarded; "
              f"{SERVICES} services x {REPLICAS} replicas; {args.seconds}s per rate")
        print(f"{'rate':>7} | {'pyswarm qps':>11} {'lost':>6} {'avg ms':>7} {'p99 ms':>7} | "
              f"{'dnsmasq qps':>11} {'lost':>6} {'avg ms':>7} {'p99 ms':>7} | ratio")
        for rate in (int(r) for r in args.rates.split(",")):
            a = run_dnsperf(ps_port, queries, rate, args.seconds)
            b = run_dnsperf(dm_port, queries, rate, args.seconds)
            ratio = a.get("qps", 0) / b["qps"] if b.get("qps") else float("nan")
            print(f"{rate:>7} | {a.get('qps', 0):>11.0f} {a.get('lost', 0):>6.0f} {a.get('avg_ms', 0):>7.3f} "
                  f"{a.get('p99_ms', 0):>7.3f} | {b.get('qps', 0):>11.0f} {b.get('lost', 0):>6.0f} "
                  f"{b.get('avg_ms', 0):>7.3f} {b.get('p99_ms', 0):>7.3f} | {ratio:5.2f}", flush=True)
    finally:
        child.kill()
        for p in (masq, upstream):
            p.send_signal(signal.SIGTERM)
            p.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
