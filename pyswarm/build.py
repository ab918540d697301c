"""Building the images of ``build:`` services before ``stack deploy``.

The builder is the engine of the machine the CLI runs on (a manager: the
one the CLI talks to, so ``pyswarm image push`` and the leader's automatic
shipping find the image there), driven through its Engine API (``POST
/build`` with a tar of the context, the classic builder that Docker 20.10
runs without BuildKit) over aiohttp, like the agent's engine calls. Why:

- **Content tags.** A service without ``image:`` is named ``STACK_SERVICE``
  and tagged with a hash of what the build reads: every file of the context
  that ``.dockerignore`` keeps (path, mode, bytes), the Dockerfile and the
  build options. An unchanged context gives the same tag, so a deploy
  rebuilds and ships nothing and the service is not updated; one changed
  file gives a new tag, a rolling update, and (with the engine's layer
  cache) one new layer to ship.
- **Nothing changes on failure.** Every image is built before the stack is
  sent to the manager; a failed build raises :class:`BuildError` with the
  failing step's output, and the deploy stops there.
- **Where.** :class:`Builder` is what ``stack deploy`` needs.
  :class:`EngineBuilder` is the engine of the machine the CLI runs on,
  used when it answers; :class:`ManagerBuilder` streams the context over
  the CLI's API connection to the manager it reached (``--host ssh://``,
  a context) and that manager's engine builds (manager/builds.py), for an
  operator's machine without an engine, or when told (``--builder
  manager``, ``PYSWARM_BUILDER=manager``). A remote CLI that built with its
  own engine sends the image to the manager (``image.load``): automatic
  shipping reads a manager's engine, never the operator's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import stat
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from pyswarm import rpc
from pyswarm.compose.build import BuildSpec
from pyswarm.errors import UsageError
from pyswarm.images import LABEL_BUILD_HASH

# the /build query keys build_params sends: all a manager building for a remote CLI accepts
BUILD_QUERY_KEYS = frozenset({"t", "dockerfile", "rm", "forcerm", "labels", "buildargs", "target", "cachefrom",
                              "networkmode", "shmsize", "extrahosts", "platform", "nocache", "pull"})
UPLOAD_CHUNK = 256 << 10  # bytes of a context (or an image) per input line to a manager
UPLOAD_WINDOW = 8  # chunks sent and not yet acknowledged by the manager
BUILDERS = ("auto", "local", "manager")  # --builder / PYSWARM_BUILDER
INLINE_DOCKERFILE = ".pyswarm-inline.Dockerfile"
OUTSIDE_DOCKERFILE = ".pyswarm.Dockerfile"
CHUNK = 1 << 20
MODES = ("auto", "always", "never", "plan")  # default, --build, --no-build, --dry-run

Log = Callable[[str], None]


class BuildError(UsageError):
    """A build failed; the message names the service and the failing step."""


# -- the context -----------------------------------------------------------------


def _ignore_patterns(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """``.dockerignore`` as (exception?, regex) in file order (the last match wins)."""
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        if pattern in ("", "."):
            continue
        out.append((negate, re.compile(_glob_regex(pattern))))
    return out


def _glob_regex(pattern: str) -> str:
    """Go's filepath.Match syntax plus ``**`` (moby/patternmatcher)."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out, i = out + "(?:/|)", i + 1  # "**/" also matches no directory
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(ch)
            else:
                body = pattern[i + 1:end]
                out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return "^" + out + "$"


