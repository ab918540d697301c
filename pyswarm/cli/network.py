"""Cluster networks: create, ls, inspect, rm (docs/networking.md)."""

from __future__ import annotations

import argparse
from typing import Any

from pyswarm.cli import common
from pyswarm.output import docker_network, print_rows


def _network_create(args: argparse.Namespace) -> int:
    labels = dict(item.partition("=")[::2] for item in args.label or [])
    print(common.call("network.create", {"name": args.name, "labels": labels, "internal": args.internal,
                                   "attachable": args.attachable})["id"])
    return 0


def _network_ls(args: argparse.Namespace) -> int:
    rows = common.call("network.ls")
    for row in rows:
        row["id_display"] = row["id"][:12]
        row["services_display"] = len(row["services"])
    print_rows(rows, args.format, [("NETWORK ID", "id_display"), ("NAME", "name"), ("DRIVER", "driver"),
                                   ("SCOPE", "scope"), ("STACK", "stack"), ("SERVICES", "services_display")],
               drop=("id_display", "services_display"), fields=docker_network)
    return 0


def _network_inspect(args: argparse.Namespace) -> int:
    common.print_inspect([common.call("network.inspect", {"name": n}) for n in args.names], args)
    return 0


def _network_rm(args: argparse.Namespace) -> int:
    for name in common.call("network.rm", {"names": args.names}):
        print(name)
    return 0



def register(sub: Any) -> None:
    """``network create/ls/inspect/rm``: cluster networks (docs/networking.md)."""
    cmds = sub.add_parser("network", help="manage cluster networks").add_subparsers(
        dest="network_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("create", help="create a cluster network (stacks use it with `external: true`)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-l", "--label", action="append", metavar="KEY=VALUE")
    p.add_argument("--internal", action="store_true", help="recorded only: not enforced yet")
    p.add_argument("--attachable", action="store_true", help="recorded, for Docker compatibility")
    p.set_defaults(func=_network_create)
    p = cmds.add_parser("ls", help="list cluster networks")
    common.format_arg(p)
    p.set_defaults(func=_network_ls)
    p = cmds.add_parser("inspect", help="show networks as JSON, with the services attached")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    common.inspect_args(p)
    p.set_defaults(func=_network_inspect)
    p = cmds.add_parser("rm", help="remove networks (refused while a service uses one)")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(func=_network_rm)
