"""``pyswarm context create/ls/use/rm/inspect``: the operator's named clusters
(pyswarm/contexts.py). They run on the operator's machine and never talk to
a manager."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyswarm import contexts
from pyswarm.output import print_rows

from . import common


def _create(args: argparse.Namespace) -> int:
    ctx = contexts.create(args.name, args.hosts or [], description=args.description, replace=args.force)
    print(ctx.name)
    return 0


def _ls(args: argparse.Namespace) -> int:
    store = contexts.load()
    rows: list[dict[str, Any]] = [{"name": contexts.LOCAL, "current": store.current == contexts.LOCAL,
                                   "hosts": ["unix socket of this host's manager"], "description": "",
                                   "cluster_id": ""}]
    rows += [{"name": c.name, "current": store.current == c.name, "hosts": c.hosts,
              "description": c.description, "cluster_id": c.cluster_id} for c in store.items.values()]
    for row in rows:
        row["name_display"] = row["name"] + (" *" if row["current"] else "")
        row["hosts_display"] = ", ".join(row["hosts"])
    print_rows(rows, args.format, [("NAME", "name_display"), ("MANAGERS", "hosts_display"),
                                   ("DESCRIPTION", "description")], drop=("name_display", "hosts_display"))
    return 0


def _use(args: argparse.Namespace) -> int:
    contexts.use(args.name)
    print(args.name)
    return 0


def _rm(args: argparse.Namespace) -> int:
    for name in args.names:
        contexts.remove(name, force=args.force)
        print(name)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    out = []
    for name in args.names:
        c = contexts.get(name)
        out.append({"name": c.name, "hosts": c.hosts, "cluster_id": c.cluster_id,
                    "description": c.description, "machines": c.machines})
    print(json.dumps(out, indent=2))
    return 0


def register(sub: Any) -> None:
    cmds = sub.add_parser("context", help="manage contexts: the clusters this CLI talks to over SSH").add_subparsers(
        dest="context_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("create", help="name a cluster by the SSH addresses of its managers")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--host", dest="hosts", action="append", metavar="ssh://[USER@]HOST[:PORT]",
                   help="a manager (repeatable: tried in order until one answers)")
    p.add_argument("--description", default="")
    p.add_argument("-f", "--force", action="store_true", help="replace a context of that name")
    p.set_defaults(func=_create)
    p = cmds.add_parser("ls", help="list contexts (the current one is marked *)")
    common.format_arg(p)
    p.set_defaults(func=_ls)
    p = cmds.add_parser("use", help="make a context the current one ('default': this host's manager)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_use)
    p = cmds.add_parser("rm", help="remove contexts")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-f", "--force", action="store_true", help="remove the current context too")
    p.set_defaults(func=_rm)
    p = cmds.add_parser("inspect", help="show contexts as JSON")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=_inspect)
