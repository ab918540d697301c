"""Services: ls, ps, scale, inspect, update, rollback."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyswarm.cli import common
from pyswarm.errors import UsageError
from pyswarm.output import print_rows


def _service_ls(args: argparse.Namespace) -> int:
    rows = common.call("service.ls")
    for row in rows:
        row["id_display"] = row["id"][:12]
    print_rows(rows, args.format, [
        ("ID", "id_display"), ("NAME", "name"), ("MODE", "mode"), ("REPLICAS", "replicas"), ("IMAGE", "image"),
    ], drop=("id_display",))
    return 0


def _service_ps(args: argparse.Namespace) -> int:
    common.task_table(common.call("service.ps", {"service": args.service}), args.format)
    return 0


def _service_scale(args: argparse.Namespace) -> int:
    scales: dict[str, int] = {}
    for item in args.scales:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"invalid scale specifier {item!r}: expected SERVICE=REPLICAS")
        try:
            scales[name] = int(value)
        except ValueError:
            raise UsageError(f"invalid replicas value for {name}: {value!r} is not an integer") from None
    for item in common.call("service.scale", {"scales": scales}):
        print(f"{item['service']} scaled to {item['replicas']}")
    return 0


def _service_update(args: argparse.Namespace) -> int:
    result = common.call("service.update", {
        "service": args.service, "image": args.image, "env_add": args.env_add or [],
        "env_rm": args.env_rm or [], "replicas": args.replicas, "force": args.force,
    })
    print(result["service"])
    return 0


def _service_rollback(args: argparse.Namespace) -> int:
    result = common.call("service.rollback", {"service": args.service})
    print(result["service"])
    return 0


def _service_inspect(args: argparse.Namespace) -> int:
    print(json.dumps([common.call("service.inspect", {"service": s}) for s in args.services], indent=2))
    return 0



def register(sub: Any) -> None:
    service = sub.add_parser("service", help="manage services").add_subparsers(dest="service_command", metavar="COMMAND", required=True)
    p = service.add_parser("ls", help="list services")
    common.format_arg(p)
    p.set_defaults(func=_service_ls)
    p = service.add_parser("ps", help="list the tasks of a service")
    p.add_argument("service", metavar="SERVICE")
    common.format_arg(p)
    p.set_defaults(func=_service_ps)
    p = service.add_parser("scale", help="set the replicas of services")
    p.add_argument("scales", nargs="+", metavar="SERVICE=REPLICAS")
    p.set_defaults(func=_service_scale)
    p = service.add_parser("inspect", help="show services as JSON")
    p.add_argument("services", nargs="+", metavar="SERVICE")
    p.set_defaults(func=_service_inspect)
    p = service.add_parser("update", help="change a service; the change rolls out per its update_config")
    p.add_argument("--image", help="the new image")
    p.add_argument("--env-add", action="append", metavar="KEY=VALUE", help="add or change a variable (repeatable)")
    p.add_argument("--env-rm", action="append", metavar="KEY", help="remove a variable (repeatable)")
    p.add_argument("--replicas", type=int, help="number of replicas")
    p.add_argument("--force", action="store_true", help="replace every task even if nothing changed")
    p.add_argument("service", metavar="SERVICE")
    p.set_defaults(func=_service_update)
    p = service.add_parser("rollback", help="go back to the service's previous spec (per its rollback_config)")
    p.add_argument("service", metavar="SERVICE")
    p.set_defaults(func=_service_rollback)

