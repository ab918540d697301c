"""An in-memory stand-in for :class:`pyswarm.worker.docker.DockerClient`.

It implements only what the agent calls, with the engine's observable
behaviour that matters to the agent: label filters, name conflicts, states,
and ``die``/``destroy`` events carrying the container's labels.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from pyswarm.worker import EngineConflictError, EngineNotFoundError, EngineUnavailableError, ImageNotFoundError
from pyswarm.worker.docker import EngineInfo

_ids = itertools.count(1)


class FakeDocker:
    def __init__(self, images: tuple[str, ...] = ("busybox:latest",)) -> None:
        self.images = set(images)
        self.containers: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self.unreachable = ""  # set: every call fails as with the engine's socket gone
        self.closing = False  # a stopping dockerd: no new connection, the open ones still served
        self._on_error: Callable[[str], None] | None = None

    # -- what tests do to the "engine" ---------------------------------------

    def add(self, name: str, labels: dict[str, str], state: str = "running", exit_code: int = 0) -> str:
        cid = f"c{next(_ids):063d}"
        self.containers[cid] = {
            "Id": cid, "Name": name, "Labels": dict(labels), "State": state,
            "ExitCode": exit_code, "Created": int(time.time()), "IP": f"10.240.1.{len(self.containers) + 2}",
            "Config": {},
        }
        return cid

    def kill(self, cid: str, code: int = 137) -> None:
        c = self.containers[cid]
        c["State"], c["ExitCode"] = "exited", code
        self._emit("die", c)

    def by_task(self, task_id: str) -> list[dict[str, Any]]:
        return [c for c in self.containers.values() if c["Labels"].get("pyswarm.task.id") == task_id]

    def _emit(self, action: str, c: dict[str, Any]) -> None:
        event = {"Type": "container", "Action": action, "status": action,
                 "Actor": {"ID": c["Id"], "Attributes": {**c["Labels"], "exitCode": str(c["ExitCode"])}},
                 "timeNano": time.time_ns()}
        for q in self._subscribers:
            q.put_nowait(event)

    # -- the client API ------------------------------------------------------

    async def close(self) -> None:
        pass

    def stop_engine(self, reason: str = "cannot reach the engine at /run/docker.sock: refused") -> None:
        """The engine goes away: its event stream fails and nothing answers."""
        self.unreachable = reason
        if self._on_error is not None:
            self._on_error(reason)

    def start_engine(self) -> None:
        self.unreachable = ""

    def _gate(self) -> None:
        if self.unreachable:
            raise EngineUnavailableError(self.unreachable)

    async def accepts_connections(self) -> bool:
        return not (self.unreachable or self.closing)

    async def info(self) -> EngineInfo:
        self._gate()
        return EngineInfo("fake", 2, 4 << 30, "linux", "x86_64", "20.10.24")

    async def list_containers(self, labels: Mapping[str, str | None], *, all: bool = True) -> list[dict[str, Any]]:
        self._gate()
        self.calls.append(("list", ",".join(f"{k}={v}" for k, v in labels.items())))
        out = []
        for c in self.containers.values():
            if builtins.all(k in c["Labels"] and (v is None or c["Labels"][k] == v) for k, v in labels.items()):
                out.append({"Id": c["Id"], "Names": ["/" + c["Name"]], "State": c["State"],
                            "Labels": c["Labels"], "Created": c["Created"]})
        return out

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        c = self.containers.get(ref) or next((c for c in self.containers.values() if c["Name"] == ref), None)
        if c is None:
            raise EngineNotFoundError(404, f"No such container: {ref}")
        return {"Id": c["Id"], "Name": "/" + c["Name"], "Config": {"Labels": c["Labels"], **c["Config"]},
                "State": {"Status": c["State"], "ExitCode": c["ExitCode"], "Error": "", "OOMKilled": False},
                "NetworkSettings": {"Networks": {"pyswarm": {"IPAddress": c["IP"] if c["State"] == "running" else ""}}}}

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        return {"Id": "sha256:" + format(abs(hash(ref)), "064x")[:64]} if ref in self.images else None

    async def list_images(self) -> list[dict[str, Any]]:
        return []

    async def ensure_image(self, ref: str, node: str, auth: str = "") -> None:
        await asyncio.sleep(0)
        if ref not in self.images:
            raise ImageNotFoundError(f"image {ref} not found on node {node}")

    async def create_container(self, name: str, config: Mapping[str, Any]) -> str:
        self.calls.append(("create", name))
        if any(c["Name"] == name for c in self.containers.values()):
            raise EngineConflictError(409, f"Conflict. The container name \"/{name}\" is already in use")
        cid = self.add(name, dict(config["Labels"]), state="created")
        self.containers[cid]["Config"] = dict(config)
        return cid

    async def start_container(self, cid: str) -> None:
        self.calls.append(("start", cid))
        await asyncio.sleep(0)
        self.containers[cid]["State"] = "running"

    async def stop_container(self, cid: str, timeout: int = 10) -> None:
        self.calls.append(("stop", cid))
        c = self.containers[cid]
        if c["State"] == "running":
            c["State"], c["ExitCode"] = "exited", 143
            self._emit("die", c)

    async def remove_container(self, cid: str, *, force: bool = True) -> bool:
        self.calls.append(("remove", cid))
        c = self.containers.pop(cid, None)
        if c is None:
            return False
        self._emit("destroy", c)
        return True

    async def events(
        self,
        filters: Mapping[str, list[str]],
        *,
        on_connect: Callable[[bool], Awaitable[None]] | None = None,
        on_error: Callable[[str], None] | None = None,
        **_: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        self._on_error = on_error
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            if on_connect is not None:
                await on_connect(False)
            while True:
                yield await q.get()
        finally:
            self._subscribers.remove(q)
