"""manager/supervise.py: a leader loop that raises is logged with its
traceback and started again (a fresh component), with a growing pause; one
that keeps failing makes the manager give up leading; an injected fault
(debug.fail_loop) counts as a failure; stop() ends it for good."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyswarm.manager.supervise import Supervised


class Flaky:
    """Fails ``fails`` times in all (shared by every instance), then runs until stopped."""


    def __init__(self, state: dict[str, int]) -> None:
        self.state = state
        self.stopped = asyncio.Event()
        state["made"] += 1

    async def run(self) -> None:
        if self.state["fails"] > 0:
            self.state["fails"] -= 1
            raise TypeError("'<' not supported between instances of 'str' and 'int'")
        await self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


async def _until(cond: Any, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_failing_loop_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        state = {"fails": 2, "made": 0}
        gave_up: list[str] = []
        s = Supervised("scheduler", lambda: Flaky(state), lambda n, r: gave_up.append(n), backoff=(0.01, 0.05))
        task = asyncio.ensure_future(s.run())
        await _until(lambda: state["made"] == 3, "the third start")
        assert s.starts == 3 and "TypeError" in s.last_error and gave_up == []
        s.stop()
        await asyncio.wait_for(task, 2)
        assert state["made"] == 3, "a stopped loop was started again"
    with caplog.at_level("ERROR"):
        asyncio.run(main())
    failures = [r for r in caplog.records if "leader loop scheduler failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures), "each failure logged with its traceback"


def test_a_loop_that_keeps_failing_gives_up_leading() -> None:
    async def main() -> None:
        state = {"fails": 100, "made": 0}
        gave_up: list[tuple[str, str]] = []
        s = Supervised("orchestrator", lambda: Flaky(state), lambda n, r: gave_up.append((n, r)),
                       backoff=(0.001, 0.002), max_failures=3, window=60)
        task = asyncio.ensure_future(s.run())
        await _until(lambda: gave_up, "giving up")
        s.stop()
        await asyncio.wait_for(task, 2)
        name, reason = gave_up[0]
        assert name == "orchestrator" and reason.startswith("3 failures in ") and "TypeError" in reason
    asyncio.run(main())


def test_an_injected_fault_restarts_the_loop() -> None:
    async def main() -> None:
        state = {"fails": 0, "made": 0}
        s = Supervised("dispatcher", lambda: Flaky(state), backoff=(0.01, 0.01))
        task = asyncio.ensure_future(s.run())
        await _until(lambda: s.current is not None, "the first start")
        first = s.current
        assert s.inject_fault()
        await _until(lambda: s.starts == 2 and s.current is not None, "the restart")
        assert isinstance(first, Flaky) and first.stopped.is_set(), "the failed component was stopped"
        assert "InjectedFault" in s.last_error
        s.stop()
        await asyncio.wait_for(task, 2)
        assert not s.inject_fault(), "nothing to fail once stopped"
    asyncio.run(main())


def test_a_loop_that_returns_is_a_failure_too() -> None:
    class Quits:
        async def run(self) -> None:
            return

        def stop(self) -> None:
            pass

    async def main() -> None:
        s = Supervised("updater", Quits, backoff=(0.001, 0.001))
        task = asyncio.ensure_future(s.run())
        await _until(lambda: s.starts >= 3, "restarts")
        assert s.last_error == "returned without being stopped"
        s.stop()
        await asyncio.wait_for(task, 2)
    asyncio.run(main())
