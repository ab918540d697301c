"""``pyswarm stack config``: the merged, interpolated, normalised stack as YAML.

The output is a stack file in its own right: every value is final (variables
substituted, env files folded in, paths absolute, short syntax expanded), and
every ``$`` is written ``$$`` so that loading the output substitutes nothing.
Loading it again and rendering gives the same text, which is what makes it
useful for review and diffing before a deploy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .loader import Stack, load_config
from .units import format_bytes


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Quotes any string that YAML 1.1 *or* 1.2 would read as something else.
    libyaml's emitter when PyYAML has it: the same text, 5x faster (the
    bench's 500-service stack renders in 0.5 s instead of 2.7 s)."""


for _tag, _regexp, _first in [
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?)$",
     list("-+0123456789.")),
]:
    _Dumper.add_implicit_resolver(_tag, re.compile(_regexp), _first)


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    return value


def _for_schema(config: dict[str, Any]) -> dict[str, Any]:
    """Where the spec wants a string (``deploy.resources.*.memory``), write one."""
    out = copy.deepcopy(config)
    for svc in out.get("services", {}).values():
        for part in svc.get("deploy", {}).get("resources", {}).values():
            if isinstance(part.get("memory"), int):
                part["memory"] = format_bytes(part["memory"])
    return out


def render_config(
    source: Stack | Sequence[str | Path],
    environ: Mapping[str, str] | None = None,
    *,
    env_files: Sequence[str | Path] = (),
    strict: bool = False,
) -> str:
    """The normalised stack as YAML, from a loaded :class:`Stack` or from files."""
    stack = source if isinstance(source, Stack) else load_config(source, environ, env_files=env_files,
                                                                          strict=strict)
    return yaml.dump(_escape(_for_schema(stack.config)), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=1000)
