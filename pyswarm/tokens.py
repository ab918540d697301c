"""Join tokens: ``PSWMTKN-1-<fingerprint>-<secret>``.

The fingerprint is the SHA-256 of the manager API's SSH host key (base32,
lowercase, no padding), so a joining host can refuse an impostor before it
sends anything; the secret authenticates the joiner and says its role (the
worker and manager secrets differ, as in Docker Swarm).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

from pyswarm.errors import UsageError

PREFIX = "PSWMTKN"
VERSION = "1"
_SECRET_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN_RE = re.compile(r"^PSWMTKN-1-([a-z2-7]{52})-([0-9a-z]{25})$")


def new_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(25))


def fingerprint(public_key_blob: bytes) -> str:
    """The fingerprint of an SSH public key's wire-format blob."""
    digest = hashlib.sha256(public_key_blob).digest()
    return base64.b32encode(digest).decode().rstrip("=").lower()


def fingerprint_openssh(public_key_line: str) -> str:
    """The fingerprint of an OpenSSH public key line (``ssh-ed25519 AAAA… comment``)."""
    parts = public_key_line.split()
    if len(parts) < 2:
        raise UsageError(f"not an OpenSSH public key: {public_key_line[:40]!r}")
    return fingerprint(base64.b64decode(parts[1]))


@dataclass(frozen=True)
class Token:
    fingerprint: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}-{VERSION}-{self.fingerprint}-{self.secret}"


def parse_token(text: str) -> Token:
    match = _TOKEN_RE.match(text.strip())
    if not match:
        raise UsageError(
            "invalid join token: expected PSWMTKN-1-<52 base32 characters>-<25 characters>,"
            " as printed by `pyswarm init` or `pyswarm join-token`"
        )
    return Token(match.group(1), match.group(2))
