"""The objects kept in the replicated store, shared by every component.

Each object is a plain dataclass that round-trips through JSON (``to_dict`` /
``from_dict``) because it crosses three boundaries: the Raft log, the API
socket and the SSH session to the agents. Desired state (``Service.spec``,
``Task.desired_state``) is kept apart from observed state (``Task.state``,
``Node.status``) so that a component can always tell what was asked from what
happened.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, TypeVar

from pyswarm.wire import rule

T = TypeVar("T")

# object names: a service's STACK_SERVICE, a stack, a secret (Docker's rules, bounded)
NAME_PATTERN = r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}"


_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(length: int = 25) -> str:
    """A random lowercase id, like Swarm's 25-character object ids (about
    5 bits of entropy a character: 128 over the id). ``secrets.choice`` per
    character was most of the cost of creating 100,000 tasks."""
    return secrets.token_bytes(length).translate(_ID_TABLE).decode()


_ID_TABLE = bytes(ord("0123456789abcdefghijklmnopqrstuvwxyz"[b % 36]) for b in range(256))  # byte -> base 36


def now() -> float:
    return time.time()


class TaskState(str, Enum):
    """Observed task state. It only moves forward, in this order."""

    NEW = "new"
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    SHUTDOWN = "shutdown"
    FAILED = "failed"
    REJECTED = "rejected"
    ORPHANED = "orphaned"

    @property
    def rank(self) -> int:
        # the terminal states share one rank: once terminal, a task stays so
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return _RANK[self] >= _TERMINAL_RANK

    def can_move_to(self, other: TaskState) -> bool:
        """True when ``other`` is a step forward (terminal states are final)."""
        if self.terminal:
            return False
        return other.rank > self.rank


_ORDER = list(TaskState)
_TERMINAL_RANK = _ORDER.index(TaskState.COMPLETE)
_RANK = {state: min(i, _TERMINAL_RANK) for i, state in enumerate(_ORDER)}  # looked up per task, per pass

class DesiredState(StrEnum):
    """What a task is asked to be, set by the orchestrator and updater only;
    kept apart from the observed :class:`TaskState` the agent reports."""

    RUNNING = "running"
    # created but held back (not scheduled, not started): a stop-first update's
    # replacement waits in this state until the task it replaces has stopped
    READY = "ready"
    SHUTDOWN = "shutdown"
    REMOVE = "remove"


DESIRED_RUNNING = DesiredState.RUNNING
DESIRED_SHUTDOWN = DesiredState.SHUTDOWN
DESIRED_REMOVE = DesiredState.REMOVE
DESIRED_READY = DesiredState.READY


class UpdateState(StrEnum):
    """Where a service's rolling update is (``Service.update_status["state"]``)."""

    UPDATING = "updating"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_PAUSED = "rollback_paused"
    ROLLBACK_COMPLETED = "rollback_completed"


class NodeRole(str, Enum):
    MANAGER = "manager"
    WORKER = "worker"


class NodeAvailability(str, Enum):
    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class NodeStatus(str, Enum):
    UNKNOWN = "unknown"
    READY = "ready"
    DOWN = "down"


# the start of a down node's status message when its agent is alive but its
# container engine is not (pyswarm.protocol.EngineState)
ENGINE_UNREACHABLE = "engine unreachable"


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp.from_dict(value)  # type: ignore[attr-defined]
    return value


