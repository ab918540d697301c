"""Shipping images to nodes without a registry: what both ends share.

The leader (or the manager an operator's ``image push`` reached) sends an
image from its own engine to a node's engine over SSH, uncloud's
*unregistry* idea. Only the layers the node lacks cross the wire: Docker's
``docker load`` (image/tarexport/load.go) looks every layer up by its chain
ID first and reads the tar's ``layer.tar`` only for a chain it does not
have, so a tar holding the config, the manifest and just the missing layers
loads into the very same image (verified on dockerd 20.10: same image ID).

The bytes go over a *second session on the node's SSH connection* (the
dispatcher's, when the sender is the leader), not as base64 lines on the
agent's protocol channel: a 100 MB transfer on that channel would hold up
its pings and assignments behind it (the dispatcher drops a session silent
for 2 s), and base64 in JSON costs a third more bytes and a decode per
chunk. SSH multiplexes sessions with a window each, so the agent's channel
keeps flowing beside the image. The node's key is forced to run ``pyswarm
worker --stdio``; sshd passes the requested command in
``SSH_ORIGINAL_COMMAND``, and :data:`CHANNEL_COMMAND` there makes that
process an image channel instead of an agent. Holding the cluster key
already means running containers as root on the node, so this gives no new
power.

Image channel (one request per session; JSON lines, then raw tar bytes):
  sender -> node  {"op": "have", "image": ref, "image_id": id}
  node -> sender  {"op": "have", "present": bool, "chains": [chain id, ...], "sized": true}
  sender -> node  {"op": "load", "size": N} (when the node said "sized"),
                  then the N tar bytes of a ``docker load`` archive, then EOF
                  (EOF at once: nothing to load)
  node -> sender  {"op": "loaded", "ok": bool, "loaded": [ref, ...], "error"}

  leader -> node  {"op": "export", "image": ref}
  node -> leader  {"op": "export", "present": bool, "image_id": id},
                  then (present) the image's ``docker save`` archive, then EOF

  sender -> node  {"op": "inventory"}
  node -> sender  {"op": "inventory", "images": [NodeImage, ...]}

  sender -> node  {"op": "remove", "images": [ref or id, ...]}
  node -> sender  {"op": "removed", "removed": [...], "error"}

The agent's protocol channel (:mod:`pyswarm.protocol`) carries the small
messages of automatic shipping: the agent's ``image_wanted`` and the
leader's ``image_plan`` and ``image_done``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

CHANNEL_COMMAND = "pyswarm worker --images"
LABEL_BUILD_HASH = "pyswarm.build.hash"  # on images `stack deploy` built (pyswarm/build.py)
CHANNEL_ENV = "SSH_ORIGINAL_COMMAND"
MAX_REF = 512
MAX_LINE = 4 << 20  # a node with thousands of images still answers in one line
MAX_ITEMS = 20_000

# repo[:tag][@digest], as docker's reference grammar allows (lower-case path,
# optional registry host:port), or a bare image id (sha256:hex or hex)
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class Engine(Protocol):
    """What a sender needs of its engine (pyswarm.worker.docker.DockerClient has it)."""

    async def inspect_image(self, ref: str) -> dict[str, Any] | None: ...

    def save_image(self, ref: str) -> AsyncIterator[bytes]: ...

    def build_image(self, params: list[tuple[str, str]], body: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]: ...

    async def load_image(self, body: AsyncIterator[bytes]) -> list[str]: ...

    async def list_images(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


def engine_client() -> Engine:
    """This host's engine, for a manager that ships images: manager/ reaches
    the engine client through here, never by importing worker/ itself."""
    from pyswarm.worker.docker import DockerClient

    return DockerClient(request_timeout=120.0)


class MessageError(ValueError):
    """A message on an image channel or the agent's channel is malformed."""


def check_ref(value: object, field: str = "image") -> str:
    """An image reference or id, or :class:`MessageError` naming ``field``."""
    if not isinstance(value, str) or not value:
        raise MessageError(f"{field}: expected a non-empty image reference")
    if len(value) > MAX_REF or not _REF.match(value):
        raise MessageError(f"{field}: not an image reference: {value[:80]!r}")
    return value


def _digest(value: object, field: str) -> str:
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise MessageError(f"{field}: expected sha256:<64 hex digits>, got {str(value)[:80]!r}")
    return value


