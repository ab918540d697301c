"""Watching a change converge: what ``service create/update/scale/rollback``
and ``stack deploy --detach=false`` show while the cluster does the work.

The CLI polls the manager's ``service.progress`` (one row a service: the
tasks of its current version running out of desired, the rollout's state,
and the reason the newest task that does not run gives). :class:`Tracker`
turns successive rows into a verdict per service: converging, converged, or
failed — failed when a task cannot be placed or keeps failing and nothing
got better for a short grace (``PYSWARM_PROGRESS_GRACE`` seconds, default
10), or when the rollout paused or rolled back. The change itself is never
undone by the watcher: it only stops watching and says why.

On a terminal the rows are a live rich table (a bar per service); on
anything else, plain lines, one per change, no escape codes, so logs and
pipes stay readable. Ctrl-C stops the watching, never the change.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

CONVERGING, CONVERGED, FAILED = "converging", "converged", "failed"
POLL = 0.5


def grace_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("PYSWARM_PROGRESS_GRACE", "10")))
    except ValueError:
        return 10.0


@dataclass
class State:
    """What the watcher knows of one service."""

    name: str
    running: int = 0
    desired: int = 0
    reason: str = ""
    status: str = CONVERGING
    best: int = -1  # most tasks seen running
    improved_at: float = 0.0
    failures_at_start: int | None = None

    def line(self) -> str:
        text = f"{self.name}: {self.running}/{self.desired} running"
        if self.status == CONVERGED:
            return text + ": converged"
        if self.status == FAILED:
            return text + f": failed: {self.reason}"
        return text + (f" ({self.reason})" if self.reason else "")


@dataclass
class Tracker:
    """Verdicts from successive ``service.progress`` rows (pure: the clock is given)."""

    grace: float
    rollback: bool = False  # watching a rollback: rollback_completed is success
    states: dict[str, State] = field(default_factory=dict)

    def observe(self, rows: Sequence[dict[str, Any]], now: float) -> list[State]:
        for row in rows:
            st = self.states.setdefault(row["service"], State(row["service"], improved_at=now))
            if st.status != CONVERGING:
                continue
            st.running, st.desired = int(row["running"]), int(row["desired"])
            if st.failures_at_start is None:
                st.failures_at_start = int(row.get("failures", 0))
            if st.running > st.best:
                st.best, st.improved_at = st.running, now
            update = str(row.get("update_state") or "")
            st.reason = str(row.get("reason") or "")
            if update in ("updating", "rollback_started") and not st.reason:
                st.reason = str(row.get("update_message") or update)
            if update in ("paused", "rollback_paused"):
                st.status, st.reason = FAILED, f"update {update.replace('_', ' ')}: {row.get('update_message', '')}"
            elif update == "rollback_completed" and not self.rollback:
                st.status, st.reason = FAILED, f"rolled back: {row.get('update_message', '')}"
            elif (st.running == st.desired and int(row.get("outdated", 0)) == 0
                  and update not in ("updating", "rollback_started")):
                st.status, st.reason = CONVERGED, ""
            elif now - st.improved_at >= self.grace:
                new_failures = int(row.get("failures", 0)) - (st.failures_at_start or 0)
                if row.get("unplaced"):
                    st.status, st.reason = FAILED, str(row["unplaced"])
                elif new_failures >= 2 and row.get("last_error"):
                    st.status, st.reason = FAILED, f"tasks keep failing: {row['last_error']}"
        return list(self.states.values())

    @property
    def done(self) -> bool:
        return bool(self.states) and all(s.status != CONVERGING for s in self.states.values())

    @property
    def failed(self) -> bool:
        return any(s.status == FAILED for s in self.states.values())


def watch(services: Sequence[str], poll: Callable[[list[str]], list[dict[str, Any]]],
          out: TextIO | None = None, *, tty: bool | None = None, rollback: bool = False,
          grace: float | None = None, interval: float = POLL) -> int:
    """Show ``services`` converging; 0 once all converged, 1 when one
    failed (its reason printed), 130 on Ctrl-C (the change goes on)."""
    out = out or sys.stdout
    if not services:
        return 0
    tracker = Tracker(grace_seconds() if grace is None else grace, rollback)
    is_tty = out.isatty() if tty is None else tty
    view: _Live | _Lines = _Live(out) if is_tty else _Lines(out)
    try:
        with view:
            while True:
                states = tracker.observe(poll(list(services)), time.monotonic())
                view.show(states)
                if tracker.done:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        out.write("Stopped watching; the change goes on (see `pyswarm service ps`).\n")
        out.flush()
        return 130
    return 1 if tracker.failed else 0


class _Lines:
    """A non-terminal: one plain line each time a service's line changes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: dict[str, str] = {}

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.flush()

    def show(self, states: Sequence[State]) -> None:
        for st in states:
            line = st.line()
            if self.last.get(st.name) != line:
                self.last[st.name] = line
                self.out.write(line + "\n")
        self.out.flush()


class _Live:
    """A terminal: a rich table redrawn in place, then the final lines."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=out, force_terminal=True, highlight=False)
        self.live = Live(console=self.console, auto_refresh=False, transient=True)
        self.states: Sequence[State] = ()

    def __enter__(self) -> _Live:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)
        for st in self.states:
            style = {CONVERGED: "green", FAILED: "red"}.get(st.status, "yellow")
            self.console.print(st.line(), style=style, markup=False)

    def show(self, states: Sequence[State]) -> None:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        self.states = states
        table = Table.grid(padding=(0, 2))
        for st in states:
            bar = ProgressBar(total=max(st.desired, 1), completed=st.running if st.desired else 1, width=30)
            table.add_row(Text(st.name), bar, Text(f"{st.running}/{st.desired}"), Text(st.reason or st.status, no_wrap=True, overflow="ellipsis"))
        self.live.update(table, refresh=True)


__all__ = ["CONVERGED", "CONVERGING", "FAILED", "State", "Tracker", "grace_seconds", "watch"]
