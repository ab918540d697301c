"""One lab host: its namespaces, its own view of the files a real host owns,
and its sshd and dockerd.

A host is three namespaces made persistent by bind-mounting their files: a
network namespace (``ip netns add``), and a mount and a UTS namespace
(``unshare --mount=FILE --uts=FILE``). Processes enter all three with
``nsenter`` — not ``ip netns exec``, which remounts /sys and hides the cgroup
mounts dockerd needs. The hosts share the machine's filesystem (so one venv
serves them all), and the mount namespace bind-mounts a private copy of
each path a real host owns over the shared one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from pyswarm.deploy.lab_sys import NETNS_DIR, LabError, docker_ping, pid_alive, run, ssh_banner, tail

TEMPLATES = Path(__file__).with_name("templates")

# (path inside the host, name of the private copy under the host's directory)
HOST_BINDS: tuple[tuple[str, str], ...] = (
    ("/etc/ssh", "etc-ssh"),
    ("/etc/docker", "etc-docker"),
    ("/etc/hosts", "etc-hosts"),
    ("/root/.ssh", "root-ssh"),
    # bash sources ~/.bashrc for commands run by sshd (the agent's forced
    # command too); the machine's may be slow or take locks (pyenv's), which
    # would stall every agent start in every lab: hosts get a quiet one
    ("/root/.bashrc", "root-bashrc"),
    ("/var/lib/pyswarm", "var-lib-pyswarm"),
    ("/var/log/pyswarm", "var-log-pyswarm"),
    ("/run", "run"),
)
FILE_BINDS = {"/etc/hosts", "/root/.bashrc", "/etc/passwd", "/etc/group", "/etc/shadow"}
# A bare host (``lab up --bare``) also owns these, bound before HOST_BINDS (which
# go over /root): an empty /opt and /usr/local, and a home with no pyenv in it.
BARE_BINDS: tuple[tuple[str, str], ...] = (
    ("/root", "root-home"),
    ("/opt", "opt"),
    ("/usr/local", "usr-local"),
    # its own users (LabHost.add_user: a sudo user, an API group's member):
    # copies of the machine's user database, homes and sudoers.d
    ("/home", "home"),
    ("/etc/passwd", "etc-passwd"),
    ("/etc/group", "etc-group"),
    ("/etc/shadow", "etc-shadow"),
    ("/etc/sudoers.d", "etc-sudoers.d"),
)
USER_DB = ("/etc/passwd", "/etc/group", "/etc/shadow")
USR_LOCAL_DIRS = ("bin", "etc", "games", "include", "lib", "man", "sbin", "share", "src")

DAEMONS = ("sshd", "dockerd")
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def free_id_lines(lines: Sequence[str]) -> int:
    """The lowest id from 2000 up that no line of a passwd/group file uses."""
    taken = {int(f[2]) for f in (ln.split(":") for ln in lines) if len(f) > 2 and f[2].isdigit()}
    return next(i for i in range(2000, 60000) if i not in taken)


def host_path(bare: bool = False) -> str:
    """PATH inside a host: this installation's scripts first, like a host where pyswarm is
    installed; on a bare host only the system's directories."""
    return STD_PATH if bare else f"{Path(sys.executable).parent}:{STD_PATH}"


