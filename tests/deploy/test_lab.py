"""The namespace lab: hosts that look like separate machines, and a clean down.

These run the real thing (root, dockerd, sshd). One bare lab (no cluster)
serves the checks on hosts; the down tests bring up their own labs so they
can look at the machine before and after.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

from pyswarm.deploy import lab_host
from pyswarm.deploy.lab import IMAGE, Lab, LabError, pyswarm_executable
from pyswarm.deploy.lab_sys import pid_alive, processes_in, root_forward_filters

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def bare(lab_factory: Any) -> Lab:
    """1 manager + 2 workers, no cluster."""
    made: Lab = lab_factory(managers=1, workers=2)
    return made


def _out(lab: Lab, host: str, *argv: str) -> str:
    return str(lab.exec(host, list(argv), timeout=30).stdout).strip()


def test_hosts_are_named_and_addressed_like_separate_machines(bare: Lab) -> None:
    assert list(bare.hosts) == ["manager1", "worker1", "worker2"]
    seen = {}
    for host, addr in bare.hosts.items():
        hostname = _out(bare, host, "hostname")
        eth0 = _out(bare, host, "ip", "-4", "-o", "addr", "show", "eth0")
        seen[host] = (hostname, eth0)
        assert hostname == host, f"{host}: hostname is {hostname!r}"
        assert f"inet {addr}/24" in eth0, f"{host}: eth0 is {eth0!r}, expected {addr}"
    assert _out(bare, "worker1", "cat", "/run/docker.pid") != _out(bare, "worker2", "cat", "/run/docker.pid"), seen


def test_hosts_reach_each_other_across_the_bridge(bare: Lab) -> None:
    failures = []
    for src in bare.hosts:
        for dst, addr in bare.hosts.items():
            if src != dst:
                res = bare.exec(src, ["busybox", "ping", "-c", "1", "-W", "2", addr], check=False, timeout=10)
                if res.returncode != 0:
                    failures.append(f"{src} -> {dst} ({addr}): {res.stdout.strip()} {res.stderr.strip()}")
    assert not failures, "\n".join(failures)


def test_each_host_has_its_own_dockerd_with_the_lab_image(bare: Lab) -> None:
    roots = {}
    for host in bare.hosts:
        info = json.loads(_out(bare, host, "docker", "info", "--format", "{{json .}}"))
        roots[host] = info["DockerRootDir"]
        assert info["Name"] == host, f"{host}: engine reports name {info['Name']!r}"
        assert str(bare.dir) in info["DockerRootDir"], f"{host}: data root {info['DockerRootDir']} is outside the lab"
        bare.docker(host, "image", "inspect", IMAGE)
    assert len(set(roots.values())) == len(roots), roots
    res = bare.docker("worker1", "run", "--rm", IMAGE, "sh", "-c", "hostname >/dev/null && ls /bin/busybox /www && echo ok", timeout=60)
    assert res.stdout.strip().endswith("ok"), res


def test_each_host_runs_sshd_that_takes_roots_key(bare: Lab, tmp_path: Path) -> None:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text()
    machine_keys = Path("/root/.ssh/authorized_keys")
    before = machine_keys.read_text() if machine_keys.exists() else None
    for host, addr in bare.hosts.items():
        bare.exec(host, ["sh", "-c", "cat >> /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys"], input=pub)
        res = subprocess.run(
            ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=5", f"root@{addr}", "hostname"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert res.returncode == 0 and res.stdout.strip() == host, f"ssh root@{addr}: rc={res.returncode} {res.stdout!r} {res.stderr!r}"
    after = machine_keys.read_text() if machine_keys.exists() else None
    assert after == before, "the lab wrote into the machine's own /root/.ssh/authorized_keys"


def test_each_host_has_its_own_host_key(bare: Lab) -> None:
    keys = {h: _out(bare, h, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()[1] for h in bare.hosts}
    assert len(set(keys.values())) == len(keys), keys
    machine = Path("/etc/ssh/ssh_host_ed25519_key.pub")
    if machine.exists():
        assert machine.read_text().split()[1] not in keys.values(), "a host uses the machine's own host key"


def test_exec_passes_exit_status_and_stdio(bare: Lab) -> None:
    assert bare.exec("worker1", ["sh", "-c", "exit 3"], check=False).returncode == 3
    with pytest.raises(LabError, match=r"worker1: .*exited 4"):
        bare.exec("worker1", ["sh", "-c", "echo boom >&2; exit 4"])
    assert bare.exec("worker2", ["cat"], input="hello\n").stdout == "hello\n"
    env = {**os.environ, "PYSWARM_LAB_DIR": str(bare.dir)}
    cli = subprocess.run(
        [pyswarm_executable(), "lab", "exec", "worker2", "--", "sh", "-c", 'read x; echo "got $x on $(hostname)"; exit 5'],
        input="hi\n", capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert (cli.returncode, cli.stdout) == (5, "got hi on worker2\n"), cli
    bad = subprocess.run([pyswarm_executable(), "lab", "exec", "nosuch", "--", "true"], capture_output=True, text=True, env=env, timeout=30)
    assert bad.returncode == 1 and "no lab host 'nosuch'" in bad.stderr and "Traceback" not in bad.stderr, bad


def test_status_json_lists_hosts_and_daemons(bare: Lab) -> None:
    env = {**os.environ, "PYSWARM_LAB_DIR": str(bare.dir)}
    res = subprocess.run([pyswarm_executable(), "lab", "status", "--format", "json"], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0, res
    rows = json.loads(res.stdout)
    assert [(r["name"], r["address"], r["sshd"], r["dockerd"]) for r in rows] == [
        (h, a, True, True) for h, a in bare.hosts.items()
    ], rows


# ---------------------------------------------------------------- down


# the comment a lab's root-namespace rule carries (deploy/lab_core.py: its FORWARD ACCEPT for its bridge)
LAB_RULE_TAG = re.compile(r'--comment "?pyswarm-lab:([^" ]+)"?')


def _snapshot() -> dict[str, Any]:
    """What a lab could leave on the machine, seen from the root namespace."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    ipt = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    ipt_lines = sorted(re.sub(r"\[\d+:\d+\]", "", ln) for ln in ipt.splitlines() if ln and not ln.startswith("#"))
    cg = Path("/sys/fs/cgroup/pids")
    return {
        "netns": set(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else set(),
        "links": set(os.listdir("/sys/class/net")),
        "mounts": set(mounts),
        "cgroups": {p.name for p in cg.iterdir() if p.is_dir()} if cg.is_dir() else set(),
        "iptables": ipt_lines,
    }


def _assert_nothing_left(before: dict[str, Any], lab: Lab, namespaces: dict[str, set[int]], pids: list[int]) -> None:
    after = _snapshot()
    # only what this lab made counts: other pytest sessions on the machine may
    # bring their own labs up meanwhile (names and directories are per lab)
    def ours(item: str) -> bool:
        return item.startswith(lab.name) or item.startswith(f"/run/netns/{lab.name}-") or str(lab.dir) in item
    left = {k: sorted(i for i in after[k] - before[k] if ours(i)) for k in ("netns", "links", "mounts", "cgroups")}
    left = {k: v for k, v in left.items() if v}
    assert not left, f"lab down left: {left}"
    # every table, chain, policy and rule of the root namespace, except the
    # rules another lab tagged as its own: those come and go with the labs of
    # other pytest sessions (make test's other xdist worker). This lab's rule
    # and anything untagged still count.
    def not_another_labs(rules: list[str]) -> list[str]:
        return [r for r in rules if (m := LAB_RULE_TAG.search(r)) is None or m.group(1) == lab.name]
    was, now = not_another_labs(before["iptables"]), not_another_labs(after["iptables"])
    assert now == was, f"root iptables changed:\nbefore {was}\nafter  {now}"
    assert not processes_in(namespaces), f"processes left in lab namespaces: {processes_in(namespaces)}"
    assert not [p for p in pids if pid_alive(p)], f"lab daemons still alive: {[p for p in pids if pid_alive(p)]}"
    assert not lab.dir.exists(), f"{lab.dir} still exists: {list(lab.dir.rglob('*'))[:20]}"
    assert lab.leftovers() == []


def _namespaces(lab: Lab) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {"mnt": set(), "net": set(), "uts": set()}
    for h in lab.hosts:
        for kind, ino in lab.host(h).ns.items():
            found[kind].add(ino)
    return found


def test_down_leaves_nothing_and_is_idempotent(tmp_path: Path, new_lab_spec: Any) -> None:
    before = _snapshot()
    name, subnet = new_lab_spec()
    lab = Lab(tmp_path / "lab", name=name, subnet=subnet)
    lab.up(managers=1, workers=1, cluster=False)
    try:
        # things down must find on its own: a container, a stray process, a key
        lab.docker("worker1", "run", "-d", IMAGE, "sleep", "600", timeout=60)
        lab.exec("manager1", ["sh", "-c", "sleep 600 >/dev/null 2>&1 &"])
        lab.exec("manager1", ["sh", "-c", "echo key > /root/.ssh/authorized_keys"])
        wait_for(lambda: "Up" in lab.docker("worker1", "ps", "--format", "{{.Status}}").stdout, 30, "the container on worker1 to run")
        namespaces = _namespaces(lab)
        pids = [p for h in lab.hosts for p in lab.host(h).pids.values()]
        assert processes_in(namespaces), "found no processes in the lab's namespaces before down (the check is blind)"
        if root_forward_filters():  # the lab added its tagged rule: the filter above keeps it in view
            tagged = [r for r in _snapshot()["iptables"] if (m := LAB_RULE_TAG.search(r)) and m.group(1) == lab.name]
            assert len(tagged) == 1, f"the lab's own root FORWARD rule is not seen as its own: {tagged}"
    finally:
        lab.down()
    _assert_nothing_left(before, lab, namespaces, pids)
    lab.down()  # again: nothing to do, no error
    Lab(tmp_path / "lab").down()  # and with no state at all


def test_down_cleans_up_a_failed_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_lab_spec: Any) -> None:
    before = _snapshot()
    name, subnet = new_lab_spec()

    def broken(self: lab_host.LabHost, spawn: Any) -> None:
        raise LabError(f"{self.name}: simulated failure while starting daemons")

    monkeypatch.setattr(lab_host.LabHost, "start_daemons", broken)
    lab = Lab(tmp_path / "lab", name=name, subnet=subnet)
    with pytest.raises(LabError, match="simulated failure"):
        lab.up(managers=1, workers=1, cluster=False)
    assert lab.state_file.exists(), "a failed up must leave its state for down"
    namespaces = _namespaces(Lab.current(lab.dir))
    Lab.current(lab.dir).down()
    _assert_nothing_left(before, lab, namespaces, [])


