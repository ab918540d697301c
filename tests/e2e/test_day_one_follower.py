"""Issue 13 through a follower: logs, exec and stats asked of a manager that
is not the leader are handed on to the leader (manager/forward.py) and
answered as if asked there; events come from the follower's own replica.
On a lab of its own (2 managers, 1 worker): the session lab has one manager.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import brief, deployed_stacks, wait_until

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
STACK = f"""
services:
  say:
    image: {IMAGE}
    command: ["sh", "-c", "echo hello from $$HOSTNAME; echo to stderr >&2; trap 'exit 0' TERM; sleep 3600 & wait"]
    deploy:
      replicas: 2
"""


@pytest.fixture(scope="module")
def two(lab_factory: Any) -> Any:
    return lab_factory(managers=2, workers=1, cluster=True)


def on(lab: Any, host: str, *args: str, **kw: Any) -> Any:
    return lab.pyswarm(host, *args, timeout=60, **kw)


def test_a_follower_answers_logs_exec_stats_and_events(two: Any, tmp_path: Path) -> None:
    leader = next(n["hostname"] for n in json.loads(on(two, two.managers[0], "node", "ls", "--format", "json").stdout)
                  if n["manager_status"] == "leader")
    follower = next(m for m in two.managers if m != leader)
    with deployed_stacks(two, tmp_path) as deploy:
        deploy("fw", STACK)

        def up() -> tuple[bool, Any]:
            rows = json.loads(on(two, follower, "service", "ps", "fw_say", "--format", "json").stdout)
            return sum(1 for r in rows if r["current_state"] == "running") == 2, [(r["name"], r["current_state"]) for r in rows]

        wait_until(up, 60, "2 replicas running")

        def logged() -> tuple[bool, Any]:
            done = on(two, follower, "service", "logs", "--no-task-ids", "fw_say")
            return done.stdout.count("hello from") == 2 and done.stderr.count("to stderr") == 2, done
        done = wait_until(logged, 30, "the follower showing both replicas' lines (stdout and stderr apart)")
        assert all(line.startswith("fw_say.") for line in done.stdout.splitlines())

        ran = on(two, follower, "service", "exec", "-i", "fw_say", "sh", "-c", "cat; exit 5",
                 input="through the leader\n", check=False)
        assert (ran.returncode, ran.stdout) == (5, "through the leader\n"), ran.stderr
        table = json.loads(on(two, follower, "stats", "--no-stream", "--format", "json").stdout)
        assert sorted(t["name"] for t in table["tasks"]) == ["fw_say.1", "fw_say.2"]
        events = [json.loads(line) for line in on(two, follower, "events", "--since", "5m", "--until", "0s",
                                                  "--filter", "type=service", "--format", "json").stdout.splitlines()]
        assert any(e["action"] == "create" and e["name"] == "fw_say" for e in events), events
