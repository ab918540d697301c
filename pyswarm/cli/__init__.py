"""The ``pyswarm`` command: argument parsing and output only.

The work is done by the packages; each subcommand here parses, calls one
function (most often one API method through :func:`common.call`) and
prints. Any :class:`PyswarmError` becomes one line on stderr and exit
status 1 (2 for a stack file that does not load), never a traceback.

One module per command group, each with a ``register(subparsers)`` that
adds its commands; a command's handler is ``set_defaults(func=...)``, taking
the parsed arguments and returning the exit status. To add a group, write a
module and list it in ``GROUPS``:

    cluster.py   init, join, join-token, leave, swarm update, hidden host commands
    node.py      node ls/promote/demote/rm/inspect/update
    stack.py     stack deploy/config/ls/ps/rm
    service.py   service ls/ps/scale/inspect/update/rollback
    objects.py   secret and config
    network.py   network create/ls/inspect/rm
    shell.py     version, completion, the hidden __complete; hides hidden commands
    images.py    image push/ls/shipments (docs/images.md)
    streams.py   service logs/exec/restart/stats, stack logs, stats, events, task restart
    common.py    call(), --format, the task table

A closed pipe (``pyswarm service ps web | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from pyswarm.errors import PyswarmError
from pyswarm.version import __version__

from . import cluster, images, network, node, objects, service, shell, stack, streams

Handler = Callable[[argparse.Namespace], int]

GROUPS: tuple[ModuleType, ...] = (cluster, node, stack, service, objects, network, images, shell, streams)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyswarm", description="A Docker-Swarm-style orchestrator.")
    parser.add_argument("--version", action="version", version=f"pyswarm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)

    from pyswarm.deploy import lab

    lab.register_cli(sub)
    shell.hide(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["__complete"]:  # the shell's TAB: the words may look like flags
        return _quietly(lambda: shell.complete(build_parser(), words[1:]))
    parser = build_parser()
    args = parser.parse_args(words)
    func: Handler = args.func
    return _quietly(lambda: func(args))


def _quietly(run: Callable[[], int]) -> int:
    """Run a command: its errors as one line, Ctrl-C as 130, a closed pipe as silence."""
    try:
        code = run()
        sys.stdout.flush()
        return code
    except PyswarmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more to say, and nothing
        # left in the buffer for the interpreter to fail on at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # as a process that SIGPIPE ended


if __name__ == "__main__":
    sys.exit(main())
