"""What version of pyswarm this is, for ``pyswarm version`` and the
manager's ``version`` answer (the package's own ``__version__`` when it has
one, else the installed distribution's metadata)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

DISTRIBUTION = "pyswarm-orchestrator"


def package_version() -> str:
    import pyswarm

    given = getattr(pyswarm, "__version__", None)
    if isinstance(given, str) and given:
        return given
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def describe() -> dict[str, Any]:
    """This process's side of ``pyswarm version``."""
    return {"Version": package_version(), "PythonVersion": platform.python_version(),
            "OS": sys.platform, "Arch": platform.machine()}
