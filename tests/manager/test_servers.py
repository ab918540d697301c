"""The API's unix socket: big requests and answers work (asyncio's 64 KiB
line limit made a 150-service stack fail with "the manager closed the
connection without answering"), and one over the limit gets an error that
names it, from the CLI's side before sending and from the server's side."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from test_api import spec, with_api  # noqa: E402

from pyswarm import rpc  # noqa: E402
from pyswarm.errors import UsageError  # noqa: E402
from pyswarm.manager.api import Api  # noqa: E402
from pyswarm.manager.servers import UnixApiServer  # noqa: E402


def test_a_thousand_service_16_mib_stack_goes_through_and_more_is_refused_by_name(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"

    async def body(api: Api) -> None:
        server = UnixApiServer(api, sock)
        await server.start()
        try:
            services = [spec(f"big_s{i}") for i in range(1000)]
            for s in services:  # 16 KiB each: a 16 MiB request
                s["labels"] = {f"label{j}": "x" * 400 for j in range(40)}
            size = len(rpc.encode_request("stack.deploy", {"stack": "big", "services": services}))
            assert size > 16 * 2**20
            report = await asyncio.to_thread(rpc.call_unix, sock, "stack.deploy",
                                             {"stack": "big", "services": services})
            assert sum(1 for r in report if "service" in r and r["action"] == "created") == 1000
            answer = await asyncio.to_thread(rpc.call_unix, sock, "service.ls", {})
            assert len(answer) == 1000, "the 1,000-service answer did not come back whole"
            with pytest.raises(UsageError, match="the ping request of 32.0 MiB exceeds the API's limit of 32 MiB"):
                await asyncio.to_thread(rpc.call_unix, sock, "ping", {"pad": "x" * rpc.MAX_MESSAGE})
            answer_line = await asyncio.to_thread(_raw_oversized_request, sock)
            assert "exceeds the API's limit of 32 MiB" in json.loads(answer_line)["error"]["message"]
        finally:
            await server.stop()
    with_api(tmp_path, body)


def _raw_oversized_request(path: Path) -> bytes:
    """What a client that does not check the size gets: an answer, not silence."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(path))
    try:
        chunk = b"x" * 2**20
        try:
            for _ in range(rpc.MAX_MESSAGE // len(chunk) + 2):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading once over the limit
        data = b""
        while not data.endswith(b"\n"):
            got = s.recv(65536)
            if not got:
                break
            data += got
        return data
    finally:
        s.close()
