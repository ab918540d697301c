"""The table the server answers from, rebuilt only when the store changes.

The server calls its table source on every query, so that source must be a
pointer read, not a build. :class:`TableCache` is that pointer. The manager
either pushes a new snapshot (:meth:`TableCache.update`) from its store
watch, or marks the table stale (:meth:`TableCache.invalidate`) from the
store's apply callback — cheap enough for the Raft thread — and lets the
next query rebuild it through the ``loader`` it was given.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable

from pyswarm.models import Cluster, Service, Task

from .records import NameTable, build_table

# the cluster, its services, its tasks, and its nodes' addresses (forwarding, NameTable.may_forward)
Snapshot = tuple[Cluster, Iterable[Service], Iterable[Task], Iterable[str]] | tuple[Cluster, Iterable[Service], Iterable[Task]]


class TableCache:
    """Holds the current :class:`NameTable`; callable, so it can be the
    server's ``table_source`` as is.

    Thread-safe: ``update`` and ``invalidate`` may be called from any
    thread; readers see either the old or the new table, never a half-built
    one (the table is immutable and swapped by one assignment).
    """

    def __init__(self, loader: Callable[[], Snapshot] | None = None, table: NameTable | None = None) -> None:
        self._loader = loader
        self._table = table or NameTable()
        self._stale = loader is not None and table is None
        self._serial = self._table.serial
        self._lock = threading.Lock()

    def update(self, cluster: Cluster, services: Iterable[Service], tasks: Iterable[Task],
               nodes: Iterable[str] = ()) -> NameTable:
        """Rebuild from this snapshot now; return the new table."""
        self._stale = False
        return self.install(build_table(cluster, services, tasks, nodes))

    def install(self, table: NameTable) -> NameTable:
        """Make ``table`` current (a new serial) unless it says what the
        current one says; the current table either way."""
        with self._lock:
            if dataclasses.replace(table, serial=self._table.serial) == self._table:
                # most store changes (a node's status, a task moving from
                # assigned to starting) leave every name as it was: keeping
                # the same table object keeps the server's reply cache warm
                return self._table
            self._serial += 1
            self._table = dataclasses.replace(table, serial=self._serial)
            return self._table

    def invalidate(self) -> None:
        """Mark the table stale; the next :meth:`get` rebuilds it via the loader."""
        if self._loader is None:
            raise RuntimeError("TableCache.invalidate() needs a loader; call update() instead")
        self._stale = True

    def get(self) -> NameTable:
        if self._stale and self._loader is not None:
            # clear the flag before loading, so a change that lands while we
            # build marks it stale again instead of being lost
            self._stale = False
            try:
                snapshot = self._loader()
            except BaseException:
                self._stale = True
                raise
            self.install(build_table(*snapshot))
        return self._table

    __call__ = get

    @property
    def table(self) -> NameTable:
        return self._table
