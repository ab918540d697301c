"""Issue 4's keys: short and long syntax normalised to long; errors per key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyswarm.compose import ComposeError, Stack

Load = Callable[..., Stack]
Fail = Callable[..., ComposeError]

TOP = """
networks: {front: {}, back: {}}
volumes: {data: {}}
secrets: {pw: {external: true}}
configs: {conf: {external: true}}
"""


def svc(load: Load, body: str) -> dict[str, Any]:
    """Load one service ``web`` with ``body`` (YAML under it) and return its normalised form."""
    text = "services:\n  web:\n    image: busybox\n" + "".join(
        "    " + line + "\n" for line in body.strip("\n").splitlines()) + TOP
    stack = load(text)
    assert not [w for w in stack.warnings if "web" in w], stack.warnings
    result: dict[str, Any] = stack.config["services"]["web"]
    return result


def test_ports_short_and_long(load: Load) -> None:
    out = svc(load, """
ports:
  - 80
  - "8080:80"
  - "127.0.0.1:9000:9000/udp"
  - "7000-7001:70-71"
  - "[::1]:53:53/udp"
  - {target: 443, published: "8443", mode: host}
""")
    assert out["ports"] == [
        {"target": 80, "protocol": "tcp", "mode": "ingress"},
        {"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"},
        {"target": 9000, "published": 9000, "host_ip": "127.0.0.1", "protocol": "udp",
         "mode": "ingress"},
        {"target": 70, "published": 7000, "protocol": "tcp", "mode": "ingress"},
        {"target": 71, "published": 7001, "protocol": "tcp", "mode": "ingress"},
        {"target": 53, "published": 53, "host_ip": "::1", "protocol": "udp", "mode": "ingress"},
        {"target": 443, "published": 8443, "protocol": "tcp", "mode": "host"},
    ]


@pytest.mark.parametrize("port, needle", [
    ("'99999:80'", "ports are 1-65535"), ("'80/ftp'", "unknown protocol"),
    ("{published: 80}", "needs a `target`"), ("{target: 80, mode: bridge}", "expected one of"),
])
def test_port_errors(fail: Fail, port: str, needle: str) -> None:
    assert needle in str(fail(f"services: {{web: {{image: a, ports: [{port}]}}}}\n"))


def test_volumes_short_and_long(load: Load, tmp_path: Path) -> None:
    out = svc(load, """
volumes:
  - data:/data:ro
  - ./conf:/etc/conf:ro,z
  - /var/run/docker.sock:/var/run/docker.sock
  - /anon
  - {type: tmpfs, target: /tmp, tmpfs: {size: 64m}}
  - {type: volume, source: data, target: /d2, volume: {nocopy: true}}
""")
    assert out["volumes"] == [
        {"type": "volume", "source": "data", "target": "/data", "read_only": True},
        {"type": "bind", "source": str(tmp_path / "conf"), "target": "/etc/conf", "read_only": True,
         "bind": {"selinux": "z", "create_host_path": True}},
        {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock",
         "bind": {"create_host_path": True}},
        {"type": "volume", "target": "/anon"},
        {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 64 * 2**20}},
        {"type": "volume", "source": "data", "target": "/d2", "volume": {"nocopy": True}},
    ]


def test_undeclared_references_are_errors(fail: Fail) -> None:
    err = str(fail("""
        services:
          web:
            image: a
            volumes: [nope:/x]
            networks: [nonet]
            secrets: [nosecret]
    """))
    assert "undefined volume 'nope'" in err
    assert "undefined network 'nonet'" in err
    assert "undefined secret 'nosecret'" in err


def test_secrets_configs_networks(load: Load) -> None:
    out = svc(load, """
