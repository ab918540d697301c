"""``pyswarm image``: ship images from this machine's engine to the nodes.

``push`` is ``docker pussh``'s job without a registry: the manager this CLI
talks to sends the image from its engine (the CLI runs on a manager, so it
is the engine ``docker build`` used) over SSH, only the layers each node
lacks. ``ls`` shows which nodes hold the images the cluster's services use;
``shipments`` what this manager sent lately, with the bytes on the wire.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyswarm.cli import common
from pyswarm.output import print_rows

PUSH_TIMEOUT = 3600.0  # seconds: a big image to many nodes takes a while


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def _push(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = common.call("image.push", {"image": args.image, "nodes": args.node or []},
                                             timeout=PUSH_TIMEOUT)
    for row in rows:
        row["layers"] = f"{row['layers_sent']}/{row['layers_total']}"
        row["sent"] = _size(int(row["bytes"]))
        row["time"] = f"{row['seconds']:.1f}s"
    print_rows(rows, args.format, [("NODE", "node"), ("RESULT", "result"), ("LAYERS SENT", "layers"),
                                   ("BYTES", "sent"), ("TIME", "time"), ("ERROR", "error")],
               drop=("layers", "sent", "time"))
    failed = [r for r in rows if r["result"] == "failed"]
    for r in failed:
        print(f"error: image {args.image} to {r['node']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def _ls(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = common.call("image.ls")
    problems = [p for r in rows for p in r.get("errors", ())]
    rows = [r for r in rows if r["image"]]
    for row in rows:
        row["nodes_display"] = ", ".join(row["nodes"]) or "-"
        row["services_display"] = ", ".join(row["services"])
        row["id_display"] = row["id"].removeprefix("sha256:")[:12]
        row["size_display"] = _size(int(row["size"])) if row["size"] else ""
    print_rows(rows, args.format, [("IMAGE", "image"), ("ID", "id_display"), ("SIZE", "size_display"),
                                   ("SERVICES", "services_display"), ("NODES", "nodes_display")],
               drop=("nodes_display", "services_display", "id_display", "size_display"))
    for p in problems:
        print(f"warning: could not ask {p}", file=sys.stderr)
    return 0


def _shipments(args: argparse.Namespace) -> int:
    data = common.call("image.shipments")
    rows: list[dict[str, Any]] = data["shipments"]
    if args.format == "json":
        import json

        print(json.dumps(data, indent=2))
        return 0
    for row in rows:
        row["layers"] = f"{row['layers_sent']}/{row['layers_total']}"
        row["sent"] = _size(int(row["bytes"]))
        row["time"] = f"{row['seconds']:.1f}s"
    print_rows(rows, "table", [("IMAGE", "image"), ("NODE", "node"), ("WHY", "reason"), ("RESULT", "result"),
                               ("LAYERS SENT", "layers"), ("BYTES", "sent"), ("TIME", "time"), ("ERROR", "error")])
    print(f"total sent: {_size(int(data['bytes_sent']))}")
    return 0


def register(sub: Any) -> None:
    image = sub.add_parser("image", help="ship images to the nodes without a registry").add_subparsers(
        dest="image_command", metavar="COMMAND", required=True)
    p = image.add_parser("push", help="send an image from this machine's engine to nodes (only missing layers)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--node", action="append", metavar="NODE", help="a node to send it to (repeatable; default: every ready node)")
    common.format_arg(p)
    p.set_defaults(func=_push)
    p = image.add_parser("ls", help="which nodes hold the images of the cluster's services")
    common.format_arg(p)
    p.set_defaults(func=_ls)
    p = image.add_parser("shipments", help="images this manager sent lately, with bytes and layers")
    common.format_arg(p)
    p.set_defaults(func=_shipments)
