"""The stack's secrets and configs (compose/objects.py): files read at deploy,
not by ``stack config``; Swarm's 500 KB limit; bounded reads."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyswarm.compose import StackFileError, load_stack, render_config
from pyswarm.compose.objects import MAX_OBJECT_BYTES

Write = Callable[..., Path]

STACK = """\
services:
  web:
    image: busybox
    secrets: [pw]
    configs: [conf]
secrets:
  pw:
    file: {secret}
configs:
  conf:
    file: ./conf.txt
"""


def _stack(write: Write, tmp_path: Path, secret: str) -> Path:
    (tmp_path / "conf.txt").write_text("a=1\n")
    return write(STACK.format(secret=secret))


def test_stack_config_prints_a_stack_whose_secret_file_is_absent(write: Write, tmp_path: Path) -> None:
    """As ``docker stack config`` does: the file may be on the machine that deploys."""
    path = _stack(write, tmp_path, "./absent.txt")
    out = render_config([path], {})
    assert f"file: {tmp_path / 'absent.txt'}" in out


def test_deploy_refuses_it_naming_line_and_path(write: Write, tmp_path: Path) -> None:
    path = _stack(write, tmp_path, "./absent.txt")
    with pytest.raises(StackFileError) as info:
        load_stack([path], "demo", {})
    assert str(info.value) == (f"{path}:8:11: secrets.pw.file: secret file "
                               f"'{tmp_path / 'absent.txt'}': no such file")


def test_exactly_the_limit_is_accepted_one_more_byte_refused(write: Write, tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_bytes(b"x" * MAX_OBJECT_BYTES)
    path = _stack(write, tmp_path, "./pw.txt")
    [secret] = load_stack([path], "demo", {}).secrets
    assert len(secret.data) == MAX_OBJECT_BYTES == 512_000
    (tmp_path / "pw.txt").write_bytes(b"x" * (MAX_OBJECT_BYTES + 1))
    with pytest.raises(StackFileError) as info:
        load_stack([path], "demo", {})
    assert str(info.value).endswith(f"secrets.pw.file: secret file '{tmp_path / 'pw.txt'}': larger than "
                                    "Swarm's 500 KB limit for a secret (512,000 bytes)")


def test_a_1_gb_secret_file_is_not_read_whole(write: Write, tmp_path: Path) -> None:
    """It was read whole (1 GB in memory) before the manager refused it."""
    with (tmp_path / "huge").open("wb") as f:
        f.truncate(1 << 30)  # sparse
    path = _stack(write, tmp_path, "./huge")
    start = time.perf_counter()
    with pytest.raises(StackFileError, match="larger than Swarm's 500 KB limit"):
        load_stack([path], "demo", {})
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_not_a_regular_file(write: Write, tmp_path: Path, kind: str) -> None:
    """``/dev/zero`` said "not found"; a FIFO would block the deploy."""
    if kind == "device":
        source, what = "/dev/zero", "a character device"
    elif kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        source, what = str(tmp_path / "fifo"), "a FIFO"
    else:
        (tmp_path / "dir").mkdir()
        source, what = str(tmp_path / "dir"), "a directory"
    path = _stack(write, tmp_path, source)
    with pytest.raises(StackFileError) as info:
        load_stack([path], "demo", {})
    assert str(info.value).endswith(f"secret file '{source}': is {what}, not a regular file")


def test_content_and_environment_sources_have_the_limit_too(write: Write, tmp_path: Path) -> None:
    path = write("services: {web: {image: a, configs: [c]}}\n"
                 "configs: {c: {environment: BIG}}\n")
    assert load_stack([path], "demo", {"BIG": "x" * 10}).configs[0].data == b"x" * 10
    with pytest.raises(StackFileError) as info:
        load_stack([path], "demo", {"BIG": "x" * (MAX_OBJECT_BYTES + 1)})
    assert str(info.value) == (f"{path}:2:28: configs.c.environment: larger than "
                               "Swarm's 500 KB limit for a config (512,000 bytes)")
