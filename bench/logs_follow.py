"""``service logs`` on the lab, against ``docker logs`` on the same engines.

* throughput: 10 replicas each print 100,000 lines as fast as they can
  (``seq``), then idle; ``pyswarm service logs --raw`` reads all 1,000,000
  lines, merged in time order, to the CLI on the manager: lines/s. Peer:
  ``docker logs`` of the same 10 containers, all at once, each on its own
  host's engine (no merge, no network hop): lines/s over the same lines.
* delay: 10 replicas print a line every 100 ms; ``service logs -f -t --raw``
  runs for ``--seconds``; each line's delay is the time it was read from
  the CLI's stdout minus the engine's own timestamp of it (the engine stamps
  a line when it reads it from the container, microseconds after the
  write; the lab's hosts share one clock). Median and p99; goal p99 <
  500 ms. Peer: ``docker logs -f -t`` of each container on its engine, the
  10 at once, measured the same way.

Run as root. It brings up its own lab (1 manager + 3 workers) unless
``--reuse`` (then the lab in $PYSWARM_LAB_DIR), and takes it down at the end:

    .venv/bin/python bench/logs_follow.py [--rounds 3] [--seconds 20]

Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from typing import Any

from pyswarm.cli.streams import parse_time
from pyswarm.deploy.lab_core import Lab, pyswarm_executable

from labapi import LabBench

IMAGE = "pyswarm-lab/busybox:latest"
REPLICAS = 10
LINES = 100_000
BURST = f"""
services:
  burst:
    image: {IMAGE}
    command: ["sh", "-c", "seq 1 {LINES}; trap 'exit 0' TERM; sleep 3600 & wait"]
    deploy:
      replicas: {REPLICAS}
