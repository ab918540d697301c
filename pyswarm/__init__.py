"""pyswarm: a Docker-Swarm-style container orchestrator."""

from __future__ import annotations

from pyswarm.version import DISTRIBUTION, __version__

__all__ = ["DISTRIBUTION", "__version__"]
