"""Real Raft between separate processes on loopback: replication, failover
after SIGKILL, patience after a hold (manager/raft.py), and the Raft
secret: a process that does not know it can neither join the quorum nor
inject entries, and garbage on the Raft port does not disturb it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyswarm.manager.raft import MOST, WINDOW, Patience

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


def state(node: Node) -> dict[str, Any]:
    return dict(json.loads(node.ask("state")))


def hold(node: Node, seconds: float) -> None:
    """Stop the whole process for ``seconds`` (a gc pause or a starved
    process, as the soak saw them: 0.4-2.8 s at load 50-140)."""
    node.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        node.proc.send_signal(signal.SIGCONT)


def test_a_hold_that_was_not_a_death_makes_every_manager_patient(trio: list[Node]) -> None:
    """The soak's flapping: every hold of a leader's process longer than the
    0.4-1.0 s election timeout moved the leadership. The first hold still
    may (nobody knew), but all three managers then remember it, and the
    same hold of the new leader moves nothing."""
    wait_until(lambda: (len(leaders(trio)) == 1, None), 15, "one leader of three")
    quiet = [state(n) for n in trio]
    assert all(s["patience"] == 0 for s in quiet), f"a quiet cluster keeps pysyncobj's timeouts: {quiet}"

    first = leaders(trio)[0]
    hold(first, 1.5)
    def patient() -> tuple[bool, list[dict[str, Any]]]:
        states = [state(n) for n in trio]
        return all(x["patience"] >= 2.0 for x in states), states
    wait_until(patient, 10, "every manager patient after a 1.5 s hold (2 x the silence)")

    second = wait_until(lambda: (len(ls := leaders(trio)) == 1, ls), 15, "one leader after the first hold")[0]  # type: ignore[index]
    term = state(second)["term"]
    others = [n for n in trio if n is not second]
    seen: list[dict[str, Any]] = []
    second.proc.send_signal(signal.SIGSTOP)
    try:
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            seen += [state(n) for n in others]
            time.sleep(0.1)
    finally:
        second.proc.send_signal(signal.SIGCONT)
    until = time.monotonic() + 2.0  # and for a while after it resumed
    while time.monotonic() < until:
        seen += [state(n) for n in trio]
        time.sleep(0.1)
    moved = [s for s in seen if s["term"] != term]
    assert not moved, f"the second hold started an election (term {term} before): {moved[:3]}"
    assert state(second)["leader"], f"{second.addr} lost the leadership to a hold: {[state(n) for n in trio]}"
    assert others[0].ask("put after-the-holds") == "ok"


def test_patience_remembers_holds_not_deaths_and_passes_them_on_without_extending_them() -> None:
    p = Patience()
    p.note(0.1, now=0.0)  # a heartbeat's own jitter
    p.note(60.0, now=0.0)  # a restart or a partition: not a hold
    assert p.extra(0.0) == 0 and p.share(0.0) is None
    p.note(1.5, now=10.0)
    assert p.extra(10.0) == 3.0 and p.extra(10.0 + WINDOW - 1) == 3.0 and p.extra(10.0 + WINDOW + 1) == 0
    p.note(4.0, now=20.0)
    assert p.extra(20.0) == MOST, "capped"

    other = Patience()
    other.take(p.share(30.0), now=30.0)
    assert other.extra(30.0) == MOST
    # passed back and forth, it still ends when it ended where it was seen
    p.take(other.share(50.0), now=50.0)
    assert p.extra(20.0 + WINDOW + 1) == 0 and other.extra(20.0 + WINDOW + 1) == 0
    for garbage in (None, [], [1.0], ["1", 2], [True, 5], [1.0, 1e9], [1e9, 5.0], [float("nan"), 5.0], "x"):
        fresh = Patience()
        fresh.take(garbage, now=0.0)
        assert fresh.extra(0.0) == 0, garbage


def test_a_silence_heard_again_in_every_message_is_kept_once() -> None:
    p, other = Patience(), Patience()
    p.note(1.5, now=0.0)
    for i in range(2000):  # 20 messages a second for 100 s, on a link that grows slower
        now = i * 0.05
        shared = p.share(now)
        if shared is not None:
            other.take(shared, now + 0.0005 * i)
    assert len(other._seen) <= 2, f"{len(other._seen)} entries kept"
    assert other.extra(30.0) == 3.0 and other.extra(WINDOW + 2) == 0


def patient_trio(trio: list[Node], at_least: float) -> Node:
    """Hold the leader until every manager waits ``at_least`` s more (a
    hold is 2 x the silence), then return the leader after the hold."""
    wait_until(lambda: (len(leaders(trio)) == 1, None), 15, "one leader of three")
    hold(leaders(trio)[0], at_least / 2 + 0.3)

    def patient() -> tuple[bool, list[dict[str, Any]]]:
        states = [state(n) for n in trio]
        return all(x["patience"] >= at_least for x in states), states
    wait_until(patient, 10, f"every manager {at_least:.0f} s patient after a hold")
    return wait_until(lambda: (len(ls := leaders(trio)) == 1, ls), 15, "one leader after the hold")[0]  # type: ignore[index]


def test_a_killed_leader_is_replaced_in_pysyncobj_time_even_when_the_managers_are_patient(trio: list[Node]) -> None:
    """test_managers' SIGKILL after holds: a dead leader's sockets close,
    and the patience is for a leader that is silent, not for one whose
    connection closed. Replaced sooner than the patience alone would allow
    (it waits 0.4-1.0 s + the patience), and the election that follows
    runs on pysyncobj's timeouts: with patient candidates a split vote on
    a loaded host cost 6-7 s a round."""
    leader = patient_trio(trio, 3.0)
    rest = [n for n in trio if n is not leader]
    extra = min(state(n)["patience"] for n in rest)
    leader.kill()
    killed = time.monotonic()
    wait_until(lambda: (len(ls := leaders(rest)) == 1, [state(n) for n in rest]), extra,
               f"a leader among the survivors sooner than their {extra:.1f} s patience")
    print(f"leader SIGKILL with {extra:.1f} s patience -> new leader: {time.monotonic() - killed:.2f}s")
    assert rest[0].ask("put after-the-kill") == "ok"


def test_a_leader_stopped_for_good_is_replaced_within_the_patience_bound(trio: list[Node]) -> None:
    """A leader that stops without closing anything (a host gone, a
    partition, a process stopped for good) looks held: it is replaced
    once the patience (at most MOST s) has run out, and no later."""
    leader = patient_trio(trio, 3.0)
    rest = [n for n in trio if n is not leader]
    leader.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_until(lambda: (len(leaders(rest)) == 1, [state(n) for n in rest]), 1.0 + MOST + 3.0,
                   f"a leader among the others within 1.0 s + {MOST:.0f} s (the patience's bound) + 3 s")
        print(f"leader SIGSTOP for good -> new leader: {time.monotonic() - stopped:.2f}s")
    finally:
        leader.proc.send_signal(signal.SIGCONT)
