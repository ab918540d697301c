"""Keep the Raft journal and dump proportional to the live state.

pysyncobj compacts (writes a full dump, drops the journal's entries up to
it) when the journal holds more than ``logCompactionMinEntries`` entries or
``logCompactionMinTime`` has passed. Neither rule knows bytes or live
state: scaling 100,000 tasks up and back to 3 is a few dozen entries of up
to 2,000 operations each, so the journal kept ~100 MB of entries (and the
dump 100,000 dead tasks) until a minute later; and the journal file, a
memory map that only ever grows, kept its peak size on disk for good.

:class:`Compaction` adds two rules, checked once a second on the Raft
thread, that force a compaction at once when

- the journal is larger than :data:`JOURNAL_PER_DUMP` times the last dump
  (and than :data:`JOURNAL_FLOOR`): the log outgrew the state; or
- the last dump holds more than :data:`DUMP_PER_LIVE` times the objects now
  live (and :data:`DUMP_SLACK` more): the state shrank;

and after each compaction gives back the journal file's unused tail, so
the bytes on disk follow the live state down as well as up. During a scale
up the journal rule fires a few times (each dump is bigger than the last,
so the count grows with the logarithm of the state, not with its size).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds
ASK_AGAIN_AFTER = 30.0  # seconds: a dump that was asked for and never finished (it failed)
JOURNAL_FLOOR = 8 << 20  # bytes: a journal this small is never a reason
JOURNAL_PER_DUMP = 8  # the dump is gzipped: ~5-10x smaller than the state's pickles in the journal
DUMP_PER_LIVE = 2
DUMP_SLACK = 200  # objects: a dump of a small state may hold this many dead ones
FILE_MIN = 1 << 20  # bytes the journal file keeps even when nearly empty
FILE_SLACK = 2  # the file is cut when it is over this many times what it is cut to


def journal_bytes(journal: Any) -> int:
    """The bytes of records in pysyncobj's journal (0 for one in memory)."""
    return int(getattr(journal, "_FileJournal__currentOffset", 0))


def journal_file_bytes(journal: Any) -> int:
    """The size of the journal's file (its memory map), 0 for one in memory."""
    mm = getattr(getattr(journal, "_FileJournal__journalFile", None), "_ResizableFile__mm", None)
    return 0 if mm is None else int(mm.size())


def shrink_journal_file(journal: Any) -> int:
    """Cut the journal file to twice its records (at least :data:`FILE_MIN`)
    when it is over :data:`FILE_SLACK` times that; the bytes given back.
    pysyncobj's file only grows (x2 when full), so a journal that once held
    100,000 tasks' entries kept that size after every compaction."""
    mm = getattr(getattr(journal, "_FileJournal__journalFile", None), "_ResizableFile__mm", None)
    if mm is None:
        return 0
    size, used = int(mm.size()), journal_bytes(journal)
    target = max(FILE_MIN, 2 * used)
    if size <= FILE_SLACK * target:
        return 0
    mm.flush()
    mm.resize(target)  # ftruncate and remap: the records live below ``used``
    return size - target


class Compaction:
    """When to force a compaction: asked on every Raft tick, decides at most
    once per :data:`CHECK_EVERY`."""

    def __init__(self, dump_file: str, live_objects: Callable[[], int], dumped_objects: Callable[[], int]) -> None:
        self._dump_file = dump_file
        self._live = live_objects
        self._dumped = dumped_objects
        self._next = 0.0
        self._asked_until = 0.0  # a compaction asked for and not done yet: ask again after this
        self.forced = 0  # compactions these rules asked for

    def due(self, journal: Any, now: float | None = None) -> str:
        """Why a compaction is due now ("" when it is not)."""
        now = time.monotonic() if now is None else now
        if now < self._next or now < self._asked_until:
            return ""
        self._next = now + CHECK_EVERY
        why = self._why(journal)
        if why:
            self.forced += 1
            self._asked_until = now + ASK_AGAIN_AFTER
        return why

    def _why(self, journal: Any) -> str:
        try:
            dump = os.stat(self._dump_file).st_size
        except OSError:
            dump = 0
        used = journal_bytes(journal)
        if used > JOURNAL_FLOOR and used > JOURNAL_PER_DUMP * dump:
            return f"the journal ({used >> 20} MiB) outgrew the last dump ({dump >> 20} MiB)"
        live, dumped = self._live(), self._dumped()
        if dumped > DUMP_PER_LIVE * live + DUMP_SLACK:
            return f"the last dump holds {dumped} objects, {live} are live"
        return ""

    def compacted(self, journal: Any) -> None:
        self._asked_until = 0.0
        released = shrink_journal_file(journal)
        if released:
            log.info("raft journal file cut by %d MiB to %d MiB after a compaction",
                     released >> 20, journal_file_bytes(journal) >> 20)
