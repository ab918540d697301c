"""Secrets at rest: the fields of the store that are credentials are kept
encrypted in the Raft log and its dumps, with a data key that only managers
hold (Swarm encrypts its Raft log with a data encryption key the same way).

Sealed fields: the cluster's SSH private keys (root on every node), the
Raft secret, the API host key, the join token secrets, and every secret's
data. :func:`seal_ops` seals them in every transaction before it enters the
Raft log (``Store.commit``); :func:`open_cluster` (``Snapshot.cluster``) and
:func:`reveal` (secret data) open them when read, so everything above the
store sees plain values in memory and nothing sealed ever leaves a manager.

A sealed value is ``psw-sealed:1:`` + base64(nonce ‖ AES-256-GCM ciphertext);
a value without the prefix is read as plain text (state written before the
cluster had a key). The data key is 32 random bytes in ``STATE/data_key``
(0600), written at ``init`` and handed to joining and promoted managers over
their authenticated channels (the join API, the agent session). With
autolock (docs/security.md) that file holds the key encrypted by an unlock
key only the operator has, and the manager waits for ``swarm unlock``.

The key is process-wide (:data:`KEY`): one manager per process; a process
with none (tests, a cluster from before keys) seals nothing.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyswarm.errors import ClusterError
from pyswarm.host import DATA_KEY_FILE, read_key_file, write_key_file

__all__ = ["DataKey", "KEY_FILE", "SealError", "read_key_file", "write_key_file", "reveal", "seal", "seal_ops",
           "open_cluster", "use", "load_plain_key"]

PREFIX = "psw-sealed:1:"
KEY_FILE = "data_key"
SEALED: dict[str, tuple[str, ...]] = {
    "cluster": ("ssh_private_key", "previous_ssh_private_key", "raft_secret", "api_host_private_key",
                "worker_token_secret", "manager_token_secret", "unlock_key"),
    "secret": ("data",),
}
_AAD = b"pyswarm data key v1"


class SealError(ClusterError):
    """A sealed value cannot be opened (no key, or another cluster's key)."""


class DataKey:
    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("a data key is 32 bytes")
        self.raw = raw
        self._aead = AESGCM(raw)

    @classmethod
    def new(cls) -> DataKey:
        return cls(secrets.token_bytes(32))

    def export(self) -> str:
        return base64.b64encode(self.raw).decode()

    @classmethod
    def parse(cls, text: str) -> DataKey:
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise SealError("the data key is malformed") from None

    def seal(self, value: str) -> str:
        if not value or value.startswith(PREFIX):
            return value
        nonce = secrets.token_bytes(12)
        return PREFIX + base64.b64encode(nonce + self._aead.encrypt(nonce, value.encode(), _AAD)).decode()

    def open(self, value: str) -> str:
        if not value.startswith(PREFIX):
            return value
        try:
            blob = base64.b64decode(value[len(PREFIX):])
            return self._aead.decrypt(blob[:12], blob[12:], _AAD).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise SealError("a sealed value does not open with this manager's data key "
                            "(another cluster's key?)") from None


KEY: DataKey | None = None


def use(key: DataKey | None) -> None:
    """Make ``key`` this process's data key (the daemon, at start or unlock)."""
    global KEY
    KEY = key


def seal(value: str) -> str:
    return KEY.seal(value) if KEY is not None and isinstance(value, str) else value


def reveal(value: str) -> str:
    """The plain value of a (maybe) sealed field."""
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return value
    if KEY is None:
        raise SealError("this manager has no data key to open sealed values (locked? see `pyswarm swarm unlock`)")
    return KEY.open(value)


def seal_ops(ops: list[list[Any]]) -> list[list[Any]]:
    """The transaction with every sealed field of a ``put``/``patch`` sealed."""
    if KEY is None:
        return ops
    out = []
    for op in ops:
        if op and op[0] in ("put", "patch") and len(op) == 4 and op[1] in SEALED and isinstance(op[3], dict):
            fields = SEALED[op[1]]
            if any(f in op[3] for f in fields):
                op = [op[0], op[1], op[2], {k: seal(v) if k in fields else v for k, v in op[3].items()}]
        out.append(op)
    return out


def open_cluster(data: dict[str, Any]) -> dict[str, Any]:
    """A stored cluster object with its sealed fields opened."""
    fields = SEALED["cluster"]
    if not any(isinstance(data.get(f), str) and data[f].startswith(PREFIX) for f in fields):
        return data
    return {k: reveal(v) if k in fields else v for k, v in data.items()}


# -- the key file (pyswarm/host.py keeps it: joining and promoted hosts write it) --

KEY_FILE = DATA_KEY_FILE


def load_plain_key(state_dir: Path) -> DataKey | None:
    """The data key from an unlocked key file; None when there is no file."""
    data = read_key_file(state_dir)
    if data is None:
        return None
    if "key" not in data:
        raise SealError("the data key is locked")
    return DataKey.parse(str(data["key"]))
