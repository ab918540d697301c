"""Real Raft between separate processes on loopback: replication, failover
after SIGKILL, and the Raft secret: a process that does not know it can
neither join the quorum nor inject entries, and garbage on the Raft port
does not disturb it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


class Node:
    def __init__(self, addr: str, data: Path, secret: str, peers: list[str]) -> None:
        self.addr = addr
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "raft_node.py"), addr, str(data), secret, *peers],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/tmp",
        )
        assert self.ask_raw() == "started"

    def ask_raw(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.ask_raw()

    def names(self) -> list[str]:
        return list(json.loads(self.ask("names")))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def wait_until(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = check()  # type: ignore[operator]
        if ok:
            return last
        time.sleep(0.05)
    pytest.fail(f"{what}: not true after {timeout:.0f}s; last seen: {last}")


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[Node]]:
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(a, tmp_path / f"n{i}", "the-secret", [p for p in addrs if p != a]) for i, a in enumerate(addrs)]
    yield nodes
    for n in nodes:
        n.kill()


def leaders(nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.proc.poll() is None and n.ask("leader") == "yes"]


def test_replication_and_failover_between_processes(trio: list[Node]) -> None:
    leader = wait_until(lambda: (len(ls := leaders(trio)) == 1, ls), 15, "one leader of three")[0]  # type: ignore[index]
    follower = next(n for n in trio if n is not leader)
    assert follower.ask("put via-follower") == "ok"
    for n in trio:
        wait_until(lambda: ("via-follower" in n.names(), n.names()), 5, f"the write replicated to {n.addr}")
    leader.kill()
    rest = [n for n in trio if n is not leader]
    killed = time.monotonic()
    wait_until(lambda: (rest[0].ask("put after-kill") == "ok", None), 15, "a write after the leader's SIGKILL")
    print(f"leader SIGKILL -> committed write: {time.monotonic() - killed:.2f}s")
    for n in rest:
        wait_until(lambda: ("after-kill" in n.names(), n.names()), 5, f"the write on {n.addr}")


def test_a_restarted_replica_is_in_sync_only_once_it_has_caught_up(trio: list[Node], tmp_path: Path) -> None:
    """A restarted manager first loads what it had on disk; deciding on that
    (am I still a manager? whose key do I use?) once retired a freshly
    promoted manager on restart. ``in_sync`` must wait for what the others
    committed while it was down."""
    leader = wait_until(lambda: (len(ls := leaders(trio)) == 1, ls), 15, "one leader of three")[0]  # type: ignore[index]
    follower = next(n for n in trio if n is not leader)
    assert leader.ask("put before") == "ok"
    wait_until(lambda: ("before" in follower.names(), follower.names()), 5, "the first write on the follower")
    follower.kill()
    for i in range(20):
        assert leader.ask(f"put while-down-{i}") == "ok"
    restarted = Node(follower.addr, tmp_path / f"n{trio.index(follower)}", "the-secret",
                     [n.addr for n in trio if n is not follower])
    trio[trio.index(follower)] = restarted
    seen = wait_until(lambda: ((got := json.loads(restarted.ask("synced"))) is not None, got), 15,
                      "the restarted replica in sync")
    assert seen == sorted(["before", *(f"while-down-{i}" for i in range(20))]), \
        f"in_sync with a snapshot that misses writes made while it was down: {seen}"


def test_a_process_without_the_secret_cannot_join_or_inject(trio: list[Node], tmp_path: Path) -> None:
    wait_until(lambda: (len(leaders(trio)) == 1, None), 15, "one leader of three")
    (port,) = free_ports(1)
    rogue = Node(f"127.0.0.1:{port}", tmp_path / "rogue", "a-wrong-secret", [n.addr for n in trio])
    try:
        answer = rogue.ask("put injected")
        assert answer.startswith("error: no quorum"), f"a rogue write was acknowledged: {answer}"
        # garbage on a member's Raft port
        host, p = trio[0].addr.split(":")
        with socket.create_connection((host, int(p)), timeout=2) as s:
            s.sendall(b"\x00" * 64 + b"not raft at all\r\n" * 100)
        assert trio[1].ask("put after-garbage") == "ok"
        for n in trio:
            wait_until(lambda: ("after-garbage" in n.names(), n.names()), 5, f"the cluster still replicating to {n.addr}")
            assert "injected" not in n.names(), f"the rogue's entry reached {n.addr}"
        assert rogue.ask("leader") == "no"
    finally:
        rogue.kill()
