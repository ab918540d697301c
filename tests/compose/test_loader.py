"""The stack-file subset of issue 2: image, command, entrypoint, environment,
deploy.replicas; names; warnings for what is not honoured; located errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pyswarm.compose import (
    ComposeError,
    StackFileError,
    Stack,
    StackNameError,
    ValidationError,
    load_stack,
)
from pyswarm.errors import UsageError
from pyswarm.models import ServiceSpec

# the fixtures' types (the fixtures themselves are in conftest.py)
Write = Callable[..., Path]
Load = Callable[..., Stack]
Fail = Callable[..., ComposeError]

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def only(stack_services: list[ServiceSpec]) -> ServiceSpec:
    assert len(stack_services) == 1
    return stack_services[0]


def test_minimal_service(load: Load) -> None:
    stack = load("""
        services:
          web:
            image: nginx:1.25
    """)
    spec = only(stack.services)
    assert stack.name == "demo"
    assert spec.name == "demo_web"
    assert spec.stack == "demo"
    assert spec.replicas == 1
    assert spec.container.image == "nginx:1.25"
    assert spec.container.command is None
    assert spec.container.entrypoint is None
    assert spec.container.env == {}
    assert stack.warnings == []


def test_command_string_is_split_like_a_shell(load: Load) -> None:
    spec = only(load("""
        services:
          web:
            image: busybox
            command: sh -c 'echo "hi there" && sleep 10'
            entrypoint: /bin/tini --
    """).services)
    assert spec.container.command == ["sh", "-c", 'echo "hi there" && sleep 10']
    assert spec.container.entrypoint == ["/bin/tini", "--"]


def test_command_list_is_kept(load: Load) -> None:
    spec = only(load("""
        services:
          web:
            image: busybox
            command: ["sleep", 100]
            entrypoint: []
    """).services)
    assert spec.container.command == ["sleep", "100"]
    assert spec.container.entrypoint == []


def test_environment_list(load: Load) -> None:
    spec = only(load("""
        services:
          web:
            image: busybox
            environment:
              - A=1
              - B=x=y
              - EMPTY=
              - FROM_SHELL
              - ABSENT
    """, environ={"FROM_SHELL": "shell"}).services)
    assert spec.container.env == {"A": "1", "B": "x=y", "EMPTY": "", "FROM_SHELL": "shell"}


def test_environment_map(load: Load) -> None:
    spec = only(load("""
        services:
          web:
            image: busybox
            environment:
              NUM: 3
              FLOAT: 1.5
              FLAG: true
              WORD: yes
              FROM_SHELL:
              ABSENT: null
    """, environ={"FROM_SHELL": "shell"}).services)
    assert spec.container.env == {
        "NUM": "3", "FLOAT": "1.5", "FLAG": "true", "WORD": "yes", "FROM_SHELL": "shell",
    }


def test_replicas(load: Load) -> None:
    stack = load("""
        services:
          web: {image: a, deploy: {replicas: 5}}
          worker: {image: b, deploy: {replicas: 0}}
    """)
    assert [(s.name, s.replicas) for s in stack.services] == [("demo_web", 5), ("demo_worker", 0)]


def test_version_and_extension_fields_are_silent(load: Load) -> None:
    stack = load("""
        version: "3.8"
        x-common: &common
          image: busybox
        services:
          web:
            <<: *common
            x-note: hello
    """)
    assert stack.warnings == []
    assert only(stack.services).container.image == "busybox"


def test_unknown_key_warns_with_file_service_and_key(load: Load) -> None:
    stack = load("""
        services:
          web:
            image: busybox
            replicaz: 3
    """)
    assert len(stack.services) == 1
    [warning] = stack.warnings
    assert warning.startswith("compose.yml:4:5: services.web.replicaz: unknown key")


def test_unknown_key_strict_is_an_error(fail: Fail) -> None:
    err = fail("""
        services:
          web:
            image: busybox
            entrypont: sh
    """, strict=True)
    assert str(err) == ("--strict: 1 warning, each an error here:\n"
                        "compose.yml:4:5: services.web.entrypont: unknown key, ignored "
                        "(did you mean `entrypoint`?)")


def test_swarm_ignored_key_warns(load: Load) -> None:
    stack = load("""
        services:
          web:
            image: busybox
            container_name: web1
            restart: always
    """)
    assert len(stack.warnings) == 2
    assert "services.web.container_name: ignored" in stack.warnings[0]
    assert "services.web.restart: ignored" in stack.warnings[1]
    assert "deploy.restart_policy" in stack.warnings[1]


def test_swarm_rejected_key_says_what_to_write(fail: Fail) -> None:
    err = fail("""
        services:
          web:
            image: busybox
            mem_limit: 512m
    """)
    assert isinstance(err, ValidationError)
    assert "compose.yml:4:5: services.web.mem_limit: not supported by Swarm: write " \
        "`deploy.resources.limits.memory` instead" in str(err)


def test_error_names_file_line_column_and_path(fail: Fail) -> None:
    err = fail("""
        services:
          web:
            image: busybox
            deploy:
              replicas: five
    """)
    assert str(err) == (
        "compose.yml:5:17: services.web.deploy.replicas: expected an integer, got 'five'"
    )
    assert isinstance(err, UsageError)


def test_all_problems_are_reported_at_once(fail: Fail) -> None:
    err = fail("""
        services:
          web:
            deploy: {replicas: -1}
          db:
            image: [postgres]
    """)
    messages = [p.message for p in err.problems]
    assert len(messages) == 3
    assert any("no `image`" in m for m in messages)
    assert any("at least 0" in m for m in messages)
    assert any("expected a string, got a list" in m for m in messages)


def test_yaml_syntax_error_has_its_line(fail: Fail) -> None:
    err = fail("""
        services:
          web:
            image: busybox
           command: [a, b
    """)
    assert isinstance(err, StackFileError)
    assert str(err).startswith("compose.yml:4:")
    assert "invalid YAML" in str(err)


def test_duplicate_key_is_an_error(fail: Fail) -> None:
    err = fail("""
        services:
          web:
            image: a
            image: b
    """)
    assert "compose.yml:4:5: services.web.image: duplicate key (first on line 3)" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StackFileError, match="nope.yml: no such file"):
        load_stack([tmp_path / "nope.yml"], "demo", {})


@pytest.mark.parametrize("text, needle", [
    ("", "the file is empty"),
    ("- a\n- b\n", "expected a mapping"),
    ("version: '3'\n", "`services` is missing"),
    ("services: {}\n", "`services` is empty"),
    ("services:\n", "`services` is empty"),
    ("services: [web]\n", "expected a mapping of service names"),
    ("services:\n  web:\n", "the service is empty"),
    ("services:\n  web:\n    command: ls\n", "no `image`"),
])
def test_structural_errors(fail: Fail, text: str, needle: str) -> None:
    assert needle in str(fail(text))


@pytest.mark.parametrize("name", ["Demo", "-demo", "my stack", "demo.x", "", "a" * 70])
def test_bad_stack_names(write: Write, name: str) -> None:
    path = write("services: {web: {image: a}}\n")
    with pytest.raises(StackNameError):
        load_stack([path], name, {})


@pytest.mark.parametrize("name", ["demo", "my-stack_2", "0x"])
def test_good_stack_names(load: Load, name: str) -> None:
    assert load("services: {web: {image: a}}\n", stack=name).services[0].name == f"{name}_web"


@pytest.mark.parametrize("name", ["-web", "web-", "we b", "web!"])
def test_bad_service_names(fail: Fail, name: str) -> None:
    assert "invalid service name" in str(fail(f"services: {{'{name}': {{image: a}}}}\n"))


def test_yaml12_scalars(load: Load) -> None:
    """80:80 stays a string (YAML 1.1 would read 4880); yes/no/on stay words."""
    spec = only(load("""
        services:
          web:
            image: a
            environment:
              PORTS: 80:80
              ON: on
              OCT: 0o17
    """).services)
    assert spec.container.env == {"PORTS": "80:80", "ON": "on", "OCT": "15"}


def test_compose_error_is_a_usage_error() -> None:
    assert issubclass(ComposeError, UsageError)


def test_demo_example_loads() -> None:
    stack = load_stack([EXAMPLES / "demo.yml"], "demo", {})
    assert stack.warnings == []
    web = next(s for s in stack.services if s.name == "demo_web")
    assert web.replicas == 3
    assert web.container.image == "pyswarm-lab/busybox:latest"
    assert web.container.command is not None and "httpd" in web.container.command[-1]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.name)
def test_every_example_loads_without_warnings(path: Path) -> None:
    assert load_stack([path], "ex", {}).warnings == []


def test_optional_dependency_on_a_missing_service_warns(load: Load) -> None:
    stack = load("""
        services:
          web:
            image: busybox
            depends_on:
              cache: {condition: service_started, required: false}
    """)
    assert stack.warnings == ["compose.yml:5:7: services.web.depends_on.cache: optional dependency "
                              "'cache' is not in the stack; ignored"]
    assert stack.services[0].depends_on == {}
