"""What a task needs on its node's filesystem before its container is created.

- **Secrets and configs.** The assignment carries their data (only to the
  node that runs the task). Each becomes a file in a root-only directory of
  the task, ``ROOT/TASK_ID/`` (mode 0700; ROOT is under ``/run``, a tmpfs on
  a systemd host, so a secret never reaches a disk), owned by the reference's
  ``uid``/``gid`` with its ``mode``, and is bind-mounted read-only at its
  target: ``/run/secrets/NAME`` for secrets, ``/NAME`` or ``target`` for
  configs. Nothing is written into the image or the container's layer. The
  directory goes when the task's container is removed.
- **Bind sources** of ``create_host_path`` binds (the short syntax's
  default, as in ``docker compose``) are made as directories if missing:
  the Engine API's ``Mounts`` refuses a missing source.

Errors become :class:`TaskFilesError`, which the agent reports as the task's
rejection (``service ps`` shows it), never a crash.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyswarm.models import ContainerSpec

from . import RuntimeError_

DEFAULT_ROOT = "/run/pyswarm/tasks"


class TaskFilesError(RuntimeError_):
    """A task's secret/config file or bind source could not be prepared."""


def task_dir(root: str | Path, task_id: str) -> Path:
    if not task_id or "/" in task_id or task_id in (".", ".."):
        raise TaskFilesError(f"bad task id {task_id!r}")
    return Path(root) / task_id


def _owner(value: Any, what: str) -> int:
    try:
        n = int(str(value or "0"))
    except ValueError:
        raise TaskFilesError(f"{what} must be numeric on the node, got {value!r}") from None
    if n < 0:
        raise TaskFilesError(f"{what} must not be negative, got {n}")
    return n


def write_task_files(root: str | Path, task_id: str,
                     files: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Write ``files`` (``{"secrets": [...], "configs": [...]}``, entries
    ``{name, target, uid, gid, mode, data}``) and return their mounts."""
    entries = [(kind, f) for kind in ("secrets", "configs") for f in files.get(kind) or []]
    if not entries:
        return []
    base = task_dir(root, task_id)
    try:
        Path(root).mkdir(mode=0o700, parents=True, exist_ok=True)
        base.mkdir(mode=0o700, exist_ok=True)
        os.chmod(base, 0o700)
    except OSError as exc:
        raise TaskFilesError(f"cannot make {base}: {exc.strerror or exc}") from None
    mounts: list[dict[str, Any]] = []
    for i, (kind, f) in enumerate(entries):
        name = str(f.get("name", ""))
        try:
            data = base64.b64decode(str(f.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise TaskFilesError(f"{kind[:-1]} {name}: data is not base64") from None
        uid, gid = _owner(f.get("uid"), f"{kind[:-1]} {name}: uid"), _owner(f.get("gid"), f"{kind[:-1]} {name}: gid")
        mode = int(f.get("mode", 0o444)) & 0o7777
        path = base / f"{kind[:-1]}-{i}"
        tmp = base / f".{kind[:-1]}-{i}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            raise TaskFilesError(f"cannot write {kind[:-1]} {name} for task {task_id}: "
                                 f"{exc.strerror or exc}") from None
        target = str(f.get("target") or "")
        if not target.startswith("/"):
            raise TaskFilesError(f"{kind[:-1]} {name}: target {target!r} is not an absolute path")
        mounts.append({"Type": "bind", "Source": str(path), "Target": target, "ReadOnly": True})
    return mounts


def remove_task_files(root: str | Path, task_id: str) -> None:
    """Forget a task's files (after its container is gone); quiet if none."""
    try:
        path = task_dir(root, task_id)
    except TaskFilesError:
        return
    shutil.rmtree(path, ignore_errors=True)


def make_bind_sources(spec: ContainerSpec) -> None:
    """Create missing bind sources that may be created (``create_host_path``)."""
    for entry in spec.options.get("volumes") or []:
        if entry.get("type") != "bind" or not entry.get("source"):
            continue
        if not (entry.get("bind") or {}).get("create_host_path"):
            continue
        source = Path(entry["source"])
        if source.exists():
            continue
        try:
            source.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TaskFilesError(f"cannot create bind source {source}: {exc.strerror or exc}") from None


__all__ = ["DEFAULT_ROOT", "TaskFilesError", "make_bind_sources", "remove_task_files",
           "task_dir", "write_task_files"]
