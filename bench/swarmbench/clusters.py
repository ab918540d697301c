"""The two orchestrators, formed on the same lab hosts, behind one interface.

Both are driven through their command-line tools, run inside the lab host
as an operator would (``pyswarm …`` and ``docker …`` in manager1), so each
figure includes what a user waits for, CLI start-up included.

Ports: pyswarm's API listens on 2377 (its default) and its Raft on 2378, so
Docker Swarm is formed with ``--listen-addr ADDR:2477`` on its managers;
that only moves Swarm's management port. Its address pool is set to
10.200.0.0/16 (the default 10.0.0.0/8 would overlap the lab's own
addresses). Nothing else about Swarm is tuned: default heartbeat, dispatcher
and Raft settings, as ``docker swarm init`` leaves them.

The lab's dockerd runs with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 (see
deploy/lab_host.py): there is no registry, and Swarm would otherwise try to
pull the image before every task. :meth:`Swarm.pull_attempts` checks the
engines' logs for pull attempts all the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyswarm.deploy.lab import Lab, LabCommandError

SWARM_PORT = 2477
SWARM_POOL = "10.200.0.0/16"


class BenchError(Exception):
    """The benchmark could not do what it set out to do (says what and where)."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, LabCommandError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not reached within {timeout:g}s (last seen: {str(last)[:300]})")
        time.sleep(interval)


def netns_pids(lab: Lab, host: str) -> list[int]:
    """Processes whose network namespace is ``host``'s."""
    ino = os.stat(lab.host(host).netns_file).st_ino
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


class Orchestrator:
    """What a scenario needs from an orchestrator."""

    name = ""
    #: container labels that mark this orchestrator's replicas of the bench stack
    task_label = ""

    def __init__(self, lab: Lab, managers: list[str], workers: list[str]) -> None:
        self.lab = lab
        self.managers = managers
        self.workers = workers
        self.entry = managers[0]  # where commands are sent

    def labels(self, stack: str, extra: tuple[str, ...] = ()) -> list[str]:
        return [f"com.docker.stack.namespace={stack}", self.task_label, *extra]

    # each returns when the command has returned (the orchestrator accepted it)
    def deploy(self, stack_file: str, stack: str) -> None: raise NotImplementedError
    def scale(self, service: str, replicas: int) -> None: raise NotImplementedError
    def remove(self, stack: str) -> None: raise NotImplementedError
    def node_ready(self, host: str) -> bool: raise NotImplementedError
    def leader(self) -> str | None: raise NotImplementedError
    def write_probe(self, via: str, n: int) -> bool: raise NotImplementedError
    def supports(self, feature: str) -> str | None:
        """None when ``feature`` can be measured, else why not."""
        return None


