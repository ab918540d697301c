"""image.build and image.load for a remote CLI (manager/builds.py): the
request is checked before the engine sees it, the uploaded bytes reach the
engine whole and acknowledged chunk by chunk, and what the engine says comes
back as items; a cut-short upload never passes for a whole one."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pyswarm.build import UPLOAD_CHUNK
from pyswarm.errors import UsageError
from pyswarm.manager import builds
from pyswarm.rpc import Final


class Engine:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.images: dict[str, dict[str, Any]] = {}

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return self.images.get(ref)

    async def build_image(self, params: list[tuple[str, str]], body: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
        data = b"".join([c async for c in body])
        self.bodies.append(data)
        yield {"stream": "Step 1/1 : FROM x\n", "extra": "dropped"}
        if data.startswith(b"fail"):
            yield {"error": "The command returned a non-zero code: 1"}
            return
        self.images[dict(params)["t"]] = {"Id": "sha256:abc"}
        yield {"aux": {"ID": "sha256:abc"}}

    async def load_image(self, body: AsyncIterator[bytes]) -> list[str]:
        self.bodies.append(b"".join([c async for c in body]))
        self.images["app:1"] = {"Id": "sha256:def"}
        return ["app:1"]


class Images:
    def __init__(self) -> None:
        self.docker = Engine()


class Store:
    is_leader = True


def _inputs(data: bytes, cut: int | None = None) -> asyncio.Queue[dict[str, Any] | None]:
    q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    chunks = [data[i:i + UPLOAD_CHUNK] for i in range(0, len(data), UPLOAD_CHUNK)]
    for c in chunks[:cut]:
        q.put_nowait({"data": base64.b64encode(c).decode()})
    q.put_nowait({"eof": True} if cut is None else None)
    return q


def _run(gen: AsyncIterator[Any]) -> list[Any]:
    async def main() -> list[Any]:
        return [item async for item in gen]
    return asyncio.run(main())


def _request(size: int, **kw: Any) -> builds.BuildRequest:
    return builds.BuildRequest(**{"service": "s_web", "image": "s_web:1", "query": [["t", "s_web:1"], ["rm", "1"]],
                                  "size": size, **kw})


def test_the_context_reaches_the_engine_acknowledged_and_its_output_comes_back() -> None:
    images = Images()
    data = b"c" * (UPLOAD_CHUNK * 2 + 10)
    items = _run(builds.build(Store(), images, _request(len(data)), _inputs(data)))  # type: ignore[arg-type]
    assert images.docker.bodies == [data]
    assert [i["ack"] for i in items if isinstance(i, dict) and "ack" in i] == [1, 2, 3]
    assert {"build": {"stream": "Step 1/1 : FROM x\n"}} in items  # only the engine's known fields
    assert items[-1] == Final({"id": "sha256:abc", "builder": items[-1].value["builder"], "sent_to": ""})


def test_a_failed_build_answers_with_the_engine_error_and_no_image() -> None:
    images = Images()
    items = _run(builds.build(Store(), images, _request(4), _inputs(b"fail")))  # type: ignore[arg-type]
    assert {"build": {"error": "The command returned a non-zero code: 1"}} in items
    assert items[-1].value["id"] == "" and "s_web:1" not in images.docker.images


def test_a_cut_short_upload_is_not_passed_off_as_whole() -> None:
    images = Images()
    data = b"x" * (UPLOAD_CHUNK * 3)
    _run(builds.build(Store(), images, _request(len(data)), _inputs(data, cut=1)))  # type: ignore[arg-type]
    assert images.docker.bodies == [data[:UPLOAD_CHUNK]]  # the engine saw a truncated tar (and fails on it)


@pytest.mark.parametrize("query, message", [
    ([["t", "s_web:1"], ["remote", "http://x"]], "'remote' is not a build option"),
    ([["t", "other:1"]], "the tag must be the image s_web:1"),
    ([["t", "s_web:1", "x"]], r"query\[0\]: expected \[key, value\]"),
])
def test_only_build_options_and_the_asked_tag(query: list[list[str]], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        builds.check_request(_request(1, query=query))


def test_an_image_sent_by_a_cli_that_built_it_loads_here() -> None:
    images = Images()
    data = b"t" * 1000
    items = _run(builds.load(Store(), images, builds.LoadRequest("app:1", len(data)), _inputs(data)))  # type: ignore[arg-type]
    assert images.docker.bodies == [data]
    assert items[-1] == Final({"loaded": ["app:1"], "sent_to": "", "bytes": len(data)})


V1 = [b"base" * 30_000, b"middle" * 5_000, b"top-one." * 25_000]
V2 = V1[:2] + [b"top-two." * 25_000]  # one layer changed (the last)


def test_a_cli_sends_image_load_only_the_layers_the_managers_engine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote CLI that built v2 (one layer changed since v1, which the
    manager's engine holds): pyswarm/build.py's send_image asks the manager
    which chains its engine has and uploads a tar of the changed layer only;
    the manager (builds.load, the real upload path) loads it. Wired
    in-process: the CLI's calls go to the manager's handlers on one loop."""
    from factories import ImageEngine, image_members

    from pyswarm import build as cli_build
    from pyswarm.images import engine_chains

    cli_engine = ImageEngine(V2, tag="app:2")
    manager = Images()
    held = ImageEngine(V1, tag="app:1", has=[V1])  # the manager's engine: v1 and its layers
    bodies: list[bytes] = []

    async def load(body: AsyncIterator[bytes]) -> list[str]:
        bodies.append(b"".join([c async for c in body]))
        held.tag, held.id = "app:2", cli_engine.id  # loaded: the same image ID as the CLI's
        return ["app:2"]

    held.load_image = load  # type: ignore[method-assign]
    manager.docker = held  # type: ignore[assignment]

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        def on_loop(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

        class Conn:
            def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> Any:
                if method == "image.built":
                    return on_loop(builds.built_hash(manager, str((params or {})["image"])))  # type: ignore[arg-type]
                assert method == "image.chains", method

                async def chains() -> Any:
                    return {"chains": sorted(await engine_chains(held))}  # type: ignore[arg-type]
                return on_loop(chains())

        def upload(conn: Any, method: str, params: dict[str, Any], file: Any, on_item: Any) -> Any:
            assert method == "image.load"
            file.seek(0)
            data = file.read()
            assert len(data) == params["size"]
            items = on_loop(_collect(builds.load(Store(), manager, builds.LoadRequest(params["image"], len(data)),  # type: ignore[arg-type]
                                                 _inputs(data))))
            return items[-1].value

        monkeypatch.setattr(cli_build, "upload", upload)
        said: list[str] = []
        return await cli_build.send_image(cli_engine, Conn, "app:2", said.append)

    sent = asyncio.run(main())
    assert (sent["layers_sent"], sent["layers_total"]) == (1, 3), sent
    [body] = bodies
    assert sent["bytes"] == len(body)
    got = image_members(body)
    assert set(got) == {next(n for n in got if n.endswith(".json") and n != "manifest.json"),
                        f"{2:064x}/layer.tar", "manifest.json"}, sorted(got)
    assert got[f"{2:064x}/layer.tar"] == V2[2]
    # the changed layer's bytes, the config, the manifest and tar headers: nothing of the other two
    assert len(V2[2]) < sent["bytes"] <= len(V2[2]) + 6 * 1024, sent
    assert sent["bytes"] <= len(cli_engine.archive) - len(V2[0]) - len(V2[1])  # the whole save, less two layers


async def _collect(gen: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in gen]
