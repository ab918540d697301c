"""Secrets and configs: ``secret.*`` and ``config.*``, the same four methods each.

The rules (immutable data, names, which services use one) live in
manager/objects.py, shared with ``stack deploy``; ``secret.inspect`` never
returns the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyswarm.errors import UsageError
from pyswarm.wire import rule

from .. import objects as stack_objects
from ..store import Op, TransactionAborted
from .base import Empty, Method, NameList, NameRef, Resource


@dataclass(frozen=True)
class ObjectCreate:
    name: str = field(metadata=rule(max_len=256))
    data: str = ""  # base64
    labels: dict[str, str] = field(default_factory=dict, metadata=rule(max_len=1000))


class Objects(Resource):
    def methods(self) -> list[Method]:
        found = []
        for kind in stack_objects.KINDS:
            found += [
                Method(f"{kind}.create", ObjectCreate, self._create(kind)),
                Method(f"{kind}.ls", Empty, self._ls(kind)),
                Method(f"{kind}.inspect", NameRef, self._inspect(kind)),
                Method(f"{kind}.rm", NameList, self._rm(kind)),
            ]
        return found

    def _create(self, kind: str) -> Any:
        async def create(req: ObjectCreate) -> Any:
            data = stack_objects.decode_data(kind, req.name, req.data)
            ops, oid = stack_objects.create_ops(self.snap(), kind, req.name, data, dict(req.labels))
            try:
                await self.store.commit(ops)
            except TransactionAborted:
                raise UsageError(f"{kind} {req.name} already exists") from None
            return {"id": oid, "name": req.name}
        return create

    def _ls(self, kind: str) -> Any:
        async def ls(req: Empty) -> Any:
            return [stack_objects.row(o) for o in stack_objects.objects(self.snap(), kind)]
        return ls

    def _inspect(self, kind: str) -> Any:
        async def inspect(req: NameRef) -> Any:
            obj = stack_objects.find(self.snap(), kind, req.name)
            return stack_objects.row(obj, with_data=kind == "config")
        return inspect

    def _rm(self, kind: str) -> Any:
        async def rm(req: NameList) -> Any:
            snap = self.snap()
            found = [stack_objects.find(snap, kind, n) for n in req.names]
            ops: list[Op] = []
            for obj in found:
                using = stack_objects.users(snap.services(), kind, obj.name)
                if using:
                    raise UsageError(f"{kind} {obj.name} is in use by the following services: "
                                     f"{', '.join(using)}")
                ops.extend(stack_objects.delete_ops(obj, kind))
            await self.store.commit(ops)
            return [o.name for o in found]
        return rm
