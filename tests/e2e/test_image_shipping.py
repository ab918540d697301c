"""build: and image shipping on the lab (1 manager + 3 workers): two services
built from Dockerfiles by `stack deploy` on the manager's engine, shipped to
the nodes that run them over their SSH sessions (no registry in the lab),
only the changed layer shipped after a one-file change, a failing build that
changes nothing, and `image push` to a named node."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
from support import Operator, brief, cli, deployed_stacks, live, running, tasks, wait_for, wait_until

pytestmark = pytest.mark.e2e

STACK = "imgs"
WEB, OTHER = f"{STACK}_web", f"{STACK}_other"
BASE = """FROM pyswarm-lab/busybox:latest AS base
ARG GREETING=hello
RUN echo "$GREETING" > /greeting
"""
WEB_DOCKERFILE = BASE + """FROM base AS web
COPY page.txt /www/page.txt
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
FROM base AS debug
CMD ["sh"]
"""
OTHER_DOCKERFILE = BASE + 'COPY note.txt /note.txt\nCMD ["httpd", "-f", "-p", "8081"]\n'
# `other` runs everywhere, so every node holds the base layers and a changed
# page.txt is the one layer any node lacks
STACK_FILE = """
services:
  web:
    build: {context: ./web, target: web, args: {GREETING: hi}}
    deploy: {replicas: 2, update_config: {parallelism: 2, monitor: 1s}}
  other:
    build: {context: ./other, args: [GREETING=hi]}
    deploy: {mode: global}
"""
PAGE = 100_000  # bytes of page.txt: its layer is what a change ships


def _write_contexts(root: Path, page: bytes) -> None:
    for name, dockerfile in (("web", WEB_DOCKERFILE), ("other", OTHER_DOCKERFILE)):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "Dockerfile").write_text(dockerfile)
    (root / "web" / "page.txt").write_bytes(page)
    (root / "other" / "note.txt").write_text("note\n")


def _has_image(lab: Any, host: str, ref: str) -> bool:
    return lab.docker(host, "image", "inspect", ref, check=False).returncode == 0


def _settled(lab: Any, service: str, want: int, image_prefix: str) -> list[dict[str, Any]]:
    def check() -> tuple[bool, Any]:
        rows = live(tasks(lab, service))
        ok = len(rows) == want and all(t["current_state"] == "running" and t["image"].startswith(image_prefix)
                                       for t in rows)
        return ok, brief(rows)
    wait_until(check, 90, f"{want} running tasks of {service} on {image_prefix}*")
    return running(lab, service)


def _shipments(lab: Any, ref: str) -> list[dict[str, Any]]:
    data = json.loads(cli(lab, "image", "shipments", "--format", "json"))
    return [s for s in data["shipments"] if s["image"] == ref]


def test_build_ship_change_fail_push(lab: Any, tmp_path: Path) -> None:
    _write_contexts(tmp_path, os.urandom(PAGE))
    (tmp_path / "stack.yml").write_text(STACK_FILE)
    with deployed_stacks(lab, tmp_path) as deploy:
        deploy(STACK, (tmp_path / "stack.yml").read_text())
        web = _settled(lab, WEB, 2, f"{WEB}:")
        _settled(lab, OTHER, len(lab.hosts), f"{OTHER}:")
        ref1 = web[0]["image"]
        # every node that runs web has its image, no other worker does (the
        # manager built it); shipped automatically, as tasks landed
        web_nodes = {t["node"] for t in web}
        for host in lab.hosts:
            if host not in lab.managers:
                assert _has_image(lab, host, ref1) == (host in web_nodes), (host, web_nodes)
        first = [s for s in _shipments(lab, ref1) if s["result"] == "sent"]
        assert {s["node"] for s in first} == web_nodes - set(lab.managers), first
        assert all(s["reason"] == "task" for s in first)

        # one file changes: a new tag, and only its layer crosses the wire
        (tmp_path / "web" / "page.txt").write_bytes(os.urandom(PAGE))
        out = lab.pyswarm(lab.managers[0], "stack", "deploy", "-c", str(tmp_path / "stack.yml"), STACK, timeout=120)
        assert "Updating service imgs_web" in out.stdout and "Unchanged service imgs_other" in out.stdout, out.stdout
        web2 = _settled(lab, WEB, 2, f"{WEB}:")
        ref2 = web2[0]["image"]
        assert ref2 != ref1
        second = [s for s in _shipments(lab, ref2) if s["result"] == "sent"]
        assert second, _shipments(lab, ref2)
        for s in second:
            assert s["layers_sent"] == 1 and s["layers_total"] == 3, s
            assert PAGE < s["bytes"] <= 1.1 * (PAGE + 4096), s  # the layer: the file, its dir, tar headers

        # a failing build stops the deploy and changes nothing
        (tmp_path / "web" / "Dockerfile").write_text(WEB_DOCKERFILE.replace("COPY page.txt", "RUN false\nCOPY page.txt"))
        (tmp_path / "web" / "page.txt").write_bytes(os.urandom(PAGE))
        failed = lab.pyswarm(lab.managers[0], "stack", "deploy", "-c", str(tmp_path / "stack.yml"), STACK,
                             timeout=120, check=False)
        assert failed.returncode != 0
        assert "service imgs_web: build failed: The command '/bin/sh -c false' returned a non-zero code: 1" in failed.stderr
        assert "Traceback" not in failed.stderr
        after = live(tasks(lab, WEB))
        assert sorted((t["id"], t["image"]) for t in after) == sorted((t["id"], t["image"]) for t in web2)

        # a third version: a node that ran the older ones keeps the kept count (2) of
        # the service's builds, the running one and one to roll back to, no more
        (tmp_path / "web" / "Dockerfile").write_text(WEB_DOCKERFILE)
        (tmp_path / "web" / "page.txt").write_bytes(os.urandom(PAGE))
        lab.pyswarm(lab.managers[0], "stack", "deploy", "-c", str(tmp_path / "stack.yml"), STACK, timeout=120)
        web3 = _settled(lab, WEB, 2, f"{WEB}:")
        ref3 = web3[0]["image"]
        assert ref3 not in (ref1, ref2)
        held_before = {h: [r for r in (ref1, ref2, ref3) if _has_image(lab, h, r)] for h in {t["node"] for t in web3}}

        def kept() -> tuple[bool, Any]:
            held = {h: [r for r in (ref1, ref2, ref3) if _has_image(lab, h, r)] for h in held_before}
            return all(ref3 in refs and len(refs) <= 2 for refs in held.values()), held
        wait_until(kept, 60, f"each node running {ref3} holding at most 2 of {WEB}'s builds (was {held_before})")
        web2, ref2 = web3, ref3  # what follows pushes the newest

        # image push to a named node that lacks it, then again: present
        target = sorted(h for h in lab.hosts if h not in {t["node"] for t in web2} and h not in lab.managers)[0]
        pushed = json.loads(cli(lab, "image", "push", ref2, "--node", target, "--format", "json"))
        assert [(p["node"], p["result"], p["layers_sent"]) for p in pushed] == [(target, "sent", 1)], pushed
        assert _has_image(lab, target, ref2)
        again = json.loads(cli(lab, "image", "push", ref2, "--node", target, "--format", "json"))
        assert [(p["result"], p["bytes"]) for p in again] == [("present", 0)]
        listed = json.loads(cli(lab, "image", "ls", "--format", "json"))
        row = next(r for r in listed if r["image"] == ref2)
        assert set(row["nodes"]) == {t["node"] for t in web2} | {target} | set(lab.managers), row
    for host in lab.hosts:  # leave the lab's engines as they were
        lab.docker(host, "image", "rm", "-f", ref1, ref2, check=False)
        lab.exec(host, ["sh", "-c", f"docker images -q --filter reference='{STACK}_*' | xargs -r docker rmi -f"],
                 check=False)


LATE_STACK = "late"
LATE_FILE = """
services:
  app:
    build: ./app
    command: ["sleep", "3600"]
    deploy: {mode: global}