def _ignored(rel: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A path is out when the last pattern matching it (or a parent) excludes it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for negate, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            verdict = not negate
    return verdict


def _walk(context: Path, patterns: list[tuple[bool, re.Pattern[str]]]) -> Iterator[tuple[str, Path]]:
    for root, dirs, files in os.walk(context):
        dirs.sort()
        base = Path(root)
        for name in sorted(files) + [d for d in dirs if (base / d).is_symlink()]:
            path = base / name
            rel = path.relative_to(context).as_posix()
            if not _ignored(rel, patterns):
                yield rel, path
        for d in list(dirs):
            rel = (base / d).relative_to(context).as_posix()
            if (base / d).is_symlink():
                dirs.remove(d)  # sent as the link it is (above)
            elif not _ignored(rel, patterns):
                yield rel + "/", base / d
            elif not any(negate for negate, _ in patterns):
                dirs.remove(d)  # nothing below can come back: skip the walk


@dataclass
class Context:
    """A build context as a tar on disk, with the hash of what it holds."""

    file: IO[bytes]
    size: int
    digest: str
    dockerfile: str  # its name inside the tar

    async def chunks(self) -> AsyncIterator[bytes]:
        self.file.seek(0)
        while chunk := await asyncio.to_thread(self.file.read, CHUNK):
            yield chunk


def make_context(service: str, spec: BuildSpec) -> Context:
    """Tar the context (``.dockerignore`` applied) into a temporary file and
    hash it: paths, modes and contents, not times (a touched file is the same build)."""
    context = Path(spec.context)
    if not context.is_dir():
        raise BuildError(f"service {service}: build context {context} is not a directory")
    digest = hashlib.sha256()
    out = tempfile.TemporaryFile()
    patterns = _ignore_patterns(context)
    dockerfile = spec.dockerfile or "Dockerfile"
    try:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, path in _walk(context, patterns):
                info = tar.gettarinfo(str(path), arcname=rel.rstrip("/"))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                digest.update(f"{rel}\0{stat.S_IMODE(info.mode):o}\0{info.type.decode()}\0{info.linkname}\0".encode())
                if info.isfile():
                    with open(path, "rb") as fh:
                        h = hashlib.sha256()
                        tar.addfile(info, _Hashing(fh, h))
                    digest.update(h.digest())
                else:
                    tar.addfile(info)
            if spec.dockerfile_inline:
                dockerfile = _add_bytes(tar, INLINE_DOCKERFILE, spec.dockerfile_inline.encode(), digest)
            else:
                path = (context / dockerfile).resolve()
                if not path.is_file():
                    raise BuildError(f"service {service}: no Dockerfile at {path}")
                if not path.is_relative_to(context.resolve()):
                    dockerfile = _add_bytes(tar, OUTSIDE_DOCKERFILE, path.read_bytes(), digest)
                elif _ignored(Path(dockerfile).as_posix(), patterns):
                    _add_bytes(tar, Path(dockerfile).as_posix(), path.read_bytes(), digest)
    except OSError as exc:
        out.close()
        raise BuildError(f"service {service}: cannot read the build context: {exc}") from None
    except BaseException:
        out.close()
        raise
    digest.update(json.dumps(_options(spec, dockerfile), sort_keys=True).encode())
    return Context(out, out.tell(), digest.hexdigest(), dockerfile)


class _Hashing(io.RawIOBase):
    def __init__(self, fh: IO[bytes], h: Any) -> None:
        self.fh, self.h = fh, h

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.h.update(data)
        return data


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, digest: Any) -> str:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
    digest.update(f"{name}\0".encode() + hashlib.sha256(data).digest())
    return name


def _options(spec: BuildSpec, dockerfile: str) -> dict[str, Any]:
    return {"dockerfile": dockerfile, "args": spec.args, "labels": spec.labels, "cache_from": list(spec.cache_from),
            "extra_hosts": spec.extra_hosts, "network": spec.network, "target": spec.target,
            "shm_size": spec.shm_size, "platforms": list(spec.platforms)}


def build_params(spec: BuildSpec, ref: str, dockerfile: str, tag_hash: str) -> list[tuple[str, str]]:
    """The ``/build`` query for ``spec`` (Engine API 1.41)."""
    labels = {**spec.labels, LABEL_BUILD_HASH: tag_hash}
    params = [("t", ref), ("dockerfile", dockerfile), ("rm", "1"), ("forcerm", "1"),
              ("labels", json.dumps(labels))]
    if spec.args:
        params.append(("buildargs", json.dumps(spec.args)))
    if spec.target:
        params.append(("target", spec.target))
    if spec.cache_from:
        params.append(("cachefrom", json.dumps(list(spec.cache_from))))
    if spec.network:
        params.append(("networkmode", spec.network))
    if spec.shm_size:
        params.append(("shmsize", str(spec.shm_size)))
    params.extend(("extrahosts", f"{h}:{ip}") for h, ip in spec.extra_hosts.items())
    if spec.platforms:
        params.append(("platform", spec.platforms[0]))
    if spec.no_cache:
        params.append(("nocache", "1"))
    if spec.pull:
        params.append(("pull", "1"))
    return params


def check_buildable(service: str, spec: BuildSpec) -> None:
    """What the classic builder cannot do, said before anything is built."""
    if spec.secrets:
        raise BuildError(f"service {service}: build secrets need BuildKit, and pyswarm builds with the "
                         "engine's classic builder; remove `build.secrets`")
    if len(spec.platforms) > 1:
        raise BuildError(f"service {service}: the engine builds one platform at a time; "
                         f"`build.platforms` lists {len(spec.platforms)}")


