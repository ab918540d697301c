"""The CLI's side of the API: writes refused during a leader election are
sent again for a few seconds when they are safe to repeat, and only then."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from pyswarm import rpc
from pyswarm.errors import ElectionError, UncertainWriteError


def _server(path: Path, refusals: int, error: ElectionError | None = None) -> list[str]:
    """A one-thread manager that refuses the first ``refusals`` requests
    with an election error; returns the methods it was asked."""
    seen: list[str] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                for line in lines:  # a connection carries many requests
                    seen.append(json.loads(line)["method"])
                    if len(seen) <= refusals:
                        conn.sendall(rpc.encode_error(error or ElectionError("leader election in progress, retry")))
                    else:
                        conn.sendall(rpc.encode_result("done"))

    threading.Thread(target=serve, daemon=True).start()
    return seen


def test_a_safe_write_is_retried_through_an_election(tmp_path: Path) -> None:
    seen = _server(tmp_path / "s", refusals=2)
    assert rpc.call_unix(tmp_path / "s", "service.scale", {"scales": {"web": 3}}) == "done"
    assert seen == ["service.scale"] * 3


def test_an_unsafe_write_is_not_retried(tmp_path: Path) -> None:
    seen = _server(tmp_path / "s", refusals=1)
    with pytest.raises(ElectionError, match="leader election in progress, retry"):
        rpc.call_unix(tmp_path / "s", "secret.create", {"name": "x"})
    assert seen == ["secret.create"]


def test_a_write_of_unknown_outcome_keeps_its_kind_and_is_repeated_only_when_safe(tmp_path: Path) -> None:
    uncertain = UncertainWriteError("the leader changed before it committed: the write may still be applied")
    seen = _server(tmp_path / "s", refusals=1, error=uncertain)
    with pytest.raises(UncertainWriteError, match="may still be applied"):
        rpc.call_unix(tmp_path / "s", "service.create", {"name": "x"})
    assert seen == ["service.create"], "a create of unknown outcome was sent again"
    assert rpc.call_unix(tmp_path / "s", "service.scale", {"scales": {"web": 3}}) == "done"