class Pyswarm(Orchestrator):
    name = "pyswarm"
    task_label = "pyswarm.task.id"

    def __init__(self, lab: Lab, managers: list[str], workers: list[str]) -> None:
        super().__init__(lab, managers, workers)
        self.note = ""

    def cli(self, *args: str, host: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.lab.pyswarm(host or self.entry, *args, **kw)

    def form(self, progress: Callable[[str], None]) -> None:
        """``pyswarm init`` in manager1, extra managers with the manager token, then the workers."""
        first = self.managers[0]
        addr = self.lab.hosts[first]
        self.cli("init", "--advertise-addr", addr, "--dns-upstream", "none", host=first, timeout=120)
        worker_token = self.cli("join-token", "worker", "-q").stdout.strip()
        endpoint = f"{addr}:2377"
        wanted = list(self.managers)
        self.managers = [first]
        if len(wanted) > 1:
            manager_token = self.cli("join-token", "manager", "-q").stdout.strip()
            joined = []
            for host in wanted[1:]:
                self.cli("join", "--token", manager_token, endpoint, host=host, timeout=120)
                joined.append(host)
            roles = self._roles()
            not_managers = [h for h in joined if roles.get(h) != "manager"]
            if not_managers:
                # pyswarm cannot add managers yet: take them out again, run with one
                for host in not_managers:
                    self.cli("leave", host=host, check=False)
                self.note = (f"pyswarm ran with 1 manager: {', '.join(not_managers)} joined with the manager token "
                             f"but became {', '.join(sorted({roles.get(h, '?') for h in not_managers}))}s "
                             "(multi-manager join not available yet); they left pyswarm again")
                self.managers = [first] + [h for h in joined if h not in not_managers]
            else:
                self.managers = [first] + joined
        elif len(wanted) == 1:
            self.note = "pyswarm ran with 1 manager (--pyswarm-managers 1)"
        for host in self.workers:
            self.cli("join", "--token", worker_token, endpoint, host=host, timeout=120)
        wait_until(lambda: all(self.node_ready(h) for h in self.managers + self.workers), 90, "pyswarm nodes ready")
        progress(f"pyswarm: {len(self.managers)} manager(s), {len(self.workers)} workers ready"
                 + (f" ({self.note})" if self.note else ""))

    def _nodes(self) -> list[dict[str, Any]]:
        res = self.cli("node", "ls", "--format", "json", timeout=20)
        return list(json.loads(res.stdout))

    def _roles(self) -> dict[str, str]:
        return {str(r.get("hostname")): str(r.get("role", "")).lower() for r in self._nodes()}

    def node_ready(self, host: str) -> bool:
        return any(r.get("hostname") == host and str(r.get("status", "")).lower() == "ready" for r in self._nodes())

    def deploy(self, stack_file: str, stack: str) -> None:
        self.cli("stack", "deploy", "-c", stack_file, stack, timeout=120)

    def scale(self, service: str, replicas: int) -> None:
        self.cli("service", "scale", "-d", f"{service}={replicas}", timeout=120)

    def remove(self, stack: str) -> None:
        self.cli("stack", "rm", stack, check=False, timeout=120)

    def leader(self) -> str | None:
        for r in self._nodes():
            if "leader" in str(r.get("manager_status", "")).lower():
                return str(r.get("hostname"))
        return None

    def write_probe(self, via: str, n: int) -> bool:
        # scaling a 0-replica service to 0 is still a committed write, and starts nothing
        try:
            res = self.cli("service", "scale", "-d", "probe_idle=0", host=via, check=False, timeout=5)
        except LabCommandError:  # timed out
            return False
        return res.returncode == 0

    def supports(self, feature: str) -> str | None:
        if feature == "failover" and len(self.managers) < 3:
            return (f"pyswarm has {len(self.managers)} manager(s) in this run; leader failover needs 3 "
                    "(multi-manager join is being built)")
        if feature == "update":
            # the scenario updates through `stack deploy`, which needs the leader's updater
            # (manager/updater.py); `pyswarm service update` is the CLI for the same thing
            import importlib.util

            if importlib.util.find_spec("pyswarm.manager.updater") is None:
                return "pyswarm has no rolling updater yet (manager/updater.py, `pyswarm service update` are being built)"
        return None

    def manager_pid(self, host: str) -> int | None:
        for pid in netns_pids(self.lab, host):
            argv = cmdline(pid)
            if len(argv) >= 3 and argv[-2:] == ["manager", "run"]:
                return pid
        return None

    def kill_manager(self, host: str) -> None:
        pid = self.manager_pid(host)
        if pid is None:
            raise BenchError(f"{host}: no `pyswarm manager run` process found")
        os.kill(pid, signal.SIGKILL)

    def restart_manager(self, host: str) -> None:
        if self.cli("manager", "start", "--help", host=host, check=False).returncode == 0:
            self.cli("manager", "start", host=host, timeout=30)
        else:
            code = "from pyswarm.manager.bootstrap import start_manager_service as s; s()"
            self.lab.exec(host, [self.lab_python(), "-c", code], timeout=30)
        wait_until(lambda: self.manager_pid(host) is not None, 30, f"{host}: pyswarm manager restarted")

    def lab_python(self) -> str:
        import sys

        return sys.executable


class Swarm(Orchestrator):
    name = "swarm"
    task_label = "com.docker.swarm.task.id"

    def docker(self, *args: str, host: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.lab.docker(host or self.entry, *args, **kw)

    def form(self, progress: Callable[[str], None]) -> None:
        first = self.managers[0]
        addr = self.lab.hosts[first]
        self.docker("swarm", "init", "--advertise-addr", f"{addr}:{SWARM_PORT}", "--listen-addr", f"{addr}:{SWARM_PORT}",
                    "--default-addr-pool", SWARM_POOL, host=first, timeout=120)
        tokens = {role: self.docker("swarm", "join-token", "-q", role).stdout.strip() for role in ("worker", "manager")}
        for host in self.managers[1:] + self.workers:
            role = "manager" if host in self.managers else "worker"
            a = self.lab.hosts[host]
            self.docker("swarm", "join", "--token", tokens[role], "--advertise-addr", f"{a}:{SWARM_PORT}",
                        "--listen-addr", f"{a}:{SWARM_PORT}", f"{addr}:{SWARM_PORT}", host=host, timeout=120)
        wait_until(lambda: all(self.node_ready(h) for h in self.managers + self.workers), 90, "swarm nodes ready")
        progress(f"swarm: {len(self.managers)} managers, {len(self.workers)} workers ready")

    def _nodes(self, via: str | None = None) -> list[dict[str, Any]]:
        res = self.docker("node", "ls", "--format", "{{json .}}", host=via, timeout=20)
        return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]

    def node_ready(self, host: str) -> bool:
        return any(r.get("Hostname") == host and r.get("Status") == "Ready" for r in self._nodes())

    def deploy(self, stack_file: str, stack: str) -> None:
        self.docker("stack", "deploy", "--resolve-image", "never", "-c", stack_file, stack, timeout=120)

    def scale(self, service: str, replicas: int) -> None:
        self.docker("service", "scale", "--detach", f"{service}={replicas}", timeout=120)

    def remove(self, stack: str) -> None:
        self.docker("stack", "rm", stack, check=False, timeout=120)

    def leader(self) -> str | None:
        for via in self.managers:
            try:
                for r in self._nodes(via):
                    if r.get("ManagerStatus") == "Leader":
                        return str(r.get("Hostname"))
            except LabCommandError:
                continue
        return None

    def write_probe(self, via: str, n: int) -> bool:
        try:
            res = self.docker("node", "update", "--label-add", f"bench.probe={n}", via, host=via, check=False, timeout=5)
        except LabCommandError:  # timed out
            return False
        return res.returncode == 0

    def dockerd_pid(self, host: str) -> int | None:
        for pid in netns_pids(self.lab, host):
            argv = cmdline(pid)
            if argv and Path(argv[0]).name == "dockerd":
                return pid
        return None

    def kill_engine(self, host: str) -> tuple[list[str], dict[str, str]]:
        """SIGKILL ``host``'s dockerd (its containerd follows); return what restarts it."""
        pid = self.dockerd_pid(host)
        if pid is None:
            raise BenchError(f"{host}: no dockerd found")
        argv = cmdline(pid)
        environ = dict(
            kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in kv
        )
        os.kill(pid, signal.SIGKILL)
        return argv, environ

    def restart_engine(self, host: str, argv: list[str], environ: dict[str, str]) -> None:
        h = self.lab.host(host)
        with open(h.log("dockerd"), "ab") as log:
            subprocess.Popen(h.nsenter() + argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environ,
                             start_new_session=True)
        from pyswarm.deploy.lab_sys import docker_ping

        wait_until(lambda: docker_ping(h.docker_sock), 60, f"{host}: dockerd restarted")

    def pull_attempts(self) -> int:
        """Lines in the engines' logs that say Swarm tried to pull an image."""
        n = 0
        for host in self.lab.hosts:
            try:
                text = self.lab.host(host).log("dockerd").read_text(errors="replace")
            except OSError:
                continue
            n += sum(1 for line in text.splitlines() if "pulling image failed" in line or "Pulling image" in line)
        return n
