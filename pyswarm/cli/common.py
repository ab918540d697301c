"""What the command modules share: the call to the manager and the output helpers.

Every module calls the manager through :func:`call` (looked up on this module
at call time, so a test can replace it in one place).
"""

from __future__ import annotations

import argparse
from typing import Any

from pyswarm import config as cfg
from pyswarm import rpc
from pyswarm.output import print_rows, since


def call(method: str, params: dict[str, Any] | None = None) -> Any:
    return rpc.call_unix(cfg.socket_path(), method, params or {})


def format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["table", "json"], default="table",
                        help="table (default) or json: a JSON array of objects, for scripts")


def task_table(rows: list[dict[str, Any]], fmt: str) -> None:
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

