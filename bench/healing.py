"""Healing and placement on the lab, each against a peer measured in the same run.

* container crash -> replacement running: ``docker kill`` of one replica's
  container on its host, until the orchestrator's new task reports running
  (the agent's timestamp). Peer: the engine's own ``--restart always`` on
  the same host (kill -> the container's StartedAt), which restarts in
  place and so bounds what any orchestrator on top can do.
* worker host failure -> all its replicas running elsewhere: the host's
  link cut (its veth down in the root namespace), until every replica it
  had runs on another node; also when the node was marked down. Peer: the
  same number of containers started by ``docker run -d`` on a surviving
  host, the floor of re-creating them anywhere.
* 100 replicas placed end to end: ``service scale`` 0 -> 100 until 100 run.
  Peer: 100 ``docker run -d`` straight on the 4 engines (25 each, hosts in
  parallel).

Run as root. It brings up its own lab (1 manager + 3 workers) in
/var/lib/pyswarm-bench-healing unless ``--reuse`` (then the lab in
$PYSWARM_LAB_DIR), and takes it down at the end:

    .venv/bin/python bench/healing.py [--rounds 3]

Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from pyswarm.deploy.lab_core import Lab

from labapi import LabBench

IMAGE = "pyswarm-lab/busybox:latest"
STACK = "heal"
SERVICE = f"{STACK}_web"
SERVE = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 & wait"]
STACK_FILE = f"""
services:
  web:
    image: {IMAGE}
    command: {json.dumps(SERVE)}
    deploy:
      replicas: {{replicas}}