def _str_list(value: object, field: str, check: Any = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise MessageError(f"{field}: expected a list of at most {MAX_ITEMS} strings")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise MessageError(f"{field}[{i}]: expected a string")
        out.append(check(item, f"{field}[{i}]") if check else item)
    return tuple(out)


def _text(value: object, field: str, limit: int = 4000) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MessageError(f"{field}: expected a string")
    return value[:limit]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of every prefix of an image's layers (the layer store's
    key): ``chain[0] = diff[0]``, ``chain[i] = sha256(chain[i-1] + " " + diff[i])``.
    Two images share a layer only when they share its whole chain."""
    out: list[str] = []
    for diff in diff_ids:
        if not out:
            out.append(diff)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out


def held_chains(inspected: Iterable[dict[str, Any] | None]) -> set[str]:
    """Every layer chain of these images (their ``inspect``, None for one
    gone meanwhile): the chains of every prefix of every image's layers
    (intermediate images share their parents' chains)."""
    chains: set[str] = set()
    for data in inspected:
        if data is not None:
            chains.update(chain_ids([str(d) for d in ((data.get("RootFS") or {}).get("Layers") or ())]))
    return chains


async def engine_chains(docker: Engine) -> set[str]:
    """Every layer chain an engine holds (:func:`held_chains`): what a
    manager tells a remote CLI that sends it an image (``image.built`` with
    ``chains``); a node's channel answers ``have`` the same way."""
    return held_chains([await docker.inspect_image(str(item.get("Id", ""))) for item in await docker.list_images()])


# -- a saved archive, cut down to the layers a receiver lacks -------------------


@dataclass
class SavedArchive:
    """A ``docker save`` archive of one image on disk, indexed: ``docker
    save`` writes the layers before the manifest that names them, so it is
    saved whole first, then any receiver gets a tar of the config, the
    manifest and only the layers whose *chain* it lacks (``docker load``
    skips the layers it has and makes the same image ID). The manager's
    spool (manager/images.py) and a remote CLI's ``image.load`` both cut
    their archives with this."""

    path: Path
    chains: list[str]
    config: str  # the config's member name
    layers: list[str]  # member name of each layer, aligned with chains
    members: dict[str, tuple[int, int]]  # name → (data offset, size)

    @classmethod
    def index(cls, path: Path, diff_ids: Sequence[str], what: str) -> SavedArchive:
        """Read the archive's member table and manifest (not its data);
        ``diff_ids``: the image's ``RootFS.Layers`` as its engine says."""
        members: dict[str, tuple[int, int]] = {}
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isfile():
                    members[m.name] = (m.offset_data, m.size)
            fh = tar.extractfile(tar.getmember("manifest.json"))
            assert fh is not None
            manifest = json.loads(fh.read())
        if not isinstance(manifest, list) or len(manifest) != 1:
            raise MessageError(f"{what}: the saved archive does not hold exactly one image")
        config, layers = str(manifest[0]["Config"]), [str(p) for p in manifest[0]["Layers"]]
        for name in [config, *layers]:
            if name not in members:
                raise MessageError(f"{what}: the saved archive lacks {name}")
        if len(layers) != len(diff_ids):
            raise MessageError(f"{what}: the saved manifest lists {len(layers)} layers, the engine {len(diff_ids)}")
        return cls(path, chain_ids(diff_ids), config, layers, members)

    def needed(self, have: Iterable[str]) -> list[int]:
        """The layers a receiver holding chains ``have`` lacks (by chain: a
        layer is reused only in the same place)."""
        held = set(have)
        return [i for i, chain in enumerate(self.chains) if chain not in held]

    def names(self, needed: Sequence[int]) -> list[str]:
        names = [self.config]
        for i in needed:
            if self.layers[i] not in names:
                names.append(self.layers[i])
        names.append("manifest.json")
        return names

    def size(self, needed: Sequence[int]) -> int:
        """Bytes of the cut tar (headers, padded data, the end blocks)."""
        return sum(512 + self.members[n][1] + (-self.members[n][1] % 512) for n in self.names(needed)) + 1024

    def pieces(self, needed: Sequence[int]) -> Iterator[tuple[bytes, int, int]]:
        """The cut tar as (bytes to write, then ``size`` bytes of the archive
        from ``offset``) pieces: the caller copies the data its own way
        (a thread's reads, or the kernel's ``sendfile``)."""
        for name in self.names(needed):
            offset, size = self.members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, 0
            yield info.tobuf(format=tarfile.GNU_FORMAT), offset, size
            if size % 512:
                yield b"\0" * (512 - size % 512), 0, 0
        yield b"\0" * 1024, 0, 0


def decode_line(line: bytes, what: str) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise MessageError(f"{what}: line of {len(line)} bytes is too long")
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise MessageError(f"{what}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("op"), str):
        raise MessageError(f"{what}: not an image channel message: {line[:120]!r}")
    return data


def encode_line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


# -- the image channel --------------------------------------------------------


@dataclass(frozen=True)
class ChannelRequest:
    """The first (and only) line a sender writes on an image channel."""

    op: str  # have | inventory | remove
    image: str = ""
    image_id: str = ""
    images: tuple[str, ...] = ()

    OPS = ("have", "inventory", "remove", "export")

    @classmethod
    def from_line(cls, line: bytes) -> ChannelRequest:
        data = decode_line(line, "image channel request")
        op = data["op"]
        if op not in cls.OPS:
            raise MessageError(f"op: unknown image channel request {op[:40]!r}")
        if op == "have":
            return cls(op, image=check_ref(data.get("image")), image_id=_digest(data.get("image_id"), "image_id"))
        if op == "export":
            return cls(op, image=check_ref(data.get("image")))
        if op == "remove":
            return cls(op, images=_str_list(data.get("images"), "images", check_ref))
        return cls(op)

    def to_line(self) -> bytes:
        msg: dict[str, Any] = {"op": self.op}
        if self.op == "have":
            msg.update(image=self.image, image_id=self.image_id)
        elif self.op == "export":
            msg["image"] = self.image
        elif self.op == "remove":
            msg["images"] = list(self.images)
        return encode_line(msg)


@dataclass(frozen=True)
class HaveReply:
    """Whether the node has the image, and every layer chain it holds.
    ``sized``: the node wants a :class:`LoadHeader` line before the tar (a
    node of an older pyswarm does not say so, and takes the tar alone)."""

    present: bool
    chains: frozenset[str]
    sized: bool = False

    @classmethod
    def from_line(cls, line: bytes) -> HaveReply:
        data = decode_line(line, "have reply")
        if data["op"] != "have" or not isinstance(data.get("present"), bool):
            raise MessageError("have reply: expected op 'have' with a boolean 'present'")
        return cls(bool(data["present"]), frozenset(_str_list(data.get("chains"), "chains", _digest)),
                   data.get("sized") is True)

    def to_line(self) -> bytes:
        return encode_line({"op": "have", "present": self.present, "chains": sorted(self.chains),
                            "sized": self.sized})


MAX_ARCHIVE = 1 << 40  # a tar of more than a TiB is not an image we ship


@dataclass(frozen=True)
class LoadHeader:
    """sender -> node, after a ``sized`` have reply: the tar's exact length,
    so that the node can hand exactly that many bytes from sshd's pipe to
    its engine in the kernel (``splice``) with a ``Content-Length``."""

    size: int

    @classmethod
    def from_line(cls, line: bytes) -> LoadHeader:
        data = decode_line(line, "load header")
        size = data.get("size")
        if data["op"] != "load" or not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_ARCHIVE:
            raise MessageError(f"load header: expected op 'load' with a size of 1 to {MAX_ARCHIVE} bytes")
        return cls(size)

    def to_line(self) -> bytes:
        return encode_line({"op": "load", "size": self.size})


@dataclass(frozen=True)
class ExportReply:
    """node -> leader: whether this engine holds the image asked for; when it
    does, its ``docker save`` archive follows to EOF (how a leader whose own
    engine lacks a built image, after a failover, gets it from a node that
    runs it)."""

    present: bool
    image_id: str = ""

    @classmethod
    def from_line(cls, line: bytes) -> ExportReply:
        data = decode_line(line, "export reply")
        if data["op"] != "export" or not isinstance(data.get("present"), bool):
            raise MessageError("export reply: expected op 'export' with a boolean 'present'")
        present = bool(data["present"])
        return cls(present, _digest(data.get("image_id"), "image_id") if present else "")

    def to_line(self) -> bytes:
        return encode_line({"op": "export", "present": self.present, "image_id": self.image_id})


@dataclass(frozen=True)
class LoadReply:
    ok: bool
    loaded: tuple[str, ...] = ()
    error: str = ""
    cpu: float = 0.0  # CPU seconds the node's channel process used (where a shipment's time goes)

    @classmethod
    def from_line(cls, line: bytes) -> LoadReply:
        data = decode_line(line, "load reply")
        if data["op"] != "loaded" or not isinstance(data.get("ok"), bool):
            raise MessageError("load reply: expected op 'loaded' with a boolean 'ok'")
        cpu = data.get("cpu", 0.0)
        if not isinstance(cpu, (int, float)) or isinstance(cpu, bool) or not 0 <= cpu < 1e6:
            raise MessageError("load reply: cpu: expected seconds")
        return cls(bool(data["ok"]), _str_list(data.get("loaded"), "loaded"), _text(data.get("error"), "error"),
                   float(cpu))

    def to_line(self) -> bytes:
        return encode_line({"op": "loaded", "ok": self.ok, "loaded": list(self.loaded), "error": self.error,
                            "cpu": self.cpu})


@dataclass(frozen=True)
class NodeImage:
    """One image on a node's engine, as ``image ls`` shows it."""

    id: str
    tags: tuple[str, ...]
    digests: tuple[str, ...]
    size: int

    @classmethod
    def from_engine(cls, item: dict[str, Any]) -> NodeImage:
        tags = tuple(str(t) for t in item.get("RepoTags") or () if t != "<none>:<none>")
        digests = tuple(str(d) for d in item.get("RepoDigests") or () if not str(d).startswith("<none>"))
        return cls(str(item.get("Id", "")), tags, digests, int(item.get("Size") or 0))

    @classmethod
    def from_dict(cls, data: object, field: str) -> NodeImage:
        if not isinstance(data, dict):
            raise MessageError(f"{field}: expected an object")
        size = data.get("size")
        if not isinstance(size, int) or size < 0:
            raise MessageError(f"{field}.size: expected a non-negative integer")
        return cls(_digest(data.get("id"), f"{field}.id"), _str_list(data.get("tags"), f"{field}.tags"),
                   _str_list(data.get("digests"), f"{field}.digests"), size)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tags": list(self.tags), "digests": list(self.digests), "size": self.size}


def inventory_from_line(line: bytes) -> list[NodeImage]:
    data = decode_line(line, "inventory reply")
    images = data.get("images")
    if data["op"] != "inventory" or not isinstance(images, list) or len(images) > MAX_ITEMS:
        raise MessageError("inventory reply: expected op 'inventory' with a list 'images'")
    return [NodeImage.from_dict(item, f"images[{i}]") for i, item in enumerate(images)]


def inventory_line(images: Iterable[NodeImage]) -> bytes:
    return encode_line({"op": "inventory", "images": [i.to_dict() for i in images]})


# -- the agent's protocol channel (automatic shipping) ------------------------


@dataclass(frozen=True)
class ImageWanted:
    """agent -> leader: a task needs ``image`` and this node lacks it."""

    image: str
    task_id: str

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> ImageWanted:
        return cls(check_ref(msg.get("image")), _text(msg.get("task_id"), "task_id", 64))

    def to_message(self) -> dict[str, Any]:
        return {"op": "image_wanted", "image": self.image, "task_id": self.task_id}


PLAN_SHIP = "ship"
PLAN_PULL = "pull"


@dataclass(frozen=True)
class ImagePlan:
    """leader -> agent: how ``image`` will get here. ``ship``: the leader
    sends it from ``source`` (an ``image_done`` follows); ``pull``: no
    engine of the cluster can send it (``reason`` says why), so pull it."""

    image: str
    plan: str
    source: str = ""
    reason: str = ""

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> ImagePlan:
        plan = msg.get("plan")
        if plan not in (PLAN_SHIP, PLAN_PULL):
            raise MessageError(f"image_plan.plan: expected 'ship' or 'pull', got {str(plan)[:40]!r}")
        return cls(check_ref(msg.get("image")), str(plan), _text(msg.get("source"), "source", 255),
                   _text(msg.get("reason"), "reason"))

    def to_message(self) -> dict[str, Any]:
        return {"op": "image_plan", "image": self.image, "plan": self.plan, "source": self.source,
                "reason": self.reason}


@dataclass(frozen=True)
class ImageDone:
    """leader -> agent: the shipment of ``image`` ended (``error`` empty: loaded)."""

    image: str
    error: str = ""

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> ImageDone:
        return cls(check_ref(msg.get("image")), _text(msg.get("error"), "error"))

    def to_message(self) -> dict[str, Any]:
        return {"op": "image_done", "image": self.image, "error": self.error}
