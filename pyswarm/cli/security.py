"""Autolock's commands (docs/security.md): ``swarm unlock``, ``swarm unlock-key``.

Added to the ``swarm`` group that cluster.py makes (:func:`register_swarm`);
``swarm update --autolock`` and ``init --autolock`` live with their commands
in cluster.py and print the key with :func:`print_unlock_key`.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from pyswarm.cli import common
from pyswarm.errors import UsageError


def print_unlock_key(key: str) -> None:
    print("To unlock a swarm manager after it restarts, run `pyswarm swarm unlock`\n"
          "and provide the following key:\n")
    print(f"    {key}\n")
    print("Remember to store this key in a password manager: without it a restarted manager\n"
          "cannot start. `pyswarm swarm unlock-key` prints it again.")


def _read_key() -> str:
    """From a prompt on a terminal, else the first line of stdin (scripts)."""
    if sys.stdin.isatty():
        return getpass.getpass("Enter unlock key: ")
    return sys.stdin.readline().strip()


def _unlock(args: argparse.Namespace) -> int:
    from pyswarm import host

    key = _read_key()
    if not key:
        raise UsageError("swarm unlock: no key given (type it at the prompt, or pipe it on stdin)")
    common.call("swarm.unlock", {"key": key})
    host.wait_for_manager(timeout=60)
    print("Manager unlocked.")
    return 0


def _unlock_key(args: argparse.Namespace) -> int:
    answer = common.call("swarm.unlock_key", {"rotate": args.rotate})
    if args.quiet:
        print(answer["key"])
    else:
        if args.rotate:
            print("Successfully rotated manager unlock key.\n")
        print_unlock_key(answer["key"])
    return 0


def _ca(args: argparse.Namespace) -> int:
    if not args.rotate:
        raise UsageError("swarm ca: nothing to do (give --rotate)")
    answer = common.call("swarm.rotate_ssh_key", {})
    print("Rotated the cluster's SSH key; every node installs the new one on its next configure:")
    print(f"    {answer['ssh_public_key']}")
    return 0


def register_swarm(swarm: Any) -> None:
    p = swarm.add_parser("ca", help="turn over the cluster's SSH key (--rotate)")
    p.add_argument("--rotate", action="store_true", help="a new key for the managers to reach every node with")
    p.set_defaults(func=_ca)
    p = swarm.add_parser("unlock", help="unlock a manager that autolock keeps locked after a restart")
    p.set_defaults(func=_unlock)
    p = swarm.add_parser("unlock-key", help="print (or rotate) the key that unlocks managers")
    p.add_argument("-q", "--quiet", action="store_true", help="print the key only")
    p.add_argument("--rotate", action="store_true", help="make a new unlock key (the old one stops working)")
    p.set_defaults(func=_unlock_key)
