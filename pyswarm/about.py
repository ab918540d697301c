"""This process's side of ``pyswarm version`` (the CLI's, and the manager's
``version`` answer): the package version (:mod:`pyswarm.version`, the one
place it is read), Python and the platform."""

from __future__ import annotations

import platform
import sys
from typing import Any

from pyswarm.version import __version__


def describe() -> dict[str, Any]:
    return {"Version": __version__, "PythonVersion": platform.python_version(),
            "OS": sys.platform, "Arch": platform.machine()}
