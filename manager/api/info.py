"""``version``: what the manager runs, for ``pyswarm version``."""

from __future__ import annotations

from typing import Any

from pyswarm.about import describe

from .base import Resource, method


class InfoApi(Resource):
    @method("version")
    async def version(self, req: object) -> Any:
        return {**describe(), "NodeID": self.me.node_id, "Leader": self.store.is_leader}