# -- building ----------------------------------------------------------------------


class Builder(Protocol):
    """What ``stack deploy`` needs of a builder (the seam for building on a
    manager's engine for a remote CLI)."""

    async def image_hash(self, ref: str) -> str | None:
        """The build hash label of ``ref`` on the builder's engine, "" when it
        has none, None when the image is not there."""

    async def build(self, service: str, spec: BuildSpec, ref: str, context: Context, tag_hash: str,
                    log: Log | None) -> str:
        """Build ``ref``; returns the image ID or raises :class:`BuildError`."""


class EngineBuilder:
    """The engine of the machine the CLI runs on."""

    def __init__(self, docker: Any = None) -> None:
        from pyswarm.worker.docker import DockerClient

        self.docker = docker or DockerClient()

    async def close(self) -> None:
        await self.docker.close()

    async def image_hash(self, ref: str) -> str | None:
        data = await self.docker.inspect_image(ref)
        if data is None:
            return None
        return str(((data.get("Config") or {}).get("Labels") or {}).get(LABEL_BUILD_HASH, ""))

    async def build(self, service: str, spec: BuildSpec, ref: str, context: Context, tag_hash: str,
                    log: Log | None) -> str:
        from pyswarm.worker import RuntimeError_

        progress = BuildProgress(service, log)
        try:
            async for msg in self.docker.build_image(build_params(spec, ref, context.dockerfile, tag_hash),
                                                     context.chunks()):
                progress.feed(msg)
        except RuntimeError_ as exc:
            raise BuildError(f"service {service}: cannot build with the engine at {self.docker.socket} "
                             f"(pyswarm builds with the engine of the machine the CLI runs on): {exc}") from None
        image_id = progress.image_id
        if not image_id:
            data = await self.docker.inspect_image(ref)
            image_id = str((data or {}).get("Id", ""))
        if not image_id:
            raise BuildError(f"service {service}: the engine finished the build but has no image {ref}")
        return image_id


class BuildProgress:
    """What the engine says while it builds, read the same way wherever the
    engine is (this machine's, or a manager's relayed over the API): each
    ``stream`` line to ``log`` (when asked), the image ID from ``aux``, and
    an ``error`` raised as :class:`BuildError` with the failing step's output
    (the lines since its ``Step N/M``) when the output was not shown."""

    def __init__(self, service: str, log: Log | None) -> None:
        self.service = service
        self.log = log
        self.step: list[str] = []
        self.image_id = ""

    def feed(self, msg: dict[str, Any]) -> None:
        text = str(msg.get("stream") or "")
        if text:
            if text.startswith("Step "):
                self.step = []
            self.step.append(text.rstrip("\n"))
            if self.log is not None:
                self.log(text.rstrip("\n"))
        aux = msg.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            self.image_id = str(aux["ID"])
        if msg.get("error"):
            raise self.failed(str(msg["error"]))

    def failed(self, error: str) -> BuildError:
        shown = "\n".join(line for line in self.step if line.strip())
        return BuildError(f"service {self.service}: build failed: {error}" +
                          (f"\n{shown}" if shown and self.log is None else ""))


Connect = Callable[[], rpc.Connection]


def upload(conn: rpc.Connection, method: str, params: dict[str, Any], file: IO[bytes],
           on_item: Callable[[dict[str, Any]], None]) -> Any:
    """A streaming call that sends ``file`` as it goes: input lines of
    :data:`UPLOAD_CHUNK` bytes, at most :data:`UPLOAD_WINDOW` ahead of the
    manager's ``ack`` items; every other item goes to ``on_item``. Returns
    the call's answer (its error raises)."""
    import base64

    file.seek(0)
    call = rpc.StreamCall(conn, method, params)
    items = iter(call)
    sent = acked = 0
    eof = False
    while True:
        while not eof and sent - acked < UPLOAD_WINDOW:
            chunk = file.read(UPLOAD_CHUNK)
            if chunk:
                call.send({"data": base64.b64encode(chunk).decode()})
                sent += 1
            else:
                call.send({"eof": True})
                eof = True
        item = next(items, None)
        if item is None:
            return call.result
        if isinstance(item, dict) and isinstance(item.get("ack"), int):
            acked = item["ack"]
        elif isinstance(item, dict):
            on_item(item)


