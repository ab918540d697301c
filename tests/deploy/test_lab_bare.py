"""Bare lab hosts (``lab up --bare``) and the operator's SSH config (``lab ssh-config``).

A bare host must look like a fresh VM: the system's python3, sshd and
dockerd, its own /opt, /usr/local and /root, and none of this machine's
pyswarm (checkout, venv, dev Python). The root namespace is the operator's
laptop and reaches the hosts with ``ssh -F $(pyswarm lab ssh-config) HOST``
and strict host key checking.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyswarm.deploy.lab import Lab, LabError, pyswarm_executable

pytestmark = pytest.mark.e2e

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare(lab_factory: Any) -> Lab:
    """1 manager + 1 worker, bare, no cluster."""
    made: Lab = lab_factory(managers=1, workers=1, bare=True)
    return made


def _sh(lab: Lab, host: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return lab.exec(host, ["sh", "-c", script], check=check, timeout=60)


def _ssh(config: Path, host: str, *argv: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(config), "-o", "StrictHostKeyChecking=yes", *extra, host, *argv],
                          capture_output=True, text=True, timeout=60)


def test_bare_host_cannot_see_this_machines_pyswarm(bare: Lab) -> None:
    assert (CHECKOUT / "pyproject.toml").exists() and Path(sys.prefix, "bin").is_dir()
    for path in (CHECKOUT / "pyproject.toml", Path(sys.prefix) / "bin", Path(sys.executable), Path("/root/.pyenv")):
        res = _sh(bare, "manager1", f"ls -d '{path}'", check=False)
        assert res.returncode != 0, f"a bare host sees {path}: {res.stdout!r}"
    res = _sh(bare, "manager1", "command -v pyswarm; python3 -c 'import pyswarm' 2>&1", check=False)
    assert "No module named 'pyswarm'" in res.stdout, f"pyswarm is reachable on a bare host: {res.stdout!r}"


def test_bare_host_runs_the_systems_python_with_venv(bare: Lab) -> None:
    res = _sh(bare, "worker1", "command -v python3; python3 -c 'import sys; print(sys.prefix)'; "
                               "python3 -m venv /root/v && /root/v/bin/python -c 'print(\"venv ok\")'")
    assert res.stdout.split() == ["/usr/bin/python3", "/usr", "venv", "ok"], res.stdout


def test_each_bare_host_has_its_own_opt_usr_local_and_home(bare: Lab) -> None:
    marks = {"/opt/pyswarm-lab-mark", "/usr/local/bin/pyswarm-lab-mark", "/root/pyswarm-lab-mark"}
    try:
        _sh(bare, "manager1", "".join(f"echo m1 > {m}; " for m in marks))
        for m in marks:
            seen = _sh(bare, "worker1", f"cat {m}", check=False)
            assert seen.returncode != 0, f"worker1 sees manager1's {m}"
            assert not Path(m).exists(), f"manager1's {m} is on the machine itself"
            assert _sh(bare, "manager1", f"cat {m}").stdout == "m1\n"
        assert _sh(bare, "worker1", "ls -A /opt /usr/local/bin").stdout.split() in (["/opt:", "/usr/local/bin:"], ["/opt:", "containerd", "/usr/local/bin:"])
    finally:
        _sh(bare, "manager1", "rm -f " + " ".join(sorted(marks)), check=False)


def test_ssh_config_reaches_every_host_with_strict_host_key_checking(bare: Lab, tmp_path: Path) -> None:
    env = {**os.environ, "PYSWARM_LAB_DIR": str(bare.dir)}
    cli = subprocess.run([pyswarm_executable(), "lab", "ssh-config"], capture_output=True, text=True, env=env, timeout=30)
    assert cli.returncode == 0, cli
    config = Path(cli.stdout.strip())
    assert config == bare.ssh_config and config.is_relative_to(bare.dir), config
    text = config.read_text()
    assert "/root/.ssh" not in text and "~" not in text, text
    for host in bare.hosts:
        res = _ssh(config, host, "hostname")
        assert (res.returncode, res.stdout.strip()) == (0, host), f"ssh -F {config} {host}: {res.stderr}"
    # strict: a host key not in the lab's known_hosts is refused
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    res = _ssh(config, "manager1", "true", extra=("-o", f"UserKnownHostsFile={empty}"))
    assert res.returncode == 255 and "Host key verification failed" in res.stderr, res


def test_bare_needs_no_cluster(lab_factory: Any) -> None:
    with pytest.raises(LabError, match="--no-cluster"):
        lab_factory(managers=1, workers=0, cluster=True, bare=True)
