"""An async Docker Engine API client over the engine's unix socket.

Why our own small client: the agent needs about fifteen endpoints, must be
async (one process drives many containers and an event stream at once), and
must work against Podman's Docker-compatible API as well. So we stick to
documented Engine API endpoints under a version prefix (``/v1.41/...``) and
aiohttp's unix connector, and map errors to :mod:`pyswarm.worker`'s tree.

The socket comes from ``DOCKER_HOST`` (only ``unix://`` is supported: the
agent runs on the node itself) or ``/var/run/docker.sock``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from pyswarm.worker import (
    EngineAPIError,
    EngineConflictError,
    EngineNotFoundError,
    EngineUnavailableError,
    ImageNotFoundError,
)
from pyswarm.worker.engine_api import (  # the parts the image channel's blocking client shares
    API_VERSION,
    api_error as _api_error,
    loaded_refs,
    pick_version,
    socket_path,
)

log = logging.getLogger(__name__)

JSON = dict[str, Any]


def split_image(ref: str) -> tuple[str, str]:
    """``repo[:tag|@digest]`` → (repo, tag-or-digest) for ``/images/create``.

    The tag is the part after the last ``:`` that follows the last ``/``, so a
    registry port (``host:5000/app``) is not mistaken for a tag.
    """
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return repo, digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, "latest"


@dataclass(frozen=True)
class EngineInfo:
    """What the agent tells the manager about this node in ``hello``."""

    hostname: str
    ncpu: int
    mem_total: int
    os_type: str
    architecture: str
    server_version: str
    labels: Mapping[str, str] = field(default_factory=dict)  # the engine's --label k=v (engine.labels.*)

    @classmethod
    def from_api(cls, info: Mapping[str, Any]) -> EngineInfo:
        labels = dict(str(item).partition("=")[::2] for item in info.get("Labels") or ())
        return cls(
            hostname=str(info.get("Name") or ""),
            ncpu=int(info.get("NCPU") or 0),
            mem_total=int(info.get("MemTotal") or 0),
            os_type=str(info.get("OSType") or "linux"),
            architecture=str(info.get("Architecture") or ""),
            server_version=str(info.get("ServerVersion") or ""),
            labels=labels,
        )


def _filters(filters: Mapping[str, list[str]]) -> str:
    return json.dumps(dict(filters), separators=(",", ":"))


class DockerClient:
    """One aiohttp session over the unix socket; use as an async context
    manager or call :meth:`close`. Methods raise :class:`EngineAPIError`
    subclasses for engine errors and :class:`EngineUnavailableError` when the
    socket cannot be reached."""

    def __init__(
        self,
        docker_host: str | None = None,
        *,
        request_timeout: float = 60.0,
        pull_timeout: float = 300.0,
    ) -> None:
        self.socket = socket_path(docker_host)
        self.request_timeout = request_timeout
        self.pull_timeout = pull_timeout
        self.api_version = API_VERSION
        self._session: aiohttp.ClientSession | None = None
        self._negotiated = False

    async def __aenter__(self) -> DockerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=self.socket, limit=64)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
            )
        return self._session

    def _url(self, path: str, versioned: bool = True) -> str:
        return f"http://docker/v{self.api_version}{path}" if versioned else f"http://docker{path}"

    async def _negotiate(self) -> None:
        """Pick the API version: ours unless the engine's minimum is higher
        (Docker >= 25 raised it) or its maximum lower (old engines)."""
        if self._negotiated:
            return
        data = await self._call("GET", "/version", versioned=False)
        assert isinstance(data, dict)
        self.api_version = pick_version(data)
        self._negotiated = True

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        versioned: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """One request; returns decoded JSON (or None for empty bodies)."""
        if versioned:
            await self._negotiate()
        session = self._get_session()
        t = aiohttp.ClientTimeout(total=timeout if timeout is not None else self.request_timeout)
        try:
            async with session.request(
                method, self._url(path, versioned), params=params, json=body, timeout=t
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _api_error(resp.status, raw, f"{method} {path}")
                if not raw:
                    return None
                if "json" in resp.headers.get("Content-Type", ""):
                    return json.loads(raw)
                return raw.decode(errors="replace")
        except aiohttp.ClientConnectionError as exc:
            raise EngineUnavailableError(f"cannot reach the engine at {self.socket}: {exc}") from exc
        except asyncio.TimeoutError as exc:
            raise EngineUnavailableError(f"{method} {path}: engine did not answer in time") from exc

    # -- system ------------------------------------------------------------

    async def ping(self) -> bool:
        """True when the engine answers ``/_ping``."""
        try:
            answer = await self._call("GET", "/_ping", versioned=False, timeout=5)
            return bool(answer == "OK")
        except EngineUnavailableError:
            return False

    async def accepts_connections(self) -> bool:
        """True when the engine's socket takes a new connection. A stopping
        dockerd closes its listener first and serves the connections it has
        (the client's pooled ones, the event stream) while it stops its
        containers, so only a fresh connection tells it is going away."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket), 5)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    async def version(self) -> JSON:
        data = await self._call("GET", "/version")
        assert isinstance(data, dict)
        return data

    async def info(self) -> EngineInfo:
        data = await self._call("GET", "/info")
        assert isinstance(data, dict)
        return EngineInfo.from_api(data)

    # -- containers --------------------------------------------------------

    async def list_containers(self, labels: Mapping[str, str | None], *, all: bool = True) -> list[JSON]:
        """Containers carrying every label in ``labels`` (value None = the
        label is present with any value)."""
        label_filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        params = {"all": "1" if all else "0", "filters": _filters({"label": label_filters})}
        data = await self._call("GET", "/containers/json", params=params)
        assert isinstance(data, list)
        return data

    async def create_container(self, name: str, config: Mapping[str, Any]) -> str:
        data = await self._call("POST", "/containers/create", params={"name": name}, body=dict(config))
        assert isinstance(data, dict)
        return str(data["Id"])

    async def start_container(self, container_id: str) -> None:
        await self._call("POST", f"/containers/{quote(container_id)}/start")

    async def stop_container(self, container_id: str, timeout: int = 10) -> None:
        await self._call(
            "POST", f"/containers/{quote(container_id)}/stop", params={"t": str(timeout)},
            timeout=self.request_timeout + timeout,
        )

    async def kill_container(self, container_id: str, signal: str = "KILL") -> None:
        await self._call("POST", f"/containers/{quote(container_id)}/kill", params={"signal": signal})

    async def remove_container(self, container_id: str, *, force: bool = True) -> bool:
        """Remove (killing it if ``force``); False when it was already gone."""
        try:
            await self._call(
                "DELETE", f"/containers/{quote(container_id)}",
                params={"force": "1" if force else "0", "v": "1"},
            )
        except EngineNotFoundError:
            return False
        except EngineConflictError as exc:
            if "already in progress" in exc.message:
                return True
            raise
        return True

    async def inspect_container(self, container_id: str) -> JSON:
        data = await self._call("GET", f"/containers/{quote(container_id)}/json")
        assert isinstance(data, dict)
        return data

    # -- images ------------------------------------------------------------

    async def inspect_image(self, ref: str) -> JSON | None:
        try:
            data = await self._call("GET", f"/images/{quote(ref, safe='/:@')}/json")
        except EngineNotFoundError:
            return None
        assert isinstance(data, dict)
        return data

    async def _progress(self, path: str, what: str, *, params: Any = None, body: Any = None,
                        headers: Mapping[str, str] | None = None,
                        timeout: aiohttp.ClientTimeout | None = None) -> AsyncIterator[JSON]:
        """``POST path`` and the engine's JSON progress messages as they come.

        The one reader of the streams that pull, load and build answer with:
        a status >= 400 raises the engine's error; each line is a JSON
        object (``stream``, ``status``, ``aux``, ``error``…), lines that are
        not are skipped. An ``error`` message is yielded like any other:
        what it means (and what to say around it) is the caller's."""
        await self._negotiate()
        session = self._get_session()
        t = timeout or aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with session.post(self._url(path), params=params, data=body, headers=headers,
                                    timeout=t) as resp:
                if resp.status >= 400:
                    raise _api_error(resp.status, await resp.read(), what)
                async for line in resp.content:
                    if not line.strip():
                        continue
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(msg, dict):
                        yield msg
        except aiohttp.ClientConnectionError as exc:
            raise EngineUnavailableError(f"cannot reach the engine at {self.socket}: {exc}") from exc

    async def pull_image(self, ref: str, auth: str = "") -> None:
        """Pull ``ref``; raises :class:`EngineAPIError` (or a timeout as
        :class:`EngineUnavailableError`) when the registry refuses or is
        unreachable. The progress stream reports errors in-band, so it is read
        to the end."""
        repo, tag = split_image(ref)
        try:
            async for msg in self._progress(
                    "/images/create", f"pull {ref}", params={"fromImage": repo, "tag": tag},
                    headers={"X-Registry-Auth": auth} if auth else None,  # never logged
                    timeout=aiohttp.ClientTimeout(total=self.pull_timeout)):
                if msg.get("error"):
                    raise EngineAPIError(500, str(msg.get("error")))
        except asyncio.TimeoutError as exc:
            raise EngineUnavailableError(f"pull {ref}: no answer in {self.pull_timeout:.0f}s") from exc

    async def ensure_image(self, ref: str, node: str, auth: str = "") -> None:
        """Make ``ref`` present, pulling only if missing (with ``auth``, an
        ``X-Registry-Auth`` value, when the service has one). Any failure
        becomes :class:`ImageNotFoundError` with the message users see in
        ``service ps``: in a lab with no registry a missing image must be a
        clear task failure, not a hang; a registry that wants credentials
        is named as such."""
        if await self.inspect_image(ref) is not None:
            return
        try:
            await self.pull_image(ref, auth)
        except (EngineAPIError, EngineUnavailableError) as exc:
            from pyswarm.registry import is_auth_refusal, registry_of

            hint = ""
            if isinstance(exc, EngineAPIError) and is_auth_refusal(str(exc)):
                hint = (f"; registry {registry_of(ref)} refused the credentials sent with --with-registry-auth"
                        if auth else f"; registry {registry_of(ref)} may want credentials: `docker login "
                        f"{registry_of(ref)}` where you deploy from, then deploy with --with-registry-auth")
            raise ImageNotFoundError(f"image {ref} not found on node {node} (pull failed: {exc}){hint}") from exc
        if await self.inspect_image(ref) is None:
            raise ImageNotFoundError(f"image {ref} not found on node {node}")

    async def list_images(self) -> list[JSON]:
        """Every tagged or top-level image (``GET /images/json``)."""
        data = await self._call("GET", "/images/json")
        assert isinstance(data, list)
        return data

    async def remove_image(self, ref: str) -> None:
        """Untag ``ref`` and delete what no tag holds any more (never by force:
        an image a container uses stays)."""
        await self._call("DELETE", f"/images/{quote(ref, safe='/:@')}")

    async def save_image(self, ref: str) -> AsyncIterator[bytes]:
        """``docker save ref``: the archive's bytes as they come."""
        await self._negotiate()
        session = self._get_session()
        t = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.pull_timeout)
        try:
            async with session.get(self._url(f"/images/{quote(ref, safe='/:@')}/get"), timeout=t) as resp:
                if resp.status >= 400:
                    raise _api_error(resp.status, await resp.read(), f"save {ref}")
                async for chunk in resp.content.iter_chunked(1 << 20):
                    yield chunk
        except aiohttp.ClientConnectionError as exc:
            raise EngineUnavailableError(f"cannot reach the engine at {self.socket}: {exc}") from exc

    async def load_image(self, body: AsyncIterator[bytes]) -> list[str]:
        """``docker load`` from a stream of tar bytes; returns what the engine
        says it loaded. Its errors come in-band and raise :class:`EngineAPIError`."""
        loaded: list[str] = []
        async for msg in self._progress("/images/load", "load", params={"quiet": "1"}, body=body,
                                        headers={"Content-Type": "application/x-tar"}):
            if msg.get("error"):
                raise EngineAPIError(500, str(msg["error"]))
            loaded += loaded_refs(str(msg.get("stream") or ""))
        return loaded

    def build_image(self, params: list[tuple[str, str]], body: AsyncIterator[bytes]) -> AsyncIterator[JSON]:
        """``POST /build`` with a tar of the context: the engine's progress
        messages (``stream``, ``aux``, ``error``) as they come."""
        return self._progress("/build", "build", params=params, body=body,
                              headers={"Content-Type": "application/x-tar"})

    # -- networks ----------------------------------------------------------

    async def inspect_network(self, name: str) -> JSON | None:
        """The network named exactly ``name`` (the engine also matches id
        prefixes; we do not want that), or None."""
        try:
            data = await self._call("GET", f"/networks/{quote(name)}")
        except EngineNotFoundError:
            return None
        assert isinstance(data, dict)
        if data.get("Name") != name:
            return None
        return data

    async def create_network(self, config: Mapping[str, Any]) -> str:
        data = await self._call("POST", "/networks/create", body=dict(config))
        assert isinstance(data, dict)
        return str(data.get("Id", ""))

    async def remove_network(self, name: str) -> None:
        await self._call("DELETE", f"/networks/{quote(name)}")

    # -- events ------------------------------------------------------------

    async def events(
        self,
        filters: Mapping[str, list[str]],
        *,
        on_connect: Callable[[bool], Awaitable[None]] | None = None,
        on_error: Callable[[str], None] | None = None,
        retry_delay: float = 0.5,
        max_retry_delay: float = 5.0,
    ) -> AsyncIterator[JSON]:
        """Engine events matching ``filters``, forever.

        When the stream drops (engine restart, socket error) it reconnects
        with ``since`` set to the last event seen, so the engine replays what
        was missed; a duplicate is possible and harmless to level-triggered
        consumers. ``on_connect(reconnected)`` runs once the engine accepted
        each subscription, before any of its events are yielded: the caller
        uses the first to know it cannot miss events any more, and the later
        ones to resynchronise in case the engine's replay buffer overflowed.
        ``on_error(reason)`` runs each time a subscription fails (the agent
        then checks whether the engine is gone).
        """
        since: str | None = None
        connected_before = False
        delay = retry_delay
        while True:
            try:
                await self._negotiate()
                params = {"filters": _filters(filters)}
                if since is not None:
                    params["since"] = since
                session = self._get_session()
                t = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
                async with session.get(self._url("/events"), params=params, timeout=t) as resp:
                    if resp.status >= 400:
                        raise _api_error(resp.status, await resp.read(), "GET /events")
                    if since is None:
                        # replay from here if the stream drops before any event
                        since = f"{time.time():.9f}"
                    if on_connect is not None:
                        await on_connect(connected_before)
                    connected_before = True
                    delay = retry_delay
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        try:
                            event = json.loads(line)
                        except ValueError:
                            log.warning("undecodable engine event: %r", line[:200])
                            continue
                        if not isinstance(event, dict):
                            continue
                        since = _event_since(event) or since
                        yield event
                log.warning("engine event stream ended; reconnecting")
            except (aiohttp.ClientError, EngineAPIError, EngineUnavailableError, asyncio.TimeoutError) as exc:
                log.warning("engine event stream failed (%s); reconnecting in %.1fs", exc, delay)
                if on_error is not None:
                    on_error(str(exc) or type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_retry_delay)


def _event_since(event: Mapping[str, Any]) -> str | None:
    nano = event.get("timeNano")
    if isinstance(nano, int) and nano > 0:
        return f"{nano // 1_000_000_000}.{nano % 1_000_000_000:09d}"
    sec = event.get("time")
    if isinstance(sec, int) and sec > 0:
        return str(sec)
    return None


