"""Cluster membership and settings: init, join, join-token, leave, swarm update,
and the hidden commands a host runs for itself (manager run/start, worker --stdio)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyswarm.cli import common, security
from pyswarm import config as cfg
from pyswarm.errors import UsageError


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
                             dns_upstreams=_upstreams(args.dns_upstream), api_group=args.api_group,
                             autolock=args.autolock)
    if args.foreground:
        from pyswarm.manager import daemon

        print(f"Swarm initialized: current node ({node_id}) is now a manager; running in the foreground.",
              flush=True)
        return daemon.main()
    token = common.call("join_token", {"role": "worker"})
    print(f"Swarm initialized: current node ({node_id}) is now a manager.\n")
    print("To add a worker to this swarm, run the following command:\n")
    print(f"    pyswarm join --token {token['token']} {token['addr']}\n")
    print("To add a manager to this swarm, run 'pyswarm join-token manager' and follow the instructions.")
    if args.autolock:
        print()
        security.print_unlock_key(common.call("swarm.unlock_key", {})["key"])
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
    token = common.call("join_token", {"role": args.role, "rotate": args.rotate})
    if args.rotate and not args.quiet:
        print(f"Successfully rotated {args.role} join token.\n")
    if args.quiet:
        print(token["token"])
    else:
        print(f"To add a {args.role} to this swarm, run the following command:\n")
        print(f"    pyswarm join --token {token['token']} {token['addr']}\n")
    return 0


def _leave(args: argparse.Namespace) -> int:
    from pyswarm import host

    host.leave(force=args.force)
    print("Node left the swarm.")
    return 0


def _manager_run(args: argparse.Namespace) -> int:
    from pyswarm.manager import daemon

    return daemon.main()


def _manager_start(args: argparse.Namespace) -> int:
    from pyswarm import host

    if cfg.load_manager_config() is None:
        raise UsageError("this host is not a manager (no manager state); see `pyswarm init` and `pyswarm join`")
    pid = host.running_manager_pid()
    if pid is not None:
        answer = host.wait_for_manager(timeout=60)
        print(f"manager already running (pid {pid})" + _locked_note(answer))
        return 0
    host.start_manager_service()
    print("manager started" + _locked_note(host.wait_for_manager(timeout=60)))
    return 0


def _locked_note(ping: dict[str, Any]) -> str:
    return "; it is locked (autolock): unlock it with `pyswarm swarm unlock`" if ping.get("locked") else ""


def _worker(args: argparse.Namespace) -> int:
    from pyswarm.worker.channel import main_stdio

    return main_stdio()


def _swarm_update(args: argparse.Namespace) -> int:
    if args.task_history_limit is None and args.max_replicas is None and args.autolock is None:
        raise UsageError("swarm update: nothing to change (give --task-history-limit, --max-replicas or --autolock)")
    params: dict[str, Any] = {}
    if args.task_history_limit is not None:
        params["task_history_limit"] = args.task_history_limit
    if args.max_replicas is not None:
        params["max_replicas"] = args.max_replicas
    if args.autolock is not None:
        params["autolock"] = args.autolock == "true"
    answer = common.call("cluster.update", params)
    print("Swarm updated.")
    if answer.get("unlock_key"):
        print()
        security.print_unlock_key(answer["unlock_key"])
    return 0


def _manager_metrics(args: argparse.Namespace) -> int:
    print(json.dumps(common.call("manager.metrics"), indent=2))
    return 0



def register(sub: Any) -> None:
    p = sub.add_parser("init", help="create a cluster with this host as its first manager")
    p.add_argument("--advertise-addr", help="address other hosts reach this manager on (default: the default route's)")
    p.add_argument("--foreground", action="store_true", help="run the manager in this process instead of as a service")
    p.add_argument("--force-new-cluster", action="store_true",
                   help="after losing quorum: make this manager the only one, keeping all services, nodes and tasks")
    p.add_argument("--listen-port", type=int, default=cfg.DEFAULT_API_PORT, help="API (SSH) port, default 2377")
    p.add_argument("--dns-port", type=int, default=cfg.DEFAULT_DNS_PORT, help="DNS port, default 53")
    p.add_argument("--default-addr-pool", default="10.240.0.0/16", help="container address pool, a /24 per node")
    p.add_argument("--autolock", action="store_true",
                   help="keep restarted managers locked until `pyswarm swarm unlock` (docs/security.md)")
    p.add_argument("--overlay", choices=["routes", "vxlan"], default="routes",
                   help="how container traffic crosses hosts: host routes (default; the hosts share a link) "
                        "or a VXLAN overlay between the hosts' addresses")
    p.add_argument("--dns-upstream", action="append", metavar="IP[:PORT]",
                   help="where DNS forwards names outside the cluster (repeatable; default: this host's "
                        "/etc/resolv.conf; 'none' answers REFUSED instead)")
    p.add_argument("--api-group", default="", metavar="GROUP",
                   help="besides root, members of GROUP may use this manager's API (its socket, and so "
                        "`pyswarm system dial-stdio` for the remote CLI)")
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
    p.add_argument("--rotate", action="store_true",
                   help="make a new token (the old one stops admitting hosts; joined nodes are unaffected)")
    p.set_defaults(func=_join_token)

    p = sub.add_parser("leave", help="make this node leave the cluster")
    p.add_argument("-f", "--force", action="store_true", help="leave even as a manager (demotes it first)")
    p.set_defaults(func=_leave)

    swarm = sub.add_parser("swarm", help="cluster settings").add_subparsers(dest="swarm_command", metavar="COMMAND", required=True)
    p = swarm.add_parser("update", help="change cluster settings")
    p.add_argument("--task-history-limit", type=int, metavar="N", help="ended tasks kept per slot (default 5)")
    p.add_argument("--max-replicas", type=int, metavar="N",
                   help="the most replicas a service may have (default 100000)")
    p.add_argument("--autolock", choices=["true", "false"],
                   help="keep restarted managers locked until `pyswarm swarm unlock` (docs/security.md)")
    p.set_defaults(func=_swarm_update)
    security.register_swarm(swarm)

    manager = sub.add_parser("manager", help=argparse.SUPPRESS).add_subparsers(dest="manager_command", required=True)
    p = manager.add_parser("run", help="run the manager daemon in the foreground")
    p.set_defaults(func=_manager_run)
    p = manager.add_parser("start", help="start this host's manager as a background service")
    p.set_defaults(func=_manager_start)
    p = manager.add_parser("metrics", help="this manager's figures: event-loop lag, store size, Raft, disk")
    p.set_defaults(func=_manager_metrics)

    worker = sub.add_parser("worker", help="run the node agent (started by the manager over SSH)")
    worker.add_argument("--stdio", action="store_true", required=True, help="speak the agent protocol on stdin/stdout")
    worker.set_defaults(func=_worker)

