"""Spooling an image and shipping only what a node lacks (manager/images.py),
against the node's real channel code (worker/channel.py) over real pipes."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from factories import ImageEngine as Engine, image_members as _members

from pyswarm.images import HaveReply, chain_ids
from pyswarm.manager.images import ShipError, Spool, fetch_from, ship_to
from pyswarm.worker.channel import serve


class Channel:
    """An SSH session's process, wired to the node's real channel code
    (:func:`pyswarm.worker.channel.serve`) in a thread, over real pipes."""

    def __init__(self, node: Engine) -> None:
        loop = asyncio.get_running_loop()
        self.stdout = asyncio.StreamReader()
        self.stderr = asyncio.StreamReader()
        self.stderr.feed_eof()
        self.stdin = self
        self._r, self._w = os.pipe()

        def run() -> None:
            try:
                serve(node.channel(), self._r, lambda data: loop.call_soon_threadsafe(self.stdout.feed_data, data))
            finally:
                os.close(self._r)
                loop.call_soon_threadsafe(self.stdout.feed_eof)
        threading.Thread(target=run, daemon=True).start()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._w, view):]

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        if self._w >= 0:
            os.close(self._w)
            self._w = -1

    def close(self) -> None:
        self.write_eof()


class Conn:
    def __init__(self, node: Engine) -> None:
        self.node = node
        self.sessions = 0

    async def create_process(self, command: str, encoding: None = None) -> Channel:
        assert command == "pyswarm worker --images"
        self.sessions += 1
        return Channel(self.node)


LAYERS = [b"base" * 3000, b"middle" * 500, b"top" * 7]


def test_spool_indexes_the_save_and_builds_archives_of_the_needed_layers(tmp_path: Path) -> None:
    async def main() -> None:
        src = Engine(LAYERS)
        spool = await Spool.make(cast(Any, src), "app:1", tmp_path)
        assert spool.image_id == src.id and spool.chains == chain_ids(src.diffs)
        assert spool.needed(HaveReply(False, frozenset(spool.chains[:2]))) == [2]
        # a layer held in another place (another chain) is not the same layer
        assert spool.needed(HaveReply(False, frozenset({src.diffs[1]}))) == [0, 1, 2]
        archive = b"".join([c async for c in spool.archive([2])])
        assert len(archive) == spool.archive_size([2])
        got = _members(archive)
        assert set(got) == {spool.saved.config, spool.saved.layers[2], "manifest.json"}
        assert got[spool.saved.layers[2]] == LAYERS[2] and got[spool.saved.config] == src.config
        assert json.loads(got["manifest.json"])[0]["RepoTags"] == ["app:1"]
    asyncio.run(main())


def test_ship_sends_only_missing_layers_then_nothing_when_present(tmp_path: Path) -> None:
    async def main() -> None:
        src = Engine(LAYERS)
        node = Engine(LAYERS, has=[LAYERS[:2]])  # holds an image of the first two layers
        node.tag = "other:1"  # ... but not app:1
        spool = await Spool.make(cast(Any, src), "app:1", tmp_path)
        shipment = await ship_to(Conn(node), spool, "worker1")
        assert (shipment.result, shipment.layers_sent, shipment.layers_total) == ("sent", 1, 3), shipment
        assert set(_members(node.loaded[0])) == {spool.saved.config, spool.saved.layers[2], "manifest.json"}
        assert shipment.bytes == len(node.loaded[0]) < len(LAYERS[0])
        # the node now answers present: nothing crosses the wire
        node.tag = "app:1"
        node.id = src.id
        again = await ship_to(Conn(node), spool, "worker1")
        assert (again.result, again.bytes) == ("present", 0)
    asyncio.run(main())


def test_failed_load_of_a_partial_archive_is_retried_whole(tmp_path: Path) -> None:
    async def main() -> None:
        src = Engine(LAYERS)
        node = Engine(LAYERS, has=[LAYERS[:1]])
        node.tag = "other:1"
        calls: list[int] = []

        async def load(body: AsyncIterator[bytes]) -> list[str]:
            data = b"".join([c async for c in body])
            calls.append(len(_members(data)))
            if len(calls) == 1:
                from pyswarm.worker import EngineAPIError

                raise EngineAPIError(500, "layer does not exist")
            return ["app:1"]

        node.load_image = load  # type: ignore[method-assign]
        spool = await Spool.make(cast(Any, src), "app:1", tmp_path)
        shipment = await ship_to(Conn(node), spool, "worker1")
        assert shipment.result == "sent" and shipment.layers_sent == 3, shipment
        assert calls == [4, 5]  # config + manifest + 2 layers, then + all 3
    asyncio.run(main())


def test_a_load_that_fails_whole_is_reported_with_the_engines_words(tmp_path: Path) -> None:
    async def main() -> None:
        src = Engine(LAYERS)
        node = Engine(LAYERS)
        node.tag = "other:1"

        async def load(body: AsyncIterator[bytes]) -> list[str]:
            async for _ in body:
                pass
            from pyswarm.worker import EngineAPIError

            raise EngineAPIError(500, "no space left on device")

        node.load_image = load  # type: ignore[method-assign]
        spool = await Spool.make(cast(Any, src), "app:1", tmp_path)
        shipment = await ship_to(Conn(node), spool, "worker1")
        assert (shipment.result, shipment.error) == ("failed", "no space left on device")
    asyncio.run(main())


def test_spool_of_a_missing_image_says_so(tmp_path: Path) -> None:
    from pyswarm.errors import NotFoundError

    with pytest.raises(NotFoundError, match="nope:1 is not on this manager's engine"):
        asyncio.run(Spool.make(cast(Any, Engine(LAYERS)), "nope:1", tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_registry_auth_goes_only_with_the_tasks_that_pull_with_it() -> None:
    import base64

    from factories import make_node, make_service, make_task

    from pyswarm.manager.dispatcher import assignments_by_node
    from pyswarm.manager.store import Snapshot
    from pyswarm.models import Secret, TaskState

    a, b = make_node(), make_node()
    private = make_service()
    private.spec.container.options["registry_auth"] = "demo_registry-auth-abc"
    public = make_service()
    raw: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in ("cluster", "node", "service", "task", "secret", "config", "network")}
    for obj, kind in ((a, "node"), (b, "node"), (private, "service"), (public, "service")):
        raw[kind][obj.id] = obj.to_dict()
    for svc, node in ((private, a), (public, b)):
        t = make_task(svc, node_id=node.id, state=TaskState.ASSIGNED)
        raw["task"][t.id] = t.to_dict()
    secret = Secret(id="s1", name="demo_registry-auth-abc", data=base64.b64encode(b"HEADER").decode())
    raw["secret"][secret.id] = secret.to_dict()
    out = assignments_by_node(Snapshot(1, raw), "pyswarm")
    assert [x.get("registry_auth") for x in out[a.id]] == ["HEADER"]
    assert [x.get("registry_auth") for x in out[b.id]] == [None]


class Receiver:
    """This manager's engine, lacking the image until an archive is loaded."""

    def __init__(self, loads_as: str) -> None:
        self.loads_as = loads_as
        self.loaded: list[bytes] = []

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return {"Id": self.loads_as} if self.loaded else None

    async def load_image(self, body: AsyncIterator[bytes]) -> list[str]:
        self.loaded.append(b"".join([c async for c in body]))
        return ["app:1"]


def test_an_image_is_fetched_from_a_node_that_holds_it_and_not_from_one_that_does_not() -> None:
    """A leader whose engine lacks a built image gets it from a node's
    channel (``export``): that node's whole ``docker save`` archive, loaded
    and checked to be the image the node named."""
    async def main() -> None:
        node = Engine(LAYERS)
        here = Receiver(node.id)
        assert await fetch_from(Conn(node), "app:1", cast(Any, here)) == len(node.archive)
        assert here.loaded == [node.archive]
        assert await fetch_from(Conn(Engine(LAYERS, tag="other:1")), "app:1", cast(Any, Receiver(node.id))) == 0
        with pytest.raises(ShipError, match="did not load as"):
            await fetch_from(Conn(node), "app:1", cast(Any, Receiver("sha256:" + "0" * 64)))
    asyncio.run(main())
