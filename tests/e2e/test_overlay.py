"""`pyswarm init --overlay vxlan` on its own small lab (1 manager + 1
worker): container traffic between the hosts goes through the VXLAN device,
by name, and the published port answers on both nodes."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
STACK_FILE = f"""
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["18081:80"]
    deploy: {{placement: {{constraints: ["node.hostname==worker1"]}}}}
  client:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy: {{placement: {{constraints: ["node.hostname==manager1"]}}}}
"""


def test_vxlan_overlay_carries_container_traffic(lab_factory: Any, tmp_path: Path) -> None:
    lab = lab_factory(managers=1, workers=1, cluster=False)
    manager = lab.managers[0]
    res = lab.pyswarm(manager, "init", "--advertise-addr", lab.hosts[manager], "--dns-upstream", "none",
                      "--overlay", "vxlan", timeout=120)
    join = next(line for line in res.stdout.splitlines() if "pyswarm join --token" in line).split()
    lab.pyswarm("worker1", *join[1:], timeout=120)
    lab.wait_nodes_ready()
    (tmp_path / "s.yml").write_text(STACK_FILE)
    lab.pyswarm(manager, "stack", "deploy", "-c", str(tmp_path / "s.yml"), "vx")

    def ids(host: str, service: str) -> list[str]:
        return list(lab.docker(host, "ps", "-q", "--filter", f"label=pyswarm.service.name=vx_{service}").stdout.split())

    web = wait_for(lambda: ids("worker1", "web"), 60, "web running on worker1")[0]
    client = wait_for(lambda: ids(manager, "client"), 60, "client running on manager1")[0]
    routes = lab.exec(manager, ["ip", "route"]).stdout
    assert re.search(r"10\.240\.\d+\.0/24 via 10\.240\.\d+\.0 dev pswvx0 onlink", routes), routes

    def page() -> str:
        return str(lab.docker(manager, "exec", client, "sh", "-c",
                              'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 2 web 80 | tail -n 1', check=False).stdout.strip())
    assert wait_for(lambda: page() == web[:12], 20, "client on manager1 reaches web on worker1 by name")
    # (the lab's hosts share the machine's /sys, so ask ip, not /sys/class/net)
    link = json.loads(lab.exec(manager, ["ip", "-s", "-j", "link", "show", "pswvx0"]).stdout)
    tx = int(link[0]["stats64"]["tx"]["packets"])
    assert tx > 0, "nothing went through the VXLAN device"

    # the published port over the overlay: both nodes answer with the one replica
    script = tmp_path / "get.py"
    script.write_text(
        "import socket,sys\n"
        "for a in sys.argv[1:]:\n"
        "    s = socket.create_connection((a, 18081), timeout=2); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "    d = b''\n"
        "    while c := s.recv(4096): d += c\n"
        "    print(d.split(b'\\r\\n\\r\\n', 1)[-1].strip().decode())\n")
    out = lab.exec(manager, [sys.executable, str(script), *lab.hosts.values()]).stdout.split()
    assert out == [web[:12]] * len(lab.hosts), out
