"""The leader's stream hub (manager/streams.py): who may write into a stream,
credit given back as the consumer hands lines on, streams lost with their session."""

from __future__ import annotations

import asyncio
from typing import Any

from pyswarm import streamwire
from pyswarm.manager.streams import Lost, RemoteStream, StreamHub
from pyswarm.models import Node


class FakeSession:
    def __init__(self, name: str) -> None:
        self.node = Node(id=f"id-{name}", hostname=name, addr="10.0.0.1")
        self.sent: list[dict[str, Any]] = []
        self._ready = True
        self._process = object()

    def _send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


class FakeDispatcher:
    def __init__(self, *sessions: FakeSession) -> None:
        self._sessions = {s.node.id: (s, None) for s in sessions}
        self.snapshot = None
        self.streams: Any = None


def test_only_the_session_that_carries_a_stream_may_write_into_it() -> None:
    async def scenario() -> None:
        a, b = FakeSession("a"), FakeSession("b")
        hub = StreamHub()
        hub.attach(FakeDispatcher(a, b))  # type: ignore[arg-type]
        sink: asyncio.Queue[tuple[RemoteStream, Any]] = asyncio.Queue()
        stream = hub.open(a.node.id, "logs", {"task_id": "t"}, sink)
        assert a.sent[-1]["op"] == "stream"
        hub.on_message(b, {"op": "chunk", "id": stream.id, "items": [{"t": 1, "line": "forged"}]})  # type: ignore[arg-type]
        assert sink.empty(), "a node wrote into another node's stream"
        hub.on_message(a, {"op": "chunk", "id": stream.id, "items": [{"t": 1, "line": "ok"}]})  # type: ignore[arg-type]
        assert sink.get_nowait()[1].items[0]["line"] == "ok"
        hub.on_message(a, {"op": "chunk", "id": stream.id, "items": "not a list"})  # type: ignore[arg-type]
        assert sink.empty()
        hub.session_closed(a, "no heartbeat for 2s")  # type: ignore[arg-type]
        lost = sink.get_nowait()[1]
        assert isinstance(lost, Lost) and "node a is unreachable" in lost.reason

    asyncio.run(scenario())


def test_credit_goes_back_only_as_the_consumer_hands_lines_on() -> None:
    async def scenario() -> None:
        a = FakeSession("a")
        hub = StreamHub()
        hub.attach(FakeDispatcher(a))  # type: ignore[arg-type]
        stream = hub.open(a.node.id, "logs", {}, asyncio.Queue())
        stream.consumed(streamwire.WINDOW // 8)
        assert not [m for m in a.sent if m["op"] == "credit"]
        stream.consumed(streamwire.WINDOW // 8)
        credits = [m for m in a.sent if m["op"] == "credit"]
        assert credits == [{"op": "credit", "id": stream.id, "bytes": streamwire.WINDOW // 4}]

    asyncio.run(scenario())
