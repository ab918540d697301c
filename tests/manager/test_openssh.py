"""The openssh transport's byte path (manager/openssh.py): the child's stdin
is a pipe of our own that the spool's pieces are ``sendfile``d into; what
arrives is exactly the pieces, and closing stdin ends the child's input.
The child here is ``cat`` standing in for ``ssh`` (the argv is the only part
swapped)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pyswarm.manager.openssh import OpenSSHConnection


def test_pieces_of_the_spool_reach_the_child_whole(tmp_path: Path) -> None:
    spool = tmp_path / "spool.tar"
    data = os.urandom(3 << 20)
    spool.write_bytes(data)
    out = tmp_path / "out"
    conn = object.__new__(OpenSSHConnection)
    conn.argv = lambda command: ["sh", "-c", f"cat > {out}; echo done"]  # type: ignore[method-assign]
    pieces = [(b"header-1", 100, 2 << 20), (b"\0" * 7, 0, 0), (b"header-2", (2 << 20) + 500, 1000)]

    async def main() -> tuple[int, bytes]:
        proc = await conn.create_process("pyswarm worker --images")
        proc.stdin.write(b"a line first\n")
        sent = await proc.send_file(spool, pieces)
        proc.stdin.write_eof()
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        await asyncio.wait_for(proc._proc.wait(), 30)  # the child ends on its input's end
        proc.close()
        await asyncio.sleep(0)
        return sent, line

    sent, line = asyncio.run(main())
    want = b"a line first\n" + b"header-1" + data[100:100 + (2 << 20)] + b"\0" * 7 + b"header-2" + \
        data[(2 << 20) + 500:(2 << 20) + 1500]
    assert line == b"done\n"
    assert out.read_bytes() == want
    assert sent == len(want) - len(b"a line first\n")
