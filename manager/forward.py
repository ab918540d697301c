"""A follower hands a streaming call on to the leader.

Only the leader holds SSH sessions to the nodes, so logs, exec and stats
must run there; a CLI may reach any manager. Rather than open sessions of
its own to every node (a second agent per node, fencing questions, N more
SSH sessions per follower), a follower opens one SSH connection to the
leader's API port for the call and relays its lines both ways. It logs in
as :data:`USER` with the cluster's SSH key, which every manager holds
already (it is how any of them drives the agents once it leads), and
checks the leader's host key against the cluster's API host key: no new
port and no new credential. The leader admits that user to the streaming
methods only.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import asyncssh

from pyswarm import rpc
from pyswarm.errors import NoQuorumError

USER = "forward"


@dataclass(frozen=True)
class LeaderDoor:
    """Where and how to reach the leader's API port."""

    addr: str
    port: int
    host_key: str  # the cluster's API host key (private, as the store keeps it)
    client_key: str  # the cluster's SSH private key


def is_cluster_key(key: asyncssh.SSHKey, public_keys: list[str]) -> bool:
    for text in public_keys:
        try:
            if text and asyncssh.import_public_key(text).public_data == key.public_data:
                return True
        except (asyncssh.KeyImportError, ValueError):
            continue
    return False


async def relay(door: LeaderDoor | None, line: bytes, reader: Any, writer: Any) -> None:
    """Send ``line`` (the request) to the leader and relay until its final line."""
    if door is None:
        raise NoQuorumError("there is no leader to run this on right now (an election is under way?)")
    host_key = asyncssh.import_private_key(door.host_key).convert_to_public()
    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            door.addr, port=door.port, username=USER, client_keys=[asyncssh.import_private_key(door.client_key)],
            known_hosts=([host_key], [], []), agent_path=None, config=[], password=None,
        ), timeout=10)
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        _write(writer, rpc.encode_error(NoQuorumError(f"cannot reach the leader at {door.addr}:{door.port}: {exc}")))
        return
    try:
        process = await conn.create_process(encoding=None)
        process.stdin.write(line)

        async def up() -> None:
            while got := await reader.readline():
                process.stdin.write(got)
            process.stdin.write_eof()

        uploading = asyncio.ensure_future(up())
        try:
            while True:
                got = await process.stdout.readline()
                if not got:
                    _write(writer, rpc.encode_error(NoQuorumError("the leader closed the call (did it step down?)")))
                    break
                _write(writer, got)
                if hasattr(writer, "drain"):
                    await writer.drain()
                try:
                    final = "stream" not in json.loads(got)
                except ValueError:
                    final = False
                if final:
                    break
        finally:
            uploading.cancel()
    finally:
        conn.close()


def _write(writer: Any, data: bytes) -> None:
    writer.write(data)
