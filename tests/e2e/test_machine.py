"""``pyswarm machine init/add/ls/rm`` from the root namespace (the operator's
laptop) against bare lab hosts — the system's python3, sshd and dockerd,
none of this machine's pyswarm — over the lab's SSH config, then the
cluster driven through the context it made (docs/remote.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import operator_env, wait_for

from pyswarm.deploy.lab import Lab

pytestmark = pytest.mark.e2e

# what machine rm must leave no trace of, looked at from inside the host
LEFTOVERS = ("ls -A /opt/pyswarm /usr/local/bin/pyswarm /run/pyswarm /etc/systemd/system/pyswarm-manager.service "
             "2>/dev/null; ls -A /var/lib/pyswarm 2>/dev/null; grep -c pyswarm-cluster /root/.ssh/authorized_keys; "
             "iptables-save | grep -ci pyswarm; ipset list -n | grep -c '^psw-'; ip -o link show pswvx0 2>/dev/null; "
             "docker ps -aq --filter label=pyswarm.task.id; docker network ls -q --filter name=^pyswarm$")

# what a failed machine init must not change: the host's own /opt, /usr/local,
# /var/lib/pyswarm and /root, each directory's own entry and all below it, but
# not their parents (`ls -la`'s ".."): /, /usr and /var/lib are the machine's,
# where other pytest sessions' labs (make test's other xdist worker) make and
# remove their state directories meanwhile
HOST_OWN = "/opt /usr/local /var/lib/pyswarm /root"
HOST_LISTING = f"ls -ld {HOST_OWN}; ls -lAR {HOST_OWN} 2>&1"

# what a repeated machine add must not change: pyswarm's venv and state, each
# directory's own entry too, but not /var/lib's (the ".." of /var/lib/pyswarm):
# /var/lib is the machine's, shared with every lab, whose e2e state directories
# other pytest sessions (make test's other xdist worker) make and remove meanwhile
STATE_LISTING = ("ls -la --time-style=full-iso /opt/pyswarm/venv/bin; ls -ld --time-style=full-iso /var/lib/pyswarm; "
                 "ls -lA --time-style=full-iso /var/lib/pyswarm")


class Laptop:
    """The operator's side: the lab's SSH config, a config dir of its own."""

    def __init__(self, lab: Lab, home: Path) -> None:
        self.env = operator_env(PYSWARM_SSH_CONFIG=str(lab.ssh_config), XDG_CONFIG_HOME=str(home))

    def run(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        # an install takes 20-80 s on the shared machine, several minutes when it is saturated
        timeout = timeout or (600 if args[:1] == ("machine",) else 240)
        exe = str(Path(sys.executable).parent / "pyswarm")
        res = subprocess.run([exe, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            pytest.fail(f"laptop$ pyswarm {' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}",
                        pytrace=False)
        return res


API_GROUP = "pyswarm-api"


@pytest.fixture(scope="module")
def bare(lab_factory: Any) -> Lab:
    made: Lab = lab_factory(managers=2, workers=1, bare=True)
    # login users of the hosts' own user databases, with the lab's operator key
    made.add_user("worker1", "deploy", sudo=True)  # passwordless sudo: machine add/rm go through it
    made.add_user("worker1", "guest")  # neither root nor sudo
    for manager in ("manager1", "manager2"):  # manager1's machine init --api-group; manager2 gets it from the cluster
        made.add_user(manager, "ops", groups=[API_GROUP])
        made.add_user(manager, "guest")  # in neither root nor the group
    return made


@pytest.fixture(scope="module")
def laptop(bare: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Laptop]:
    yield Laptop(bare, tmp_path_factory.mktemp("laptop"))


def _sh(lab: Lab, host: str, script: str) -> str:
    return str(lab.exec(host, ["sh", "-c", script], check=False, timeout=60).stdout)


def test_a_failed_preflight_lists_what_is_missing_and_changes_nothing(bare: Lab, laptop: Laptop) -> None:
    bare.mask("manager1", "/usr/sbin/ipset")
    try:
        before = _sh(bare, "manager1", HOST_LISTING)
        res = laptop.run("machine", "init", "manager1", "--name", "bare", check=False)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res
        problems = [line for line in res.stderr.splitlines() if line.startswith("  - ")]
        assert len(problems) == 1 and problems[0].startswith("  - ipset"), res.stderr
        assert "nothing was changed" in res.stderr and "apt-get install -y ipset" in res.stderr, res.stderr
        assert _sh(bare, "manager1", HOST_LISTING) == before
        assert "bare" not in laptop.run("context", "ls").stdout
    finally:
        bare.mask("manager1", "/usr/sbin/ipset", present=True)


def test_a_user_without_passwordless_sudo_is_told_so(bare: Lab, laptop: Laptop) -> None:
    res = laptop.run("machine", "init", "guest@worker1", "--name", "nosudo", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res
    assert "user guest is not root and has no passwordless sudo" in res.stderr, res.stderr
    assert "NOPASSWD" in res.stderr and "nosudo" not in laptop.run("context", "ls").stdout
    assert _sh(bare, "worker1", "ls -d /opt/pyswarm 2>/dev/null; ls -A /var/lib/pyswarm") == "", "a refused machine init changed worker1"


def test_init_add_and_a_stack_through_the_context(bare: Lab, laptop: Laptop, tmp_path: Path) -> None:
    out = laptop.run("machine", "init", "manager1", "--name", "bare", f"--api-group={API_GROUP}").stdout
    assert "is now the first manager of a new cluster; context bare is the current one" in out, out
    assert "bare *" in laptop.run("context", "ls").stdout
    # a sudo user: preflight, install and join all through `sudo -n`
    assert "joined as a worker" in laptop.run("machine", "add", "deploy@worker1").stdout
    assert "joined as a manager" in laptop.run("machine", "add", "manager2", "--manager").stdout
    # a bare host got pyswarm from the wheels the laptop shipped, not this machine's venv
    assert _sh(bare, "worker1", "readlink /usr/local/bin/pyswarm; /opt/pyswarm/venv/bin/pyswarm --version").split()[:2] \
        == ["/opt/pyswarm/venv/bin/pyswarm", "pyswarm"]
    before = _sh(bare, "worker1", STATE_LISTING)
    again = laptop.run("machine", "add", "deploy@worker1")
    assert "was already a worker: nothing changed" in again.stdout, again
    assert _sh(bare, "worker1", STATE_LISTING) == before
    rows = laptop.run("machine", "ls", "--format", "json").stdout
    assert all(f'"name": "{h}"' in rows for h in bare.hosts) and rows.count('"status": "ready"') == 3, rows
    stack = tmp_path / "web.yml"
    stack.write_text("services:\n  web:\n    image: pyswarm-lab/busybox:latest\n    command: [\"sleep\", \"600\"]\n")
    laptop.run("stack", "deploy", "-c", str(stack), "site")
    laptop.run("service", "scale", "site_web=3")
    wait_for(lambda: '"replicas": "3/3"' in laptop.run("service", "ls", "--format", "json").stdout, 90,
             "site_web 3/3 through the context", observe=lambda: laptop.run("service", "ps", "site_web").stdout)


@pytest.mark.parametrize("manager", ["manager1", "manager2"])
def test_the_api_group_may_use_the_remote_cli_and_no_one_else(bare: Lab, laptop: Laptop, manager: str) -> None:
    # manager1 is the machine init --api-group one; manager2 was added with
    # machine add --manager and no flag: the group is the cluster's
    for _ in range(2):  # the first makes the kept connection, the second rides its forward
        member = laptop.run("--host", f"ssh://ops@{manager}", "node", "ls", "--format", "json")
        assert all(f'"hostname": "{h}"' in member.stdout for h in bare.hosts), member
    for _ in range(2):  # and the kept connection of one who may not lets no one in either
        refused = laptop.run("--host", f"ssh://guest@{manager}", "node", "ls", check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused
        assert f"only root or members of group {API_GROUP} may use this manager's API" in refused.stderr, \
            refused.stderr
        assert "guest has no passwordless sudo" in refused.stderr, refused.stderr


def _context_hosts(laptop: Laptop) -> list[str]:
    hosts: list[str] = json.loads(laptop.run("context", "inspect", "bare").stdout)[0]["hosts"]
    return hosts


def _kept(laptop: Laptop, url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The laptop CLI's kept connection to ``url`` (pyswarm/ssh_keep.py)."""
    from pyswarm import ssh_keep

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # the laptop's environment has none
    kept = ssh_keep.Kept.of(url, [laptop.env["PYSWARM_SSH_CONFIG"]])
    assert kept is not None, "keeping is on by default"
    return kept


