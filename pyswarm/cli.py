"""The ``pyswarm`` command: argument parsing and output only.

The work is done by the packages; each subcommand here parses, calls one
function and prints. Any :class:`PyswarmError` becomes one line on stderr and
exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pyswarm import config as cfg
from pyswarm import rpc
from pyswarm.errors import PyswarmError, UsageError
from pyswarm.output import print_rows, since

Handler = Callable[[argparse.Namespace], int]


def _call(method: str, params: dict[str, Any] | None = None) -> Any:
    return rpc.call_unix(cfg.socket_path(), method, params or {})


def _format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["table", "json"], default="table",
                        help="table (default) or json: a JSON array of objects, for scripts")


# -- cluster membership ------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from pyswarm.manager import bootstrap

    if args.force_new_cluster:
        node_id = bootstrap.force_new_cluster()
        print(f"Swarm re-initialised from this manager's state: {node_id} is now its only manager.")
        print("Other managers were demoted; add managers with 'pyswarm join-token manager'.")
        return 0

    node_id = bootstrap.init(args.advertise_addr, args.foreground, api_port=args.listen_port,
                             dns_port=args.dns_port, addr_pool=args.default_addr_pool,
                             overlay="" if args.overlay == "routes" else args.overlay,
                             dns_upstreams=_upstreams(args.dns_upstream))
    if args.foreground:
        from pyswarm.manager import daemon

        print(f"Swarm initialized: current node ({node_id}) is now a manager; running in the foreground.",
              flush=True)
        return daemon.main()
    token = _call("join_token", {"role": "worker"})
    print(f"Swarm initialized: current node ({node_id}) is now a manager.\n")
    print("To add a worker to this swarm, run the following command:\n")
    print(f"    pyswarm join --token {token['token']} {token['addr']}\n")
    print("To add a manager to this swarm, run 'pyswarm join-token manager' and follow the instructions.")
    return 0


def _upstreams(given: list[str] | None) -> list[str] | None:
    if not given:
        return None
    return [] if given == ["none"] else given


def _join(args: argparse.Namespace) -> int:
    from pyswarm.manager import bootstrap

    result = bootstrap.join(args.token, args.manager, args.advertise_addr, api_port=args.listen_port,
                            dns_port=args.dns_port, dns_upstreams=_upstreams(args.dns_upstream))
    print(f"This node joined a swarm as a {result['role']} (node {result['node_id']}).")
    return 0


def _join_token(args: argparse.Namespace) -> int:
    token = _call("join_token", {"role": args.role})
    if args.quiet:
        print(token["token"])
    else:
        print(f"To add a {args.role} to this swarm, run the following command:\n")
        print(f"    pyswarm join --token {token['token']} {token['addr']}\n")
    return 0


def _leave(args: argparse.Namespace) -> int:
    from pyswarm.manager import bootstrap

    bootstrap.leave(force=args.force)
    print("Node left the swarm.")
    return 0


def _manager_run(args: argparse.Namespace) -> int:
    from pyswarm.manager import daemon

    return daemon.main()


def _manager_start(args: argparse.Namespace) -> int:
    from pyswarm.manager import bootstrap

    if cfg.load_manager_config() is None:
        raise UsageError("this host is not a manager (no manager state); see `pyswarm init` and `pyswarm join`")
    from pyswarm.manager.daemon import running_manager_pid

    pid = running_manager_pid()
    if pid is not None:
        bootstrap.wait_for_manager(timeout=60)
        print(f"manager already running (pid {pid})")
        return 0
    bootstrap.start_manager_service()
    bootstrap.wait_for_manager(timeout=60)
    print("manager started")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from pyswarm.worker.agent import main_stdio

    return main_stdio()


# -- nodes, stacks, services ---------------------------------------------------------


def _node_ls(args: argparse.Namespace) -> int:
    rows = _call("node.ls")
    for row in rows:
        row["id_display"] = row["id"] + (" *" if row.get("self") else "")
    print_rows(rows, args.format, [
        ("ID", "id_display"), ("HOSTNAME", "hostname"), ("ADDRESS", "address"), ("ROLE", "role"),
        ("STATUS", "status"), ("AVAILABILITY", "availability"), ("MANAGER STATUS", "manager_status"),
        ("ENGINE VERSION", "engine_version"),
    ], drop=("id_display",))
    return 0


def _stack_deploy(args: argparse.Namespace) -> int:
    from pyswarm.compose import load_stack

    stack = load_stack(args.compose_file, args.stack, env_files=args.env_file or (), strict=args.strict)
    for warning in stack.warnings:
        print(f"Warning: {warning}", file=sys.stderr)
    objects = {kind: [{"name": o.name, "external": o.external, "labels": o.labels,
                       "data": base64.b64encode(o.data).decode()} for o in getattr(stack, kind)]
               for kind in ("secrets", "configs")}
    result = _call("stack.deploy", {"stack": args.stack, "services": [s.to_dict() for s in stack.services],
                                    "networks": stack.config.get("networks") or {}, **objects})
    for item in result:
        verb = {"created": "Creating", "updated": "Updating", "unchanged": "Unchanged"}[item["action"]]
        kind = next((k for k in ("service", "secret", "config", "network") if k in item), "service")
        print(f"{verb} {kind} {item[kind]}")
    return 0


def _stack_config(args: argparse.Namespace) -> int:
    from pyswarm.compose import render_config

    sys.stdout.write(render_config(args.compose_file, env_files=args.env_file or (), strict=args.strict))
    return 0


def _stack_ls(args: argparse.Namespace) -> int:
    print_rows(_call("stack.ls"), args.format, [("NAME", "name"), ("SERVICES", "services")])
    return 0


def _task_table(rows: list[dict[str, Any]], fmt: str) -> None:
    for row in rows:
        state = row["current_state"].capitalize()
        row["current_display"] = f"{state} {since(row['since'])}"
        row["error_display"] = row.get("error") or (row.get("message") if row["current_state"] in ("pending",) else "")
        row["id_display"] = row["id"][:12]
        row["name_display"] = row["name"] if row["desired_state"] == "running" else r"\_ " + row["name"]
    print_rows(rows, fmt, [
        ("ID", "id_display"), ("NAME", "name_display"), ("IMAGE", "image"), ("NODE", "node"),
        ("DESIRED STATE", "desired_state"), ("CURRENT STATE", "current_display"), ("ERROR", "error_display"),
    ], drop=("current_display", "error_display", "id_display", "name_display"))


def _stack_ps(args: argparse.Namespace) -> int:
    _task_table(_call("stack.ps", {"stack": args.stack}), args.format)
    return 0


def _stack_rm(args: argparse.Namespace) -> int:
    for name in _call("stack.rm", {"stack": args.stack}):
        print(f"Removing service {name}")
    return 0


def _service_ls(args: argparse.Namespace) -> int:
    rows = _call("service.ls")
    for row in rows:
        row["id_display"] = row["id"][:12]
    print_rows(rows, args.format, [
        ("ID", "id_display"), ("NAME", "name"), ("MODE", "mode"), ("REPLICAS", "replicas"), ("IMAGE", "image"),
    ], drop=("id_display",))
    return 0


def _service_ps(args: argparse.Namespace) -> int:
    _task_table(_call("service.ps", {"service": args.service}), args.format)
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
    for item in _call("service.scale", {"scales": scales}):
        print(f"{item['service']} scaled to {item['replicas']}")
    return 0


def _service_update(args: argparse.Namespace) -> int:
    result = _call("service.update", {
        "service": args.service, "image": args.image, "env_add": args.env_add or [],
        "env_rm": args.env_rm or [], "replicas": args.replicas, "force": args.force,
    })
    print(result["service"])
    return 0


def _service_rollback(args: argparse.Namespace) -> int:
    result = _call("service.rollback", {"service": args.service})
    print(result["service"])
    return 0


def _service_inspect(args: argparse.Namespace) -> int:
    print(json.dumps([_call("service.inspect", {"service": s}) for s in args.services], indent=2))
    return 0


def _object_create(args: argparse.Namespace) -> int:
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    labels = dict(item.partition("=")[::2] for item in args.label or [])
    created = _call(f"{args.kind}.create", {"name": args.name, "data": base64.b64encode(data).decode(),
                                            "labels": labels})
    print(created["id"])
    return 0


def _object_ls(args: argparse.Namespace) -> int:
    rows = _call(f"{args.kind}.ls")
    for row in rows:
        row["id_display"] = row["id"][:12]
        row["created_display"] = since(row["created_at"])
    print_rows(rows, args.format, [("ID", "id_display"), ("NAME", "name"), ("CREATED", "created_display")],
               drop=("id_display", "created_display"))
    return 0


def _object_inspect(args: argparse.Namespace) -> int:
    print(json.dumps([_call(f"{args.kind}.inspect", {"name": n}) for n in args.names], indent=2))
    return 0


def _object_rm(args: argparse.Namespace) -> int:
    for name in _call(f"{args.kind}.rm", {"names": args.names}):
        print(name)
    return 0


def _network_create(args: argparse.Namespace) -> int:
    labels = dict(item.partition("=")[::2] for item in args.label or [])
    print(_call("network.create", {"name": args.name, "labels": labels, "internal": args.internal,
                                   "attachable": args.attachable})["id"])
    return 0


def _network_ls(args: argparse.Namespace) -> int:
    rows = _call("network.ls")
    for row in rows:
        row["id_display"] = row["id"][:12]
        row["services_display"] = len(row["services"])
    print_rows(rows, args.format, [("NETWORK ID", "id_display"), ("NAME", "name"), ("DRIVER", "driver"),
                                   ("SCOPE", "scope"), ("STACK", "stack"), ("SERVICES", "services_display")],
               drop=("id_display", "services_display"))
    return 0


def _network_inspect(args: argparse.Namespace) -> int:
    print(json.dumps([_call("network.inspect", {"name": n}) for n in args.names], indent=2))
    return 0


def _network_rm(args: argparse.Namespace) -> int:
    for name in _call("network.rm", {"names": args.names}):
        print(name)
    return 0


def _network_parsers(sub: Any) -> None:
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
    _format_arg(p)
    p.set_defaults(func=_network_ls)
    p = cmds.add_parser("inspect", help="show networks as JSON, with the services attached")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(func=_network_inspect)
    p = cmds.add_parser("rm", help="remove networks (refused while a service uses one)")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(func=_network_rm)


def _object_parsers(sub: Any) -> None:
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
        _format_arg(p)
        p.set_defaults(func=_object_ls, kind=kind)
        p = cmds.add_parser("inspect", help=f"show {kind}s as JSON" + (" (never the data)" if kind == "secret" else ""))
        p.add_argument("names", nargs="+", metavar=kind.upper())
        p.set_defaults(func=_object_inspect, kind=kind)
        p = cmds.add_parser("rm", help=f"remove {kind}s (not while a service uses one)")
        p.add_argument("names", nargs="+", metavar=kind.upper())
        p.set_defaults(func=_object_rm, kind=kind)


def _node_promote(args: argparse.Namespace) -> int:
    for line in _call("node.promote", {"nodes": args.nodes}):
        print(line)
    return 0


def _node_demote(args: argparse.Namespace) -> int:
    for line in _call("node.demote", {"nodes": args.nodes}):
        print(line)
    return 0


def _node_rm(args: argparse.Namespace) -> int:
    for name in _call("node.rm", {"nodes": args.nodes, "force": args.force}):
        print(name)
    return 0


def _node_inspect(args: argparse.Namespace) -> int:
    print(json.dumps([_call("node.inspect", {"node": n}) for n in args.nodes], indent=2))
    return 0


def _swarm_update(args: argparse.Namespace) -> int:
    if args.task_history_limit is None:
        raise UsageError("swarm update: nothing to change (give --task-history-limit)")
    _call("cluster.update", {"task_history_limit": args.task_history_limit})
    print("Swarm updated.")
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
    result = _call("node.update", {"node": args.node, "availability": args.availability,
                                   "label_add": add, "label_rm": args.label_rm or []})
    print(result["id"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyswarm", description="A Docker-Swarm-style orchestrator.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="create a cluster with this host as its first manager")
    p.add_argument("--advertise-addr", help="address other hosts reach this manager on (default: the default route's)")
    p.add_argument("--foreground", action="store_true", help="run the manager in this process instead of as a service")
    p.add_argument("--force-new-cluster", action="store_true",
                   help="after losing quorum: make this manager the only one, keeping all services, nodes and tasks")
    p.add_argument("--listen-port", type=int, default=cfg.DEFAULT_API_PORT, help="API (SSH) port, default 2377")
    p.add_argument("--dns-port", type=int, default=cfg.DEFAULT_DNS_PORT, help="DNS port, default 53")
    p.add_argument("--default-addr-pool", default="10.240.0.0/16", help="container address pool, a /24 per node")
    p.add_argument("--overlay", choices=["routes", "vxlan"], default="routes",
                   help="how container traffic crosses hosts: host routes (default; the hosts share a link) "
                        "or a VXLAN overlay between the hosts' addresses")
    p.add_argument("--dns-upstream", action="append", metavar="IP[:PORT]",
                   help="where DNS forwards names outside the cluster (repeatable; default: this host's "
                        "/etc/resolv.conf; 'none' answers REFUSED instead)")
    p.set_defaults(func=_init)

    p = sub.add_parser("join", help="join a cluster as a worker")
    p.add_argument("--token", required=True, help="the token printed by `pyswarm init` or `pyswarm join-token`")
    p.add_argument("--advertise-addr", help="this host's address (default: the one that routes to the manager)")
    p.add_argument("--listen-port", type=int, default=cfg.DEFAULT_API_PORT, help="API (SSH) port if joining as a manager")
    p.add_argument("--dns-port", type=int, default=cfg.DEFAULT_DNS_PORT, help="DNS port if joining as a manager")
    p.add_argument("--dns-upstream", action="append", metavar="IP[:PORT]",
                   help="as for init, if joining as a manager")
    p.add_argument("manager", metavar="MANAGER[:PORT]")
    p.set_defaults(func=_join)

    p = sub.add_parser("join-token", help="print the command that joins a host")
    p.add_argument("role", choices=["worker", "manager"])
    p.add_argument("-q", "--quiet", action="store_true", help="print the token only")
    p.set_defaults(func=_join_token)

    p = sub.add_parser("leave", help="make this node leave the cluster")
    p.add_argument("-f", "--force", action="store_true", help="leave even as a manager (demotes it first)")
    p.set_defaults(func=_leave)

    node = sub.add_parser("node", help="manage nodes").add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    p = node.add_parser("ls", help="list nodes")
    _format_arg(p)
    p.set_defaults(func=_node_ls)
    for name, func, text in (("promote", _node_promote, "make nodes managers"),
                             ("demote", _node_demote, "make managers workers")):
        p = node.add_parser(name, help=text)
        p.add_argument("nodes", nargs="+", metavar="NODE")
        p.set_defaults(func=func)
    p = node.add_parser("rm", help="remove nodes from the cluster")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p.add_argument("-f", "--force", action="store_true", help="remove a ready node, or a manager (demoting it)")
    p.set_defaults(func=_node_rm)
    p = node.add_parser("inspect", help="show a node as JSON")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p.set_defaults(func=_node_inspect)
    swarm = sub.add_parser("swarm", help="cluster settings").add_subparsers(dest="swarm_command", metavar="COMMAND", required=True)
    p = swarm.add_parser("update", help="change cluster settings")
    p.add_argument("--task-history-limit", type=int, metavar="N", help="ended tasks kept per slot (default 5)")
    p.set_defaults(func=_swarm_update)

    p = node.add_parser("update", help="change a node's availability or labels")
    p.add_argument("--availability", choices=["active", "pause", "drain"],
                   help="active: takes tasks; pause: keeps its tasks, takes no new ones; drain: its tasks move away")
    p.add_argument("--label-add", action="append", metavar="KEY=VALUE", help="add or change a label (repeatable)")
    p.add_argument("--label-rm", action="append", metavar="KEY", help="remove a label (repeatable)")
    p.add_argument("node", metavar="NODE", help="node id, id prefix or hostname")
    p.set_defaults(func=_node_update)

    stack = sub.add_parser("stack", help="manage stacks").add_subparsers(dest="stack_command", metavar="COMMAND", required=True)
    p = stack.add_parser("deploy", help="deploy or update a stack from compose files")
    p.add_argument("-c", "--compose-file", action="append", required=True, metavar="FILE")
    p.add_argument("--env-file", action="append", metavar="FILE", help="read variables from FILE (beside .env)")
    p.add_argument("--strict", action="store_true", help="unknown keys are errors, not warnings")
    p.add_argument("stack", metavar="STACK")
    p.set_defaults(func=_stack_deploy)
    p = stack.add_parser("config", help="print the merged, interpolated, normalised stack as YAML")
    p.add_argument("-c", "--compose-file", action="append", required=True, metavar="FILE")
    p.add_argument("--env-file", action="append", metavar="FILE", help="read variables from FILE (beside .env)")
    p.add_argument("--strict", action="store_true", help="unknown keys are errors, not warnings")
    p.set_defaults(func=_stack_config)
    p = stack.add_parser("ls", help="list stacks")
    _format_arg(p)
    p.set_defaults(func=_stack_ls)
    p = stack.add_parser("ps", help="list the tasks of a stack")
    p.add_argument("stack", metavar="STACK")
    _format_arg(p)
    p.set_defaults(func=_stack_ps)
    p = stack.add_parser("rm", help="remove a stack and all its containers")
    p.add_argument("stack", metavar="STACK")
    p.set_defaults(func=_stack_rm)

    service = sub.add_parser("service", help="manage services").add_subparsers(dest="service_command", metavar="COMMAND", required=True)
    p = service.add_parser("ls", help="list services")
    _format_arg(p)
    p.set_defaults(func=_service_ls)
    p = service.add_parser("ps", help="list the tasks of a service")
    p.add_argument("service", metavar="SERVICE")
    _format_arg(p)
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

    _object_parsers(sub)
    _network_parsers(sub)

    manager = sub.add_parser("manager", help=argparse.SUPPRESS).add_subparsers(dest="manager_command", required=True)
    p = manager.add_parser("run", help="run the manager daemon in the foreground")
    p.set_defaults(func=_manager_run)
    p = manager.add_parser("start", help="start this host's manager as a background service")
    p.set_defaults(func=_manager_start)

    worker = sub.add_parser("worker", help="run the node agent (started by the manager over SSH)")
    worker.add_argument("--stdio", action="store_true", required=True, help="speak the agent protocol on stdin/stdout")
    worker.set_defaults(func=_worker)

    from pyswarm.deploy import lab

    lab.register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except PyswarmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