class ManagerBuilder:
    """The engine of the manager the CLI reached: the context goes over the
    CLI's API connection (manager/builds.py), the engine's output comes back."""

    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self.where = ""

    async def image_hash(self, ref: str) -> str | None:
        got = await asyncio.to_thread(self.connect().call, "image.built", {"image": ref})
        return None if got is None else str(got.get("hash", ""))

    async def build(self, service: str, spec: BuildSpec, ref: str, context: Context, tag_hash: str,
                    log: Log | None) -> str:
        return await asyncio.to_thread(self._build, service, spec, ref, context, tag_hash, log)

    def _build(self, service: str, spec: BuildSpec, ref: str, context: Context, tag_hash: str,
               log: Log | None) -> str:
        progress = BuildProgress(service, log)
        failure: list[BuildError] = []

        def on_item(item: dict[str, Any]) -> None:
            msg = item.get("build")
            if isinstance(msg, dict) and not failure:
                try:
                    progress.feed(msg)
                except BuildError as exc:
                    failure.append(exc)  # read on to the answer: the connection serves the deploy next

        query = [[k, v] for k, v in build_params(spec, ref, context.dockerfile, tag_hash)]
        answer = upload(self.connect(), "image.build",
                        {"service": service, "image": ref, "query": query, "size": context.size},
                        context.file, on_item)
        if failure:
            raise failure[0]
        self.where = str((answer or {}).get("builder", ""))
        image_id = str((answer or {}).get("id", "")) or progress.image_id
        if not image_id:
            raise BuildError(f"service {service}: the manager's engine finished the build but has no image {ref}")
        return image_id


async def send_image(docker: Any, connect: Connect, ref: str, say: Log | None) -> dict[str, Any]:
    """The CLI built ``ref`` with its own engine: the manager it reached
    gets it unless it holds it already (``docker save`` here, cut to the
    layers whose chain the manager's engine lacks, ``image.load`` there),
    and on a follower the manager sends it on to the leader's node, where
    automatic shipping reads it (``image.to_leader``: also when the
    manager's engine is this CLI's own). Returns ``{"bytes", "layers_sent",
    "layers_total", "sent_to"}``; a load of a cut archive that fails (the
    manager lost a layer since it answered) is retried whole, once."""
    from pyswarm.images import SavedArchive

    data = await docker.inspect_image(ref)
    if data is None:
        raise BuildError(f"image {ref} is not on this machine's engine")
    diff_ids = [str(d) for d in ((data.get("RootFS") or {}).get("Layers") or ())]
    there = await asyncio.to_thread(connect().call, "image.built", {"image": ref})
    if there is not None and there.get("id") == data.get("Id"):
        forwarded = await asyncio.to_thread(connect().call, "image.to_leader", {"image": ref}, 600.0)
        return {"bytes": 0, "layers_sent": 0, "layers_total": len(diff_ids),
                "sent_to": str((forwarded or {}).get("sent_to", ""))}
    held = await asyncio.to_thread(connect().call, "image.chains")
    chains = [str(c) for c in (held or {}).get("chains", ())]
    with tempfile.TemporaryDirectory(prefix="pyswarm-image-") as scratch:
        whole = Path(scratch) / "image.tar"
        with open(whole, "wb") as fh:
            async for chunk in docker.save_image(ref):
                await asyncio.to_thread(fh.write, chunk)
        try:
            saved = await asyncio.to_thread(SavedArchive.index, whole, diff_ids, f"image {ref}")
        except ValueError as exc:
            raise BuildError(str(exc)) from None
        needed = saved.needed(chains)
        for attempt in (needed, list(range(len(saved.chains)))):
            if say is not None:
                say(f"Sending {ref} to the manager: {len(attempt)} of {len(saved.chains)} layers, "
                    f"{saved.size(attempt) / 1e6:.1f} MB")
            with tempfile.TemporaryFile(dir=scratch) as cut:
                await asyncio.to_thread(_write_cut, saved, attempt, cut)
                size = cut.tell()
                try:
                    answer = await asyncio.to_thread(upload, connect(), "image.load", {"image": ref, "size": size},
                                                     cut, lambda _: None)
                except UsageError:
                    if len(attempt) == len(saved.chains):
                        raise
                    continue
            return {"bytes": size, "layers_sent": len(attempt), "layers_total": len(saved.chains),
                    "sent_to": str((answer or {}).get("sent_to", ""))}
    raise AssertionError("unreachable: the whole archive's attempt returns or raises")


