"""Host preflight: can this host run pyswarm? Every problem at once, with its fix.

Run by ``pyswarm join`` before it changes anything, and by ``pyswarm machine
init/add`` over SSH *before pyswarm is installed*: this file then runs as
``python3 - --json < preflight.py`` on the bare host. So it imports nothing
but the standard library, and its syntax stays that of old Python 3 (no
``from __future__ import annotations``, no walrus), so that a host whose
python3 is too old is told so instead of getting a SyntaxError.

It looks and changes nothing: no package is installed, no module loaded, no
file written. What it checks:

- OS and architecture (Linux; x86_64 or aarch64, which pyswarm's binary
  dependencies have wheels for), the distribution (/etc/os-release) and so
  its package manager (apt, dnf, apk);
- Python >= 3.11 with ``venv`` and ``ensurepip`` (Debian splits those into
  python3-venv);
- the container engine's API on its unix socket (``DOCKER_HOST``,
  /var/run/docker.sock, or Podman's), and its version (API >= 1.41);
- the commands the agent runs: ip, iptables, iptables-restore, ipset
  (and bridge when the overlay is VXLAN);
- the kernel's vxlan module when the overlay is on (loaded, built in, or
  on disk to load on first use);
- the container address pool: no connected route of the host's own in it
  (gateway routes inside the pool are pyswarm's to manage: a warning);
- clock skew against the manager's time, when given.

The report (``--json``) carries the facts a caller needs next (Python
version, machine and C library, for the wheels it ships) and the one
command that installs every missing package on that distribution.
"""

import argparse
import importlib.util
import ipaddress
import json
import os
import platform
import shutil
import socket
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

MIN_PYTHON = (3, 11)
MIN_ENGINE_API = (1, 41)  # what the agent speaks (worker/engine_api.py API_VERSION)
ARCHES = ("x86_64", "aarch64")
DEFAULT_POOL = "10.240.0.0/16"
MAX_SKEW = 5.0  # seconds
# pyswarm's own devices (protocol.BRIDGE_NAME, worker/network.py VXLAN_DEV): their routes are ours
OWN_DEVICES = ("pyswarm0", "pswvx0")
ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")
AGENT_COMMANDS = ("ip", "iptables", "iptables-restore", "ipset")
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"

# what provides a command (or a need) on each package manager
PACKAGES = {
    "ip": {"apt": "iproute2", "dnf": "iproute", "apk": "iproute2"},
    "bridge": {"apt": "iproute2", "dnf": "iproute", "apk": "iproute2"},
    "iptables": {"apt": "iptables", "dnf": "iptables-nft", "apk": "iptables"},
    "iptables-restore": {"apt": "iptables", "dnf": "iptables-nft", "apk": "iptables"},
    "ipset": {"apt": "ipset", "dnf": "ipset", "apk": "ipset"},
    "venv": {"apt": "python3-venv", "dnf": "python3", "apk": "python3"},
    "python": {"apt": "python3", "dnf": "python3.11", "apk": "python3"},
    "engine": {"apt": "docker.io", "dnf": "moby-engine", "apk": "docker"},
}  # type: Dict[str, Dict[str, str]]
INSTALL = {"apt": "apt-get install -y", "dnf": "dnf install -y", "apk": "apk add"}
START_ENGINE = {"apt": "systemctl enable --now docker", "dnf": "systemctl enable --now docker",
                "apk": "rc-update add docker && service docker start"}


class Check(NamedTuple):
    """One thing looked at: ``ok`` false is a problem (or a warning when ``warning``)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    packages: Tuple[str, ...] = ()  # keys of PACKAGES that would fix it
    warning: bool = False


class Facts(NamedTuple):
    system: str
    machine: str
    distro: str  # /etc/os-release ID
    distro_name: str  # PRETTY_NAME
    family: str  # apt, dnf, apk or ""
    python: str  # major.minor.micro
    libc: str
    libc_version: str
    kernel: str
    time: float


# ---------------------------------------------------------------- facts


def os_release(text: str) -> Dict[str, str]:
    """/etc/os-release's KEY=value lines (values unquoted)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value.strip().strip("'\"")
    return out


def family_of(release: Dict[str, str]) -> str:
    """The package manager of a distribution: apt, dnf, apk, or "" when unknown."""
    ids = [release.get("ID", "")] + release.get("ID_LIKE", "").split()
    for ident in ids:
        if ident in ("debian", "ubuntu", "raspbian", "linuxmint", "pop"):
            return "apt"
        if ident in ("fedora", "rhel", "centos", "rocky", "almalinux", "amzn", "ol"):
            return "dnf"
        if ident == "alpine":
            return "apk"
    return ""


