"""Stacks: deploy, config, ls, ps, services, rm."""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from pyswarm import listfilters
from pyswarm.cli import common, streams
from pyswarm.cli.service import service_table, wait
from pyswarm.errors import NotFoundError
from pyswarm.output import docker_stack, print_rows, spec_diff


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _stack_deploy(args: argparse.Namespace) -> int:
    from pyswarm.compose import load_stack

    stack = load_stack(args.compose_file, args.stack, env_files=args.env_file or (), strict=args.strict)
    _print_warnings(stack.warnings)
    if stack.builds:  # before anything is sent; --dry-run only says what it would build
        from pyswarm.build import build_stack_images

        build_stack_images(stack, "plan" if args.dry_run else args.build_mode, args.build_output,
                           args.builder, common.is_remote(), common.connection)
    objects = {kind: [{"name": o.name, "external": o.external, "labels": o.labels,
                       "data": base64.b64encode(o.data).decode()} for o in getattr(stack, kind)]
               for kind in ("secrets", "configs")}
    if args.with_registry_auth:
        from pyswarm.registry import attach

        auth_secrets, warnings = attach(stack)
        objects["secrets"] += auth_secrets
        for warning in warnings:
            print(f"Warning: {warning}", file=sys.stderr)
    result = common.call("stack.deploy", {"stack": args.stack, "services": [s.to_dict() for s in stack.services],
                                          "networks": stack.config.get("networks") or {}, **objects,
                                          "prune": args.prune, "dry_run": args.dry_run})
    if args.dry_run:
        print_plan(result)
        return 0
    changed = []
    for item in result:
        verb = {"created": "Creating", "updated": "Updating", "unchanged": "Unchanged",
                "removed": "Removing"}[item["action"]]
        kind = next((k for k in ("service", "secret", "config", "network") if k in item), "service")
        print(f"{verb} {kind} {item[kind]}")
        if kind == "service" and item["action"] in ("created", "updated"):
            changed.append(item["service"])
    sys.stdout.flush()
    return 0 if args.detach else wait(argparse.Namespace(detach=False), changed)


def print_plan(report: list[dict[str, Any]]) -> None:
    """What ``stack deploy --dry-run`` would do, from the manager's answer."""
    images: list[str] = []
    for item in report:
        kind = next((k for k in ("service", "secret", "config", "network") if k in item), "service")
        action = item["action"]
        if action == "unchanged":
            print(f"Unchanged {kind} {item[kind]}")
        elif action == "created":
            extra = f" (image {item['image']})" if item.get("image") else ""
            print(f"Would create {kind} {item[kind]}{extra}")
            if item.get("image"):
                images.append(item["image"])
        elif action == "removed":
            print(f"Would remove {kind} {item[kind]} (--prune)")
        elif action == "updated":
            print(f"Would update {kind} {item[kind]}:")
            for line in spec_diff(item.get("old") or {}, item.get("new") or {}):
                print(f"    {line}")
            old_image = (item.get("old") or {}).get("container", {}).get("image")
            new_image = (item.get("new") or {}).get("container", {}).get("image")
            if new_image and new_image != old_image:
                images.append(new_image)
    if images:
        print("Images to pull: " + ", ".join(dict.fromkeys(images)))
    print("Nothing was changed (--dry-run).")


def _stack_config(args: argparse.Namespace) -> int:
    from pyswarm.compose import load_config, render_config

    stack = load_config(args.compose_file, env_files=args.env_file or (), strict=args.strict)
    _print_warnings(stack.warnings)
    sys.stdout.write(render_config(stack))
    return 0


def _print_warnings(warnings: list[str]) -> None:
    """Each loader warning on stderr, ``FILE:LINE:COL: key.path: message``
    (with ``--strict`` the loader raised them as errors instead)."""
    for warning in warnings:
        print(f"Warning: {warning}", file=sys.stderr)


def _stack_ls(args: argparse.Namespace) -> int:
    rows = listfilters.stacks(common.call("stack.ls"), listfilters.parse(args.filter, listfilters.STACK_KEYS))
    print_rows(rows, args.format, [("NAME", "name"), ("SERVICES", "services")], fields=docker_stack,
               quiet="name" if args.quiet else None)
    return 0


def _stack_ps(args: argparse.Namespace) -> int:
    common.task_table(common.paged("stack.ps", {"stack": args.stack, **common.task_query(args)}), args)
    return 0


def _stack_services(args: argparse.Namespace) -> int:
    rows = common.call("service.ls", {"stack": args.stack})
    if not rows:
        raise NotFoundError(f"nothing found in stack: {args.stack}")
    service_table(rows, args)
    return 0


def _stack_rm(args: argparse.Namespace) -> int:
    for name in common.call("stack.rm", {"stack": args.stack}):
        print(f"Removing service {name}")
    return 0


def _file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--compose-file", action="append", required=True, metavar="FILE")
    p.add_argument("--env-file", action="append", metavar="FILE", help="read variables from FILE (beside .env)")
    p.add_argument("--strict", action="store_true",
                   help="every warning is an error: exit 2, warnings listed, nothing done")


def register(sub: Any) -> None:
    stack = sub.add_parser("stack", help="manage stacks").add_subparsers(dest="stack_command", metavar="COMMAND", required=True)
    streams.add_stack_commands(stack)  # stack logs
    p = stack.add_parser("deploy", help="deploy or update a stack from compose files")
    _file_args(p)
    p.add_argument("-d", "--detach", type=_bool, nargs="?", const=True, default=True, metavar="true|false",
                   help="return at once (default); --detach=false watches the services converge")
    p.add_argument("--prune", action="store_true", help="remove the stack's services the files no longer have")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would change (services, spec diffs, images to pull) and change nothing")
    p.add_argument("--build", dest="build_mode", action="store_const", const="always", default="auto",
                   help="build every `build:` image, even when one of the same content exists")
    p.add_argument("--no-build", dest="build_mode", action="store_const", const="never",
                   help="build nothing: use the images already built")
    p.add_argument("--build-output", action="store_true", help="print the engine's build output")
    p.add_argument("--builder", choices=("auto", "local", "manager"), default="",
                   help="whose engine builds: this machine's (local), the reached manager's (manager), or "
                        "auto (default, or PYSWARM_BUILDER): this machine's when it answers, else the manager's")
    p.add_argument("--with-registry-auth", action="store_true",
                   help="send this machine's registry credentials (~/.docker/config.json) to the nodes that pull")
    p.add_argument("stack", metavar="STACK")
    p.set_defaults(func=_stack_deploy)
    p = stack.add_parser("config", help="print the merged, interpolated, normalised stack as YAML")
    _file_args(p)
    p.set_defaults(func=_stack_config)
    p = stack.add_parser("ls", help="list stacks")
    common.list_args(p, listfilters.STACK_KEYS)
    p.set_defaults(func=_stack_ls)
    p = stack.add_parser("ps", help="list the tasks of a stack")
    p.add_argument("stack", metavar="STACK")
    common.list_args(p, listfilters.TASK_KEYS, trunc=True)
    p.set_defaults(func=_stack_ps)
    p = stack.add_parser("services", help="list the services of a stack")
    p.add_argument("stack", metavar="STACK")
    common.list_args(p, listfilters.SERVICE_KEYS)
    p.set_defaults(func=_stack_services)
    p = stack.add_parser("rm", help="remove a stack and all its containers")
    p.add_argument("stack", metavar="STACK")
    p.set_defaults(func=_stack_rm)

