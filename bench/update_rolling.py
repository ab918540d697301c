"""Rolling update of 10 replicas (parallelism 2, no delay, stop-first, monitor
0s) on the lab, against the floor measured in the same run: the same
replacement done by hand with plain docker on the workers' engines — 10
containers replaced two at a time (stop + remove the old one, run the new
one, the two of a batch in parallel).

Run as root, with a lab of 1 manager + 3 workers up (`pyswarm lab up`), or
with `--own-lab` to bring up (and take down) a private one:

    .venv/bin/python bench/update_rolling.py [--rounds 3] [--own-lab]

Each round changes an environment variable (`service update --env-add`), so
every round is a new version of every task, and times the command to every
replica running the new version and the update status `completed`. It
prints one line per measurement and the medians with the ratio
pyswarm / docker. Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyswarm.deploy.lab_core import Lab

from labapi import LabBench

IMAGE = "pyswarm-lab/busybox:latest"
STACK = "benchupd"
SERVICE = f"{STACK}_web"
REPLICAS = 10
PARALLELISM = 2
# httpd as PID 1 ignores SIGTERM; this shell exits on it (no 10 s stop grace)
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 & wait"]

STACK_FILE = f"""
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 & wait"]
    deploy:
      replicas: {REPLICAS}
      placement:
        constraints: ["node.role==worker"]
      update_config:
        parallelism: {PARALLELISM}
        delay: 0s
        monitor: 0s
        order: stop-first
"""


class Bench(LabBench):
    def on_version(self, version: int) -> bool:
        svc = self.api("service.inspect", {"service": SERVICE})
        if svc["version"] != version or svc["update_status"].get("state") != "completed":
            return False
        rows = self.api("service.ps", {"service": SERVICE})
        fresh = [r for r in rows if r["desired_state"] == "running" and r["current_state"] == "running"]
        return len(fresh) == REPLICAS

    def deploy(self) -> None:
        path = self.dir / "stack.yml"
        path.write_text(STACK_FILE)
        self.lab.pyswarm(self.manager, "stack", "deploy", "-c", str(path), STACK)
        self.wait(lambda: sum(r["current_state"] == "running" for r in self.api("service.ps", {"service": SERVICE}))
                  == REPLICAS, f"{REPLICAS} running")

    def clean(self) -> None:
        self.lab.pyswarm(self.manager, "stack", "rm", STACK, check=False)
        self.wait(lambda: all(not self._containers(h, f"com.docker.stack.namespace={STACK}") for h in self.lab.workers),
                  "stack removed")

    def _containers(self, host: str, label: str) -> list[str]:
        return self.lab.docker(host, "ps", "-aq", "--filter", f"label={label}").stdout.split()

    def update(self, round_no: int) -> float:
        version = self.api("service.inspect", {"service": SERVICE})["version"] + 1
        start = time.monotonic()
        self.lab.pyswarm(self.manager, "service", "update", "-d", "--env-add", f"ROUND={round_no}", SERVICE)
        self.wait(lambda: self.on_version(version), f"all {REPLICAS} on version {version}")
        return time.monotonic() - start

    def docker_floor(self) -> float:
        """The same replacement by hand: 10 containers over the workers, two at a time."""
        workers = self.lab.workers
        placed = [(workers[i % len(workers)], f"bench-upd-{i}") for i in range(REPLICAS)]

        def run(host: str, name: str, env: str) -> None:
            self.lab.docker(host, "run", "-d", "--label", "pyswarm.bench=upd", "--name", name, "-e", env,
                            IMAGE, *COMMAND)

        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(lambda p: run(p[0], p[1], "ROUND=0"), placed))

        def replace(host: str, name: str) -> None:
            self.lab.docker(host, "stop", name)
            self.lab.docker(host, "rm", name)
            run(host, name, "ROUND=1")

        start = time.monotonic()
        with ThreadPoolExecutor(PARALLELISM) as pool:
            for i in range(0, REPLICAS, PARALLELISM):
                list(pool.map(lambda p: replace(*p), placed[i:i + PARALLELISM]))
        elapsed = time.monotonic() - start
        for host in workers:
            ids = self._containers(host, "pyswarm.bench=upd")
            if ids:
                self.lab.docker(host, "rm", "-f", *ids)
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--own-lab", action="store_true", help="bring up a private 1+3 lab for the run")
    args = parser.parse_args()
    own = None
    if args.own_lab:
        own = Lab(Path(tempfile.mkdtemp(prefix="pyswarm-bench-lab-")), name="psbupd", subnet="10.250.97.0/24")
        own.up(managers=1, workers=3, cluster=True)
    try:
        return run(Bench(own or Lab.current()), args.rounds)
    finally:
        if own is not None:
            own.down()


def run(bench: Bench, rounds: int) -> int:
    args = argparse.Namespace(rounds=rounds)
    results: dict[str, list[float]] = {"pyswarm update": [], "docker by hand": []}
    bench.clean()
    bench.deploy()
    try:
        for r in range(args.rounds):
            results["pyswarm update"].append(bench.update(r + 1))
            print(f"round {r + 1}: pyswarm rolling update: {results['pyswarm update'][-1]:.2f} s", flush=True)
            results["docker by hand"].append(bench.docker_floor())
            print(f"round {r + 1}: docker stop/rm/run by hand: {results['docker by hand'][-1]:.2f} s", flush=True)
    finally:
        bench.clean()
    floor = statistics.median(results["docker by hand"])
    print(f"\nmedians over {args.rounds} rounds ({REPLICAS} replicas on 3 workers, parallelism {PARALLELISM}, "
          "no delay, stop-first):")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  {name:15s} {med:6.2f} s   (min {min(values):.2f}, max {max(values):.2f})   "
              f"ratio to docker: {med / floor:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
