"""Low-level helpers for the namespace lab: commands, mounts, processes, cgroups.

Kept apart from :mod:`pyswarm.deploy.lab_core` so that the bring-up logic reads
as a sequence of steps, and so that ``down`` and the tests can share one
definition of "what the lab may have left behind" (namespaces by inode,
mounts by path, processes by namespace and cgroup).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from pyswarm.errors import PyswarmError

NSENTER = "nsenter"
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")


class LabError(PyswarmError):
    """The lab could not be brought up, used or torn down."""


class LabCommandError(LabError):
    """A command run inside a lab host failed; ``result`` holds what it printed."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(message)
        self.result = result


# Every command pyswarm's code runs on this machine (the agent and manager on
# the lab's hosts, which share it; the lab; the tests; the benchmarks): the
# Debian package that provides it, and the make step that installs it —
# DEPS: the Makefile's APT_PACKAGES (`make deps`, so `make demo`/`make test`),
# BENCH: its BENCH_APT_PACKAGES (`make bench` too), ESSENTIAL: on every Debian
# system already, WHERE_PRESENT: used only when found (systemd units).
# tests/deploy/test_tools.py scans the code for the commands it runs and fails
# when one is missing here or its package from the list of the target running it.
DEPS, BENCH, ESSENTIAL, WHERE_PRESENT = "deps", "bench", "essential", "where-present"
TOOLS: dict[str, tuple[str, str]] = {
    # the lab
    "ip": ("iproute2", DEPS),
    "unshare": ("util-linux", ESSENTIAL),
    "nsenter": ("util-linux", ESSENTIAL),
    "mount": ("mount", DEPS),
    "umount": ("mount", DEPS),
    "dockerd": ("docker.io", DEPS),
    "docker": ("docker.io", DEPS),
    "sshd": ("openssh-server", DEPS),
    "ssh-keygen": ("openssh-client", DEPS),
    "ssh": ("openssh-client", DEPS),
    "busybox": ("busybox-static", DEPS),
    # the agent on every host (worker/network.py, worker/ingress.py)
    "iptables": ("iptables", DEPS),
    "iptables-save": ("iptables", DEPS),
    "iptables-restore": ("iptables", DEPS),
    "ipset": ("ipset", DEPS),
    "bridge": ("iproute2", DEPS),  # the VXLAN overlay's forwarding entries
    # a host's python3 makes pyswarm's venv (bare lab hosts, `machine init`)
    "python3": ("python3-venv", DEPS),
    "systemctl": ("systemd", WHERE_PRESENT),
    # a non-root SSH user of dial-stdio and `machine` (passwordless); the bare lab hosts' sudo user (tests/e2e/test_machine.py)
    "sudo": ("sudo", DEPS),
    # tests and lab scripts
    "sh": ("dash", ESSENTIAL),
    "bash": ("bash", ESSENTIAL),
    "cat": ("coreutils", ESSENTIAL),
    "rm": ("coreutils", ESSENTIAL),
    "test": ("coreutils", ESSENTIAL),
    "make": ("make", DEPS),
    "dpkg-query": ("dpkg", ESSENTIAL),
    "docker-registry": ("docker-registry", DEPS),  # tests/e2e/test_registry_auth.py (skips without it)
    # the benchmarks (bench/)
    "dnsperf": ("dnsperf", BENCH),
    "dnsmasq": ("dnsmasq-base", BENCH),
    "wrk": ("wrk", BENCH),
    "curl": ("curl", BENCH),
    "git": ("git", BENCH),
    "dig": ("bind9-dnsutils", BENCH),  # counts Docker's embedded DNS answers (bench/dns_dnsperf.py)
}
# what `pyswarm lab up` checks for before it starts (its hosts' agents run ipset and iptables)
LAB_TOOLS = ("ip", "unshare", "nsenter", "mount", "dockerd", "docker", "sshd", "ssh-keygen", "busybox", "iptables", "ipset")
REQUIRED_TOOLS = {tool: TOOLS[tool][0] for tool in LAB_TOOLS}


