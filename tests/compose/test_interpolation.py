"""${VAR} substitution, .env files and env_files (issue 4, "Interpolation")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pyswarm.compose import ComposeError, InterpolationError, Stack, load_stack, substitute

Write = Callable[..., Path]
Load = Callable[..., Stack]
Fail = Callable[..., ComposeError]

ENV = {"A": "a", "EMPTY": "", "N": "3"}


@pytest.mark.parametrize("text, expected", [
    ("$A", "a"), ("${A}", "a"), ("x${A}y", "xay"), ("$A-$A", "a-a"),
    ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("${UNSET-d}", "d"),
    ("${A:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"), ("${UNSET+alt}", ""),
    ("${UNSET:-${A}}", "a"), ("${UNSET:-${NOPE:-deep}}!", "deep!"), ("$$A", "$A"),
    ("$${A}", "${A}"), ("${A:?m}", "a"), ("no dollars", "no dollars"), ("${UNSET}", ""),
    ("${UNSET:-a b}", "a b"),
])
def test_substitute(text: str, expected: str) -> None:
    assert substitute(text, ENV) == expected


@pytest.mark.parametrize("text, message", [
    ("${UNSET:?set it please}", "required variable UNSET: set it please"),
    ("${EMPTY:?}", "required variable EMPTY is empty"),
    ("${UNSET?}", "required variable UNSET is not set"),
    ("${A", "expected }"), ("${1}", "invalid variable name"), ("${}", "invalid variable name"),
    ("${ A}", "invalid variable name"), ("${A }", "expected }"), ("${A!}", "expected }"),
    ("${A:-x", "missing closing"),
])
def test_substitute_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("$", r"\$").replace("{", r"\{")):
        substitute(text, ENV)


SPEC_ENV = {"FOO": "first", "BAR": "", "VARIABLE": "value"}


@pytest.mark.parametrize("text, expected", [
    # compose-spec 12-interpolation.md, and compose-go's template tests
    ("${VARIABLE:-default}", "value"), ("${UNSET:-default}", "default"), ("${BAR:-default}", "default"),
    ("${VARIABLE-default}", "value"), ("${UNSET-default}", "default"), ("${BAR-default}", ""),
    ("${VARIABLE:?err}", "value"), ("${VARIABLE?err}", "value"), ("${BAR?err}", ""),
    ("$$VAR_NOT_INTERPOLATED_BY_COMPOSE", "$VAR_NOT_INTERPOLATED_BY_COMPOSE"), ("$${foo}", "${foo}"),
    ("$FOO-bar", "first-bar"), ("This ${missing} var", "This  var"), ("This ${BAR} var", "This  var"),
    ("ok ${BAR:-/non:-alphanumeric}", "ok /non:-alphanumeric"),
    ("${UNSET-myerror?msg}", "myerror?msg"), ("${FOO?bar-baz}", "first"),
    # nested defaults are interpolated (the spec; docker stack takes them literally)
    ("${UNSET:-${FOO}}", "first"), ("${UNSET:-${UNSET2:-default}}", "default"),
    ("ok ${UNSET-$FOO}", "ok first"), ("ok ${UNSET-${FOO} ${FOO}}", "ok first first"),
    ("ok ${BAR:-$FOO}", "ok first"), ("${UNSET:-$$x}", "$x"), ("${FOO:+${BAR:-alt}}", "alt"),
    # a $ that starts no name is kept as written, as Docker keeps it
    ("$2y$05$", "$2y$05$"), ("cost: 5$", "cost: 5$"), ("a $ b", "a $ b"), ("$.x $-y $}", "$.x $-y $}"),
    # ... and in a default, an unset bare $NAME too: a bcrypt hash survives
    ("admin:${HASH:-$2y$05$oZcjT6mmV5Ug4w.5Wq7bZe}", "admin:$2y$05$oZcjT6mmV5Ug4w.5Wq7bZe"),
    ("${UNSET:-$FOO/$NOPE}", "first/$NOPE"),
])
def test_compose_spec_examples(text: str, expected: str) -> None:
    assert substitute(text, SPEC_ENV) == expected


@pytest.mark.parametrize("text, message", [
    ("not ok ${UNSET:?Mandatory Variable Unset}", "required variable UNSET: Mandatory Variable Unset"),
    ("not ok ${BAR:?Mandatory Variable Empty}", "required variable BAR: Mandatory Variable Empty"),
    ("${UNSET?Mandatory Variable ${FOO}}", "required variable UNSET: Mandatory Variable first"),
    ("${UNSET:?$FOO}", "required variable UNSET: first"), ("${UNSET?bar-baz}", "required variable UNSET: bar-baz"),
])
def test_compose_spec_required_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        substitute(text, SPEC_ENV)
    assert str(info.value) == message


def test_bcrypt_hash_in_a_traefik_label_is_kept(load: Load) -> None:
    stack = load("""
        services:
          proxy:
            image: traefik:v3.0
            deploy:
              labels:
                - "traefik.http.middlewares.auth.basicauth.users=admin:${HASH:-$2y$05$oZcjT6mmV5Ug4w.5Wq7bZe}"
    """)
    assert stack.services[0].labels == {
        "traefik.http.middlewares.auth.basicauth.users": "admin:$2y$05$oZcjT6mmV5Ug4w.5Wq7bZe"}
    assert stack.warnings == []
    stack = load("services: {p: {image: a, deploy: {labels: {u: 'admin:${HASH:-$2y$05$oZ}'}}}}\n",
                 environ={"HASH": "$1$x"})
    assert stack.services[0].labels["u"] == "admin:$1$x"  # a set variable's value is used as is


def test_unset_without_default_warns_once(load: Load) -> None:
    stack = load("""
        services:
          web:
            image: "busybox:${TAG}"
            command: ["echo", "$TAG"]
    """)
    assert stack.services[0].container.image == "busybox:"
    [warning] = stack.warnings
    assert "variable TAG is not set" in warning


def test_interpolated_values_are_checked_as_their_type(load: Load) -> None:
    stack = load("""
        services:
          web:
            image: busybox
            deploy: {replicas: "${N:-1}"}
    """, environ={"N": "4"})
    assert stack.services[0].replicas == 4


def test_required_variable_error_is_located(fail: Fail) -> None:
    err = fail("""
        services:
          web:
            image: ${IMAGE:?the image to deploy}
    """)
    assert isinstance(err, InterpolationError)
    assert str(err) == ("compose.yml:3:12: services.web.image: "
                        "required variable IMAGE: the image to deploy")


def test_dotenv_beside_first_file_and_environ_wins(write: Write, tmp_path: Path) -> None:
    write("TAG=1.0\nexport OTHER='lit $x'\n# comment\nQ=\"a\\nb\"\nR=r # note\n", name=".env")
    path = write("""
        services:
          web:
            image: "busybox:${TAG}"
            environment: [OTHER, "Q=${Q}", "R=$R"]
    """)
    stack = load_stack([path], "demo", {})
    assert stack.services[0].container.image == "busybox:1.0"
    assert stack.services[0].container.env == {"OTHER": "lit $x", "Q": "a\nb", "R": "r"}
    assert load_stack([path], "demo", {"TAG": "2.0"}).services[0].container.image == "busybox:2.0"


def test_env_files_argument(write: Write) -> None:
    write("TAG=from-dotenv\n", name=".env")
    extra = write("TAG=from-extra\n", name="extra.env")
    path = write("services: {web: {image: 'busybox:${TAG}'}}\n")
    stack = load_stack([path], "demo", {}, env_files=[extra])
    assert stack.services[0].container.image == "busybox:from-extra"


def test_service_env_file_folds_into_environment(load: Load, write: Write) -> None:
    write("A=from-file\nB=from-file\n", name="web.env")
    stack = load("""
        services:
          web:
            image: busybox
            env_file: [web.env, {path: missing.env, required: false}]
            environment: {B: mine}
    """)
    assert stack.services[0].container.env == {"A": "from-file", "B": "mine"}


def test_missing_required_env_file(fail: Fail) -> None:
    assert "env file" in str(fail("services: {web: {image: a, env_file: nope.env}}\n"))
