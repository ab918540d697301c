"""Stack files like the ones people have (tests/compose/data/), the stack's
own objects (names, data), and the loader's purity."""

from __future__ import annotations

import ast
import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyswarm.compose import load_config, load_stack, parse_bytes, render_config
from pyswarm.compose.keys import SWARM_IGNORED
from pyswarm.compose.units import parse_duration_ns

DATA = Path(__file__).parent / "data"
# ../shared beside the checkout (/work/main), or beside the worktrees (/work/wt/BRANCH)
SCHEMA = next((p / "shared" / "compose-spec.json" for p in Path(__file__).resolve().parents
               if (p / "shared" / "compose-spec.json").is_file()), Path("/nonexistent/compose-spec.json"))
COMPOSE = Path(__file__).resolve().parents[2] / "compose"


def test_voting_app_stack() -> None:
    stack = load_stack([DATA / "voting-app.yml"], "vote", {})
    assert stack.warnings == []
    names = [s.name for s in stack.services]
    assert names.index("vote_redis") < names.index("vote_vote")  # depends_on order
    assert names.index("vote_db") < names.index("vote_worker")
    by = {s.name: s for s in stack.services}
    db = by["vote_db"].container.options
    assert db["volumes"][0]["source"] == "vote_db-data"
    assert db["volumes"][0]["volume"]["labels"] == {"com.docker.stack.namespace": "vote"}
    assert db["secrets"] == [{"source": "db_password", "name": "vote_db_password"}]
    assert by["vote_db"].constraints == ["node.role == manager"]
    assert by["vote_vote"].reservations.nano_cpus == 250_000_000
    assert by["vote_vote"].container.resources["limits"] == {"cpus": 0.5, "memory": 128 * 1024 * 1024}
    assert by["vote_worker"].restart_condition == "on-failure"  # from the << merge key
    assert by["vote_worker"].labels == {"APP": "VOTING"}
    assert by["vote_result"].depends_on == {"db": {"condition": "service_healthy", "required": True}}
    [secret] = stack.secrets
    assert (secret.name, secret.data, secret.external) == ("vote_db_password", b"postgres-secret\n", False)
    assert secret.labels == {"com.docker.stack.namespace": "vote"}
    assert "postgres-secret" not in repr(secret)


def test_wordpress_stack_secrets_and_configs() -> None:
    stack = load_stack([DATA / "wordpress.yml"], "wp", {})
    assert stack.warnings == []
    db = {s.name: s for s in stack.services}["wp_db"].container.options
    # `mode: 0400` is octal, as in Docker's examples
    assert db["secrets"][1] == {"source": "db_password", "target": "db_password", "uid": "999", "gid": "999",
                                "mode": 0o400, "name": "wp_db_password"}
    assert db["secrets"][0]["name"] == "db_root_password"  # external: the name as written
    objs = {o.key: o for o in stack.secrets + stack.configs}
    assert objs["db_root_password"].external and objs["db_root_password"].data == b""
    assert objs["php_ini"].name == "wp_php_ini" and objs["php_ini"].data == b"upload_max_filesize = 64M\n"
    assert "wp_wp_content" == {s.name: s for s in stack.services}["wp_wordpress"].container.options[
        "volumes"][0]["source"]


def test_docker_compose_file_loads_with_a_warning_per_ignored_key() -> None:
    stack = load_stack([DATA / "docker-compose-dev.yml"], "dev", {})
    warned = sorted((w.split(": ")[1], w.split(": ")[2]) for w in stack.warnings)
    assert warned == sorted([
        ("services.app.container_name", "ignored"),
        ("services.app.restart", "ignored"), ("services.app.links", "ignored"),
        ("services.cache.container_name", "ignored"), ("services.cache.restart", "ignored"),
        ("services.cache.expose", "ignored"),
    ]), stack.warnings
    assert [s.name for s in stack.services] == ["dev_cache", "dev_app"]


@pytest.mark.parametrize("path", sorted(DATA.glob("*.yml")), ids=lambda p: p.name)
def test_real_world_files_round_trip_and_validate(path: Path, tmp_path: Path) -> None:
    first = render_config([path], {})
    copy = tmp_path / path.name
    copy.write_text(first)
    assert render_config([copy], {}) == first
    assert "postgres-secret" not in first, "stack config printed a secret's content"
    if not SCHEMA.is_file():
        pytest.skip(f"compose-spec schema not found at {SCHEMA}")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(yaml.safe_load(first.replace("$$", "$")))


