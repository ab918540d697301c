"""Where a host keeps pyswarm's state and the manager's socket, and which
``pyswarm`` script is this installation's.

Standard library only, apart from pyswarm.config (which re-exports these):
``pyswarm system dial-stdio``, the remote CLI's far end started once per
remote invocation, needs only the socket's path, and importing the models
behind pyswarm.config would add a tenth of a second to every round trip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("PYSWARM_STATE_DIR", "/var/lib/pyswarm"))


def run_dir() -> Path:
    return Path(os.environ.get("PYSWARM_RUN_DIR", "/run/pyswarm"))


def socket_path() -> Path:
    return run_dir() / "manager.sock"


def pyswarm_executable() -> str:
    """The absolute path of this installation's ``pyswarm`` script, for the
    forced command in authorized_keys and for starting the manager."""
    beside = Path(sys.executable).parent / "pyswarm"
    if beside.exists():
        return str(beside)
    found = shutil.which("pyswarm")
    return os.path.abspath(found) if found else str(beside)
