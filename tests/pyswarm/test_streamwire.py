"""Stream ops between dispatcher and agent (pyswarm/streamwire.py): parsed and checked."""

from __future__ import annotations

import pytest

from pyswarm import streamwire as w


def test_each_op_round_trips() -> None:
    for msg in (w.Open(3, "logs", {"task_id": "t"}), w.Credit(3, 100), w.Stdin(3, b"hi\n", eof=True),
                w.Resize(3, 40, 120), w.Cancel(3), w.Chunk(3, ({"t": 1, "line": "x"},), mark=5),
                w.End(3, "boom", {"exit_code": 2})):
        wire = msg.to_message()
        table = w.TO_AGENT if wire["op"] in w.TO_AGENT else w.TO_MANAGER
        assert table[wire["op"]](wire) == msg


@pytest.mark.parametrize("msg, field", [
    ({"op": "stream", "id": 1, "kind": "shell"}, "kind"),
    ({"op": "stream", "id": 0, "kind": "logs"}, "'id'"),
    ({"op": "credit", "id": 1, "bytes": -5}, "'bytes'"),
    ({"op": "stdin", "id": 1, "data": "not base64!"}, "base64"),
    ({"op": "resize", "id": 1, "h": 0, "w": 80}, "'h'"),
    ({"op": "chunk", "id": 1, "items": "lines"}, "'items'"),
    ({"op": "chunk", "id": 1, "items": [], "mark": True}, "'mark'"),
    ({"op": "end", "id": 1, "error": 5}, "'error'"),
])
def test_bad_fields_are_named(msg: dict[str, object], field: str) -> None:
    table = w.TO_AGENT if msg["op"] in w.TO_AGENT else w.TO_MANAGER
    with pytest.raises(ValueError, match=field):
        table[str(msg["op"])](msg)  # type: ignore[arg-type]
