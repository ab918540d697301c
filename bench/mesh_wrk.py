"""Published ports: requests/s and latency through the routing mesh against straight to the replica.

Usage (root; needs the Debian packages wrk and curl)::

    .venv/bin/python bench/mesh_wrk.py [--rounds 3] [--seconds 5] [--connections 8]

Brings up a private lab (``psbmesh``: 1 manager + 2 workers on
10.250.16.0/24) and deploys a stack: ``web``, busybox ``httpd`` with one
replica pinned to worker1 and ``ports: ["18080:80"]`` (ingress mode), and
``client``, a sleeping container on the same network pinned to worker2.
wrk runs in the client container's network namespace (``nsenter --net``;
the image has no wrk), so the client is a container on another node, and
asks three targets in turn, each round:

- ``direct``: the replica's own address, port 80 — container to container
  across hosts, routed, no NAT (the floor). A node's own address cannot be
  the client here: pyswarm's isolation drops new node-to-container
  connections that are not DNATed, as Docker does.
- ``mesh, own node``: worker2's address (the client's own node, which runs
  no replica), port 18080 — DNATed on worker2 to worker1 (and SNATed to
  worker2's bridge address);
- ``mesh, other node``: manager1's address, port 18080 — the connection
  goes to manager1, is DNATed there and crosses to worker1.

One replica, so all three reach the very same process and the difference is
the mesh's. busybox httpd answers one request per connection (no
keep-alive), so every request is a new connection: a new conntrack entry
and a new DNAT decision, the mesh's worst case. It prints requests/s, p50
and p99 latency per target (medians over rounds), the mesh's ratios to the
direct figures, and the load average. Traffic stays inside the lab.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyswarm.deploy.lab_core import Lab

LAB_NAME, LAB_SUBNET, LAB_DIR = "psbmesh", "10.250.16.0/24", "/var/lib/pyswarm-bench-mesh"
IMAGE = "pyswarm-lab/busybox:latest"
PORT = 18080
STACK = f"""
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["{PORT}:80"]
    deploy:
      replicas: 1
      placement: {{constraints: ["node.hostname==worker1"]}}
  client:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy:
      placement: {{constraints: ["node.hostname==worker2"]}}
"""


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50 and p99 latency (ms) and errors from ``wrk --latency``."""
    got: dict[str, float] = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        got["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
            got[f"p{pct}_ms"] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    got["errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        got["errors"] += float(m.group(1))
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    lab = Lab(LAB_DIR, name=LAB_NAME, subnet=LAB_SUBNET)
    print("bringing up lab psbmesh (1 manager + 2 workers)", flush=True)
    lab.up(managers=1, workers=2, cluster=True)
    try:
        return run(lab, args)
    finally:
        lab.down()


def run(lab: Lab, args: argparse.Namespace) -> int:
    manager = lab.managers[0]
    stack = Path(tempfile.mkdtemp(prefix="psb-mesh-")) / "mesh.yml"
    stack.parent.chmod(0o755)
    stack.write_text(STACK)
    lab.pyswarm(manager, "stack", "deploy", "-c", str(stack), "mesh", timeout=120)
    replica = wait_replica(lab, manager, "mesh_web")
    wait_replica(lab, manager, "mesh_client")
    ids = lab.docker("worker2", "ps", "-q", "--filter", "name=mesh_client").stdout.split()
    pid = lab.docker("worker2", "inspect", "-f", "{{.State.Pid}}", ids[0]).stdout.strip()
    enter = ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]
    targets = {
        "direct": f"http://{replica}:80/",
        "mesh, own node": f"http://{lab.hosts['worker2']}:{PORT}/",
        "mesh, other node": f"http://{lab.hosts[manager]}:{PORT}/",
    }
    for name, url in targets.items():  # every path answers before anything is timed
        wait_http(enter, url, name)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    loads: list[float] = []
    print(f"wrk -t1 -c{args.connections} -d{args.seconds}s in mesh_client's netns on worker2; "
          f"replica {replica} on worker1; "
          f"{os.cpu_count()} CPUs", flush=True)
    for r in range(args.rounds):
        for name, url in targets.items():
            loads.append(os.getloadavg()[0])
            out = subprocess.run([*enter, "wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                                  url], capture_output=True, text=True, timeout=args.seconds + 60, check=True).stdout
            got = parse_wrk(out)
            results[name].append(got)
            print(f"round {r + 1} load {loads[-1]:4.1f} {name:16s} {got.get('rps', 0):8.0f} req/s  "
                  f"p50 {got.get('p50_ms', 0):6.2f} ms  p99 {got.get('p99_ms', 0):6.2f} ms  "
                  f"errors {got.get('errors', 0):.0f}", flush=True)
    lab.pyswarm(manager, "stack", "rm", "mesh", timeout=60)
    med = {name: {k: statistics.median(g.get(k, 0) for g in runs) for k in ("rps", "p50_ms", "p99_ms")}
           for name, runs in results.items()}
    base = med["direct"]
    print(f"\nmedians over {args.rounds} rounds (load average {min(loads):.1f}-{max(loads):.1f}):")
    print(f"{'target':16s} | {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} | {'req/s ratio':>11} {'+p50 ms':>8} {'+p99 ms':>8}")
    for name, m in med.items():
        ratio = m["rps"] / base["rps"] if base["rps"] else float("nan")
        print(f"{name:16s} | {m['rps']:>8.0f} {m['p50_ms']:>7.2f} {m['p99_ms']:>7.2f} | {ratio:>11.2f} "
              f"{m['p50_ms'] - base['p50_ms']:>+8.2f} {m['p99_ms'] - base['p99_ms']:>+8.2f}", flush=True)
    return 0


def wait_replica(lab: Lab, manager: str, service: str, timeout: float = 120) -> str:
    """The address of the first running replica of ``service``."""
    deadline = time.monotonic() + timeout
    seen: object = None
    while time.monotonic() < deadline:
        out = lab.pyswarm(manager, "service", "ps", service, "--format", "json", check=False)
        try:
            seen = [t for t in json.loads(out.stdout) if t["desired_state"] == "running"]
        except ValueError:
            seen = out.stdout
        if isinstance(seen, list):
            ips = [t["ip"] for t in seen if t["current_state"] == "running" and t["ip"]]
            if ips:
                return str(ips[0])
        time.sleep(0.5)
    raise RuntimeError(f"{service} has no running replica after {timeout:.0f}s: {seen}")


def wait_http(enter: list[str], url: str, name: str, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200 from the client's namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run([*enter, "curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", url],
                             capture_output=True, text=True, timeout=10, check=False)
        if res.stdout.strip() == "200":
            return
        time.sleep(0.5)
    raise RuntimeError(f"{name} ({url}) did not answer the client within {timeout:.0f}s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
