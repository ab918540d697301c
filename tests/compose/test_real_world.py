"""Stack files like the ones people have (tests/compose/data/), the stack's
own objects (names, data), and the loader's purity."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from pyswarm.compose import load_stack, render_config

DATA = Path(__file__).parent / "data"
SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "compose-spec.json"
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
        ("services.app.build", "ignored"), ("services.app.container_name", "ignored"),
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
