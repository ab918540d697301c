"""Fixtures for the DNS tests (helpers live in dns_helpers.py, which this
directory being on sys.path makes importable; factories.py is one up)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dns_helpers import ServerThread  # noqa: E402

from pyswarm.dns import TableCache  # noqa: E402
from pyswarm.models import Cluster  # noqa: E402


@pytest.fixture
def cluster() -> Cluster:
    return Cluster(id="cluster-1")


@pytest.fixture
def dns_server() -> Iterator[Callable[..., ServerThread]]:
    """``dns_server(cache, **DnsServer kwargs)`` → a running ServerThread,
    stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(cache: TableCache, **kwargs: Any) -> ServerThread:
        st = ServerThread(cache, **kwargs)
        started.append(st)
        return st

    yield start
    for st in started:
        st.close()