def _write_cut(saved: Any, needed: list[int], out: IO[bytes]) -> None:
    """The archive cut to ``needed`` (:meth:`pyswarm.images.SavedArchive.pieces`) into ``out``."""
    with open(saved.path, "rb") as src:
        for head, offset, size in saved.pieces(needed):
            out.write(head)
            src.seek(offset)
            left = size
            while left > 0:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    raise BuildError(f"the saved archive {saved.path} is truncated")
                out.write(chunk)
                left -= len(chunk)


@dataclass
class Built:
    service: str
    ref: str
    action: str  # built | unchanged | would build (plan)


async def build_services(builds: dict[str, BuildSpec], given: dict[str, str], mode: str, builder: Builder,
                         log: Log | None = None, say: Log | None = None) -> dict[str, Built]:
    """Build what ``mode`` asks for, one after another (the engine builds
    on every core already), and return each service's image reference.
    ``given``: the ``image:`` of services that name theirs; the others get
    ``SERVICE:<hash>``. Raises :class:`BuildError` before anything is deployed."""
    if mode not in MODES:
        raise UsageError(f"unknown build mode {mode!r}")
    for service, spec in builds.items():
        check_buildable(service, spec)
    out: dict[str, Built] = {}
    for service, spec in builds.items():
        context = await asyncio.to_thread(make_context, service, spec)
        try:
            tag_hash = context.digest[:12]
            ref = given.get(service) or f"{service}:{tag_hash}"
            have = await builder.image_hash(ref)
            current = have is not None and (have == tag_hash or (service not in given and have == ""))
            if mode == "plan":
                out[service] = Built(service, ref, "unchanged" if current else "would build")
                if say is not None and not current:
                    say(f"Would build {service} ({ref})")
                continue
            if mode == "never" or (mode == "auto" and current):
                if have is None:
                    raise BuildError(f"service {service}: image {ref} is not built, and --no-build was given")
                out[service] = Built(service, ref, "unchanged")
                continue
            if say is not None:
                say(f"Building {service} ({ref})")
            await builder.build(service, spec, ref, context, tag_hash, log)
            out[service] = Built(service, ref, "built")
        finally:
            context.file.close()
    return out


def pick_builder(choice: str, connect: Connect | None) -> str:
    """``local`` or ``manager``: ``auto`` is this machine's engine when it
    answers, else the manager's (for a remote CLI, or a manager host whose
    engine is elsewhere)."""
    choice = choice or os.environ.get("PYSWARM_BUILDER", "") or "auto"
    if choice not in BUILDERS:
        raise UsageError(f"unknown builder {choice!r} (PYSWARM_BUILDER or --builder): "
                         f"expected one of {', '.join(BUILDERS)}")
    if choice != "auto":
        if choice == "manager" and connect is None:
            raise UsageError("--builder manager needs a manager to talk to")
        return choice
    if connect is None:
        return "local"

    async def answers() -> bool:
        from pyswarm.worker.docker import DockerClient

        try:
            async with DockerClient() as docker:
                return bool(await docker.ping())
        except Exception:  # noqa: BLE001 - a DOCKER_HOST we cannot use is no engine
            return False

    return "local" if asyncio.run(answers()) else "manager"


def build_stack_images(stack: Any, mode: str, verbose: bool, builder: str = "", remote: bool = False,
                       connect: Connect | None = None) -> None:
    """``stack deploy``'s build step: build, then point each built service's
    spec at its image. Output goes to stderr: one line per image built, the
    engine's whole output with ``verbose``. ``remote``: the CLI talks to a
    manager on another machine (``connect`` opens the API connection)."""
    if not stack.builds:
        return
    given = {s.name: s.container.image for s in stack.services
             if s.name in stack.builds and s.container.image != s.name}

    def err(line: str) -> None:
        print(line, file=sys.stderr)

    where = pick_builder(builder, connect)

    async def run() -> dict[str, Built]:
        if where == "manager":
            assert connect is not None
            return await build_services(stack.builds, given, mode, ManagerBuilder(connect),
                                        err if verbose else None, err)
        local = EngineBuilder()
        try:
            built = await build_services(stack.builds, given, mode, local, err if verbose else None, err)
            if connect is not None and mode != "plan":  # to the manager, and on to the leader
                for b in built.values():
                    sent = await send_image(local.docker, connect, b.ref, err)
                    if sent["sent_to"]:
                        err(f"Sent {b.ref} on to the leader's node {sent['sent_to']}")
            return built
        finally:
            await local.close()

    built = asyncio.run(run())
    for spec in stack.services:
        if spec.name in built:
            spec.container.image = built[spec.name].ref
