"""Every command the code runs is installed by the make target that runs it.

A fresh Debian machine once failed three network tests because ``ipset``
was missing from ``make deps``, and ``make bench`` lost its DNS scenario to
a missing ``dnsperf``. This test reads the code (Python's AST) for the
external commands it runs — argv lists handed to subprocess/asyncio exec
calls, the agent's runner, the lab's spawn and exec, ``which(...)`` checks,
and the lab's daemon argv lists — and checks each is in deploy/lab_sys.py
TOOLS, whose package is in the Makefile's list for the target that runs the
code: APT_PACKAGES for pyswarm, the lab and the tests (``make deps``), plus
BENCH_APT_PACKAGES for bench/ (``make bench``). Shell scripts (deploy/*.sh)
are not read.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyswarm.deploy.lab_sys import BENCH, DEPS, ESSENTIAL, LAB_TOOLS, REQUIRED_TOOLS, TOOLS, WHERE_PRESENT

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = {"pyswarm": DEPS, "manager": DEPS, "worker": DEPS, "dns": DEPS, "compose": DEPS, "deploy": DEPS, "tests": DEPS, "bench": BENCH}
# calls whose list arguments are argv vectors
EXEC_CALLS = {"run", "Popen", "check_output", "check_call", "call", "create_subprocess_exec", "_run_input", "run_command",
              "exec", "execvp", "execvpe", "posix_spawn", "spawn", "_spawn", "_sh", "_ssh"}
# calls whose first argument is one command name
NAME_CALLS = {"create_subprocess_exec", "which"}
# daemon argv lists that reach exec only through a loop variable (deploy/lab_host.py start_daemons)
ARGV_NAME = re.compile(r"^(sshd|dockerd)$")
COMMAND = re.compile(r"^[a-z][a-z0-9.+_-]*$")
SELF = {"pyswarm"}  # this package's own script


def _const(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class _Scanner(ast.NodeVisitor):
    """Collects (command, line) from one module, resolving simple names in its scope."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int]] = []
        self.scopes: list[dict[str, str]] = [{}]

    def _lookup(self, name: str) -> str | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def _argv0(self, node: ast.AST) -> str | None:
        if isinstance(node, (ast.List, ast.Tuple)):
            for elt in node.elts:
                if isinstance(elt, ast.Starred):
                    continue  # a prefix such as nsenter's: the command follows
                if isinstance(elt, ast.Name):
                    return self._lookup(elt.id)
                return _const(elt)
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._argv0(node.left) or self._argv0(node.right)
        if isinstance(node, ast.Name):
            return self._lookup(node.id)
        return None

    def _record(self, cmd: str | None, line: int) -> None:
        if cmd and cmd.startswith("/"):
            cmd = cmd.rsplit("/", 1)[1]  # /usr/sbin/sshd
        if cmd and COMMAND.match(cmd):
            self.found.append((cmd, line))

    def _scope(self, body: list[ast.stmt]) -> dict[str, str]:
        """Names bound in this body to a command string or an argv list (first binding wins)."""
        names: dict[str, str] = {}
        for stmt in body:
            for node in ast.walk(stmt):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node not in body:
                    continue
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    value = _const(node.value)
                    if value is None and isinstance(node.value, (ast.List, ast.BinOp)):
                        value = self._argv0(node.value)
                    if value and COMMAND.match(value):
                        names.setdefault(node.targets[0].id, value)
        return names

    def visit_Module(self, node: ast.Module) -> None:
        self.scopes = [self._scope(node.body)]
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scopes.append(self._scope(node.body))
        if re.search(r"argv|nsenter|enter", node.name):
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and ret.value is not None:
                    self._record(self._argv0(ret.value), ret.lineno)
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name) and ARGV_NAME.search(target.id) and isinstance(node.value, (ast.List, ast.BinOp)):
                self._record(self._argv0(node.value), node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if fn in NAME_CALLS and node.args:
            self._record(_const(node.args[0]), node.lineno)
        if fn in EXEC_CALLS:
            for arg in node.args:
                if not isinstance(arg, ast.Constant):
                    self._record(self._argv0(arg), node.lineno)
        self.generic_visit(node)


def scan() -> Iterator[tuple[str, str, str]]:
    """(command, target, "file:line") for every external command the code runs."""
    for folder, target in CODE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            scanner = _Scanner()
            scanner.visit(ast.parse(path.read_text(), str(path)))
            for cmd, line in scanner.found:
                yield cmd, target, f"{path.relative_to(ROOT)}:{line}"


def makefile_list(name: str) -> set[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    m = re.search(rf"^{name}\s*:?=(.*)$", text, re.M)
    assert m, f"Makefile: no {name}"
    return set(m.group(1).split())


def test_the_scan_finds_what_the_agent_the_lab_and_bench_run() -> None:
    """The scan must see the commands we know are run, or it proves nothing."""
    seen = {cmd for cmd, _t, _w in scan()}
    known = {"ip", "iptables", "iptables-restore", "ipset", "nsenter", "unshare", "sshd", "dockerd", "docker",
             "ssh-keygen", "busybox", "dnsperf", "dnsmasq", "wrk", "bridge", "dig"}
    assert known <= seen, f"the scan missed {sorted(known - seen)}"


def test_every_command_the_code_runs_is_installed_by_its_make_target() -> None:
    lists = {DEPS: makefile_list("APT_PACKAGES"), BENCH: makefile_list("APT_PACKAGES") | makefile_list("BENCH_APT_PACKAGES")}
    problems = []
    for cmd, target, where in scan():
        if cmd in SELF:
            continue
        if cmd not in TOOLS:
            problems.append(f"{where}: runs `{cmd}`, which deploy/lab_sys.py TOOLS does not list (add it with its Debian package)")
            continue
        package, installed_by = TOOLS[cmd]
        if installed_by in (ESSENTIAL, WHERE_PRESENT):
            continue
        if target == DEPS and installed_by == BENCH:
            problems.append(f"{where}: runs `{cmd}` outside bench/, but TOOLS has its package {package} only for make bench")
        elif package not in lists[target]:
            name = "APT_PACKAGES" if target == DEPS else "BENCH_APT_PACKAGES"
            problems.append(f"{where}: runs `{cmd}` from {package}, missing from the Makefile's {name}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_table_and_makefile_agree() -> None:
    deps, bench = makefile_list("APT_PACKAGES"), makefile_list("BENCH_APT_PACKAGES")
    for cmd, (package, installed_by) in TOOLS.items():
        if installed_by == DEPS:
            assert package in deps, f"TOOLS[{cmd!r}]: {package} is not in the Makefile's APT_PACKAGES"
        if installed_by == BENCH:
            assert package in bench, f"TOOLS[{cmd!r}]: {package} is not in the Makefile's BENCH_APT_PACKAGES"
    assert set(REQUIRED_TOOLS) == set(LAB_TOOLS) and {"ipset", "iptables"} <= set(REQUIRED_TOOLS)


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system (no dpkg-query)")
def test_essential_means_essential_on_debian() -> None:
    for cmd, (package, installed_by) in TOOLS.items():
        if installed_by == ESSENTIAL:
            res = subprocess.run(["dpkg-query", "-W", "-f=${Essential}", package], capture_output=True, text=True, timeout=30)
            assert res.stdout.strip() == "yes", f"TOOLS[{cmd!r}]: {package} is not Essential on Debian; list it under DEPS"


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system (no dpkg-query)")
def test_each_package_provides_its_command_here() -> None:
    """Where the package is installed, it really ships the command (catches a wrong package name)."""
    for cmd, (package, _by) in TOOLS.items():
        res = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            continue  # not installed on this machine: nothing to compare
        files = res.stdout.split()
        if cmd == "python3":
            continue  # python3-venv gives the venv module; python3 itself comes with it as a dependency
        # iptables ships iptables-nft and iptables-legacy, and /usr/sbin/iptables is an alternative
        ships = [f.rsplit("/", 1)[1] for f in files if f.rsplit("/", 1)[0].endswith("bin")]
        variants = {re.sub(r"-(nft|legacy)", "", name) for name in ships}
        assert cmd in variants, f"TOOLS[{cmd!r}]: {package} ships no {cmd} (it ships {sorted(ships)[:20]})"
