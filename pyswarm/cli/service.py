"""Services: create, update, rm, ls, ps, scale, inspect, rollback.

``create`` and ``update`` take Docker's flags (:mod:`pyswarm.service_flags`
turns them into the spec); they, ``scale`` and ``rollback`` then watch the
change converge (:mod:`pyswarm.progress`) unless ``-d/--detach``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyswarm import listfilters, progress, service_flags
from pyswarm.cli import common, streams
from pyswarm.errors import UsageError
from pyswarm.models import ServiceSpec
from pyswarm.output import docker_service, pretty_service, print_rows


def poll(names: list[str]) -> list[dict[str, Any]]:
    return list(common.call("service.progress", {"services": names}))


def wait(args: argparse.Namespace, names: list[str], rollback: bool = False) -> int:
    """Watch ``names`` converge unless ``--detach`` (or ``--quiet``, which
    waits silently, as Docker's does)."""
    if getattr(args, "detach", False) or not names:
        return 0
    if getattr(args, "quiet", False):
        import io

        return progress.watch(names, poll, io.StringIO(), tty=False, rollback=rollback)
    return progress.watch(names, poll, sys.stdout, rollback=rollback)


def service_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = listfilters.services(rows, listfilters.parse(args.filter, listfilters.SERVICE_KEYS))
    for row in rows:
        row["id_display"] = row["id"][:12]
    print_rows(rows, args.format, [
        ("ID", "id_display"), ("NAME", "name"), ("MODE", "mode"), ("REPLICAS", "replicas"), ("IMAGE", "image"),
    ], drop=("id_display",), fields=docker_service, quiet="id_display" if args.quiet else None)


def _ls(args: argparse.Namespace) -> int:
    service_table(common.call("service.ls"), args)
    return 0


def _ps(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name in args.services:
        rows += common.paged("service.ps", {"service": name, **common.task_query(args)})
    common.task_table(rows, args)
    return 0


def _create(args: argparse.Namespace) -> int:
    spec = service_flags.create_spec(args)
    done = common.call("service.create", {"spec": spec.to_dict()})
    print(done["id"])
    sys.stdout.flush()
    return wait(args, [done["service"]])


def _update(args: argparse.Namespace) -> int:
    if args.rollback:
        return _rollback(args)
    current = common.call("service.inspect", {"service": args.service})
    spec = service_flags.update_spec(ServiceSpec.from_dict(current["spec"]), args)
    done = common.call("service.update", {"service": current["id"], "spec": spec.to_dict(),
                                          "version": current["version"], "force": args.force})
    print(done["service"])
    sys.stdout.flush()
    return wait(args, [done["service"]])


def _rollback(args: argparse.Namespace) -> int:
    result = common.call("service.rollback", {"service": args.service})
    print(result["service"])
    sys.stdout.flush()
    return wait(args, [result["service"]], rollback=True)


def _rm(args: argparse.Namespace) -> int:
    for name in common.call("service.rm", {"services": args.services}):
        print(name)
    return 0


def _scale(args: argparse.Namespace) -> int:
    scales: dict[str, int] = {}
    for item in args.scales:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"invalid scale specifier {item!r}: expected SERVICE=REPLICAS")
        try:
            scales[name] = int(value)
        except ValueError:
            raise UsageError(f"invalid replicas value for {name}: {value!r} is not an integer") from None
    done = common.call("service.scale", {"scales": scales})
    for item in done:
        print(f"{item['service']} scaled to {item['replicas']}")
    sys.stdout.flush()
    return wait(args, [item["service"] for item in done])


def _inspect(args: argparse.Namespace) -> int:
    common.print_inspect([common.call("service.inspect", {"service": s}) for s in args.services], args,
                         pretty_service)
    return 0


def register(sub: Any) -> None:
    service = sub.add_parser("service", help="manage services").add_subparsers(
        dest="service_command", metavar="COMMAND", required=True)
    p = service.add_parser("create", help="create a service (without a stack file), with Docker's flags",
                           usage="pyswarm service create [OPTIONS] IMAGE [COMMAND [ARG...]]")
    service_flags.add_create_flags(p)
    p.set_defaults(func=_create)
    p = service.add_parser("update", help="change a service with Docker's flags; the change rolls out "
                           "per its update_config")
    service_flags.add_update_flags(p)
    p.set_defaults(func=_update)
    p = service.add_parser("rm", help="remove services (their tasks stop)")
    p.add_argument("services", nargs="+", metavar="SERVICE")
    p.set_defaults(func=_rm)
    p = service.add_parser("ls", help="list services")
    common.list_args(p, listfilters.SERVICE_KEYS)
    p.set_defaults(func=_ls)
    p = service.add_parser("ps", help="list the tasks of services")
    p.add_argument("services", nargs="+", metavar="SERVICE")
    common.list_args(p, listfilters.TASK_KEYS, trunc=True)
    p.set_defaults(func=_ps)
    p = service.add_parser("scale", help="set the replicas of services (and watch them converge)")
    p.add_argument("scales", nargs="+", metavar="SERVICE=REPLICAS")
    p.add_argument("-d", "--detach", action="store_true", help="return at once, without watching the tasks")
    p.set_defaults(func=_scale)
    p = service.add_parser("inspect", help="show services as JSON (or --pretty, or --format)")
    p.add_argument("services", nargs="+", metavar="SERVICE")
    common.inspect_args(p, pretty=True)
    p.set_defaults(func=_inspect)
    p = service.add_parser("rollback", help="go back to the service's previous spec (per its rollback_config)")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("-d", "--detach", action="store_true", help="return at once, without watching the tasks")
    p.add_argument("-q", "--quiet", action="store_true", help="print the service only, no progress")
    p.set_defaults(func=_rollback)
    streams.add_service_commands(service)  # logs, exec, restart, stats