def check_root_and_tools() -> None:
    """Fail early, in one message, rather than half-way through a bring-up."""
    if os.geteuid() != 0:
        raise LabError("pyswarm lab needs root (it creates namespaces, mounts and a bridge); run it with sudo")
    missing = [f"{tool} (apt install {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if not which(tool)]
    if missing:
        raise LabError("pyswarm lab needs these tools: " + ", ".join(missing))


def which(tool: str) -> str | None:
    """Like shutil.which, but also looks in the sbin directories a sudo PATH may lack."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(tool, path=path)


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a root-namespace command; a failure becomes a LabError naming it."""
    try:
        res = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(argv)}` timed out after {timeout:g}s") from exc
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({res.returncode}): {(res.stderr or res.stdout).strip()}")
    return res


# ---------------------------------------------------------------- mounts


def mount_points() -> list[str]:
    """Mount points of this process's mount namespace, in mount order."""
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            points.append(_unescape(line.split()[4]))
    return points


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return path.encode().decode("unicode_escape") if "\\" in path else path


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory).rstrip("/") + "/"
    return [p for p in mount_points() if p == str(directory) or p.startswith(prefix)]


def is_mount_point(path: Path) -> bool:
    return str(path) in mount_points()


def unmount_all_under(directory: Path) -> list[str]:
    """Unmount everything at or below ``directory``, deepest first; returns failures."""
    failed: list[str] = []
    for _ in range(5):
        points = sorted(set(mounts_under(directory)), key=lambda p: (p.count("/"), len(p)), reverse=True)
        if not points:
            return []
        failed = []
        for point in points:
            res = run(["umount", point], check=False)
            if res.returncode != 0:
                res = run(["umount", "-l", point], check=False)
                if res.returncode != 0:
                    failed.append(f"{point}: {res.stderr.strip()}")
    return failed or [f"still mounted: {p}" for p in mounts_under(directory)]


def ns_inode(path: Path) -> int | None:
    """The namespace id of a bind-mounted namespace file, or None when it is not one."""
    if not is_mount_point(path):
        return None  # a placeholder file, not (or no longer) a namespace
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


# ---------------------------------------------------------------- processes


def _proc_ns(pid: str, kind: str) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return int(link[link.index("[") + 1 : -1])


def processes_in(namespaces: dict[str, set[int]], cgroups: Iterable[str] = ()) -> dict[int, str]:
    """Live processes in any of the given namespaces (kind -> inodes) or cgroups.

    Zombies have no namespaces any more and are skipped: they hold nothing.
    Returns pid -> short command line, for messages.
    """
    found: dict[int, str] = {}
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        for kind, inodes in namespaces.items():
            if inodes and _proc_ns(pid, kind) in inodes:
                found[int(pid)] = _cmdline(pid)
                break
    for group in cgroups:
        for pid_ in cgroup_pids(group):
            if pid_ != me:
                found.setdefault(pid_, _cmdline(str(pid_)))
    return {p: c for p, c in found.items() if c is not None}


def cmdline(pid: int) -> str:
    """The command line of ``pid``, or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cmdline(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120] or f"[pid {pid}]"


def kill_until_gone(namespaces: dict[str, set[int]], cgroups: Sequence[str], deadline: float) -> dict[int, str]:
    """SIGKILL every process of the lab until none is left; returns survivors.

    SIGKILL rather than a polite stop: every piece of state those processes
    keep lives in the lab directory or in namespaces that die with them, and
    dockerd's graceful shutdown alone takes seconds per container.
    """
    while True:
        procs = processes_in(namespaces, cgroups)
        for group in cgroups:
            _freeze(group, True)  # stop forks racing the kill loop
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for group in cgroups:
            _freeze(group, False)
        if not procs:
            return {}
        if time.monotonic() > deadline:
            return procs
        time.sleep(0.05)


# ---------------------------------------------------------------- cgroups


def cgroup_dirs(name: str) -> list[Path]:
    """The directories of cgroup ``name`` (a top-level group) in every v1 hierarchy."""
    if not CGROUP_ROOT.is_dir():
        return []
    return [d / name for d in sorted(CGROUP_ROOT.iterdir()) if (d / name).is_dir()]


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for dirpath, _dirs, _files in os.walk(top):
            try:
                text = Path(dirpath, "cgroup.procs").read_text()
            except OSError:
                continue
            pids.update(int(x) for x in text.split())
    return pids


def _freeze(name: str, frozen: bool) -> None:
    state = CGROUP_ROOT / "freezer" / name / "freezer.state"
    try:
        state.write_text("FROZEN" if frozen else "THAWED")
    except OSError:
        pass


def remove_cgroup(name: str, deadline: float) -> list[str]:
    """rmdir the group and its children, deepest first, in every hierarchy."""
    left: list[str] = []
    for top in cgroup_dirs(name):
        subdirs = [Path(dp) for dp, _d, _f in os.walk(top)]
        for d in sorted(subdirs, key=lambda p: len(p.parts), reverse=True):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(f"{d}: {exc.strerror}")
                        break
                    time.sleep(0.05)
    return left


# ---------------------------------------------------------------- links and iptables


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


def root_forward_filters() -> bool:
    """True when the root namespace's FORWARD chain sees bridged lab traffic.

    Frames between two ports of a bridge only meet iptables when br_netfilter
    is loaded and enabled; then a FORWARD policy of DROP (what a dockerd in the
    root namespace sets, perhaps after the lab is up) would cut the hosts off
    from each other, so the lab adds an ACCEPT rule for its bridge. Only when
    the filter table already exists, though: adding a rule would create it,
    and removing the rule would not remove it again. We look with
    iptables-save, which does not create the table as a side effect.
    """
    try:
        if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() != "1":
            return False
    except OSError:
        return False
    if not which("iptables-save"):
        return False
    return "*filter" in run(["iptables-save", "-t", "filter"], check=False).stdout


def iptables_rules_tagged(tag: str) -> list[list[str]]:
    """FORWARD rules carrying our comment, as argument lists for ``iptables -D``."""
    if not which("iptables-save"):
        return []
    text = run(["iptables-save", "-t", "filter"], check=False).stdout
    if "*filter" not in text:
        return []
    import shlex

    return [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("-A FORWARD") and tag in line]


# ---------------------------------------------------------------- probes


def docker_ping(sock: Path, timeout: float = 1.0) -> bool:
    """True when the engine behind ``sock`` answers ``GET /_ping`` with OK."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] and data.endswith(b"OK")
    except OSError:
        return False


def ssh_banner(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    """True when an SSH server answers with its version banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
