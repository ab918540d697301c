"""The API's unix socket: root-only, or root and the API group (init --api-group)."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
from pathlib import Path
from typing import Any

from pyswarm.manager.servers import UnixApiServer


def _serve(path: Path, group: str) -> os.stat_result:
    async def run() -> os.stat_result:
        server = UnixApiServer(Any, path, group=group)  # type: ignore[arg-type]  # nothing is called
        await server.start()
        try:
            return path.stat()
        finally:
            await server.stop()

    return asyncio.run(run())


def test_root_only_by_default(tmp_path: Path) -> None:
    st = _serve(tmp_path / "m.sock", "")
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_the_api_group_may_use_it(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    st = _serve(run / "m.sock", group)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
    # and the group gets through a root-only directory to it (search, not listing)
    assert stat.S_IMODE(run.stat().st_mode) == 0o710 and run.stat().st_gid == os.getgid()


def test_a_missing_group_leaves_it_root_only(tmp_path: Path) -> None:
    st = _serve(tmp_path / "m.sock", "no-such-group-pyswarm")
    assert stat.S_IMODE(st.st_mode) == 0o600