"""


def test_a_node_that_joins_later_gets_the_image_when_a_task_lands_there(lab_factory: Any, tmp_path: Path) -> None:
    """The image is not only shipped at deploy: a node that joins after it
    receives it with its first task there (no registry in the lab)."""
    small = lab_factory(managers=1, workers=2, cluster=True)
    first, late = small.managers[0], small.workers[-1]
    small.pyswarm(late, "leave", timeout=60)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM pyswarm-lab/busybox:latest\nCOPY mark.txt /mark.txt\n")
    (tmp_path / "app" / "mark.txt").write_bytes(os.urandom(2048))
    (tmp_path / "stack.yml").write_text(LATE_FILE)
    small.pyswarm(first, "stack", "deploy", "-c", str(tmp_path / "stack.yml"), LATE_STACK, timeout=120)

    def app_running(want: set[str]) -> tuple[bool, Any]:
        rows = live(tasks(small, f"{LATE_STACK}_app"))
        on = {t["node"] for t in rows if t["current_state"] == "running"}
        return on == want, brief(rows)

    present = set(small.hosts) - {late}
    wait_until(lambda: app_running(present), 90, f"late_app running on {sorted(present)} (not {late}: it left)")
    ref = running(small, f"{LATE_STACK}_app")[0]["image"]
    assert not _has_image(small, late, ref), f"{late} had {ref} before it joined"

    small.pyswarm(late, *shlex.split(small.join_command)[1:], timeout=120)
    wait_until(lambda: app_running(set(small.hosts)), 120, f"late_app running on every node, {late} included")
    assert _has_image(small, late, ref), f"{late} runs a task of {ref} but its engine lacks the image"
    sent = [s for s in _shipments(small, ref) if s["result"] == "sent" and s["node"] == late]
    assert sent and sent[-1]["reason"] == "task", _shipments(small, ref)


REMOTE_STACK = "rbld"
REMOTE_DOCKERFILE = """FROM pyswarm-lab/busybox:latest
ARG NOTE=none
COPY . /ctx
RUN echo "$NOTE" > /note
CMD ["sleep", "3600"]
"""
REMOTE_FILE = """
services:
  app:
    build: {context: ./app, args: {NOTE: from-the-operator}}
    deploy: {replicas: 2}
