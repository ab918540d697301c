"""The wire protocol between the leader's dispatcher and a node's agent.

One long-lived SSH session per node runs ``pyswarm worker --stdio``; both ends
exchange newline-delimited JSON objects, each with an ``op``. The manager
always sends the *whole* set of tasks a node should run, so a lost or
repeated message cannot leave a node half-configured: the agent converges on
the latest set it received.

manager -> agent
  {"op": "configure", "node_id", "cluster_id", "subnet", "pool",
   "routes": [{"subnet", "via"}], "dns": [ip, ...], "zone"}
  {"op": "assign", "tasks": [Assignment, ...]}         full desired set
  {"op": "mesh", "gateways": [ip, ...], "networks": {ipset_name: [ip, ...]},
   "ingress": [{"service", "port", "protocol", "backends": ["ip:port", ...]}]}
                                                        the same for every node
  {"op": "ping", "seq": int}
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
  {"op": "error", "message"}                              agent-level trouble
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

Containers carry these labels, so that any leader can adopt them later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyswarm.wire import rule

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

NETWORK_NAME = "pyswarm"
BRIDGE_NAME = "pyswarm0"


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> dict[str, Any]:
    data = json.loads(line)
    if not isinstance(data, dict) or "op" not in data:
        raise ValueError(f"not a protocol message: {line!r:.200}")
    return data


def search_domain(stack: str, zone: str) -> str:
    """The DNS search domain given to containers of ``stack``."""
    return f"{stack}.{zone}" if stack else zone


@dataclass(frozen=True)
class EngineState:
    """agent -> manager: the node's engine became unreachable (``reason``
    says how the agent failed to reach it) or reachable again."""

    op: ClassVar[str] = "engine"
    reachable: bool
    reason: str = field(default="", metadata=rule(max_len=1024))

    def message(self) -> dict[str, Any]:
        return {"op": self.op, "reachable": self.reachable, "reason": self.reason}
