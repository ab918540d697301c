"""The Engine API client against a small fake engine served on a unix socket:
version negotiation, error mapping, in-band pull errors, and the event
stream's reconnect with ``since``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pyswarm.worker import (
    EngineAPIError,
    EngineConflictError,
    EngineNotFoundError,
    EngineUnavailableError,
    ImageNotFoundError,
)
from pyswarm.worker.docker import DockerClient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeEngine:
    def __init__(self, api_version: str = "1.41", min_version: str = "1.12") -> None:
        self.api_version = api_version
        self.min_version = min_version
        self.paths: list[str] = []
        self.event_requests: list[dict[str, str]] = []
        self.drop_first_stream = True
        self.pull_auth: list[str] = []
        self.bodies: list[bytes] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_ping", self.ping)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v{v}/info", self.info)
        app.router.add_get("/v{v}/containers/{id}/json", self.inspect)
        app.router.add_post("/v{v}/containers/create", self.create)
        app.router.add_get("/v{v}/images/{name:.*}/json", self.image)
        app.router.add_post("/v{v}/images/create", self.pull)
        app.router.add_get("/v{v}/events", self.events)
        app.router.add_post("/v{v}/images/load", self.load)
        app.router.add_post("/v{v}/build", self.build)
        return app

    async def ping(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK")

    async def version(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ApiVersion": self.api_version, "MinAPIVersion": self.min_version})

    async def info(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        return web.json_response({"Name": "h", "NCPU": 4, "MemTotal": 1 << 30, "OSType": "linux",
                                  "Architecture": "aarch64", "ServerVersion": "26.1"})

    async def inspect(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"message": f"No such container: {request.match_info['id']}"}, status=404)

    async def create(self, request: web.Request) -> web.StreamResponse:
        name = request.query["name"]
        return web.json_response({"message": f'Conflict. The container name "/{name}" is already in use'},
                                 status=409)

    async def image(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["name"] == "there/img:1":
            return web.json_response({"Id": "sha256:1"})
        return web.json_response({"message": "No such image"}, status=404)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        self.pull_auth.append(request.headers.get("X-Registry-Auth", ""))
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b'{"status":"Pulling from x"}\n')
        await resp.write(json.dumps({"error": f"pull access denied for {request.query['fromImage']}"}).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def _lines(self, request: web.Request, lines: list[bytes]) -> web.StreamResponse:
        self.bodies.append(await request.read())
        resp = web.StreamResponse()
        await resp.prepare(request)
        for line in lines:
            await resp.write(line)
        await resp.write_eof()
        return resp

    async def load(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Content-Type") != "application/x-tar":
            return web.json_response({"message": "not a tar"}, status=400)
        if self.bodies:  # the second load fails in-band, as a corrupt archive does
            return await self._lines(request, [b'{"stream":"Loading layer"}\n', b'{"error":"unexpected EOF"}\n'])
        return await self._lines(request, [b'{"stream":"Loaded image: app:1\\n"}\n', b"\n", b"not json\n",
                                           b'{"stream":"Loaded image ID: sha256:2\\n"}\n'])

    async def build(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("t") == "bad:1":
            return web.json_response({"message": "dockerfile parse error line 1"}, status=500)
        return await self._lines(request, [b'{"stream":"Step 1/1 : FROM x\\n"}\n', b'[1]\n',
                                           b'{"aux":{"ID":"sha256:3"}}\n', b'{"error":"boom"}\n'])

    async def events(self, request: web.Request) -> web.StreamResponse:
        self.event_requests.append(dict(request.query))
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        n = len(self.event_requests)
        await resp.write(json.dumps({"Action": "die", "id": f"c{n}", "timeNano": 1_700_000_000_000_000_000 + n}).encode()
                         + b"\n")
        if n == 1 and self.drop_first_stream:
            return resp  # the stream ends: the client must reconnect
        await asyncio.sleep(30)
        return resp


async def serve(engine: FakeEngine, sock: Path) -> web.AppRunner:
    runner = web.AppRunner(engine.app(), handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.UnixSite(runner, str(sock)).start()
    return runner


def run_with(engine: FakeEngine, tmp_path: Path, body: Callable[[DockerClient], Awaitable[None]]) -> None:
    async def main() -> None:
        sock = tmp_path / "engine.sock"
        runner = await serve(engine, sock)
        try:
            async with DockerClient(f"unix://{sock}") as client:
                await asyncio.wait_for(body(client), 10)
        finally:
            await runner.cleanup()
    asyncio.run(main())


def test_info_and_version_prefix(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def body(client: DockerClient) -> None:
        assert await client.ping()
        info = await client.info()
        assert (info.ncpu, info.mem_total, info.architecture, info.server_version) == (4, 1 << 30, "aarch64", "26.1")
    run_with(engine, tmp_path, body)
    assert engine.paths == ["/v1.41/info"]


@pytest.mark.parametrize(("server", "minimum", "used"), [("1.40", "1.12", "1.40"), ("1.47", "1.44", "1.44"),
                                                          ("1.45", "1.24", "1.41")])
def test_version_negotiation(tmp_path: Path, server: str, minimum: str, used: str) -> None:
    engine = FakeEngine(server, minimum)

    async def body(client: DockerClient) -> None:
        await client.info()
        assert client.api_version == used
    run_with(engine, tmp_path, body)


def test_errors_map_to_the_tree(tmp_path: Path) -> None:
    async def body(client: DockerClient) -> None:
        with pytest.raises(EngineNotFoundError, match="No such container: abc"):
            await client.inspect_container("abc")
        with pytest.raises(EngineConflictError) as info:
            await client.create_container("web.1.x", {"Image": "i"})
        assert info.value.status == 409
        assert await client.inspect_image("missing/img:1") is None
        assert await client.inspect_image("there/img:1") == {"Id": "sha256:1"}
        await client.ensure_image("there/img:1", "node7")  # present: no pull
        with pytest.raises(ImageNotFoundError, match=r"image missing/img:1 not found on node node7 .*pull access denied"):
            await client.ensure_image("missing/img:1", "node7")
    run_with(FakeEngine(), tmp_path, body)


def test_pull_sends_registry_auth_and_names_the_registry_that_refuses(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def body(client: DockerClient) -> None:
        with pytest.raises(ImageNotFoundError) as info:
            await client.ensure_image("reg.example:5000/app:1", "node7", "QVVUSA==")
        assert "registry reg.example:5000 refused the credentials sent with --with-registry-auth" in str(info.value)
        assert "QVVUSA==" not in str(info.value)
        with pytest.raises(ImageNotFoundError, match="registry docker.io may want credentials: `docker login docker.io`"):
            await client.ensure_image("me/private:1", "node7")
        assert engine.pull_auth == ["QVVUSA==", ""]
    run_with(engine, tmp_path, body)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


def test_load_and_build_read_the_progress_stream(tmp_path: Path) -> None:
    """load and build (and pull, above) share one reader of the engine's
    JSON progress stream: blank and non-object lines are skipped, in-band
    errors are load's to raise and build's to hand on, HTTP errors raise."""
    engine = FakeEngine()

    async def body(client: DockerClient) -> None:
        assert await client.load_image(_chunks(b"ta", b"r")) == ["app:1", "sha256:2"]
        assert engine.bodies == [b"tar"]
        with pytest.raises(EngineAPIError, match="unexpected EOF"):
            await client.load_image(_chunks(b"x"))
        msgs = [m async for m in client.build_image([("t", "ok:1")], _chunks(b"ctx"))]
        assert msgs == [{"stream": "Step 1/1 : FROM x\n"}, {"aux": {"ID": "sha256:3"}}, {"error": "boom"}]
        with pytest.raises(EngineAPIError, match="dockerfile parse error"):
            [m async for m in client.build_image([("t", "bad:1")], _chunks(b"ctx"))]
    run_with(engine, tmp_path, body)


def test_unreachable_engine(tmp_path: Path) -> None:
    async def main() -> None:
        async with DockerClient(f"unix://{tmp_path}/nothing.sock") as client:
            assert not await client.ping()
            with pytest.raises(EngineUnavailableError, match="cannot reach the engine"):
                await client.info()
    asyncio.run(main())


def test_events_reconnect_with_since(tmp_path: Path) -> None:
    engine = FakeEngine()
    connects: list[bool] = []

    async def on_connect(reconnected: bool) -> None:
        connects.append(reconnected)

    async def body(client: DockerClient) -> None:
        seen = []
        stream: AsyncIterator[dict[str, Any]] = client.events({"type": ["container"]}, on_connect=on_connect,
                                                              retry_delay=0.01)
        async for event in stream:
            seen.append(event["id"])
            if len(seen) == 2:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        assert seen == ["c1", "c2"]
    run_with(engine, tmp_path, body)
    assert connects == [False, True]
    first, second = engine.event_requests
    assert json.loads(first["filters"]) == {"type": ["container"]}
    assert "since" not in first
    assert second["since"] == "1700000000.000000001"
