"""manager/sealing.py: credentials are sealed before they enter the Raft
log, open when read, and nowhere in plain text in the journal or the dump of
a real pysyncobj store; without a key nothing is sealed and plain values
still read; a sealed value does not open with another cluster's key."""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from test_store import free_port, started  # noqa: E402

from pyswarm.manager import objects, sealing  # noqa: E402
from pyswarm.models import Cluster, ContainerSpec  # noqa: E402

PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-cluster-root-key\n"
SECRET = b"hunter2-the-database-password"


@pytest.fixture
def key() -> Iterator[sealing.DataKey]:
    k = sealing.DataKey.new()
    sealing.use(k)
    yield k
    sealing.use(None)


def test_seal_and_open(key: sealing.DataKey) -> None:
    sealed = key.seal("s3cret")
    assert sealed.startswith(sealing.PREFIX) and "s3cret" not in sealed
    assert key.seal(sealed) == sealed, "sealing twice seals once"
    assert key.seal("") == "", "nothing to hide in an empty field"
    assert sealing.reveal(sealed) == "s3cret" and sealing.reveal("plain") == "plain"
    with pytest.raises(sealing.SealError, match="another cluster"):
        sealing.DataKey.new().open(sealed)
    sealing.use(None)
    with pytest.raises(sealing.SealError, match="no data key"):
        sealing.reveal(sealed)


def test_only_credential_fields_are_sealed(key: sealing.DataKey) -> None:
    cluster = Cluster(id="c1", ssh_private_key=PRIVATE_KEY, raft_secret="raft", zone="pyswarm")
    [put, patch, other] = sealing.seal_ops([
        ["put", "cluster", "c1", cluster.to_dict()],
        ["patch", "secret", "s1", {"data": "aGk=", "name": "db"}],
        ["put", "config", "k1", {"data": "aGk="}],
    ])
    assert put[3]["ssh_private_key"].startswith(sealing.PREFIX) and put[3]["zone"] == "pyswarm"
    assert put[3]["raft_secret"].startswith(sealing.PREFIX)
    assert patch[3]["data"].startswith(sealing.PREFIX) and patch[3]["name"] == "db"
    assert other[3]["data"] == "aGk=", "configs are not secret"
    assert Cluster.from_dict(sealing.open_cluster(put[3])) == cluster


def test_nothing_in_the_raft_files_is_plain(tmp_path: Path, key: sealing.DataKey) -> None:
    async def go() -> None:
        store = await started(tmp_path, free_port())
        try:
            cluster = Cluster(id="c1", ssh_private_key=PRIVATE_KEY, raft_secret="raft-secret-xyz")
            secret_ops, _ = objects.create_ops(store.snapshot(), "secret", "db", SECRET, {})
            await store.commit([["put", "cluster", "c1", cluster.to_dict()], *secret_ops])
            snap = store.snapshot()
            assert snap.cluster == cluster, "the cluster reads back in plain text"
            spec = ContainerSpec(image="x", options={"secrets": [{"source": "db", "target": "db"}]})
            [file] = objects.task_files(snap, spec)["secrets"]
            assert base64.b64decode(file["data"]) == SECRET, "the agent gets the secret's data, opened"
            store._syncobj.forceLogCompaction()  # type: ignore[union-attr]
            deadline = asyncio.get_running_loop().time() + 10
            while not (tmp_path / "raft.dump").exists():
                assert asyncio.get_running_loop().time() < deadline, "no dump written"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        finally:
            store.stop()
        blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        for plain in (SECRET, base64.b64encode(SECRET), b"cluster-root-key", b"raft-secret-xyz"):
            assert plain not in blob, f"{plain!r} is in the Raft files in plain text"
    asyncio.run(go())
