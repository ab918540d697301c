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
  {"op": "ping", "seq": int}

agent -> manager
  {"op": "hello", "hostname", "resources": {"nano_cpus", "memory_bytes"},
   "platform": {"os", "arch"}, "engine_version"}
  {"op": "status", "task_id", "state", "container_id", "ip", "exit_code",
   "message", "error", "ts"}                              one per change
  {"op": "pong", "seq": int}
  {"op": "error", "message"}                              agent-level trouble

Assignment: {"task_id", "service_id", "service_name", "stack", "slot",
  "node_id", "spec": ContainerSpec.to_dict(), "dns_search": [domain, ...]}

Containers carry these labels, so that any leader can adopt them later.
"""

from __future__ import annotations

import json
from typing import Any

LABEL_TASK_ID = "pyswarm.task.id"
LABEL_SERVICE_ID = "pyswarm.service.id"
LABEL_SERVICE_NAME = "pyswarm.service.name"
LABEL_STACK = "com.docker.stack.namespace"
LABEL_SLOT = "pyswarm.task.slot"
LABEL_NODE_ID = "pyswarm.node.id"

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
