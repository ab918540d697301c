"""The command line around the commands: ``version``, shell completion,
and which commands ``--help`` does not list.

Completion: ``pyswarm completion bash|zsh`` prints a script that, on TAB,
runs the hidden ``pyswarm __complete WORD...`` with the words typed so far.
That walks the argparse tree for commands and flags, and asks the cluster
for the names a positional takes (services, nodes, stacks, and contexts
when the context commands exist), with a short timeout: a shell must never
hang on a TAB because a manager is far away.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pyswarm.about import describe
from pyswarm.cli import common
from pyswarm.errors import PyswarmError
from pyswarm.output import render

HIDDEN = ("manager", "worker", "__complete")
"""Commands people do not type: started by pyswarm itself, or by the shell."""


def hide(parser: argparse.ArgumentParser) -> None:
    """Drop hidden commands from every ``--help`` (argparse lists a
    ``help=SUPPRESS`` subcommand as ``==SUPPRESS==``); they still run."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action._choices_actions = [a for a in action._choices_actions
                                       if a.dest not in HIDDEN and a.help != argparse.SUPPRESS]
            for sub in set(action.choices.values()):
                hide(sub)


# -- version ---------------------------------------------------------------------------


def _version(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {"Client": describe()}
    error = ""
    try:
        info["Manager"] = common.call("version")
    except PyswarmError as exc:
        error = str(exc)
    if args.format:
        render(args.format, [info], sys.stdout)
    else:
        for side in ("Client", "Manager"):
            if side not in info:
                continue
            v = info[side]
            print(f"{side}:")
            print(f" Version:          {v['Version']}")
            print(f" Python version:   {v['PythonVersion']}")
            print(f" OS/Arch:          {v['OS']}/{v['Arch']}")
            if side == "Manager":
                print(f" Node:             {v['NodeID']}")
                print(f" Leader:           {str(v['Leader']).lower()}")
    if error:
        print(f"Error: cannot reach a manager: {error}", file=sys.stderr)
        return 1
    return 0


# -- completion ------------------------------------------------------------------------

BASH = r"""# pyswarm completion for bash: source <(pyswarm completion bash)
_pyswarm_complete() {
    local IFS=$'\n'
    COMPREPLY=($(pyswarm __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -F _pyswarm_complete pyswarm
"""

ZSH = r"""#compdef pyswarm
# pyswarm completion for zsh: source <(pyswarm completion zsh)  (after compinit)
_pyswarm() {
    local -a candidates
    candidates=("${(@f)$(pyswarm __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    compadd -- ${candidates:#}
}
compdef _pyswarm pyswarm
"""


def _completion(args: argparse.Namespace) -> int:
    sys.stdout.write(BASH if args.shell == "bash" else ZSH)
    return 0


def _names(method: str, key: str) -> Callable[[], list[str]]:
    def fetch() -> list[str]:
        from pyswarm import config as cfg
        from pyswarm import rpc

        rows = rpc.call_unix(cfg.socket_path(), method, {}, timeout=3)
        return [str(r[key]) for r in rows]
    return fetch


def _contexts() -> list[str]:
    """Context names, once the context commands exist (engineer ``remote``)."""
    from pyswarm import contexts

    try:
        return contexts.names()
    except PyswarmError:
        return []


DYNAMIC: dict[tuple[str, str], Callable[[], list[str]]] = {
    **{("service", c): _names("service.ls", "name")
       for c in ("ps", "inspect", "update", "rm", "rollback", "scale", "logs", "restart")},
    **{("node", c): _names("node.ls", "hostname")
       for c in ("ps", "inspect", "update", "rm", "promote", "demote")},
    **{("stack", c): _names("stack.ls", "name") for c in ("ps", "rm", "services", "deploy")},
    **{("context", c): _contexts for c in ("use", "rm", "inspect", "update")},
}


def candidates(parser: argparse.ArgumentParser, words: Sequence[str]) -> list[str]:
    """What may come next after ``words`` (the last one is being typed)."""
    typed, current = list(words[:-1]), (words[-1] if words else "")
    path: list[str] = []
    p = parser
    for word in typed:
        sub = _subcommands(p)
        if word in sub:
            p = sub[word]
            path.append(word)
    if current.startswith("-"):
        opts = [o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
        return sorted(o for o in opts if o.startswith(current))
    sub = _subcommands(p)
    if sub:
        hidden = set(HIDDEN)
        return sorted(n for n in sub if n.startswith(current) and n not in hidden)
    fetch = DYNAMIC.get((path[-2], path[-1])) if len(path) >= 2 else None
    if fetch is None:
        return []
    try:
        names = fetch()
    except Exception:  # noqa: BLE001 - a TAB never shows a traceback
        return []
    if path[-2:] == ["service", "scale"]:
        names = [n + "=" for n in names]
    return sorted(n for n in names if n.startswith(current))


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def complete(parser: argparse.ArgumentParser, words: Sequence[str]) -> int:
    """``pyswarm __complete WORD...`` (main() calls it before parsing)."""
    for name in candidates(parser, list(words) or [""]):
        print(name)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("version", help="show the client's and the manager's versions")
    p.add_argument("-f", "--format", metavar="TEMPLATE", help="a Docker template ({{.Client.Version}})")
    p.set_defaults(func=_version)
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=_completion)
    sub.add_parser("__complete", help=argparse.SUPPRESS)  # handled by main(), listed so it is known
