"""dnsperf against pyswarm's DNS server, dnsmasq and Docker's embedded DNS, same names, same run.

Usage (needs the Debian packages dnsperf and dnsmasq-base; ``--docker`` needs root)::

    .venv/bin/python bench/dns_dnsperf.py [--rates 2000,5000,10000,20000,40000] [--seconds 5] [--docker]

pyswarm and dnsmasq listen on loopback and answer the same table: 20
services of stack ``demo`` with 5 replicas each. The query mix, in dnsperf's
input format, is what containers send: service names (``svcN.demo.pyswarm``,
the search-domain form), ``tasks.`` names, unknown names in the zone
(NXDOMAIN) and names outside the zone, forwarded to a third server (a
dnsmasq "upstream" on loopback that answers them), in proportions 5:2:2:1.
pyswarm runs in a child process with its default settings (reply cache,
rotation, forwarding); dnsmasq is given the same names in a hosts file
(``--addn-hosts``), ``--local=/pyswarm/`` for NXDOMAIN and the same upstream.

``--docker`` adds, in the same run, a private lab (``psbdns``, 1 manager +
1 worker on 10.250.15.0/24) and two more servers:

- **Docker's embedded DNS** (127.0.0.11) on worker1's engine: a user-defined
  network with 5 containers, each carrying the 40 names of the mix as
  network aliases, so every service name answers 5 addresses as above.
  dnsperf runs in one container's network namespace (``nsenter --net``).
  Docker has no notion of a zone: it forwards every name it does not hold,
  so the NXDOMAIN names go to its upstream too (a dnsmasq on worker1's
  address, ``docker run --dns``, answering them as the others do).
- **pyswarm inside a manager** (manager1's own server, the Raft thread and
  the leader's loops beside it), asked from the lab bridge: a stack of 4
  services × 2 replicas, the mix rewritten to those 4 services; the lab's
  managers run with ``--dns-upstream none``, so the outside names are
  answered REFUSED there instead of forwarded.

Every server first gets one warm-up second at 2,000 q/s. Before each
server's run the machine must be 80% idle for 3 s (a lab coming up, or a
server still working off the previous run's backlog, keeps the cores busy
for a while). For each rate (dnsperf ``-Q``, ``--seconds`` each, 4 sockets,
at most 500 queries in flight) it prints the load average, then per server queries/s
completed, lost queries, average and p99 latency (from dnsperf's per-query
``-v`` lines) and the server process's CPU time per completed query (µs,
user + system from /proc: dockerd for Docker's, the whole manager process
for the manager; the upstream's share of a forwarded query is not counted),
and the ratios of pyswarm's completed queries/s to dnsmasq's and to
Docker's. Traffic stays on 127.0.0.1 and the lab's addresses.
"""

from __future__ import annotations

import argparse
import json
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
from collections.abc import Callable
from pathlib import Path

from labapi import free_ports  # bench/ is the script's directory, first on sys.path

SERVICES, REPLICAS = 20, 5


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


def query_mix(services: int = SERVICES) -> list[str]:
    """The queries, 5:2:2:1 service names, tasks. names, NXDOMAIN, outside."""
    mix = []
    for k in range(200):
        i = k % services
        mix += [f"svc{i}.demo.pyswarm A"] * 5 + [f"tasks.svc{i}.demo.pyswarm A"] * 2
        mix += [f"nope{k}.demo.pyswarm A", f"gone{i}.demo.pyswarm A", f"ext{i}.example A"]
    return mix


def write_inputs(d: Path) -> tuple[Path, Path, Path]:
    hosts, ext, queries = d / "hosts", d / "ext-hosts", d / "queries"
    lines = []
    for i in range(SERVICES):
        for r in range(REPLICAS):
            lines.append(f"{ip(i, r)} svc{i}.demo.pyswarm tasks.svc{i}.demo.pyswarm")
    hosts.write_text("\n".join(lines) + "\n")
    ext.write_text("\n".join(f"192.0.2.{i + 1} ext{i}.example" for i in range(20)) + "\n")
    queries.write_text("\n".join(query_mix()) + "\n")
    return hosts, ext, queries


