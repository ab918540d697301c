"""Autolock: the data key at rest encrypted by an unlock key that only the
operator holds (``pyswarm init --autolock``, ``swarm update --autolock=true``).

The data key (manager/sealing.py) opens every credential in the Raft log.
With autolock, each manager's ``STATE/data_key`` holds it encrypted with the
cluster's unlock key (``PSWMKEY-1-…``, 32 random bytes); the unlock key
itself lives only in the store, sealed by the data key, so a manager's disk
alone opens nothing. A manager that starts with a locked key file starts
nothing but its unix socket, and answers every request but ``swarm.unlock``
with how to unlock it (:class:`LockedApi`); ``pyswarm swarm unlock`` gives it
the key, it opens the data key and starts as usual.

Every running manager keeps its key file in the form the cluster asks for
(:func:`wanted_form`): locked with the current unlock key, or plain when
autolock is off, so a rotation (``swarm unlock-key --rotate``) reaches every
manager that is up. One that was down then still opens with the key that
was current when it stopped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyswarm.errors import ClusterError, UsageError
from pyswarm.models import Cluster

from .sealing import DataKey

PREFIX = "PSWMKEY-1-"
_AAD = b"pyswarm unlock key v1"
LOCKED_HELP = ("this manager is locked (autolock): unlock it with `pyswarm swarm unlock` on this host and "
               "the unlock key (`pyswarm swarm unlock-key` on an unlocked manager prints it)")


def new_unlock_key() -> str:
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def parse_unlock_key(text: str) -> bytes:
    text = text.strip()
    if not text.startswith(PREFIX):
        raise UsageError(f"not an unlock key: expected {PREFIX}… as printed by `pyswarm swarm unlock-key`")
    body = text[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"not an unlock key: expected {PREFIX} and 43 characters")
    return raw


def key_id(unlock_key: str) -> str:
    """A short name of an unlock key (which one locks a key file), not the key."""
    return hashlib.sha256(parse_unlock_key(unlock_key)).hexdigest()[:12]


def lock(data_key: DataKey, unlock_key: str) -> dict[str, Any]:
    """The key file's content: the data key encrypted with ``unlock_key``."""
    nonce = secrets.token_bytes(12)
    blob = AESGCM(parse_unlock_key(unlock_key)).encrypt(nonce, data_key.raw, _AAD)
    return {"locked": base64.b64encode(nonce + blob).decode(), "unlock_id": key_id(unlock_key)}


def unlock(content: dict[str, Any], unlock_key: str) -> DataKey:
    """The data key from a locked key file, or :class:`UsageError`."""
    raw = parse_unlock_key(unlock_key)
    try:
        blob = base64.b64decode(str(content["locked"]))
        return DataKey(AESGCM(raw).decrypt(blob[:12], blob[12:], _AAD))
    except (KeyError, binascii.Error, ValueError, InvalidTag):
        raise UsageError(f"this is not the key this manager is locked with (it is locked with the unlock key "
                         f"{content.get('unlock_id', '?')}…, by id; after a rotation while it was down, "
                         "the key from before the rotation)") from None


def wanted_form(data_key: DataKey, cluster: Cluster | None, current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The key file content the cluster asks for, or None when ``current`` already is it."""
    if cluster is not None and cluster.autolock and cluster.unlock_key:
        if current is not None and current.get("unlock_id") == key_id(cluster.unlock_key):
            return None
        return lock(data_key, cluster.unlock_key)
    if current is not None and current.get("key") == data_key.export():
        return None
    return {"key": data_key.export()}


class LockedApi:
    """What a locked manager answers on its unix socket."""

    def __init__(self, node_id: str, cluster_id: str, content: dict[str, Any],
                 on_unlock: Callable[[DataKey], None]) -> None:
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._content = content
        self._on_unlock = on_unlock
        self.unlocked = False

    async def call(self, method: str, params: Any) -> Any:
        if method == "ping":
            return {"node_id": self._node_id, "cluster_id": self._cluster_id, "leader": False,
                    "ready": False, "locked": not self.unlocked}
        if method == "swarm.unlock":
            key = params.get("key") if isinstance(params, dict) else None
            if not isinstance(key, str) or len(key) > 200:
                raise UsageError("swarm.unlock: key: expected the unlock key (a string)")
            data_key = unlock(self._content, key)
            self.unlocked = True
            # answer first, then let the manager start (its socket is replaced)
            asyncio.get_running_loop().call_later(0.2, self._on_unlock, data_key)
            return {"unlocked": True}
        raise ClusterError(LOCKED_HELP)
