"""Secrets and configs: the same four commands each."""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from pyswarm.cli import common
from pyswarm.errors import UsageError
from pyswarm.output import docker_object, print_rows, since


def _object_create(args: argparse.Namespace) -> int:
    from pyswarm.compose.objects import MAX_OBJECT_BYTES
    from pyswarm.compose.source import read_at_most

    where = "stdin" if args.file == "-" else args.file
    try:  # at most the limit + 1 bytes: `secret create x - < /dev/zero` ends at once
        if args.file == "-":
            data = read_at_most(sys.stdin.fileno(), MAX_OBJECT_BYTES)
        else:
            with open(args.file, "rb") as f:
                data = read_at_most(f.fileno(), MAX_OBJECT_BYTES)
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > MAX_OBJECT_BYTES:
        raise UsageError(f"{where}: larger than Swarm's 500 KB limit for a {args.kind} "
                         f"({MAX_OBJECT_BYTES:,} bytes)")
    labels = dict(item.partition("=")[::2] for item in args.label or [])
    created = common.call(f"{args.kind}.create", {"name": args.name, "data": base64.b64encode(data).decode(),
                                            "labels": labels})
    print(created["id"])
    return 0


def _object_ls(args: argparse.Namespace) -> int:
    rows = common.call(f"{args.kind}.ls")
    for row in rows:
        row["id_display"] = row["id"][:12]
        row["created_display"] = since(row["created_at"])
    print_rows(rows, args.format, [("ID", "id_display"), ("NAME", "name"), ("CREATED", "created_display")],
               drop=("id_display", "created_display"), fields=docker_object)
    return 0


def _object_inspect(args: argparse.Namespace) -> int:
    common.print_inspect([common.call(f"{args.kind}.inspect", {"name": n}) for n in args.names], args)
    return 0


def _object_rm(args: argparse.Namespace) -> int:
    for name in common.call(f"{args.kind}.rm", {"names": args.names}):
        print(name)
    return 0



def register(sub: Any) -> None:
    """``secret`` and ``config``: the same four commands each."""
    for kind in ("secret", "config"):
        cmds = sub.add_parser(kind, help=f"manage {kind}s").add_subparsers(
            dest=f"{kind}_command", metavar="COMMAND", required=True)
        p = cmds.add_parser("create", help=f"create a {kind} from a file or stdin")
        p.add_argument("name", metavar="NAME")
        p.add_argument("file", metavar="FILE|-", help="the file to read, or - for stdin")
        p.add_argument("-l", "--label", action="append", metavar="KEY=VALUE")
        p.set_defaults(func=_object_create, kind=kind)
        p = cmds.add_parser("ls", help=f"list {kind}s")
        common.format_arg(p)
        p.set_defaults(func=_object_ls, kind=kind)
        p = cmds.add_parser("inspect", help=f"show {kind}s as JSON" + (" (never the data)" if kind == "secret" else ""))
        p.add_argument("names", nargs="+", metavar=kind.upper())
        common.inspect_args(p)
        p.set_defaults(func=_object_inspect, kind=kind)
        p = cmds.add_parser("rm", help=f"remove {kind}s (not while a service uses one)")
        p.add_argument("names", nargs="+", metavar=kind.upper())
        p.set_defaults(func=_object_rm, kind=kind)
