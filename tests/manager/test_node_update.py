"""``node.update``: availability and labels, against a real single-manager store."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from test_api import with_api  # noqa: E402

from pyswarm.cli import main  # noqa: E402
from pyswarm.errors import NotFoundError, UsageError  # noqa: E402
from pyswarm.manager.api import Api  # noqa: E402


def test_availability_and_labels_by_hostname_and_id_prefix(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        joined = await api.call("join", {"hostname": "w1", "addr": "10.0.0.2", "ssh_host_key": "k1"})
        node_id = joined["node_id"]
        out = await api.call("node.update", {"node": "w1", "availability": "drain",
                                             "label_add": {"zone": "eu", "disk": "ssd"}})
        assert out["availability"] == "drain" and out["labels"] == {"zone": "eu", "disk": "ssd"}
        await api.call("node.update", {"node": node_id[:6], "label_rm": ["disk"], "label_add": {"zone": "us"}})
        node = await api.call("node.inspect", {"node": node_id})
        assert node["labels"] == {"zone": "us"} and node["availability"] == "drain"
        await api.call("node.update", {"node": "w1", "availability": "active"})
        assert (await api.call("node.inspect", {"node": "w1"}))["availability"] == "active"
        with pytest.raises(NotFoundError, match="node w1 has no label 'rack'"):
            await api.call("node.update", {"node": "w1", "label_rm": ["rack"]})
        with pytest.raises(UsageError, match="^availability: expected one of 'active', 'pause', 'drain', got the string 'off'$"):
            await api.call("node.update", {"node": "w1", "availability": "off"})
        with pytest.raises(NotFoundError, match="node nosuch not found"):
            await api.call("node.update", {"node": "nosuch", "availability": "pause"})
    with_api(tmp_path, body)


def test_cli_refuses_an_update_with_nothing_to_change(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "update", "w1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "Error: node update: nothing to change (give --availability, --label-add or --label-rm)"


def test_swarm_update_sets_the_task_history_limit(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        assert await api.call("cluster.update", {"task_history_limit": 2}) == {"id": "c1", "task_history_limit": 2}
        cluster = (await api.call("store.export", {}))["objects"]["cluster"]["c1"]
        assert cluster["task_history_limit"] == 2
        with pytest.raises(UsageError, match="^task_history_limit: -1 is below the minimum 0$"):
            await api.call("cluster.update", {"task_history_limit": -1})
    with_api(tmp_path, body)
