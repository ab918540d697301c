"""``pyswarm machine init/add/ls/rm``: hosts made (and unmade) nodes from the
operator's machine over SSH (pyswarm/machine.py, docs/remote.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyswarm import contexts
from pyswarm.errors import UsageError
from pyswarm.output import print_rows

from . import common


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _context(args: argparse.Namespace) -> contexts.Context:
    """The context these commands work on: --context, else PYSWARM_CONTEXT, else the current one."""
    if args.global_host:
        raise UsageError("`pyswarm machine` works on a context (it records the machines there): "
                         "give --context NAME, not --host")
    sel = contexts.select(None, args.global_context)
    if sel.local:
        raise UsageError("no context selected: `pyswarm machine init [USER@]HOST` creates one, "
                         "or pick one with `pyswarm context use NAME` or --context NAME")
    return contexts.get(sel.context)


def _init(args: argparse.Namespace) -> int:
    from pyswarm import machine

    if args.global_host or args.global_context:
        raise UsageError("`pyswarm machine init` creates a new cluster and its context (--name): "
                         "no --host or --context")
    done = machine.init(args.destination, args.name, args.advertise_addr, args.accept_host_key, _progress,
                        api_group=args.api_group)
    verb = "is now the first manager of a new cluster" if "initialized" in done.changed else \
        "was already a manager: nothing changed" if not done.changed else "is a manager (pyswarm reinstalled)"
    print(f"{done.hostname} ({done.dest}) {verb}; context {done.context} is the current one ({done.seconds:.1f}s)")
    return 0


def _add(args: argparse.Namespace) -> int:
    from pyswarm import machine

    ctx = _context(args)
    done = machine.add(args.destination, args.manager, ctx, common.connection(), args.accept_host_key, _progress)
    role = "manager" if args.manager else "worker"
    verb = f"joined as a {role}" if "joined" in done.changed else \
        f"was already a {role}: nothing changed" if not done.changed else f"is a {role} (pyswarm reinstalled)"
    print(f"{done.hostname} ({done.dest}) {verb} (context {done.context}, {done.seconds:.1f}s)")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from pyswarm import machine

    ctx = _context(args)
    rows = machine.ls(ctx, common.connection())
    print_rows(rows, args.format, [("NAME", "name"), ("SSH", "ssh"), ("ROLE", "role"), ("STATUS", "status"),
                                   ("ADDRESS", "address"), ("MANAGER STATUS", "manager_status"),
                                   ("ENGINE VERSION", "engine_version")])
    return 0


def _rm(args: argparse.Namespace) -> int:
    from pyswarm import machine

    ctx = _context(args)
    done = machine.rm(args.machine, ctx, args.accept_host_key, _progress)
    print(f"{done.hostname} ({done.dest}) removed: not a node any more, and nothing of pyswarm left on it "
          f"({done.seconds:.1f}s)")
    return 0


def register(sub: Any) -> None:
    cmds = sub.add_parser("machine", help="make hosts nodes over SSH from this machine (install included)"
                          ).add_subparsers(dest="machine_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("init", help="make a host the first manager of a new cluster, with a context for it")
    p.add_argument("destination", metavar="[USER@]HOST[:PORT]", help="as ssh takes it (aliases of the SSH config too)")
    p.add_argument("--name", help="the new context's name (default: HOST)")
    p.add_argument("--advertise-addr", help="the address other hosts reach the manager on (default: its default route's)")
    p.add_argument("--api-group", default="", metavar="GROUP",
                   help="besides root, members of GROUP on the host may use the manager's API (pyswarm init --api-group)")
    p.set_defaults(func=_init)
    p = cmds.add_parser("add", help="make a host a node of the context's cluster")
    p.add_argument("destination", metavar="[USER@]HOST[:PORT]")
    p.add_argument("--manager", action="store_true", help="join as a manager (and add it to the context's managers)")
    p.set_defaults(func=_add)
    p = cmds.add_parser("ls", help="list the cluster's nodes with the SSH address each was added at")
    common.format_arg(p)
    p.set_defaults(func=_ls)
    p = cmds.add_parser("rm", help="remove a node and everything pyswarm installed on it")
    p.add_argument("machine", metavar="HOST", help="its hostname, or the [USER@]HOST it was added at")
    p.set_defaults(func=_rm)
