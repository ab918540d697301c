"""The agent's stream helpers (worker/streams.py): frames, timestamps, stats."""

from __future__ import annotations

import struct

from pyswarm.worker.streams import log_item, parse_timestamp, split_frames, stats_item


def frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(data)) + data


def test_frames_keep_stdout_and_stderr_apart_and_wait_for_partial_ones() -> None:
    buf = bytearray(frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"partial")[:6])
    assert split_frames(buf) == [(1, b"out\n"), (2, b"err\n")]
    assert len(buf) == 6  # the partial frame stays
    buf += frame(1, b"partial")[6:]
    assert split_frames(buf) == [(1, b"partial")]


def test_engine_timestamps_to_nanoseconds() -> None:
    assert parse_timestamp("1970-01-01T00:00:01.000000002Z") == 1_000_000_002
    assert parse_timestamp("2026-12-01T09:00:00.5Z") == parse_timestamp("2026-12-01T10:00:00.5+01:00")
    assert parse_timestamp("garbage") == 0


def test_a_log_item_carries_time_stream_and_text() -> None:
    item = log_item(2, b"1970-01-01T00:00:01.000000002Z hello world\n")
    assert item == {"t": 1_000_000_002, "stream": "stderr", "line": "hello world"}
    assert log_item(1, b"no timestamp here") is None


def test_stats_like_docker_stats() -> None:
    sample = {
        "cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000, "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
        "memory_stats": {"usage": 1000, "limit": 4000, "stats": {"inactive_file": 200}},
        "networks": {"eth0": {"rx_bytes": 5, "tx_bytes": 7}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 3}, {"op": "Write", "value": 4}]},
    }
    got = stats_item("t", sample)
    assert got["cpu_percent"] == 40.0  # 200/1000 of the host × 2 cpus
    assert (got["mem_usage"], got["mem_limit"], got["net_rx"], got["net_tx"]) == (800, 4000, 5, 7)
    assert (got["block_read"], got["block_write"]) == (3, 4)


def test_a_stream_sends_no_more_than_its_credit_until_granted_more() -> None:
    """Backpressure: a reader that does not consume stops the agent's sending."""
    import asyncio

    from pyswarm import streamwire
    from pyswarm.worker.streams import StreamServer, _Stream

    sent: list[dict[str, object]] = []

    async def scenario() -> None:
        server = StreamServer(sent.append)
        s = _Stream(server, streamwire.Open(1, "logs", {}))
        line = {"t": 1, "stream": "stdout", "line": "x" * 1000}
        per_line = streamwire.item_size(line)
        lines_in_window = streamwire.WINDOW // per_line + 1
        await asyncio.wait_for(s.emit([dict(line) for _ in range(lines_in_window)]), 5)
        before = len(sent)
        blocked = asyncio.ensure_future(s.emit([dict(line)]))
        await asyncio.sleep(0.1)
        assert not blocked.done() and len(sent) == before, "sent past its credit"
        s.grant(per_line)
        await asyncio.wait_for(blocked, 5)
        assert len(sent) == before + 1

    asyncio.run(scenario())