class Model:
    """JSON round-tripping for the dataclasses below; unknown keys are ignored
    so that an older manager can read what a newer one wrote."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _ in _plan(type(self)):
            value = getattr(self, name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, Model):
                value = value.to_dict()
            elif isinstance(value, (dict, list)):
                value = _plain(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        kwargs = {}
        for name, convert in _plan(cls):
            if name in data:
                value = data[name]
                kwargs[name] = value if convert is None or value is None else convert(value)
        return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, Model):
        return value.to_dict()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_HINT_CACHE: dict[type, dict[str, Any]] = {}
_PLAN_CACHE: dict[type, list[tuple[str, Any]]] = {}


def _plan(cls: type) -> list[tuple[str, Any]]:
    """(field, converter or None) per field of ``cls``, worked out once:
    looking up hints and dataclass fields per object made deserializing
    100,000 tasks take 1.5 s."""
    plan = _PLAN_CACHE.get(cls)
    if plan is None:
        hints = _hints(cls)
        plan = []
        for f in dataclasses.fields(cls):
            tp = hints.get(f.name)
            convert: Any = None
            if isinstance(tp, type) and issubclass(tp, Enum):
                convert = tp
            elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
                convert = tp.from_dict  # type: ignore[attr-defined]
            plan.append((f.name, convert))
        _PLAN_CACHE[cls] = plan
    return plan


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINT_CACHE:
        import typing

        resolved = typing.get_type_hints(cls)
        out: dict[str, Any] = {}
        for name, tp in resolved.items():
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            out[name] = args[0] if typing.get_origin(tp) in (typing.Union, _UnionType) and args else tp
        _HINT_CACHE[cls] = out
    return _HINT_CACHE[cls]


_UnionType = type(int | None)


@dataclass
class Cluster(Model):
    """The cluster's identity and settings. Secrets live here so that any
    manager that becomes leader can reach the workers and admit joiners."""

    id: str
    zone: str = "pyswarm"
    addr_pool: str = "10.240.0.0/16"
    subnet_size: int = 24
    ssh_public_key: str = ""
    ssh_private_key: str = ""
    worker_token_secret: str = ""
    manager_token_secret: str = ""
    api_host_key_fingerprint: str = ""
    task_history_limit: int = 5
    # admission: the most replicas one service may have (manager/limits.py)
    max_replicas: int = 100_000
    created_at: float = field(default_factory=now)
    # handed to joining managers over the authenticated join, so every
    # manager presents the one API host key that join tokens pin, and
    # speaks Raft with the one secret
    api_host_private_key: str = ""
    raft_secret: str = ""
    # where managers' DNS forwards outside names, when set at init
    # (None: each manager's own resolv.conf)
    dns_upstreams: list[str] | None = None
    # the key agents had before it was rotated (--force-new-cluster): the
    # dispatcher offers both until every agent has installed the new one
    previous_ssh_private_key: str = ""
    # bumped by --force-new-cluster, whose Raft terms start again from 1:
    # agents fence leaders by (epoch, term)
    epoch: int = 0
    # how container traffic crosses hosts: "" (host routes; the hosts share a
    # link) or "vxlan" (an overlay between the hosts' addresses), set at init
    overlay: str = ""
    # autolock (manager/autolock.py): every manager's data key at rest is
    # encrypted by unlock_key (sealed in the store, like the other credentials)
    autolock: bool = False
    unlock_key: str = ""
    # besides root, members of this group may use every manager's API socket
    # (init --api-group): cluster state, so a manager that joins or is promoted
    # later applies it too, without a flag on each host
    api_group: str = ""


@dataclass
class Resources(Model):
    nano_cpus: int = field(default=0, metadata=rule(min=0, max=2**62))
    memory_bytes: int = field(default=0, metadata=rule(min=0, max=2**62))


@dataclass
class Node(Model):
    id: str
    hostname: str
    addr: str
    role: NodeRole = NodeRole.WORKER
    availability: NodeAvailability = NodeAvailability.ACTIVE
    status: NodeStatus = NodeStatus.UNKNOWN
    status_message: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    platform: dict[str, str] = field(default_factory=dict)
    engine_version: str = ""
    subnet: str = ""
    ssh_port: int = 22
    ssh_host_key: str = ""  # the node's sshd public key, pinned at join
    api_port: int = 2377  # managers only
    raft_port: int = 2378  # managers only
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    # when it last went from not down to down (the dispatcher): its tasks
    # are replaced protocol.LOST_GRACE seconds later (manager/healing.py)
    down_since: float = 0.0
    engine_labels: dict[str, str] = field(default_factory=dict)  # the engine's own labels (docker info)
    # what the node's agent reports it cannot do (pyswarm.protocol.Condition):
    # {"firewall": "ipset: not found", ...}; the scheduler keeps off the
    # node the tasks that need it (manager/filters.py)
    problems: dict[str, str] = field(default_factory=dict)
    # why this node's manager stopped leading on its own (manager/supervise.py)
    manager_message: str = ""
    # it has been a manager, so it has had the cluster's SSH private key: its
    # `node rm` rotates that key (manager/api/security.py)
    held_keys: bool = False
    # `node demote` asked for (manager/demotion.py): the leader moves
    # leadership off it, takes it out of Raft, and only then makes it a worker
    demoting: bool = False

    @property
    def message(self) -> str:
        """Swarm's ``Status.Message``, as ``node ls`` shows it: why the node
        is down, what it cannot do, and why its manager gave up leading."""
        parts = [self.status_message] if self.status_message else []
        parts += [f"{key}: {why}" for key, why in sorted(self.problems.items())]
        if self.manager_message:
            parts.append(self.manager_message)
        return "; ".join(parts)

    @property
    def engine_unreachable(self) -> bool:
        """Down because its engine is, while its agent still answers."""
        return self.status is NodeStatus.DOWN and self.status_message.startswith(ENGINE_UNREACHABLE)


@dataclass
class ContainerSpec(Model):
    """What the agent needs to create one container."""

    image: str = field(metadata=rule(max_len=4096))
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # container-level stack-file keys beyond the typed fields above, in the
    # compose long syntax pyswarm.compose normalises to (ports, volumes,
    # healthcheck, user, working_dir, secrets, configs, networks, logging, ...)
    options: dict[str, Any] = field(default_factory=dict)
    # the service's normalised `deploy.resources` ({"limits": {cpus, memory, pids},
    # "reservations": {...}}): limits the agent sets on the container
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServiceSpec(Model):
    name: str = field(metadata=rule(pattern=NAME_PATTERN))  # full name: STACK_SERVICE
    container: ContainerSpec
    stack: str = field(default="", metadata=rule(pattern=r"|[a-z0-9][a-z0-9_-]{0,62}"))
    mode: str = field(default="replicated", metadata=rule(choices=["replicated", "global"]))
    replicas: int = field(default=1, metadata=rule(min=0, max=1_000_000))
    labels: dict[str, str] = field(default_factory=dict)
    restart_condition: str = field(default="any", metadata=rule(choices=["none", "on-failure", "any"]))
    # placement (read by manager/scheduler.py); Swarm's syntax: "node.labels.zone==eu"
    constraints: list[str] = field(default_factory=list)
    max_replicas_per_node: int = field(default=0, metadata=rule(min=0))  # 0: no limit
    reservations: Resources = field(default_factory=Resources)  # per task
    # the normalised `deploy:` mapping as written in the stack file (long syntax:
    # resources, restart_policy, update_config, rollback_config, endpoint_mode...)
    deploy: dict[str, Any] = field(default_factory=dict)
    # short service name -> {"condition": service_started|service_healthy|..., "required": bool}
    depends_on: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the cluster networks the service is attached to, resolved by the API at
    # deploy time: [{"target": NETWORK_NAME, "aliases": [name, ...]}]; empty
    # means "deployed before networks existed": it shares everything
    networks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Service(Model):
    id: str
    spec: ServiceSpec
    version: int = 1
    previous_spec: ServiceSpec | None = None
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    # the rolling update (manager/updater.py): state updating|paused|completed|
    # rollback_started|rollback_paused|rollback_completed, message, started_at,
    # completed_at, and the updater's own keys (version it is for, dirty slots, force)
    update_status: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def short_name(self) -> str:
        """The name within its stack (``web`` for ``demo_web``)."""
        prefix = self.spec.stack + "_"
        if self.spec.stack and self.spec.name.startswith(prefix):
            return self.spec.name[len(prefix):]
        return self.spec.name


@dataclass
class Task(Model):
    id: str
    service_id: str
    service_name: str
    slot: int  # replica slot; 0 for global services (node_id identifies them)
    spec: ContainerSpec
    stack: str = ""
    spec_version: int = 1
    node_id: str = ""
    desired_state: DesiredState = DesiredState.RUNNING
    state: TaskState = TaskState.NEW
    message: str = ""
    error: str = ""
    exit_code: int | None = None
    container_id: str = ""
    ip: str = ""
    created_at: float = field(default_factory=now)
    state_since: float = field(default_factory=now)
    # restart_policy.delay: the scheduler leaves the task pending until then
    not_before: float = 0.0
    # times of the restarts of this slot (this spec version) that led to this
    # task, newest last, at most restart_policy.max_attempts of them
    restarts: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.service_name}.{self.slot or self.node_id}"

    # What a live task is, in one place: each component asks the question it
    # means, and all of them agree on the states behind it.

    @property
    def holds_slot(self) -> bool:
        """Counts toward its slot's replica: asked to run (or held ready by a
        stop-first update) and not over. The orchestrator and updater ask this."""
        return self.desired_state in (DesiredState.RUNNING, DesiredState.READY) and not self.state.terminal

    @property
    def is_live(self) -> bool:
        """Asked to run and not over (healing, placement counts)."""
        return self.desired_state == DesiredState.RUNNING and not self.state.terminal

    @property
    def is_placed(self) -> bool:
        """Live and assigned to a node: it uses that node's resources and ports."""
        return self.is_live and bool(self.node_id)

    @property
    def has_address(self) -> bool:
        """Its address may carry traffic now (the mesh's sets): it has one and is not over."""
        return bool(self.ip) and not self.state.terminal

    @property
    def serves(self) -> bool:
        """DNS and published ports send clients to it: running, asked to run, addressed.

        Both observed and desired state must be running: a task being shut
        down (desired ``shutdown``, still observed running) is taken out of
        DNS first, so that clients stop being sent to it before it goes away.
        (Health is in the state: a task with a healthcheck is ``running``
        only once healthy.)"""
        return self.state == TaskState.RUNNING and self.desired_state == DesiredState.RUNNING and bool(self.ip)


