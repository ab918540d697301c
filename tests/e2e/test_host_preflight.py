"""The host preflight on lab hosts.

On bare hosts (no pyswarm: the system's python3, sshd, dockerd), run as
``machine init/add`` will, from the root namespace over SSH:
``ssh HOST python3 - --json < preflight.py``. A host whose ipset is really
absent lists exactly that, with the apt command; a host whose dockerd is
stopped says its engine is unreachable; neither run changes the host.
Then ``pyswarm join`` on a host without ipset refuses with the list and
changes nothing, and joins once ipset is back.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from support import wait_for

from pyswarm import preflight
from pyswarm.deploy.lab import Lab

pytestmark = pytest.mark.e2e

# what a preflight could change on a host, looked at from inside it: the
# host's own directories, each one's own entry and all below it, but not
# their parents (`ls -la`'s ".."), which are the machine's /, /usr, /var/lib
# and /etc, where other pytest sessions' labs come and go
HOST_OWN = "/root /opt /usr/local /var/lib/pyswarm /etc/ssh /etc/docker"
SNAPSHOT = (f"ls -ld {HOST_OWN}; ls -lAR {HOST_OWN} 2>&1; ip -o link; ip -o route; "
            "iptables-save | grep -v '^#' | sed 's/\\[[0-9:]*\\]//'; ls /sys/module | sort | md5sum")


@pytest.fixture(scope="module")
def bare(lab_factory: Any) -> Lab:
    made: Lab = lab_factory(managers=1, workers=1, bare=True)
    return made


def _snapshot(lab: Lab, host: str) -> str:
    return str(lab.exec(host, ["sh", "-c", SNAPSHOT], timeout=60).stdout)


def _preflight_over_ssh(lab: Lab, host: str) -> preflight.Report:
    res = subprocess.run(["ssh", "-F", str(lab.ssh_config), host, "python3", "-", *preflight.script_args()],
                         input=preflight.source(), capture_output=True, text=True, timeout=60)
    assert res.returncode in (0, 1) and not res.stderr.strip(), f"preflight on {host}: rc={res.returncode} {res.stderr}"
    return preflight.parse_report(res.stdout)


def test_a_healthy_bare_host_passes(bare: Lab) -> None:
    rep = _preflight_over_ssh(bare, "worker1")
    assert rep.ok and rep.problems == [] and rep.install == "", rep.problems
    assert rep.host["python"].startswith("3.11") and "/usr/bin/python3" in next(c.detail for c in rep.checks if c.name == "python")
    assert next(c for c in rep.checks if c.name == "engine").detail.startswith("Docker ")


# serial: SNAPSHOT's /sys/module is the machine's kernel, whose modules the
# labs of make test's other xdist worker may load meanwhile (the Makefile's
# serial phase runs after the parallel one, alone)
@pytest.mark.serial
def test_a_host_without_ipset_lists_exactly_that_and_changes_nothing(bare: Lab) -> None:
    bare.mask("manager1", "/usr/sbin/ipset")
    try:
        gone = bare.exec("manager1", ["sh", "-c", "command -v ipset; ls /usr/sbin/ipset /sbin/ipset"], check=False)
        assert gone.returncode != 0 and "ipset" not in gone.stdout, f"ipset still there: {gone.stdout!r}"
        before = _snapshot(bare, "manager1")
        rep = _preflight_over_ssh(bare, "manager1")
        assert not rep.ok
        assert [c.name for c in rep.checks if not c.ok and not c.warning] == ["ipset"], rep.problems
        assert rep.problems == ["ipset: not found — the agent runs ipset (install: apt-get install -y ipset)"]
        assert rep.install == "apt-get install -y ipset"
        assert _snapshot(bare, "manager1") == before, "the preflight changed the host"
    finally:
        bare.mask("manager1", "/usr/sbin/ipset", present=True)
    assert bare.exec("manager1", ["sh", "-c", "command -v ipset"]).stdout.strip() == "/usr/sbin/ipset"


def test_a_host_whose_engine_is_stopped_says_it_is_unreachable(bare: Lab) -> None:
    bare.stop_daemon("worker1", "dockerd")
    try:
        rep = _preflight_over_ssh(bare, "worker1")
        failed = [c for c in rep.checks if not c.ok and not c.warning]
        assert [c.name for c in failed] == ["engine"], rep.problems
        assert "the container engine API is unreachable" in failed[0].detail and "/var/run/docker.sock" in failed[0].detail
        assert "dockerd is installed but not answering: start it" in failed[0].fix and rep.install == ""
    finally:
        bare.start_daemons("worker1", only=("dockerd",))
    assert _preflight_over_ssh(bare, "worker1").ok


def test_join_refuses_with_the_list_and_changes_nothing(lab_factory: Any) -> None:
    small: Lab = lab_factory(managers=1, workers=1)
    small.pyswarm("manager1", "init", "--advertise-addr", small.hosts["manager1"], "--dns-upstream", "none", timeout=120)
    token = small.pyswarm("manager1", "join-token", "worker", "-q", timeout=30).stdout.strip()
    join = ["join", "--token", token, small.hosts["manager1"]]
    small.mask("worker1", "/usr/sbin/ipset")
    try:
        keys = "cat /root/.ssh/authorized_keys; ls -A /var/lib/pyswarm"
        before = small.exec("worker1", ["sh", "-c", keys]).stdout
        res = small.pyswarm("worker1", *join, check=False, timeout=120)
        assert res.returncode != 0 and "Traceback" not in res.stderr, res
        assert "this host is not ready to join; nothing was changed" in res.stderr, res.stderr
        assert "  - ipset: not found" in res.stderr and "install what is missing with: apt-get install -y ipset" in res.stderr
        assert small.exec("worker1", ["sh", "-c", keys]).stdout == before, "a refused join changed the host"
    finally:
        small.mask("worker1", "/usr/sbin/ipset", present=True)
    small.pyswarm("worker1", *join, timeout=120)
    wait_for(lambda: len(small.wait_nodes_ready(timeout=60)) == 2, 60, "both nodes ready after the join")
