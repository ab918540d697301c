"""pyswarm.rpc.Connection: many requests over one stream, streaming answers,
and the errors a person sees when the far end goes away (a fake manager on
a socket pair: pure framing logic)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyswarm import errors, rpc


def _serve(sock: socket.socket, answer: Callable[[dict[str, object]], list[bytes]]) -> threading.Thread:
    def run() -> None:
        with sock, sock.makefile("rb") as lines:
            for line in lines:
                for out in answer(json.loads(line)):
                    sock.sendall(out)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_one_connection_carries_many_requests(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    seen: list[object] = []

    def answer(req: dict[str, object]) -> list[bytes]:
        seen.append(req["method"])
        return [rpc.encode_result({"echo": req["params"]})]

    _serve(server, answer)
    conn = rpc.Connection(client, "test")
    assert [conn.call("m", {"i": i})["echo"]["i"] for i in range(5)] == list(range(5))
    assert seen == ["m"] * 5


def test_stream_yields_items_then_returns_the_result(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    _serve(server, lambda req: [b'{"stream": 1}\n', b'{"stream": "two"}\n', rpc.encode_result("done")])
    conn = rpc.Connection(client, "test")
    gen = conn.stream("logs")
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert (items, result) == ([1, "two"], "done")
    assert conn.call("again") == "done"  # the stream's end leaves the connection usable


def test_errors_come_back_as_their_class(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    _serve(server, lambda req: [rpc.encode_error(errors.NotFoundError("no service x"))])
    with pytest.raises(errors.NotFoundError, match="no service x"):
        rpc.Connection(client, "test").call("service.inspect")


def test_far_end_closing_says_who_and_why(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.close()
    conn = rpc.Connection(client, "ssh://m1", explain=lambda: "no pyswarm manager is running on this host")
    with pytest.raises(errors.ConnectionError_, match=r"ssh://m1.*node.ls.*no pyswarm manager is running"):
        conn.call("node.ls")


def test_answer_cut_short(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    _serve(server, lambda req: [b'{"result": [1, 2'])
    conn = rpc.Connection(client, "test")
    threading.Timer(0.2, lambda: server.shutdown(socket.SHUT_RDWR)).start()
    with pytest.raises(errors.ConnectionError_, match="cut short"):
        conn.call("x", timeout=10)


def test_timeout_names_the_method(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _server = pair
    with pytest.raises(errors.ConnectionError_, match="did not answer slow within 0s"):
        rpc.Connection(client, "test").call("slow", timeout=0.1)


def test_duplex_hands_over_the_stream(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    conn = rpc.Connection(client, "test")
    raw = conn.duplex("exec", {"cmd": ["sh"]})
    assert json.loads(server.recv(4096)) == {"method": "exec", "params": {"cmd": ["sh"]}}
    raw.sendall(b"input")
    assert server.recv(10) == b"input"


def test_close_runs_the_transports_cleanup_once(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    closed: list[int] = []
    conn = rpc.Connection(client, "test", on_close=lambda: closed.append(1))
    with conn:
        pass
    conn.close()
    assert closed == [1]


def test_no_local_manager(tmp_path: Path) -> None:
    with pytest.raises(errors.NotManagerError, match="no pyswarm manager is running on this host"):
        rpc.connect_unix(tmp_path / "manager.sock")


def test_a_connection_is_a_line_channel_for_streams_with_input(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    conn = rpc.Connection(client, "test")
    conn.write(b'{"input": {"data": "x"}}\n')
    assert server.recv(100) == b'{"input": {"data": "x"}}\n'
    server.sendall(b'{"stream": 1}\n')
    assert conn.readline() == b'{"stream": 1}\n'
    server.close()
    assert conn.readline() == b""


@pytest.mark.parametrize("method, says_may", [("config.create", True), ("service.scale", True), ("node.ls", False)])
def test_an_unanswered_write_may_still_be_applied(pair: tuple[socket.socket, socket.socket], method: str,
                                                  says_may: bool) -> None:
    """A manager that closes the connection (it died, say) may have committed
    the write first: the error says so for a write, not for a read (the soak
    counted such a config create as refused, and it was applied)."""
    client, server = pair
    threading.Timer(0.2, lambda: server.shutdown(socket.SHUT_RDWR)).start()
    with pytest.raises(errors.ConnectionError_) as caught:
        rpc.Connection(client, "test").call(method, timeout=10)
    message = str(caught.value)
    assert f"without answering {method}" in message, message
    assert ("may still be applied" in message) is says_may, message
