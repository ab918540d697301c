"""The lab as a whole: bring-up, tear-down, state, and running things in hosts.

``Lab`` is the Python API the CLI, the e2e fixtures and the benchmarks share.
Its state lives in ``state.json`` in the lab directory and is written *before*
each thing is created, so that ``down`` can undo a bring-up that failed half
way, and can be run any number of times.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pyswarm.deploy import lab_ssh
from pyswarm.deploy import lab_sys as sysx
from pyswarm.deploy.lab_host import BARE_BINDS, FILE_BINDS, HOST_BINDS, LabHost
from pyswarm.deploy.lab_image import IMAGE, build_rootfs_tar, import_image
from pyswarm.deploy.lab_sys import LabCommandError, LabError

DEFAULT_DIR = "/var/lib/pyswarm-lab"
DEFAULT_NAME = "pswlab"
DEFAULT_SUBNET = "10.250.0.0/24"
# machine-wide: which labs are up, and the mount points they had to create
REGISTRY = Path("/run/pyswarm-lab")
# Beside the registry, not in it: the last lab down removes the registry while holding this.
REGISTRY_LOCK = Path("/run/pyswarm-lab.lock")
MAX_MANAGERS = 9
START_TIMEOUT = 90.0
SYSTEM_PYTHON = "/usr/bin/python3"  # what a bare host has (Debian's)

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def default_dir() -> Path:
    return Path(os.environ.get("PYSWARM_LAB_DIR", DEFAULT_DIR))


def pyswarm_executable() -> str:
    """The ``pyswarm`` script of this installation; the hosts share the filesystem."""
    return str(Path(sys.executable).parent / "pyswarm")


class Lab:
    """A lab of network-namespace hosts on this machine.

    ``name`` prefixes everything the lab makes in the root namespace (bridge
    ``<name>0``, veths ``<name>v<N>``, netns ``<name>-<host>``, cgroups
    ``<name>-<host>``), so labs with different names, directories and subnets
    can be up side by side (the e2e session lab and the lab's own test do).
    """

    def __init__(self, directory: Path | str | None = None, name: str = DEFAULT_NAME, subnet: str = DEFAULT_SUBNET) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,8}", name):
            raise LabError(f"lab name {name!r}: use 1-9 lowercase letters and digits (it prefixes interface names)")
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise LabError(f"lab subnet {subnet!r}: {exc}") from exc
        if net.prefixlen > 24:
            raise LabError(f"lab subnet {subnet}: needs at least a /24")
        self.dir = Path(directory) if directory is not None else default_dir()
        self.name = name
        self.subnet = net
        self.cluster = False
        self.bare = False
        self.join_command: str | None = None
        self._hosts: dict[str, LabHost] = {}
        self._created_mountpoints: list[str] = []
        self._iptables: list[list[str]] = []
        self._keeper_pid: int | None = None
        self._old_keepers: list[int] = []  # keepers of daemons restarted by start_daemons
        self._keeper: _Keeper | None = None
        self._lock = threading.Lock()
        self._spawn_lock = threading.Lock()
        self._load()

    # ------------------------------------------------------------ state

    @classmethod
    def current(cls, directory: Path | str | None = None) -> Lab:
        """The lab that is up in ``directory`` (default: $PYSWARM_LAB_DIR or /var/lib/pyswarm-lab)."""
        d = Path(directory) if directory is not None else default_dir()
        state = d / "state.json"
        if not state.exists():
            raise LabError(f"no lab in {d}; bring one up with `pyswarm lab up`")
        data = json.loads(state.read_text())
        return cls(d, name=data["name"], subnet=data["subnet"])

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def ssh_config(self) -> Path:
        """The operator's OpenSSH config for this lab (``pyswarm lab ssh-config``)."""
        return lab_ssh.config_path(self.dir)

    @property
    def bridge(self) -> str:
        return f"{self.name}0"

    @property
    def bridge_addr(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def ns_dir(self) -> Path:
        return self.dir / "ns"

    @property
    def hosts(self) -> dict[str, str]:
        """Host name -> address, managers first."""
        return {h.name: h.address for h in self._hosts.values()}

    @property
    def managers(self) -> list[str]:
        return [h.name for h in self._hosts.values() if h.role == "manager"]

    @property
    def workers(self) -> list[str]:
        return [h.name for h in self._hosts.values() if h.role == "worker"]

    def host(self, name: str) -> LabHost:
        try:
            return self._hosts[name]
        except KeyError:
            known = ", ".join(self._hosts) or "none"
            raise LabError(f"no lab host {name!r} (hosts: {known})") from None

    def _load(self) -> None:
        if not self.state_file.exists():
            return
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as exc:
            raise LabError(f"{self.state_file}: unreadable lab state ({exc}); remove the lab by hand") from exc
        self._hosts = {h["name"]: LabHost.from_dict(h) for h in data.get("hosts", [])}
        self._created_mountpoints = data.get("created_mountpoints", [])
        self._iptables = data.get("iptables", [])
        self._keeper_pid = data.get("keeper_pid")
        self._old_keepers = data.get("old_keeper_pids", [])
        self.cluster = data.get("cluster", False)
        self.bare = data.get("bare", False)
        self.join_command = data.get("join_command")

    def _save(self, phase: str) -> None:
        with self._lock:
            data = {
                "name": self.name,
                "subnet": str(self.subnet),
                "bridge": self.bridge,
                "phase": phase,
                "cluster": self.cluster,
                "bare": self.bare,
                "join_command": self.join_command,
                "created_mountpoints": self._created_mountpoints,
                "iptables": self._iptables,
                "keeper_pid": self._keeper_pid,
                "old_keeper_pids": self._old_keepers,
                "hosts": [h.to_dict() for h in self._hosts.values()],
            }
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, self.state_file)

    # ------------------------------------------------------------ up

    def up(self, managers: int = 1, workers: int = 3, cluster: bool = True, progress: Progress = _quiet, bare: bool = False) -> None:
        """Bring up a fresh lab (tearing down any lab already in this directory).

        ``bare`` hosts see only the system's python3, sshd and dockerd: their
        own empty /opt and /usr/local, their own /root, and an empty tmpfs
        over this machine's pyswarm (checkout, venv, the Python running it),
        as fresh VMs would be. They have no pyswarm, so no cluster either.
        """
        sysx.check_root_and_tools()
        if bare and cluster:
            raise LabError("bare lab hosts have no pyswarm to init or join: add --no-cluster")
        if bare:
            _check_system_python()
        if not 1 <= managers <= MAX_MANAGERS:
            raise LabError(f"--managers {managers}: between 1 and {MAX_MANAGERS}")
        if workers < 0 or 20 + workers > self.subnet.num_addresses - 2:
            raise LabError(f"--workers {workers}: between 0 and {self.subnet.num_addresses - 22}")
        if self.state_file.exists() or self.dir.exists():
            progress(f"a lab exists in {self.dir}; taking it down first")
            self.down(progress)
        self._check_conflicts()
        started = time.monotonic()
        self._plan(managers, workers, bare)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._save("starting")
        self._register()
        try:
            self._start_keeper()
            self._make_ns_dir()
            self._make_mountpoints()
            self._make_network()
            progress(f"network: bridge {self.bridge} {self.bridge_addr}/{self.subnet.prefixlen}, {len(self._hosts)} hosts")
            rootfs = build_rootfs_tar(self.dir / "image" / "rootfs.tar")
            operator_key = lab_ssh.make_operator_key(self.dir)
            deadline = time.monotonic() + START_TIMEOUT
            with ThreadPoolExecutor(max_workers=min(8, len(self._hosts))) as pool:
                futures = [pool.submit(self._bring_up_host, h, rootfs, deadline, progress, operator_key) for h in self._hosts.values()]
                errors = [str(f.exception()) for f in futures if f.exception() is not None]
            if errors:
                raise LabError("lab up failed:\n" + "\n".join(errors))
            lab_ssh.write_config(self.dir, [(h.name, h.address, h.private("/etc/ssh/ssh_host_ed25519_key.pub")) for h in self._hosts.values()])
            self._save("hosts-up")
            progress(f"hosts up in {time.monotonic() - started:.1f}s")
            if cluster:
                self._form_cluster(progress)
            self._save("up")
        except BaseException:
            # leave the state file: `pyswarm lab down` (or the next up) cleans up
            self._save("failed")
            raise
        finally:
            if self._keeper is not None:
                self._keeper.stdin.close()  # the keeper goes on reaping on its own
                self._keeper.stdout.close()
        progress(f"lab up in {time.monotonic() - started:.1f}s")

    def _plan(self, managers: int, workers: int, bare: bool = False) -> None:
        base = self.subnet.network_address
        hosts = [("manager", i, 10 + i) for i in range(1, managers + 1)] + [("worker", i, 20 + i) for i in range(1, workers + 1)]
        self._hosts = {}
        self.bare = bare
        hidden = lab_ssh.operator_paths([t for t, _ in BARE_BINDS], [self.dir]) if bare else []
        for role, i, index in hosts:
            name = f"{role}{i}"
            self._hosts[name] = LabHost(
                name=name,
                role=role,
                index=index,
                address=str(base + index),
                netns=f"{self.name}-{name}",
                veth=f"{self.name}v{index}",
                cgroup=f"{self.name}-{name}",
                home=str(self.dir / "hosts" / name),
                ns_dir=str(self.ns_dir),
                bare=bare,
                hidden=hidden,
            )
        self.cluster = False
        self.join_command = None
        self._keeper_pid = None
        self._created_mountpoints = []
        self._iptables = []

    def _check_conflicts(self) -> None:
        taken = [f"bridge {self.bridge}"] if sysx.link_exists(self.bridge) else []
        taken += [f"netns {n}" for n in sysx.netns_names() if n.startswith(f"{self.name}-")]
        if taken:
            other = REGISTRY / "labs" / self.name
            where = other.read_text().strip() if other.exists() else "another directory"
            raise LabError(
                f"a lab named {self.name!r} is up from {where} ({', '.join(taken)}); "
                f"take it down with `PYSWARM_LAB_DIR={where} pyswarm lab down`"
            )
        for net in self._other_subnets():
            if net.overlaps(self.subnet):
                raise LabError(f"lab subnet {self.subnet} overlaps {net}, already routed on this machine")

    def _other_subnets(self) -> list[ipaddress.IPv4Network]:
        out = sysx.run(["ip", "-4", "-o", "route", "show"], check=False).stdout
        nets = []
        for line in out.splitlines():
            dest = line.split()[0]
            if dest != "default" and "/" in dest:
                nets.append(ipaddress.IPv4Network(dest, strict=False))
        return nets

    def _register(self) -> None:
        with _registry_locked():
            (REGISTRY / "labs").mkdir(parents=True, exist_ok=True)
            (REGISTRY / "labs" / self.name).write_text(str(self.dir) + "\n")

    def _start_keeper(self) -> None:
        # posix_spawn rather than Popen: the keeper outlives this object, and a
        # Popen collected while its child runs warns (an error under pytest)
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        logfd = os.open(self.dir / "keeper.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "pyswarm.deploy.lab_keeper"],
                dict(os.environ),
                file_actions=[(os.POSIX_SPAWN_DUP2, r_in, 0), (os.POSIX_SPAWN_DUP2, w_out, 1), (os.POSIX_SPAWN_DUP2, logfd, 2)],
                setsid=True,
            )
        finally:
            for fd in (r_in, w_out, logfd):
                os.close(fd)
        self._keeper = _Keeper(pid, os.fdopen(w_in, "w"), os.fdopen(r_out, "r"))
        self._keeper_pid = pid
        self._save("starting")

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> int:
        """Have the keeper start ``argv`` (so that it, not pid 1, reaps it)."""
        keeper = self._keeper
        if keeper is None or keeper.stdin.closed:
            raise LabError("lab keeper not running")
        with self._spawn_lock:
            try:
                keeper.stdin.write(json.dumps({"argv": argv, "log": str(log), "env": env}) + "\n")
                keeper.stdin.flush()
                reply = json.loads(keeper.stdout.readline() or "{}")
            except (OSError, ValueError) as exc:
                raise LabError(f"lab keeper failed ({exc}); see {self.dir / 'keeper.log'}") from exc
        if "pid" not in reply:
            raise LabError(f"could not start {argv[-1] if argv else '?'}: {reply.get('error', 'keeper gave no answer')}")
        return int(reply["pid"])

    def _make_ns_dir(self) -> None:
        # A mount namespace file may only be bind-mounted onto a private mount
        # (else mount propagation could build a loop), hence the self-bind.
        self.ns_dir.mkdir(exist_ok=True)
        sysx.run(["mount", "--bind", str(self.ns_dir), str(self.ns_dir)])
        sysx.run(["mount", "--make-private", str(self.ns_dir)])

    def _make_mountpoints(self) -> None:
        """Create missing bind targets (e.g. /root/.ssh) on the machine, and remember them.

        They stay empty in the root namespace; the last lab down removes them.
        """
        made: list[str] = []
        for target, _name in (BARE_BINDS + HOST_BINDS) if self.bare else HOST_BINDS:
            p = Path(target)
            if p.exists():
                continue
            if target in FILE_BINDS:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
            else:
                try:
                    p.mkdir(parents=True, mode=0o700)
                except FileExistsError:  # another lab coming up at the same time made it (CI's two workers)
                    continue
            made.append(target)
        self._created_mountpoints = made
        remember_mountpoints(made)
        self._save("starting")

    def _make_network(self) -> None:
        prefix = self.subnet.prefixlen
        if not sysx.is_mount_point(sysx.NETNS_DIR) and not (REGISTRY / "netns-mount").exists():
            # `ip netns add` is about to make /run/netns a mount; the last lab down undoes it
            (REGISTRY / "netns-mount").write_text("made by pyswarm lab\n")
        for h in self._hosts.values():
            sysx.run(["ip", "netns", "add", h.netns])
        root = [f"link add {self.bridge} type bridge", f"addr add {self.bridge_addr}/{prefix} dev {self.bridge}", f"link set {self.bridge} up"]
        for h in self._hosts.values():
            root += [f"link add {h.veth} type veth peer name eth0 netns {h.netns}", f"link set {h.veth} master {self.bridge} up"]
        sysx.run(["ip", "-batch", "-"], input="\n".join(root) + "\n")
        for h in self._hosts.values():
            inside = ["link set lo up", f"addr add {h.address}/{prefix} dev eth0", "link set eth0 up", f"route add default via {self.bridge_addr}"]
            sysx.run(["ip", "-n", h.netns, "-batch", "-"], input="\n".join(inside) + "\n")
        if sysx.root_forward_filters():
            rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment", "--comment", self._tag, "-j", "ACCEPT"]
            self._iptables.append(rule)
            self._save("starting")
            sysx.run(["iptables", "-I", *rule])

    @property
    def _tag(self) -> str:
        return f"pyswarm-lab:{self.name}"

    def _bring_up_host(self, h: LabHost, rootfs: Path, deadline: float, progress: Progress, operator_key: str) -> None:
        t0 = time.monotonic()
        h.prepare_files(list(self._hosts.values()), self.bridge_addr, operator_key)
        h.make_mount_uts_ns()
        self._save("starting")
        h.start_daemons(self._spawn)
        self._save("starting")
        h.wait_ready(deadline)
        import_image(h.docker_sock, rootfs)
        progress(f"{h.name}: {h.address}, sshd and dockerd ready, {IMAGE} imported ({time.monotonic() - t0:.1f}s)")

    # ------------------------------------------------------------ cluster

    def _form_cluster(self, progress: Progress) -> None:
        first = self.managers[0]
        addr = self.hosts[first]
        # --dns-upstream none: the lab's DNS never forwards off the machine
        res = self.pyswarm(first, "init", "--advertise-addr", addr, "--dns-upstream", "none", timeout=120)
        line = next((ln.strip() for ln in res.stdout.splitlines() if "pyswarm join" in ln and "--token" in ln), None)
        if line is None:
            raise LabError(f"{first}: `pyswarm init` printed no `pyswarm join --token …` line; it printed:\n{res.stdout}{res.stderr}")
        self.join_command = line[line.index("pyswarm join") :]
        self.cluster = True
        self._save("joining")
        progress(f"{first}: pyswarm init done; joining {len(self._hosts) - 1} hosts")
        worker_argv = shlex.split(self.join_command)[1:]
        others = [h for h in self._hosts if h != first]

        def join(host: str) -> None:
            argv = self._join_argv(host, worker_argv)
            self.pyswarm(host, *argv, timeout=120)
            progress(f"{host}: joined")

        # One at a time: the order of joins then fixes node order (and subnets),
        # which makes e2e failures reproducible. (Concurrent joins also hit a
        # subnet-allocation race in the manager: "subnet … exists".)
        for host in others:
            join(host)
        self.wait_nodes_ready(timeout=60)
        progress(f"all {len(self._hosts)} nodes ready")

    def wait_nodes_ready(self, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until ``pyswarm node ls`` on the first manager shows every host ready."""
        first = self.managers[0]
        deadline = time.monotonic() + timeout
        seen: object = None
        while True:
            res = self.pyswarm(first, "node", "ls", "--format", "json", check=False, timeout=20)
            if res.returncode == 0:
                try:
                    rows = json.loads(res.stdout)
                except ValueError:
                    rows = None
                if isinstance(rows, list):
                    ready = {r.get("hostname") for r in rows if str(r.get("status", "")).lower() == "ready"}
                    if set(self._hosts) <= ready:
                        return rows
                    seen = [(r.get("hostname"), r.get("status")) for r in rows]
                else:
                    seen = res.stdout.strip()
            else:
                seen = res.stderr.strip() or res.stdout.strip()
            if time.monotonic() > deadline:
                raise LabError(f"not every lab host became a ready node within {timeout:g}s; `pyswarm node ls` on {first} last showed: {seen}")
            time.sleep(0.3)

    def _join_argv(self, host: str, worker_argv: list[str]) -> list[str]:
        """The join arguments for ``host``: extra managers join with the
        manager token (from ``pyswarm join-token manager`` on the first
        manager), and like it, never forward DNS off the machine."""
        if host not in self.managers:
            return worker_argv
        first = self.managers[0]
        token = self.pyswarm(first, "join-token", "manager", "-q", timeout=30).stdout.strip()
        argv = list(worker_argv)
        argv[argv.index("--token") + 1] = token
        return [*argv[:-1], "--dns-upstream", "none", argv[-1]]

    # ------------------------------------------------------------ running things

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` (in ``cwd``, default ours) and return what it printed.

        Output goes through temporary files, not pipes: a command that starts
        a daemon which keeps our pipe open (``pyswarm init``) must not make us
        wait for that daemon to exit.
        """
        h = self.host(host)
        argv = list(argv)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
            if input is not None:
                inp.write(input.encode())
                inp.seek(0)
            proc = subprocess.Popen(h.nsenter(cwd or self._cwd(h)) + argv, stdin=inp, stdout=out, stderr=err, env=h.env(env), start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                out.seek(0)
                err.seek(0)
                raise LabCommandError(
                    f"{host}: `{shlex.join(argv)}` timed out after {timeout:g}s; it printed:\n{_text(out.read())}{_text(err.read())}",
                    subprocess.CompletedProcess(argv, -9, _text(out.read()), ""),
                ) from None
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(argv, rc, _text(out.read()), _text(err.read()))
        if check and rc != 0:
            said = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise LabCommandError(f"{host}: `{shlex.join(argv)}` exited {rc}: {said}", result)
        return result

    def docker(self, host: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against ``host``'s engine."""
        return self.exec(host, ["docker", *args], **kw)

    def pyswarm(self, host: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """The pyswarm CLI run inside ``host``, as an operator on that host would
        (on a bare host, the one installed there, found on PATH)."""
        return self.exec(host, ["pyswarm" if self.host(host).bare else pyswarm_executable(), *args], **kw)

    def exec_argv(self, host: str) -> tuple[list[str], dict[str, str]]:
        """The argv prefix and environment that enter ``host`` (for the CLI's exec)."""
        h = self.host(host)
        return h.nsenter(self._cwd(h)), h.env()

    @staticmethod
    def _cwd(h: LabHost) -> str:
        """Where commands start in ``h``: our directory (the hosts share the
        filesystem), but root's home on a bare host, which may not see it."""
        return "/root" if h.bare else _cwd()

    def status(self) -> list[dict[str, Any]]:
        return [h.status() for h in self._hosts.values()]

    # ------------------------------------------------------------ faults

    def host_pids(self, host: str, *words: str) -> list[int]:
        """Processes of ``host`` (those in its mount namespace) whose
        arguments contain every one of ``words``: its agent sessions, say."""
        ns = os.stat(self.host(host).mnt_file).st_ino
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if os.stat(f"/proc/{pid}/ns/mnt").st_ino != ns:
                    continue
            except OSError:
                continue
            if all(any(w.encode() in a for a in argv) for w in words):
                found.append(int(pid))
        return found

    def kill_host(self, host: str, timeout: float = 15) -> None:
        """Kill every process of ``host`` at once, as a power cut would: sshd
        and the agent's session, dockerd, containerd, the containers.

        Its namespaces, files (the engine's data, /run) and link stay, so
        ``start_daemons`` then brings it back as a reboot would. Killing only
        sshd and dockerd is no host death: the agent's session process and
        the containers would live on.
        """
        h = self.host(host)
        survivors = sysx.kill_until_gone({k: {v} for k, v in h.ns.items()}, [h.cgroup], time.monotonic() + timeout)
        if survivors:
            raise LabError(f"{host}: these processes would not die: " + "; ".join(f"{p} {c}" for p, c in survivors.items()))

    def stop_daemon(self, host: str, daemon: str, timeout: float = 30) -> None:
        """Stop one of ``host``'s daemons ("sshd" or "dockerd") as its service
        manager would (SIGTERM, then wait until it is gone)."""
        h = self.host(host)
        pid = h.pids.get(daemon)
        if pid is None:
            raise LabError(f"{host}: no {daemon} (daemons: {', '.join(h.pids) or 'none'})")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while sysx.pid_alive(pid):
            if time.monotonic() > deadline:
                raise LabError(f"{host}: {daemon} (pid {pid}) still running {timeout:g}s after SIGTERM")
            time.sleep(0.05)

    def add_user(self, host: str, name: str, groups: Sequence[str] = (), sudo: bool = False) -> None:
        """A login user ``name`` on bare ``host`` that the lab's operator key
        (``lab ssh-config``) logs in as: ``ssh NAME@HOST`` (deploy/lab_host.py)."""
        key = (lab_ssh.ssh_dir(self.dir) / lab_ssh.KEY_NAME).with_suffix(".pub").read_text()
        self.host(host).add_user(name, key, groups, sudo)

    def mask(self, host: str, path: str, present: bool = False) -> None:
        """Make the file ``path`` absent inside ``host`` (``present=True``: back again)."""
        self.host(host).mask(path, present)
        self._save("up")

    def start_daemons(self, host: str, timeout: float = START_TIMEOUT, only: Sequence[str] = ("sshd", "dockerd")) -> None:
        """Start ``host``'s sshd and dockerd (or those in ``only``) again (after
        ``kill_host`` or ``stop_daemon``) and wait until they answer. A fresh
        keeper parents them (the one from ``up`` takes no more requests);
        ``down`` kills it too."""
        h = self.host(host)
        if self._keeper_pid is not None:
            self._old_keepers.append(self._keeper_pid)
        self._start_keeper()
        try:
            h.start_daemons(self._spawn, only)
        finally:
            self._save("up")
            if self._keeper is not None:
                self._keeper.stdin.close()  # it goes on reaping on its own
                self._keeper.stdout.close()
        h.wait_ready(time.monotonic() + timeout, only)

    # ------------------------------------------------------------ down

    def down(self, progress: Progress = _quiet, timeout: float = 30) -> None:
        """Remove everything this lab made; safe on a half-up lab and when repeated."""
        sysx.check_root_and_tools()
        deadline = time.monotonic() + timeout
        self._refuse_if_inside()
        namespaces = self._namespaces()
        cgroups = self._cgroups()
        survivors = sysx.kill_until_gone(namespaces, cgroups, deadline)
        if survivors:
            raise LabError("lab down: these processes would not die: " + "; ".join(f"{p} {c}" for p, c in survivors.items()))
        self._kill_keeper(deadline)
        problems: list[str] = []
        for g in cgroups:
            problems += sysx.remove_cgroup(g, deadline)
        problems += sysx.unmount_all_under(self.dir)
        for ns in self._netns_names():
            res = sysx.run(["ip", "netns", "delete", ns], check=False)
            if res.returncode != 0 and (sysx.NETNS_DIR / ns).exists():
                problems.append(f"netns {ns}: {res.stderr.strip()}")
        for link in self._links():
            res = sysx.run(["ip", "link", "delete", link], check=False)
            if res.returncode != 0 and sysx.link_exists(link):
                problems.append(f"link {link}: {res.stderr.strip()}")
        for rule in self._iptables + [r for r in sysx.iptables_rules_tagged(self._tag) if r not in self._iptables]:
            sysx.run(["iptables", "-D", *rule], check=False)
        if sysx.iptables_rules_tagged(self._tag):
            problems.append(f"iptables rules tagged {self._tag} remain")
        self._unregister()
        if self.dir.exists():
            try:
                shutil.rmtree(self.dir)
            except OSError as exc:
                problems.append(f"{self.dir}: {exc}")
        self._hosts = {}
        self.cluster = False
        if problems:
            raise LabError("lab down left things behind:\n" + "\n".join(problems))
        progress(f"lab {self.name} down; nothing left in {self.dir}")

    def _kill_keeper(self, deadline: float) -> None:
        """Kill the keepers last, after they have reaped the daemons they parented."""
        time.sleep(0.1)  # let them reap the last of the killed daemons
        for pid in [*self._old_keepers, self._keeper_pid]:
            if pid is not None and "lab_keeper" in sysx.cmdline(pid):
                self._kill_one_keeper(pid, deadline)

    def _kill_one_keeper(self, pid: int, deadline: float) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while sysx.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            os.waitpid(pid, 0)  # our child when this object brought the lab up
        except ChildProcessError:
            pass

    def _refuse_if_inside(self) -> None:
        mine = {kind: os.stat(f"/proc/self/ns/{kind}").st_ino for kind in ("mnt", "net")}
        for h in self._hosts.values():
            if any(h.ns.get(k) == v for k, v in mine.items()):
                raise LabError(f"this shell is inside lab host {h.name}; run `pyswarm lab down` on the machine itself")

    def _namespaces(self) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {"mnt": set(), "net": set(), "uts": set()}
        # Inode numbers remembered from `up` find a half-made host's processes,
        # but only while the lab is still recorded: once it is down (another
        # Lab object for the same directory took it down), the kernel reuses
        # those numbers for other labs' namespaces, whose processes must live.
        if self.state_file.exists():
            for h in self._hosts.values():
                for kind, ino in h.ns.items():
                    found[kind].add(ino)
        mounts = set(sysx.mount_points())
        for f in self.ns_dir.glob("*.mnt") if self.ns_dir.exists() else []:
            if str(f) in mounts:
                found["mnt"].add(os.stat(f).st_ino)
        for f in self.ns_dir.glob("*.uts") if self.ns_dir.exists() else []:
            if str(f) in mounts:
                found["uts"].add(os.stat(f).st_ino)
        for ns in self._netns_names():
            try:
                found["net"].add(os.stat(sysx.NETNS_DIR / ns).st_ino)
            except OSError:
                pass
        return found

    def _netns_names(self) -> list[str]:
        planned = {h.netns for h in self._hosts.values()}
        return sorted(planned | {n for n in sysx.netns_names() if n.startswith(f"{self.name}-")})

    def _cgroups(self) -> list[str]:
        planned = {h.cgroup for h in self._hosts.values()}
        found = {p.name for p in Path(sysx.CGROUP_ROOT, "pids").glob(f"{self.name}-*")} if Path(sysx.CGROUP_ROOT, "pids").is_dir() else set()
        return sorted(planned | found)

    def _links(self) -> list[str]:
        names = [p.name for p in Path("/sys/class/net").iterdir()]
        ours = [n for n in names if re.fullmatch(rf"{self.name}v\d+", n)]
        return ours + ([self.bridge] if self.bridge in names else [])

    def _unregister(self) -> None:
        with _registry_locked():
            self._unregister_locked()

    def _unregister_locked(self) -> None:
        entry = REGISTRY / "labs" / self.name
        if entry.exists() and entry.read_text().strip() == str(self.dir):
            entry.unlink()
        labs = REGISTRY / "labs"
        if labs.exists() and any(labs.iterdir()):
            return  # another lab still uses the mount points
        shared = REGISTRY / "mountpoints.json"
        made = json.loads(shared.read_text()) if shared.exists() else []
        for target in sorted(set(made) | set(self._created_mountpoints), key=len, reverse=True):
            p = Path(target)
            try:
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()  # only when empty: never remove what someone put there
                elif p.is_file() and p.stat().st_size == 0:
                    p.unlink()
            except OSError:
                pass
        if (REGISTRY / "netns-mount").exists() and not sysx.netns_names() and sysx.is_mount_point(sysx.NETNS_DIR):
            sysx.run(["umount", str(sysx.NETNS_DIR)], check=False)
            try:
                sysx.NETNS_DIR.rmdir()
            except OSError:
                pass
        shutil.rmtree(REGISTRY, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this lab still exists on the machine (empty after a clean down)."""
        found = [f"netns {n}" for n in sysx.netns_names() if n.startswith(f"{self.name}-")]
        found += [f"link {n}" for n in self._links()]
        found += [f"mount {m}" for m in sysx.mounts_under(self.dir)]
        found += [f"process {p} {c}" for p, c in sysx.processes_in(self._namespaces(), self._cgroups()).items()]
        found += [f"cgroup {d}" for g in self._cgroups() for d in sysx.cgroup_dirs(g)]
        found += [f"iptables {' '.join(r)}" for r in sysx.iptables_rules_tagged(self._tag)]
        if self.dir.exists():
            found.append(f"directory {self.dir}")
        return found


@dataclass
class _Keeper:
    pid: int
    stdin: TextIO
    stdout: TextIO


def _check_system_python() -> None:
    """Bare hosts offer only the system's python3: it must make venvs (Debian: python3-venv)."""
    res = sysx.run([SYSTEM_PYTHON, "-c", "import venv, ensurepip"], check=False)
    if res.returncode != 0:
        raise LabError(f"bare lab hosts need {SYSTEM_PYTHON} with venv: apt install python3-venv ({res.stderr.strip()[-200:]})")


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "/"


def _text(data: bytes) -> str:
    return data.decode(errors="replace")


def remember_mountpoints(made: list[str], registry: Path = REGISTRY) -> None:
    """Add ``made`` to the mount points the last lab down removes.

    Labs coming up side by side (CI's two test workers) each add theirs.
    """
    shared = registry / "mountpoints.json"
    with _registry_locked():
        known = json.loads(shared.read_text()) if shared.exists() else []
        shared.write_text(json.dumps(sorted(set(known) | set(made))))


@contextlib.contextmanager
def _registry_locked() -> Iterator[None]:
    """The machine-wide registry of labs, held while it is read and rewritten.

    Two labs come up at once under CI's two test workers: without it one read
    the other's half-written mountpoints.json (empty) and its lab up failed.
    """
    fd = os.open(REGISTRY_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
