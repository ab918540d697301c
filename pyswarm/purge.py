"""Remove everything pyswarm put on this host: ``pyswarm machine rm``'s last step.

Run over SSH as ``python3 - --json [--route SUBNET ...] < purge.py`` (as
root), after the node has left the cluster, so it may not rely on pyswarm
being installed: the standard library only, in the syntax of old Python 3
(as pyswarm/preflight.py). It removes, and reports what it removed:

- the manager (systemd unit ``pyswarm-manager.service``, or the process in
  /run/pyswarm/manager.pid) and the agents (``pyswarm worker --stdio``
  sessions of this host's mount namespace);
- task containers (label ``pyswarm.task.id``) and the ``pyswarm`` engine
  network, through the engine's API socket;
- iptables rules tagged ``--comment pyswarm`` and the ``PYSWARM-*`` chains,
  the ``psw-*`` ipsets, the VXLAN device ``pswvx0`` and the routes to other
  nodes' subnets (``--route``);
- the cluster key's line in root's authorized_keys;
- /opt/pyswarm (the venv), /usr/local/bin/pyswarm, /var/lib/pyswarm,
  /run/pyswarm, /var/log/pyswarm, the unit file.

Everything is attempted; what failed is reported and the exit status is 1.
Running it again on a clean host removes nothing and succeeds.
"""

import argparse
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

UNIT = "pyswarm-manager.service"
UNIT_FILE = "/etc/systemd/system/" + UNIT
TASK_LABEL = "pyswarm.task.id"  # protocol.LABEL_TASK_ID
NETWORK = "pyswarm"  # protocol.NETWORK_NAME
CHAIN_PREFIX = "PYSWARM-"
SET_PREFIX = "psw-"
VXLAN_DEV = "pswvx0"
KEY_COMMENT = "pyswarm-cluster"
PATHS = ("/opt/pyswarm", "/var/lib/pyswarm", "/run/pyswarm", "/var/log/pyswarm", UNIT_FILE)
LINK = "/usr/local/bin/pyswarm"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Purge(object):
    def __init__(self) -> None:
        self.removed = []  # type: List[str]
        self.failed = []  # type: List[str]

    def cmd(self, argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
        env = dict(os.environ, PATH=SBIN_PATH)
        return subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=env)

    def must(self, what: str, argv: Sequence[str]) -> None:
        res = self.cmd(argv)
        if res.returncode == 0:
            self.removed.append(what)
        else:
            self.failed.append("{}: {}".format(what, res.stderr.strip()[-300:]))


# -- processes ---------------------------------------------------------------------


def _mnt_ns(pid: str) -> str:
    try:
        return os.readlink("/proc/{}/ns/mnt".format(pid))
    except OSError:
        return ""


def _ours(cmdline: List[bytes]) -> Optional[str]:
    """'agent' or 'manager' when this is one of pyswarm's processes."""
    if not any(part.endswith(b"pyswarm") for part in cmdline[:3]):
        return None
    if b"worker" in cmdline and b"--stdio" in cmdline:
        return "agent"
    if b"manager" in cmdline and b"run" in cmdline:
        return "manager"
    return None


