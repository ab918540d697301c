"""``pyswarm system dial-stdio`` (hidden): the far end of the remote CLI,
run over SSH by the operator's pyswarm (pyswarm/dial_stdio.py)."""

from __future__ import annotations

import argparse
from typing import Any


def dial_stdio(args: argparse.Namespace | None = None) -> int:
    from pyswarm import dial_stdio as bridge

    return bridge.main()


def register(sub: Any) -> None:
    cmds = sub.add_parser("system", help=argparse.SUPPRESS).add_subparsers(
        dest="system_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("dial-stdio", help="bridge stdin/stdout to this host's manager API")
    p.set_defaults(func=dial_stdio)
