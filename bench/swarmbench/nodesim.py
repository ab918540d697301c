"""A node simulator for the footprint benchmark: many fake nodes, no containers.

Run inside a lab host (the manager's), it (1) joins N nodes through the
manager's real join API (SSH, token secret), each with an address of its
own on loopback (127.1.x.y; the manager dials node.addr:PORT) and one shared
SSH host key, then (2) serves all of them from one asyncssh server on
0.0.0.0:PORT. The dispatcher opens one session per node as with a real
host; for each, the server plays ``pyswarm worker --stdio`` as a *fake
agent* speaking pyswarm.protocol (version 2: it takes task-set deltas and
asks for a whole set on a gap, as the real agent does; the mesh it skips):
it says hello, answers pings, and reports every task it is assigned as
running at once (container id and address made up). Nothing is created in any engine, so the figures measure the
manager alone (store, orchestrator, scheduler, dispatcher, SSH), which is
what the footprint scenario wants.

    python -m swarmbench.nodesim --token TOKEN --manager ADDR:2377 --nodes 1000 --port 2222
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
import time
from typing import Any

import asyncssh

from pyswarm import protocol
from pyswarm.errors import ConnectionError_
from pyswarm.manager import bootstrap


def sim_addr(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


class FakeAgent:
    """One simulated node's agent on one SSH channel."""

    def __init__(self, process: asyncssh.SSHServerProcess[bytes], index: int) -> None:
        self.process = process
        self.index = index
        self.reported: set[str] = set()
        self.version: int | None = None  # of the task set held (assign_delta builds on it)
        self.subnet = ipaddress.ip_network("10.240.0.0/24")

    def send(self, message: dict[str, Any]) -> None:
        self.process.stdout.write(protocol.encode(message))

    async def run(self) -> None:
        self.send({"op": "hello", "hostname": f"sim{self.index}", "engine_version": "simulated",
                   "resources": {"nano_cpus": 4_000_000_000, "memory_bytes": 8 << 30},
                   "platform": {"os": "linux", "arch": "x86_64"}, "protocol": protocol.PROTOCOL})
        try:
            while True:
                line = await self.process.stdin.readline()
                if not line:
                    break
                if line.startswith(b'{"op":"mesh'):
                    continue  # mesh, mesh_delta: no firewall to program, not worth parsing
                msg = protocol.decode(line)
                op = msg.get("op")
                if op == "configure":
                    # the dispatcher refuses an address outside the node's subnet
                    self.subnet = ipaddress.ip_network(str(msg.get("subnet")), strict=False)
                elif op == "ping":
                    self.send({"op": "pong", "seq": msg.get("seq")})
                elif op in ("assign", "assign_delta"):
                    if op == "assign_delta" and msg.get("base") != self.version:
                        self.send({"op": "resync", "what": "assign", "have": self.version})
                        continue
                    self.version = msg.get("version")
                    now = time.time()
                    for a in msg.get("tasks", msg.get("put", [])):
                        tid = str(a.get("task_id"))
                        if tid in self.reported:
                            continue
                        self.reported.add(tid)
                        n = len(self.reported)
                        self.send({"op": "status", "task_id": tid, "state": "running", "container_id": "sim" + tid,
                                   "ip": str(self.subnet[n % 250 + 2]), "ts": now})
        except (asyncssh.Error, OSError, ValueError):
            pass
        finally:
            self.process.exit(0)


class Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # loopback inside one lab host: no authentication needed

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn


def node_index(process: asyncssh.SSHServerProcess[bytes]) -> int:
    addr = process.get_extra_info("sockname")[0]
    _, _, b, c = (int(x) for x in addr.split("."))
    return b * 250 + c - 1


async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
    await FakeAgent(process, node_index(process)).run()


async def join_all(token: str, manager: str, nodes: int, host_key: str, port: int, connections: int = 8) -> None:
    """Join every simulated node through the real join API, many joins per
    SSH connection (the join session serves requests one after another):
    one connection per node spent ~1 s of SSH handshakes each on this shared
    machine (1,117 s for 1,000 joins), which measured the simulator, not the
    manager."""
    host, api_port = bootstrap._split_addr(manager)
    todo = list(range(nodes))

    async def worker() -> None:
        async def calls(process: Any) -> Any:
            while todo:
                i = todo.pop()
                try:
                    await bootstrap._rpc(process, "join", {
                        "hostname": f"sim{i}", "addr": sim_addr(i), "ssh_host_key": host_key, "ssh_port": port,
                    })
                except BaseException:
                    todo.append(i)  # the next connection joins it
                    raise

        # a connect that timed out never reached the join call (10 s to the
        # SSH handshake): retry it, as a loaded machine needs
        for attempt in range(8):
            try:
                await bootstrap._join_calls(host, api_port, token, calls)
                return
            except ConnectionError_ as exc:
                if "timed out" not in str(exc) or attempt == 7:
                    raise
                await asyncio.sleep(1 + attempt)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    print(f"joined {nodes} simulated nodes in {time.monotonic() - started:.1f}s", flush=True)


async def main_async(args: argparse.Namespace) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode().strip()
    await join_all(args.token, args.manager, args.nodes, public, args.port)
    server = await asyncssh.create_server(Server, "", args.port, server_host_keys=[key], process_factory=handle,
                                          encoding=None, line_editor=False, keepalive_interval=0)
    print(f"serving {args.nodes} simulated nodes on port {args.port}", flush=True)
    async with server:
        await server.wait_closed()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--token", required=True)
    p.add_argument("--manager", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--port", type=int, default=2222)
    args = p.parse_args()
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