def stop_processes(p: Purge) -> None:
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        if os.path.exists(UNIT_FILE):
            p.must("unit " + UNIT, ["systemctl", "disable", "--now", UNIT])
    mine = _mnt_ns("self")
    found = {}  # type: Dict[int, str]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/{}/cmdline".format(pid), "rb") as fh:
                cmdline = fh.read().split(b"\0")
        except OSError:
            continue
        kind = _ours(cmdline)
        if kind and int(pid) != os.getpid() and _mnt_ns(pid) == mine:
            found[int(pid)] = kind
    for victim in found:
        try:
            os.kill(victim, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + 10
    while found and time.time() < deadline:
        found = {v: k for v, k in found.items() if _alive(v)}
        time.sleep(0.1)
    for victim in found:
        try:
            os.kill(victim, signal.SIGKILL)
        except OSError:
            pass
    if found:
        p.removed.append("killed {} process(es) that ignored SIGTERM".format(len(found)))


def _alive(pid: int) -> bool:
    try:
        with open("/proc/{}/stat".format(pid)) as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


# -- the engine -------------------------------------------------------------------


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        http.client.HTTPConnection.__init__(self, "localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.path)
        self.sock = sock


def engine_socket() -> Optional[str]:
    host = os.environ.get("DOCKER_HOST", "")
    candidates = [host[len("unix://"):]] if host.startswith("unix://") else []
    candidates += ["/var/run/docker.sock", "/run/podman/podman.sock"]
    for path in candidates:
        if os.path.exists(path):
            return path
    return None


def _api(path: str, method: str, url: str) -> Any:
    conn = _UnixHTTP(path)
    try:
        conn.request(method, url)
        res = conn.getresponse()
        body = res.read()
        if res.status >= 400 and res.status != 404:
            raise OSError("{} {}: HTTP {} {}".format(method, url, res.status, body[:200].decode("utf-8", "replace")))
        return json.loads(body) if body and res.status < 300 and method == "GET" else None
    finally:
        conn.close()


def remove_containers(p: Purge) -> None:
    path = engine_socket()
    if path is None:
        return
    try:
        filters = json.dumps({"label": [TASK_LABEL]})
        from urllib.parse import quote

        for c in _api(path, "GET", "/containers/json?all=1&filters=" + quote(filters)) or []:
            _api(path, "DELETE", "/containers/{}?force=1&v=1".format(c["Id"]))
            p.removed.append("container " + c["Id"][:12])
        nets = _api(path, "GET", "/networks?filters=" + quote(json.dumps({"name": [NETWORK]}))) or []
        for n in nets:
            if n.get("Name") == NETWORK:
                _api(path, "DELETE", "/networks/" + n["Id"])
                p.removed.append("engine network " + NETWORK)
    except (OSError, ValueError, KeyError) as exc:
        p.failed.append("engine at {}: {}".format(path, exc))


# -- the network ------------------------------------------------------------------


def remove_firewall(p: Purge) -> None:
    if not shutil.which("iptables", path=SBIN_PATH):
        return
    for table in ("filter", "nat", "mangle"):
        listing = p.cmd(["iptables", "-w", "-t", table, "-S"])
        if listing.returncode != 0:
            continue
        chains = []
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-N"] and words[1].startswith(CHAIN_PREFIX):
                chains.append(words[1])
            elif words[:1] == ["-A"] and not words[1].startswith(CHAIN_PREFIX) and _comment(words) == "pyswarm":
                p.must("iptables -t {} rule in {}".format(table, words[1]), ["iptables", "-w", "-t", table, "-D"] + words[1:])
        for chain in chains:
            p.cmd(["iptables", "-w", "-t", table, "-F", chain])
        for chain in chains:
            p.must("iptables -t {} chain {}".format(table, chain), ["iptables", "-w", "-t", table, "-X", chain])
    if shutil.which("ipset", path=SBIN_PATH):
        sets = p.cmd(["ipset", "list", "-n"])
        for name in sets.stdout.split() if sets.returncode == 0 else []:
            if name.startswith(SET_PREFIX):
                p.must("ipset " + name, ["ipset", "destroy", name])


def _comment(words: List[str]) -> str:
    i = words.index("--comment") if "--comment" in words else -1
    return words[i + 1] if 0 <= i < len(words) - 1 else ""


def remove_links(p: Purge, routes: Sequence[str]) -> None:
    if not shutil.which("ip", path=SBIN_PATH):
        return
    if p.cmd(["ip", "link", "show", VXLAN_DEV]).returncode == 0:
        p.must("device " + VXLAN_DEV, ["ip", "link", "del", VXLAN_DEV])
    for subnet in routes:
        if p.cmd(["ip", "route", "show", subnet]).stdout.strip():
            p.must("route " + subnet, ["ip", "route", "del", subnet])


# -- files ------------------------------------------------------------------------


def remove_key(p: Purge) -> None:
    path = os.path.join(os.path.expanduser("~root"), ".ssh", "authorized_keys")
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return
    kept = [line for line in lines if KEY_COMMENT not in line]
    if len(kept) != len(lines):
        with open(path, "w") as fh:
            fh.write("".join(line + "\n" for line in kept))
        p.removed.append("cluster key in " + path)


def remove_files(p: Purge) -> None:
    if os.path.islink(LINK) or os.path.exists(LINK):
        target = os.path.realpath(LINK)
        if target.startswith("/opt/pyswarm/"):
            os.unlink(LINK)
            p.removed.append(LINK)
    for path in PATHS:
        if os.path.isdir(path) and not os.path.islink(path):
            _empty(p, path)
            try:
                os.rmdir(path)
            except OSError:
                pass  # a mount point (the lab binds /var/lib/pyswarm): emptied is gone enough
            p.removed.append(path)
        elif os.path.lexists(path):
            os.unlink(path)
            p.removed.append(path)
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        p.cmd(["systemctl", "daemon-reload"])


def _empty(p: Purge, path: str) -> None:
    for name in os.listdir(path):
        full = os.path.join(path, name)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        except OSError as exc:
            p.failed.append("{}: {}".format(full, exc))


def run(routes: Sequence[str]) -> Dict[str, Any]:
    p = Purge()
    for step in (stop_processes, remove_containers, remove_firewall):
        step(p)
    remove_links(p, routes)
    remove_key(p)
    remove_files(p)
    return {"ok": not p.failed, "removed": p.removed, "failed": p.failed}


def source() -> str:
    """This file's text, to run on a host as ``python3 - --json < purge.py``."""
    with open(__file__) as fh:
        return fh.read()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="purge", description="remove everything pyswarm put on this host")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--route", action="append", default=[], metavar="SUBNET",
                    help="a route to another node's container subnet to remove")
    args = ap.parse_args(argv)
    rep = run(args.route)
    if args.json:
        print(json.dumps(rep))
    else:
        for line in rep["removed"]:
            print("removed " + line)
        for line in rep["failed"]:
            print("FAILED " + line)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