"""


class Bench(LabBench):
    def tasks(self) -> list[dict[str, Any]]:
        try:
            return list(self.api("service.ps", {"service": SERVICE}))
        except Exception:  # noqa: BLE001 - not deployed yet
            return []

    def running(self) -> list[dict[str, Any]]:
        return [t for t in self.tasks() if t["desired_state"] == "running" and t["current_state"] == "running"]

    def deploy(self, replicas: int) -> None:
        path = self.dir / f"stack-{replicas}.yml"
        path.write_text(STACK_FILE.format(replicas=replicas))
        self.lab.pyswarm(self.manager, "stack", "deploy", "-c", str(path), STACK)
        self.wait(lambda: len(self.running()) == replicas, f"{replicas} running")

    def clean(self) -> None:
        self.lab.pyswarm(self.manager, "stack", "rm", STACK, check=False)
        self.wait(lambda: all(not self._ids(h, f"label=com.docker.stack.namespace={STACK}") for h in self.lab.hosts),
                  "stack removed")

    def _ids(self, host: str, flt: str) -> list[str]:
        return self.lab.docker(host, "ps", "-aq", "--filter", flt).stdout.split()

    # -- container crash ---------------------------------------------------------------

    def crash(self) -> float:
        victim = self.running()[0]
        before = {t["id"] for t in self.running()}
        killed = self.crash_process(victim["node"], victim["container_id"])
        new = self.wait(lambda: [t for t in self.running() if t["id"] not in before], "replacement running")
        return float(new[0]["since"]) - killed

    def engine_restart(self, host: str) -> float:
        cid = self.lab.docker(host, "run", "-d", "--restart", "always", "--label", "pyswarm.bench=1",
                              IMAGE, *SERVE).stdout.strip()
        self.wait(lambda: self._started(host, cid), "peer container running")
        first = self._started(host, cid)
        killed = self.crash_process(host, cid)
        started = self.wait(lambda: (s := self._started(host, cid)) != first and s, "peer restarted")
        self.lab.docker(host, "rm", "-f", cid)
        return float(started) - killed

    def crash_process(self, host: str, cid: str) -> float:
        """SIGKILL the container's main process from outside, as a crash
        (``docker kill`` counts as a manual stop: the engine would not
        restart the peer's container); returns when it was sent."""
        pid = int(self.lab.docker(host, "inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        return killed

    def _started(self, host: str, cid: str) -> float:
        out = self.lab.docker(host, "inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", cid).stdout.split()
        if out[0] != "true":
            return 0.0
        stamp = out[1].rstrip("Z")
        whole, _, frac = stamp.partition(".")
        dt = datetime.fromisoformat(whole + "+00:00")
        return dt.timestamp() + float("0." + (frac or "0"))

    # -- worker host failure -------------------------------------------------------------

    def host_failure(self, victim: str) -> tuple[float, float, int]:
        lost = {t["id"] for t in self.running() if t["node"] == victim}
        veth = self.lab.host(victim).veth
        cut = time.time()
        subprocess.run(["ip", "link", "set", veth, "down"], check=True)
        try:
            def healed() -> list[dict[str, Any]]:
                run = self.running()
                return run if len(run) == self.replicas and all(t["node"] != victim for t in run) else []
            run = self.wait(healed, "replicas running elsewhere", timeout=60)
            node = self.api("node.inspect", {"node": victim})
            down_after = float(node["updated_at"]) - cut
            healed_after = max(float(t["since"]) for t in run if t["id"] not in lost) - cut
        finally:
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        self.wait(lambda: self.api("node.inspect", {"node": victim})["status"] == "ready", "victim back", 60)
        self.wait(lambda: not set(self._task_labels(victim)) & lost, "stale containers removed", 60)
        return down_after, healed_after, len(lost)

    def _task_labels(self, host: str) -> list[str]:
        out = self.lab.docker(host, "ps", "--filter", f"label=pyswarm.service.name={SERVICE}",
                              "--format", '{{.Label "pyswarm.task.id"}}').stdout
        return out.split()

    def docker_run(self, host: str, count: int) -> float:
        start = time.monotonic()
        for i in range(count):
            self.lab.docker(host, "run", "-d", "--label", "pyswarm.bench=1", IMAGE, *SERVE)
        elapsed = time.monotonic() - start
        self._rm_peer()
        return elapsed

    def _rm_peer(self) -> None:
        for host in self.lab.hosts:
            ids = self._ids(host, "label=pyswarm.bench=1")
            if ids:
                self.lab.docker(host, "rm", "-f", *ids)

    # -- 100 replicas --------------------------------------------------------------------

    def place_100(self) -> float:
        self.lab.pyswarm(self.manager, "service", "scale", "-d", f"{SERVICE}=0")
        self.wait(lambda: not self.running(), "0 running")
        start = time.monotonic()
        self.lab.pyswarm(self.manager, "service", "scale", "-d", f"{SERVICE}=100")
        self.wait(lambda: len(self.running()) == 100, "100 running", timeout=300)
        return time.monotonic() - start

    def docker_run_100(self) -> float:
        hosts = list(self.lab.hosts)

        def run_on(host: str) -> None:
            for _ in range(100 // len(hosts)):
                self.lab.docker(host, "run", "-d", "--label", "pyswarm.bench=1", IMAGE, *SERVE)

        start = time.monotonic()
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(run_on, hosts))
        elapsed = time.monotonic() - start
        self._rm_peer()
        return elapsed

    replicas = 12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="use the lab in $PYSWARM_LAB_DIR instead of a new one")
    parser.add_argument("--skip-scale", action="store_true",
                        help="leave out the 100-replica placement (minutes on a loaded machine)")
    args = parser.parse_args()
    if args.reuse:
        lab = Lab.current()
    else:
        lab = Lab("/var/lib/pyswarm-bench-healing", name="psbheal", subnet="10.250.90.0/24")
        lab.up(managers=1, workers=3, cluster=True, progress=lambda m: print(f"[lab] {m}", flush=True))
    try:
        return run(Bench(lab), args.rounds, scale=not args.skip_scale)
    finally:
        if not args.reuse:
            lab.down()


def run(bench: Bench, rounds: int, scale: bool = True) -> int:
    results: dict[str, list[float]] = {k: [] for k in (
        "crash -> replacement running", "peer: engine restart in place",
        "host cut -> node down", "host cut -> its replicas running elsewhere", "peer: docker run of as many",
        "scale 0 -> 100 running", "peer: docker run x 100")}
    for r in range(rounds):
        bench.clean()  # a fresh spread each round: 3 replicas on every node
        bench.deploy(bench.replicas)
        results["crash -> replacement running"].append(bench.crash())
        results["peer: engine restart in place"].append(bench.engine_restart("worker1"))
        down, healed, lost = bench.host_failure("worker3")
        results["host cut -> node down"].append(down)
        results["host cut -> its replicas running elsewhere"].append(healed)
        results["peer: docker run of as many"].append(bench.docker_run("worker1", lost))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items() if v)
              + f" ({lost} replicas on the cut host)", flush=True)
    for r in range(rounds if scale else 0):
        results["scale 0 -> 100 running"].append(bench.place_100())
        results["peer: docker run x 100"].append(bench.docker_run_100())
        print(f"round {r + 1}: scale 0 -> 100 {results['scale 0 -> 100 running'][-1]:.2f}s, "
              f"docker run x 100 {results['peer: docker run x 100'][-1]:.2f}s", flush=True)
    bench.clean()
    results = {k: v for k, v in results.items() if v}
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nmedians over {rounds} rounds (lab: 1 manager + 3 workers, {bench.replicas} replicas):")
    for k, v in results.items():
        print(f"  {k:44s} {med[k]:6.2f} s  (min {min(v):.2f}, max {max(v):.2f})")
    print(f"  ratio crash/engine restart: {med['crash -> replacement running'] / med['peer: engine restart in place']:.2f}; "
          f"host failure/docker run: {med['host cut -> its replicas running elsewhere'] / med['peer: docker run of as many']:.2f}"
          + (f"; 100 replicas/docker run: {med['scale 0 -> 100 running'] / med['peer: docker run x 100']:.2f}"
             if scale else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
