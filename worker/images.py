"""Images on a node, the agent's side: waiting for a shipped image, and older builds removed.

The image channel's process, which sshd starts for a shipment, is
:mod:`pyswarm.worker.channel` (the wire is in :mod:`pyswarm.images`).

:class:`ImageFetcher` is automatic shipping. A task whose image is missing
asks the leader (``image_wanted``) *before* trying a pull: an image built by
``stack deploy`` is in no registry, and a pull that cannot reach one takes
20 s to fail in the lab. The leader answers ``ship`` (it sends the image,
then ``image_done``) or ``pull``. Every task of the node waiting for one
image shares one request. :func:`collect_garbage` removes a service's older
builds past a kept count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyswarm.images import (
    LABEL_BUILD_HASH,
    PLAN_SHIP,
    ImageDone,
    ImagePlan,
    ImageWanted,
    MessageError,
)
from pyswarm.worker import ImageNotFoundError, RuntimeError_
from pyswarm.worker.docker import DockerClient

log = logging.getLogger(__name__)

KEEP_IMAGES = 2  # built images of one service kept on a node: the running one and one to roll back to
PLAN_TIMEOUT = 5.0  # an older leader (or none, in a test) never answers image_wanted: pull after this
SHIP_TIMEOUT = 1800.0  # a shipment that has not ended by then has failed


# -- automatic shipping, the agent's side ---------------------------------------


Report = Callable[[str], None]


@dataclass
class _Wanted:
    """One image this node asked the leader for; every waiting task shares it."""

    plan: asyncio.Future[ImagePlan | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    done: asyncio.Future[ImageDone] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ImageFetcher:
    def __init__(self, docker: DockerClient, send: Callable[[dict[str, Any]], None], hostname: str,
                 plan_timeout: float = PLAN_TIMEOUT, ship_timeout: float = SHIP_TIMEOUT) -> None:
        self.docker = docker
        self._send = send
        self.hostname = hostname
        self.plan_timeout = plan_timeout
        self.ship_timeout = ship_timeout
        self._wanted: dict[str, _Wanted] = {}

    async def ensure(self, ref: str, task_id: str, report: Report, auth: str = "") -> None:
        """Make ``ref`` present: here already, shipped by the leader, or
        pulled. ``report`` gets the task's one ``preparing`` message.
        Raises :class:`ImageNotFoundError` with what the user sees."""
        if await self.docker.inspect_image(ref) is not None:
            report("preparing")
            return
        wanted = self._wanted.get(ref)
        if wanted is None:
            wanted = self._wanted[ref] = _Wanted()
            self._send(ImageWanted(ref, task_id).to_message())
        try:
            plan = await asyncio.wait_for(asyncio.shield(wanted.plan), self.plan_timeout)
        except asyncio.TimeoutError:
            plan = None  # a leader that does not ship: pull as before
            if not wanted.plan.done():
                wanted.plan.set_result(None)
        if plan is not None and plan.plan == PLAN_SHIP:
            report(f"shipping image {ref} from {plan.source}")
            try:
                done = await asyncio.wait_for(asyncio.shield(wanted.done), self.ship_timeout)
            except asyncio.TimeoutError:
                self._forget(ref, wanted)
                raise ImageNotFoundError(f"shipping image {ref} to {self.hostname}: no word in "
                                         f"{self.ship_timeout:.0f}s") from None
            self._forget(ref, wanted)
            if done.error:
                raise ImageNotFoundError(f"shipping image {ref} to {self.hostname} failed: {done.error}")
            if await self.docker.inspect_image(ref) is None:
                raise ImageNotFoundError(f"image {ref} was shipped to {self.hostname} but is not there")
            return
        self._forget(ref, wanted)
        report(f"pulling image {ref}")
        try:
            await self.docker.ensure_image(ref, self.hostname, auth)
        except ImageNotFoundError as exc:
            reason = plan.reason if plan is not None else ""
            raise ImageNotFoundError(f"{exc}; {reason}" if reason else str(exc)) from exc

    def _forget(self, ref: str, wanted: _Wanted) -> None:
        if self._wanted.get(ref) is wanted:
            del self._wanted[ref]

    def on_message(self, msg: dict[str, Any]) -> str | None:
        """An ``image_plan`` or ``image_done`` from the leader; returns an
        error to report when the message is malformed."""
        try:
            if msg.get("op") == "image_plan":
                plan = ImagePlan.from_message(msg)
                wanted = self._wanted.get(plan.image)
                if wanted is not None and not wanted.plan.done():
                    wanted.plan.set_result(plan)
            else:
                done = ImageDone.from_message(msg)
                wanted = self._wanted.get(done.image)
                if wanted is not None and not wanted.done.done():
                    wanted.done.set_result(done)
        except MessageError as exc:
            return f"bad {msg.get('op')}: {exc}"
        return None


# -- garbage: older built images of a service -----------------------------------


async def collect_garbage(docker: DockerClient, service: str, keep_refs: set[str], keep: int = KEEP_IMAGES) -> list[str]:
    """Remove this node's images of ``service``'s older builds past the
    ``keep`` newest. Only images ``stack deploy`` built (label
    ``pyswarm.build.hash``, repository ``STACK_SERVICE``) are candidates,
    never one a container uses or ``keep_refs`` names (a desired task's).
    Returns the references removed."""
    try:
        images = [i for i in await docker.list_images()
                  if LABEL_BUILD_HASH in (i.get("Labels") or {})
                  and any(str(t).rsplit(":", 1)[0] == service for t in i.get("RepoTags") or ())]
        if len(images) <= keep:
            return []
        used = {str(c.get("ImageID", "")) for c in await docker.list_containers({}, all=True)}
    except RuntimeError_ as exc:
        log.warning("image garbage of %s: %s", service, exc)
        return []
    images.sort(key=lambda i: int(i.get("Created") or 0), reverse=True)
    removed: list[str] = []
    for item in images[keep:]:
        tags = [str(t) for t in item.get("RepoTags") or () if str(t).rsplit(":", 1)[0] == service]
        if str(item.get("Id")) in used or any(t in keep_refs for t in tags):
            continue
        for tag in tags:
            try:
                await docker.remove_image(tag)
                removed.append(tag)
            except RuntimeError_ as exc:  # in use meanwhile, or gone: next time
                log.info("image garbage: %s stays: %s", tag, exc)
    if removed:
        log.info("removed older images of %s: %s", service, ", ".join(removed))
    return removed