secrets: [pw, {source: pw, target: /run/pw2, mode: 0o400}]
configs: [{source: conf, target: /etc/app.conf}]
networks: {front: {aliases: [www]}, back: null}
""")
    assert out["secrets"] == [{"source": "pw"}, {"source": "pw", "target": "/run/pw2", "mode": 0o400}]
    assert out["configs"] == [{"source": "conf", "target": "/etc/app.conf"}]
    assert out["networks"] == {"front": {"aliases": ["www"]}, "back": {}}


def test_healthcheck(load: Load) -> None:
    out = svc(load, """
healthcheck: {test: "wget -q localhost", interval: 90s, timeout: 500ms, retries: 3, start_period: 1m}
""")
    assert out["healthcheck"] == {"test": ["CMD-SHELL", "wget -q localhost"], "interval": "1m30s",
                                  "timeout": "500ms", "retries": 3, "start_period": "1m"}
    assert svc(load, "healthcheck: {disable: true}")["healthcheck"] == {"test": ["NONE"]}


def test_deploy_section(load: Load) -> None:
    stack = load("""
        services:
          web:
            image: a
            deploy:
              mode: replicated
              replicas: 2
              labels: {tier: web}
              placement:
                constraints: ["node.labels.zone==eu", "node.role != manager"]
                preferences: [{spread: node.labels.zone}]
                max_replicas_per_node: 1
              resources:
                limits: {cpus: '0.5', memory: 512M, pids: 100}
                reservations: {cpus: 0.25, memory: 128m}
              restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 120s}
              update_config: {parallelism: 2, delay: 10s, failure_action: rollback,
                              monitor: 30s, max_failure_ratio: 0.1, order: start-first}
              rollback_config: {parallelism: 1, failure_action: pause}
              endpoint_mode: dnsrr
    """)
    spec = stack.services[0]
    assert spec.labels == {"tier": "web"}
    assert spec.constraints == ["node.labels.zone == eu", "node.role != manager"]
    assert spec.max_replicas_per_node == 1
    assert spec.reservations.nano_cpus == 250_000_000
    assert spec.reservations.memory_bytes == 128 * 2**20
    assert spec.restart_condition == "on-failure"
    assert spec.deploy["resources"]["limits"] == {"cpus": 0.5, "memory": 512 * 2**20, "pids": 100}
    assert spec.deploy["restart_policy"]["window"] == "2m"
    assert spec.deploy["update_config"]["order"] == "start-first"
    assert spec.deploy["endpoint_mode"] == "dnsrr"


@pytest.mark.parametrize("deploy, needle", [
    ("{mode: global, replicas: 2}", "cannot be used with mode global"),
    ("{mode: everywhere}", "expected one of replicated, global"),
    ("{placement: {constraints: [node.zone]}}", "expected KEY==VALUE"),
    ("{placement: {constraints: ['node.zone==eu']}}", "unknown constraint key"),
    # loaded once, then refused by the scheduler forever (issue 10): now one grammar refuses it at load
    ("{placement: {constraints: ['node.labels.example.com/zone==eu']}}", "bad key 'node.labels.example.com/zone'"),
    ("{placement: {constraints: ['node.hostname==a>b']}}", "bad value 'a>b'"),
    ("{placement: {preferences: [{spread: node.colour}]}}", "invalid placement preference spread='node.colour'"),
    ("{mode: replicated-job}", "mode replicated-job (a Swarm job"),
    ("{mode: global-job}", "not supported by pyswarm yet"),
    ("{resources: {limits: {memory: lots}}}", "expected a size"),
    ("{restart_policy: {condition: always}}", "expected one of none, on-failure, any"),
    ("{update_config: {delay: soon}}", "expected a duration"),
    ("{update_config: {max_failure_ratio: 2}}", "between 0 and 1"),
    ("{resources: {limits: {memroy: 1g}}}", "did you mean `memory`?"),
])
def test_deploy_errors(fail: Fail, deploy: str, needle: str) -> None:
    assert needle in str(fail(f"services: {{web: {{image: a, deploy: {deploy}}}}}\n"))


def test_small_keys(load: Load) -> None:
    out = svc(load, """
