"""Errors of the DNS server (the tree is drawn in ``pyswarm.dns``)."""

from __future__ import annotations

from pyswarm.errors import PyswarmError, UsageError


class DnsError(PyswarmError):
    """Anything the DNS server reports to a person."""


class DnsBindError(DnsError):
    """The server could not listen on an address and port.

    Carries both, so that the message a manager prints at start names the
    exact socket (``127.0.0.1:53/udp``) and the likely cause.
    """

    def __init__(self, address: str, port: int, proto: str, reason: str) -> None:
        self.address = address
        self.port = port
        self.proto = proto
        self.reason = reason
        host = f"[{address}]" if ":" in address else address
        super().__init__(f"cannot serve DNS on {host}:{port}/{proto}: {reason}")


class DnsConfigError(DnsError, UsageError):
    """A DNS setting is malformed (for example an upstream ``ip:port``)."""
