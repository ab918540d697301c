"""``pyswarm machine init/add/ls/rm``: hosts made part of a cluster from the operator's machine.

Everything happens over one SSH connection per host (pyswarm/remote.py
``SSHHost``, the operator's OpenSSH config, agent and known_hosts), as root
or through passwordless ``sudo -n``:

1. preflight (pyswarm/preflight.py piped to the host's ``python3``): every
   problem at once with its install command, and nothing changed;
2. install: the wheels this pyswarm ships (pyswarm/wheelhouse.py, for the
   host's Python and platform) are streamed over the connection and
   installed into ``/opt/pyswarm/venv`` offline, ``/usr/local/bin/pyswarm``
   linked to it — skipped when that venv already runs this version;
3. ``pyswarm init`` (which starts the manager as a systemd unit where systemd
   runs, a detached service otherwise: manager/bootstrap.py) or ``pyswarm
   join`` with a token fetched through the context — skipped when the host
   is already a node of that cluster.

So running either twice changes nothing. ``machine init`` creates a context
for the new cluster and makes it current; ``machine add`` records the host
in it (and, for a manager, adds it to the managers the CLI tries).
``machine rm`` takes the node out through another manager, then runs
pyswarm/purge.py on the host, which removes everything pyswarm put there.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyswarm import contexts, rpc
from pyswarm.errors import ClusterError, PyswarmError, UsageError
from pyswarm.asyncssh_host import SSHHost
from pyswarm.remote import Ran, SSHTarget, connect_any, parse_target
from pyswarm.version import __version__

VENV = "/opt/pyswarm/venv"
WHEELS = "/opt/pyswarm/wheels"
LINK = "/usr/local/bin/pyswarm"
NODE_STATE = "/var/lib/pyswarm/node.json"
READY_TIMEOUT = 90.0

Progress = Callable[[str], None]


class MachineError(PyswarmError):
    """A host could not be made (or unmade) a node; the message says what to fix."""


@dataclass
class Host:
    """A host reached over SSH, with root's powers (``sudo`` is "" for root)."""

    dest: str
    target: SSHTarget
    ssh: SSHHost
    sudo: str

    def root(self, command: str, input: bytes | None = None, timeout: float = 300) -> Ran:
        line = f"{self.sudo}sh -c {shlex.quote(command)}" if self.sudo else command
        return self.ssh.run(line, input, timeout)

    def must(self, command: str, doing: str, input: bytes | None = None, timeout: float = 300) -> Ran:
        ran = self.root(command, input, timeout)
        if ran.returncode != 0:
            raise MachineError(f"{self.dest}: {doing} failed (exit {ran.returncode}): "
                               f"{ran.error or ran.text.strip()[-400:]}")
        return ran

    def close(self) -> None:
        self.ssh.close()


def open_host(dest: str, accept_host_key: bool = False) -> Host:
    """Connect to ``[user@]host[:port]`` and make sure we may act as root there."""
    target = parse_target(dest, scheme_required=False)
    ssh = SSHHost(target, accept_host_key).connect()
    try:
        who = ssh.run("id -un; id -u", timeout=30)
        name, _, uid = who.text.strip().partition("\n")
        if who.returncode != 0 or not uid.strip().isdigit():
            raise MachineError(f"{dest}: `id -u` failed: {who.error}")
        sudo = ""
        if int(uid) != 0:
            check = ssh.run("sudo -n true", timeout=30)
            if check.returncode != 0:
                raise MachineError(
                    f"{dest}: user {name} is not root and has no passwordless sudo "
                    f"(`sudo -n true`: {check.error or 'exit ' + str(check.returncode)}); log in as root, or "
                    f"let {name} use sudo without a password (e.g. '{name} ALL=(ALL) NOPASSWD: ALL' in "
                    "/etc/sudoers.d/pyswarm)")
            sudo = "sudo -n "
        return Host(dest, target, ssh, sudo)
    except BaseException:
        ssh.close()
        raise


# -- the steps ---------------------------------------------------------------------


