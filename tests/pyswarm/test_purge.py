"""pyswarm/purge.py's pure parts: which processes and iptables rules are
pyswarm's (the clean-up itself runs on lab hosts: tests/e2e/test_machine.py)."""

from __future__ import annotations

import shlex
import subprocess
import sys

from pyswarm import purge


def test_only_pyswarms_own_processes() -> None:
    assert purge._ours([b"/opt/pyswarm/venv/bin/python", b"/opt/pyswarm/venv/bin/pyswarm", b"worker", b"--stdio"]) == "agent"
    assert purge._ours([b"/usr/local/bin/pyswarm", b"manager", b"run", b""]) == "manager"
    assert purge._ours([b"/usr/bin/python3", b"/opt/other/bin/worker", b"--stdio"]) is None
    assert purge._ours([b"/usr/local/bin/pyswarm", b"node", b"ls"]) is None


def test_rules_tagged_pyswarm() -> None:
    tagged = shlex.split('-A FORWARD -m comment --comment pyswarm -j PYSWARM-FORWARD')
    other = shlex.split('-A FORWARD -m comment --comment "not pyswarm" -j ACCEPT')
    assert purge._comment(tagged) == "pyswarm" and purge._comment(other) == "not pyswarm"
    assert purge._comment(shlex.split("-A FORWARD -j ACCEPT")) == ""


def test_runs_as_a_script_on_a_bare_python() -> None:
    res = subprocess.run([sys.executable, "-I", "-S", "-", "--help"], input=purge.source(), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "remove everything pyswarm put on this host" in res.stdout, res.stderr
