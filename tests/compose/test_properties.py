"""Property-based tests (hypothesis): interpolation, and `stack config`
round-tripping for generated stacks."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pyswarm.compose import load_stack, render_config, substitute

SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "compose-spec.json"

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
plain = texts.filter(lambda t: "$" not in t)
FAST = settings(max_examples=60, deadline=None)


def escape(text: str) -> str:
    return text.replace("$", "$$")


@FAST
@given(plain, st.dictionaries(names, texts))
def test_text_without_dollars_is_unchanged(text: str, env: dict[str, str]) -> None:
    assert substitute(text, env) == text


@FAST
@given(texts, st.dictionaries(names, texts))
def test_double_dollar_is_a_literal_dollar(text: str, env: dict[str, str]) -> None:
    assert substitute(escape(text), env) == text


@FAST
@given(names, texts, plain, plain)
def test_braced_and_bare_variables(name: str, value: str, before: str, after: str) -> None:
    env = {name: value}
    assert substitute(f"{escape(before)}${{{name}}}{escape(after)}", env) == before + value + after
    # a bare $NAME ends at the first character that cannot be in a name
    assert substitute(f"${name}/{escape(after)}", env) == value + "/" + after


@FAST
@given(st.text(st.sampled_from("${}:-?+Ab_2 "), max_size=200), st.dictionaries(st.sampled_from(["A", "Ab", "b_"]),
                                                                               st.sampled_from(["", "v", "$A"])))
def test_any_text_substitutes_or_says_why(text: str, env: dict[str, str]) -> None:
    """Hostile text of the interpolation alphabet: a string, or a ValueError
    with a message; never a RecursionError, never another exception."""
    try:
        assert isinstance(substitute(text, env), str)
    except ValueError as exc:
        assert str(exc)


@FAST
@given(names, st.one_of(st.none(), st.just(""), texts.filter(bool)), texts)
def test_defaults_and_alternatives(name: str, value: str | None, word: str) -> None:
    # a default cannot contain "}": the first one closes the expression (compose has no escape for it)
    assume("}" not in word)
    env = {} if value is None else {name: value}
    w = escape(word)
    is_set, non_empty = value is not None, bool(value)
    assert substitute(f"${{{name}:-{w}}}", env) == (value if non_empty else word)
    assert substitute(f"${{{name}-{w}}}", env) == (value if is_set else word)
    assert substitute(f"${{{name}:+{w}}}", env) == (word if non_empty else "")
    assert substitute(f"${{{name}+{w}}}", env) == (word if is_set else "")
    if non_empty:
        assert substitute(f"${{{name}:?{w}}}", env) == value
    else:
        with pytest.raises(ValueError, match=f"required variable {name}"):
            substitute(f"${{{name}:?{w}}}", env)


@FAST
@given(names, names, texts)
def test_nested_defaults(outer: str, inner: str, word: str) -> None:
    env = {inner: word} if outer != inner else {}
    expected = word if outer != inner and word else "d"
    assert substitute(f"${{{outer}:-${{{inner}:-d}}}}", env) == expected


# -- generated stacks --------------------------------------------------------

service_names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
durations = st.sampled_from(["10s", "1m30s", "500ms", "2h", 90, "1h2m3s"])
sizes = st.sampled_from(["512m", "1g", "100k", 1024, "64M"])
words = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_./:$ ='\"{}"),
                min_size=1, max_size=12).map(escape)

service = st.fixed_dictionaries({"image": st.sampled_from(["busybox", "nginx:1.25", "ghcr.io/a/b:1"])}, optional={
    "command": st.one_of(st.lists(words, min_size=1, max_size=4), st.just("sh -c 'echo hi'")),
    "environment": st.one_of(st.dictionaries(names, st.one_of(words, st.integers(), st.booleans()), max_size=4),
                             st.lists(st.builds(lambda k, v: f"{k}={v}", names, words), max_size=4)),
    "labels": st.dictionaries(st.from_regex(r"[a-z][a-z.]{0,10}", fullmatch=True), words, max_size=3),
    "ports": st.lists(st.one_of(st.integers(1, 65535).map(str),
                                st.builds(lambda a, b: f"{a}:{b}", st.integers(1, 65535), st.integers(1, 65535))),
                      max_size=3, unique=True),
    "user": st.sampled_from(["1000", "1000:1000", "nobody"]),
    "working_dir": st.sampled_from(["/srv", "/app/data"]),
    "stop_grace_period": durations,
    "read_only": st.booleans(), "init": st.booleans(), "tty": st.booleans(),
    "cap_add": st.lists(st.sampled_from(["NET_ADMIN", "sys_time"]), max_size=2, unique=True),
    "tmpfs": st.lists(st.sampled_from(["/run", "/tmp"]), max_size=2, unique=True),
    "extra_hosts": st.lists(st.builds(lambda h, n: f"{h}:10.0.0.{n}", service_names, st.integers(1, 254)),
                            max_size=2, unique=True),
    "ulimits": st.dictionaries(st.sampled_from(["nofile", "nproc"]), st.integers(1, 65535), max_size=2),
    "healthcheck": st.fixed_dictionaries({"test": st.just(["CMD", "true"])}, optional={
        "interval": durations, "retries": st.integers(0, 5)}),
    "deploy": st.fixed_dictionaries({}, optional={
        "replicas": st.integers(0, 20),
        "resources": st.fixed_dictionaries({}, optional={
            "limits": st.fixed_dictionaries({}, optional={"cpus": st.sampled_from(["0.5", 1, 2.25]),
                                                          "memory": sizes, "pids": st.integers(1, 500)}),
            "reservations": st.fixed_dictionaries({}, optional={"memory": sizes})}),
        "restart_policy": st.fixed_dictionaries({}, optional={
            "condition": st.sampled_from(["none", "on-failure", "any"]), "delay": durations}),
        "update_config": st.fixed_dictionaries({}, optional={
            "parallelism": st.integers(0, 5), "order": st.sampled_from(["stop-first", "start-first"])}),
    }),
})
stacks = st.dictionaries(service_names, service, min_size=1, max_size=4).map(lambda s: {"services": s})


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


@settings(max_examples=40, deadline=None)
@given(stacks)
def test_stack_config_round_trips(stack: dict[str, Any]) -> None:
    """Rendering a rendered stack gives the same text, and both load to the
    same service specs; the output validates against the compose spec."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        original = _write(d, "compose.yml", yaml.safe_dump(stack, sort_keys=False))
        first = render_config([original], {})
        rendered = _write(d, "rendered.yml", first)
        assert render_config([rendered], {}) == first
        assert [s.to_dict() for s in load_stack([rendered], "p", {}).services] == \
            [s.to_dict() for s in load_stack([original], "p", {}).services]
    if SCHEMA.is_file():
        import jsonschema

        jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(
            yaml.safe_load(first.replace("$$", "$")))
