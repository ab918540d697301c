"""Helpers shared by tests: waiting on a condition with a deadline, and the
e2e modules' view of the lab through the CLI of its first manager.

Import with ``from support import wait_for`` (tests/ is not a package;
tests/conftest.py puts this directory on ``sys.path``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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


@contextmanager
def deployed_stacks(lab: Any, tmp_path: Path) -> Iterator[Callable[[str, str], None]]:
    """``deploy(stack, yaml)`` on ``lab``'s first manager. Every stack deployed
    is removed on the way out, waiting until its containers are gone from
    every host, so a shared lab is left as it was found."""
    stacks: list[str] = []

    def deploy(stack: str, text: str) -> None:
        path = tmp_path / f"{stack}.yml"
        path.write_text(text)
        lab.pyswarm(lab.managers[0], "stack", "deploy", "-c", str(path), stack, timeout=60)
        stacks.append(stack)

    try:
        yield deploy
    finally:
        for stack in stacks:
            lab.pyswarm(lab.managers[0], "stack", "rm", stack, check=False)
        for stack in stacks:
            def gone(stack: str = stack) -> bool:
                return all(not lab.docker(h, "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={stack}",
                                          timeout=30).stdout.strip() for h in lab.hosts)
            wait_for(gone, 30, f"stack {stack}'s containers removed from every host")


# -- the lab through `pyswarm` on its first manager (the e2e modules) ----------


def cli(lab: Any, *args: str, **kw: Any) -> str:
    return str(lab.pyswarm(lab.managers[0], *args, timeout=60, **kw).stdout)


def cli_json(lab: Any, *args: str) -> Any:
    return json.loads(cli(lab, *args, "--format", "json"))


def tasks(lab: Any, service: str) -> list[dict[str, Any]]:
    return list(cli_json(lab, "service", "ps", service))


def live(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in rows if t["desired_state"] == "running"]


def running(lab: Any, service: str) -> list[dict[str, Any]]:
    return [t for t in live(tasks(lab, service)) if t["current_state"] == "running"]


def brief(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a failure message shows of each task."""
    return [(t["name"], t["node"], t["desired_state"], t["current_state"], t["error"] or t["message"]) for t in rows]
