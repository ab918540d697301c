"""The namespace lab (placeholder; being written)."""
from __future__ import annotations

import argparse
from typing import Any


def register_cli(sub: Any) -> None:
    p = sub.add_parser("lab", help="a cluster of network-namespace hosts on this machine (root)")
    p.set_defaults(func=lambda args: 0)