labels: [a=1, b=2]
cap_add: [net_admin]
cap_drop: [ALL]
sysctls: {net.core.somaxconn: 1024}
ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 512}
init: true
user: "1000:1000"
working_dir: /app
stop_grace_period: 1m30s
stop_signal: SIGINT
tmpfs: /run
extra_hosts: ["db:10.0.0.5", "cache=10.0.0.6"]
hostname: web
dns: 8.8.8.8
dns_search: [example.com]
read_only: true
stdin_open: false
tty: true
logging: {driver: json-file, options: {max-size: 10m}}
""")
    assert out["labels"] == {"a": "1", "b": "2"}
    assert out["cap_add"] == ["NET_ADMIN"]
    assert out["sysctls"] == {"net.core.somaxconn": "1024"}
    assert out["ulimits"] == {"nofile": {"soft": 1024, "hard": 2048},
                              "nproc": {"soft": 512, "hard": 512}}
    assert out["stop_grace_period"] == "1m30s"
    assert out["tmpfs"] == ["/run"]
    assert out["extra_hosts"] == {"db": "10.0.0.5", "cache": "10.0.0.6"}
    assert out["dns"] == ["8.8.8.8"]
    assert out["logging"] == {"driver": "json-file", "options": {"max-size": "10m"}}
    assert (out["init"], out["read_only"], out["stdin_open"], out["tty"]) == (True, True, False, True)


def test_depends_on_orders_services(load: Load) -> None:
    stack = load("""
        services:
          web: {image: a, depends_on: {api: {condition: service_healthy}}}
          api: {image: a, depends_on: [db]}
          db: {image: a}
    """)
    assert [s.name for s in stack.services] == ["demo_db", "demo_api", "demo_web"]
    assert stack.services[2].depends_on == {"api": {"condition": "service_healthy", "required": True}}


@pytest.mark.parametrize("text, needle", [
    ("services: {a: {image: x, depends_on: [b]}, b: {image: x, depends_on: [a]}}\n",
     "dependency cycle"),
    ("services: {a: {image: x, depends_on: [dbb]}, db: {image: x}}\n",
     "undefined service 'dbb' (did you mean `db`?)"),
])
def test_depends_on_errors(fail: Fail, text: str, needle: str) -> None:
    assert needle in str(fail(text))


def test_compose_file_for_docker_compose_loads_with_warnings(load: Load) -> None:
    stack = load("""
        services:
          app:
            build: .
            image: me/app
            container_name: app
            restart: unless-stopped
            links: [db]
            privileged: true
          db: {image: postgres, network_mode: host}
    """)
    assert len(stack.services) == 2
    keys = [w.split(": ")[1] for w in stack.warnings]
    assert keys == ["services.app.container_name", "services.app.restart",
                    "services.app.links", "services.app.privileged", "services.db.network_mode"]


@pytest.mark.parametrize("key, hint", [
    ("extends: {service: x}", "anchors"), ("volumes_from: [x]", "named volume"),
    ("cpu_shares: 512", "deploy.resources.limits.cpus"), ("scale: 3", "deploy.replicas"),
])
def test_swarm_rejected_keys(fail: Fail, key: str, hint: str) -> None:
    assert hint in str(fail(f"services: {{web: {{image: a, {key}}}}}\n"))


def test_top_level_secret_file_is_made_absolute(load: Load, tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("s3cret")
    stack = load("""
        services: {web: {image: a, secrets: [pw]}}
        secrets: {pw: {file: ./pw.txt}}
    """)
    assert stack.config["secrets"] == {"pw": {"file": str(tmp_path / "pw.txt")}}


def test_missing_secret_file(fail: Fail) -> None:
    """Refused by deploy (load_stack); ``stack config`` prints it (tests/compose/test_objects.py)."""
    assert "no such file" in str(fail("services: {web: {image: a}}\nsecrets: {pw: {file: nope}}\n"))
