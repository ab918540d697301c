"""Helpers shared by tests: waiting on a condition with a deadline, and the
e2e modules' view of the lab through the CLI of its first manager.

Import with ``from support import wait_for`` (tests/ is not a package;
tests/conftest.py puts this directory on ``sys.path``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    describe: str,
    interval: float = 0.2,
    observe: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Fails the test after ``timeout`` seconds with ``describe`` and what was
    last seen: the predicate's last (falsy) return value or exception, and,
    when given, ``observe()`` (e.g. the output of ``docker ps``) so the
    failure says what the system looked like, not only that it timed out.
    Exceptions from the predicate count as "not yet" (the thing may still be
    starting) but are kept for the message.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported below
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            seen = f"\nlast seen: {last!r}"
            if observe is not None:
                try:
                    seen += f"\nstate: {observe()}"
                except Exception as exc:  # noqa: BLE001
                    seen += f"\nstate: (observe failed: {exc})"
            pytest.fail(f"timed out after {timeout:g}s waiting for {describe}{seen}", pytrace=False)
        time.sleep(interval)


def wait_until(
    check: Callable[[], tuple[object, T]],
    timeout: float,
    describe: str,
    interval: float = 0.1,
) -> T:
    """:func:`wait_for` for checks that return ``(verdict, what_was_seen)``:
    the failure message shows what the last check saw; returns that value
    once the verdict is true."""
    seen: list[T] = []

    def predicate() -> bool:
        ok, last = check()
        seen[:] = [last]
        return bool(ok)

    wait_for(predicate, timeout, describe, interval, observe=lambda: seen[0] if seen else None)
    return seen[0]


@contextmanager
def deployed_stacks(lab: Any, tmp_path: Path) -> Iterator[Callable[[str, str], None]]:
    """``deploy(stack, yaml)`` on ``lab``'s first manager. Every stack deployed
    is removed on the way out, waiting until its containers are gone from
    every host, so a shared lab is left as it was found."""
    stacks: list[str] = []

    def deploy(stack: str, text: str) -> None:
        path = tmp_path / f"{stack}.yml"
        path.write_text(text)
        lab.pyswarm(lab.managers[0], "stack", "deploy", "-c", str(path), stack, timeout=60)
        stacks.append(stack)

    try:
        yield deploy
    finally:
        for stack in stacks:
            lab.pyswarm(lab.managers[0], "stack", "rm", stack, check=False)
        for stack in stacks:
            def gone(stack: str = stack) -> bool:
                return all(not lab.docker(h, "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={stack}",
                                          timeout=30).stdout.strip() for h in lab.hosts)
            wait_for(gone, 30, f"stack {stack}'s containers removed from every host")


# -- the lab through `pyswarm` on its first manager (the e2e modules) ----------


def cli(lab: Any, *args: str, **kw: Any) -> str:
    return str(lab.pyswarm(lab.managers[0], *args, timeout=60, **kw).stdout)


def cli_json(lab: Any, *args: str) -> Any:
    return json.loads(cli(lab, *args, "--format", "json"))


def tasks(lab: Any, service: str) -> list[dict[str, Any]]:
    return list(cli_json(lab, "service", "ps", service))


def live(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in rows if t["desired_state"] == "running"]


def running(lab: Any, service: str) -> list[dict[str, Any]]:
    """The running replicas; desired-state is filtered by the manager (``service ps --filter``)."""
    rows = cli_json(lab, "service", "ps", "--filter", "desired-state=running", service)
    return [t for t in live(list(rows)) if t["current_state"] == "running"]


def brief(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a failure message shows of each task."""
    return [(t["name"], t["node"], t["desired_state"], t["current_state"], t["error"] or t["message"]) for t in rows]


# -- the operator's machine (the root namespace) reaching lab hosts over SSH ---


def operator_env(**extra: str) -> dict[str, str]:
    """This process's environment as an operator's laptop would have it: no
    PYSWARM_*, XDG_* or ssh-agent of the engineer who runs the tests, but the
    session's own wheel cache (PYSWARM_CACHE_DIR, set by conftest.lab_slot),
    so that ``machine init/add`` do not build into, or wait on the lock of, a
    cache that other checkouts and sessions on the machine share; then ``extra``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSWARM_", "SSH_AUTH_SOCK", "XDG_"))}
    if os.environ.get("PYSWARM_CACHE_DIR"):
        env["PYSWARM_CACHE_DIR"] = os.environ["PYSWARM_CACHE_DIR"]
    env.update(extra)
    return env


class Operator:
    """The "laptop": an operator key and an OpenSSH config with one ``Host``
    alias per lab host (``User root``, the key, a known_hosts file of its
    own — never the machine's ~/.ssh), and a config directory for contexts,
    all under ``directory``. :meth:`authorize` lets the key in as root on
    lab hosts (:meth:`revoke` takes it out again); :meth:`pyswarm` runs the
    CLI here, in the root namespace, with that setup."""

    def __init__(self, lab: Any, directory: Path) -> None:
        import subprocess

        self.lab = lab
        self.dir = directory
        self.key = directory / "id_ed25519"
        self.known_hosts = directory / "known_hosts"
        self.config = directory / "ssh_config"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pyswarm-test-operator",
                        "-f", str(self.key)], check=True)
        self.public_key = (directory / "id_ed25519.pub").read_text().strip()
        self.config.write_text("".join(f"Host {name}\n  HostName {addr}\n" for name, addr in lab.hosts.items())
                               + f"Host *\n  User root\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
                               f"  UserKnownHostsFile {self.known_hosts}\n")
        self.authorized: list[str] = []

    def env(self) -> dict[str, str]:
        return operator_env(PYSWARM_SSH_CONFIG=str(self.config), XDG_CONFIG_HOME=str(self.dir / "xdg"))

    def authorize(self, *hosts: str) -> None:
        for host in hosts:
            path = self.lab.host(host).private("/root/.ssh/authorized_keys")
            with open(path, "a") as fh:
                fh.write(self.public_key + "\n")
            path.chmod(0o600)
            self.authorized.append(host)

    def revoke(self) -> None:
        for host in self.authorized:
            path = self.lab.host(host).private("/root/.ssh/authorized_keys")
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if line.strip() != self.public_key]
                path.write_text("".join(line + "\n" for line in kept))
        self.authorized.clear()

    def host_key_fingerprint(self, host: str) -> str:
        import subprocess

        pub = self.lab.host(host).private("/etc/ssh/ssh_host_ed25519_key.pub")
        return subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True,
                              text=True).stdout.split()[1]

    def pyswarm(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> Any:
        return self.pyswarm_env({}, *args, check=check, timeout=timeout, input=input)

    def pyswarm_env(self, env: dict[str, str], *args: str, check: bool = True, timeout: float = 120,
                    input: str | None = None) -> Any:
        """:meth:`pyswarm` with ``env`` over the operator's environment."""
        import subprocess
        import sys

        exe = str(Path(sys.executable).parent / "pyswarm")
        result = subprocess.run([exe, *args], env={**self.env(), **env}, capture_output=True, text=True,
                                timeout=timeout,
                                input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            pytest.fail(f"operator$ pyswarm {' '.join(args)} exited {result.returncode}:\n"
                        f"{result.stdout}{result.stderr}", pytrace=False)
        return result
