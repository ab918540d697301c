"""Helpers shared by tests: waiting on a condition with a deadline.

Import with ``from support import wait_for`` (tests/ is not a package;
tests/conftest.py puts this directory on ``sys.path``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    describe: str,
    interval: float = 0.2,
    observe: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Fails the test after ``timeout`` seconds with ``describe`` and what was
    last seen: the predicate's last (falsy) return value or exception, and,
    when given, ``observe()`` (e.g. the output of ``docker ps``) so the
    failure says what the system looked like, not only that it timed out.
    Exceptions from the predicate count as "not yet" (the thing may still be
    starting) but are kept for the message.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported below
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            seen = f"\nlast seen: {last!r}"
            if observe is not None:
                try:
                    seen += f"\nstate: {observe()}"
                except Exception as exc:  # noqa: BLE001
                    seen += f"\nstate: (observe failed: {exc})"
            pytest.fail(f"timed out after {timeout:g}s waiting for {describe}{seen}", pytrace=False)
        time.sleep(interval)


def wait_until(
    check: Callable[[], tuple[object, T]],
    timeout: float,
    describe: str,
    interval: float = 0.1,
) -> T:
    """:func:`wait_for` for checks that return ``(verdict, what_was_seen)``:
    the failure message shows what the last check saw; returns that value
    once the verdict is true."""
    seen: list[T] = []

    def predicate() -> bool:
        ok, last = check()
        seen[:] = [last]
        return bool(ok)

    wait_for(predicate, timeout, describe, interval, observe=lambda: seen[0] if seen else None)
    return seen[0]
