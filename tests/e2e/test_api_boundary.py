"""The API's boundary on a live manager: requests of the wrong shape sent raw
to its unix socket are refused with the field named, the manager goes on
serving and orchestrating, and nothing of the refused requests reaches its
log (issue 10: one `"replicas": "3"` used to stop all orchestration)."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import brief, deployed_stacks, running, tasks, wait_until

from pyswarm.deploy.lab_core import pyswarm_executable

pytestmark = pytest.mark.e2e

MARKER = "pyswarm-e2e-secret-marker-7f3a"

# reads raw request lines on stdin, sends each on its own connection to this
# host's manager, prints each answer as one JSON line
RAW_CLIENT = textwrap.dedent("""
    import json, socket, sys
    from pyswarm import config
    for line in sys.stdin.buffer.read().split(b"\\n")[:-1]:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(config.socket_path()))
        s.sendall(line + b"\\n")
        out = b""
        while not out.endswith(b"\\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        s.close()
        print(out.decode().strip() or json.dumps({"closed": True}))
""")


def raw(lab: Any, lines: list[bytes]) -> list[dict[str, Any]]:
    python = str(Path(pyswarm_executable()).parent / "python")
    data = b"".join(line + b"\n" for line in lines)
    out = lab.exec(lab.managers[0], [python, "-c", RAW_CLIENT], input=data.decode("latin-1")).stdout
    return [json.loads(line) for line in out.splitlines()]


def request(method: str, params: Any) -> bytes:
    return json.dumps({"method": method, "params": params}).encode()


def test_bad_requests_are_refused_by_field_and_orchestration_goes_on(lab: Any, tmp_path: Path) -> None:
    secret = base64.b64encode(MARKER.encode()).decode()
    answers = raw(lab, [
        request("stack.deploy", {"stack": "bad", "services": [
            {"name": "bad_web", "container": {"image": "pyswarm-lab/busybox:latest"}, "replicas": "3"}]}),
        request("service.scale", {"scale": {"bad_web": 3}}),
        request("secret.create", {"name": "leak", "data": secret, "labels": {"k": 1}, "note": MARKER}),
        "é{not json".encode("latin-1"),
        request("ping", {}),
    ])
    errors = [a.get("error", {}).get("message", "") for a in answers]
    assert errors[0] == "services[0].replicas: expected an integer, got the string '3'", answers[0]
    assert errors[1].startswith("scale: unknown field"), answers[1]
    assert errors[2].startswith("note: unknown field (known: data, labels, name)"), answers[2]
    assert "not UTF-8" in errors[3] or "not JSON" in errors[3], answers[3]
    assert answers[4].get("result", {}).get("ready") is True, f"the manager stopped answering: {answers}"
    assert not [a for a in answers if "internal error" in json.dumps(a)], answers
    stacks = [r["name"] for r in json.loads(lab.pyswarm(lab.managers[0], "stack", "ls", "--format", "json").stdout)]
    assert "bad" not in stacks, f"a refused deploy was stored: {stacks}"

    # orchestration is not wedged: a good stack gets its tasks at once
    with deployed_stacks(lab, tmp_path) as deploy:
        deploy("good", "services:\n  web:\n    image: pyswarm-lab/busybox:latest\n"
                       "    command: [sleep, '3600']\n    deploy:\n      replicas: 2\n")
        wait_until(lambda: (len(running(lab, "good_web")) == 2, brief(tasks(lab, "good_web"))), 60,
                   "2 running replicas of good_web after the refused requests")

    log = lab.exec(lab.managers[0], ["cat", "/var/lib/pyswarm/manager.log"]).stdout
    assert MARKER not in log and secret not in log, "a refused request's params reached manager.log"
