"""The Raft store on 3 managers: commit latency, batched throughput, log
compaction; against one manager (no replication) measured in the same run.

Each manager is a separate process on loopback (real pysyncobj over TCP,
encrypted with the Raft secret), driven over a pipe:

    .venv/bin/python bench/raft_store.py [--latency 500] [--writes 100000]

It prints p50/p99 of one write committed (sequential), how long after that
commit a follower has applied it (what a follower's reads, its DNS among
them, lag behind), writes/s with many writes in flight, the size of each
manager's data directory after ``--writes`` writes (log compaction must keep
it small), and the busiest manager's CPU at rest (Raft's tick and
heartbeats). Results are
recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labapi import free_ports  # bench/ is the script's directory, first on sys.path

CHILD = "child"


async def _child(self_addr: str, data_dir: str, peers: list[str]) -> None:
    """One manager's store, answering bench commands on stdin."""
    from pyswarm.manager.store import RaftConfig, Store

    store = Store(RaftConfig(self_addr, peers, Path(data_dir), "bench-secret"))
    store.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def op(i: int) -> list[object]:
        return ["put", "node", f"n{i % 1000}", {"id": f"n{i % 1000}", "hostname": "h", "addr": "10.0.0.1", "updated_at": float(i)}]  # a field that changes each write

    print("started", flush=True)
    while line := (await reader.readline()).decode().strip():
        cmd, *args = line.split()
        if cmd == "leader":
            print("yes" if store.is_leader else "no", flush=True)
        elif cmd == "throughput":
            total, inflight = int(args[0]), int(args[1])
            sem = asyncio.Semaphore(inflight)

            async def one(i: int) -> None:
                async with sem:
                    await store.commit([op(i)], timeout=30)

            t = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(total)))
            print(json.dumps(time.perf_counter() - t), flush=True)
        elif cmd == "latency":  # each write committed in turn: its time, and when its commit returned (by store index)
            times, at = [], {}
            for i in range(int(args[0])):
                t = time.perf_counter()
                await store.commit([op(i)])
                times.append(time.perf_counter() - t)
                at[store.snapshot().index] = time.monotonic()  # one clock for every process of the machine
            print(json.dumps({"times": times, "at": at}), flush=True)
        elif cmd == "watch":  # note when each store index is first seen here (a follower's apply)
            async def watch() -> None:
                last = store.snapshot().index
                while True:
                    index = store.snapshot().index
                    if index != last:
                        now = time.monotonic()
                        for k in range(last + 1, index + 1):
                            seen[k] = now
                        last = index
                    await asyncio.sleep(0.0005)
            seen: dict[int, float] = {}
            watcher = asyncio.ensure_future(watch())
            print("watching", flush=True)
        elif cmd == "seen":
            watcher.cancel()
            print(json.dumps(seen), flush=True)
        elif cmd == "index":
            print(json.dumps(store.snapshot().index), flush=True)
    store.stop()


class Manager:
    def __init__(self, addr: str, data: Path, peers: list[str]) -> None:
        self.data = data
        self.proc = subprocess.Popen([sys.executable, __file__, CHILD, addr, str(data), *peers],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/tmp")
        assert self.read() == "started"

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _cpu(pid: int) -> float:
    """CPU seconds of a process so far (all its threads: Raft's tick is one)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cluster(n: int, root: Path) -> list[Manager]:
    addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
    managers = [Manager(a, root / f"m{i}", [p for p in addrs if p != a]) for i, a in enumerate(addrs)]
    deadline = time.monotonic() + 20
    while not any(m.ask("leader") == "yes" for m in managers):
        if time.monotonic() > deadline:
            raise SystemExit("bench: no leader after 20 s")
        time.sleep(0.05)
    return managers


def measure(n: int, args: argparse.Namespace) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix=f"pyswarm-raft-{n}-"))
    managers = cluster(n, root)
    leader = next(m for m in managers if m.ask("leader") == "yes")
    followers = [m for m in managers if m is not leader]
    try:
        for m in followers:
            assert m.ask("watch") == "watching"
        got = json.loads(leader.ask(f"latency {args.latency}"))
        lat = sorted(got["times"])
        time.sleep(0.5)
        # a follower's apply after the leader's commit returned: how stale a follower's reads (its DNS) are
        behind = sorted(seen - got["at"][k] for m in followers for k, seen in json.loads(m.ask("seen")).items()
                        if k in got["at"])
        elapsed = json.loads(leader.ask(f"throughput {args.writes} {args.inflight}"))
        time.sleep(args.settle)  # let the compaction that the writes triggered finish
        sizes = [_size(m.data) for m in managers]
        rest = [_cpu(m.proc.pid) for m in managers]
        time.sleep(args.rest)
        rest = [(_cpu(m.proc.pid) - r) / args.rest * 100 for m, r in zip(managers, rest)]
        return {
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
            "follower_p50_ms": statistics.median(behind) * 1000 if behind else 0.0,
            "follower_p99_ms": behind[int(len(behind) * 0.99) - 1] * 1000 if behind else 0.0,
            "writes_per_s": args.writes / elapsed,
            "max_data_dir_mib": max(sizes) / 2**20,
            "rest_cpu_pct": max(rest),
        }
    finally:
        for m in managers:
            m.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        asyncio.run(_child(sys.argv[2], sys.argv[3], sys.argv[4:]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=int, default=500, help="sequential writes timed one by one")
    parser.add_argument("--writes", type=int, default=100_000, help="writes for throughput and compaction")
    parser.add_argument("--inflight", type=int, default=500, help="writes in flight at once")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds to let compaction run")
    parser.add_argument("--rest", type=float, default=10.0, help="seconds of CPU measured at rest, after settling")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}; {args.writes} writes with {args.inflight} in flight", flush=True)
    results = {n: measure(n, args) for n in (3, 1)}
    print(f"{'':28s}{'3 managers':>14s}{'1 manager':>14s}{'ratio 3/1':>12s}")
    for key, label in (("p50_ms", "commit p50 (ms)"), ("p99_ms", "commit p99 (ms)"),
                       ("follower_p50_ms", "follower applied p50 (ms)"), ("follower_p99_ms", "follower applied p99 (ms)"),
                       ("writes_per_s", "writes/s, in flight"), ("max_data_dir_mib", "data dir after writes (MiB)"),
                       ("rest_cpu_pct", "CPU at rest, busiest (%)")):
        a, b = results[3][key], results[1][key]
        print(f"{label:28s}{a:14.1f}{b:14.1f}{a / b if b else float('nan'):12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
