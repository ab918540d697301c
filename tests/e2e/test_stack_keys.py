"""Issue 4 on real hosts: a stack's container keys, named volume, bind,
secret and config, checked on the node's own engine (docker inspect) and
inside the container (docker exec), on the shared session lab."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

pytestmark = pytest.mark.e2e

STACK = "e2ekeys"
SERVICE = f"{STACK}_app"
SECRET_VALUE = "s3cret-value-for-e2e"
STACK_FILE = """
services:
  app:
    image: pyswarm-lab/busybox:latest
    command: ["sleep", "3600"]
    user: "1000:1000"
    working_dir: /work/dir
    environment:
      GREETING: ${GREETING:-hello}
      MODE: stack
    labels: {tier: e2e}
    volumes:
      - data:/data
      - ./host:/host:ro
    secrets:
      - source: token
        uid: "1000"
        mode: 0400
    configs:
      - source: app_conf
        target: /etc/app.conf
    stop_grace_period: 1s
    deploy:
      placement:
        constraints: [node.hostname==worker1]
      resources:
        limits: {cpus: "0.5", memory: 64m, pids: 50}
volumes:
  data:
secrets:
  token:
    file: ./token.txt
configs:
  app_conf:
    content: "answer=42"
"""


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    (d / "stack.yml").write_text(STACK_FILE)
    (d / "token.txt").write_text(SECRET_VALUE)
    (d / "host").mkdir()
    (d / "host" / "hello.txt").write_text("from the host\n")
    return d


def _running_container(lab: Any) -> str:
    out = lab.docker("worker1", "ps", "-q", "--filter", f"label=pyswarm.service.name={SERVICE}",
                     "--filter", "status=running").stdout.split()
    return out[0] if len(out) == 1 else ""


def test_stack_keys_take_effect_on_the_host(lab: Any, stack_dir: Path) -> None:
    manager = lab.managers[0]
    deploy = lab.pyswarm(manager, "stack", "deploy", "-c", str(stack_dir / "stack.yml"), STACK,
                         env={"GREETING": "hi there"})
    assert "Creating secret e2ekeys_token" in deploy.stdout and "Creating config e2ekeys_app_conf" in deploy.stdout
    try:
        cid = wait_for(lambda: _running_container(lab), 60, f"{SERVICE} running on worker1",
                       observe=lambda: lab.pyswarm(manager, "service", "ps", SERVICE).stdout)
        info = json.loads(lab.docker("worker1", "inspect", cid).stdout)[0]
        config, host = info["Config"], info["HostConfig"]
        assert config["User"] == "1000:1000" and config["WorkingDir"] == "/work/dir", config
        assert "GREETING=hi there" in config["Env"] and "MODE=stack" in config["Env"], config["Env"]
        assert config["Labels"]["tier"] == "e2e"
        assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (500_000_000, 64 << 20, 50), host
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Name"] == f"{STACK}_data", mounts
        assert mounts["/host"]["Type"] == "bind" and mounts["/host"]["RW"] is False, mounts
        for target in ("/run/secrets/token", "/etc/app.conf"):
            assert mounts[target]["Type"] == "bind" and mounts[target]["RW"] is False, mounts
            assert mounts[target]["Source"].startswith("/run/pyswarm/tasks/"), mounts[target]
        volume = json.loads(lab.docker("worker1", "volume", "inspect", f"{STACK}_data").stdout)[0]
        assert volume["Labels"] == {"com.docker.stack.namespace": STACK}, volume

        def inside(*argv: str) -> str:
            return str(lab.docker("worker1", "exec", cid, *argv).stdout.strip())
        assert inside("id", "-u") == "1000"
        assert inside("pwd") == "/work/dir"
        assert inside("cat", "/run/secrets/token") == SECRET_VALUE
        assert inside("stat", "-c", "%u %a", "/run/secrets/token") == "1000 400"
        assert inside("cat", "/etc/app.conf") == "answer=42"
        assert inside("cat", "/host/hello.txt") == "from the host"
        assert inside("sh", "-c", "echo $GREETING") == "hi there"
        # the secret is on no other node, and not in what the API shows
        for other in ("worker2", "worker3"):
            found = lab.exec(other, ["sh", "-c", "grep -rl 's3cret-value' /run/pyswarm 2>/dev/null; true"]).stdout
            assert found.strip() == "", f"secret found on {other}: {found}"
        shown = lab.pyswarm(manager, "service", "inspect", SERVICE).stdout
        shown += lab.pyswarm(manager, "secret", "inspect", f"{STACK}_token").stdout
        assert SECRET_VALUE not in shown and "czNjcmV0" not in shown, "secret data shown by the API"
        secret_dir = mounts["/run/secrets/token"]["Source"].rsplit("/", 1)[0]
    finally:
        lab.pyswarm(manager, "stack", "rm", STACK, check=False)
    wait_for(lambda: not lab.docker("worker1", "ps", "-aq", "--filter",
                                    f"label=pyswarm.service.name={SERVICE}").stdout.strip(),
             30, f"{SERVICE}'s container removed")
    wait_for(lambda: lab.exec("worker1", ["test", "!", "-e", secret_dir], check=False).returncode == 0,
             10, f"{secret_dir} removed on worker1")
    assert f"{STACK}_token" not in lab.pyswarm(manager, "secret", "ls").stdout
    lab.docker("worker1", "volume", "rm", f"{STACK}_data", check=False)
