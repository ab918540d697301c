"""The store's in-memory tables: persistent maps, indexes and a typed cache.

A snapshot of the store must be consistent and cheap. Copying every object
per planner pass (what the store did until issue 11) cost O(objects) on the
event loop, and deserializing each task into a :class:`~pyswarm.models.Task`
another 15 µs a task: 1.5 s for 100,000 tasks, on every pass of every
planner. Here a snapshot costs O(1):

* :class:`PMap` is a map split into buckets that is copied on write per
  bucket. Taking a snapshot bumps the tables' *generation*; the writer (the
  Raft thread's apply) copies a bucket, or a map, only the first time it
  writes to it after a snapshot, so a snapshot's view never changes under
  its reader, whatever thread reads it, and a write costs O(objects/64) at
  most.
* Indexes (tasks by service, by node, by state) are PMaps of PMaps, kept up
  to date by the apply itself, so a planner or the dispatcher asks for the
  tasks of one service or one node without a scan.
* Every stored object is an :class:`Entry` holding its plain dict (what
  Raft replicates and persists) and, built on first read and kept until the
  object changes, its typed model. Typed objects are shared by every reader
  of that version: treat them as read-only (``dataclasses.replace`` first).

Nothing here is replicated as such: the Raft state is the plain
``{kind: {id: dict}}`` (see :class:`Tables.plain`), and pickling a PMap
yields a plain dict, so dumps keep their format.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pyswarm.models import KINDS, Model

NBUCKETS = 64


def _field(name: str) -> Any:
    return lambda data: str(data.get(name) or "")


def _slot_key(data: dict[str, Any]) -> str:
    slot = data.get("slot") or 0
    return f"{data.get('service_id', '')}/{slot}" if slot else ""  # global tasks (slot 0) go by node


def _running_key(data: dict[str, Any]) -> str:
    """A task running and meant to: what ``service ls`` counts per service."""
    running = data.get("state") == "running" and data.get("desired_state", "running") == "running"
    return str(data.get("service_id") or "") if running else ""


# the task indexes: name, the key of a task ("" for none), buckets of a member
# set (a slot holds a handful of tasks: one bucket, not 64, per slot)
INDEXED: tuple[tuple[str, Any, int], ...] = (
    ("service", _field("service_id"), NBUCKETS),
    ("node", _field("node_id"), NBUCKETS),
    ("state", _field("state"), NBUCKETS),
    ("slot", _slot_key, 1),
    ("running", _running_key, NBUCKETS),
)


def slot_key(service_id: str, slot: int) -> str:
    return f"{service_id}/{slot}"


class PMap:
    """A str-keyed map with copy-on-write buckets (see the module doc).

    ``gen`` is the generation whose writer owns this map; a writer of a later
    generation must :meth:`own` it (clone) before writing."""

    __slots__ = ("gen", "_n", "_buckets", "_bgen", "size")

    def __init__(self, gen: int, nbuckets: int = NBUCKETS) -> None:
        self.gen = gen
        self._n = nbuckets
        self._buckets: list[dict[str, Any] | None] = [None] * nbuckets
        self._bgen = [gen] * nbuckets
        self.size = 0

    def clone(self, gen: int) -> PMap:
        other = PMap.__new__(PMap)
        other.gen = gen
        other._n = self._n
        other._buckets = list(self._buckets)
        other._bgen = list(self._bgen)  # the buckets stay shared until written
        other.size = self.size
        return other

    def get(self, key: str) -> Any:
        bucket = self._buckets[hash(key) % self._n]
        return None if bucket is None else bucket.get(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        bucket = self._buckets[hash(key) % self._n]
        return bucket is not None and key in bucket

    def _bucket(self, key: str) -> dict[str, Any]:
        i = hash(key) % self._n
        bucket = self._buckets[i]
        if bucket is None:
            bucket = self._buckets[i] = {}
            self._bgen[i] = self.gen
        elif self._bgen[i] != self.gen:
            bucket = self._buckets[i] = dict(bucket)
            self._bgen[i] = self.gen
        return bucket

    def set(self, key: str, value: Any) -> None:
        bucket = self._bucket(key)
        if key not in bucket:
            self.size += 1
        bucket[key] = value

    def pop(self, key: str) -> Any:
        if key not in self:
            return None
        self.size -= 1
        return self._bucket(key).pop(key)

    def keys(self) -> Iterator[str]:
        for bucket in self._buckets:
            if bucket:
                yield from bucket

    def values(self) -> Iterator[Any]:
        for bucket in self._buckets:
            if bucket:
                yield from bucket.values()

    def items(self) -> Iterator[tuple[str, Any]]:
        for bucket in self._buckets:
            if bucket:
                yield from bucket.items()

    def __len__(self) -> int:
        return self.size

    def __reduce__(self) -> tuple[Any, ...]:
        # a dump (pysyncobj pickles in a forked child) stores plain dicts
        return (dict, (list(self.items()),))


class Entry:
    """One stored object's version: its plain dict and its typed model,
    built on first read. A change makes a new Entry, so the cache is per
    object version and dies with it."""

    __slots__ = ("raw", "_typed")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self._typed: Model | None = None

    def typed(self, model: type[Model]) -> Any:
        obj = self._typed
        if obj is None:
            # two threads may both build it: harmless, both are equal
            obj = self._typed = model.from_dict(self.raw)
        return obj


class Tables:
    """The writer's side: every kind's PMap of Entries, and the indexes.

    Only one thread writes (pysyncobj's, under the store's lock); readers get
    a :class:`Frozen` from :meth:`freeze`."""

    def __init__(self) -> None:
        self.gen = 0
        self.kinds: dict[str, PMap] = {kind: PMap(0) for kind in [*KINDS, "subnet"]}
        self.indexes: dict[str, PMap] = {name: PMap(0) for name, _, _ in INDEXED}

    @classmethod
    def load(cls, plain: Mapping[str, Mapping[str, dict[str, Any]]]) -> Tables:
        tables = cls()
        for kind, objs in plain.items():
            for oid, data in objs.items():
                tables.put(kind, oid, data)
        return tables

    def plain(self) -> dict[str, RawDump]:
        """What Raft persists: kind -> map of plain dicts (pickled as dicts)."""
        return self.plain_of(self.freeze())

    @staticmethod
    def plain_of(frozen: Frozen) -> dict[str, RawDump]:
        return {kind: RawDump(pm) for kind, pm in frozen.kinds.items()}

    def freeze(self) -> Frozen:
        frozen = Frozen(dict(self.kinds), dict(self.indexes))
        self.gen += 1  # from now on the writer copies what it touches
        return frozen

    def _own(self, table: dict[str, PMap], name: str) -> PMap:
        pm = table[name] if name in table else PMap(self.gen)
        if pm.gen != self.gen:
            pm = pm.clone(self.gen)
        table[name] = pm
        return pm

    def get(self, kind: str, oid: str) -> dict[str, Any] | None:
        pm = self.kinds.get(kind)
        entry = pm.get(oid) if pm is not None else None
        return None if entry is None else entry.raw

    def put(self, kind: str, oid: str, data: dict[str, Any]) -> None:
        pm = self._own(self.kinds, kind)
        old = pm.get(oid)
        pm.set(oid, Entry(data))
        if kind == "task":
            self._reindex(oid, None if old is None else old.raw, data)

    def delete(self, kind: str, oid: str) -> bool:
        pm = self.kinds.get(kind)
        if pm is None or oid not in pm:
            return False
        old = self._own(self.kinds, kind).pop(oid)
        if kind == "task":
            self._reindex(oid, old.raw, None)
        return True

    def _reindex(self, oid: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for name, key_of, nbuckets in INDEXED:
            before = "" if old is None else key_of(old)
            after = "" if new is None else key_of(new)
            if before == after and (old is None) == (new is None):
                continue
            index = self._own(self.indexes, name)
            if old is not None and before:
                members = self._own_member(index, before, nbuckets)
                members.pop(oid)
                if not members.size:
                    index.pop(before)
            if new is not None and after:
                self._own_member(index, after, nbuckets).set(oid, None)

    def _own_member(self, index: PMap, key: str, nbuckets: int) -> PMap:
        members: PMap | None = index.get(key)
        if members is None:
            members = PMap(self.gen, nbuckets)
        elif members.gen != self.gen:
            members = members.clone(self.gen)
        else:
            return members
        index.set(key, members)
        return members


class RawDump:
    """One kind of a frozen view that pickles as ``{id: plain dict}``. The
    dicts are listed while pickling, which pysyncobj does in its forked
    child: building them on the Raft thread before the fork held the GIL
    (and the event loop) for each of 100,000 tasks at every compaction."""

    __slots__ = ("_pm",)

    def __init__(self, pm: PMap) -> None:
        self._pm = pm

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return ((oid, e.raw) for oid, e in self._pm.items())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (list(self.items()),))


class Frozen:
    """A reader's view: the maps as they were at :meth:`Tables.freeze`."""

    __slots__ = ("kinds", "indexes")

    def __init__(self, kinds: dict[str, PMap], indexes: dict[str, PMap]) -> None:
        self.kinds = kinds
        self.indexes = indexes

    def ids(self, index: str, key: str) -> list[str]:
        members: PMap | None = self.indexes[index].get(key)
        return [] if members is None else list(members.keys())

    def count(self, index: str, key: str) -> int:
        members: PMap | None = self.indexes[index].get(key)
        return 0 if members is None else members.size

    def keys_of(self, index: str) -> list[str]:
        return list(self.indexes[index].keys())


