"""Typed messages of the stream ops between the dispatcher and an agent.

:mod:`pyswarm.protocol` describes the ops; this module parses each line
that carries one into a checked, frozen object, so neither side acts on a
field of the wrong type or size. Parsing raises :class:`ValueError` naming
the op and the field.

Flow control is by credit, in both directions: whoever sends a stream's
data may have at most the credit it was granted outstanding (bytes of
``data``/``line`` text); the receiver grants more as it consumes. So a
slow CLI stops the agent reading the engine instead of filling the
manager's memory, and the one SSH channel stays free for pings and
assignments.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Union

STREAM_KINDS = frozenset({"logs", "exec", "stats"})
WINDOW = 256 * 1024  # initial credit of a stream, each way (bytes)
MAX_ITEMS = 4096  # items in one chunk
MAX_CHUNK_BYTES = 64 * 1024  # an agent sends a chunk once it holds this much
MAX_ID = 2**53


def _int(msg: dict[str, Any], key: str, *, low: int = 0, high: int = MAX_ID) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{msg.get('op')}: field {key!r} must be an integer in [{low}, {high}], not {value!r:.60}")
    return value


def _str(msg: dict[str, Any], key: str, default: str | None = None, limit: int = 4096) -> str:
    value = msg.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{msg.get('op')}: field {key!r} must be a string of at most {limit} characters")
    return value


def _dict(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{msg.get('op')}: field {key!r} must be an object")
    return value


@dataclass(frozen=True)
class Open:
    """manager -> agent: start stream ``id`` of ``kind`` with ``params``."""

    id: int
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> Open:
        kind = _str(msg, "kind")
        if kind not in STREAM_KINDS:
            raise ValueError(f"stream: unknown kind {kind!r} (known: {', '.join(sorted(STREAM_KINDS))})")
        return cls(_int(msg, "id", low=1), kind, _dict(msg, "params"))

    def to_message(self) -> dict[str, Any]:
        return {"op": "stream", "id": self.id, "kind": self.kind, "params": self.params}


@dataclass(frozen=True)
class Credit:
    """Either way: the receiver of stream ``id``'s data may be sent ``bytes`` more."""

    id: int
    bytes: int

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> Credit:
        return cls(_int(msg, "id", low=1), _int(msg, "bytes", low=1, high=1 << 30))

    def to_message(self) -> dict[str, Any]:
        return {"op": "credit", "id": self.id, "bytes": self.bytes}


@dataclass(frozen=True)
class Stdin:
    """manager -> agent: bytes for an exec's stdin (``eof``: close it)."""

    id: int
    data: bytes = b""
    eof: bool = False

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> Stdin:
        raw = _str(msg, "data", "", limit=4 * MAX_CHUNK_BYTES)
        try:
            data = base64.b64decode(raw, validate=True)
        except ValueError:
            raise ValueError("stdin: field 'data' is not base64") from None
        return cls(_int(msg, "id", low=1), data, bool(msg.get("eof", False)))

    def to_message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "stdin", "id": self.id, "data": base64.b64encode(self.data).decode()}
        if self.eof:
            out["eof"] = True
        return out


@dataclass(frozen=True)
class Resize:
    """manager -> agent: an exec's TTY is now ``h`` rows by ``w`` columns."""

    id: int
    h: int
    w: int

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> Resize:
        return cls(_int(msg, "id", low=1), _int(msg, "h", low=1, high=10_000), _int(msg, "w", low=1, high=10_000))

    def to_message(self) -> dict[str, Any]:
        return {"op": "resize", "id": self.id, "h": self.h, "w": self.w}


@dataclass(frozen=True)
class Cancel:
    """manager -> agent: stop stream ``id`` (the agent answers with ``end``)."""

    id: int

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> Cancel:
        return cls(_int(msg, "id", low=1))

    def to_message(self) -> dict[str, Any]:
        return {"op": "cancel", "id": self.id}


@dataclass(frozen=True)
class Chunk:
    """agent -> manager: items of stream ``id``, and (logs) ``mark``: no
    later item of this stream will be older than this (ns since the epoch)."""

    id: int
    items: tuple[dict[str, Any], ...]
    mark: int = 0

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> Chunk:
        items = msg.get("items", [])
        if not isinstance(items, list) or len(items) > MAX_ITEMS or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"chunk: field 'items' must be a list of at most {MAX_ITEMS} objects")
        mark = msg.get("mark", 0)
        if not isinstance(mark, int) or isinstance(mark, bool) or mark < 0:
            raise ValueError("chunk: field 'mark' must be a non-negative integer")
        return cls(_int(msg, "id", low=1), tuple(items), mark)

    def to_message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "chunk", "id": self.id, "items": list(self.items)}
        if self.mark:
            out["mark"] = self.mark
        return out


@dataclass(frozen=True)
class End:
    """agent -> manager: stream ``id`` is over; ``error`` says why if it
    failed, ``result`` is its answer (an exec's exit code)."""

    id: int
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> End:
        return cls(_int(msg, "id", low=1), _str(msg, "error", ""), _dict(msg, "result"))

    def to_message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "end", "id": self.id}
        if self.error:
            out["error"] = self.error
        if self.result:
            out["result"] = self.result
        return out


ToAgent = Union[Open, Credit, Stdin, Resize, Cancel]
ToManager = Union[Chunk, End, Credit]

# ops an agent receives / a manager receives
TO_AGENT: dict[str, Callable[[dict[str, Any]], ToAgent]] = {
    "stream": Open.parse, "credit": Credit.parse, "stdin": Stdin.parse, "resize": Resize.parse, "cancel": Cancel.parse}
TO_MANAGER: dict[str, Callable[[dict[str, Any]], ToManager]] = {
    "chunk": Chunk.parse, "end": End.parse, "credit": Credit.parse}


def item_size(item: dict[str, Any]) -> int:
    """What an item costs against the credit: its text or data length."""
    text = item.get("line", item.get("data", ""))
    return len(text) + 32 if isinstance(text, str) else 64
