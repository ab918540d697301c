"""``build:`` read as compose writes it (compose/build.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import Fail, Load, Write
from pyswarm.compose import render_config
from pyswarm.compose.build import BuildSpec


def test_string_form_is_a_context_and_names_the_image_after_the_service(load: Load, tmp_path: Path) -> None:
    stack = load("""
        services:
          web:
            build: ./web
    """)
    assert stack.services[0].container.image == "demo_web"
    assert stack.builds == {"demo_web": BuildSpec(context=str(tmp_path / "web"))}
    assert "build" not in stack.services[0].container.options


def test_long_form_every_field(load: Load, tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("t")
    stack = load("""
        services:
          api:
            image: me/api:2
            build:
              context: .
              dockerfile: docker/Dockerfile.prod
              args: [VERSION=3, FROM_ENV, UNSET]
              target: runtime
              labels: {team: core}
              cache_from: [me/api:1]
              network: host
              shm_size: 64m
              extra_hosts: ["db:10.0.0.5"]
              secrets: [token]
              platforms: [linux/amd64]
        secrets:
          token: {file: ./token.txt}
    """, environ={"FROM_ENV": "x"})
    spec = stack.builds["demo_api"]
    assert spec == BuildSpec(context=str(tmp_path), dockerfile="docker/Dockerfile.prod",
                             args={"VERSION": "3", "FROM_ENV": "x"}, labels={"team": "core"},
                             cache_from=("me/api:1",), extra_hosts={"db": "10.0.0.5"}, network="host",
                             target="runtime", shm_size=64 << 20, secrets=("token",), platforms=("linux/amd64",))
    assert stack.services[0].container.image == "me/api:2"


def test_stack_config_prints_the_long_form_in_dockers_order_and_round_trips(write: Write, tmp_path: Path) -> None:
    path = write("""
        services:
          web:
            build:
              target: prod
              args: {A: "1"}
              context: ctx
              dockerfile_inline: |
                FROM pyswarm-lab/busybox:latest
    """)
    first = render_config([path], {})
    web = yaml.safe_load(first)["services"]["web"]
    assert list(web) == ["build"]
    assert list(web["build"]) == ["context", "dockerfile_inline", "args", "target"]
    assert web["build"]["context"] == "ctx"  # as written, as docker stack config prints it
    again = tmp_path / "again.yml"
    again.write_text(first)
    assert render_config([again], {}) == first


def test_build_errors_name_the_key(fail: Fail) -> None:
    for text, needle in [
        ("build: {context: ., dockerfile: D, dockerfile_inline: 'FROM x'}", "not both"),
        ("build: {context: 'https://github.com/me/app.git'}", "local directory only"),
        ("build: {contxt: .}", "did you mean `context`"),
        ("build: {context: ., secrets: [nope]}", "undefined secret 'nope'"),
        ("build: [a]", "expected a mapping"),
        ("build: {context: ., shm_size: lots}", "shm_size"),
    ]:
        err = str(fail(f"services:\n  web:\n    {text}\n"))
        assert "services.web.build" in err and needle in err, (text, err)


def test_a_service_needs_an_image_or_a_build(fail: Fail) -> None:
    assert "no `image` and no `build`" in str(fail("services:\n  web:\n    command: ls\n"))


def test_compose_only_build_keys_warn(load: Load) -> None:
    stack = load("services:\n  web:\n    build: {context: ., ssh: [default]}\n")
    assert any("services.web.build.ssh" in w and "ignored" in w for w in stack.warnings)
