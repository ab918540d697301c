"""Stacks: deploy, config, ls, ps, rm."""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from pyswarm.cli import common
from pyswarm.output import print_rows


def _stack_deploy(args: argparse.Namespace) -> int:
    from pyswarm.compose import load_stack

    stack = load_stack(args.compose_file, args.stack, env_files=args.env_file or (), strict=args.strict)
    _print_warnings(stack.warnings)
    objects = {kind: [{"name": o.name, "external": o.external, "labels": o.labels,
                       "data": base64.b64encode(o.data).decode()} for o in getattr(stack, kind)]
               for kind in ("secrets", "configs")}
    result = common.call("stack.deploy", {"stack": args.stack, "services": [s.to_dict() for s in stack.services],
                                    "networks": stack.config.get("networks") or {}, **objects})
    for item in result:
        verb = {"created": "Creating", "updated": "Updating", "unchanged": "Unchanged"}[item["action"]]
        kind = next((k for k in ("service", "secret", "config", "network") if k in item), "service")
        print(f"{verb} {kind} {item[kind]}")
    return 0


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
    print_rows(common.call("stack.ls"), args.format, [("NAME", "name"), ("SERVICES", "services")])
    return 0


def _stack_ps(args: argparse.Namespace) -> int:
    common.task_table(common.call("stack.ps", {"stack": args.stack}), args.format)
    return 0


def _stack_rm(args: argparse.Namespace) -> int:
    for name in common.call("stack.rm", {"stack": args.stack}):
        print(f"Removing service {name}")
    return 0



def register(sub: Any) -> None:
    stack = sub.add_parser("stack", help="manage stacks").add_subparsers(dest="stack_command", metavar="COMMAND", required=True)
    p = stack.add_parser("deploy", help="deploy or update a stack from compose files")
    p.add_argument("-c", "--compose-file", action="append", required=True, metavar="FILE")
    p.add_argument("--env-file", action="append", metavar="FILE", help="read variables from FILE (beside .env)")
    p.add_argument("--strict", action="store_true",
                   help="every warning is an error: exit 2, warnings listed, nothing done")
    p.add_argument("stack", metavar="STACK")
    p.set_defaults(func=_stack_deploy)
    p = stack.add_parser("config", help="print the merged, interpolated, normalised stack as YAML")
    p.add_argument("-c", "--compose-file", action="append", required=True, metavar="FILE")
    p.add_argument("--env-file", action="append", metavar="FILE", help="read variables from FILE (beside .env)")
    p.add_argument("--strict", action="store_true",
                   help="every warning is an error: exit 2, warnings listed, nothing done")
    p.set_defaults(func=_stack_config)
    p = stack.add_parser("ls", help="list stacks")
    common.format_arg(p)
    p.set_defaults(func=_stack_ls)
    p = stack.add_parser("ps", help="list the tasks of a stack")
    p.add_argument("stack", metavar="STACK")
    common.format_arg(p)
    p.set_defaults(func=_stack_ps)
    p = stack.add_parser("rm", help="remove a stack and all its containers")
    p.add_argument("stack", metavar="STACK")
    p.set_defaults(func=_stack_rm)

