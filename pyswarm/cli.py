"""The ``pyswarm`` command: argument parsing and output only.

The work is done by the packages; each subcommand here parses, calls one
function and prints. Any :class:`PyswarmError` becomes one line on stderr and
exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pyswarm.errors import PyswarmError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyswarm", description="A Docker-Swarm-style orchestrator.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from pyswarm.deploy import lab

    lab.register_cli(sub)

    worker = sub.add_parser("worker", help="run the node agent (started by the manager over SSH)")
    worker.add_argument("--stdio", action="store_true", required=True, help="speak the agent protocol on stdin/stdout")
    worker.set_defaults(func=_worker)
    return parser


def _worker(args: argparse.Namespace) -> int:
    from pyswarm.worker.agent import main_stdio

    return main_stdio()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except PyswarmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