"""


def test_a_remote_cli_without_an_engine_builds_on_the_manager(lab: Any, tmp_path: Path,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    """The operator's machine (the root namespace) has no engine (DOCKER_HOST
    names a socket that does not exist): `stack deploy` through a context
    streams the context (.dockerignore applied) to the manager, whose engine
    builds it; the nodes that run it get the image; a failing build shows
    its step and changes nothing."""
    op = Operator(lab, tmp_path_factory.mktemp("operator"))
    op.authorize(*lab.managers)
    m1 = lab.managers[0]
    no_engine = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(REMOTE_DOCKERFILE)
    (app / "keep.txt").write_bytes(os.urandom(50_000))
    (app / "big.bin").write_bytes(os.urandom(2_000_000))
    (app / ".dockerignore").write_text("big.bin\n")
    stack = tmp_path / "stack.yml"
    stack.write_text(REMOTE_FILE)
    service = f"{REMOTE_STACK}_app"

    def deploy(*extra: str, check: bool = True) -> Any:
        return op.pyswarm_env(no_engine, "--context", "bld", "stack", "deploy", *extra, "-c", str(stack),
                              REMOTE_STACK, timeout=180, check=check)

    refs: list[str] = []
    try:
        op.pyswarm("--host", f"ssh://{m1}", "--accept-host-key", "stack", "ls")
        op.pyswarm("context", "create", "bld", "--host", f"ssh://{m1}")
        out = deploy()
        assert f"Building {service} ({service}:" in out.stderr, out.stderr
        assert "Step 1/" not in out.stderr, out.stderr  # quiet unless asked
        rows = _settled(lab, service, 2, f"{service}:")
        refs.append(rows[0]["image"])
        seen = lab.docker(m1, "run", "--rm", refs[0], "sh", "-c", "ls -a /ctx; cat /note", timeout=60).stdout
        assert "keep.txt" in seen and "Dockerfile" in seen and "from-the-operator" in seen, seen
        assert "big.bin" not in seen, seen  # .dockerignore kept it on the operator's machine
        for t in rows:
            assert _has_image(lab, t["node"], refs[0]), t
        assert [s for s in _shipments(lab, refs[0]) if s["result"] == "sent"] or \
            {t["node"] for t in rows} <= set(lab.managers)

        # the same again: nothing built, nothing updated
        again = deploy()
        assert "Building" not in again.stderr and f"Unchanged service {service}" in again.stdout, again

        # a failing build: its step's output shown, nothing changed
        (app / "Dockerfile").write_text(REMOTE_DOCKERFILE.replace(
            "RUN echo", "RUN echo failing-step-output && false\nRUN echo"))
        failed = deploy(check=False)
        assert failed.returncode != 0, failed
        assert f"service {service}: build failed: The command" in failed.stderr, failed.stderr
        assert "\nfailing-step-output" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
        after = live(tasks(lab, service))
        assert sorted((t["id"], t["image"]) for t in after) == sorted((t["id"], t["image"]) for t in rows)

        # --build-output streams the engine's output back
        (app / "Dockerfile").write_text(REMOTE_DOCKERFILE)
        (app / "keep.txt").write_bytes(os.urandom(50_000))
        shown = deploy("--build-output")
        assert "Step 1/6 : FROM pyswarm-lab/busybox:latest" in shown.stderr, shown.stderr
        assert f"Updating service {service}" in shown.stdout, shown.stdout
        refs.append(_settled(lab, service, 2, f"{service}:")[0]["image"])
        assert refs[1] != refs[0]
    finally:
        op.pyswarm("--context", "bld", "stack", "rm", REMOTE_STACK, check=False)
        op.revoke()

        def gone() -> bool:
            return all(not lab.docker(h, "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={REMOTE_STACK}",
                                      timeout=30).stdout.strip() for h in lab.hosts)
        wait_for(gone, 60, f"stack {REMOTE_STACK}'s containers removed")
        for host in lab.hosts:
            lab.exec(host, ["sh", "-c", f"docker images -q --filter reference='{service}' | xargs -r docker rmi -f"],
                     check=False)