def preflight(host: Host, pool: str | None = None, overlay: str = "routes",
              manager_time: float | None = None) -> Any:
    """The host's preflight report; MachineError listing every problem when it fails."""
    from pyswarm import preflight as pf

    args = pf.script_args(overlay, pool or pf.DEFAULT_POOL, manager_time)
    ran = host.root("python3 - " + shlex.join(args), input=pf.source().encode(), timeout=120)
    if ran.returncode == 127 or (ran.returncode != 0 and not ran.text.strip()):
        raise MachineError(f"{host.dest}: cannot run python3 there ({ran.error or 'not found'}): install "
                           "Python 3.11 or newer with venv (Debian/Ubuntu: apt-get install -y python3 python3-venv); "
                           "nothing was changed")
    try:
        report = pf.parse_report(ran.text)
    except ValueError as exc:
        raise MachineError(f"{host.dest}: {exc} (stderr: {ran.error})") from None
    if not report.ok:
        lines = "\n".join(f"  - {p}" for p in report.problems)
        fix = f"\n  install them all: {report.install}" if report.install else ""
        raise MachineError(f"{host.dest} cannot run pyswarm yet (nothing was changed):\n{lines}{fix}")
    return report


def installed_version(host: Host) -> str:
    ran = host.root(f"{VENV}/bin/pyswarm --version", timeout=60)
    return ran.text.strip().removeprefix("pyswarm ") if ran.returncode == 0 else ""


def install(host: Host, report: Any, progress: Progress) -> bool:
    """pyswarm from the wheels shipped over SSH into /opt/pyswarm/venv; False when it was there."""
    from pyswarm import wheelhouse

    have = installed_version(host)
    if have == __version__:
        progress(f"{host.dest}: pyswarm {have} already installed in {VENV}")
        return False
    # held: the set of wheels stays as it is until it is on the host, whatever
    # another command building on the same cache does meanwhile
    with wheelhouse.held(wheelhouse.Target.of_host(report.host)) as house:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for wheel in wheelhouse.wheels(house):
                tar.add(str(wheel), arcname=wheel.name)
        progress(f"{host.dest}: installing pyswarm {__version__} into {VENV} "
                 f"({buf.tell() // 1024} KiB of wheels shipped over SSH{', replacing ' + have if have else ''})")
        extract = ("import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|')"
                   f".extractall({WHEELS!r})")
        host.must(f"rm -rf {WHEELS} && mkdir -p {WHEELS} && python3 -c {shlex.quote(extract)}",
                  "shipping the wheels", input=buf.getvalue())
    progress(f"{host.dest}: wheels shipped; making the venv and installing them")
    # --no-compile: pip's byte-compiling of every module of ~25 wheels was
    # more than half of the install (52 s against 23 s at load ~17, see
    # bench/RESULTS.md); Python compiles what it imports on first use instead
    # (root writes the __pycache__), which is a fraction of it
    args = (f"install -q --no-index --no-cache-dir --no-compile --disable-pip-version-check --find-links {WHEELS} "
            f"{shlex.quote(house.requirement)}")
    # pip straight from the wheel ensurepip would install (a venv without pip
    # takes a second, ensurepip's copy of pip ten); ensurepip where none is found
    script = (f"pip=$(python3 -c {shlex.quote(_FIND_PIP_WHEEL)}); "
              f"if [ -n \"$pip\" ]; then python3 -m venv --without-pip {VENV} && {VENV}/bin/python \"$pip/pip\" {args}; "
              f"else python3 -m venv {VENV} && {VENV}/bin/pip {args}; fi "
              f"&& ln -sfn {VENV}/bin/pyswarm {LINK}; rc=$?; rm -rf {WHEELS}; exit $rc")
    host.must(script, "installing pyswarm", timeout=600)
    return True


# the host's own pip wheel, the one ensurepip installs into a new venv (Debian
# keeps it in /usr/share/python-wheels, CPython in ensurepip/_bundled)
_FIND_PIP_WHEEL = """
import ensurepip, glob, os
found = [p.wheel_path for p in getattr(ensurepip, "_get_packages", dict)().values()
         if getattr(p, "wheel_path", None) and os.path.basename(p.wheel_path).startswith("pip-")]
found += sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")))
print(found[0] if found else "")
"""


def node_state(host: Host) -> dict[str, Any] | None:
    """The host's /var/lib/pyswarm/node.json (its membership), or None."""
    ran = host.root(f"cat {NODE_STATE}", timeout=30)
    if ran.returncode != 0:
        return None
    try:
        data = json.loads(ran.stdout)
    except ValueError:
        raise MachineError(f"{host.dest}: {NODE_STATE} is not JSON; see `pyswarm leave` there") from None
    return data if isinstance(data, dict) else None


def hostname(host: Host) -> str:
    return host.must("python3 -c 'import socket; print(socket.gethostname())'", "reading the hostname").text.strip()


# -- the commands ------------------------------------------------------------------


@dataclass
class Outcome:
    dest: str
    hostname: str
    context: str
    changed: list[str]
    seconds: float


