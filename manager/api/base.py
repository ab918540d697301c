"""What every API resource module shares: the method registry and lookups.

A resource is a :class:`Resource` subclass whose handlers are marked with
:func:`method`, each naming its wire name and its request dataclass. The
:class:`~pyswarm.manager.api.Api` parses a request's params into that
dataclass with :func:`pyswarm.wire.parse` before the handler runs, so a
handler only ever sees checked, typed input and never indexes a raw dict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyswarm.errors import NotFoundError
from pyswarm.models import Cluster, Node, Service
from pyswarm.wire import rule

from ..store import Snapshot, Store

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# a reference to an object: an id, an id prefix or a name
REF = rule(max_len=256)
REFS = rule(max_len=10_000)


@dataclass(frozen=True)
class Self:
    """Who this manager is, for answers like ``manager status``."""

    node_id: str
    advertise_addr: str
    api_port: int
    fingerprint: str


@dataclass(frozen=True)
class Empty:
    """A request without parameters."""


@dataclass(frozen=True)
class Method:
    name: str
    request: type
    handler: Callable[[Any], Awaitable[Any]]


def method(name: str, request: type = Empty) -> Callable[[F], F]:
    """Mark a :class:`Resource` coroutine as the handler of API method ``name``."""

    def mark(func: F) -> F:
        func.__api_method__ = (name, request)  # type: ignore[attr-defined]
        return func

    return mark


class Resource:
    """One group of API methods, reading the local replica and committing
    through the store (a follower's writes are forwarded to the leader)."""

    def __init__(self, store: Store, me: Self) -> None:
        self.store = store
        self.me = me

    def snap(self) -> Snapshot:
        return self.store.snapshot()

    def methods(self) -> list[Method]:
        found = []
        for attr in dir(type(self)):
            mark = getattr(getattr(type(self), attr), "__api_method__", None)
            if mark is not None:
                found.append(Method(mark[0], mark[1], getattr(self, attr)))
        return found


@dataclass(frozen=True)
class ServiceRef:
    service: str = field(metadata=REF)


@dataclass(frozen=True)
class NodeRef:
    node: str = field(metadata=REF)


@dataclass(frozen=True)
class NameRef:
    """One named object (a network, secret, config)."""

    name: str = field(metadata=REF)


@dataclass(frozen=True)
class NameList:
    """Named objects, e.g. to remove."""

    names: list[str] = field(metadata=REFS)


def cluster_of(snap: Snapshot) -> Cluster:
    cluster = snap.cluster
    if cluster is None:
        raise NotFoundError("the cluster is still starting: no cluster object in the store yet")
    return cluster


def find_service(snap: Snapshot, name: str) -> Service:
    service = snap.service_by_name(name)
    if service is None:
        matches = [s for s in snap.services() if s.id.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        raise NotFoundError(f"service {name} not found")
    return service


def find_node(snap: Snapshot, ref: str) -> Node:
    nodes = snap.nodes()
    for n in nodes:
        if ref in (n.id, n.hostname):
            return n
    matches = [n for n in nodes if n.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    raise NotFoundError(f"node {ref} not found")
