"""The agent's side of images (worker/images.py): older builds removed."""

from __future__ import annotations

import asyncio
from typing import Any, cast


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
