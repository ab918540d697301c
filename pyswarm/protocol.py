"""The wire protocol between the leader's dispatcher and a node's agent.

One long-lived SSH session per node runs ``pyswarm worker --stdio``; both ends
exchange newline-delimited JSON objects, each with an ``op``. A new
session is sent the *whole* set of tasks the node should run and the whole
mesh; after that, to an agent whose hello says ``"protocol": 2``
(:data:`PROTOCOL`), only the changes since the version that session was
sent (``assign_delta``, ``mesh_delta``; pyswarm/deltas.py). The agent
applies a delta only on the version it holds and otherwise asks for the
whole set (``resync``), so a lost, repeated or reordered message cannot
leave a node half-configured: the agent converges on the latest set.

manager -> agent
  {"op": "configure", "node_id", "cluster_id", "subnet", "pool",
   "routes": [{"subnet", "via"}], "dns": [ip, ...], "zone"}
  {"op": "assign", "tasks": [Assignment, ...], "version"}  full desired set
  {"op": "assign_delta", "base", "version", "put": [Assignment, ...],
   "remove": [task_id, ...]}                            changes since base
  {"op": "mesh", "gateways": [ip, ...], "networks": {ipset_name: [ip, ...]},
   "ingress": [{"service", "port", "protocol", "backends": ["ip:port", ...]}]}
                                                        the same for every node
  {"op": "mesh_delta", "base", "version", "gateways"/"internal": {"add", "remove"},
   "networks": {ipset_name: {"add", "remove"}}, "networks_gone", "ingress"}
  {"op": "ping", "seq": int, "ack": int, "every": seconds}
                                                         ack: the last pong heard (fencing)
  {"op": "image_plan", "image", "plan": "ship"|"pull", "source", "reason"}
                                                        answer to image_wanted
  {"op": "image_done", "image", "error"}                the shipment ended ("" = loaded)

configure also carries "overlay" ("" for host routes, "vxlan") and "addr"
(the node's own address, the VXLAN tunnel's local end).

mesh (issue 6, docs/networking.md) is sent after configure and again
whenever it changes (a task comes, goes, changes address or stops serving;
the leader paces broadcasts to 20 MB/s over all sessions, the latest always
going out):
"networks" maps each cluster network's ipset name (``psw-`` + 12 hex
digits, manager/networks.py ``ipset_name``) to the addresses of every live
task attached to it, on any node; pool→pool traffic is accepted only
between members of one set. "gateways" are every node's bridge address
(ingress traffic arrives SNATed to one). "ingress" lists each published
port (``"8080"`` or a range ``"8000-8010"``) with the replicas that serve
it (those DNS answers); every node DNATs its own addresses' port to them.
"internal" lists the tasks attached only to ``internal: true`` networks:
they reach the pool and the managers' DNS, nothing else.
An agent that never got a mesh (an older leader) isolates nothing.

agent -> manager
  {"op": "hello", "hostname", "resources": {"nano_cpus", "memory_bytes"},
   "platform": {"os", "arch"}, "engine_version"}
  {"op": "status", "task_id", "state", "container_id", "ip", "exit_code",
   "message", "error", "ts"}                              one per change
  {"op": "pong", "seq": int}
  {"op": "resync", "what": "assign"|"mesh", "have"}      a delta did not fit
  {"op": "error", "message"}                              agent-level trouble
  {"op": "condition", "problems": {kind: reason}}        what the host cannot do
  {"op": "image_wanted", "image", "task_id"}              a task needs an image
                                                          this node lacks
  {"op": "engine", "reachable": bool, "reason"}           the engine went or came back

Images (issue 15, docs/images.md): a task whose image is not on the node
asks the leader before pulling; the leader answers ``ship`` when its
engine holds the image from no registry (built or loaded there), sends it
over a *second session* on the node's SSH connection (an image channel,
pyswarm/images.py: the bytes never travel on this channel, whose pings
must not wait behind them), then ``image_done``; else ``pull``. All three
are parsed by the dataclasses of pyswarm/images.py (ImageWanted,
ImagePlan, ImageDone), which check every field.

Streams (issue 13, docs/day-one.md; typed and checked in pyswarm/streamwire.py):
the leader opens logs, exec and stats streams on an agent over this same
session, each with an id unique on the leader.
  manager -> agent
    {"op": "stream", "id", "kind": "logs"|"exec"|"stats", "params": {...}}
        logs  {"task_id", "follow", "tail", "since", "until", "after"} (ns)
        exec  {"task_id", "cmd": [...], "tty", "stdin", "h", "w", "env", "user", "workdir"}
        stats {"task_ids": [...], "stream"}
    {"op": "credit", "id", "bytes"}     the agent may send this much more
    {"op": "stdin", "id", "data" (base64), "eof"?}     exec input
    {"op": "resize", "id", "h", "w"}    exec TTY size
    {"op": "cancel", "id"}
  agent -> manager
    {"op": "chunk", "id", "items": [...], "mark"?}      items: logs {"task",
        "t" (engine ns), "stream", "line"}; exec {"stream", "data"}; stats
        samples. "mark": no later item of this stream is older (ns).
    {"op": "end", "id", "error"?, "result"?}            exec: {"exit_code"}
    {"op": "credit", "id", "bytes"}     exec stdin written
Each side sends a stream's data only within the credit it was granted
(256 KiB to start), so a slow reader bounds memory on both ends; the
manager accepts chunk/end lines only from the session that opened the stream.

engine (:class:`EngineState`) is sent when the node's container engine has
been unreachable for :data:`ENGINE_GRACE` seconds (its event stream failed
and ``/info`` does not answer; before the hello, at once), and again with
``reachable: true`` when it answers again. The dispatcher marks the node
``down`` with "engine unreachable: <reason>" (the scheduler skips it, the
orchestrator replaces its tasks, as for a node that is gone: without its
engine the node can neither run nor watch a container), and ``ready`` when
it is back; the agent then removes or adopts what it finds, as after any
reconnect.

Assignment: {"task_id", "service_id", "service_name", "stack", "slot",
  "node_id", "spec": ContainerSpec.to_dict(), "dns_search": [domain, ...],
  "secrets": [File, ...], "configs": [File, ...]}    (both only when used)
File: {"name", "target" (absolute path in the container), "uid", "gid",
  "mode", "data" (base64)}: sent only to the node that runs the task; the
  agent never logs it (pyswarm.worker.files).

Every message is parsed into one of the typed classes below before anything
acts on it (:func:`parse_agent` on the manager's side, :func:`parse_manager`
on the agent's), with the project's one checker, :mod:`pyswarm.wire`: a
wrong type, a value out of range, an unknown field or an oversize line is
refused with an error naming the message and the field
(``hello.resources.nano_cpus: expected an integer, got the string 'lots'``).
Addresses are checked for their characters here and parsed where they are
used (the dispatcher's subnet check, the worker's NetworkConfig and Mesh). Which node may say what (a status only for a task assigned to
that node, an address inside that node's subnet) is the dispatcher's check,
on top of these. A new op is a frozen dataclass registered with
:func:`agent_op` or :func:`manager_op`.

Containers carry these labels, so that any leader can adopt them later.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from pyswarm import streamwire
from pyswarm.models import TaskState
from pyswarm.wire import BadRequest, parse, rule

LABEL_TASK_ID = "pyswarm.task.id"
LABEL_SERVICE_ID = "pyswarm.service.id"
LABEL_SERVICE_NAME = "pyswarm.service.name"
LABEL_STACK = "com.docker.stack.namespace"
LABEL_SLOT = "pyswarm.task.slot"
LABEL_NODE_ID = "pyswarm.node.id"

# how long the agent lets the engine be unreachable (a restart of dockerd,
# say) before it tells the manager: the dispatcher's heartbeat silence for a
# node (dead_after) is as long, so an engine fault and a node fault cost the
# same time before the node's tasks are replaced
ENGINE_GRACE = 2.0

# Fencing (why no slot runs twice across a link cut; worker/fence.py,
# manager/dispatcher.py; the argument in full: docs/healing.md, "Why it is
# sound"). Two clocks, one event each way:
#
# * The agent's lease (host-wide, AGENT_LEASE s) is renewed only by a ping
#   of an accepted session that acknowledges a pong (Ping.ack), and only to
#   the time the agent *sent* that pong: before the leader heard it. Not by
#   the agent's start nor a configure, whose arrival can be late by any
#   amount. When it runs out and no manager's host answers a TCP connect
#   (REACH_PROBE_TIMEOUT), the agent stops every task container here
#   (FENCE_STOP_GRACE s from SIGTERM to SIGKILL).
# * The leader's grace (LOST_GRACE s from Node.down_since) counts from the
#   last word it heard from the agent, which is no earlier than any lease
#   anchor it acknowledged, and starts again on every event that may keep
#   the containers running past the lease: while a node has no live
#   session, its sshd accepting the leader's probe (every REACH_PROBE_EVERY
#   s) restarts it, the mirror of the agent's exemption (a lingering agent
#   keeps its containers while a manager's host answers: a failover or a
#   lost quorum, where nobody can replace them); and a new leader counts
#   it from no earlier than its own start (healing.lost_at's led_since: it
#   cannot know what an earlier leader heard or reached).
#
# So when the link is cut the containers are stopped by last pong +
# AGENT_LEASE + probe + stop ~ 10 s, and replaced after last word +
# LOST_GRACE = 12 s; while the link is up and no session comes (the soak's
# last doubles: a link back before the lease ran out, the agent exempt, the
# leader's new session slower than the grace at load ~80) nothing is
# replaced. Nomad's stop_after_client_disconnect. The lease needs pings
# more often than every (AGENT_LEASE - slack) / 2 s: an ack comes a ping
# after its pong.
#
# On a big cluster the ping period grows (manager/dispatcher.py heartbeat,
# at most MAX_PING_PERIOD = 3 s): that only delays the down mark, since the
# grace counts from the last word heard; the period stays under
# (AGENT_LEASE - 2 s) / 2 so that a live session's lease (renewed to a pong
# one period old, by the next ping) never runs out.
AGENT_LEASE = 8.0
FENCE_STOP_GRACE = 1
LOST_GRACE = 12.0
REACH_PROBE_EVERY = 1.0  # seconds between probes, the agent's of the managers and the leader's of a node
REACH_PROBE_TIMEOUT = 1.0

# The protocol's version, said in the agent's hello. 2: the agent applies
# assign_delta and mesh_delta, asks for a whole set (resync) when a delta's
# base is not what it holds, and takes a ping's period (Ping.every). The
# leader sends an agent only what its version understands.
PROTOCOL = 2

NETWORK_NAME = "pyswarm"
BRIDGE_NAME = "pyswarm0"

# the longest line either side reads. An agent says little (its hello is the
# biggest message); the manager's assign carries every task's spec and the
# data of its secrets and configs (Swarm caps one at 500 KB), and a mesh of
# 10,000 tasks is ~150 kB
MAX_AGENT_LINE = 256 * 1024
MAX_MANAGER_LINE = 256 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> dict[str, Any]:
    """A line as a JSON object with an ``op``, unchecked otherwise (for
    peers that only route messages, like the bench's simulated nodes)."""
    data = json.loads(line)
    if not isinstance(data, dict) or "op" not in data:
        raise ValueError(f"not a protocol message: {line!r:.200}")
    return data


def search_domain(stack: str, zone: str) -> str:
    """The DNS search domain given to containers of ``stack``."""
    return f"{stack}.{zone}" if stack else zone


# -- the typed messages ------------------------------------------------------------

M = TypeVar("M")
AGENT_OPS: dict[str, type[Any]] = {}
MANAGER_OPS: dict[str, type[Any]] = {}


def _registrar(ops: dict[str, type[Any]]) -> Callable[[str], Callable[[type[M]], type[M]]]:
    def op(name: str) -> Callable[[type[M]], type[M]]:
        def register(cls: type[M]) -> type[M]:
            cls.op = name  # type: ignore[attr-defined]
            ops[name] = cls
            return cls
        return register
    return op


agent_op = _registrar(AGENT_OPS)
"""Register an agent -> manager message class: ``@agent_op("hello")``."""
manager_op = _registrar(MANAGER_OPS)
"""Register a manager -> agent message class: ``@manager_op("configure")``."""


_ID = rule(pattern=r"[A-Za-z0-9_.-]{1,64}")  # an object id
_NAME = rule(max_len=253)
_IP = rule(pattern=r"[0-9A-Fa-f:.]{0,45}")  # an address or ""; parsed where it is used
_CIDR = rule(pattern=r"[0-9A-Fa-f:.]{1,45}/[0-9]{1,3}")
_PORT = rule(min=1, max=65535)
_GROUP = rule(pattern=r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}|")  # a Unix group name, or ""
_SECRET = rule(max_len=16384)  # never shown in an error: no pattern, no choices
_VERSION = rule(min=0, max=2**63)  # of a session's task set or mesh (deltas)
_NANO_CPUS_MAX = 1_000_000 * 1_000_000_000  # a million CPUs
_BYTES_MAX = 2**62


@dataclass(frozen=True)
class HostResources:
    nano_cpus: int = field(default=0, metadata=rule(min=0, max=_NANO_CPUS_MAX))
    memory_bytes: int = field(default=0, metadata=rule(min=0, max=_BYTES_MAX))


@agent_op("hello")
@dataclass(frozen=True)
class Hello:
    """The agent's first word: what this host has."""

    op: ClassVar[str]
    hostname: str = field(default="", metadata=_NAME)
    # None: not said (the node keeps what it had)
    resources: HostResources | None = None
    platform: dict[str, str] | None = field(default=None, metadata=rule(max_len=16))
    engine_version: str = field(default="", metadata=rule(max_len=128))
    engine_labels: dict[str, str] | None = field(default=None, metadata=rule(max_len=128))
    # PROTOCOL: what this agent understands; 1 (not said) takes whole sets only
    protocol: int = field(default=1, metadata=rule(min=1, max=1_000_000))


@agent_op("resync")
@dataclass(frozen=True)
class Resync:
    """The agent got a delta (``assign_delta`` or ``mesh_delta``) whose base
    is not the version it holds (``have``; None: it holds none): it applied
    nothing and asks for the whole set again."""

    op: ClassVar[str]
    what: Literal["assign", "mesh"]
    have: int | None = field(default=None, metadata=rule(min=0))


@agent_op("status")
@dataclass(frozen=True)
class Status:
    """One task's observed state changed. The dispatcher accepts it only
    for a task assigned to the reporting node, with an address inside that
    node's subnet."""

    op: ClassVar[str]
    task_id: str = field(metadata=_ID)
    state: TaskState
    container_id: str = field(default="", metadata=rule(max_len=128))
    ip: str = field(default="", metadata=_IP)
    exit_code: int | None = field(default=None, metadata=rule(min=-(2**31), max=2**32))
    message: str = field(default="", metadata=rule(max_len=1024))
    error: str = field(default="", metadata=rule(max_len=4096))
    ts: float | None = field(default=None, metadata=rule(min=0, max=1e11))


@agent_op("pong")
@dataclass(frozen=True)
class Pong:
    op: ClassVar[str]
    seq: int | None = None


@agent_op("error")
@dataclass(frozen=True)
class AgentError:
    """Trouble on the agent's side that is no task's (logged by the leader)."""

    op: ClassVar[str]
    message: str = field(default="", metadata=rule(max_len=8192))


@agent_op("condition")
@dataclass(frozen=True)
class Condition:
    """Everything this host cannot do right now, by kind (firewall,
    network, mounts, converge, or a failing agent loop), sent whole on
    every change; {} when all is well. The node shows it (``node ls``) and
    the scheduler keeps off it the tasks that need what it lacks."""

    op: ClassVar[str]
    problems: dict[str, str] = field(default_factory=dict, metadata=rule(max_len=16))


@dataclass(frozen=True)
class RouteEntry:
    subnet: str = field(metadata=_CIDR)
    via: str = field(metadata=_IP)


@dataclass(frozen=True)
class ManagerGrant:
    """What a manager node needs to run its manager (promotion)."""

    addr: str = field(default="", metadata=_IP)
    api_port: int = field(default=2377, metadata=_PORT)
    raft_port: int = field(default=2378, metadata=_PORT)
    dns_port: int = field(default=53, metadata=_PORT)
    raft_secret: str = field(default="", metadata=_SECRET)
    api_host_private_key: str = field(default="", metadata=_SECRET)
    data_key: str = field(default="", metadata=_SECRET)  # manager/sealing.py
    raft_peers: list[str] = field(default_factory=list, metadata=rule(max_len=64))
    dns_upstreams: list[str] | None = field(default=None, metadata=rule(max_len=16))
    api_group: str = field(default="", metadata=_GROUP)  # the cluster's --api-group


@manager_op("configure")
@dataclass(frozen=True)
class Configure:
    """The node's place in the cluster; ``term`` fences deposed leaders."""

    op: ClassVar[str]
    subnet: str = field(metadata=_CIDR)
    pool: str = field(metadata=_CIDR)
    node_id: str = field(default="", metadata=rule(max_len=64))
    cluster_id: str = field(default="", metadata=rule(max_len=64))
    routes: list[RouteEntry] = field(default_factory=list)
    dns: list[str] = field(default_factory=list, metadata=rule(max_len=64))
    zone: str = field(default="pyswarm", metadata=_NAME)
    term: int | None = field(default=None, metadata=rule(min=0))
    authorized_key: str = field(default="", metadata=rule(max_len=16384))
    overlay: Literal["", "vxlan"] = ""
    addr: str = field(default="", metadata=_IP)
    manager: ManagerGrant | None = None

    def as_dict(self) -> dict[str, Any]:
        """The message as the worker's parsers (NetworkConfig, promotion) read it."""
        import dataclasses

        return {"op": self.op, **dataclasses.asdict(self)}


@manager_op("assign")
@dataclass(frozen=True)
class Assign:
    """The node's whole desired task set; each entry is checked by the
    worker (pyswarm.worker.tasks.Assignment.parse), whose errors never show
    secret data."""

    op: ClassVar[str]
    tasks: list[Any] = field(metadata=rule(max_len=100_000))
    version: int | None = field(default=None, metadata=_VERSION)  # what later deltas build on


@manager_op("assign_delta")
@dataclass(frozen=True)
class AssignDelta:
    """What changed in the node's task set since ``base``, the version this
    session sent before: ``put`` adds or replaces whole assignments (each
    checked as in :class:`Assign`), ``remove`` names the tasks that left.
    The result is version ``version``. An agent whose set is not ``base``
    applies nothing and asks for the whole set (:class:`Resync`)."""

    op: ClassVar[str]
    base: int = field(metadata=_VERSION)
    version: int = field(metadata=_VERSION)
    put: list[Any] = field(default_factory=list, metadata=rule(max_len=100_000))
    remove: list[str] = field(default_factory=list, metadata=rule(max_len=100_000))


@dataclass(frozen=True)
class IngressEntry:
    port: str = field(metadata=rule(pattern=r"[0-9]{1,5}(-[0-9]{1,5})?"))
    service: str = field(default="", metadata=_NAME)
    protocol: str = field(default="tcp", metadata=rule(choices=("tcp", "udp")))
    backends: list[str] = field(default_factory=list)


@manager_op("mesh")
@dataclass(frozen=True)
class MeshMessage:
    """Isolation sets and ingress, checked again by pyswarm.worker.ingress.Mesh."""

    op: ClassVar[str]
    gateways: list[str] = field(default_factory=list)
    networks: dict[str, list[str]] | None = None
    ingress: list[IngressEntry] = field(default_factory=list)
    internal: list[str] = field(default_factory=list)
    version: int | None = field(default=None, metadata=_VERSION)  # what later deltas build on

    def as_dict(self) -> dict[str, Any]:
        import dataclasses

        return {"op": self.op, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class SetChange:
    """Members that joined and left one set of addresses."""

    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)


@manager_op("mesh_delta")
@dataclass(frozen=True)
class MeshDelta:
    """The mesh's changes since ``base``, the version this session sent
    before (pyswarm/deltas.py builds and applies them): address sets by
    their members that came and went, ``networks`` by ipset name (a name
    new to the agent starts empty; ``networks_gone`` are dropped), and
    ``ingress`` whole when it changed (None: unchanged). An agent whose
    mesh is not ``base`` applies nothing and asks for the whole mesh."""

    op: ClassVar[str]
    base: int = field(metadata=_VERSION)
    version: int = field(metadata=_VERSION)
    gateways: SetChange | None = None
    internal: SetChange | None = None
    networks: dict[str, SetChange] = field(default_factory=dict)
    networks_gone: list[str] = field(default_factory=list)
    ingress: list[IngressEntry] | None = None


@manager_op("ping")
@dataclass(frozen=True)
class Ping:
    """``ack``: the seq of the last pong this manager received on the
    session (None: none yet). The agent renews its lease to the time it *sent*
    that pong, which is before the manager received it: the lease never
    outlives the leader's grace, whatever the delays (see AGENT_LEASE).
    ``every``: the leader's ping period now (it grows with the cluster,
    manager/dispatcher.py ``heartbeat``), so the agent's own silence limit
    follows it; sent to agents of :data:`PROTOCOL` 2 on."""

    op: ClassVar[str]
    seq: int | None = None
    ack: int | None = None
    every: float | None = field(default=None, metadata=rule(min=0, max=3600))


class _AsDict:
    def as_dict(self) -> dict[str, Any]:
        """The message as the parsers of pyswarm/images.py read it (they check it again)."""
        import dataclasses

        return {"op": getattr(self, "op"), **dataclasses.asdict(self)}  # type: ignore[call-overload]


@agent_op("image_wanted")
@dataclass(frozen=True)
class ImageWantedMessage(_AsDict):
    """A task needs ``image`` and this node lacks it (pyswarm/images.py ImageWanted)."""

    op: ClassVar[str]
    image: str = field(metadata=rule(max_len=4096))
    task_id: str = field(default="", metadata=rule(max_len=64))


@manager_op("image_plan")
@dataclass(frozen=True)
class ImagePlanMessage(_AsDict):
    """How ``image`` will get to the node (pyswarm/images.py ImagePlan)."""

    op: ClassVar[str]
    image: str = field(metadata=rule(max_len=4096))
    plan: str = field(default="", metadata=rule(max_len=16))
    source: str = field(default="", metadata=rule(max_len=255))
    reason: str = field(default="", metadata=rule(max_len=4096))


@manager_op("image_done")
@dataclass(frozen=True)
class ImageDoneMessage(_AsDict):
    """A shipment ended (pyswarm/images.py ImageDone)."""

    op: ClassVar[str]
    image: str = field(metadata=rule(max_len=4096))
    error: str = field(default="", metadata=rule(max_len=4096))


AgentMessage = Union[Hello, Status, Pong, AgentError, Condition, Resync, ImageWantedMessage, "EngineState",
                     "StreamMessage"]
ManagerMessage = Union[Configure, Assign, AssignDelta, MeshMessage, MeshDelta, Ping, ImagePlanMessage,
                       ImageDoneMessage, "StreamMessage"]


@dataclass(frozen=True)
class StreamMessage:
    """A logs/exec/stats frame (issue 13): pyswarm/streamwire.py parses and
    checks these itself (Chunk.parse, Open.parse, ...) on their hot path;
    here only the line's size, its JSON and its op are checked."""

    op: str
    raw: dict[str, Any]


def parse_agent(line: bytes | str) -> Any:
    """One line from an agent as its typed message; :class:`BadRequest` if not."""
    return _parse(line, AGENT_OPS, MAX_AGENT_LINE, "agent", streamwire.TO_MANAGER)


def parse_manager(line: bytes | str) -> Any:
    """One line from the manager as its typed message; :class:`BadRequest` if not."""
    return _parse(line, MANAGER_OPS, MAX_MANAGER_LINE, "manager", streamwire.TO_AGENT)


def _parse(line: bytes | str, ops: dict[str, type[Any]], limit: int, side: str, streams: Any) -> Any:
    if len(line) > limit:
        raise BadRequest(f"{side} message", f"{len(line)} bytes, at most {limit}")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"{side} message", f"not JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{side} message", f"not a JSON object ({type(data).__name__})")
    op = data.get("op")
    if isinstance(op, str) and op in streams:
        return StreamMessage(op, data)
    data.pop("op", None)
    cls = ops.get(op) if isinstance(op, str) else None
    if cls is None:
        raise BadRequest(f"{side} message.op", f"unknown op {str(op)[:40]!r}")
    return parse(cls, data, str(op))


@agent_op("engine")
@dataclass(frozen=True)
class EngineState:
    """agent -> manager: the node's engine became unreachable (``reason``
    says how the agent failed to reach it) or reachable again."""

    op: ClassVar[str]
    reachable: bool
    reason: str = field(default="", metadata=rule(max_len=1024))

    def message(self) -> dict[str, Any]:
        return {"op": self.op, "reachable": self.reachable, "reason": self.reason}
