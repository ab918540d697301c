"""asyncio helpers every component shares.

:func:`spawn` is how a background task is started: whatever it raises is
read and logged with its traceback when it ends, so no failure is left for
asyncio's "Task exception was never retrieved" at garbage collection (or
lost altogether, as a silent stop of whatever the task did).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("pyswarm")


def spawn(coro: Coroutine[Any, Any, T], name: str, logger: logging.Logger = log) -> asyncio.Task[T]:
    """``asyncio.create_task`` whose exception, if any, is logged when it ends."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(lambda t: _log_failure(t, logger))
    return task


def _log_failure(task: asyncio.Task[Any], logger: logging.Logger) -> None:
    if task.cancelled():
        return
    exc = task.exception()  # retrieved: asyncio will not complain about it later
    if exc is not None:
        logger.error("background task %s failed: %s: %s", task.get_name(), type(exc).__name__, exc, exc_info=exc)


async def reap(*tasks: asyncio.Future[Any]) -> list[BaseException]:
    """Cancel ``tasks``, wait for them, and return what they raised (read)."""
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]


async def host_answers(addr: str, port: int, timeout: float, refused_answers: bool = True) -> bool:
    """Whether ``addr``'s host answers a TCP connect to ``port`` within
    ``timeout``: accepted, or (``refused_answers``) refused, which its
    kernel does too. The fence's reachability rule, on both sides
    (worker/fence.py, the dispatcher's sessions; docs/healing.md)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    except ConnectionRefusedError:
        return refused_answers
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True
