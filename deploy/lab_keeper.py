"""The lab's keeper: parent and reaper of every daemon the lab starts.

Daemons that `lab up` starts outlive it, and containerd's shims fork away
from their parent, so without a reaper each of them ends as a zombie of pid
1 — and in containers and CI sandboxes pid 1 often does not reap. The keeper
marks itself a child subreaper, starts the daemons `lab up` asks for (one
JSON request per line on stdin, one pid per line back), and then reaps
whatever ends below it until `lab down` kills it last.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

PR_SET_CHILD_SUBREAPER = 36


def _reap_forever() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.2)
        except InterruptedError:
            pass


def main() -> int:
    os.chdir("/")
    # posix_spawn hands the keeper every descriptor its spawner had open
    # without close-on-exec; a lab outlives that spawner, so such a
    # descriptor would be held for the lab's life (`flock LOCK cmd` running
    # a bench: the lab kept the lock, and every later bench waited on it)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    threading.Thread(target=_reap_forever, daemon=True).start()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            with open(req["log"], "ab") as log:
                proc = subprocess.Popen(
                    req["argv"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=req["env"],
                    cwd="/",
                    start_new_session=True,
                )
            reply: dict[str, Any] = {"pid": proc.pid}
        except OSError as exc:
            reply = {"error": str(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    # `lab up` has gone; from now on only reap
    sys.stdout.close()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