def test_a_stopped_manager_and_the_cli_goes_on_through_the_next(bare: Lab, laptop: Laptop,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = _context_hosts(laptop)[0]
    assert first == "ssh://manager1", first
    kept = _kept(laptop, first, monkeypatch)
    laptop.run("service", "ls")  # through manager1: its connection is kept, and used below
    assert kept.master_running(), f"nothing kept in {kept.dir} for {first}"
    pidfile = bare.host("manager1").private("/run/pyswarm/manager.pid")
    pid = int(pidfile.read_text())
    os.kill(pid, 15)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
             30, "manager1's manager stopped")
    try:
        res = laptop.run("service", "ls")  # manager1's kept forward is refused: dial-stdio says why, next
        assert "site_web" in res.stdout, res
        assert kept.master_running(), "the master of a host that still answers SSH is kept"
    finally:
        bare.exec("manager1", ["pyswarm", "manager", "start"], timeout=90)
    wait_for(lambda: laptop.run("--host", "ssh://manager1", "service", "ls", check=False).returncode == 0, 60,
             "manager1 answering again")


def test_a_kept_connection_to_a_host_gone_away_is_dropped_and_the_next_tried(
        bare: Lab, laptop: Laptop, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyswarm.remote import parse_target

    hosts = _context_hosts(laptop)
    assert len(hosts) == 2, hosts
    first = hosts[0]
    kept = _kept(laptop, first, monkeypatch)
    laptop.run("service", "ls")  # through the first manager: its connection is kept
    assert kept.master_running() and kept.forward.exists(), f"nothing kept in {kept.dir} for {first}"
    # the host stops answering the laptop (only the laptop: the cluster's own
    # SSH to it goes on), with the master and its forward still up here
    host = parse_target(first).host
    rule = ["INPUT", "-p", "tcp", "-s", bare.bridge_addr, "--dport", "22", "-j", "DROP"]
    bare.exec(host, ["iptables", "-I", *rule])
    try:
        res = laptop.run("service", "ls", timeout=180)  # no hang: the kept one is dropped, the next tried
        assert "site_web" in res.stdout, res
        assert not kept.master_running() and not kept.control.exists() and not kept.forward.exists(), \
            f"left in {kept.dir}: {sorted(p.name for p in kept.dir.glob(kept.key + '*'))}"
    finally:
        bare.exec(host, ["iptables", "-D", *rule])
    wait_for(lambda: laptop.run("--host", first, "service", "ls", check=False).returncode == 0, 60,
             f"{first} answering the laptop again")


def _leader_and_survivor(laptop: Laptop) -> tuple[str, str]:
    """The bare lab's two managers, as `machine ls` from the laptop names them."""
    rows = json.loads(laptop.run("machine", "ls", "--format", "json").stdout)
    managers = {r["name"]: r["manager_status"] for r in rows if r["role"] == "manager"}
    assert sorted(managers) == ["manager1", "manager2"], rows
    leader = next(h for h, status in managers.items() if status == "leader")
    return leader, next(h for h in managers if h != leader)


def test_leave_force_of_the_leading_manager_hands_over_first(bare: Lab, laptop: Laptop) -> None:
    # `pyswarm leave --force` on a manager takes the demotion path
    # (manager/demotion.py): leadership moves, Raft drops it, then it stops
    leader, survivor = _leader_and_survivor(laptop)
    refused = bare.exec(leader, ["pyswarm", "leave"], check=False, timeout=60)
    assert refused.returncode != 0 and "use `pyswarm leave --force`" in refused.stderr, refused
    bare.exec(leader, ["pyswarm", "leave", "--force"], timeout=120)
    assert _sh(bare, leader, "ls /var/lib/pyswarm/manager.json /var/lib/pyswarm/node.json 2>/dev/null; "
               "cat /run/pyswarm/manager.pid 2>/dev/null | xargs -r ps -o pid= -p") == "", \
        f"{leader} still has its manager state or process after leave --force"
    # the survivor leads a one-manager cluster and takes writes at once
    laptop.run("network", "create", "after-leave")
    laptop.run("network", "rm", "after-leave")

    def survivor_alone() -> bool:
        rows = json.loads(laptop.run("machine", "ls", "--format", "json").stdout)
        return [(r["name"], r["manager_status"]) for r in rows if r["role"] == "manager"] == [(survivor, "leader")]

    wait_for(survivor_alone, 60, f"{survivor} the only manager, leading",
             observe=lambda: laptop.run("machine", "ls").stdout)
    # back as a manager for what follows (the host keeps its install: a join)
    assert "joined as a manager" in laptop.run("machine", "add", leader, "--manager").stdout

    def two_managers() -> bool:
        rows = json.loads(laptop.run("machine", "ls", "--format", "json").stdout)
        return sorted(r["name"] for r in rows if r["role"] == "manager" and r["status"] == "ready") \
            == ["manager1", "manager2"]

    wait_for(two_managers, 90, "both managers ready again", observe=lambda: laptop.run("machine", "ls").stdout)


def test_machine_rm_leaves_nothing_of_pyswarm(bare: Lab, laptop: Laptop) -> None:
    assert _sh(bare, "worker1", "ls /opt/pyswarm; iptables-save | grep -c PYSWARM").split()[-1] != "0"
    laptop.run("stack", "rm", "site")
    out = laptop.run("machine", "rm", "worker1")  # through deploy@worker1's sudo, as it was added
    assert "worker1 (deploy@worker1) removed" in out.stdout, out
    left = _sh(bare, "worker1", LEFTOVERS).split()
    assert left == ["0", "0", "0"], f"left on worker1 after machine rm: {left}"
    rows = laptop.run("machine", "ls").stdout
    assert "worker1" not in rows and "manager2" in rows, rows


def test_machine_rm_of_one_of_two_managers_keeps_the_other_serving(bare: Lab, laptop: Laptop) -> None:
    # the leader is the hard case: leadership must move off it before Raft
    # can take it out, and it must not stop before that change commits
    leader, survivor = _leader_and_survivor(laptop)
    out = laptop.run("machine", "rm", leader)
    assert f"{leader} ({leader}) removed" in out.stdout, out
    # the survivor is a one-manager cluster that takes writes at once
    laptop.run("network", "create", "after-rm")
    laptop.run("network", "rm", "after-rm")
    rows = json.loads(laptop.run("machine", "ls", "--format", "json").stdout)
    assert [(r["name"], r["manager_status"]) for r in rows] == [(survivor, "leader")], rows
    left = _sh(bare, leader, LEFTOVERS).split()
    assert left == ["0", "0", "0"], f"left on {leader} after machine rm: {left}"


def test_an_engine_that_is_down_is_named_and_nothing_changes(bare: Lab, laptop: Laptop) -> None:
    bare.stop_daemon("worker1", "dockerd")  # worker1 is clean again after machine rm
    try:
        res = laptop.run("machine", "add", "worker1", check=False)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res
        problems = [line for line in res.stderr.splitlines() if line.startswith("  - ")]
        assert len(problems) == 1 and "engine API is unreachable" in problems[0], res.stderr
        assert _sh(bare, "worker1", "ls -A /opt/pyswarm /usr/local/bin/pyswarm 2>/dev/null; ls -A /var/lib/pyswarm"
                   ).split() == [], "machine add changed worker1 though its preflight failed"
        assert "worker1" not in laptop.run("machine", "ls").stdout
    finally:
        bare.start_daemons("worker1", only=("dockerd",))
