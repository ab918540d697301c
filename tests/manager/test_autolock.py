"""manager/autolock.py: the data key locked by an unlock key, and what a
locked manager answers (the lab test restarts a real one)."""

from __future__ import annotations

import asyncio

import pytest

from pyswarm.errors import ClusterError, UsageError
from pyswarm.manager.autolock import LockedApi, key_id, lock, new_unlock_key, parse_unlock_key, unlock, wanted_form
from pyswarm.manager.sealing import DataKey
from pyswarm.models import Cluster


def test_lock_and_unlock() -> None:
    data_key, key = DataKey.new(), new_unlock_key()
    assert key.startswith("PSWMKEY-1-") and len(parse_unlock_key(key)) == 32
    content = lock(data_key, key)
    assert data_key.export() not in str(content) and content["unlock_id"] == key_id(key)
    assert unlock(content, key).raw == data_key.raw
    with pytest.raises(UsageError, match="not the key this manager is locked with"):
        unlock(content, new_unlock_key())
    for bad in ("", "PSWMKEY-1-short", "SWMKEY-1-" + "a" * 43):
        with pytest.raises(UsageError, match="not an unlock key"):
            unlock(content, bad)


def test_the_key_file_follows_the_cluster() -> None:
    data_key, key = DataKey.new(), new_unlock_key()
    plain = {"key": data_key.export()}
    off, on = Cluster(id="c"), Cluster(id="c", autolock=True, unlock_key=key)
    assert wanted_form(data_key, off, plain) is None
    locked = wanted_form(data_key, on, plain)
    assert locked is not None and "locked" in locked
    assert wanted_form(data_key, on, locked) is None, "the same unlock key: no rewrite"
    rotated = Cluster(id="c", autolock=True, unlock_key=new_unlock_key())
    relocked = wanted_form(data_key, rotated, locked)
    assert relocked is not None and relocked["unlock_id"] != locked["unlock_id"]
    assert wanted_form(data_key, off, locked) == plain


def test_a_locked_manager_answers_how_to_unlock() -> None:
    async def main() -> None:
        data_key, key = DataKey.new(), new_unlock_key()
        got: list[DataKey] = []
        api = LockedApi("n1", "c1", lock(data_key, key), got.append)
        assert (await api.call("ping", {}))["locked"] is True
        with pytest.raises(ClusterError, match=r"locked \(autolock\).*pyswarm swarm unlock"):
            await api.call("node.ls", {})
        with pytest.raises(UsageError, match="not the key"):
            await api.call("swarm.unlock", {"key": new_unlock_key()})
        with pytest.raises(UsageError, match="expected the unlock key"):
            await api.call("swarm.unlock", {"key": ["x"]})
        assert await api.call("swarm.unlock", {"key": key}) == {"unlocked": True}
        await asyncio.sleep(0.3)
        assert [k.raw for k in got] == [data_key.raw]
    asyncio.run(main())