@dataclass
class LabHost:
    """Everything the lab knows about one host; stored in the lab's state file."""

    name: str
    role: str  # "manager" or "worker"
    index: int  # last octet of the address; also picks the docker0 subnet
    address: str
    netns: str
    veth: str
    cgroup: str
    home: str  # the host's directory under the lab dir
    ns_dir: str
    ns: dict[str, int] = field(default_factory=dict)  # kind -> namespace inode, once made
    pids: dict[str, int] = field(default_factory=dict)  # daemon -> pid
    bare: bool = False  # sees only the system's python3, sshd and dockerd (see Lab.up)
    hidden: list[str] = field(default_factory=list)  # machine paths covered by an empty tmpfs inside
    masked: dict[str, list[str]] = field(default_factory=dict)  # directory -> names made absent (mask)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabHost:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------ paths

    @property
    def dir(self) -> Path:
        return Path(self.home)

    @property
    def netns_file(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def mnt_file(self) -> Path:
        return Path(self.ns_dir) / f"{self.name}.mnt"

    @property
    def uts_file(self) -> Path:
        return Path(self.ns_dir) / f"{self.name}.uts"

    @property
    def binds(self) -> tuple[tuple[str, str], ...]:
        """(path inside, private copy) in mount order."""
        return (BARE_BINDS + HOST_BINDS) if self.bare else HOST_BINDS

    def private(self, inside: str) -> Path:
        """The machine path of the host's private copy of ``inside`` (the deepest bind holding it)."""
        for target, name in sorted(self.binds, key=lambda b: len(b[0]), reverse=True):
            if inside == target or inside.startswith(target + "/"):
                return self.dir / name / inside[len(target) :].lstrip("/")
        raise KeyError(inside)

    @property
    def docker_sock(self) -> Path:
        """The host's engine socket, reachable from the root namespace too."""
        return self.private("/run/docker.sock")

    @property
    def bip(self) -> str:
        return f"10.251.{self.index}.1/24"

    def log(self, daemon: str) -> Path:
        return self.dir / "log" / f"{daemon}.log"

    def nsenter(self, cwd: str = "/") -> list[str]:
        """The argv prefix that runs a command inside this host, in directory ``cwd``.

        Entering a mount namespace moves nsenter to "/" unless told otherwise;
        the hosts share the filesystem, so the caller's directory (a compose
        file given by relative path) means the same inside.
        """
        ns = [f"--net={self.netns_file}", f"--mount={self.mnt_file}", f"--uts={self.uts_file}"]
        return ["nsenter", *ns, f"--wd={cwd}", "--"]

    # ------------------------------------------------------------ bring-up

    def prepare_files(self, all_hosts: list[LabHost], bridge_addr: str, operator_key: str = "") -> None:
        """Write the host's private copies: sshd config and fresh host key, etc.

        ``operator_key`` (a public key) goes into root's authorized_keys: the
        key of the lab's SSH config (``pyswarm lab ssh-config``).
        """
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True, autoescape=False)
        for target, name in self.binds:
            if target not in FILE_BINDS:
                (self.dir / name).mkdir(parents=True, exist_ok=True)
        if self.bare:
            os.chmod(self.dir / "root-home", 0o700)
            for sub in USR_LOCAL_DIRS:
                (self.dir / "usr-local" / sub).mkdir(exist_ok=True)
            for mountpoint in (".ssh", ".bashrc"):  # where HOST_BINDS go inside the private home
                p = self.dir / "root-home" / mountpoint
                p.touch() if mountpoint == ".bashrc" else p.mkdir(mode=0o700, exist_ok=True)
            for db in USER_DB:
                shutil.copy2(db, self.private(db))
            os.chmod(self.dir / "etc-sudoers.d", 0o750)
        (self.dir / "log").mkdir(exist_ok=True)
        (self.dir / "docker").mkdir(exist_ok=True)
        os.chmod(self.dir / "root-ssh", 0o700)
        os.chmod(self.dir / "var-lib-pyswarm", 0o700)
        self.private("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        etc_ssh = self.private("/etc/ssh")
        for shared in ("moduli", "ssh_config"):
            if Path("/etc/ssh", shared).is_file():
                shutil.copy(Path("/etc/ssh", shared), etc_ssh / shared)
        (etc_ssh / "sshd_config").write_text(env.get_template("lab_sshd_config.j2").render(host=self.name, path=host_path(self.bare)))
        key = etc_ssh / "ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{self.name}", "-f", str(key)])
        (self.private("/etc/docker") / "daemon.json").write_text(env.get_template("lab_daemon.json.j2").render())
        hosts = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{self.name}", "::1\tlocalhost ip6-localhost ip6-loopback"]
        hosts += [f"{h.address}\t{h.name}" for h in all_hosts if h is not self]
        hosts.append(f"{bridge_addr}\tlab-gateway")
        self.private("/etc/hosts").write_text("\n".join(hosts) + "\n")
        self.private("/root/.bashrc").write_text("# a lab host: the machine's ~/.bashrc is not run here\n")
        if operator_key:
            keys = self.private("/root/.ssh/authorized_keys")
            fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(operator_key.strip() + "\n")

    def make_mount_uts_ns(self) -> None:
        """Create the persistent mount and UTS namespaces and set up the host's view.

        Inside the new mount namespace we first drop the copies of namespace
        files (``/run/netns`` and the lab's ns directory) so that one host
        does not pin the others' namespaces, then bind the private copies.
        """
        for f in (self.mnt_file, self.uts_file):
            f.touch()
        binds = " ".join(f"mount --bind {self.dir / name} {target};" for target, name in self.binds)
        # a bare host must not see this machine's pyswarm: an empty read-only tmpfs over each path
        hides = " ".join(f"mount -t tmpfs -o ro,mode=0755,size=16k pswlab-hidden {shlex.quote(p)};" for p in self.hidden)
        script = (
            "set -e\n"
            f"hostname {self.name}\n"
            # another lab going down at this moment may unmount some first: fine
            "grep -E ' - nsfs ' /proc/self/mountinfo | cut -d' ' -f5 | sort -r | xargs -r -n1 umount -l 2>/dev/null || true\n"
            f"if mountpoint -q {NETNS_DIR}; then umount -l {NETNS_DIR}; fi\n"
            f"if mountpoint -q {self.ns_dir}; then umount -l {self.ns_dir}; fi\n"
            f"{binds}\n"
            f"{hides}\n"
        )
        argv = ["unshare", f"--mount={self.mnt_file}", f"--uts={self.uts_file}", "--propagation", "private", "sh", "-c", script]
        res = run(argv, check=False)
        if res.returncode != 0:
            raise LabError(f"{self.name}: could not make its mount namespace: {res.stderr.strip()}")
        for kind, f in (("mnt", self.mnt_file), ("uts", self.uts_file), ("net", self.netns_file)):
            self.ns[kind] = os.stat(f).st_ino

    def start_daemons(self, spawn: Callable[[list[str], Path, dict[str, str]], int], only: Sequence[str] = DAEMONS) -> None:
        """Start sshd and dockerd (or those in ``only``) inside the host through ``spawn`` (the lab's keeper)."""
        sshd = ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config"]
        dockerd = [
            "dockerd",
            "--config-file", "/etc/docker/daemon.json",
            "--data-root", str(self.dir / "docker"),
            "--exec-root", "/run/docker",
            "--pidfile", "/run/docker.pid",
            "-H", "unix:///run/docker.sock",
            "--bip", self.bip,
            "--cgroup-parent", self.cgroup,
        ]  # fmt: skip
        # The lab has no registry: Swarm mode (benchmarks run Docker Swarm on
        # the lab too) would otherwise try to pull every service image first.
        offline = {"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}
        for daemon, argv in (("sshd", sshd), ("dockerd", dockerd)):
            if daemon not in only:
                continue
            # nsenter execs the daemon, so the pid is the daemon's
            self.pids[daemon] = spawn(self.nsenter() + argv, self.log(daemon), self.env(offline if daemon == "dockerd" else None))

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A clean environment like a root login on a real host, engine socket included."""
        env = {
            "PATH": host_path(self.bare),
            "HOME": "/root",
            "USER": "root",
            "LOGNAME": "root",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "DOCKER_HOST": "unix:///run/docker.sock",
        }
        if "TERM" in os.environ:
            env["TERM"] = os.environ["TERM"]
        env.update(extra or {})
        return env

    def wait_ready(self, deadline: float, only: Sequence[str] = DAEMONS) -> None:
        """Wait until dockerd answers /_ping and sshd sends its banner (those in ``only``)."""
        probes: dict[str, Callable[[], bool]] = {
            "dockerd": lambda: docker_ping(self.docker_sock),
            "sshd": lambda: ssh_banner(self.address),
        }
        waiting = {d: p for d, p in probes.items() if d in only}
        while waiting:
            for daemon, probe in list(waiting.items()):
                if probe():
                    del waiting[daemon]
                elif not pid_alive(self.pids[daemon]):
                    raise LabError(f"{self.name}: {daemon} exited during start-up; last lines of {self.log(daemon)}:\n{tail(self.log(daemon))}")
            if not waiting:
                return
            if time.monotonic() > deadline:
                d = sorted(waiting)[0]
                raise LabError(f"{self.name}: {d} not ready in time; last lines of {self.log(d)}:\n{tail(self.log(d))}")
            time.sleep(0.05)

    def add_user(self, name: str, key: str, groups: Sequence[str] = (), sudo: bool = False) -> None:
        """A login user of a bare host (its own /etc/passwd, /etc/group,
        /etc/shadow, /home and /etc/sudoers.d): ``key`` (a public key line) in
        its authorized_keys, a member of ``groups`` (made when missing), and
        with ``sudo`` passwordless sudo. The machine's own users are untouched."""
        if not self.bare:
            raise LabError(f"{self.name}: only a bare host has a user database of its own")
        passwd, group, shadow = (self.private(db) for db in USER_DB)
        users = passwd.read_text().splitlines()
        if any(line.split(":")[0] == name for line in users):
            raise LabError(f"{self.name}: user {name} exists already")
        uid = free_id_lines(users)
        lines = group.read_text().splitlines()
        for g in (name, *groups):
            if not any(ln.split(":")[0] == g for ln in lines):
                lines.append(f"{g}:x:{free_id_lines(lines)}:")
        lines = [ln + ("" if ln.endswith(":") else ",") + name if ln.split(":")[0] in groups else ln for ln in lines]
        group.write_text("\n".join(lines) + "\n")
        gid = next(int(ln.split(":")[2]) for ln in lines if ln.split(":")[0] == name)
        with open(passwd, "a") as fh:
            fh.write(f"{name}:x:{uid}:{gid}::/home/{name}:/bin/sh\n")
        with open(shadow, "a") as fh:  # "*": no password, yet not locked (sshd refuses locked accounts)
            fh.write(f"{name}:*:19000:0:99999:7:::\n")
        home = self.private(f"/home/{name}")
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        (home / ".ssh" / "authorized_keys").write_text(key.strip() + "\n")
        for p in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            os.chown(p, uid, gid)
        os.chmod(home, 0o750)
        os.chmod(home / ".ssh" / "authorized_keys", 0o600)
        if sudo:
            rule = self.private(f"/etc/sudoers.d/{name}")
            rule.write_text(f"{name} ALL=(ALL) NOPASSWD: ALL\n")
            os.chmod(rule, 0o440)

    def mask(self, path: str, present: bool = False) -> None:
        """Make the file ``path`` absent inside the host (``present``: back again),
        as on a machine without the package that ships it.

        Not a bind of an empty file over it (that still exists, and a caller
        probing with ``which`` or ``stat`` would see it): the host gets its own
        copy of the directory — hard links to the machine's files, minus the
        masked ones — bound over the directory in its mount namespace.
        """
        directory, name = os.path.split(path.rstrip("/"))
        names = set(self.masked.get(directory, []))
        names = names - {name} if present else names | {name}
        copy = self.dir / "masked" / directory.strip("/").replace("/", "_")
        if directory in self.masked:
            run(self.nsenter() + ["umount", directory])
        if copy.exists():
            shutil.rmtree(copy)
        if not names:
            self.masked.pop(directory, None)
            return
        copy.mkdir(parents=True)
        for entry in os.scandir(directory):
            dst = copy / entry.name
            if entry.name in names:
                continue
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), dst)
            elif entry.is_dir():
                dst.mkdir()
            elif entry.is_file():
                try:
                    os.link(entry.path, dst)
                except OSError:
                    shutil.copy2(entry.path, dst)
        run(self.nsenter() + ["mount", "--bind", str(copy), directory])
        self.masked[directory] = sorted(names)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "address": self.address,
            "netns": self.netns,
            "sshd": ssh_banner(self.address, timeout=0.5),
            "dockerd": docker_ping(self.docker_sock, timeout=0.5),
        }
