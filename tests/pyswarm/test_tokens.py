"""Join tokens carry the manager's host-key fingerprint; parsing is strict."""

from __future__ import annotations

import asyncssh
import pytest

from pyswarm.errors import UsageError
from pyswarm.tokens import Token, fingerprint, fingerprint_openssh, new_secret, parse_token


def test_token_round_trip() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    token = Token(fingerprint(key.public_data), new_secret())
    text = str(token)
    assert text.startswith("PSWMTKN-1-")
    assert parse_token(text) == token


def test_fingerprint_is_the_same_from_blob_and_openssh_line() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    line = key.export_public_key().decode()
    assert fingerprint_openssh(line) == fingerprint(key.public_data)
    other = asyncssh.generate_private_key("ssh-ed25519")
    assert fingerprint(other.public_data) != fingerprint(key.public_data)


@pytest.mark.parametrize("bad", ["", "PSWMTKN-1-abc-def", "SWMTKN-1-" + "a" * 52 + "-" + "b" * 25,
                                 "PSWMTKN-1-" + "a" * 52 + "-" + "B" * 25])
def test_malformed_tokens_are_refused_with_a_hint(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid join token"):
        parse_token(bad)