class RawKind(Mapping[str, dict[str, Any]]):
    """``snapshot.raw[kind]``: a read-only mapping of plain dicts, no copy."""

    def __init__(self, pm: PMap) -> None:
        self._pm = pm

    def __getitem__(self, key: str) -> dict[str, Any]:
        entry = self._pm.get(key)
        if entry is None:
            raise KeyError(key)
        return entry.raw  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return self._pm.keys()

    def __len__(self) -> int:
        return len(self._pm)

    def values(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        return (e.raw for e in self._pm.values())

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:  # type: ignore[override]
        return ((k, e.raw) for k, e in self._pm.items())


class RawView(Mapping[str, RawKind]):
    """``snapshot.raw``: kind -> :class:`RawKind`."""

    def __init__(self, frozen: Frozen) -> None:
        self._frozen = frozen

    def __getitem__(self, kind: str) -> RawKind:
        pm = self._frozen.kinds.get(kind)
        if pm is None:
            raise KeyError(kind)
        return RawKind(pm)

    def __iter__(self) -> Iterator[str]:
        return iter(self._frozen.kinds)

    def __len__(self) -> int:
        return len(self._frozen.kinds)

    def plain(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A deep-enough copy for JSON (``store.export``)."""
        return {kind: dict(RawKind(pm).items()) for kind, pm in self._frozen.kinds.items()}
