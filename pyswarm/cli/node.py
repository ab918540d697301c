"""Nodes: ls, promote, demote, rm, inspect, update."""

from __future__ import annotations

import argparse
from typing import Any

from pyswarm import listfilters
from pyswarm.cli import common
from pyswarm.errors import UsageError
from pyswarm.output import docker_node, pretty_node, print_rows


def _node_ls(args: argparse.Namespace) -> int:
    rows = listfilters.nodes(common.call("node.ls"), listfilters.parse(args.filter, listfilters.NODE_KEYS))
    for row in rows:
        row["id_display"] = row["id"] + (" *" if row.get("self") else "")
    print_rows(rows, args.format, [
        ("ID", "id_display"), ("HOSTNAME", "hostname"), ("ADDRESS", "address"), ("ROLE", "role"),
        ("STATUS", "status"), ("AVAILABILITY", "availability"), ("MANAGER STATUS", "manager_status"),
        ("ENGINE VERSION", "engine_version"), ("MESSAGE", "message"),
    ], drop=("id_display",), fields=docker_node, quiet="id" if args.quiet else None)
    return 0


def _node_ps(args: argparse.Namespace) -> int:
    """Tasks on the nodes named (default: the node of the manager asked)."""
    common.task_table(common.call("node.ps", {"nodes": args.nodes}), args)
    return 0


def _node_promote(args: argparse.Namespace) -> int:
    for line in common.call("node.promote", {"nodes": args.nodes}):
        print(line)
    return 0


def _node_demote(args: argparse.Namespace) -> int:
    for line in common.call("node.demote", {"nodes": args.nodes}):
        print(line)
    return 0


def _node_rm(args: argparse.Namespace) -> int:
    for name in common.call("node.rm", {"nodes": args.nodes, "force": args.force}):
        print(name)
    return 0


def _node_inspect(args: argparse.Namespace) -> int:
    found = [common.call("node.inspect", {"node": n}) for n in args.nodes]
    me = next((r["id"] for r in common.call("node.ls") if r.get("self")), "") if args.pretty else ""
    common.print_inspect(found, args, lambda n: pretty_node(n, me))
    return 0


def _node_update(args: argparse.Namespace) -> int:
    add: dict[str, str] = {}
    for item in args.label_add or []:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid label {item!r}: expected KEY=VALUE")
        add[key] = value
    if args.availability is None and not add and not args.label_rm:
        raise UsageError("node update: nothing to change (give --availability, --label-add or --label-rm)")
    result = common.call("node.update", {"node": args.node, "availability": args.availability,
                                   "label_add": add, "label_rm": args.label_rm or []})
    print(result["id"])
    return 0



def register(sub: Any) -> None:
    node = sub.add_parser("node", help="manage nodes").add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    p = node.add_parser("ls", help="list nodes")
    common.list_args(p, listfilters.NODE_KEYS)
    p.set_defaults(func=_node_ls)
    p = node.add_parser("ps", help="list the tasks on nodes (default: this node)")
    p.add_argument("nodes", nargs="*", metavar="NODE")
    common.list_args(p, listfilters.TASK_KEYS, trunc=True)
    p.set_defaults(func=_node_ps)
    for name, func, text in (("promote", _node_promote, "make nodes managers"),
                             ("demote", _node_demote, "make managers workers")):
        p = node.add_parser(name, help=text)
        p.add_argument("nodes", nargs="+", metavar="NODE")
        p.set_defaults(func=func)
    p = node.add_parser("rm", help="remove nodes from the cluster")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p.add_argument("-f", "--force", action="store_true", help="remove a ready node, or a manager (demoting it)")
    p.set_defaults(func=_node_rm)
    p = node.add_parser("inspect", help="show nodes as JSON (or --pretty, or --format)")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    common.inspect_args(p, pretty=True)
    p.set_defaults(func=_node_inspect)
    p = node.add_parser("update", help="change a node's availability or labels")
    p.add_argument("--availability", choices=["active", "pause", "drain"],
                   help="active: takes tasks; pause: keeps its tasks, takes no new ones; drain: its tasks move away")
    p.add_argument("--label-add", action="append", metavar="KEY=VALUE", help="add or change a label (repeatable)")
    p.add_argument("--label-rm", action="append", metavar="KEY", help="remove a label (repeatable)")
    p.add_argument("node", metavar="NODE", help="node id, id prefix or hostname")
    p.set_defaults(func=_node_update)