def test_up_twice_replaces_the_lab(lab_factory: Any) -> None:
    first: Lab = lab_factory(managers=1, workers=0)
    old_pid = first.host("manager1").pids["dockerd"]
    again = Lab(first.dir, name=first.name, subnet=str(first.subnet))
    try:
        again.up(managers=1, workers=0, cluster=False)
        assert not pid_alive(old_pid), "the first lab's dockerd survived the second up"
        assert _out(again, "manager1", "hostname") == "manager1"
    finally:
        again.down()  # lab_factory's down of `first` knows only the first keeper: this one would be left running


def test_session_cluster_has_every_node_ready(lab: Lab) -> None:
    rows = json.loads(lab.pyswarm("manager1", "node", "ls", "--format", "json").stdout)
    seen = sorted((r["hostname"], r["role"], r["status"]) for r in rows)
    assert seen == [("manager1", "manager", "ready"), ("worker1", "worker", "ready"), ("worker2", "worker", "ready"), ("worker3", "worker", "ready")], seen


def test_labs_coming_up_side_by_side_keep_every_mountpoint(tmp_path: Path) -> None:
    # CI's two workers bring their labs up at once; one used to read the
    # other's half-written list (empty) and fail its lab up. flock holds
    # between threads too: each call opens the lock file anew.
    from concurrent.futures import ThreadPoolExecutor

    from pyswarm.deploy.lab_core import remember_mountpoints

    names = [f"/made/{i}" for i in range(400)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: remember_mountpoints([n], tmp_path), names))
    kept = json.loads((tmp_path / "mountpoints.json").read_text())
    assert sorted(kept) == sorted(names), f"{len(names) - len(kept)} of {len(names)} mount points lost"
