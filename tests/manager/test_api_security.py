"""Credentials that can be turned over (manager/api/security.py, join.py,
servers.py) against a real single-manager store: join tokens rotate, the
cluster SSH key rotates (and does when a node that had it is removed),
autolock's unlock key; the join door compares secrets in constant time."""

from __future__ import annotations

import sys
from pathlib import Path

import asyncssh
import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from test_api import with_api  # noqa: E402

from pyswarm.errors import UsageError  # noqa: E402
from pyswarm.manager.api import Api  # noqa: E402
from pyswarm.manager.servers import _JoinSSHServer  # noqa: E402


def test_the_join_door_checks_the_secret_and_says_the_role() -> None:
    door = _JoinSSHServer(lambda: ("w" * 25, "m" * 25))
    assert door.validate_password("join", "w" * 25) and door.role == "worker"
    assert door.validate_password("join", "m" * 25) and door.role == "manager"
    assert not door.validate_password("join", "w" * 24 + "x")
    assert not door.validate_password("root", "w" * 25)
    assert not _JoinSSHServer(lambda: ("", "")).validate_password("join", "")


def test_join_token_rotation(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        def secret(answer: dict[str, str]) -> str:
            return answer["token"].rsplit("-", 1)[1]

        old = secret(await api.call("join_token", {"role": "worker"}))
        manager = secret(await api.call("join_token", {"role": "manager"}))
        new = secret(await api.call("join_token", {"role": "worker", "rotate": True}))
        assert new != old and len(new) == 25
        assert secret(await api.call("join_token", {"role": "worker"})) == new, "the rotated token from now on"
        assert secret(await api.call("join_token", {"role": "manager"})) == manager, "the other role's is unchanged"
    with_api(tmp_path, body)


def _cluster(api: Api) -> object:
    return api._store.snapshot().cluster  # type: ignore[attr-defined]


def test_ssh_key_rotation_keeps_the_old_key_for_nodes_not_yet_updated(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        store = api._store  # type: ignore[attr-defined]
        await store.commit([["patch", "cluster", "c1", {"ssh_private_key": key.export_private_key().decode()}]])
        before = store.snapshot().cluster
        answer = await api.call("swarm.rotate_ssh_key", {})
        after = store.snapshot().cluster
        assert after.ssh_public_key == answer["ssh_public_key"] != before.ssh_public_key
        assert after.previous_ssh_private_key == before.ssh_private_key
        assert asyncssh.import_private_key(after.ssh_private_key).export_public_key().decode().split()[:2] == \
            after.ssh_public_key.split()[:2]
    with_api(tmp_path, body)


def test_removing_a_node_that_had_the_key_rotates_it(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        store = api._store  # type: ignore[attr-defined]
        await api.call("join", {"hostname": "w1", "addr": "10.0.0.2", "ssh_host_key": "k1"})
        await api.call("join", {"hostname": "w2", "addr": "10.0.0.3", "ssh_host_key": "k2"})
        w2 = next(n for n in store.snapshot().nodes() if n.hostname == "w2")
        await store.commit([["patch", "node", w2.id, {"held_keys": True}]])  # was a manager once
        first = store.snapshot().cluster.ssh_public_key
        await api.call("node.rm", {"nodes": ["w1"], "force": True})
        assert store.snapshot().cluster.ssh_public_key == first, "a plain worker had no key to take along"
        await api.call("node.rm", {"nodes": ["w2"], "force": True})
        assert store.snapshot().cluster.ssh_public_key != first, "the ex-manager's copy of the key still opens every node"
    with_api(tmp_path, body)


def test_autolock_and_its_unlock_key(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        with pytest.raises(UsageError, match="autolock is not enabled"):
            await api.call("swarm.unlock_key", {})
        on = await api.call("cluster.update", {"autolock": True})
        key = on["unlock_key"]
        assert key.startswith("PSWMKEY-1-")
        assert (await api.call("swarm.unlock_key", {}))["key"] == key
        rotated = (await api.call("swarm.unlock_key", {"rotate": True}))["key"]
        assert rotated != key and (await api.call("swarm.unlock_key", {}))["key"] == rotated
        with pytest.raises(UsageError, match="not locked"):
            await api.call("swarm.unlock", {"key": rotated})
        off = await api.call("cluster.update", {"autolock": False})
        assert off["autolock"] is False and "unlock_key" not in off
    with_api(tmp_path, body)
