"""The CLI side of logs/events (pyswarm/cli/streams.py): times and line prefixes."""

from __future__ import annotations

import argparse
import io

import pytest

from pyswarm.cli.streams import LogPrinter, parse_time, rfc3339
from pyswarm.errors import UsageError


def test_times_as_durations_rfc3339_and_unix() -> None:
    s = 1_000_000_000
    assert parse_time("10m", now=1000.0) == 400 * s
    assert parse_time("1h30m", now=10_000.0) == (10_000 - 5400) * s
    assert parse_time("2026-12-01T09:00:00Z") == 1796115600 * s
    assert parse_time("2026-12-01T10:00:00.25+01:00") == 1796115600 * s + 250_000_000
    assert parse_time("2026-12-01T09:00:00.123456789Z") == 1796115600_123456789  # exact
    assert parse_time("1796115600") == 1796115600 * s
    assert parse_time("1796115600.5") == 1796115600 * s + 500_000_000
    with pytest.raises(UsageError, match="invalid time"):
        parse_time("yesterday")


def test_rfc3339_keeps_nanoseconds() -> None:
    assert rfc3339(1796115600_000000042) == "2026-12-01T09:00:00.000000042Z"


def printer(**flags: bool) -> tuple[LogPrinter, io.StringIO, io.StringIO]:
    args = argparse.Namespace(raw=False, timestamps=False, no_task_ids=False, no_trunc=False)
    vars(args).update(flags)
    out, err = io.StringIO(), io.StringIO()
    return LogPrinter(args, out, err), out, err


TASK = "abcdef0123456789abcdef"
ITEM = {"tasks": {TASK: {"service": "s_web", "slot": 2, "node": "worker1"}},
        "lines": [[TASK, 1, "stdout", "hi"], [TASK, 2, "stderr", "oops"]]}


def test_prefix_names_service_slot_task_and_node_and_stderr_goes_to_stderr() -> None:
    p, out, err = printer()
    p.write(ITEM)
    assert out.getvalue() == "s_web.2.abcdef012345@worker1 | hi\n"
    assert err.getvalue() == "s_web.2.abcdef012345@worker1 | oops\n"


def formatted(**flags: bool) -> str:
    p = printer(**flags)[0]
    p.add_tasks(ITEM["tasks"])  # type: ignore[arg-type]
    return p.format([TASK, 1, "stdout", "hi"])


def test_prefix_flags() -> None:
    assert formatted(no_task_ids=True) == "s_web.2@worker1 | hi"
    assert formatted(no_trunc=True).startswith("s_web.2.abcdef0123456789abcdef@worker1 |")
    assert formatted(raw=True) == "hi"
    assert formatted(raw=True, timestamps=True) == "1970-01-01T00:00:00.000000001Z hi"


def test_a_colour_per_task_on_a_terminal() -> None:
    p, _, _ = printer()
    p.colour = True
    p.add_tasks({"t1": {"service": "a", "slot": 1, "node": "n"}, "t2": {"service": "a", "slot": 2, "node": "n"}})
    one, two = p.format(["t1", 1, "stdout", "x"]), p.format(["t2", 1, "stdout", "x"])
    assert one.startswith("\x1b[") and two.startswith("\x1b[") and one[:5] != two[:5]
