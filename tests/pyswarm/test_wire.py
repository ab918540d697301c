"""pyswarm.wire: the one checker every boundary uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyswarm.errors import UsageError
from pyswarm.models import ServiceSpec
from pyswarm.wire import MAX_DEPTH, BadRequest, parse, rule


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Inner:
    n: int = field(default=0, metadata=rule(min=0, max=10))


@dataclass
class Outer:
    name: str = field(metadata=rule(pattern=r"[a-z]+", max_len=8))
    count: int = 1
    ratio: float = 0.5
    on: bool = False
    colour: Colour = Colour.RED
    kind: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list, metadata=rule(max_len=3))
    env: dict[str, str] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None
    free: Any = None


def test_a_good_request_parses_into_typed_fields() -> None:
    got = parse(Outer, {"name": "web", "count": 3, "ratio": 1, "on": True, "colour": "blue", "kind": "b",
                        "tags": ["x"], "env": {"A": "1"}, "inner": {"n": 2}, "maybe": None, "free": {"k": [1]}})
    assert got == Outer(name="web", count=3, ratio=1.0, on=True, colour=Colour.BLUE, kind="b", tags=["x"],
                        env={"A": "1"}, inner=Inner(2), maybe=None, free={"k": [1]})


@pytest.mark.parametrize("data, message", [
    ({}, "^name: missing \\(required\\)$"),
    ({"name": "web", "cuont": 1}, "^cuont: unknown field \\(known: "),
    ({"name": "web", "count": "3"}, "^count: expected an integer, got the string '3'$"),
    ({"name": "web", "count": True}, "^count: expected an integer, got the boolean true$"),
    ({"name": "web", "count": 1.5}, "^count: expected an integer, got the number 1.5$"),
    ({"name": "web", "ratio": float("inf")}, "^ratio: expected a finite number, got inf$"),
    ({"name": "web", "on": "yes"}, "^on: expected true or false, got the string 'yes'$"),
    ({"name": "web", "colour": "green"}, "^colour: expected one of 'red', 'blue', got the string 'green'$"),
    ({"name": "web", "kind": "c"}, "^kind: expected one of 'a', 'b', got the string 'c'$"),
    ({"name": "WEB"}, "^name: 'WEB' is not valid here"),
    ({"name": "abcdefghi"}, "^name: longer than 8 characters \\(9\\)$"),
    ({"name": "web", "tags": ["a", "b", "c", "d"]}, "^tags: more than 3 items \\(4\\)$"),
    ({"name": "web", "tags": ["a", 1]}, "^tags\\[1\\]: expected a string, got the number 1$"),
    ({"name": "web", "env": {"A": 1}}, "^env.A: expected a string, got the number 1$"),
    ({"name": "web", "env": ["A=1"]}, "^env: expected a mapping, got a list$"),
    ({"name": "web", "inner": {"n": 11}}, "^inner.n: 11 is above the maximum 10$"),
    ({"name": "web", "inner": {"n": -1}}, "^inner.n: -1 is below the minimum 0$"),
    ({"name": "web", "maybe": "x"}, "^maybe: expected an integer, got the string 'x'$"),
    ({"name": "web", "free": float("nan")}, "^free: expected a finite number, got nan$"),
    ("web", "^expected a mapping, got the string 'web'$"),
])
def test_a_bad_field_is_named_with_what_was_wrong(data: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse(Outer, data)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH * 4):
        deep = [deep]
    with pytest.raises(BadRequest, match="nested deeper than"):
        parse(Outer, {"name": "web", "free": deep})


def test_the_replicas_string_that_stopped_all_orchestration_is_refused() -> None:
    """Issue 10: a stack.deploy with "replicas": "3" was stored and wedged the planner."""
    spec = {"name": "demo_web", "container": {"image": "img"}, "replicas": "3"}
    with pytest.raises(BadRequest, match="^replicas: expected an integer, got the string '3'$"):
        parse(ServiceSpec, spec)
    with pytest.raises(BadRequest, match="^mode: expected one of 'replicated', 'global'"):
        parse(ServiceSpec, {"name": "demo_web", "container": {"image": "img"}, "mode": "replicated-job"})


def test_bad_request_is_a_usage_error_so_the_cli_prints_one_line() -> None:
    assert issubclass(BadRequest, UsageError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "count", "ratio", "on", "colour", "kind", "tags", "env",
                                        "inner", "maybe", "free", "other"]), json_values, max_size=8))
def test_garbage_gives_a_parse_or_a_bad_request_never_another_exception(data: dict[str, Any]) -> None:
    try:
        parse(Outer, data)
    except BadRequest:
        pass


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_garbage_service_specs_never_raise_anything_but_bad_request(data: Any) -> None:
    try:
        parse(ServiceSpec, data)
    except BadRequest:
        pass


@dataclass
class Addresses:
    ips: list[str] = field(default_factory=list)
    names: tuple[str, ...] = ()


@pytest.mark.parametrize("ips, where", [
    (["10.0.0.1", 5, "10.0.0.3"], "ips[1]"),
    (["10.0.0.1"] * 1000 + [None], "ips[1000]"),
    (["x" * ((1 << 20) + 1)], "ips[0]"),
])
def test_a_bad_item_of_a_long_string_list_is_named_by_its_index(ips: list[Any], where: str) -> None:
    """String lists are checked all at once (a DNS name's 100,000
    addresses); an item that fails still gets the general error."""
    with pytest.raises(BadRequest) as err:
        parse(Addresses, {"ips": ips})
    assert err.value.path == where, str(err.value)


def test_a_string_list_parses_as_a_list_and_a_tuple_as_a_tuple() -> None:
    got = parse(Addresses, {"ips": ["a", "b"], "names": ["c"]})
    assert got.ips == ["a", "b"] and got.names == ("c",)
