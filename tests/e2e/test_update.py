"""Rolling updates on real parts (the session lab: 1 manager + 3 workers):
parallelism honoured, a failing update paused or rolled back as configured,
``service rollback`` back to the previous spec, and zero downtime — a client
sending HTTP requests by name through a start-first image update sees no
failed request. Every test removes its stack and the image tag it made."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import cli, cli_json, tasks, wait_for

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
V2 = "pyswarm-lab/busybox:v2"  # the same image under a second tag, made on every lab host
MISSING = "pyswarm-lab/busybox:missing"
# httpd as PID 1 ignores SIGTERM (a 10 s stop); this shell exits on it at once
SERVE = ('["sh", "-c", "trap \'exit 0\' TERM; mkdir -p /www && hostname > /www/index.html; '
         'httpd -f -p 80 -h /www & wait"]')
HEALTHCHECK = """
    healthcheck:
      test: ["CMD-SHELL", "printf 'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 1 127.0.0.1 80 | grep -q 200"]
      interval: 300ms
      timeout: 2s
      retries: 3
"""


def inspect(lab: Any, service: str) -> dict[str, Any]:
    return dict(json.loads(cli(lab, "service", "inspect", service))[0])


def status(lab: Any, service: str) -> dict[str, Any]:
    return dict(inspect(lab, service).get("update_status") or {})


def running_images(lab: Any, service: str) -> list[str]:
    return sorted(t["image"] for t in tasks(lab, service)
                  if t["desired_state"] == "running" and t["current_state"] == "running")


def brief(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(t["name"], t["image"], t["node"], t["desired_state"], t["current_state"], t["error"] or t["message"])
            for t in rows]


def deploy(lab: Any, tmp_path: Path, stack: str, text: str) -> None:
    path = tmp_path / f"{stack}.yml"
    path.write_text(text)
    lab.pyswarm(lab.managers[0], "stack", "deploy", "-c", str(path), stack, timeout=60)


def remove_stack(lab: Any, stack: str) -> None:
    lab.pyswarm(lab.managers[0], "stack", "rm", stack, check=False, timeout=60)

    def gone() -> bool:
        return all(not lab.docker(h, "ps", "-q", "--filter", f"label=com.docker.stack.namespace={stack}",
                                  timeout=30).stdout.strip() for h in lab.hosts)
    wait_for(gone, 60, f"stack {stack}'s containers gone from every host")


@pytest.fixture
def v2_tag(lab: Any) -> Iterator[str]:
    """A second tag of the lab image on every host: an image update with no registry."""
    for host in lab.hosts:
        lab.docker(host, "tag", IMAGE, V2, timeout=30)
    yield V2
    for host in lab.hosts:
        lab.docker(host, "rmi", V2, check=False, timeout=30)


def test_rolling_update_honours_parallelism(lab: Any, tmp_path: Path, v2_tag: str) -> None:
    stack, service = "upar", "upar_web"
    deploy(lab, tmp_path, stack, f"""
services:
  web:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: 4
      update_config: {{parallelism: 2, monitor: 1s}}
""")
    try:
        wait_for(lambda: running_images(lab, service) == [IMAGE] * 4, 60, "4 replicas running",
                 observe=lambda: brief(tasks(lab, service)))
        cli(lab, "service", "update", "-d", "--image", v2_tag, service)
        most = 0
        samples = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rows = tasks(lab, service)
            samples += 1
            # slots whose new task exists but does not run yet
            busy = {t["slot"] for t in rows if t["image"] == v2_tag and t["desired_state"] in ("running", "ready")
                    and t["current_state"] != "running"}
            most = max(most, len(busy))
            assert len(busy) <= 2, f"{len(busy)} slots updating at once with parallelism 2: {brief(rows)}"
            if status(lab, service).get("state") == "completed":
                break
        st = status(lab, service)
        assert st.get("state") == "completed", f"update not completed: {st}; tasks {brief(tasks(lab, service))}"
        assert st["message"] == "update completed" and st["completed_at"] >= st["started_at"]
        assert running_images(lab, service) == [v2_tag] * 4
        assert most >= 1, f"never saw a slot updating in {samples} samples"
        row = [r for r in cli_json(lab, "service", "ls") if r["name"] == service]
        assert row and row[0]["update_state"] == "completed", row
    finally:
        remove_stack(lab, stack)


def test_failing_update_pauses_or_rolls_back_and_rollback_restores(lab: Any, tmp_path: Path) -> None:
    stack = "ufail"
    deploy(lab, tmp_path, stack, f"""
services:
  pause:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: 2
      update_config: {{monitor: 1s}}
      rollback_config: {{parallelism: 0, monitor: 1s}}
  rb:
    image: {IMAGE}
    command: {SERVE}
    deploy:
      replicas: 2
      update_config: {{failure_action: rollback, monitor: 1s}}
      rollback_config: {{monitor: 1s}}
