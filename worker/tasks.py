"""Pure task logic of the agent: what the manager assigns, what the engine
has, what to do about the difference, and what to report.

Kept free of I/O so that the decisions — the part that must be right when a
leader fails over and a new one adopts running containers — are unit tested
without an engine. :mod:`pyswarm.worker.agent` does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyswarm import protocol
from pyswarm.models import ContainerSpec, Model, TaskState

from .ingress import host_port_bindings
from .health import engine_healthcheck, health_status, unhealthy_reason
from .options import LABEL_STOP_GRACE, apply_options

# engine states, grouped by what they mean for a task
LIVE_STATES = frozenset({"running", "restarting", "paused"})
DONE_STATES = frozenset({"exited", "dead"})

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]")


@dataclass
class Assignment(Model):
    """One task as the manager assigns it (see :mod:`pyswarm.protocol`)."""

    task_id: str
    service_id: str = ""
    service_name: str = ""
    stack: str = ""
    slot: int = 0
    node_id: str = ""
    spec: ContainerSpec = field(default_factory=lambda: ContainerSpec(image=""))
    dns_search: list[str] = field(default_factory=list)
    # files with their data (see pyswarm.worker.files): [{name, target, uid, gid, mode, data}]
    secrets: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    # the X-Registry-Auth value for pulling spec.image (stack deploy --with-registry-auth)
    registry_auth: str = ""

    def __repr__(self) -> str:  # never log secret data
        return f"Assignment(task_id={self.task_id!r}, service_name={self.service_name!r})"

    @classmethod
    def parse(cls, data: Any) -> Assignment:
        """Validate one wire assignment; ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"assignment is not an object: {data!r:.100}")
        if not data.get("task_id") or not isinstance(data.get("task_id"), str):
            # keys only: the message may be logged, and values may be secrets
            raise ValueError(f"assignment without task_id (keys: {', '.join(sorted(map(str, data)))})")
        spec = data.get("spec")
        if not isinstance(spec, dict) or not spec.get("image"):
            raise ValueError(f"assignment {data['task_id']}: spec.image missing")
        a = cls.from_dict(data)
        a.slot = int(a.slot or 0)
        a.dns_search = [str(d) for d in (a.dns_search or [])]
        return a

    @property
    def container_name(self) -> str:
        """``SERVICE.SLOT.TASKID`` like Swarm (``SERVICE.NODEID.TASKID`` for
        global services, whose slot is 0), so ``docker ps`` on a node reads
        the same as on a Swarm node."""
        middle = str(self.slot) if self.slot else (self.node_id or "0")
        name = f"{self.service_name or 'task'}.{middle}.{self.task_id}"
        return _NAME_BAD.sub("_", name)


@dataclass(frozen=True)
class ExistingContainer:
    """A container on the engine that carries a task label."""

    id: str
    task_id: str
    name: str = ""
    state: str = ""
    created: int = 0
    stop_grace: int | None = None  # the service's stop_grace_period, from our label

    @classmethod
    def from_api(cls, c: Mapping[str, Any]) -> ExistingContainer:
        """From one ``GET /containers/json`` entry."""
        labels = c.get("Labels") or {}
        names = c.get("Names") or []
        return cls(
            id=str(c.get("Id", "")),
            task_id=str(labels.get(protocol.LABEL_TASK_ID, "")),
            name=str(names[0]).lstrip("/") if names else "",
            state=str(c.get("State", "")),
            created=int(c.get("Created") or 0),
            stop_grace=_int_or_none(labels.get(LABEL_STOP_GRACE)),
        )


@dataclass
class Plan:
    create: list[Assignment] = field(default_factory=list)
    adopt: list[tuple[Assignment, ExistingContainer]] = field(default_factory=list)
    remove: list[ExistingContainer] = field(default_factory=list)


def _preference(c: ExistingContainer, own_name: str) -> tuple[int, int, int]:
    order = 0 if c.state in LIVE_STATES else 1 if c.state == "created" else 2
    # the engine allows one container per name: the one with the task's own
    # name is the one this agent made (and reported); a twin is an intruder
    return (order, 0 if c.name == own_name else 1, -c.created)


def plan_reconcile(assigned: Iterable[Assignment], existing: Iterable[ExistingContainer]) -> Plan:
    """Converge the engine on the assigned set.

    - a task with no container is created;
    - a task with containers adopts the best one (live before created before
      finished, then the one with the task's own container name, then the
      newest) and the others are removed, so a crash between create and
      report, or a container started by hand with the task's labels, can
      never leave two replicas of one task;
    - a container whose task is not assigned is removed.
    Containers without a task label never reach this function: they are not
    ours.
    """
    by_task: dict[str, list[ExistingContainer]] = {}
    for c in existing:
        if c.task_id:
            by_task.setdefault(c.task_id, []).append(c)
    plan = Plan()
    wanted: set[str] = set()
    for a in assigned:
        if a.task_id in wanted:
            continue
        wanted.add(a.task_id)
        own = a.container_name
        mine = sorted(by_task.get(a.task_id, []), key=lambda c: _preference(c, own))
        if not mine:
            plan.create.append(a)
            continue
        plan.adopt.append((a, mine[0]))
        plan.remove.extend(mine[1:])
    for task_id, containers in by_task.items():
        if task_id not in wanted:
            plan.remove.extend(containers)
    return plan


