"""The manager's state directory: free space, writability, and the journal's
integrity at start.

pysyncobj's journal is a memory-mapped file. On a full disk its writes do
not fail: the next page it touches kills the process with SIGBUS (issue 11:
a leader with a full Raft directory acknowledged writes, then died with
nothing in its log, and died again at the next write after a restart). So
the store must stop journaling *before* the disk is full:

* :class:`DiskGuard` checks the Raft directory every :data:`CHECK_EVERY`
  seconds from its own thread (a stalled event loop must not delay it):
  free space under :data:`RESERVE` or a failed test write is a fault. The
  store then leaves Raft (it stops acknowledging: a leader steps down, a
  follower stops appending) and refuses writes with the reason, and it
  rejoins by itself once :data:`RESERVE` x 1.5 is free and writes work.
  One commit is at most a few MiB (2,000 operations), so the reserve is
  never crossed between two checks.
* :func:`check_journal` reads the journal's framing at start (every record
  is ``size | data | size``); a truncated or damaged file is refused with
  what to do instead of a crash deep in pysyncobj.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE = 32 * 2**20  # bytes that must stay free in the Raft directory
CHECK_EVERY = 0.2  # seconds
PROBE_EVERY = 2.0  # seconds between test writes

# pysyncobj's journal layout (pysyncobj/journal.py, format version 1)
_NAME_SIZE, _VERSION_SIZE = 24, 8
_FIRST_RECORD = _NAME_SIZE + _VERSION_SIZE + 4 + 4
_LAST_RECORD_AT = _NAME_SIZE + _VERSION_SIZE + 4


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def probe_write(path: Path) -> None:
    """Write and sync a small file: raises OSError when the directory cannot
    be written (read-only, I/O errors, no space)."""
    probe = path / ".write-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
    probe.unlink()


def fault(path: Path, free: int | None = None, error: OSError | None = None) -> str:
    """The one-line reason a person sees (log, ``node ls``, refused writes)."""
    if error is not None:
        return f"cannot write {path}: {error.strerror or error}; this manager stopped acknowledging writes"
    return (f"no space left on {path}: {(free or 0) / 2**20:.1f} MiB free, the Raft journal needs "
            f"{RESERVE // 2**20} MiB; this manager stopped acknowledging writes and rejoins once space is free")


class DiskGuard:
    """Watches ``path``; calls ``on_fault(reason)`` and ``on_clear()`` from its
    own thread when the directory goes bad and when it is good again."""

    def __init__(self, path: Path, on_fault: Callable[[str], None], on_clear: Callable[[], None],
                 free: Callable[[Path], int] = free_bytes, probe: Callable[[Path], None] = probe_write) -> None:
        self._path = path
        self._on_fault = on_fault
        self._on_clear = on_clear
        self._free = free
        self._probe = probe
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, probe: bool = False) -> str:
        """The directory's fault now ("" when fine); with hysteresis once faulty."""
        try:
            free = self._free(self._path)
        except OSError as exc:
            return fault(self._path, error=exc)
        if free < (RESERVE * 3 // 2 if self.reason else RESERVE):
            return fault(self._path, free=free)
        if probe or self.reason:
            try:
                self._probe(self._path)
            except OSError as exc:
                return fault(self._path, error=exc)
        return ""

    def step(self, probe: bool = False) -> None:
        reason = self.check(probe)
        if reason and not self.reason:
            self.reason = reason
            log.error("%s", reason)
            self._on_fault(reason)
        elif not reason and self.reason:
            log.warning("%s is writable again with space free: this manager rejoins the cluster", self._path)
            self.reason = ""
            self._on_clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="disk-guard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ticks = 0
        every = max(1, round(PROBE_EVERY / CHECK_EVERY))
        while not self._stop.wait(CHECK_EVERY):
            try:
                self.step(probe=ticks % every == 0)
            except Exception:  # the guard must outlive one bad check
                log.exception("disk guard: check failed")
            ticks += 1

    def stop(self) -> None:
        self._stop.set()


def check_journal(journal: Path) -> str | None:
    """Why the journal file cannot be used, or None (no file is fine)."""
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read {journal}: {exc.strerror or exc}"
    if len(data) < _FIRST_RECORD:
        return f"{journal} is truncated ({len(data)} bytes, shorter than its header)"
    if not data.startswith(b"PYSYNCOBJ"):
        return f"{journal} is not a pysyncobj journal (bad header)"
    (last,) = struct.unpack_from("<I", data, _LAST_RECORD_AT)
    if last > len(data):
        return f"{journal} is truncated: its records end at byte {last}, the file at {len(data)}"
    offset = _FIRST_RECORD
    count = 0
    while offset < last:
        if offset + 4 > last:
            return f"{journal} is damaged at byte {offset} (record {count + 1}: no size)"
        (size,) = struct.unpack_from("<I", data, offset)
        end = offset + 4 + size
        if size < 16 or end + 4 > last or struct.unpack_from("<I", data, end)[0] != size:
            return f"{journal} is damaged at byte {offset} (record {count + 1}: its size fields disagree)"
        offset = end + 4
        count += 1
    return None


def damaged_message(raft_dir: Path, why: str) -> str:
    return (f"the Raft journal is damaged: {why}. To recover: with other managers, move {raft_dir} aside "
            f"(mv {raft_dir} {raft_dir}.damaged) and start this manager again: it re-syncs from them; "
            f"as the only manager, move just the journal aside (mv {raft_dir}/raft.journal "
            f"{raft_dir}/raft.journal.damaged): it starts from its last full dump (raft.dump, at most "
            "a minute old) and loses the writes since")
