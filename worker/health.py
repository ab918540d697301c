"""Healthchecks: the stack file's ``healthcheck`` for the engine, and what
the engine says about a container's health, for the task's state.

A task with a healthcheck counts as ``running`` only once the engine calls
it healthy: until then the agent reports ``starting`` (so DNS, which answers
only with running tasks, leaves it out), and an ``unhealthy`` verdict makes
the task ``failed`` — the orchestrator replaces it and the agent removes the
container, as Swarm does. Pure functions; the agent does the I/O and
listens for the engine's ``health_status`` events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyswarm.compose.units import parse_duration

_DURATIONS = (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod"),
              ("start_interval", "StartInterval"))


def engine_healthcheck(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """``options["healthcheck"]`` (compose long syntax, as :mod:`pyswarm.compose`
    normalises it) as the Engine API's ``Healthcheck``; None when the service
    has none (the image's own HEALTHCHECK, if any, still applies)."""
    hc = options.get("healthcheck")
    if not isinstance(hc, Mapping):
        return None
    out: dict[str, Any] = {}
    test = hc.get("test")
    if isinstance(test, str):
        out["Test"] = ["CMD-SHELL", test]
    elif isinstance(test, list) and test:
        out["Test"] = [str(word) for word in test]
    for key, engine_key in _DURATIONS:
        if hc.get(key) not in (None, ""):
            out[engine_key] = int(round(parse_duration(hc[key]) * 1e9))
    if hc.get("retries") not in (None, ""):
        out["Retries"] = int(hc["retries"])
    return out or None


def health_status(inspect: Mapping[str, Any]) -> str:
    """``starting``, ``healthy``, ``unhealthy``, or ``""`` when the container
    has no healthcheck."""
    health = (inspect.get("State") or {}).get("Health") or {}
    return str(health.get("Status") or "") if isinstance(health, Mapping) else ""


def unhealthy_reason(inspect: Mapping[str, Any]) -> str:
    """The error for a task whose container turned unhealthy: the last
    probe's exit code and output, which usually say what is wrong."""
    health = (inspect.get("State") or {}).get("Health") or {}
    log = health.get("Log") if isinstance(health, Mapping) else None
    last = log[-1] if isinstance(log, list) and log and isinstance(log[-1], Mapping) else {}
    output = " ".join(str(last.get("Output") or "").split())[:200]
    code = last.get("ExitCode")
    detail = f" (last probe exit {code}" + (f": {output}" if output else "") + ")" if code is not None else ""
    return f"container unhealthy{detail}"


def is_health_event(action: str) -> bool:
    """The engine's ``health_status: healthy`` / ``: unhealthy`` event actions."""
    return action.startswith("health_status")
