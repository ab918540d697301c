"""``pyswarm lab``: a real cluster of namespace hosts on this machine (root).

The command-line face of :class:`pyswarm.deploy.lab_core.Lab`; see
docs/lab.md for how the lab is built and why. Python users (tests,
benchmarks) import ``Lab`` from here::

    from pyswarm.deploy.lab import Lab
    lab = Lab.current()
    lab.docker("worker1", "ps")
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from pyswarm.deploy.lab_core import DEFAULT_DIR, Lab, default_dir, pyswarm_executable
from pyswarm.deploy.lab_image import IMAGE
from pyswarm.deploy.lab_sys import LabCommandError, LabError, check_root_and_tools

__all__ = ["IMAGE", "Lab", "LabCommandError", "LabError", "pyswarm_executable", "register_cli"]


def register_cli(sub: Any) -> None:
    """Add ``pyswarm lab …`` to the CLI's subparsers."""
    p = sub.add_parser(
        "lab",
        help="a cluster of network-namespace hosts on this machine (root)",
        description=f"Hosts as namespaces on one bridge, each with its own sshd and dockerd. "
        f"State lives in $PYSWARM_LAB_DIR (default {DEFAULT_DIR}).",
    )
    lab_sub = p.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    up = lab_sub.add_parser("up", help="bring up a fresh lab (taking down the one in the lab dir first)")
    up.add_argument("--managers", type=int, default=1, metavar="M", help="manager hosts (default 1)")
    up.add_argument("--workers", type=int, default=3, metavar="W", help="worker hosts (default 3)")
    up.add_argument("--no-cluster", dest="cluster", action="store_false", help="only the hosts: skip pyswarm init/join")
    up.add_argument("--bare", action="store_true",
                    help="hosts like fresh VMs: only the system's python3, sshd and dockerd, no pyswarm (needs --no-cluster)")
    up.set_defaults(func=_up)

    down = lab_sub.add_parser("down", help="remove the lab: namespaces, processes, bridge, mounts, files")
    down.set_defaults(func=_down)

    status = lab_sub.add_parser("status", help="hosts, addresses, and whether sshd and dockerd answer")
    status.add_argument("--format", choices=["table", "json"], default="table")
    status.set_defaults(func=_status)

    sc = lab_sub.add_parser("ssh-config", help="print the path of an OpenSSH config with one Host entry per lab host")
    sc.set_defaults(func=_ssh_config)

    ex = lab_sub.add_parser("exec", help="run a command inside a lab host: lab exec HOST -- CMD …")
    ex.add_argument("host")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD …")
    ex.set_defaults(func=_exec)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    check_root_and_tools()
    lab = Lab(default_dir())
    t0 = time.monotonic()
    lab.up(args.managers, args.workers, cluster=args.cluster, progress=_progress, bare=args.bare)
    _print_table(lab.status())
    print(f"\nlab up in {time.monotonic() - t0:.1f}s; image {IMAGE} is in every host's engine")
    first = lab.managers[0]
    print(f"try:  pyswarm lab exec {first} -- docker run --rm {IMAGE} hostname")
    if lab.cluster:
        print(f"      pyswarm lab exec {first} -- pyswarm node ls")
    print(f"      ssh -F $(pyswarm lab ssh-config) {first} hostname")
    return 0


def _ssh_config(args: argparse.Namespace) -> int:
    lab = Lab.current()
    if not lab.ssh_config.is_file():
        raise LabError(f"the lab in {lab.dir} has no SSH config yet (is it still coming up?)")
    print(lab.ssh_config)
    return 0


def _down(args: argparse.Namespace) -> int:
    check_root_and_tools()
    d = default_dir()
    lab = Lab.current(d) if (d / "state.json").exists() else Lab(d)
    lab.down(progress=_progress)
    return 0


def _status(args: argparse.Namespace) -> int:
    check_root_and_tools()
    lab = Lab.current()
    rows = lab.status()
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ["HOST", "ROLE", "ADDRESS", "SSHD", "DOCKERD"]
    table = [header] + [[r["name"], r["role"], r["address"], _yn(r["sshd"]), _yn(r["dockerd"])] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _yn(ok: bool) -> str:
    return "running" if ok else "DOWN"


def _exec(args: argparse.Namespace) -> int:
    """Replace this process with nsenter, so stdio, signals and exit status pass straight through."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise LabError("lab exec: give a command, e.g. `pyswarm lab exec manager1 -- docker ps`")
    check_root_and_tools()
    lab = Lab.current()
    prefix, env = lab.exec_argv(args.host)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(prefix[0], prefix + cmd, env)
    except OSError as exc:
        raise LabError(f"lab exec: {exc}") from exc
    return 127  # not reached
