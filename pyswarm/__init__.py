"""pyswarm: a Docker-Swarm-style container orchestrator."""

from __future__ import annotations

from typing import Any

__all__ = ["DISTRIBUTION", "__version__"]


def __getattr__(name: str) -> Any:
    """``__version__`` read from the distribution's metadata when asked for:
    importlib.metadata costs every ``pyswarm`` start (the remote CLI's far
    end, dial-stdio, included) a tenth of a second on a loaded host."""
    if name in __all__:
        from pyswarm import version

        return getattr(version, name)
    raise AttributeError(f"module 'pyswarm' has no attribute {name!r}")
