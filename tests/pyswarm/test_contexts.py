"""pyswarm.contexts: the operator's stored contexts and which manager an
invocation talks to."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from pyswarm import contexts
from pyswarm.errors import NotFoundError, UsageError
from pyswarm.remote import SSHTarget


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PYSWARM_HOST", raising=False)
    monkeypatch.delenv("PYSWARM_CONTEXT", raising=False)
    return tmp_path / "xdg"


def test_create_use_rm_round_trip(config_home: Path) -> None:
    contexts.create("prod", ["ssh://root@m1", "ssh://m2:2222"], description="the real one")
    path = config_home / "pyswarm" / "contexts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert contexts.load().current == contexts.LOCAL
    contexts.use("prod")
    loaded = contexts.load()
    assert loaded.current == "prod"
    assert loaded.items["prod"].hosts == ["ssh://root@m1", "ssh://m2:2222"]
    with pytest.raises(UsageError, match="current one"):
        contexts.remove("prod")
    contexts.use("default")
    contexts.remove("prod")
    assert contexts.load().items == {}


def test_bad_input_is_one_line() -> None:
    with pytest.raises(UsageError, match="invalid context name"):
        contexts.create("no spaces", ["ssh://m1"])
    with pytest.raises(UsageError, match="at least one --host"):
        contexts.create("x", [])
    with pytest.raises(UsageError, match="expected ssh://"):
        contexts.create("x", ["m1"])
    with pytest.raises(UsageError, match="port '99999'"):
        contexts.create("x", ["ssh://m1:99999"])
    with pytest.raises(UsageError, match="cannot be redefined"):
        contexts.create("default", ["ssh://m1"])
    contexts.create("x", ["ssh://m1"])
    with pytest.raises(UsageError, match="already exists"):
        contexts.create("x", ["ssh://m2"])
    with pytest.raises(NotFoundError, match="no context named 'y'"):
        contexts.use("y")


def test_a_hand_edited_file_is_checked(config_home: Path) -> None:
    path = config_home / "pyswarm" / "contexts.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"current": "a", "contexts": {"a": {"hosts": ["m1"]}}}))
    with pytest.raises(UsageError, match=r"contexts.json: context 'a': invalid host 'm1'"):
        contexts.load()
    path.write_text("{nope")
    with pytest.raises(UsageError, match="cannot read"):
        contexts.load()


def test_selection_order() -> None:
    contexts.create("a", ["ssh://a1", "ssh://a2"])
    contexts.create("b", ["ssh://b1"])
    assert contexts.select(None, None, env={}).local  # nothing current: this host
    contexts.use("a")
    assert contexts.select(None, None, env={}).targets == (SSHTarget("a1"), SSHTarget("a2"))
    assert contexts.select(None, None, env={"PYSWARM_CONTEXT": "b"}).context == "b"
    assert contexts.select(None, None, env={"PYSWARM_HOST": "ssh://h", "PYSWARM_CONTEXT": "b"}).targets == (
        SSHTarget("h"),)
    assert contexts.select(None, "b", env={"PYSWARM_HOST": "ssh://h"}).context == "b"
    assert contexts.select("ssh://u@x:23", None, env={}).targets == (SSHTarget("x", "u", 23),)
    assert contexts.select(None, "default", env={}).local
    with pytest.raises(UsageError, match="not both"):
        contexts.select("ssh://x", "a", env={})
    with pytest.raises(UsageError, match="PYSWARM_HOST: invalid host"):
        contexts.select(None, None, env={"PYSWARM_HOST": "nope"})
