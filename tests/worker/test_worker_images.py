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
