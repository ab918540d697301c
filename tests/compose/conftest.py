"""Factories for stack-file tests: write YAML to tmp_path, load it, or expect an error."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from pyswarm.compose import ComposeError, Stack, load_stack

Write = Callable[..., Path]
Load = Callable[..., Stack]
Fail = Callable[..., ComposeError]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """``write(yaml_text, name="compose.yml")`` -> path of the (dedented) file."""

    def _write(text: str, name: str = "compose.yml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def load(write: Write, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Load:
    """``load(yaml_text, stack="demo", environ={}, **kw)`` -> Stack (cwd is tmp_path)."""
    monkeypatch.chdir(tmp_path)

    def _load(text: str, stack: str = "demo", environ: Mapping[str, str] | None = None,
              **kw: object) -> Stack:
        path = write(text)
        return load_stack([path.name], stack, {} if environ is None else environ, **kw)

    return _load


@pytest.fixture
def fail(load: Load) -> Fail:
    """``fail(yaml_text, ...)`` -> the ComposeError that loading raises."""

    def _fail(text: str, stack: str = "demo", environ: Mapping[str, str] | None = None,
              **kw: object) -> ComposeError:
        with pytest.raises(ComposeError) as info:
            load(text, stack, environ, **kw)
        return info.value

    return _fail