def container_labels(a: Assignment) -> dict[str, str]:
    """The spec's labels plus ours; ours win, since adoption depends on them."""
    labels = {str(k): str(v) for k, v in (a.spec.labels or {}).items()}
    labels.update({
        protocol.LABEL_TASK_ID: a.task_id,
        protocol.LABEL_SERVICE_ID: a.service_id,
        protocol.LABEL_SERVICE_NAME: a.service_name,
        protocol.LABEL_SLOT: str(a.slot),
        protocol.LABEL_NODE_ID: a.node_id,
    })
    if a.stack:
        labels[protocol.LABEL_STACK] = a.stack
    return labels


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def container_config(a: Assignment, dns: Sequence[str],
                     files: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for one task.

    No restart policy: the orchestrator replaces dead tasks with new ones, as
    Swarm does, so that a crash is visible in ``service ps``. ``Dns`` is the
    managers' addresses from ``configure`` and ``DnsSearch`` the stack's
    domain, so a bare service name resolves inside the stack.
    """
    config: dict[str, Any] = {
        "Image": a.spec.image,
        "Labels": container_labels(a),
        "Env": [f"{k}={v}" for k, v in (a.spec.env or {}).items()],
        "HostConfig": {
            "NetworkMode": protocol.NETWORK_NAME,
            "Dns": list(dns),
            "DnsSearch": list(a.dns_search),
            "RestartPolicy": {"Name": "no"},
        },
        "NetworkingConfig": {"EndpointsConfig": {protocol.NETWORK_NAME: {}}},
    }
    if a.spec.command is not None:
        config["Cmd"] = list(a.spec.command)
    if a.spec.entrypoint is not None:
        config["Entrypoint"] = list(a.spec.entrypoint)
    # the stack file's other keys (volumes, user, limits, ...); `files` are
    # the secret/config mounts made by pyswarm.worker.files
    apply_options(config, a.spec, files)
    published = host_port_bindings(a.spec.options)  # mode: host ports (issue 6)
    if published:
        config["ExposedPorts"] = published["ExposedPorts"]
        config["HostConfig"]["PortBindings"] = published["PortBindings"]
    healthcheck = engine_healthcheck(a.spec.options)
    if healthcheck is not None:
        config["Healthcheck"] = healthcheck
    return config


def container_ip(inspect: Mapping[str, Any]) -> str:
    """The container's address on our network (any network as a fallback,
    for containers created by hand or by an older agent)."""
    networks = (inspect.get("NetworkSettings") or {}).get("Networks") or {}
    ours = networks.get(protocol.NETWORK_NAME) or {}
    if ours.get("IPAddress"):
        return str(ours["IPAddress"])
    for net in networks.values():
        if isinstance(net, dict) and net.get("IPAddress"):
            return str(net["IPAddress"])
    return ""


@dataclass(frozen=True)
class Observed:
    """A task state read off a container, ready to become a ``status``."""

    state: TaskState
    container_id: str
    ip: str = ""
    exit_code: int | None = None
    message: str = ""
    error: str = ""


def observe(inspect: Mapping[str, Any]) -> Observed | None:
    """Map ``GET /containers/{id}/json`` to a task state; None while the
    container is in between (created, being removed)."""
    st = inspect.get("State") or {}
    status = str(st.get("Status", ""))
    cid = str(inspect.get("Id", ""))
    if status in LIVE_STATES:
        # with a healthcheck, running means healthy (worker/health.py)
        health = health_status(inspect)
        if health == "starting":
            return Observed(TaskState.STARTING, cid, container_ip(inspect), message="waiting to be healthy")
        if health == "unhealthy":
            return Observed(TaskState.FAILED, cid, message="unhealthy", error=unhealthy_reason(inspect))
        return Observed(TaskState.RUNNING, cid, container_ip(inspect), message="started")
    if status in DONE_STATES:
        return observe_exit(cid, int(st.get("ExitCode") or 0), oom=bool(st.get("OOMKilled")),
                            error=str(st.get("Error") or ""), dead=status == "dead")
    return None


def observe_exit(container_id: str, code: int, *, oom: bool = False, error: str = "",
                 dead: bool = False) -> Observed:
    """A finished container: exit 0 is ``complete``, anything else (or an
    engine error, an OOM kill) is ``failed`` with the reason."""
    if oom:
        error = error or "container killed: out of memory"
    if code == 0 and not dead and not error:
        return Observed(TaskState.COMPLETE, container_id, exit_code=0, message="finished")
    return Observed(TaskState.FAILED, container_id, exit_code=code, message="exited",
                    error=error or f"task: non-zero exit ({code})")
