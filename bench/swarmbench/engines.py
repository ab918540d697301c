"""Counting containers on the lab hosts' engines, and sampling that over time.

Both orchestrators are judged by what the engines run, not by what they
report: a replica counts once its container is ``running`` in the engine of
the host it was placed on. The sampler asks every host's engine (its Engine
API socket, reachable from the root namespace) in parallel, about ten times
a second, and keeps the per-host counts with the time, which is what the
curves are drawn from.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API = "/v1.41"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Engine:
    """A minimal synchronous Engine API client for one host (one keep-alive connection).

    The project's own client (pyswarm.worker.docker) is asyncio; the sampler
    runs in threads and only needs two GETs, so this stays small.
    """

    def __init__(self, host: str, sock: Path, timeout: float = 5.0) -> None:
        self.host = host
        self.sock = str(sock)
        self.timeout = timeout
        self._conn: _UnixHTTPConnection | None = None
        self._lock = threading.Lock()

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:
        url = API + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with self._lock:
            for attempt in (0, 1):
                if self._conn is None:
                    self._conn = _UnixHTTPConnection(self.sock, self.timeout)
                try:
                    self._conn.request("GET", url)
                    resp = self._conn.getresponse()
                    body = resp.read()
                except (OSError, http.client.HTTPException):
                    self._conn.close()
                    self._conn = None
                    if attempt:
                        raise
                    continue
                if resp.status >= 400:
                    raise OSError(f"{self.host}: GET {path} -> {resp.status} {body[:200]!r}")
                return json.loads(body or b"null")
        raise AssertionError("unreachable")

    def containers(self, labels: Sequence[str], running_only: bool = True) -> list[dict[str, Any]]:
        filters: dict[str, list[str]] = {"label": list(labels)}
        if running_only:
            filters["status"] = ["running"]
        query = {"filters": json.dumps(filters)}
        if not running_only:
            query["all"] = "1"
        result = self.get("/containers/json", query)
        return list(result or [])

    def ping(self) -> bool:
        try:
            self.get("/version")
            return True
        except OSError:
            return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Engines:
    """Every lab host's engine; counts summed or per host."""

    def __init__(self, socks: dict[str, Path]) -> None:
        self.engines = {h: Engine(h, s) for h, s in socks.items()}
        self._pool = ThreadPoolExecutor(max_workers=len(self.engines))

    def per_host(self, labels: Sequence[str], running_only: bool = True) -> dict[str, int]:
        """Containers carrying all ``labels`` on each host; a host whose engine is unreachable counts -1."""

        def one(e: Engine) -> tuple[str, int]:
            try:
                return e.host, len(e.containers(labels, running_only))
            except OSError:
                return e.host, -1

        return dict(self._pool.map(one, self.engines.values()))

    def count(self, labels: Sequence[str], hosts: Sequence[str] | None = None, running_only: bool = True) -> int:
        counts = self.per_host(labels, running_only)
        return sum(max(0, n) for h, n in counts.items() if hosts is None or h in hosts)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for e in self.engines.values():
            e.close()


@dataclass
class Series:
    """Samples of one quantity: (seconds since t0, value)."""

    name: str
    points: list[tuple[float, int]] = field(default_factory=list)


class Sampler:
    """Samples named counts in a background thread until stopped.

    ``probes`` maps a series name to a function returning the current value
    (e.g. running replicas on every host but the failed one). Times are
    relative to ``t0`` (time.monotonic()), which the scenario sets just
    before it sends the command it measures.
    """

    def __init__(self, probes: dict[str, Callable[[], int]], interval: float = 0.1) -> None:
        self.probes = probes
        self.interval = interval
        self.t0 = time.monotonic()
        self.series = {name: Series(name) for name in probes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.latest: dict[str, int] = {}
        self._changed = threading.Condition()

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            values = {name: probe() for name, probe in self.probes.items()}
            now = time.monotonic() - self.t0
            with self._changed:
                for name, v in values.items():
                    self.series[name].points.append((round(now, 3), v))
                self.latest = values
                self._changed.notify_all()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def wait(self, predicate: Callable[[dict[str, int]], bool], timeout: float) -> float | None:
        """Seconds since t0 of the first sample for which ``predicate`` holds, or None on timeout."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            with self._changed:
                points = len(next(iter(self.series.values())).points)
                for i in range(seen, points):
                    sample = {name: s.points[i][1] for name, s in self.series.items()}
                    if predicate(sample):
                        return next(iter(self.series.values())).points[i][0]
                seen = points
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 1.0))

    def stop(self) -> dict[str, list[tuple[float, int]]]:
        self._stop.set()
        self._thread.join()
        return {name: s.points for name, s in self.series.items()}