def gather(now: Optional[float] = None) -> Facts:
    try:
        with open("/etc/os-release") as fh:
            release = os_release(fh.read())
    except OSError:
        release = {}
    libc, libc_version = platform.libc_ver()
    if not libc and os.path.exists("/etc/alpine-release"):
        libc, libc_version = "musl", "1.2"
    v = sys.version_info
    return Facts(
        system=platform.system(), machine=platform.machine(), distro=release.get("ID", ""),
        distro_name=release.get("PRETTY_NAME", release.get("ID", "unknown")), family=family_of(release),
        python="{}.{}.{}".format(v[0], v[1], v[2]), libc=libc or "unknown", libc_version=libc_version or "",
        kernel=platform.release(), time=time.time() if now is None else now,
    )


# ---------------------------------------------------------------- checks


def check_platform(f: Facts) -> List[Check]:
    checks = [Check("os", f.system == "Linux", "{} ({})".format(f.system, f.distro_name),
                    "" if f.system == "Linux" else "pyswarm runs on Linux hosts")]
    checks.append(Check("arch", f.machine in ARCHES, f.machine,
                        "" if f.machine in ARCHES else "pyswarm's binary dependencies have wheels for {} only".format(", ".join(ARCHES))))
    return checks


def check_python(f: Facts, find_spec: Any = importlib.util.find_spec) -> List[Check]:
    version = tuple(int(x) for x in f.python.split(".")[:2])
    want = "{}.{}".format(*MIN_PYTHON)
    checks = [Check("python", version >= MIN_PYTHON, "Python {} at {}".format(f.python, sys.executable),
                    "" if version >= MIN_PYTHON else "pyswarm needs Python >= {} (Debian 12, Ubuntu 24.04, Fedora 38, "
                    "RHEL 9's python3.11, Alpine 3.18 have it)".format(want), ("python",) if version < MIN_PYTHON else ())]
    missing = [m for m in ("venv", "ensurepip") if find_spec(m) is None]
    checks.append(Check("python-venv", not missing, "venv module" + (" missing: " + ", ".join(missing) if missing else " present"),
                        "pyswarm installs into its own venv" if missing else "", ("venv",) if missing else ()))
    return checks


def which(command: str, path: Optional[str] = None) -> Optional[str]:
    """shutil.which over PATH and the sbin directories (a user's PATH may lack them)."""
    return shutil.which(command, path=(path if path is not None else os.environ.get("PATH", "")) + ":" + SBIN)


def check_commands(overlay: str, find: Any = which) -> List[Check]:
    wanted = list(AGENT_COMMANDS) + (["bridge"] if overlay == "vxlan" else [])
    checks = []
    for cmd in wanted:
        where = find(cmd)
        checks.append(Check(cmd, where is not None, where or "not found", "" if where else "the agent runs {}".format(cmd),
                            () if where else (cmd,)))
    return checks


def engine_socket(env: Optional[Dict[str, str]] = None) -> List[str]:
    """Sockets to try, the agent's own first (DOCKER_HOST, else /var/run/docker.sock)."""
    env = dict(os.environ) if env is None else env
    host = env.get("DOCKER_HOST", "")
    first = [host[len("unix://"):]] if host.startswith("unix://") else []
    return first + [s for s in ENGINE_SOCKETS if s not in first]