def init(dest: str, name: str | None, advertise_addr: str | None, accept_host_key: bool,
         progress: Progress, api_group: str = "") -> Outcome:
    start = time.monotonic()
    ctx_name = contexts.check_name(name or parse_target(dest, scheme_required=False).host)
    changed: list[str] = []
    host = open_host(dest, accept_host_key)
    progress(f"{dest}: connected{' (as root through sudo)' if host.sudo else ''}; preflight")
    try:
        state = node_state(host)
        if state is not None and state.get("role") != "manager":
            raise MachineError(f"{dest} is already a worker of cluster {state.get('cluster_id', '?')}: "
                               f"`pyswarm machine rm {dest}` first")
        taken = contexts.load().items.get(ctx_name)
        if taken is not None and taken.cluster_id and (state is None or state.get("cluster_id") != taken.cluster_id):
            raise UsageError(f"context {ctx_name!r} is another cluster's ({taken.cluster_id}): give --name NAME "
                             "for this one (nothing was changed)")
        report = preflight(host)
        progress(f"{dest}: preflight ok ({report.host.get('distro_name')}, Python {report.host.get('python')}, "
                 f"{report.host.get('machine')})")
        if install(host, report, progress):
            changed.append("installed")
        if state is None:
            argv = ["pyswarm", "init"] + (["--advertise-addr", advertise_addr] if advertise_addr else []) \
                + (["--api-group", api_group] if api_group else [])
            progress(f"{dest}: {' '.join(argv)}")
            host.must(shlex.join(argv), "pyswarm init", timeout=120)
            changed.append("initialized")
            progress(f"{dest}: manager started; waiting until it is ready")
        else:
            progress(f"{dest}: already a manager of cluster {state.get('cluster_id')}")
        with host.ssh.dial() as conn:
            me = _wait_ready(conn, dest)
            node = conn.call("node.inspect", {"node": me["node_id"]})
        the_hostname = str(node.get("hostname", host.target.host))
    finally:
        host.close()
    url = host.target.url
    store = contexts.load()
    existing = store.items.get(ctx_name)
    if existing is not None and existing.cluster_id and existing.cluster_id != me["cluster_id"]:
        raise UsageError(f"context {ctx_name!r} is another cluster's ({existing.cluster_id}): "
                         "give --name NAME for this one")
    ctx = existing or contexts.Context(name=ctx_name, hosts=[url])
    ctx.cluster_id = me["cluster_id"]
    if url not in ctx.hosts:
        ctx.hosts.insert(0, url)
    ctx.machines[the_hostname] = dest
    contexts.update(ctx)
    contexts.use(ctx_name)
    return Outcome(dest, the_hostname, ctx_name, changed, time.monotonic() - start)


