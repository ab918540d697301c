"""Scale 3 -> N -> 3 on one manager's store and leader loops, no lab:

    .venv/bin/python bench/scale_store.py [--replicas 100000]

A real single-manager Raft store (pysyncobj, journal on disk), the real
orchestrator, updater and scheduler loops and the loop-lag monitor, with 3
ready nodes and ``max_replicas_per_node: 1``, so 3 tasks are placed and the
rest stay pending, as in issue 11's reproduction. It prints how long the
store takes to hold N tasks and to come back to what 3 replicas need, the
event loop's worst lag meanwhile (the heartbeats' and DNS's loop), and the
peer figure measured in the same run: one full deserialization of every
task, what each planner pass cost before the store kept typed objects.
It also prints the Raft journal file and dump on disk at 3, at N, right
after the way down and once compaction has settled (manager/compaction.py),
each against the size at N. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from labapi import free_ports  # noqa: E402  bench/ is the script's directory, first on sys.path


async def _wait(what: str, cond: object, timeout: float) -> float:
    started = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def raft_files(data_dir: Path) -> tuple[int, int]:
    """(journal file bytes, dump bytes) on disk."""
    out = []
    for name in ("raft.journal", "raft.dump"):
        path = data_dir / name
        out.append(path.stat().st_size if path.exists() else 0)
    return out[0], out[1]


def _mb(sizes: tuple[int, int]) -> str:
    return f"journal {sizes[0] / 1e6:.1f} MB, dump {sizes[1] / 1e6:.2f} MB"


async def start_store(tmp: str) -> tuple[Any, Any, asyncio.Task[None], list[Any], Any]:
    """What this bench and dns_scale.py measure on: a one-manager store in
    ``tmp`` (leader), the loop-lag monitor running, 3 ready nodes and the
    service ``web`` (3 replicas, max 1 a node), committed. Returns (store,
    lag, lag's task, nodes, web)."""
    from factories import make_node, make_service

    from pyswarm.manager.daemon import SWITCH_INTERVAL
    from pyswarm.manager.lag import LoopLag
    from pyswarm.manager.store import RaftConfig, Store
    from pyswarm.models import Cluster, NodeStatus

    sys.setswitchinterval(SWITCH_INTERVAL)  # as the manager does
    store = Store(RaftConfig(f"127.0.0.1:{free_ports(1)[0]}", [], Path(tmp), "bench"))
    store.start()
    await _wait("a leader", lambda: store.is_leader, 20)
    lag = LoopLag()
    lag_task = asyncio.create_task(lag.run())
    nodes = [make_node(status=NodeStatus.READY) for _ in range(3)]
    svc = make_service("web", replicas=3, max_replicas_per_node=1)
    await store.commit([["put", "cluster", "c", Cluster(id="c").to_dict()],
                        *(["put", "node", n.id, n.to_dict()] for n in nodes),
                        ["put", "service", svc.id, svc.to_dict()]])
    return store, lag, lag_task, nodes, svc


async def main(replicas: int) -> None:
    from pyswarm.manager.orchestrator import Orchestrator
    from pyswarm.manager.scheduling import Scheduler
    from pyswarm.manager.updater import Updater
    from pyswarm.models import Task

    with tempfile.TemporaryDirectory() as tmp:
        store, lag, lag_task, _, svc = await start_store(tmp)
        loops = [Orchestrator(store), Updater(store), Scheduler(store)]
        tasks = [asyncio.create_task(loop.run()) for loop in loops]

        def count() -> int:
            return store.snapshot().count("task")

        await _wait("3 tasks", lambda: count() == 3, 30)
        at_3 = raft_files(Path(tmp))
        up = svc.to_dict()
        up["spec"]["replicas"] = replicas
        up["version"] = svc.version  # a scale is no update
        lag_before = lag.worst(60)
        t_up = time.monotonic()
        await store.commit([["put", "service", svc.id, up]])
        await _wait(f"{replicas} tasks", lambda: count() >= replicas, 600)
        up_s = time.monotonic() - t_up
        lag_up = lag.worst(up_s + 1)
        await asyncio.sleep(5)  # the scheduler's last commits, and a compaction the journal asked for
        at_n = raft_files(Path(tmp))
        # the peer: what one pass cost when each deserialized every task
        raws = list(store.snapshot().raw["task"].values())
        t0 = time.perf_counter()
        for raw in raws:
            Task.from_dict(raw)
        full_pass = time.perf_counter() - t0
        await asyncio.sleep(1.5)  # that pass held this loop: keep it out of the next figure
        down = dict(up, spec={**up["spec"], "replicas": 3})
        t_down = time.monotonic()
        await store.commit([["put", "service", svc.id, down]])
        await _wait("3 tasks again", lambda: count() <= 3 + 3 * 5, 600)
        down_s = time.monotonic() - t_down
        lag_down = lag.worst(down_s + 1)
        at_down = raft_files(Path(tmp))
        t_settle = time.monotonic()
        # the journal back to what 3 tasks need: the file cut, a dump of 3 tasks (~30 kB)
        settled = True
        try:
            await _wait("compaction", lambda: raft_files(Path(tmp))[0] <= 2 << 20
                        and raft_files(Path(tmp))[1] <= max(64 << 10, at_n[1] // 10), 120)
        except SystemExit:
            settled = False
        settle_s = time.monotonic() - t_settle
        after = raft_files(Path(tmp))
        for loop in loops:
            loop.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        lag_task.cancel()
        store.stop()
        raft_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
    print(f"scale 3 -> {replicas}: {up_s:.1f} s until the store held them; loop lag max {lag_up * 1000:.0f} ms "
          f"(at rest before: {lag_before * 1000:.0f} ms)")
    print(f"scale {replicas} -> 3: {down_s:.1f} s until the store held what 3 replicas need; "
          f"loop lag max {lag_down * 1000:.0f} ms; {count_left(store)} tasks left")
    print(f"peer: one deserialization of every task (a planner pass before): {full_pass * 1000:.0f} ms; "
          f"ratio of the worst loop lag to it: {max(lag_up, lag_down) / full_pass:.2f}")
    print(f"raft directory after: {raft_mb:.1f} MB")
    print(f"raft files at 3: {_mb(at_3)}; at {replicas}: {_mb(at_n)}; right after the way down: {_mb(at_down)}")
    print(f"raft files {'settled' if settled else 'NOT settled'} {settle_s:.1f} s later: {_mb(after)}; "
          f"ratio to {replicas}: journal {after[0] / max(1, at_n[0]):.3f}, dump {after[1] / max(1, at_n[1]):.3f}")


def count_left(store: object) -> int:
    return int(store.snapshot().count("task"))  # type: ignore[attr-defined]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(main(args.replicas))