"""
TICK = f"""
services:
  tick:
    image: {IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; i=0; while true; do i=$$((i+1)); echo $$i; sleep 0.1; done"]
    deploy:
      replicas: {REPLICAS}
"""


class Bench(LabBench):
    def running(self, service: str) -> list[dict[str, Any]]:
        try:
            rows = self.api("service.ps", {"service": service})
        except Exception:  # noqa: BLE001 - not deployed yet
            return []
        return [t for t in rows if t["desired_state"] == "running" and t["current_state"] == "running"]

    def deploy(self, stack: str, text: str, service: str) -> list[dict[str, Any]]:
        path = self.dir / f"{stack}.yml"
        path.write_text(text)
        self.lab.pyswarm(self.manager, "stack", "deploy", "-c", str(path), stack)
        def all_up() -> list[dict[str, Any]] | None:
            rows = self.running(service)
            return rows if len(rows) == REPLICAS else None

        return list(self.wait(all_up, f"{REPLICAS} {service} running"))

    def remove(self, stack: str) -> None:
        self.lab.pyswarm(self.manager, "stack", "rm", stack, check=False)
        self.wait(lambda: all(not self.lab.docker(h, "ps", "-aq", "--filter",
                                                  f"label=com.docker.stack.namespace={stack}").stdout.split()
                              for h in self.lab.hosts), f"stack {stack} removed")

    def popen(self, host: str, argv: list[str]) -> subprocess.Popen[bytes]:
        prefix, env = self.lab.exec_argv(host)
        return subprocess.Popen([*prefix, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    # -- throughput -------------------------------------------------------

    def throughput(self, containers: list[dict[str, Any]]) -> tuple[float, float]:
        def count(proc: subprocess.Popen[bytes]) -> int:
            assert proc.stdout is not None
            n = sum(1 for _ in proc.stdout)
            proc.wait()
            proc.stdout.close()
            return n

        start = time.monotonic()
        n = count(self.popen(self.manager, [pyswarm_executable(), "service", "logs", "--raw", "tb_burst"]))
        ours = n / (time.monotonic() - start)
        if n != REPLICAS * LINES:
            raise SystemExit(f"bench: service logs gave {n} lines, not {REPLICAS * LINES}")
        start = time.monotonic()
        procs = [self.popen(t["node"], ["docker", "logs", t["container_id"]]) for t in containers]
        counts = [0] * len(procs)

        def one(i: int) -> None:
            counts[i] = count(procs[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(procs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peer = sum(counts) / (time.monotonic() - start)
        return ours, peer

    # -- delay ------------------------------------------------------------

    def delays(self, procs: list[subprocess.Popen[bytes]], seconds: float, skip: float = 3.0) -> list[float]:
        """ms from each line's engine timestamp to its arrival on our side,
        for lines stamped after the first ``skip`` seconds (the history)."""
        out: list[float] = []
        lock = threading.Lock()
        since = time.time_ns() + int(skip * 1e9)

        def read(proc: subprocess.Popen[bytes]) -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                now = time.time_ns()
                stamp = raw.split(b" ", 1)[0].decode(errors="replace")
                try:
                    t = parse_time(stamp)
                except Exception:  # noqa: BLE001 - not a line of ours
                    continue
                if t >= since:
                    with lock:
                        out.append((now - t) / 1e6)

        threads = [threading.Thread(target=read, args=(p,), daemon=True) for p in procs]
        for t in threads:
            t.start()
        time.sleep(skip + seconds)
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for t in threads:
            t.join(5)
        for p in procs:
            if p.stdout is not None:
                p.stdout.close()
        return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="of -f per round and side")
    parser.add_argument("--reuse", action="store_true", help="use the lab in $PYSWARM_LAB_DIR instead of a new one")
    args = parser.parse_args()
    if args.reuse:
        lab = Lab.current()
    else:
        lab = Lab("/var/lib/pyswarm-bench-logs", name="psblogs", subnet="10.250.91.0/24")
        lab.up(managers=1, workers=3, cluster=True, progress=lambda m: print(f"[lab] {m}", flush=True))
    try:
        return run(Bench(lab), args.rounds, args.seconds)
    finally:
        if not args.reuse:
            lab.down()


def run(bench: Bench, rounds: int, seconds: float) -> int:
    rates: dict[str, list[float]] = {"pyswarm service logs": [], "docker logs x 10": []}
    delay: dict[str, list[float]] = {"pyswarm service logs -f": [], "docker logs -f x 10": []}
    containers = bench.deploy("tb", BURST, "tb_burst")
    # wait until every replica has printed all its lines (and a bit)
    bench.wait(lambda: all(bench.lab.docker(t["node"], "logs", "--tail", "1", t["container_id"]).stdout.strip()
                           == str(LINES) for t in containers), "every replica printed its lines", timeout=300)
    for r in range(rounds):
        ours, peer = bench.throughput(containers)
        rates["pyswarm service logs"].append(ours)
        rates["docker logs x 10"].append(peer)
        print(f"round {r + 1}: throughput {ours:,.0f} lines/s (docker logs x 10: {peer:,.0f})", flush=True)
    bench.remove("tb")
    ticks = bench.deploy("tf", TICK, "tf_tick")
    for r in range(rounds):
        ours = bench.delays([bench.popen(bench.manager, [pyswarm_executable(), "service", "logs", "-f", "-t",
                                                         "--raw", "--tail", "0", "tf_tick"])], seconds)
        peer = bench.delays([bench.popen(t["node"], ["docker", "logs", "-f", "-t", "--tail", "0", t["container_id"]])
                             for t in ticks], seconds)
        delay["pyswarm service logs -f"] += ours
        delay["docker logs -f x 10"] += peer
        print(f"round {r + 1}: -f delay median {statistics.median(ours):.0f} ms p99 {pct(ours, 0.99):.0f} ms "
              f"({len(ours)} lines); docker logs -f median {statistics.median(peer):.0f} ms "
              f"p99 {pct(peer, 0.99):.0f} ms ({len(peer)} lines)", flush=True)
    bench.remove("tf")
    print(f"\n{rounds} rounds (lab: 1 manager + 3 workers, {REPLICAS} replicas; machine shared, see RESULTS.md):")
    for k, v in rates.items():
        print(f"  throughput {k:28s} median {statistics.median(v):>10,.0f} lines/s (min {min(v):,.0f}, max {max(v):,.0f})")
    for k, v in delay.items():
        print(f"  delay {k:33s} median {statistics.median(v):6.0f} ms, p99 {pct(v, 0.99):6.0f} ms ({len(v)} lines)")
    tp = statistics.median(rates["pyswarm service logs"]) / statistics.median(rates["docker logs x 10"])
    d99 = pct(delay["pyswarm service logs -f"], 0.99) / max(pct(delay["docker logs -f x 10"], 0.99), 1e-9)
    print(f"  ratio throughput pyswarm/docker: {tp:.2f}; p99 delay pyswarm/docker: {d99:.2f}; "
          f"goal p99 < 500 ms: {'met' if pct(delay['pyswarm service logs -f'], 0.99) < 500 else 'MISSED'}")
    print(json.dumps({"rates": rates, "delay_p50": {k: statistics.median(v) for k, v in delay.items()},
                      "delay_p99": {k: pct(v, 0.99) for k, v in delay.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
