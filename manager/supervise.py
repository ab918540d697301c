"""Supervision of the leader's loops: a loop that raises is logged with its
traceback and started again, with a growing pause; one that keeps failing
makes the manager give up leading (it hands leadership to another manager,
whose loops may fare better, and says why).

Each supervised loop is a fresh component per start (``make()``), so a
failure cannot leave half-changed state behind for the next run; the
components talk only through the store, so a restart loses nothing that is
committed. A loop that *returns* without having been stopped counts as a
failure too: nothing is meant to end while this manager leads.

:meth:`Supervised.inject_fault` ends the running component as if it had
raised. Only the root-only unix socket reaches it (``debug.fail_loop``,
docs/security.md): it is how the lab proves that a killed loop comes back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

BACKOFF = (0.5, 10.0)  # first pause after a failure, and the longest
MAX_FAILURES = 5  # this many failures ...
WINDOW = 60.0  # ... within this many seconds: give up leading


class Component(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


class InjectedFault(Exception):
    """What :meth:`Supervised.inject_fault` makes a loop fail with."""


class Supervised:
    """Run ``make()``'s component until stopped, restarting it when it fails.
    ``on_give_up(name, reason)`` is called once :data:`MAX_FAILURES` failures
    fall within :data:`WINDOW` seconds (and again for every failure after,
    while the loop keeps being restarted at the longest pause)."""

    def __init__(self, name: str, make: Callable[[], Component],
                 on_give_up: Callable[[str, str], None] | None = None, *,
                 backoff: tuple[float, float] = BACKOFF, max_failures: int = MAX_FAILURES,
                 window: float = WINDOW) -> None:
        self.name = name
        self._make = make
        self._on_give_up = on_give_up
        self._backoff = backoff
        self._max_failures = max_failures
        self._window = window
        self._stopped = asyncio.Event()
        self._fault: asyncio.Future[str] | None = None
        self.current: Component | None = None
        self.starts = 0
        self.failures: collections.deque[float] = collections.deque(maxlen=max_failures)
        self.last_error = ""

    async def run(self) -> None:
        pause = self._backoff[0]
        while not self._stopped.is_set():
            self.current = self._make()
            self.starts += 1
            started = time.monotonic()
            try:
                await self._run_once(self.current)
                if self._stopped.is_set():
                    return
                reason = "returned without being stopped"
                log.error("leader loop %s %s; starting it again in %.1fs", self.name, reason, pause)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.error("leader loop %s failed (%s); starting it again in %.1fs", self.name, reason, pause,
                          exc_info=exc)
            finally:
                self.current = None
            self.last_error = reason
            now = time.monotonic()
            if now - started > self._window:
                pause = self._backoff[0]  # it ran well for a while: a fresh failure, not a streak
            self.failures.append(now)
            if len(self.failures) == self._max_failures and now - self.failures[0] <= self._window \
                    and self._on_give_up is not None:
                self._on_give_up(self.name, f"{len(self.failures)} failures in {now - self.failures[0]:.0f}s, "
                                            f"the last: {reason}")
            try:
                await asyncio.wait_for(self._stopped.wait(), pause)
            except asyncio.TimeoutError:
                pass
            pause = min(pause * 2, self._backoff[1])

    async def _run_once(self, component: Component) -> None:
        loop = asyncio.get_running_loop()
        self._fault = loop.create_future()
        runner: asyncio.Future[Any] = asyncio.ensure_future(component.run())
        fault: asyncio.Future[Any] = self._fault
        try:
            await asyncio.wait({runner, fault}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            raise
        if not runner.done():  # a fault was injected
            component.stop()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            raise InjectedFault(self._fault.result())
        self._fault.cancel()
        runner.result()  # raises the component's exception, read here so none goes unretrieved

    def inject_fault(self, why: str = "fault injected with debug.fail_loop") -> bool:
        """Fail the running component now; False when none runs."""
        if self._fault is None or self._fault.done() or self.current is None:
            return False
        self._fault.set_result(why)
        return True

    def stop(self) -> None:
        self._stopped.set()
        if self.current is not None:
            self.current.stop()


def describe(components: list[Supervised]) -> list[dict[str, Any]]:
    """What ``debug.fail_loop`` answers: each loop's starts and last error."""
    return [{"loop": c.name, "starts": c.starts, "last_error": c.last_error} for c in components]
