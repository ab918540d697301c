"""Several -c files merged by the compose-spec rules; `stack config` round-trips."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pyswarm.compose import ComposeError, load_stack, render_config

Write = Callable[..., Path]
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
# ../shared beside the checkout (/work/main), or beside the worktrees (/work/wt/BRANCH)
SCHEMA = next((p / "shared" / "compose-spec.json" for p in Path(__file__).resolve().parents
               if (p / "shared" / "compose-spec.json").is_file()), Path("/nonexistent/compose-spec.json"))


def test_merge_rules(write: Write) -> None:
    base = write("""
        services:
          web:
            image: web:1
            command: [serve, --slow]
            environment: [A=1, B=1]
            ports: ["80:80", "443:443"]
            dns: [1.1.1.1]
            deploy: {replicas: 1, labels: {x: "1"}}
    """, name="base.yml")
    over = write("""
        services:
          web:
            image: web:2
            command: [serve]
            environment: {B: 2, C: 3}
            ports: ["8080:80"]
            dns: [1.1.1.1, 8.8.8.8]
            deploy: {replicas: 3}
          extra: {image: extra}
    """, name="override.yml")
    stack = load_stack([base, over], "demo", {})
    web = stack.config["services"]["web"]
    assert web["image"] == "web:2"
    assert web["command"] == ["serve"]
    assert web["environment"] == {"A": "1", "B": "2", "C": "3"}
    assert [(p["published"], p["target"]) for p in web["ports"]] == [(8080, 80), (443, 443)]
    assert web["dns"] == ["1.1.1.1", "8.8.8.8"]
    assert web["deploy"] == {"replicas": 3, "labels": {"x": "1"}}
    assert list(stack.config["services"]) == ["web", "extra"]


def test_error_in_override_names_the_override_file(write: Write) -> None:
    base = write("services:\n  web:\n    image: a\n    ports: ['80:80']\n", name="base.yml")
    over = write("services:\n  web:\n    ports:\n      - '8080:80'\n      - 'x:1'\n",
                 name="override.yml")
    with pytest.raises(ComposeError) as info:
        load_stack([base, over], "demo", {})
    assert str(info.value).startswith(f"{over}:5:9: services.web.ports[1]: ")


def test_render_round_trips(write: Write) -> None:
    write("GREETING=hello $$ world\n", name=".env")
    path = write("""
        services:
          web:
            image: busybox
            command: sh -c 'echo $$HOME ${GREETING}'
            environment: {ON: "on", OCT: "0o17", N: "007", PRICE: "$${X}"}
            ports: ["8080:80"]
            healthcheck: {test: "true", interval: 90s}
            deploy: {replicas: 2, resources: {limits: {memory: 1g, cpus: "0.5"}}}
    """)
    first = render_config([path], {})
    again = write(first, name="rendered.yml")
    assert render_config([again], {}) == first
    original = load_stack([path], "demo", {})
    reloaded = load_stack([again], "demo", {})
    assert [s.to_dict() for s in reloaded.services] == [s.to_dict() for s in original.services]
    env = original.services[0].container.env
    assert env == {"ON": "on", "OCT": "0o17", "N": "007", "PRICE": "${X}"}
    assert original.services[0].container.command == ["sh", "-c", "echo $HOME hello $ world"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.name)
def test_examples_round_trip(path: Path, tmp_path: Path) -> None:
    first = render_config([path], {})
    copy = tmp_path / path.name
    copy.write_text(first)
    assert render_config([copy], {}) == first


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.name)
def test_rendered_examples_validate_against_compose_spec(path: Path) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"compose-spec schema not found at {SCHEMA} (../shared is absent)")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    import yaml

    schema = json.loads(SCHEMA.read_text())
    data = yaml.safe_load(render_config([path], {}).replace("$$", "$"))
    jsonschema.Draft7Validator(schema).validate(data)  # the file says draft-07
