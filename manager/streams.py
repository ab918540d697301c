"""Streams the leader opens on the agents (logs, exec, stats).

A :class:`StreamHub` lives as long as the manager; while this manager leads,
the dispatcher is attached to it and the hub opens streams over the
dispatcher's existing SSH session to each node (no new port, no new
credentials). Every stream has an id unique on this manager; the session
that opened a stream is the only one whose ``chunk``/``end`` lines count for
it, so a node cannot write into another node's stream (or one it was never
asked for): such lines are dropped and logged.

Backpressure: an agent may send a stream only as many bytes as it was
granted (:mod:`pyswarm.streamwire`). The consumer of a stream (an API call
answering a CLI) gives credit back only for what it has handed on
(:meth:`RemoteStream.consumed`), so a slow CLI holds at most one window per
stream in this manager's memory and the agent simply stops reading the
engine. The SSH channel itself is always read at once, so pings and task
reports of the node are never held up behind a stream.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from pyswarm import streamwire
from pyswarm.errors import ClusterError
from pyswarm.models import NodeStatus

if TYPE_CHECKING:
    from .dispatcher import Dispatcher, _Session

log = logging.getLogger(__name__)


class NodeUnavailable(ClusterError):
    """The node has no live session with this leader."""


@dataclass(frozen=True)
class Lost:
    """The session carrying a stream went away (the node is down or cut off)."""

    reason: str


Event = Union[streamwire.Chunk, streamwire.End, Lost]


class RemoteStream:
    """One stream on one node's agent, as its consumer sees it: events
    arrive on ``sink`` as ``(stream, Chunk | End | Lost)``."""

    def __init__(self, hub: StreamHub, session: _Session, stream_id: int, kind: str,
                 sink: asyncio.Queue[tuple[RemoteStream, Event]], tag: Any = None) -> None:
        self.hub = hub
        self.session = session
        self.id = stream_id
        self.kind = kind
        self.node_id = session.node.id
        self.node_name = session.node.hostname
        self.sink = sink
        self.tag = tag  # the consumer's own reference (a task id, say)
        self.done = False
        self._unacked = 0
        self._stdin_credit = streamwire.WINDOW
        self._stdin_ready = asyncio.Event()
        self._stdin_ready.set()

    def consumed(self, nbytes: int) -> None:
        """The consumer handed on ``nbytes`` of this stream: let the agent send more."""
        self._unacked += nbytes
        if self._unacked >= streamwire.WINDOW // 4 and not self.done:
            self.session._send(streamwire.Credit(self.id, self._unacked).to_message())
            self._unacked = 0

    async def stdin(self, data: bytes, eof: bool = False) -> None:
        """Send exec input, waiting while the agent has not written what it has."""
        for start in range(0, max(len(data), 1), streamwire.MAX_CHUNK_BYTES):
            piece = data[start:start + streamwire.MAX_CHUNK_BYTES]
            while self._stdin_credit <= 0 and not self.done:
                await self._stdin_ready.wait()
                self._stdin_ready.clear()
            if self.done:
                return
            self._stdin_credit -= len(piece)
            last = start + streamwire.MAX_CHUNK_BYTES >= len(data)
            self.session._send(streamwire.Stdin(self.id, piece, eof and last).to_message())

    def stdin_credit(self, n: int) -> None:
        self._stdin_credit += n
        self._stdin_ready.set()

    def resize(self, h: int, w: int) -> None:
        if not self.done:
            self.session._send(streamwire.Resize(self.id, h, w).to_message())

    def cancel(self) -> None:
        if not self.done:
            self.session._send(streamwire.Cancel(self.id).to_message())
            self.hub._forget(self)
            self.done = True
            self._stdin_ready.set()


class StreamHub:
    def __init__(self) -> None:
        self.dispatcher: Dispatcher | None = None
        self._next_id = 0
        self._streams: dict[int, RemoteStream] = {}

    def attach(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        dispatcher.streams = self

    def detach(self) -> None:
        self.dispatcher = None
        for s in list(self._streams.values()):
            self._lost(s, "this manager stopped leading")

    def node_ready(self, node_id: str) -> bool:
        session = self._session(node_id)
        return session is not None

    def _session(self, node_id: str) -> _Session | None:
        d = self.dispatcher
        if d is None:
            return None
        entry = d._sessions.get(node_id)
        if entry is None or not entry[0]._ready or entry[0]._process is None:
            return None
        return entry[0]

    def open(self, node_id: str, kind: str, params: dict[str, Any],
             sink: asyncio.Queue[tuple[RemoteStream, Event]], tag: Any = None) -> RemoteStream:
        """Open a stream on ``node_id``; raises :class:`NodeUnavailable`."""
        if self.dispatcher is None:
            raise NodeUnavailable("this manager is not the leader: it has no sessions to the nodes")
        session = self._session(node_id)
        if session is None:
            snap = self.dispatcher.snapshot
            node = snap.node(node_id) if snap is not None else None
            name = node.hostname if node else node_id[:12]
            why = f"{node.status.value}" + (f": {node.status_message}" if node and node.status_message else "") \
                if node and node.status != NodeStatus.READY else "not connected"
            raise NodeUnavailable(f"node {name} is {why}")
        self._next_id += 1
        stream = RemoteStream(self, session, self._next_id, kind, sink, tag)
        self._streams[stream.id] = stream
        session._send(streamwire.Open(stream.id, kind, params).to_message())
        return stream

    def _forget(self, stream: RemoteStream) -> None:
        self._streams.pop(stream.id, None)

    def _lost(self, stream: RemoteStream, reason: str) -> None:
        self._forget(stream)
        if not stream.done:
            stream.done = True
            stream._stdin_ready.set()
            stream.sink.put_nowait((stream, Lost(reason)))

    # -- hooks the dispatcher calls ---------------------------------------------

    def on_message(self, session: _Session, msg: dict[str, Any]) -> None:
        """A ``chunk``, ``end`` or ``credit`` line from ``session``'s agent."""
        try:
            parsed = streamwire.TO_MANAGER[str(msg.get("op"))](msg)
        except (KeyError, ValueError) as exc:
            log.warning("%s: bad stream message: %s", session.node.hostname, exc)
            return
        stream = self._streams.get(parsed.id)
        if stream is None or stream.session is not session:
            if stream is not None:
                log.warning("%s sent data for stream %d, which it does not carry: dropped",
                            session.node.hostname, parsed.id)
            return  # or a late line of a cancelled stream
        if isinstance(parsed, streamwire.Credit):
            stream.stdin_credit(parsed.bytes)
            return
        if isinstance(parsed, streamwire.End):
            self._forget(stream)
            stream.done = True
            stream._stdin_ready.set()
        stream.sink.put_nowait((stream, parsed))

    def session_closed(self, session: _Session, reason: str) -> None:
        for s in [s for s in self._streams.values() if s.session is session]:
            self._lost(s, f"node {session.node.hostname} is unreachable ({reason})")


def decode_data(item: dict[str, Any]) -> bytes:
    """An exec output item's bytes."""
    try:
        return base64.b64decode(str(item.get("data", "")))
    except ValueError:
        return b""
