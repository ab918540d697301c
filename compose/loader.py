"""From stack file(s) on disk to the typed service specs the cluster stores.

The stages, each reporting every problem it finds before the next runs:
read and parse each file (:mod:`.source`), check the top level and every
service (:mod:`.service`), then build :class:`~pyswarm.models.ServiceSpec`
objects. The loader is pure: it reads files and nothing else (no network,
no runtime), so it runs the same on a laptop and on a manager.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyswarm.models import ContainerSpec, ServiceSpec

from .checker import _Invalid, suggest
from .errors import Mark, Problem, StackNameError, ValidationError, raise_if
from .service import MAX_NAME, ServiceChecker, check_service
from .source import Document, read_file

STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
"""Docker's rule for stack (project) names."""

TOP_LEVEL_KEYS = ("version", "name", "services", "networks", "volumes", "secrets", "configs")


@dataclass
class Stack:
    """A loaded stack: its services in deploy order, and what was ignored."""

    name: str
    services: list[ServiceSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    """The normalised stack file (what ``stack config`` prints)."""


def check_stack_name(stack: str) -> None:
    """Refuse names Docker refuses; the name prefixes every service and DNS name."""
    if not STACK_NAME.match(stack):
        raise StackNameError(
            Problem(None, "", f"invalid stack name {stack!r}: use lowercase letters, digits, "
                    "'_' and '-', starting with a letter or digit")
        )
    if len(stack) > MAX_NAME - 2:
        raise StackNameError(Problem(None, "", f"stack name {stack!r} is too long"))


def load_stack(
    files: Sequence[str | Path],
    stack: str,
    environ: Mapping[str, str] | None = None,
    *,
    strict: bool = False,
) -> Stack:
    """Load, check and convert stack files into a :class:`Stack`.

    ``environ`` defaults to the process environment; it supplies bare
    ``KEY`` environment entries. With ``strict``, unknown keys are errors
    rather than warnings. Raises :class:`~pyswarm.compose.ComposeError`
    (a ``UsageError``) naming file, line, column and key path of every problem.
    """
    check_stack_name(stack)
    if not files:
        raise ValidationError(Problem(None, "", "no stack file given"))
    env = dict(os.environ if environ is None else environ)
    docs = [read_file(f) for f in files]
    doc = docs[0] if len(docs) == 1 else _merge_later(docs)
    checker = ServiceChecker(doc, env, strict=strict)
    config = check_document(checker, doc)
    raise_if(checker.problems, ValidationError)
    services = [_to_spec(stack, name, svc) for name, svc in config["services"].items()]
    for spec in services:
        if len(spec.name) > MAX_NAME:
            checker.error(("services", spec.name[len(stack) + 1:]),
                          f"{spec.name!r} is longer than {MAX_NAME} characters", key=True)
    raise_if(checker.problems, ValidationError)
    return Stack(stack, services, [str(w) for w in checker.warnings], config)


def _merge_later(docs: list[Document]) -> Document:  # replaced by merge.py in phase 2
    return docs[0]


def check_document(c: ServiceChecker, doc: Document) -> dict[str, Any]:
    """Check the top level and every service; return the normalised stack."""
    data = doc.data
    if data is None:
        c.error((), "the file is empty: it needs a `services` mapping")
        return {"services": {}}
    if not isinstance(data, dict):
        c.error((), "expected a mapping with `services` at the top level")
        return {"services": {}}
    out: dict[str, Any] = {}
    for key in data:
        if key in ("version", "name") or key.startswith("x-"):
            continue
        if key in TOP_LEVEL_KEYS[3:]:
            c.warn((key,), "not supported by pyswarm yet; ignored")
        elif key != "services":
            c.warn((key,), f"unknown top-level key, ignored{suggest(key, TOP_LEVEL_KEYS)}")
    services = data.get("services")
    if not services:
        what = "is empty" if "services" in data else "is missing"
        c.error(("services",), f"`services` {what}: a stack needs at least one service",
                key="services" in data)
        return {"services": {}}
    if not isinstance(services, dict):
        c.error(("services",), "expected a mapping of service names to services")
        return {"services": {}}
    out["services"] = {}
    for name, value in services.items():
        result = check_service(c, name, value)
        if not isinstance(result, _Invalid):
            out["services"][name] = result
    return out


def _to_spec(stack: str, name: str, svc: dict[str, Any]) -> ServiceSpec:
    deploy = svc.get("deploy", {})
    container = ContainerSpec(
        image=svc["image"],
        command=svc.get("command"),
        entrypoint=svc.get("entrypoint"),
        env=dict(svc.get("environment", {})),
    )
    return ServiceSpec(
        name=f"{stack}_{name}",
        container=container,
        stack=stack,
        replicas=deploy.get("replicas", 1),
    )


__all__ = ["Stack", "load_stack", "check_stack_name", "Mark"]
