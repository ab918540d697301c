"""Time to converge: `stack deploy` of 30 replicas on 3 workers, and
`service scale` 1 -> 30, on the lab, against the floor measured in the same
run: the same 30 containers started straight on the workers' engines with
`docker run` (10 per worker, the workers in parallel).

Run as root, with a lab of 1 manager + 3 workers up (`pyswarm lab up`):

    .venv/bin/python bench/deploy_scale.py [--rounds 3]

It prints one line per measurement and the medians with the ratio
pyswarm / docker-run. Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from pyswarm.deploy.lab_core import Lab

from labapi import LabBench

IMAGE = "pyswarm-lab/busybox:latest"
STACK = "bench"
SERVICE = f"{STACK}_web"
REPLICAS = 30

STACK_FILE = f"""
services:
  web:
    image: {IMAGE}
    command: ["httpd", "-f", "-p", "80"]
    deploy:
      replicas: {{replicas}}
      placement:
        constraints: ["node.role==worker"]
"""


class Bench(LabBench):
    def running(self) -> int:
        for row in self.api("service.ls"):
            if row["name"] == SERVICE:
                return int(row["running"])
        return 0

    def stack_file(self, replicas: int) -> str:
        path = self.dir / f"stack-{replicas}.yml"
        path.write_text(STACK_FILE.format(replicas=replicas))
        return str(path)

    def clean(self) -> None:
        self.lab.pyswarm(self.manager, "stack", "rm", STACK, check=False)
        self.wait(lambda: all(not self._bench_containers(h) for h in self.lab.workers), "stack removed")

    def _bench_containers(self, host: str) -> list[str]:
        return self.lab.docker(host, "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={STACK}").stdout.split()

    def deploy_30(self) -> float:
        path = self.stack_file(REPLICAS)
        start = time.monotonic()
        self.lab.pyswarm(self.manager, "stack", "deploy", "-c", path, STACK)
        self.wait(lambda: self.running() == REPLICAS, f"{REPLICAS} running")
        return time.monotonic() - start

    def scale_1_to_30(self) -> float:
        self.lab.pyswarm(self.manager, "stack", "deploy", "-c", self.stack_file(1), STACK)
        self.wait(lambda: self.running() == 1, "1 running")
        start = time.monotonic()
        self.lab.pyswarm(self.manager, "service", "scale", "-d", f"{SERVICE}={REPLICAS}")
        self.wait(lambda: self.running() == REPLICAS, f"{REPLICAS} running")
        return time.monotonic() - start

    def docker_run_30(self) -> float:
        per_host = REPLICAS // len(self.lab.workers)

        def run_on(host: str) -> None:
            for i in range(per_host):
                self.lab.docker(host, "run", "-d", "--label", "pyswarm.bench=1", "--name", f"bench-floor-{i}",
                                IMAGE, "httpd", "-f", "-p", "80")

        start = time.monotonic()
        with ThreadPoolExecutor(len(self.lab.workers)) as pool:
            list(pool.map(run_on, self.lab.workers))
        elapsed = time.monotonic() - start
        for host in self.lab.workers:
            ids = self.lab.docker(host, "ps", "-aq", "--filter", "label=pyswarm.bench=1").stdout.split()
            if ids:
                self.lab.docker(host, "rm", "-f", *ids)
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench = Bench(Lab.current())
    results: dict[str, list[float]] = {"deploy 30": [], "scale 1->30": [], "docker run 30": []}
    bench.clean()
    for r in range(args.rounds):
        for name, fn in (("deploy 30", bench.deploy_30), ("docker run 30", bench.docker_run_30)):
            results[name].append(fn())
            print(f"round {r + 1}: {name}: {results[name][-1]:.2f} s", flush=True)
            bench.clean()
        results["scale 1->30"].append(bench.scale_1_to_30())
        print(f"round {r + 1}: scale 1->30: {results['scale 1->30'][-1]:.2f} s", flush=True)
        bench.clean()
    floor = statistics.median(results["docker run 30"])
    print(f"\nmedians over {args.rounds} rounds (1 manager + 3 workers, {REPLICAS} replicas on the workers):")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  {name:14s} {med:6.2f} s   (min {min(values):.2f}, max {max(values):.2f})   ratio to docker run: {med / floor:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
