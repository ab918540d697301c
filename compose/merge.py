"""Merging several ``-c`` files by the compose spec's rules.

Later files override earlier ones: mappings merge key by key, scalars are
replaced, and sequences follow the rule of their key (the spec's merge.md):

* replaced whole: ``command``, ``entrypoint``, ``healthcheck.test``;
* merged as mappings (a ``K=V`` list is read as a mapping first):
  ``environment``, ``labels``, ``deploy.labels``, ``sysctls``, ``extra_hosts``;
* merged by target: ``ports`` (target and protocol), ``volumes`` (container
  path), ``secrets`` and ``configs`` (source);
* appended without duplicates: everything else (``dns``, ``cap_add``, ...).

Marks are carried along, so an error in a merged value still names the file
and line it came from.
"""

from __future__ import annotations

from typing import Any

from .errors import KeyPath, Mark
from .source import Document

_REPLACE = {"command", "entrypoint", "test"}
_AS_MAPPING = {"environment", "labels", "sysctls", "extra_hosts"}
_BY_TARGET = {"ports", "volumes", "secrets", "configs"}


def merge_documents(docs: list[Document]) -> Document:
    """One document with the later files laid over the first."""
    out = Document(docs[0].file, docs[0].data, dict(docs[0].marks), dict(docs[0].key_marks))
    for doc in docs[1:]:
        merger = _Merger(out, doc)
        out.data = merger.merge(out.data, doc.data, (), ())
        merger.copy_marks()
    return out


class _Merger:
    def __init__(self, base: Document, over: Document) -> None:
        self.base = base
        self.over = over
        # prefix in ``over`` -> prefix in the result, for sequence items that move
        self.remap: dict[KeyPath, KeyPath] = {}

    def merge(self, base: Any, over: Any, path: KeyPath, opath: KeyPath) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = dict(base)
            for key, value in over.items():
                if key in out:
                    out[key] = self.merge(out[key], value, path + (key,), opath + (key,))
                else:
                    out[key] = value
                    if path != opath:
                        self.remap[opath + (key,)] = path + (key,)
            return out
        key = path[-1] if path else ""
        in_service = len(path) >= 3 and path[0] == "services"
        if isinstance(key, str) and in_service and key in _AS_MAPPING and (
            isinstance(base, (list, dict)) and isinstance(over, (list, dict))
        ):
            return self.merge(self.as_mapping(base, path, self.base),
                              self.as_mapping(over, opath, self.over), path, opath)
        if isinstance(base, list) and isinstance(over, list):
            if key in _REPLACE:
                self.remap[opath] = path
                return over
            if in_service and key in _BY_TARGET:
                return self.by_target(base, over, path, opath, str(key))
            seq = list(base)
            for i, item in enumerate(over):
                if item not in seq:
                    self.remap[opath + (i,)] = path + (len(seq),)
                    seq.append(item)
            return seq
        self.remap[opath] = path
        return over

    def as_mapping(self, value: Any, path: KeyPath, doc: Document) -> Any:
        """``["K=V", "K"]`` as ``{K: V, K: None}``, moving the items' marks along."""
        if not isinstance(value, list):
            return value
        out: dict[str, Any] = {}
        for i, item in enumerate(value):
            text = str(item)
            sep = "=" if "=" in text or path[-1] != "extra_hosts" else ":"
            k, eq, v = text.partition(sep)
            out[k] = v if eq else None
            mark = doc.marks.get(path + (i,))
            if mark is not None:
                doc.marks[path + (k,)] = mark
        return out

    def by_target(self, base: list[Any], over: list[Any], path: KeyPath, opath: KeyPath,
                  key: str) -> list[Any]:
        out = list(base)
        index = {_target(key, item): i for i, item in enumerate(out)}
        for i, item in enumerate(over):
            t = _target(key, item)
            if t in index:
                out[index[t]] = item
                self.remap[opath + (i,)] = path + (index[t],)
            else:
                index[t] = len(out)
                self.remap[opath + (i,)] = path + (len(out),)
                out.append(item)
        return out

    def copy_marks(self) -> None:
        """Lay the overriding file's marks over the result, following moved items."""
        for src, dst in ((self.over.marks, self.base.marks),
                         (self.over.key_marks, self.base.key_marks)):
            for path, mark in src.items():
                dst[self.translate(path)] = mark

    def translate(self, path: KeyPath) -> KeyPath:
        for n in range(len(path), -1, -1):
            moved = self.remap.get(path[:n])
            if moved is not None:
                return moved + path[n:]
        return path


def _target(key: str, item: Any) -> Any:
    """What identifies an entry of ``ports``/``volumes``/``secrets``/``configs``."""
    if key == "ports":
        if isinstance(item, dict):
            return (str(item.get("target")), str(item.get("protocol", "tcp")))
        text = str(item)
        text, _, proto = text.partition("/")
        return (text.rsplit(":", 1)[-1], proto or "tcp")
    if key == "volumes":
        if isinstance(item, dict):
            return str(item.get("target"))
        parts = str(item).split(":")
        return parts[1] if len(parts) > 1 else parts[0]
    if isinstance(item, dict):
        return str(item.get("source"))
    return str(item)


__all__ = ["merge_documents", "Mark"]
