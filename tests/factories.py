"""Object factories for tests: a valid pyswarm.models object in one call.

Each factory fills every required field with a plausible value and takes
keyword overrides for the fields a test cares about, so a test states only
what matters to it (``make_node(availability=NodeAvailability.DRAIN)``).
Ids come from a counter, not from ``new_id``, so that failures print
readable, stable names (``node-003``) and sorting by id follows creation
order, which the scheduler's tie-breaking tests rely on.

Import with ``from factories import ...``: tests/ is not a package (a
``tests/dns`` package would shadow dnspython), so test modules put this
directory on ``sys.path`` (or a conftest.py in tests/ does).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import os
import tarfile
from collections.abc import AsyncIterator
from typing import Any

from pyswarm.models import (
    DESIRED_RUNNING,
    ContainerSpec,
    Node,
    NodeAvailability,
    NodeRole,
    NodeStatus,
    Resources,
    Service,
    ServiceSpec,
    Task,
    TaskState,
)

_seq = itertools.count(1)


def _next() -> int:
    return next(_seq)


def make_container_spec(**overrides: Any) -> ContainerSpec:
    fields: dict[str, Any] = {"image": "pyswarm/busybox:latest"}
    fields.update(overrides)
    return ContainerSpec(**fields)


def make_node(**overrides: Any) -> Node:
    """A ready, active worker unless told otherwise.

    ``resources`` may be given as a ``Resources`` or as a dict
    (``{"memory_bytes": 2**30}``).
    """
    n = _next()
    fields: dict[str, Any] = {
        "id": f"node-{n:03d}",
        "hostname": f"host{n}",
        "addr": f"10.0.{n // 250}.{n % 250 + 1}",
        "role": NodeRole.WORKER,
        "availability": NodeAvailability.ACTIVE,
        "status": NodeStatus.READY,
        "platform": {"os": "linux", "arch": "x86_64"},
    }
    fields.update(overrides)
    if isinstance(fields.get("resources"), dict):
        fields["resources"] = Resources(**fields["resources"])
    return Node(**fields)


def make_manager(**overrides: Any) -> Node:
    return make_node(**{"role": NodeRole.MANAGER, **overrides})


def make_service(name: str = "", *, id: str = "", stack: str = "demo", **spec_overrides: Any) -> Service:
    """A replicated service in stack ``stack`` named ``STACK_NAME``.

    Keyword arguments other than ``id`` and ``stack`` go to ``ServiceSpec``
    (``replicas=5``, ``constraints=[...]``, ``reservations=Resources(...)``,
    or a dict for ``reservations``); ``container`` defaults to
    :func:`make_container_spec`.
    """
    n = _next()
    short = name or f"svc{n}"
    spec_fields: dict[str, Any] = {
        "name": f"{stack}_{short}" if stack else short,
        "stack": stack,
        "container": make_container_spec(),
    }
    spec_fields.update(spec_overrides)
    if isinstance(spec_fields.get("reservations"), dict):
        spec_fields["reservations"] = Resources(**spec_fields["reservations"])
    return Service(id=id or f"service-{n:03d}", spec=ServiceSpec(**spec_fields))


def make_task(service: Service | None = None, **overrides: Any) -> Task:
    """A task of ``service`` (a fresh one if omitted), waiting to be placed:
    state ``pending``, desired ``running``, no node. Override ``node_id``,
    ``state`` (a ``TaskState``), ``ip`` … for tasks already placed."""
    if service is None:
        service = make_service()
    n = _next()
    fields: dict[str, Any] = {
        "id": f"task-{n:05d}",
        "service_id": service.id,
        "service_name": service.spec.name,
        "slot": 1,
        "spec": service.spec.container,
        "stack": service.spec.stack,
        "spec_version": service.version,
        "desired_state": DESIRED_RUNNING,
        "state": TaskState.PENDING,
    }
    fields.update(overrides)
    return Task(**fields)


def make_tasks(service: Service, count: int | None = None, **overrides: Any) -> list[Task]:
    """One waiting task per replica slot (1..count, default the spec's replicas)."""
    total = service.spec.replicas if count is None else count
    return [make_task(service, slot=slot, **overrides) for slot in range(1, total + 1)]


def make_snapshot(*objects: Any, index: int = 1) -> Any:
    """A store snapshot holding these model objects (cluster, nodes, services, tasks)."""
    from pyswarm.manager.store import Snapshot
    from pyswarm.models import Cluster

    raw: dict[str, dict[str, dict[str, Any]]] = {"cluster": {}, "node": {}, "service": {}, "task": {}}
    from pyswarm.models import Config, Network, Secret

    kinds = {Cluster: "cluster", Node: "node", Service: "service", Task: "task", Secret: "secret", Config: "config",
             Network: "network"}
    for obj in objects:
        raw.setdefault(kinds[type(obj)], {})[obj.id] = obj.to_dict()
    return Snapshot(index, raw)


# -- images: a fake engine holding one saved image -----------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class ImageEngine:
    """A fake engine for image shipping's unit tests (manager/images.py,
    pyswarm/build.py's send_image): what both ends call of the engine: one image made of ``layers``, as
    ``docker save`` lays it out (layers first, manifest last)."""

    def __init__(self, layers: list[bytes], tag: str = "app:1", has: list[list[bytes]] | None = None) -> None:
        self.diffs = [_digest(layer) for layer in layers]
        self.config = json.dumps({"rootfs": {"type": "layers", "diff_ids": self.diffs}}).encode()
        self.id = _digest(self.config)
        self.tag = tag
        members = {f"{i:064x}/layer.tar": layer for i, layer in enumerate(layers)}
        members[self.id[7:] + ".json"] = self.config
        members["manifest.json"] = json.dumps([{"Config": self.id[7:] + ".json", "RepoTags": [tag],
                                                "Layers": [f"{i:064x}/layer.tar" for i in range(len(layers))]}]).encode()
        self.archive = _tar(members)
        # what a receiving engine already holds: images by their layers
        self.held = {f"sha256:{k:064x}": [_digest(x) for x in ls] for k, ls in enumerate(has or [])}
        self.loaded: list[bytes] = []

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        if ref in (self.tag, self.id):
            return {"Id": self.id, "RootFS": {"Layers": self.diffs}, "RepoDigests": []}
        if ref in self.held:
            return {"Id": ref, "RootFS": {"Layers": self.held[ref]}}
        return None

    async def save_image(self, ref: str) -> AsyncIterator[bytes]:
        for i in range(0, len(self.archive), 1000):
            yield self.archive[i:i + 1000]

    async def list_images(self) -> list[dict[str, Any]]:
        return [{"Id": k} for k in self.held]

    async def load_image(self, body: AsyncIterator[bytes]) -> list[str]:
        self.loaded.append(b"".join([c async for c in body]))
        return [self.tag]

    def channel(self) -> ChannelView:
        """This engine as the node's image channel sees one (blocking)."""
        return ChannelView(self)


class ChannelView:
    """An :class:`ImageEngine` through the blocking calls of the node's image
    channel (pyswarm.worker.channel.ChannelEngine), for a channel served in
    a thread of its own: each call runs the engine's coroutine there."""

    def __init__(self, engine: ImageEngine) -> None:
        self.engine = engine

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return asyncio.run(self.engine.inspect_image(ref))

    def list_images(self) -> list[dict[str, Any]]:
        return asyncio.run(self.engine.list_images())

    def remove_image(self, ref: str) -> None:
        raise AssertionError("not a shipment's call")

    def save(self, ref: str, write: Any) -> None:
        for i in range(0, len(self.engine.archive), 1000):
            write(self.engine.archive[i:i + 1000])

    def load(self, fd: int, size: int | None, first: bytes = b"") -> list[str]:
        data = bytearray(first)
        while size is None or len(data) < size:
            chunk = os.read(fd, 1 << 20 if size is None else size - len(data))
            if not chunk:
                break
            data += chunk

        async def body() -> AsyncIterator[bytes]:
            yield bytes(data)
        return asyncio.run(self.engine.load_image(body()))


def image_members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
