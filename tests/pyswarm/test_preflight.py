"""The host preflight's logic (pyswarm/preflight.py), on given facts, and the
file itself as it runs on a bare host: stdlib only, old-Python syntax.

Lab tests (a host without ipset, an engine that is down, a join refused)
are in tests/e2e/test_preflight.py.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyswarm import preflight, protocol
from pyswarm.deploy.lab_sys import TOOLS
from pyswarm.preflight import Check, Facts, Route
from pyswarm.worker import engine_api as engine
from pyswarm.worker import network

SYSTEM_PYTHON = "/usr/bin/python3"


def facts(**kw: Any) -> Facts:
    base = dict(system="Linux", machine="x86_64", distro="debian", distro_name="Debian GNU/Linux 12 (bookworm)", family="apt",
                python="3.11.2", libc="glibc", libc_version="2.36", kernel="6.1.0", time=1000.0)
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, family", [
    ('ID=debian\nVERSION_ID="12"\n', "apt"),
    ('ID=ubuntu\nID_LIKE=debian\n', "apt"),
    ('ID=fedora\n', "dnf"),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "dnf"),
    ('ID=alpine\n', "apk"),
    ('ID=arch\n', ""),
    ('', ""),
])
def test_distribution_gives_the_package_manager(text: str, family: str) -> None:
    assert preflight.family_of(preflight.os_release(text)) == family


def test_old_python_and_missing_venv_are_problems_with_their_package() -> None:
    old = preflight.check_python(facts(python="3.9.2"), find_spec=lambda m: object())
    assert [(c.name, c.ok) for c in old] == [("python", False), ("python-venv", True)] and ">= 3.11" in old[0].fix
    no_venv = preflight.check_python(facts(), find_spec=lambda m: None if m == "ensurepip" else object())
    assert [(c.name, c.ok) for c in no_venv] == [("python", True), ("python-venv", False)]
    assert preflight.install_command("apt", no_venv) == "apt-get install -y python3-venv"


def test_missing_commands_are_listed_with_the_install_command_of_the_distribution() -> None:
    present = {"ip": "/usr/sbin/ip", "iptables": "/usr/sbin/iptables", "iptables-restore": "/usr/sbin/iptables-restore"}
    checks = preflight.check_commands("routes", find=present.get)
    assert [c.name for c in checks if not c.ok] == ["ipset"]
    assert preflight.install_command("apt", checks) == "apt-get install -y ipset"
    assert preflight.install_command("dnf", [c for c in preflight.check_commands("vxlan", find=lambda c: None)]) == \
        "dnf install -y iproute ipset iptables-nft"
    assert preflight.install_command("apk", checks) == "apk add ipset"
    unknown = preflight.install_command("", checks)
    assert "apt: apt-get install -y ipset" in unknown and "dnf: dnf install -y ipset" in unknown and "apk: apk add ipset" in unknown


def test_engine_found_too_old_elsewhere_stopped_or_absent() -> None:
    docker = {"Version": "24.0.5", "ApiVersion": "1.43"}
    ok = preflight.check_engine("apt", ["/var/run/docker.sock"], probe=lambda p: docker)
    assert ok[0].ok and "Docker 24.0.5 (API 1.43)" in ok[0].detail
    old = preflight.check_engine("apt", ["/s"], probe=lambda p: {"Version": "19.03", "ApiVersion": "1.40"})
    assert not old[0].ok and ">= 1.41" in old[0].fix

    def podman_only(path: str) -> dict[str, Any]:
        if path != "/run/podman/podman.sock":
            raise FileNotFoundError(2, "No such file or directory")
        return {"Version": "4.3.1", "ApiVersion": "1.41", "Components": [{"Name": "Podman Engine"}]}

    pod = preflight.check_engine("dnf", preflight.engine_socket({}), probe=podman_only)
    assert not pod[0].ok and "Podman 4.3.1" in pod[0].detail and "podman-docker" in pod[0].fix

    def refused(path: str) -> dict[str, Any]:
        raise ConnectionRefusedError(111, "Connection refused")

    stopped = preflight.check_engine("apt", ["/var/run/docker.sock"], probe=refused, find=lambda c: "/usr/sbin/dockerd" if c == "dockerd" else None)
    assert not stopped[0].ok and "unreachable" in stopped[0].detail and "Connection refused" in stopped[0].detail
    assert "start it (systemctl enable --now docker)" in stopped[0].fix and not stopped[0].packages
    absent = preflight.check_engine("apk", ["/var/run/docker.sock"], probe=refused, find=lambda c: None)
    assert preflight.install_command("apk", absent) == "apk add docker" and "rc-update add docker" in absent[0].fix


def test_engine_socket_follows_docker_host_first() -> None:
    assert preflight.engine_socket({"DOCKER_HOST": "unix:///run/x.sock"})[0] == "/run/x.sock"
    assert preflight.engine_socket({}) == list(preflight.ENGINE_SOCKETS)


ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def _route(dev: str, dest: str, mask: str, gateway: bool) -> str:
    def hexle(addr: str) -> str:
        return bytes(int(x) for x in addr.split("."))[::-1].hex().upper()

    return f"{dev}\t{hexle(dest)}\t{'0101A8C0' if gateway else '00000000'}\t{'0003' if gateway else '0001'}\t0\t0\t0\t{hexle(mask)}\t0\t0\t0\n"


def test_routes_parse_proc_net_route() -> None:
    text = ROUTE_HEADER + _route("eth0", "0.0.0.0", "0.0.0.0", True) + _route("eth0", "192.168.1.0", "255.255.255.0", False)
    assert preflight.routes(text) == [Route("eth0", "0.0.0.0/0", True), Route("eth0", "192.168.1.0/24", False)]


def test_pool_collides_only_with_the_hosts_own_connected_routes() -> None:
    table = [Route("eth0", "0.0.0.0/0", True), Route("eth0", "10.250.0.0/24", False),
             Route(protocol.BRIDGE_NAME, "10.240.3.0/24", False), Route(network.VXLAN_DEV, "10.240.4.0/24", False)]
    assert [c.ok for c in preflight.check_pool("10.240.0.0/16", table)] == [True]
    vpn = preflight.check_pool("10.240.0.0/16", [*table, Route("tun0", "10.240.0.0/20", False)])
    assert not vpn[0].ok and "10.240.0.0/20 on tun0" in vpn[0].detail and "--default-addr-pool" in vpn[0].fix
    stale = preflight.check_pool("10.240.0.0/16", [*table, Route("eth0", "10.240.7.0/24", True)])
    assert [(c.name, c.ok, c.warning) for c in stale] == [("pool", True, False), ("pool-routes", False, True)]
    assert not preflight.check_pool("10.240.0.0/33", [])[0].ok


def test_clock_skew_against_the_manager() -> None:
    assert preflight.check_clock(1000.0, None) == []
    assert preflight.check_clock(1000.0, 998.0)[0].ok
    late = preflight.check_clock(1000.0, 1030.0)[0]
    assert not late.ok and late.detail == "-30.0 s from the manager"


def test_report_lists_every_problem_once_with_one_install_command() -> None:
    checks = [Check("ipset", False, "not found", "the agent runs ipset", ("ipset",)),
              Check("python-venv", False, "venv module missing: ensurepip", "", ("venv",)),
              Check("pool-routes", False, "gateway routes", "replaced", warning=True), Check("ip", True, "/usr/sbin/ip")]
    rep = preflight.report(facts(), checks)
    assert rep["ok"] is False and len(rep["problems"]) == 2 and len(rep["warnings"]) == 1
    assert rep["problems"][0] == "ipset: not found — the agent runs ipset (install: apt-get install -y ipset)"
    assert rep["install"] == "apt-get install -y ipset python3-venv"
    parsed = preflight.parse_report(json.dumps(rep))
    assert parsed.checks[0] == checks[0] and parsed.install == rep["install"] and parsed.host["libc_version"] == "2.36"
    assert preflight.report(facts(), checks[2:])["ok"] is True


@pytest.mark.parametrize("bad, says", [
    ("nope", "not JSON"), ("[]", "not a JSON object"), ('{"ok": 1}', "'ok' missing or not a bool"),
])
def test_parse_report_names_the_bad_field(bad: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        preflight.parse_report(bad)


def test_constants_agree_with_the_agent_and_the_package_table() -> None:
    assert preflight.OWN_DEVICES == (protocol.BRIDGE_NAME, network.VXLAN_DEV)
    assert ".".join(map(str, preflight.MIN_ENGINE_API)) == engine.API_VERSION
    for cmd, pkgs in preflight.PACKAGES.items():
        if cmd in TOOLS:
            assert TOOLS[cmd][0] == pkgs["apt"], f"{cmd}: deploy/lab_sys.py says {TOOLS[cmd][0]}, preflight says {pkgs['apt']}"


def test_the_file_is_stdlib_only_and_parses_as_old_python() -> None:
    text = preflight.source()
    ast.parse(text, feature_version=(3, 6))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"preflight imports {name}: it must run before pyswarm is installed"


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"no {SYSTEM_PYTHON}")
def test_runs_as_a_script_on_stdin_with_no_site_packages(tmp_path: Path) -> None:
    """As ``machine init`` runs it over SSH: ``python3 - --json < preflight.py``, here isolated (-I -S)."""
    res = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-", *preflight.script_args("vxlan", "10.240.0.0/16", 1.0)],
                         input=preflight.source(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert res.returncode in (0, 1) and not res.stderr, res
    rep = preflight.parse_report(res.stdout)
    names = [c.name for c in rep.checks]
    assert names[:4] == ["os", "arch", "python", "python-venv"] and {"engine", "ipset", "bridge", "vxlan", "pool", "clock"} <= set(names)
    clock = next(c for c in rep.checks if c.name == "clock")
    assert not clock.ok and rep.ok is False and any(p.startswith("clock: ") for p in rep.problems)
    assert rep.host["python"].startswith("3.") and rep.host["machine"]


def test_vxlan_loaded_available_or_missing(tmp_path: Path) -> None:
    root = str(tmp_path) + "/"
    missing = preflight.check_vxlan("6.1.0-test", root)[0]
    assert not missing.ok and "linux-modules-extra-6.1.0-test" in missing.fix
    moddir = tmp_path / "lib/modules/6.1.0-test"
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text("kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n")
    assert preflight.check_vxlan("6.1.0-test", root)[0].detail == "vxlan module available (loads on first use)"
    (tmp_path / "sys/module/vxlan").mkdir(parents=True)
    assert preflight.check_vxlan("6.1.0-test", root)[0].detail == "vxlan module loaded or built in"
