"""Watching a change converge: the verdicts, plain lines on a pipe, a live
rich view on a pseudo-terminal, and Ctrl-C stopping only the watching."""

from __future__ import annotations

import io
import os
import pty
import re
import threading
from typing import Any

from pyswarm import progress
from pyswarm.progress import CONVERGED, FAILED, Tracker


def row(name: str = "web", running: int = 0, desired: int = 3, **kw: Any) -> dict[str, Any]:
    base = {"service": name, "running": running, "desired": desired, "outdated": 0, "update_state": "",
            "update_message": "", "failures": 0, "last_error": "", "unplaced": "", "reason": ""}
    base.update(kw)
    return base


def test_converges_when_the_current_version_runs_everywhere() -> None:
    t = Tracker(grace=5)
    assert t.observe([row(running=1, reason="preparing")], 0)[0].line() == "web: 1/3 running (preparing)"
    assert not t.done
    t.observe([row(running=3, outdated=1, update_state="updating")], 1)
    assert not t.done, "old tasks still run: not converged"
    st = t.observe([row(running=3, update_state="completed")], 2)[0]
    assert st.status == CONVERGED and t.done and not t.failed and st.line() == "web: 3/3 running: converged"


def test_a_task_that_cannot_be_placed_fails_after_the_grace() -> None:
    t = Tracker(grace=5)
    stuck = row(running=2, reason="no suitable node (constraints)", unplaced="no suitable node (constraints)")
    t.observe([stuck], 0)
    t.observe([stuck], 4.9)
    assert not t.done, "failed before the grace"
    st = t.observe([stuck], 5.0)[0]
    assert st.status == FAILED and st.line() == "web: 2/3 running: failed: no suitable node (constraints)"


def test_progress_restarts_the_grace_and_failures_count_from_the_start() -> None:
    t = Tracker(grace=5)
    t.observe([row(running=0, failures=4, last_error="old")], 0)
    t.observe([row(running=1, failures=5, last_error="pull access denied")], 4)
    assert not t.done
    t.observe([row(running=1, failures=5, last_error="pull access denied")], 8.9)
    assert not t.done, "one new failure is not 'keeps failing'"
    st = t.observe([row(running=1, failures=6, last_error="pull access denied")], 9.1)[0]
    assert st.status == FAILED and st.reason == "tasks keep failing: pull access denied"


def test_paused_and_rolled_back_updates_fail_a_rollback_succeeds() -> None:
    t = Tracker(grace=60)
    st = t.observe([row(update_state="paused", update_message="update paused: 1 task failed")], 0)[0]
    assert st.status == FAILED and "update paused" in st.reason
    t = Tracker(grace=60)
    assert t.observe([row(update_state="rollback_completed", update_message="x")], 0)[0].status == FAILED
    t = Tracker(grace=60, rollback=True)
    assert t.observe([row(running=3, update_state="rollback_completed")], 0)[0].status == CONVERGED


def _polls(*steps: list[dict[str, Any]]) -> Any:
    seq = list(steps)

    def poll(names: list[str]) -> list[dict[str, Any]]:
        return seq.pop(0) if len(seq) > 1 else seq[0]
    return poll


def test_on_a_pipe_plain_lines_one_per_change() -> None:
    out = io.StringIO()
    poll = _polls([row(running=0, reason="pending"), row("db", running=0, desired=1)],
                  [row(running=0, reason="pending"), row("db", running=1, desired=1)],
                  [row(running=3), row("db", running=1, desired=1)])
    assert progress.watch(["web", "db"], poll, out, tty=False, interval=0) == 0
    text = out.getvalue()
    assert "\x1b" not in text
    assert text.splitlines() == ["web: 0/3 running (pending)", "db: 0/1 running", "db: 1/1 running: converged",
                                 "web: 3/3 running: converged"]


def test_failure_exits_non_zero_with_the_reason() -> None:
    out = io.StringIO()
    stuck = row(running=0, reason="no suitable node", unplaced="no suitable node")
    assert progress.watch(["web"], _polls([stuck]), out, tty=False, grace=0, interval=0) == 1
    assert out.getvalue().splitlines()[-1] == "web: 0/3 running: failed: no suitable node"


def test_ctrl_c_stops_watching_only() -> None:
    out = io.StringIO()

    def poll(names: list[str]) -> list[dict[str, Any]]:
        raise KeyboardInterrupt
    assert progress.watch(["web"], poll, out, tty=False) == 130
    assert "the change goes on" in out.getvalue()


def test_on_a_pseudo_terminal_a_live_view_then_the_final_lines() -> None:
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with os.fdopen(slave, "w", encoding="utf-8", closefd=True) as term:
        poll = _polls([row(running=1, reason="starting (waiting for the container to be healthy)")],
                      [row(running=2)], [row(running=3)])
        assert progress.watch(["web"], poll, term, interval=0.05) == 0
    reader.join(timeout=5)
    os.close(master)
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in raw, "no escape codes on a terminal: not a live view"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "1/3  starting (waiting" in plain, "the stuck task's reason is not shown beside the bar"
    assert "━" in plain, "no bar drawn"
    assert "web: 3/3 running: converged" in plain
