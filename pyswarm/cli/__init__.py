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
    context.py   context create/ls/use/rm/inspect (the operator's machine)
    machine.py   machine init/add/ls/rm (hosts made nodes over SSH)
    system.py    system dial-stdio (hidden: the remote CLI's far end)
    common.py    call() over this invocation's connection, --format, the task table

The global ``--host``/``--context`` pick the manager (docs/remote.md); the
commands in ``LOCAL_COMMANDS`` act on the host they run on and refuse them.

A closed pipe (``pyswarm service ps web | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from pyswarm.errors import PyswarmError, UsageError

Handler = Callable[[argparse.Namespace], int]

# imported when a parser is built, not with this package: `system dial-stdio`
# (the remote CLI's far end, started once per remote invocation) needs none
# of them, and all of them cost a loaded host over a second
GROUP_NAMES = ("cluster", "node", "stack", "service", "objects", "network", "images", "context", "machine",
               "system", "shell", "streams")
LOCAL_COMMANDS = frozenset({"init", "join", "leave", "lab", "manager", "worker", "system", "context"})


def groups() -> tuple[ModuleType, ...]:
    """The command groups' modules, in the order ``pyswarm --help`` lists them."""
    import importlib

    return tuple(importlib.import_module(f"{__name__}.{name}") for name in GROUP_NAMES)


def build_parser() -> argparse.ArgumentParser:
    from pyswarm.version import __version__

    from . import shell

    parser = argparse.ArgumentParser(prog="pyswarm", description="A Docker-Swarm-style orchestrator.")
    parser.add_argument("--version", action="version", version=f"pyswarm {__version__}")
    parser.add_argument("-H", "--host", dest="global_host", metavar="ssh://[USER@]HOST[:PORT]",
                        help="the manager to talk to over SSH (default: $PYSWARM_HOST, else the current context)")
    parser.add_argument("-c", "--context", dest="global_context", metavar="NAME",
                        help="the context to use (see `pyswarm context ls`)")
    parser.add_argument("--accept-host-key", action="store_true",
                        help="trust a manager's SSH host key that known_hosts does not hold (adds it there)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in groups():
        group.register(sub)

    from pyswarm.deploy import lab

    lab.register_cli(sub)
    shell.hide(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words == ["system", "dial-stdio"]:
        from pyswarm import dial_stdio  # the remote CLI's far end, once per remote invocation: start fast

        return dial_stdio.main()
    if words == ["worker", "--stdio"]:
        # sshd's forced command for the cluster key: the agent, or an image
        # channel (one per node per shipment). Neither needs the parser, and
        # building it imports every command's modules, asyncssh among them:
        # ~0.8 s of CPU of a channel's start on the loaded lab, five at once
        # on a shipment to five nodes (bench/RESULTS.md, issue 15)
        from pyswarm.worker.channel import main_stdio

        return main_stdio()
    if words == ["--version"]:  # what `machine init/add` asks a host's venv first: no parser needed
        from pyswarm.version import __version__

        print(f"pyswarm {__version__}")
        return 0
    from . import shell

    if words[:1] == ["__complete"]:  # the shell's TAB: the words may look like flags
        return _quietly(lambda: shell.complete(build_parser(), words[1:]))
    parser = build_parser()
    args = parser.parse_args(words)
    func: Handler = args.func
    return _quietly(lambda: _targeted(args, func, _command_word(words)))


def _command_word(words: list[str]) -> str:
    """The top-level command (``args.command`` may be a subcommand's own
    positional of that name, as ``service create IMAGE COMMAND``)."""
    rest = iter(words)
    for word in rest:
        if word in ("-H", "--host", "-c", "--context"):
            next(rest, None)
        elif not word.startswith("-"):
            return word
    return ""


def _targeted(args: argparse.Namespace, func: Handler, command: str) -> int:
    """Run ``func`` with this invocation's calls going where --host/--context say."""
    local = command in LOCAL_COMMANDS
    if local and (args.global_host or args.global_context):
        raise UsageError(f"`pyswarm {command}` acts on the host it runs on; --host and --context are "
                         "for commands that talk to a manager"
                         + (" (from another machine: `pyswarm machine init/add`)"
                            if command in ("init", "join") else ""))
    from . import common

    common.target(args.global_host, args.global_context, args.accept_host_key, local=local)
    return func(args)


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
    finally:
        from . import common

        common.close()


if __name__ == "__main__":
    sys.exit(main())
