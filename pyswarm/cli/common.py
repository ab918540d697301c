"""What the command modules share: the call to the manager and the output helpers.

Every module calls the manager through :func:`call` (looked up on this module
at call time, so a test can replace it in one place). The calls of one
invocation share one :func:`connection`, opened at the first: this host's
socket, or one SSH connection to the manager that ``--host``/``--context``
(pyswarm/contexts.py) selects, which :func:`main` set with :func:`target`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pyswarm import config as cfg
from pyswarm import listfilters, rpc
from pyswarm.output import docker_task, print_rows, render, since

FORMAT_HELP = ("table (default), json (a JSON array of pyswarm's rows, for scripts), or a Docker "
               "template: '{{.Name}}', '{{json .}}', 'table {{.ID}}\\t{{.Name}}'")


_target: dict[str, Any] = {}
_open: list[rpc.Connection] = []


def target(host: str | None = None, context: str | None = None, accept_host_key: bool = False,
           local: bool = False) -> None:
    """Where this invocation's calls go (``local``: this host's manager, whatever the context)."""
    close()
    _target.clear()
    _target.update(host=host, context=context, accept_host_key=accept_host_key, local=local)


def connection() -> rpc.Connection:
    if _open and _open[0].closed:  # a streaming call closed it when it ended
        _open.pop()
    if not _open:
        if _target.get("local"):
            _open.append(rpc.connect_unix(cfg.socket_path()))
        else:
            from pyswarm import contexts, remote

            sel = contexts.select(_target.get("host"), _target.get("context"))
            _open.append(remote.open_selected(sel.targets, sel.context, bool(_target.get("accept_host_key"))))
    return _open[0]


def is_remote() -> bool:
    """Does this invocation talk to a manager on another machine (--host, a context)?"""
    if _target.get("local"):
        return False
    from pyswarm import contexts

    return bool(contexts.select(_target.get("host"), _target.get("context")).targets)


def close() -> None:
    while _open:
        _open.pop().close()


def call(method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    return connection().call(method, params or {}, timeout)


PAGE = 10_000


def paged(method: str, params: dict[str, Any]) -> list[Any]:
    """Every row of a list the API answers in pages (``offset``/``limit``):
    no single answer grows with the cluster (100,000 tasks were 35 MB)."""
    rows: list[Any] = []
    while True:
        page = call(method, {**params, "offset": len(rows), "limit": PAGE})
        rows += page
        if len(page) != PAGE:  # the last page (or an answer that does not page: all at once)
            return rows


def format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="table", metavar="FORMAT", help=FORMAT_HELP)


def list_args(parser: argparse.ArgumentParser, filter_keys: tuple[str, ...], trunc: bool = False) -> None:
    """``--format``, ``-q`` and ``--filter`` (and ``--no-trunc``) of a list."""
    format_arg(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="print the IDs only")
    parser.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE",
                        help=f"keep the rows that match (keys: {', '.join(filter_keys)})")
    if trunc:
        parser.add_argument("--no-trunc", action="store_true", help="do not truncate IDs and errors")


def task_query(args: argparse.Namespace) -> dict[str, Any]:
    """What of ``--filter`` the manager applies itself: desired-state (a
    service scaled to 100,000 and back lists three rows, not ten pages).
    :func:`task_table` applies every filter again to what comes back."""
    filters = listfilters.parse(getattr(args, "filter", None), listfilters.TASK_KEYS)
    listfilters.tasks([], filters)  # a bad value is refused before anything is asked
    states = filters.get("desired-state", [])
    return {"desired_state": sorted(set(states))} if states else {}


def task_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """``service ps``, ``stack ps`` and ``node ps``: Docker's columns and options."""
    rows = listfilters.tasks(rows, listfilters.parse(getattr(args, "filter", None), listfilters.TASK_KEYS))
    trunc = not getattr(args, "no_trunc", False)
    for row in rows:
        state = row["current_state"].capitalize()
        row["current_display"] = f"{state} {since(row['since'])}"
        said = row.get("message") if row.get("message") != row["current_state"] else ""
        row["error_display"] = row.get("error") or (said if row["current_state"] in ("pending", "preparing") else "")
        row["id_display"] = row["id"][:12] if trunc else row["id"]
        row["name_display"] = row["name"] if row["desired_state"] == "running" else r"\_ " + row["name"]
    print_rows(rows, args.format, [
        ("ID", "id_display"), ("NAME", "name_display"), ("IMAGE", "image"), ("NODE", "node"),
        ("DESIRED STATE", "desired_state"), ("CURRENT STATE", "current_display"), ("ERROR", "error_display"),
    ], drop=("current_display", "error_display", "id_display", "name_display"),
        fields=lambda r: docker_task(r, trunc), quiet="id_display" if getattr(args, "quiet", False) else None)


def inspect_args(p: argparse.ArgumentParser, pretty: bool = False) -> None:
    """``inspect``'s ``-f/--format`` (and ``--pretty`` where there is a pretty form)."""
    if pretty:
        p.add_argument("--pretty", action="store_true", help="print in a human-friendly format")
    p.add_argument("-f", "--format", metavar="TEMPLATE", help="a Docker template over each object ({{.Name}})")


def print_inspect(found: list[Any], args: argparse.Namespace,
                  pretty: Callable[[Any], str] | None = None) -> None:
    """JSON (Docker's default), ``--pretty``, or ``--format`` over each object."""
    if pretty is not None and getattr(args, "pretty", False):
        sys.stdout.write("\n".join(pretty(obj) for obj in found))
    elif args.format:
        render(args.format, found, sys.stdout)
    else:
        print(json.dumps(found, indent=2))