def engine_version(path: str, timeout: float = 3.0) -> Dict[str, Any]:
    """GET /version on the engine's unix socket; raises OSError or ValueError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"GET /version HTTP/1.0\r\nHost: engine\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise ValueError("answered {}".format(status.decode(errors="replace")))
    info = json.loads(body.decode())
    if not isinstance(info, dict):
        raise ValueError("GET /version: not a JSON object")
    return info


def check_engine(family: str, sockets: Sequence[str], probe: Any = engine_version, find: Any = None) -> List[Check]:
    """The first socket that answers; when none does, whether an engine is installed but stopped."""
    errors = []
    for i, path in enumerate(sockets):
        try:
            info = probe(path)
        except (OSError, ValueError) as exc:
            errors.append("{}: {}".format(path, getattr(exc, "strerror", None) or exc))
            continue
        name = "Podman" if "podman" in json.dumps(info.get("Components", "")).lower() else "Docker"
        api = str(info.get("ApiVersion", "0"))
        try:
            api_t = tuple(int(x) for x in api.split(".")[:2])
        except ValueError:
            api_t = (0, 0)
        detail = "{} {} (API {}) at {}".format(name, info.get("Version", "?"), api, path)
        if api_t < MIN_ENGINE_API:
            return [Check("engine", False, detail, "the agent needs Engine API >= {}.{}: upgrade the engine".format(*MIN_ENGINE_API),
                          ("engine",))]
        if i > 0 and path != sockets[0]:
            return [Check("engine", False, detail, "the agent uses {}: link it to {} (Podman: install podman-docker, or set "
                          "DOCKER_HOST for sshd's sessions)".format(sockets[0], path))]
        return [Check("engine", True, detail)]
    start = START_ENGINE.get(family, "start the container engine")
    installed = [cmd for cmd in ("dockerd", "podman") if (find or which)(cmd)]
    if installed:
        return [Check("engine", False, "the container engine API is unreachable: " + "; ".join(errors),
                      "{} is installed but not answering: start it ({})".format(installed[0], start))]
    return [Check("engine", False, "no container engine: " + "; ".join(errors),
                  "install one and start it ({})".format(start), ("engine",))]


def check_vxlan(kernel: str, root: str = "/") -> List[Check]:
    if os.path.isdir(os.path.join(root, "sys/module/vxlan")):
        return [Check("vxlan", True, "vxlan module loaded or built in")]
    moddir = os.path.join(root, "lib/modules", kernel)
    for index in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(moddir, index)) as fh:
                if "/vxlan.ko" in fh.read():
                    return [Check("vxlan", True, "vxlan module available (loads on first use)")]
        except OSError:
            continue
    return [Check("vxlan", False, "kernel {} has no vxlan module".format(kernel),
                  "the VXLAN overlay needs it: install the kernel's extra modules (Ubuntu: linux-modules-extra-{}), "
                  "or use the routes overlay".format(kernel))]


class Route(NamedTuple):
    device: str
    network: str
    gateway: bool


def routes(text: str) -> List[Route]:
    """IPv4 routes from /proc/net/route (addresses are little-endian hex)."""
    out = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dest = ipaddress.IPv4Address(bytes.fromhex(cols[1])[::-1])
            mask = ipaddress.IPv4Address(bytes.fromhex(cols[7])[::-1])
            flags = int(cols[3], 16)
        except ValueError:
            continue
        net = ipaddress.IPv4Network("{}/{}".format(dest, mask), strict=False)
        out.append(Route(cols[0], str(net), bool(flags & 0x2)))
    return out


def check_pool(pool: str, table: Sequence[Route]) -> List[Check]:
    try:
        net = ipaddress.IPv4Network(pool)
    except ValueError as exc:
        return [Check("pool", False, "container address pool {!r}: {}".format(pool, exc), "give a pool like 10.240.0.0/16")]
    mine = [r for r in table if r.device not in OWN_DEVICES and r.network != "0.0.0.0/0" and ipaddress.IPv4Network(r.network).overlaps(net)]
    connected = [r for r in mine if not r.gateway]
    via = [r for r in mine if r.gateway]
    checks = [Check("pool", not connected,
                    "{} free".format(pool) if not connected else "{} collides with the host's {}".format(
                        pool, ", ".join("{} on {}".format(r.network, r.device) for r in connected)),
                    "" if not connected else "choose another pool (`pyswarm init --default-addr-pool`) or renumber the host")]
    if via:
        checks.append(Check("pool-routes", False, "gateway routes inside {}: {}".format(
            pool, ", ".join("{} on {}".format(r.network, r.device) for r in via)),
            "pyswarm replaces gateway routes inside its pool (fine if they are a former pyswarm node's)", warning=True))
    return checks


def check_clock(now: float, manager_time: Optional[float]) -> List[Check]:
    if manager_time is None:
        return []
    skew = now - manager_time
    ok = abs(skew) <= MAX_SKEW
    return [Check("clock", ok, "{:+.1f} s from the manager".format(skew),
                  "" if ok else "synchronise the clock (e.g. `timedatectl set-ntp true`, or chrony)")]


# ---------------------------------------------------------------- report


def run(overlay: str = "routes", pool: str = DEFAULT_POOL, manager_time: Optional[float] = None) -> Dict[str, Any]:
    """Every check on this host; the report as a JSON-ready dict (``ok`` false: problems)."""
    f = gather()
    checks = check_platform(f) + check_python(f) + check_engine(f.family, engine_socket()) + check_commands(overlay)
    if overlay == "vxlan":
        checks += check_vxlan(f.kernel)
    try:
        with open("/proc/net/route") as fh:
            table = routes(fh.read())
    except OSError:
        table = []
    checks += check_pool(pool, table) + check_clock(f.time, manager_time)
    return report(f, checks)


def report(f: Facts, checks: Sequence[Check]) -> Dict[str, Any]:
    problems = [c for c in checks if not c.ok and not c.warning]
    return {
        "ok": not problems,
        "host": f._asdict(),
        "checks": [c._asdict() for c in checks],
        "problems": [format_check(c, f.family) for c in problems],
        "warnings": [format_check(c, f.family) for c in checks if not c.ok and c.warning],
        "install": install_command(f.family, problems),
    }


def install_command(family: str, problems: Sequence[Check]) -> str:
    """One command installing every missing package (per family when it is unknown)."""
    needs = sorted({n for c in problems for n in c.packages})
    if not needs:
        return ""
    if family in INSTALL:
        return "{} {}".format(INSTALL[family], " ".join(sorted({PACKAGES[n][family] for n in needs})))
    return "; ".join("{}: {} {}".format(fam, INSTALL[fam], " ".join(sorted({PACKAGES[n][fam] for n in needs}))) for fam in INSTALL)


def format_check(c: Check, family: str) -> str:
    """``name: detail — fix (install: CMD)``, one line."""
    line = "{}: {}".format(c.name, c.detail)
    if c.fix:
        line += " — " + c.fix
    cmd = install_command(family, [c])
    if cmd:
        line += " (install: {})".format(cmd)
    return line


class Report(NamedTuple):
    """A preflight report as read back by the caller (``machine init/add`` over SSH)."""

    ok: bool
    host: Dict[str, Any]
    checks: List[Check]
    problems: List[str]
    warnings: List[str]
    install: str


def parse_report(text: str) -> Report:
    """Check and type a report printed by ``--json`` on another host; ValueError names the bad field."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError("preflight report: not JSON ({})".format(exc)) from None
    if not isinstance(data, dict):
        raise ValueError("preflight report: not a JSON object")
    kinds = {"ok": bool, "host": dict, "checks": list, "problems": list, "warnings": list, "install": str}
    for key, kind in kinds.items():
        if not isinstance(data.get(key), kind):
            raise ValueError("preflight report: {!r} missing or not a {}".format(key, kind.__name__))
    for key in ("problems", "warnings"):
        if not all(isinstance(x, str) for x in data[key]):
            raise ValueError("preflight report: {!r} holds a non-string".format(key))
    for field in Facts._fields:
        if field not in data["host"]:
            raise ValueError("preflight report: host.{} missing".format(field))
    checks = []
    for i, c in enumerate(data["checks"]):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("ok"), bool):
            raise ValueError("preflight report: checks[{}] needs a string name and a boolean ok".format(i))
        checks.append(Check(c["name"], c["ok"], str(c.get("detail", "")), str(c.get("fix", "")),
                            tuple(str(x) for x in c.get("packages", ())), bool(c.get("warning", False))))
    return Report(data["ok"], data["host"], checks, data["problems"], data["warnings"], data["install"])


def source() -> str:
    """This file's text, to run on a host as ``python3 - --json [ARGS] < preflight.py``."""
    with open(__file__) as fh:
        return fh.read()


def script_args(overlay: str = "routes", pool: str = DEFAULT_POOL, manager_time: Optional[float] = None) -> List[str]:
    """The arguments after ``python3 -`` for a JSON report with these settings."""
    args = ["--json", "--overlay", overlay, "--pool", pool]
    if manager_time is not None:
        args += ["--manager-time", repr(manager_time)]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="preflight", description="check that this host can run pyswarm; changes nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--overlay", choices=["routes", "vxlan"], default="routes")
    p.add_argument("--pool", default=DEFAULT_POOL, help="the cluster's container address pool")
    p.add_argument("--manager-time", type=float, help="the manager's clock (seconds since the epoch), for the skew")
    args = p.parse_args(argv)
    rep = run(args.overlay, args.pool, args.manager_time)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        for c in rep["checks"]:
            mark = "ok  " if c["ok"] else ("warn" if c["warning"] else "FAIL")
            print("{} {}: {}".format(mark, c["name"], c["detail"]))
        for line in rep["problems"]:
            print("problem: " + line)
        if rep["install"]:
            print("install: " + rep["install"])
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
