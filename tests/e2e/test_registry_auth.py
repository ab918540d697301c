"""stack deploy --with-registry-auth against a real registry with htpasswd
auth (Debian's docker-registry), on the lab: a pull without credentials is
refused with the registry named, and with them the task runs.

The registry listens on 127.0.0.1:5000 inside every lab host's network
namespace (one process per host, all serving one storage directory): dockerd
treats 127.0.0.0/8 registries as insecure by default, so no lab engine needs
a TLS certificate or an --insecure-registry flag. The operator's docker
config is a temporary DOCKER_CONFIG, never root's own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import brief, cli, deployed_stacks, live, tasks, wait_for, wait_until

pytestmark = pytest.mark.e2e

REGISTRY = "127.0.0.1:5000"
IMAGE = f"{REGISTRY}/pyswarm/private:1"
USER, PASSWORD = "deployer", "s3cret-pw"
STACK = "regauth"
SERVICE = f"{STACK}_web"
STACK_FILE = f"""
services:
  web:
    image: {IMAGE}
    command: ["httpd", "-f", "-p", "8080"]
    deploy:
      placement: {{constraints: ["node.role==worker"]}}
"""


def _bcrypt(password: str) -> str:
    # the registry's htpasswd takes bcrypt only; the system python's crypt makes it
    return subprocess.run(["python3", "-W", "ignore", "-c",
                           "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                           password], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def registry(lab: Any, tmp_path: Path) -> Any:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    (tmp_path / "storage").mkdir()
    (tmp_path / "htpasswd").write_text(f"{USER}:{_bcrypt(PASSWORD)}\n")
    (tmp_path / "registry.yml").write_text(json.dumps({
        "version": 0.1, "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
        "http": {"addr": REGISTRY}, "auth": {"htpasswd": {"realm": "pyswarm-lab", "path": str(tmp_path / "htpasswd")}},
    }))
    pids: dict[str, int] = {}
    try:
        for host in lab.hosts:
            out = lab.exec(host, ["sh", "-c", f"docker-registry serve {tmp_path / 'registry.yml'} "
                                  f"> {tmp_path / host}.log 2>&1 & echo $!"]).stdout
            pids[host] = int(out.strip())
        probe = [sys.executable, "-c", "import urllib.request, urllib.error, sys\n"
                 f"try: urllib.request.urlopen('http://{REGISTRY}/v2/', timeout=2)\n"
                 "except urllib.error.HTTPError as e: sys.exit(0 if e.code == 401 else 1)\n"
                 "sys.exit(1)"]
        for host in lab.hosts:
            wait_for(lambda host=host: lab.exec(host, probe, check=False).returncode == 0, 30,
                     f"the registry on {host} answering 401", observe=lambda host=host: (tmp_path / f"{host}.log").read_text()[-500:])
        config = tmp_path / "docker-config"
        config.mkdir()
        manager = lab.managers[0]
        env = {"DOCKER_CONFIG": str(config)}
        lab.exec(manager, ["docker", "login", REGISTRY, "-u", USER, "--password-stdin"], input=PASSWORD, env=env)
        lab.docker(manager, "tag", "pyswarm-lab/busybox:latest", IMAGE)
        lab.exec(manager, ["docker", "push", IMAGE], env=env, timeout=120)
        yield config
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for host in lab.hosts:
            lab.docker(host, "image", "rm", "-f", IMAGE, check=False)


def test_pull_refused_without_credentials_then_runs_with_them(lab: Any, tmp_path: Path, registry: Path) -> None:
    stack_file = tmp_path / "stack.yml"
    stack_file.write_text(STACK_FILE)
    env = {"DOCKER_CONFIG": str(registry)}
    with deployed_stacks(lab, tmp_path) as deploy:
        deploy(STACK, STACK_FILE)  # no --with-registry-auth: the worker's pull is refused

        def refused() -> tuple[bool, Any]:
            rows = tasks(lab, SERVICE)
            return any("registry 127.0.0.1:5000 may want credentials" in (t["error"] or "") for t in rows), brief(rows)
        wait_until(refused, 60, "a task rejected, naming the registry that wants credentials")

        out = lab.pyswarm(lab.managers[0], "stack", "deploy", "--with-registry-auth", "-c", str(stack_file), STACK,
                          env=env, timeout=60)
        assert "Creating secret regauth_registry-auth-" in out.stdout, out.stdout
        assert PASSWORD not in out.stdout + out.stderr

        def runs() -> tuple[bool, Any]:
            rows = live(tasks(lab, SERVICE))
            return len(rows) == 1 and rows[0]["current_state"] == "running", brief(rows)
        wait_until(runs, 90, "the task running, pulled with the credentials")
        node = live(tasks(lab, SERVICE))[0]["node"]
        assert lab.docker(node, "image", "inspect", IMAGE, check=False).returncode == 0
        # the credential is a secret: listed by name, its data never shown
        assert "regauth_registry-auth-" in cli(lab, "secret", "ls")
        assert PASSWORD not in cli(lab, "service", "inspect", SERVICE)