def test_traefik_stack_keeps_bcrypt_hashes_in_defaults() -> None:
    """The issue's case: `${HASHED_PASSWORD:-$2y$05$...}` was "invalid interpolation"."""
    stack = load_stack([DATA / "traefik-swarm.yml"], "proxy", {"DOMAIN": "example.org"})
    assert stack.warnings == []
    by = {s.name: s for s in stack.services}
    labels = by["proxy_traefik"].labels
    assert labels["traefik.http.middlewares.admin-auth.basicauth.users"] == (
        "admin:$2y$05$oZcjT6mmV5Ug4w.5Wq7bZeBvLs5Mx8R0uTlOzUwB3e3kBvOl2Du5y")
    assert labels["traefik.http.routers.traefik-public-https.rule"] == "Host(`example.org`)"
    assert by["proxy_whoami"].labels["traefik.http.routers.whoami.rule"] == "Host(`whoami.example.org`)"
    assert by["proxy_traefik"].container.options["ports"][0] == {"target": 80, "published": 80,
                                                                 "protocol": "tcp", "mode": "host"}
    assert stack.config["networks"] == {"traefik-public": {"external": True}}


def test_elk_stack_configs_and_kibana_hash() -> None:
    stack = load_stack([DATA / "elk.yml"], "elk", {})
    assert stack.warnings == []
    by = {s.name: s for s in stack.services}
    assert by["elk_kibana"].container.env["KIBANA_SYSTEM_PASSWORD"].startswith("$2y$05$oZcj")
    assert by["elk_logstash"].mode == "global"
    assert by["elk_elasticsearch"].reservations.memory_bytes == 512 * 2**20
    assert sorted(o.key for o in stack.configs) == ["elastic_config", "kibana_config", "logstash_config",
                                                     "logstash_pipeline"]
    assert {o.key: o.data for o in stack.configs}["kibana_config"].startswith(b"server.name: kibana")
    udp = [p for p in by["elk_logstash"].container.options["ports"] if p["protocol"] == "udp"]
    assert udp == [{"target": 5000, "published": 5000, "protocol": "udp", "mode": "ingress"}]


def test_monitoring_stack() -> None:
    stack = load_stack([DATA / "monitoring.yml"], "mon", {"RETENTION": "30d"})
    assert stack.warnings == []
    by = {s.name: s for s in stack.services}
    assert by["mon_prometheus"].container.command == [
        "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.retention.time=30d"]
    assert by["mon_node-exporter"].container.command[-1].endswith("($|/)")  # $$ in the file
    assert by["mon_grafana"].container.options["secrets"][0]["mode"] == 0o400
    assert [s.data for s in stack.secrets] == [b"grafana-secret\n"]


def test_awesome_compose_shape_without_build_warns_per_ignored_key() -> None:
    stack = load_stack([DATA / "nginx-flask-mysql.yml"], "app", {})
    warned = sorted(w.split(": ")[1] for w in stack.warnings)
    assert warned == ["services.backend.restart", "services.db.expose", "services.db.restart",
                      "services.proxy.restart"]
    db = {s.name: s for s in stack.services}["app_db"]
    assert db.container.options["healthcheck"]["test"][1].startswith('mysqladmin ping -h 127.0.0.1 --password="$(')


def test_secret_from_environment_and_names(tmp_path: Path) -> None:
    path = tmp_path / "s.yml"
    path.write_text("""
services: {web: {image: a, secrets: [token, {source: named, target: t}], configs: [conf]}}
secrets:
  token: {environment: TOKEN}
  named: {external: true, name: real-name}
configs:
  conf: {content: "x=1", name: my-conf, labels: {team: a}}
""")
    stack = load_stack([path], "demo", {"TOKEN": "abc"})
    objs = {o.key: o for o in stack.secrets + stack.configs}
    assert (objs["token"].name, objs["token"].data) == ("demo_token", b"abc")
    assert objs["named"].name == "real-name" and objs["named"].external
    assert objs["conf"].name == "my-conf"
    assert objs["conf"].labels == {"team": "a", "com.docker.stack.namespace": "demo"}
    refs = stack.services[0].container.options
    assert [r["name"] for r in refs["secrets"]] == ["demo_token", "real-name"]
    assert refs["configs"] == [{"source": "conf", "name": "my-conf"}]
    # stack config keeps the file as written: no resolved names, no data
    assert stack.config["services"]["web"]["secrets"] == [{"source": "token"}, {"source": "named", "target": "t"}]


