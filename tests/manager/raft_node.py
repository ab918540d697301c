"""A store replica in its own process, driven line by line on stdin (for
test_raft.py: real Raft between separate processes, on loopback).

    python raft_node.py SELF_ADDR DATA_DIR SECRET [PEER ...]

Commands: ``put ID`` (commit a service named ID; prints ``ok`` or
``error: …``), ``names`` (prints the JSON list of service names in this
replica), ``leader`` (prints ``yes`` or ``no``), ``synced`` (the JSON list
of service names this replica had at the moment it first reported
``in_sync``, or ``null`` while it has not), ``state`` (JSON: leader,
term, patience).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from pyswarm.manager.store import RaftConfig, Store
from pyswarm.models import ContainerSpec, Service, ServiceSpec


async def main() -> None:
    if os.environ.get("RAFT_NODE_LOG"):  # local: the store's log on stderr
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {sys.argv[1]} %(name)s: %(message)s")
    self_addr, data_dir, secret, *peers = sys.argv[1:]
    store = Store(RaftConfig(self_addr, peers, Path(data_dir), secret))
    store.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    synced: list[str] | None = None

    async def record_sync() -> None:
        nonlocal synced
        while not store.in_sync:
            await asyncio.sleep(0.005)
        synced = sorted(s.name for s in store.snapshot().services())

    recorder = asyncio.create_task(record_sync())
    print("started", flush=True)
    while line := (await reader.readline()).decode().strip():
        cmd, _, arg = line.partition(" ")
        if cmd == "put":
            svc = Service(id=arg, spec=ServiceSpec(name=arg, container=ContainerSpec(image="x")))
            try:
                await store.commit([["put", "service", arg, svc.to_dict()]], timeout=5)
                print("ok", flush=True)
            except Exception as exc:
                print(f"error: {exc}", flush=True)
        elif cmd == "names":
            print(json.dumps(sorted(s.name for s in store.snapshot().services())), flush=True)
        elif cmd == "synced":
            print(json.dumps(synced), flush=True)
        elif cmd == "leader":
            print("yes" if store.is_leader else "no", flush=True)
        elif cmd == "state":
            print(json.dumps({"leader": store.is_leader, "term": store.term, "patience": store.raft_patience}),
                  flush=True)
    recorder.cancel()
    store.stop()


if __name__ == "__main__":
    asyncio.run(main())
