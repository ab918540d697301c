"""The lab keeper outlives whoever started the lab, so it must not keep
that process's descriptors: `flock LOCK bench` once left a lab holding the
bench lock for good, and every later bench waited on it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
from pathlib import Path


def test_the_keeper_holds_no_descriptor_of_its_spawner(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    held = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    os.set_inheritable(held, True)  # as flock(1) hands its lock to the command
    fcntl.flock(held, fcntl.LOCK_EX)
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "pyswarm.deploy.lab_keeper"], dict(os.environ),
                         file_actions=[(os.POSIX_SPAWN_DUP2, r_in, 0), (os.POSIX_SPAWN_DUP2, w_out, 1)],
                         setsid=True)
    os.close(r_in)
    os.close(w_out)
    try:
        with os.fdopen(w_in, "w") as ask, os.fdopen(r_out) as answer:
            ask.write(json.dumps({"argv": ["true"], "log": str(tmp_path / "true.log"), "env": {}}) + "\n")
            ask.flush()
            reply = answer.readline()  # the keeper is past its start once it answers
            assert "pid" in json.loads(reply), reply
            kept = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            assert str(lock) not in kept, f"the keeper holds its spawner's lock file: {kept}"
            os.close(held)
            other = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the keeper still held it
            finally:
                os.close(other)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
