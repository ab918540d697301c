"""pysyncobj as the store runs it (:class:`RaftNode`), and its patience.

pysyncobj times Raft with fixed numbers: a follower that hears nothing from
its leader for 0.4-1.0 s starts an election, a leader that hears from no
majority for 1 s steps down. That is what makes failover fast, and what
made leadership move every 3-12 s in the soak (bench/RESULTS.md, session
20): at load 50-140 on 2 cores a manager's process was held for 0.4-2.8 s
at a time (gc, scheduling), and every such hold looked like a death. Each
new leader then opened a session to every node, which restarted every
agent, which loaded the machine further: the cluster never converged.

Two changes, after etcd's and Swarm's lessons rather than their numbers:

* **Judge after reading.** pysyncobj checks the election deadline (and a
  leader its majority) at the top of a tick, before it reads what arrived
  while its thread was held. A tick that starts late reads first: a held
  follower no longer elects itself over a leader whose heartbeats sit in
  its socket, a held leader no longer steps down from responses it has not
  read yet.
* **Patience follows what was seen** (:class:`Patience`). A silence that
  turned out not to be a death (the leader's next heartbeat came after
  all, or this replica's own thread was late while it led) is remembered for
  :data:`WINDOW` seconds, and elections and the leader's step-down wait
  :data:`FACTOR` times the longest such silence more, up to :data:`MOST`
  (Swarm's election timeout is 10 s). A quiet cluster keeps pysyncobj's
  timeouts, so a SIGKILLed leader is still replaced in about a second;
  a loaded one stops electing on every hiccup.
* **Patience is for a leader, not for an election.** Only the wait on a
  leader just heard is lengthened; once an election is under way its
  rounds are pysyncobj's (patient rounds lost every vote request to
  pysyncobj's idle-connection check: :meth:`RaftNode._SyncObj__generateRaftTimeout`).
  A leader whose connection closes while it was still talking died (a
  SIGKILL closes its sockets; a hold does not): no patience for it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer
from pysyncobj.pipe_notifier import PipeNotifier

from .compaction import Compaction

log = logging.getLogger(__name__)

NOTED = 0.2  # a silence this long is remembered (the heartbeat is 50 ms)
LONGEST = 5.0  # and no longer: past it, a restart or a partition, not a hold
WINDOW = 60.0  # seconds a silence is remembered
FACTOR = 2.0
MOST = 6.0  # seconds added at most: with pysyncobj's 1 s, Swarm's order of time
READ_FIRST_AFTER = 0.1  # a tick this late reads what arrived before it judges anyone
SAME_WITHIN = 1.0  # seconds: a silence heard again that would end this much later is the same one


class Patience:
    """The longest recent silence that was not a death, and what it adds
    to the Raft timeouts (pure: the clock is passed in).

    What one manager saw is the cluster's: every Raft message carries the
    longest silence its sender remembers and for how long it still does
    (:meth:`share`), and the receiver remembers it until then too
    (:meth:`take`). Without that, the one follower that did not see the
    last hold would still elect itself at the next, and win: a vote is
    granted to any candidate with the log, whatever the voter thinks of its
    leader. A silence passed on ends when it would have ended where it was
    seen, so two managers cannot keep each other's alive."""

    def __init__(self) -> None:
        self._seen: list[tuple[float, float]] = []  # (until, seconds silent)

    def note(self, silent: float, now: float) -> None:
        if NOTED <= silent <= LONGEST:
            self._remember(silent, now + WINDOW, now, "seen here")

    def _remember(self, silent: float, until: float, now: float, how: str) -> None:
        # known already, for about as long: the same silence comes back in
        # every message (20 a second from each manager), a little later by
        # the time it took to arrive, and must not pile up
        if any(s >= silent and u >= until - SAME_WITHIN for u, s in self._seen):
            return
        if FACTOR * silent > self.extra(now):
            log.info("raft: a silence of %.1fs that was not a death (%s): elections and step-downs wait %.1fs more "
                     "for %.0fs", silent, how, min(MOST, FACTOR * silent), until - now)
        # only the Raft thread writes; a reader (the API's metrics) sees the old list or the new one
        self._seen = [(u, s) for u, s in self._seen if u > now and not (s <= silent and u <= until)] + \
            [(until, silent)]

    def longest(self, now: float) -> float:
        return max((s for u, s in self._seen if u > now), default=0.0)

    def extra(self, now: float) -> float:
        """Seconds added to the election timeout and the leader's fallback."""
        return min(MOST, FACTOR * self.longest(now))

    def share(self, now: float) -> list[float] | None:
        """[seconds silent, seconds still remembered] of the longest silence
        remembered; None when there is none (a quiet cluster sends nothing)."""
        silent = self.longest(now)
        if not silent:
            return None
        until = max(u for u, s in self._seen if s == silent and u > now)
        return [round(silent, 3), round(until - now, 3)]

    def take(self, shared: object, now: float) -> None:
        """Remember what another manager's :meth:`share` said; anything that
        is not two numbers in range counts as nothing."""
        if not (isinstance(shared, list) and len(shared) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in shared)):
            return
        silent, left = float(shared[0]), float(shared[1])
        if NOTED <= silent <= LONGEST and 0 < left <= WINDOW:
            self._remember(silent, now + left, now, "seen by another manager")


