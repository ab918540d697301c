"""The node's image channel (worker/images.py): one request, checked."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from pyswarm.worker.images import serve_channel

H = "sha256:" + "b" * 64


class Engine:
    removed: list[str]

    def __init__(self) -> None:
        self.removed = []

    async def list_images(self) -> list[dict[str, Any]]:
        return [{"Id": H, "RepoTags": ["app:1", "<none>:<none>"], "RepoDigests": [], "Size": 42}]

    async def remove_image(self, ref: str) -> None:
        self.removed.append(ref)


def _serve(request: bytes, engine: Engine | None = None) -> tuple[int, list[dict[str, Any]]]:
    async def main() -> tuple[int, list[dict[str, Any]]]:
        reader = asyncio.StreamReader()
        reader.feed_data(request)
        reader.feed_eof()
        out: list[bytes] = []
        rc = await serve_channel(cast(Any, engine or Engine()), reader, out.append)
        return rc, [json.loads(line) for line in b"".join(out).splitlines()]
    return asyncio.run(main())


def test_malformed_request_gets_one_error_line() -> None:
    rc, out = _serve(b'{"op": "have", "image": "x;reboot", "image_id": "sha256:1"}\n')
    assert rc == 1 and out[0]["op"] == "error" and "image: not an image reference" in out[0]["error"]


def test_inventory_lists_tags_without_placeholders() -> None:
    rc, out = _serve(b'{"op": "inventory"}\n')
    assert rc == 0 and out == [{"op": "inventory", "images": [{"id": H, "tags": ["app:1"], "digests": [], "size": 42}]}]


def test_remove_untags_what_it_is_told() -> None:
    engine = Engine()
    rc, out = _serve(b'{"op": "remove", "images": ["app:0"]}\n', engine)
    assert rc == 0 and engine.removed == ["app:0"] and out[0]["removed"] == ["app:0"]


class Builds:
    """An engine holding four builds of demo_web (newest last), one in use."""

    def __init__(self) -> None:
        self.images = [{"Id": f"sha256:{i:064x}", "RepoTags": [f"demo_web:v{i}"], "Created": 100 + i,
                        "Labels": {"pyswarm.build.hash": f"v{i}"}} for i in range(4)]
        self.images.append({"Id": "sha256:" + "f" * 64, "RepoTags": ["demo_web:hand"], "Created": 1, "Labels": {}})
        self.removed: list[str] = []

    async def list_images(self) -> list[dict[str, Any]]:
        return self.images

    async def list_containers(self, labels: dict[str, Any], *, all: bool = True) -> list[dict[str, Any]]:
        return [{"ImageID": f"sha256:{0:064x}"}]

    async def remove_image(self, ref: str) -> None:
        self.removed.append(ref)


def test_garbage_keeps_the_newest_builds_and_what_is_used() -> None:
    from pyswarm.worker.images import collect_garbage

    engine = Builds()
    removed = asyncio.run(collect_garbage(cast(Any, engine), "demo_web", {"demo_web:v1"}, keep=2))
    # v3, v2 kept (newest two); v1 desired; v0 runs in a container; a hand-made tag is not ours
    assert removed == [] and engine.removed == []
    removed = asyncio.run(collect_garbage(cast(Any, engine), "demo_web", set(), keep=2))
    assert removed == ["demo_web:v1"]
    assert asyncio.run(collect_garbage(cast(Any, engine), "other_svc", set(), keep=2)) == []


def test_stdin_reads_gather_what_is_there_but_never_wait_for_more() -> None:
    import os

    from pyswarm.worker.images import CHUNK, _read_ready

    r, w = os.pipe()
    try:
        os.write(w, b'{"op": "have"}\n')
        assert _read_ready(r) == (b'{"op": "have"}\n', False)  # alone: answered without waiting for a block
        for _ in range(3):
            os.write(w, b"x" * 20_000)
        assert _read_ready(r) == (b"x" * 60_000, False)  # three writes, one block
        os.write(w, b"end")
        os.close(w)
        w = -1
        assert _read_ready(r) == (b"end", True)  # and the end seen with it
        assert _read_ready(r) == (b"", True)
        assert CHUNK >= 1 << 20
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_the_tar_after_have_goes_to_the_docker_cli_untouched(tmp_path: Any, monkeypatch: Any) -> None:
    """The channel reads its request line alone, answers ``have``, then hands
    its stdin to ``docker load`` (here a script standing in for the CLI on
    PATH): every byte that follows reaches it, none is read by the channel."""
    import os
    import stat

    from pyswarm.images import ChannelRequest
    from pyswarm.worker.images import _Stdin, docker_cli_load

    got = tmp_path / "got.tar"
    cli = tmp_path / "docker"
    cli.write_text(f"#!/bin/sh\n[ \"$1\" = load ] || exit 2\ncat > {got}\necho 'Loaded image: app:1'\n")
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    tar = os.urandom(300_000)

    class Node(Engine):
        socket = "/run/nowhere.sock"

        async def inspect_image(self, ref: str) -> None:
            return None

    async def main() -> tuple[int, list[dict[str, Any]]]:
        r, w = os.pipe()
        os.write(w, ChannelRequest("have", image="app:1", image_id=H).to_line())
        writer = asyncio.get_running_loop().run_in_executor(None, lambda: (os.write(w, tar), os.close(w)))
        try:
            node = cast(Any, Node())
            reader = _Stdin(r)
            reader.request_line()
            out: list[bytes] = []
            rc = await serve_channel(node, reader, out.append, docker_cli_load(node, r))
            await writer
            return rc, [json.loads(line) for line in b"".join(out).splitlines()]
        finally:
            os.close(r)

    rc, replies = asyncio.run(main())
    assert rc == 0 and [m["op"] for m in replies] == ["have", "loaded"], replies
    assert replies[1]["ok"] is True and replies[1]["loaded"] == ["app:1"], replies
    assert got.read_bytes() == tar