def test_the_loader_is_pure() -> None:
    """compose/ imports nothing from manager/, worker/, dns/ or deploy/, nor
    anything that talks to a network or a runtime."""
    banned = ("pyswarm.manager", "pyswarm.worker", "pyswarm.dns", "pyswarm.deploy", "socket", "asyncio",
              "aiohttp", "asyncssh", "subprocess", "urllib", "http")
    found = []
    for py in sorted(COMPOSE.glob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: must stay inside compose/
                    if node.level > 1:
                        found.append(f"{py.name}: from {'.' * node.level}{node.module or ''}")
                    continue
                names = [node.module or ""]
            found += [f"{py.name}: {n}" for n in names if n.split(".")[0] in banned or n.startswith(banned)]
    assert found == []


# -- against `docker stack config` ----------------------------------------------------------------

DOCKER_REFUSES = {
    # docker stack reads the v3 schema: depends_on is a list there; pyswarm follows the compose-spec
    "voting-app.yml": "depends_on must be a list",
    "wordpress.yml": "depends_on must be a list",
}


@functools.cache
def _docker_stack_config() -> str | None:
    """The docker CLI, if it has `stack config` (Docker 23+; Debian's docker.io 20.10 has not)."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "stack", "config", "--help"], capture_output=True, timeout=30)
    return docker if probe.returncode == 0 else None


def _canonical(config: dict[str, Any]) -> dict[str, Any]:
    """Both outputs in one spelling: what differs only in how it is written
    (null or {}, 1g or 1073741824, 1m or 1m0s, a default made explicit) is
    made equal; keys Swarm ignores are dropped (pyswarm drops them, with a warning)."""
    config = json.loads(json.dumps(config))
    config.pop("version", None)
    for kind in ("networks", "volumes", "secrets", "configs"):
        for key, entry in list((config.get(kind) or {}).items()):
            entry = config[kind][key] = entry or {}
            if entry.get("external") and entry.get("name") == key:
                del entry["name"]
    for svc in config.get("services", {}).values():
        for key in SWARM_IGNORED:
            svc.pop(key, None)
        if isinstance(svc.get("networks"), dict):
            svc["networks"] = {k: v or {} for k, v in svc["networks"].items()}
        if isinstance(svc.get("depends_on"), list):
            svc["depends_on"] = {d: {"condition": "service_started", "required": True} for d in svc["depends_on"]}
        for port in svc.get("ports", []):
            port.setdefault("protocol", "tcp")
            port.pop("host_ip", None)  # Docker drops it (with a warning); pyswarm's ingress binds it
        for volume in svc.get("volumes", []):
            if volume.get("bind") == {"create_host_path": True}:
                del volume["bind"]
        for part in svc.get("deploy", {}).get("resources", {}).values():
            if "memory" in part:
                part["memory"] = parse_bytes(part["memory"])
            if "cpus" in part:
                part["cpus"] = float(part["cpus"])
        for section in (svc.get("healthcheck", {}), svc.get("deploy", {}).get("restart_policy", {}),
                        svc.get("deploy", {}).get("update_config", {})):
            for key in ("interval", "timeout", "start_period", "start_interval", "delay", "window", "monitor"):
                if key in section:
                    section[key] = parse_duration_ns(section[key])
    return config


@pytest.mark.parametrize("path", sorted(DATA.glob("*.yml")), ids=lambda p: p.name)
def test_same_as_docker_stack_config(path: Path) -> None:
    """Where a docker CLI with `stack config` is installed, it and pyswarm read
    each corpus file to the same stack (same interpolation: bcrypt hashes,
    defaults; same normalisation), or Docker refuses what DOCKER_REFUSES says."""
    docker = _docker_stack_config()
    if docker is None:
        pytest.skip("no docker CLI with `stack config` here (Debian's docker.io 20.10 lacks it)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(path.parent)}  # no stack variables set
    run = subprocess.run([docker, "stack", "config", "-c", path.name], cwd=path.parent, env=env,
                         capture_output=True, text=True, timeout=60)
    if path.name in DOCKER_REFUSES:
        assert run.returncode != 0 and DOCKER_REFUSES[path.name] in run.stderr + run.stdout
        return
    assert run.returncode == 0, run.stderr
    ours = yaml.safe_load(render_config(load_config([path], {})).replace("$$", "$"))
    assert _canonical(ours) == _canonical(yaml.safe_load(run.stdout))


def test_where_pyswarm_differs_from_docker_stack(tmp_path: Path) -> None:
    """docs/compose.md, "Interpolation": docker stack takes a default as
    written; pyswarm interpolates it as the compose-spec says, except an unset
    bare $NAME, kept as written, so both keep a bcrypt hash."""
    docker = _docker_stack_config()
    if docker is None:
        pytest.skip("no docker CLI with `stack config` here (Debian's docker.io 20.10 lacks it)")
    (tmp_path / "s.yml").write_text(
        "services:\n  web:\n    image: busybox\n    environment:\n"
        "      NESTED: ${UNSET:-${B:-x}}\n      HASH: ${UNSET:-$2y$05$oZcjT6mm}\n      DOLLARS: ${UNSET:-a$$b}\n")
    run = subprocess.run([docker, "stack", "config", "-c", "s.yml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    theirs = yaml.safe_load(run.stdout)["services"]["web"]["environment"]
    ours = load_config([tmp_path / "s.yml"], {}).config["services"]["web"]["environment"]
    assert theirs == {"NESTED": "${B:-x}", "HASH": "$2y$05$oZcjT6mm", "DOLLARS": "a$$b"}
    assert ours == {"NESTED": "x", "HASH": "$2y$05$oZcjT6mm", "DOLLARS": "a$b"}