class RaftNode(SyncObj):  # type: ignore[misc]
    """pysyncobj, sending the entries a tick appended at once, woken by every
    command, patient as :class:`Patience` says (see the module's docstring).

    In batched mode pysyncobj appends queued commands at the end of a tick
    and sends them with the next heartbeat (up to ``appendEntriesPeriod``
    later); unbatched, it sends one message per command, which collapses
    under load. This sends each tick's new entries right away, in one
    message per follower: batched throughput with unbatched latency. A
    follower learns the new commit index with the next append (or the next
    heartbeat, ``appendEntriesPeriod``, when no write follows): sending it
    the moment the leader applied was tried and made a follower's p99 worse
    (161-475 ms against 3 ms in bench/raft_store.py, session 20)."""

    _SyncObj__raftElectionDeadline: float  # pysyncobj's, on its monotonic clock

    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf, state: SyncObjConsumer,
                 live_objects: Callable[[], int], dumped_objects: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        # set before SyncObj's own attributes are listed: not in the dump
        self.compaction = Compaction(conf.fullDumpFile, live_objects, dumped_objects)
        self.patience = Patience()
        self._clock = clock
        self._base_fallback = float(conf.leaderFallbackTimeout)
        self._tick_at = 0.0
        self._led = False  # leader when the last tick started
        self._heard: dict[Any, float] = {}  # node -> when its last append arrived, while it leads
        self._waiting_on_leader = False  # an append is being handled (the patient deadline)
        # pysyncobj makes its wake-up pipe only in unbatched mode: ours is
        # made by the Raft thread's first tick (the poller is its own)
        self._SyncObj__pipeNotifier: PipeNotifier | None = None
        super().__init__(self_addr, partners, conf, consumers=[state])
        self.addOnTickCallback(self._make_notifier)
        transport = self._SyncObj__transport
        send = transport.send

        def send_with_patience(node: Any, message: Any) -> Any:
            if isinstance(message, dict):
                shared = self.patience.share(self._clock())
                if shared is not None:
                    message["patience"] = shared  # Patience.take
            return send(node, message)
        transport.send = send_with_patience

    def _onTick(self, timeToWait: float = 0.0) -> None:
        now = self._clock()
        late = now - self._tick_at - timeToWait if self._tick_at else 0.0
        self._tick_at = now
        led, self._led = self._led, self._isLeader()
        if late > 0 and led:
            # held while it led (the last tick's wait, which read what
            # came meanwhile, may have made it a follower): its followers
            # waited for it. A follower held kept nobody waiting, and a
            # start's dump load is no hold.
            self.patience.note(late, now)
        if late > READ_FIRST_AFTER and self._SyncObj__transport.ready:
            # what arrived meanwhile, before judging anyone. (Pushing the
            # election deadline back by the delay too was tried: on a loaded
            # machine every tick is late, and no election ended within 15 s
            # of a leader's SIGKILL in tests/e2e/test_managers.py.)
            self._poller.poll(0)
        self._SyncObj__conf.leaderFallbackTimeout = self._base_fallback + self.patience.extra(now)
        super()._onTick(timeToWait)

    def _base_timeout(self) -> float:
        conf = self._SyncObj__conf
        return float(conf.raftMinTimeout + (conf.raftMaxTimeout - conf.raftMinTimeout) * random.random())

    def _SyncObj__generateRaftTimeout(self) -> float:
        """pysyncobj's 0.4-1.0 s, and the patience only on the deadline an
        append sets: the wait on a leader just heard. A start, a candidate's
        next round, a vote granted: an election is under way and goes in
        pysyncobj's time.

        Patient rounds never ended (tests/e2e/test_managers.py, 2 of 3 CI
        runs; tests/manager/test_raft.py): pysyncobj drops a connection that
        has read nothing for ``connectionTimeout`` (2 s), and checks that when
        it next sends. Followers send each other nothing between elections,
        so a candidate's vote requests went out on stale connections and were
        lost with them; the connection came back 0.5 s later, stayed silent
        through the next 4-7 s round and dropped the next requests the same
        way. Split votes every round, until the patience ran out (60 s)."""
        extra = self.patience.extra(self._clock()) if self._waiting_on_leader else 0.0
        return self._base_timeout() + extra

    def _cut_deadline(self, why: str) -> None:
        """The leader is gone as far as this follower can tell: the election
        deadline is pysyncobj's from now, whatever the patience."""
        deadline = time.monotonic() + self._base_timeout()  # pysyncobj's clock
        if self._SyncObj__raftElectionDeadline > deadline:
            log.info("raft: %s: an election in %.1fs, not %.1fs", why, deadline - time.monotonic(),
                     self._SyncObj__raftElectionDeadline - time.monotonic())
            self._SyncObj__raftElectionDeadline = deadline

    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:
        if node in self._SyncObj__connectedNodes:  # not each failed reconnect to a manager that is down
            log.info("raft: the connection to %s closed", getattr(node, "id", node))
        heard = self._heard.pop(node, None)  # a restarted manager's first append is no silence of its
        super()._SyncObj__onNodeDisconnected(node)
        # A connection that timed out (connectionTimeout without a byte)
        # may be a held leader or a partition: the patience stands. One
        # that closed while the leader was still talking was closed by its
        # process's end (a SIGKILL closes its sockets too): no patience for
        # the dead.
        if (node == self._SyncObj__raftLeader and not self._isLeader() and heard is not None
                and self._clock() - heard < self._SyncObj__conf.connectionTimeout):
            self._cut_deadline(f"the leader {getattr(node, 'id', node)} closed its connection")

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        """pysyncobj's handler, after noting how long a leader was silent, and
        except that a follower's acknowledgement of an earlier append does
        not move its next index back behind entries already sent after it.
        pysyncobj sets the next index to what the follower acknowledged, so
        with appends in flight (one per poke) it sent them again, and the
        follower truncated and re-added entries it had applied ("truncating
        already-applied log entries", measured by bench/raft_store.py). A
        follower that lacks what was sent answers ``reset``, which still
        moves the index back."""
        kind = message.get("type") if isinstance(message, dict) else None
        if kind is not None and "patience" in message:
            self.patience.take(message["patience"], self._clock())
        if kind == "request_vote":
            self._heard.pop(node, None)  # a candidate now: its next append is a new leader's first
            term = self._SyncObj__raftCurrentTerm
            super()._SyncObj__onMessageReceived(node, message)
            if isinstance(message.get("term"), int) and message["term"] > term and not self._isLeader():
                # an election is under way; when this follower refused the
                # vote (its log is ahead), it is the one to be elected, soon
                self._cut_deadline(f"a vote was asked for term {message['term']}")
            return
        elif kind == "append_entries":
            # an append after a silence: the sender was alive all along
            # (noted before pysyncobj sets the next election deadline)
            now = self._clock()
            before = self._heard.get(node)
            self._heard[node] = now
            if before is not None:
                self.patience.note(now - before, now)
        if kind == "append_entries":
            self._waiting_on_leader = True  # the deadline it sets is the patient one
            try:
                super()._SyncObj__onMessageReceived(node, message)
            finally:
                self._waiting_on_leader = False
            return
        if kind == "next_node_idx" and message.get("success") and not message.get("reset"):
            sent = self._SyncObj__raftNextIndex.get(node)
            super()._SyncObj__onMessageReceived(node, message)
            if sent is not None and self._SyncObj__raftNextIndex.get(node, sent) < sent:
                self._SyncObj__raftNextIndex[node] = sent
            return
        super()._SyncObj__onMessageReceived(node, message)

    def _SyncObj__setState(self, new_state: int) -> None:
        old = self._SyncObj__raftState
        super()._SyncObj__setState(new_state)
        if old != new_state:
            names = {0: "follower", 1: "candidate", 2: "leader"}
            log.info("raft: %s -> %s at term %d (patience %.1fs)", names.get(old, old), names.get(new_state, new_state),
                     self._SyncObj__raftCurrentTerm, self.patience.extra(self._clock()))

    def _SyncObj__setCurrentTerm(self, term: int, voted_for: Any) -> None:
        if voted_for is not None and (term, voted_for) != (self._SyncObj__raftCurrentTerm, self._SyncObj__votedForNodeId):
            log.info("raft: term %d: voted for %s", term, voted_for)
        super()._SyncObj__setCurrentTerm(term, voted_for)

    def _make_notifier(self) -> None:
        if self._SyncObj__pipeNotifier is None:
            self._SyncObj__pipeNotifier = PipeNotifier(self._poller)

    def _checkCommandsToApply(self) -> None:
        before = self._SyncObj__getCurrentLogIndex()
        super()._checkCommandsToApply()
        if self._isLeader() and self._SyncObj__getCurrentLogIndex() != before:
            self._SyncObj__sendAppendEntries()
            # the next tick, which commits (at once when this manager is the
            # majority alone), must not wait for the tick period
            self.poke()

    def shut(self) -> None:
        """Destroy, and wait (2 s at most) for the Raft thread to close its
        sockets: with 50 ms ticks it would otherwise still hold its port
        when the same manager starts again."""
        self.destroy()
        self.poke()
        thread = self._SyncObj__thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        notifier = self._SyncObj__pipeNotifier
        if notifier is not None and (thread is None or not thread.is_alive()):
            for fd in (notifier._PipeNotifier__pipeR, notifier._PipeNotifier__pipeW):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._SyncObj__pipeNotifier = None

    def poke(self) -> None:
        """End the Raft thread's wait now (from any thread)."""
        notifier = self._SyncObj__pipeNotifier
        if notifier is not None:
            try:
                notifier.notify()
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def _SyncObj__tryLogCompaction(self) -> None:
        """pysyncobj's rules (entries, time), and ours (bytes, live state)."""
        why = self.compaction.due(self._SyncObj__raftLog)
        if why:
            log.info("raft: compacting now: %s", why)
            self.forceLogCompaction()
        super()._SyncObj__tryLogCompaction()

    def _SyncObj__deleteEntriesTo(self, to_index: int) -> None:
        super()._SyncObj__deleteEntriesTo(to_index)
        self.compaction.compacted(self._SyncObj__raftLog)
