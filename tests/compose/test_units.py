"""Durations and byte sizes as the compose spec writes them."""

from __future__ import annotations

import pytest

from pyswarm.compose import format_duration, parse_bytes, parse_duration


@pytest.mark.parametrize("text, seconds", [
    ("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600), ("1.5h", 5400), ("2us", 2e-6),
    ("90", 90), (30, 30), ("0s", 0), ("1h2m3s", 3723),
])
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1x", "s", "-5s", "1m 30s", "ten seconds"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds, text", [
    (90, "1m30s"), (0.5, "500ms"), (3723, "1h2m3s"), (0, "0s"), (1.5, "1.5s"), (2e-6, "2us"),
])
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, size", [
    ("512m", 512 * 2**20), ("1g", 2**30), ("100k", 102400), ("1.5gb", int(1.5 * 2**30)),
    ("1024", 1024), (2048, 2048), ("64MiB", 64 * 2**20), ("10b", 10),
])
def test_parse_bytes(text: str | int, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["lots", "1q", "-1", "m"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)
