"""The node's image channel (worker/channel.py): one request, checked; the tar
moved from the sender's pipe to the engine's socket untouched.

The engine here is a small Engine API server on a unix socket in a thread
(the real dockerd is the lab's: tests/e2e/test_image_shipping.py), so the
channel's own HTTP client, its ``splice`` and its chunked copy for an older
sender are what run."""

from __future__ import annotations

import json
import os
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from pyswarm.images import ChannelRequest, HaveReply, LoadHeader
from pyswarm.worker.channel import Engine, serve

H = "sha256:" + "b" * 64


class FakeEngine:
    """What the fake Engine API answers, and what it was sent."""

    def __init__(self) -> None:
        self.images = [{"Id": H, "RepoTags": ["app:1", "<none>:<none>"], "RepoDigests": [], "Size": 42}]
        self.layers = {H: ["sha256:" + "1" * 64]}
        self.removed: list[str] = []
        self.loads: list[tuple[dict[str, str], bytes]] = []
        self.load_error = ""
        self.archive = os.urandom(300_000)


def _handler(engine: FakeEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/version":
                return self._answer(200, {"ApiVersion": "1.43", "MinAPIVersion": "1.12"})
            assert self.path.startswith("/v1.41/"), self.path
            path = self.path[len("/v1.41"):]
            if path == "/images/json":
                return self._answer(200, engine.images)
            if path.endswith("/get"):
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(engine.archive), 65536):
                    part = engine.archive[i:i + 65536]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
                return None
            ref = path[len("/images/"):-len("/json")]
            if ref in engine.layers:
                return self._answer(200, {"Id": ref, "RootFS": {"Layers": engine.layers[ref]}})
            return self._answer(404, {"message": f"No such image: {ref}"})

        def do_DELETE(self) -> None:
            engine.removed.append(self.path.rsplit("/", 1)[-1])
            self._answer(200, [])

        def do_POST(self) -> None:
            assert self.path == "/v1.41/images/load?quiet=1", self.path
            headers = {k.lower(): v for k, v in self.headers.items()}
            if "content-length" in headers:
                body = self.rfile.read(int(headers["content-length"]))
            else:  # chunked
                parts = []
                while size := int(self.rfile.readline().strip(), 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                body = b"".join(parts)
            engine.loads.append((headers, body))
            msg = {"error": engine.load_error} if engine.load_error else {"stream": "Loaded image: app:2\n"}
            self._answer(200, msg)
    return Handler


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[FakeEngine, str]]:
    fake = FakeEngine()
    path = str(tmp_path / "docker.sock")
    server = _Server(path, _handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake, path
    finally:
        server.shutdown()
        server.server_close()


def _serve(path: str, *sent: bytes, stop_short: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """The channel's answer to ``sent`` written into a real pipe (as sshd's
    stdin) by another thread, as a sender would."""
    r, w = os.pipe()

    def send() -> None:
        try:
            for part in sent:
                view = memoryview(part)
                while view:
                    view = view[os.write(w, view):]
        finally:
            os.close(w)
    writer = threading.Thread(target=send)
    writer.start()
    out: list[bytes] = []
    node = Engine(f"unix://{path}")
    try:
        rc = serve(node, r, out.append)
    finally:
        node.close()
        writer.join(10)
        os.close(r)
    return rc, [json.loads(line) for line in b"".join(out).splitlines()]


def _have(image: str = "app:2") -> bytes:
    return ChannelRequest("have", image=image, image_id="sha256:" + "c" * 64).to_line()


def test_malformed_request_gets_one_error_line(engine: tuple[FakeEngine, str]) -> None:
    rc, out = _serve(engine[1], b'{"op": "have", "image": "x;reboot", "image_id": "sha256:1"}\n')
    assert rc == 1 and out[0]["op"] == "error" and "image: not an image reference" in out[0]["error"], out


def test_inventory_lists_tags_without_placeholders(engine: tuple[FakeEngine, str]) -> None:
    rc, out = _serve(engine[1], b'{"op": "inventory"}\n')
    assert rc == 0 and out == [{"op": "inventory", "images": [{"id": H, "tags": ["app:1"], "digests": [], "size": 42}]}]


def test_remove_untags_what_it_is_told(engine: tuple[FakeEngine, str]) -> None:
    rc, out = _serve(engine[1], b'{"op": "remove", "images": ["app:0"]}\n')
    assert rc == 0 and engine[0].removed == ["app:0"] and out[0]["removed"] == ["app:0"], out


def test_the_sized_tar_reaches_the_engine_untouched_with_its_length(engine: tuple[FakeEngine, str]) -> None:
    """The node answers ``have`` with its chains and asks for the length; the
    3 MB that follow the header reach the engine as one body with that
    ``Content-Length``, byte for byte (moved by ``splice``: not one of them
    is read by the channel, whose CPU stays that of its start)."""
    fake, path = engine
    tar = os.urandom(3 << 20)
    rc, out = _serve(path, _have(), LoadHeader(len(tar)).to_line(), tar)
    assert rc == 0 and [m["op"] for m in out] == ["have", "loaded"], out
    have = HaveReply.from_line(json.dumps(out[0]).encode())
    assert have.sized and not have.present and have.chains == {"sha256:" + "1" * 64}
    assert out[1]["ok"] is True and out[1]["loaded"] == ["app:2"], out
    (headers, body), = fake.loads
    assert headers["content-length"] == str(len(tar)) and "transfer-encoding" not in headers
    assert body == tar


def test_an_older_sender_that_sends_the_tar_alone_is_loaded_chunked(engine: tuple[FakeEngine, str]) -> None:
    fake, path = engine
    tar = b"app.json\0" + os.urandom(200_000)  # a tar starts with a member's name, never "{"
    rc, out = _serve(path, _have(), tar)
    assert rc == 0 and out[1]["ok"] is True, out
    (headers, body), = fake.loads
    assert headers["transfer-encoding"] == "chunked" and body == tar


def test_a_sender_that_stops_short_is_an_error_not_a_hang(engine: tuple[FakeEngine, str]) -> None:
    fake, path = engine
    started = time.monotonic()
    rc, out = _serve(path, _have(), LoadHeader(1000).to_line(), b"x" * 10)
    assert rc == 1 and out[1]["ok"] is False, out
    assert "the sender stopped after 10 of 1000 bytes" in out[1]["error"], out
    assert time.monotonic() - started < 5


def test_the_engines_load_error_is_the_reply(engine: tuple[FakeEngine, str]) -> None:
    fake, path = engine
    fake.load_error = "open /var/lib/docker/tmp/x: no space left on device"
    rc, out = _serve(path, _have(), LoadHeader(5).to_line(), b"12345")
    assert rc == 1 and out[1] == {**out[1], "ok": False, "error": fake.load_error}, out


def test_an_engine_that_is_gone_is_said(tmp_path: Path) -> None:
    rc, out = _serve(str(tmp_path / "none.sock"), _have())
    assert rc == 1 and out[0]["op"] == "error" and "cannot reach the engine" in out[0]["error"], out


def test_export_sends_the_engines_archive_of_an_image_it_holds(engine: tuple[FakeEngine, str]) -> None:
    fake, path = engine
    fake.layers["app:1"] = fake.layers[H]
    r, w = os.pipe()
    os.write(w, ChannelRequest("export", image="app:1").to_line())
    os.close(w)
    out: list[bytes] = []
    node = Engine(f"unix://{path}")
    try:
        assert serve(node, r, out.append) == 0
    finally:
        node.close()
        os.close(r)
    head, _, archive = b"".join(out).partition(b"\n")
    assert json.loads(head) == {"op": "export", "present": True, "image_id": "app:1"}
    assert archive == fake.archive
    rc, replies = _serve(path, ChannelRequest("export", image="none:1").to_line())
    assert rc == 0 and replies == [{"op": "export", "present": False, "image_id": ""}], replies
