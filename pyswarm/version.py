"""pyswarm's version, from the installed distribution's metadata.

pyproject.toml's ``version`` is the one place it is written down; a wheel
install and an editable checkout both carry it in their metadata.
(A module of its own, not only ``pyswarm/__init__.py``: under pytest the
name ``pyswarm`` can resolve to the tests' ``tests/pyswarm`` folder, and
the submodules still import.)
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "pyswarm-orchestrator"

try:
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