""")
    pause, rb = f"{stack}_pause", f"{stack}_rb"
    try:
        for svc in (pause, rb):
            wait_for(lambda: running_images(lab, svc) == [IMAGE] * 2, 60, f"{svc}: 2 replicas running",
                     observe=lambda: brief(tasks(lab, svc)))
        before = {t["id"] for t in tasks(lab, rb) if t["current_state"] == "running"}
        for svc in (pause, rb):
            cli(lab, "service", "update", "-d", "--image", MISSING, svc)

        # failure_action pause: paused, naming the task; the other slot untouched
        st = wait_for(lambda: (s := status(lab, pause)).get("state") == "paused" and s, 60, f"{pause} paused",
                      observe=lambda: brief(tasks(lab, pause)))
        rejected = [t for t in tasks(lab, pause) if t["current_state"] == "rejected"]
        assert rejected and "not found" in rejected[0]["error"], brief(tasks(lab, pause))
        assert st["message"].startswith("update paused due to failure or early termination of task "), st
        assert any(st["message"].endswith(t["id"]) for t in rejected), (st, brief(rejected))
        assert IMAGE in running_images(lab, pause)

        # failure_action rollback: back on the old image by itself
        wait_for(lambda: status(lab, rb).get("state") == "rollback_completed", 60, f"{rb} rolled back",
                 observe=lambda: (status(lab, rb), brief(tasks(lab, rb))))
        svc = inspect(lab, rb)
        assert svc["spec"]["container"]["image"] == IMAGE and svc["previous_spec"]["container"]["image"] == MISSING
        assert status(lab, rb)["message"] == "rollback completed"
        wait_for(lambda: running_images(lab, rb) == [IMAGE] * 2, 30, f"{rb} back on {IMAGE}")
        # the slot the update never reached kept its task
        assert before & {t["id"] for t in tasks(lab, rb) if t["current_state"] == "running"}

        # service rollback: the paused one back to its previous spec
        assert cli(lab, "service", "rollback", "-d", pause).strip() == pause
        wait_for(lambda: status(lab, pause).get("state") == "rollback_completed", 60, f"{pause} rolled back",
                 observe=lambda: (status(lab, pause), brief(tasks(lab, pause))))
        wait_for(lambda: running_images(lab, pause) == [IMAGE] * 2, 30, f"{pause} back on {IMAGE}",
                 observe=lambda: brief(tasks(lab, pause)))
        assert inspect(lab, pause)["spec"]["container"]["image"] == IMAGE
    finally:
        remove_stack(lab, stack)


CLIENT_LOOP = r"""
rm -f /tmp/stop /tmp/seen; ok=0; fail=0
while [ ! -f /tmp/stop ]; do
  page=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 web 80)
  case "$page" in
    *"200 OK"*) ok=$((ok+1)); echo "$page" | tail -n 1 >> /tmp/seen ;;
    *) fail=$((fail+1)); echo "FAIL $(date +%T) [$page]" ;;
  esac
done
echo "ok=$ok fail=$fail"
sort /tmp/seen | uniq -c
"""


def test_start_first_update_with_healthcheck_loses_no_request(lab: Any, tmp_path: Path, v2_tag: str) -> None:
    stack, service = "uzero", "uzero_web"
    deploy(lab, tmp_path, stack, f"""
services:
  web:
    image: {IMAGE}
    command: {SERVE}
{HEALTHCHECK}
    deploy:
      replicas: 3
      placement: {{constraints: ["node.role==worker"]}}
      update_config: {{order: start-first, parallelism: 1, monitor: 1s}}
  client:
    image: {IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    deploy:
      placement: {{constraints: ["node.hostname==worker1"]}}
""")
    try:
        wait_for(lambda: running_images(lab, service) == [IMAGE] * 3, 60, "3 healthy replicas",
                 observe=lambda: brief(tasks(lab, service)))
        client = wait_for(lambda: lab.docker("worker1", "ps", "-q", "--filter",
                                             f"label=pyswarm.service.name={stack}_client", timeout=30).stdout.split(),
                          60, "the client container on worker1")[0]
        old = {t["container_id"][:12] for t in tasks(lab, service) if t["current_state"] == "running"}
        result: dict[str, Any] = {}

        def loop() -> None:
            result["out"] = lab.docker("worker1", "exec", client, "sh", "-c", CLIENT_LOOP, timeout=300).stdout

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            time.sleep(2)  # requests flowing before the update (a baseline, not a wait for a condition)
            cli(lab, "service", "update", "-d", "--image", v2_tag, service)
            wait_for(lambda: status(lab, service).get("state") == "completed", 120, "the update to complete",
                     observe=lambda: (status(lab, service), brief(tasks(lab, service))))
            time.sleep(1)  # and requests after it
        finally:
            lab.docker("worker1", "exec", client, "touch", "/tmp/stop", timeout=30)
            thread.join(60)
        out = result.get("out", "")
        summary = [line for line in out.splitlines() if line.startswith("ok=")]
        assert summary, f"the client printed no summary: {out[-2000:]}"
        ok, fail = (int(part.split("=")[1]) for part in summary[0].split())
        assert fail == 0, f"{fail} of {ok + fail} requests failed during the update:\n{out[-3000:]}"
        assert ok > 50, f"only {ok} requests went through: {out[-2000:]}"
        new = {t["container_id"][:12] for t in tasks(lab, service) if t["current_state"] == "running"
               and t["desired_state"] == "running"}
        assert running_images(lab, service) == [v2_tag] * 3 and not old & new
        seen = {line.split()[-1] for line in out.splitlines() if line.strip() and line.split()[0].isdigit()}
        # the client really went from old replicas to new ones
        assert seen & old and seen & new, f"client saw {seen}; old {old}, new {new}"
        print(f"zero-downtime update: {ok} requests, 0 failed; replicas seen {len(seen)}")
    finally:
        remove_stack(lab, stack)
