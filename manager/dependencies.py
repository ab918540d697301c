"""``depends_on``: a service's tasks wait until what it depends on is up.

Swarm ignores ``depends_on`` (moby/moby#31333); pyswarm honours it as a
gate in front of the scheduler: a waiting task of a service whose
dependencies are not met is not placed, and keeps
``waiting for dependency X`` as its message (``service ps`` shows it). The
orchestrator is untouched (it still writes the tasks), and the gate is a
pure function of the snapshot, so a failover simply recomputes it.

A dependency is met when the other service of the same stack has a task
that is, for its ``condition``:

- ``service_started``: running;
- ``service_healthy``: running and healthy (a task's ``health`` field, when
  the model has one, must be ``healthy``; without health information a
  running task counts, since a task with a healthcheck only reaches
  ``running`` once healthy, issue 5);
- ``service_completed_successfully``: complete with exit code 0.

The gate orders *starts*, as ``docker compose`` does: a dependent already
running is not stopped when its dependency dies, but its replacement tasks
wait again. An optional dependency (``required: false``) that is not in the
stack is ignored; a required one that is missing keeps the service waiting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pyswarm.models import DESIRED_RUNNING, Service, Task, TaskState

_CONDITION_WORDS = {
    "service_started": "",
    "service_healthy": " to be healthy",
    "service_completed_successfully": " to complete",
}


def _met(condition: str, tasks: list[Task]) -> bool:
    if condition == "service_completed_successfully":
        return any(t.state == TaskState.COMPLETE and (t.exit_code or 0) == 0 for t in tasks)
    running = [t for t in tasks if t.state == TaskState.RUNNING and t.desired_state == DESIRED_RUNNING]
    if condition == "service_healthy":
        return any(str(getattr(t, "health", "") or "healthy") == "healthy" for t in running)
    return bool(running)


def blocked_services(services: Mapping[str, Service], tasks: Iterable[Task]) -> dict[str, str]:
    """Service id -> why its tasks wait, for every service held back."""
    by_name: dict[tuple[str, str], Service] = {(s.spec.stack, s.short_name): s for s in services.values()}
    gated = [s for s in services.values() if s.spec.depends_on]
    if not gated:
        return {}
    per_service: dict[str, list[Task]] = {}
    for t in tasks:
        per_service.setdefault(t.service_id, []).append(t)
    out: dict[str, str] = {}
    for service in gated:
        waiting = []
        for name, opts in service.spec.depends_on.items():
            condition = str(opts.get("condition", "service_started"))
            dep = by_name.get((service.spec.stack, name))
            if dep is None:
                if opts.get("required", True):
                    waiting.append(f"{name} (not deployed)")
                continue
            if not _met(condition, per_service.get(dep.id, [])):
                waiting.append(name + _CONDITION_WORDS.get(condition, ""))
        if waiting:
            out[service.id] = "waiting for dependency " + ", ".join(waiting)
    return out


__all__ = ["blocked_services"]