@dataclass
class Secret(Model):
    """A named blob (``pyswarm secret create``, or a stack file's top-level
    ``secrets:``). ``data`` is base64 and immutable: a change is a new secret
    with a new name, as in Swarm, so a running task never sees its file
    change under it. Only the dispatcher reads ``data``, to hand it to the
    agents of nodes that run a task using it; the API never returns it."""

    id: str
    name: str
    data: str = ""  # base64
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)


@dataclass
class Config(Model):
    """Like :class:`Secret`, for non-sensitive files (``pyswarm config``);
    ``config inspect`` may show its data."""

    id: str
    name: str
    data: str = ""  # base64
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)


@dataclass
class Network(Model):
    """A cluster network. Services attached to a common network resolve and
    reach each other; traffic between containers that share none is dropped
    on the hosts (docs/networking.md). Addresses come from each node's
    subnet, so a network costs no addresses of its own."""

    id: str
    name: str
    stack: str = ""  # the stack whose deploy made it (stack rm removes it); "" when made by hand
    driver: str = "overlay"
    labels: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    attachable: bool = False
    created_at: float = field(default_factory=now)


KINDS: dict[str, type[Model]] = {
    "cluster": Cluster,
    "node": Node,
    "service": Service,
    "task": Task,
    "secret": Secret,
    "config": Config,
    "network": Network,
}
