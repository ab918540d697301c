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
    assert items[-1] == Final({"loaded": ["app:1"], "sent_to": ""})