def dnsmasq(port: int, hosts: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    argv = ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--no-resolv", "--no-hosts", "--user=root",
            f"--addn-hosts={hosts}", "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}",
            "--cache-size=10000", "--pid-file=", "--log-facility=/dev/null", *extra]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_idle_share(seconds: float) -> float:
    """The machine's idle CPU share over ``seconds`` (from /proc/stat)."""
    def idle_total() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)
    i0, t0 = idle_total()
    time.sleep(seconds)
    i1, t1 = idle_total()
    return (i1 - i0) / max(1, t1 - t0)


def settle(progress: Callable[[str], None], idle: float = 0.8, timeout: float = 90) -> float:
    """Wait until the machine is at least ``idle`` idle for 3 s running (a
    lab coming up keeps both cores busy for a while, and latency measured
    then is the lab's, not the server's); give up after ``timeout`` and say
    so. Returns the idle share last seen."""
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        seen = cpu_idle_share(3.0)
        if seen >= idle:
            return seen
    progress(f"machine still busy after {timeout:.0f}s ({seen:.0%} idle); measuring anyway")
    return seen


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


def run_dnsperf(port: int, queries: Path, rate: int, seconds: int, server: str = "127.0.0.1",
                prefix: tuple[str, ...] = ()) -> dict[str, float]:
    argv = [*prefix, "dnsperf", "-s", server, "-p", str(port), "-d", str(queries), "-l", str(seconds),
            "-Q", str(rate), "-c", "4", "-q", "500", "-t", "2", "-v"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    got: dict[str, float] = {}
    if m := re.search(r"Queries per second:\s+([\d.]+)", out):
        got["qps"] = float(m.group(1))
    if m := re.search(r"Queries completed:\s+(\d+)", out):
        got["completed"] = float(m.group(1))
    if m := re.search(r"Queries lost:\s+(\d+)", out):
        got["lost"] = float(m.group(1))
    if m := re.search(r"Average Latency \(s\):\s+([\d.]+)", out):
        got["avg_ms"] = float(m.group(1)) * 1000
    got["p99_ms"] = _p99(out)
    return got


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run()``'s figures plus the server's CPU time per completed query
    (µs): unlike latency, it hardly depends on what else the machine runs.
    Starts on an idle machine: a server left with a backlog by the previous
    run (Docker's, at rates it cannot keep up with) must not tax the next."""
    settle(lambda msg: print(msg, flush=True))
    before = cpu_seconds(pid)
    got = run()
    done = got.get("completed", 0)
    got["cpu_us"] = (cpu_seconds(pid) - before) / done * 1e6 if done else float("nan")
    return got


def _p99(out: str) -> float:
    """p99 latency in ms from dnsperf's verbose lines (``> RCODE NAME TYPE SECONDS``)."""
    lat = sorted(float(line.rsplit(" ", 1)[1]) for line in out.splitlines()
                 if line.startswith("> ") and line.count(" ") >= 4)
    return lat[int(0.99 * (len(lat) - 1))] * 1000 if lat else float("nan")


LAB_NAME, LAB_SUBNET, LAB_DIR = "psbdns", "10.250.15.0/24", "/var/lib/pyswarm-bench-dns"
IMAGE = "pyswarm-lab/busybox:latest"
DOCKER_CONTAINERS, MANAGER_SERVICES, MANAGER_REPLICAS = 5, 4, 2


class LabSide:
    """Docker's embedded DNS and a lab manager's DNS, ready for dnsperf."""

    def __init__(self, tmp: Path, ext_hosts: Path) -> None:
        from pyswarm.deploy.lab_core import Lab

        self.lab = Lab(LAB_DIR, name=LAB_NAME, subnet=LAB_SUBNET)
        self.tmp = tmp
        self.ext_hosts = ext_hosts
        self.upstream: subprocess.Popen[bytes] | None = None
        self.client_pid = self.dockerd_pid = self.manager_pid = 0
        self.manager_addr = ""
        self.manager_queries = tmp / "queries-manager"

    def up(self) -> None:
        lab = self.lab
        lab.up(managers=1, workers=1, cluster=True)
        worker, manager = lab.workers[0], lab.managers[0]
        waddr, self.manager_addr = lab.hosts[worker], lab.hosts[manager]
        # Docker's upstream: a dnsmasq on worker1's address that answers the
        # outside names and says NXDOMAIN for the zone (Docker forwards both)
        argv, env = lab.exec_argv(worker)
        self.upstream = subprocess.Popen(
            [*argv, "dnsmasq", "--keep-in-foreground", "--no-daemon", "--no-resolv", "--no-hosts", "--user=root",
             f"--addn-hosts={self.ext_hosts}", f"--listen-address={waddr}", "--bind-interfaces", "--port=53",
             "--cache-size=10000", "--pid-file=", "--log-facility=/dev/null", "--local=/pyswarm/"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lab.docker(worker, "network", "create", "psbench")
        aliases = [a for i in range(SERVICES) for a in ("--network-alias", f"svc{i}.demo.pyswarm",
                                                        "--network-alias", f"tasks.svc{i}.demo.pyswarm")]
        for c in range(DOCKER_CONTAINERS):
            lab.docker(worker, "run", "-d", "--name", f"r{c}", "--network", "psbench", "--dns", waddr, *aliases,
                       IMAGE, "sleep", "3600", timeout=120)
        self.client_pid = int(lab.docker(worker, "inspect", "-f", "{{.State.Pid}}", "r0").stdout.strip())
        # the embedded DNS runs inside dockerd; the manager's DNS inside the manager process
        self.dockerd_pid = int(lab.exec(worker, ["cat", "/run/docker.pid"]).stdout.strip())
        self.manager_pid = int(lab.exec(manager, ["cat", "/run/pyswarm/manager.pid"]).stdout.strip())
        # the manager: a stack of MANAGER_SERVICES x MANAGER_REPLICAS sleeping tasks
        stack = self.tmp / "stack.yml"
        stack.write_text("services:\n" + "".join(
            f"  svc{i}:\n    image: {IMAGE}\n    command: [sleep, '3600']\n"
            f"    deploy: {{replicas: {MANAGER_REPLICAS}}}\n" for i in range(MANAGER_SERVICES)))
        lab.pyswarm(manager, "stack", "deploy", "-c", str(stack), "demo", timeout=120)
        self.manager_queries.write_text("\n".join(query_mix(MANAGER_SERVICES)) + "\n")
        self._wait(lambda: self._manager_count(f"svc{MANAGER_SERVICES - 1}.demo.pyswarm") == MANAGER_REPLICAS,
                   "the manager to answer the last service with every replica")
        self._wait(lambda: self._docker_count("svc0.demo.pyswarm") == DOCKER_CONTAINERS,
                   "Docker's embedded DNS to answer svc0 with every container")
        self._wait(lambda: self._docker_count("ext3.example") == 1, "Docker's embedded DNS to forward ext3.example")

    def _manager_count(self, name: str) -> int:
        """How many addresses the lab manager's DNS answers for ``name``."""
        import dns.message
        import dns.query

        try:
            msg = dns.query.udp(dns.message.make_query(name, "A"), self.manager_addr, port=53, timeout=1)
        except Exception:
            return 0
        return sum(len(rrset) for rrset in msg.answer)

    def _docker_count(self, name: str) -> int:
        """How many addresses Docker's embedded DNS answers for ``name`` (dig in the container's netns)."""
        argv = [*self.docker_prefix(), "dig", "+short", "+tries=1", "+time=1", "@127.0.0.11", name]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        return len([ln for ln in out.split() if ln[:1].isdigit()])

    @staticmethod
    def _wait(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)

    def docker_prefix(self) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.client_pid}/ns/net", "--"]

    def down(self) -> None:
        if self.upstream is not None:
            self.upstream.kill()
            self.upstream.wait(5)
        self.lab.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,5000,10000,20000,40000")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--docker", action="store_true",
                        help="also Docker's embedded DNS and a lab manager's DNS (a private lab; root)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the figures there: {rates: [{rate, load, servers: {NAME: {qps, p99_ms, ...}}}]}")
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq") + (("dig", "nsenter") if args.docker else ()):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install dnsperf dnsmasq-base dnsutils", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="psw-dnsperf-"))
    os.chmod(tmp, 0o755)
    hosts, ext, queries = write_inputs(tmp)
    up_port, ps_port, dm_port = free_ports(3, socket.SOCK_DGRAM)
    upstream = dnsmasq(up_port, ext, [])
    masq = dnsmasq(dm_port, hosts, ["--local=/pyswarm/", f"--server=127.0.0.1#{up_port}"])
    child = multiprocessing.get_context("spawn").Process(target=_serve_pyswarm, args=(ps_port, up_port), daemon=True)
    child.start()
    side = LabSide(tmp, ext) if args.docker else None
    try:
        wait_udp(ps_port)
        wait_udp(dm_port)
        if side is not None:
            print("bringing up lab psbdns (1 manager + 1 worker) for Docker's embedded DNS and a manager's DNS",
                  flush=True)
            side.up()
        print(f"mix: 50% service names, 20% tasks. names, 20% NXDOMAIN, 10% forwarded; "
              f"{SERVICES} services x {REPLICAS} replicas; {args.seconds}s per rate; "
              f"{os.cpu_count()} CPUs; load average before each rate in the first column")
        cols = ["pyswarm", "dnsmasq"] + (["docker", "manager"] if side else [])
        head = " | ".join(f"{c + ' qps':>11} {'lost':>6} {'avg ms':>7} {'p99 ms':>7} {'cpu µs':>6}" for c in cols)
        ratios = "ps/dnsmasq" + (" ps/docker" if side else "")
        print(f"{'load':>5} {'rate':>7} | {head} | {ratios}")
        # one warm-up second per server at a low rate (every server, Docker's
        # too): a cold server's first burst (reply caches, upstream sockets,
        # first-time code paths) otherwise lands in the first rate's p99
        run_dnsperf(ps_port, queries, 2000, 1)
        run_dnsperf(dm_port, queries, 2000, 1)
        if side is not None:
            run_dnsperf(53, queries, 2000, 1, "127.0.0.11", tuple(side.docker_prefix()))
            run_dnsperf(53, side.manager_queries, 2000, 1, side.manager_addr)
        record: list[dict[str, object]] = []
        for rate in (int(r) for r in args.rates.split(",")):
            load = os.getloadavg()[0]
            got = [measured(child.pid or 0, lambda: run_dnsperf(ps_port, queries, rate, args.seconds)),
                   measured(masq.pid, lambda: run_dnsperf(dm_port, queries, rate, args.seconds))]
            if side is not None:
                prefix = tuple(side.docker_prefix())
                got.append(measured(side.dockerd_pid,
                                    lambda: run_dnsperf(53, queries, rate, args.seconds, "127.0.0.11", prefix)))
                got.append(measured(side.manager_pid, lambda: run_dnsperf(53, side.manager_queries, rate,
                                                                          args.seconds, side.manager_addr)))
            cells = " | ".join(f"{g.get('qps', 0):>11.0f} {g.get('lost', 0):>6.0f} {g.get('avg_ms', 0):>7.3f} "
                               f"{g.get('p99_ms', 0):>7.3f} {g.get('cpu_us', 0):>6.1f}" for g in got)
            rs = [got[0].get("qps", 0) / g["qps"] if g.get("qps") else float("nan") for g in got[1:3]]
            print(f"{load:>5.1f} {rate:>7} | {cells} | " + " ".join(f"{r:>9.2f}" for r in rs), flush=True)
            record.append({"rate": rate, "load": load, "servers": dict(zip(cols, got))})
        if args.json:
            Path(args.json).write_text(json.dumps({"seconds": args.seconds, "rates": record}, indent=1) + "\n")
    finally:
        child.kill()
        for p in (masq, upstream):
            p.send_signal(signal.SIGTERM)
            p.wait(5)
        if side is not None:
            side.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
