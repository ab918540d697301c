"""The low-watermark merge of ``service logs`` (manager/logs.py): pure logic."""

from __future__ import annotations

import pytest

from pyswarm.errors import UsageError
from pyswarm.manager.logs import INF, LogsRequest, Merger
from pyswarm.wire import parse


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def line(t: int, text: str = "") -> dict[str, object]:
    return {"t": t, "line": text or str(t)}


def test_a_line_waits_until_every_open_source_has_passed_it() -> None:
    m = Merger(clock=Clock())
    m.open("a")
    m.open("b")
    m.push("a", [line(10), line(30)])
    assert m.ready() == []  # b has promised nothing yet
    m.push("b", [line(20)])
    assert [i["t"] for _, i in m.ready()] == [10, 20]  # 30 waits: b may still say 25
    m.push("b", [], mark=35)
    assert [i["t"] for _, i in m.ready()] == [30]


def test_a_closed_source_no_longer_holds_the_others() -> None:
    m = Merger(clock=Clock())
    m.open("a")
    m.open("b")
    m.push("a", [line(5), line(7)])
    m.close("b")
    assert [i["t"] for _, i in m.ready()] == [5, 7]
    m.close("a")
    assert m.low_watermark() == INF


def test_a_silent_source_stops_holding_back_after_the_lag() -> None:
    clock = Clock()
    m = Merger(lag=3.0, clock=clock)
    m.open("a")
    m.open("cut")
    m.push("a", [line(1), line(2)])
    assert m.ready() == []
    clock.now += 3.5
    m.push("a", [], mark=3)  # a still moves; "cut" said nothing for 3.5 s
    assert [i["t"] for _, i in m.ready()] == [1, 2]
    m.push("cut", [line(0, "late")])  # printed late, not dropped
    assert [i["line"] for _, i in m.ready()] == ["late"]


def test_many_sources_merge_in_time_order_with_nothing_lost_or_repeated() -> None:
    m = Merger(clock=Clock())
    sources = {f"s{i}": list(range(i, 3000, 7)) for i in range(7)}
    for key in sources:
        m.open(key)
    out = []
    for step in range(0, 3000, 50):
        for key, times in sources.items():
            m.push(key, [line(t) for t in times if step <= t < step + 50], mark=step + 49)
        out += [i["t"] for _, i in m.ready()]
    for key in sources:
        m.close(key)
    out += [i["t"] for _, i in m.drain()]
    assert out == sorted(t for times in sources.values() for t in times)


def test_logs_request_names_what_is_wrong() -> None:
    assert parse(LogsRequest, {"service": "web", "tail": 5}).tail == 5
    with pytest.raises(UsageError, match="exactly one"):
        parse(LogsRequest, {"service": "web", "stack": "demo"})
    with pytest.raises(UsageError, match="tail"):
        parse(LogsRequest, {"service": "web", "tail": -5})
    with pytest.raises(UsageError, match="until"):
        parse(LogsRequest, {"service": "web", "since": 10, "until": 5})