def _wait_ready(conn: rpc.Connection, dest: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        me = conn.call("ping", timeout=30)
        if me.get("ready") and me.get("cluster_id"):
            return dict(me)
        if time.monotonic() > deadline:
            raise MachineError(f"{dest}: the manager did not become ready within {READY_TIMEOUT:.0f}s")
        time.sleep(0.2)


def add(dest: str, manager: bool, ctx: contexts.Context, conn: rpc.Connection, accept_host_key: bool,
        progress: Progress) -> Outcome:
    start = time.monotonic()
    role = "manager" if manager else "worker"
    changed: list[str] = []
    host = open_host(dest, accept_host_key)
    progress(f"{dest}: connected{' (as root through sudo)' if host.sudo else ''}; preflight")
    try:
        info = conn.call("join.info")
        state = node_state(host)
        if state is not None and state.get("cluster_id") != info["cluster_id"]:
            raise MachineError(f"{dest} is a node of another cluster ({state.get('cluster_id')}): "
                               f"`pyswarm machine rm` it from that one first")
        report = preflight(host, info.get("addr_pool"), "vxlan" if info.get("overlay") == "vxlan" else "routes",
                           float(info["time"]) if isinstance(info.get("time"), (int, float)) else None)
        progress(f"{dest}: preflight ok ({report.host.get('distro_name')}, Python {report.host.get('python')}, "
                 f"{report.host.get('machine')})")
        if install(host, report, progress):
            changed.append("installed")
        the_hostname = hostname(host)
        if state is None:
            token = conn.call("join_token", {"role": role})
            progress(f"{dest}: pyswarm join as a {role}")
            host.must(shlex.join(["pyswarm", "join", "--token", token["token"], token["addr"]]), "pyswarm join",
                      timeout=180)
            changed.append("joined")
            progress(f"{dest}: joined; waiting until the node is ready")
        elif state.get("role") != role:
            raise MachineError(f"{dest} is already a {state.get('role')} of this cluster: "
                               f"`pyswarm node {'promote' if manager else 'demote'} {the_hostname}` changes that")
        else:
            progress(f"{dest}: already a {role} of this cluster")
    finally:
        host.close()
    _wait_node_ready(conn, the_hostname, dest)
    store = contexts.load()
    ctx = store.items.get(ctx.name, ctx)
    ctx.machines[the_hostname] = dest
    url = parse_target(dest, scheme_required=False).url
    if manager and url not in ctx.hosts:
        ctx.hosts.append(url)
    contexts.update(ctx)
    return Outcome(dest, the_hostname, ctx.name, changed, time.monotonic() - start)


def _wait_node_ready(conn: rpc.Connection, name: str, dest: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    seen = "not listed"
    while time.monotonic() < deadline:
        rows = [r for r in conn.call("node.ls") if r.get("hostname") == name]
        if rows and rows[0].get("status") == "ready":
            return
        seen = rows[0].get("status", "?") if rows else "not listed"
        time.sleep(0.2)
    raise MachineError(f"{dest}: node {name} did not become ready within {READY_TIMEOUT:.0f}s (it is {seen})")


def ls(ctx: contexts.Context, conn: rpc.Connection) -> list[dict[str, Any]]:
    rows = []
    for node in conn.call("node.ls"):
        rows.append({"name": node["hostname"], "ssh": ctx.machines.get(node["hostname"], ""),
                     "role": node["role"], "status": node["status"], "address": node["address"],
                     "manager_status": node.get("manager_status", ""), "engine_version": node.get("engine_version", "")})
    known = {r["name"] for r in rows}
    rows += [{"name": h, "ssh": d, "role": "", "status": "not a node", "address": "", "manager_status": "",
              "engine_version": ""} for h, d in ctx.machines.items() if h not in known]
    return rows


def rm(which: str, ctx: contexts.Context, accept_host_key: bool, progress: Progress) -> Outcome:
    start = time.monotonic()
    name = which if which in ctx.machines else next((h for h, d in ctx.machines.items() if d == which), None)
    if name is None:
        raise UsageError(f"no machine {which!r} in context {ctx.name} (its machines: "
                         f"{', '.join(sorted(ctx.machines)) or 'none'}; see `pyswarm machine ls`)")
    dest = ctx.machines[name]
    url = parse_target(dest, scheme_required=False).url
    others = [t for t in ctx.targets() if t.url != url]
    subnets: list[str] = []
    last = False
    if others:
        with connect_any(others, accept_host_key, what=f"context {ctx.name}") as conn:
            node = next((n for n in conn.call("node.ls") if n["hostname"] == name), None)
            if node is not None:
                subnets = [str(conn.call("node.inspect", {"node": n["id"]}).get("subnet") or "")
                           for n in conn.call("node.ls") if n["id"] != node["id"]]
                if node["role"] == "manager":
                    progress(f"{name}: demoting")
                    conn.call("node.demote", {"nodes": [node["id"]]}, timeout=60)
                progress(f"{name}: removing the node")
                conn.call("node.rm", {"nodes": [node["id"]], "force": True}, timeout=60)
    else:
        if len(ctx.machines) > 1:
            raise ClusterError(f"{name} is the context's only manager and other machines are in the cluster "
                               f"({', '.join(sorted(h for h in ctx.machines if h != name))}): remove them first, "
                               "or add another manager")
        last = True
    from pyswarm import purge

    host = open_host(dest, accept_host_key)
    try:
        progress(f"{dest}: removing everything pyswarm installed")
        args = ["--json"] + [a for s in subnets if s for a in ("--route", s)]
        ran = host.root("python3 - " + shlex.join(args), input=purge.source().encode(), timeout=120)
    finally:
        host.close()
    try:
        report = json.loads(ran.stdout)
    except ValueError:
        raise MachineError(f"{dest}: the clean-up did not report (exit {ran.returncode}): {ran.error}") from None
    store = contexts.load()
    ctx = store.items.get(ctx.name, ctx)
    ctx.machines.pop(name, None)
    ctx.hosts = [h for h in ctx.hosts if h != url]
    if last or not ctx.hosts:
        contexts.remove(ctx.name, force=True)
        progress(f"context {ctx.name} removed (its last manager is gone)")
    else:
        contexts.update(ctx)
    if report.get("failed"):
        raise MachineError(f"{dest}: node removed, but the clean-up left: " + "; ".join(report["failed"]))
    return Outcome(dest, name, ctx.name, list(report.get("removed", [])), time.monotonic() - start)
