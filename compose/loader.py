"""From stack file(s) on disk to the typed service specs the cluster stores.

The stages, each reporting every problem it finds before the next runs:
read and parse each file (:mod:`.source`), check the top level and every
service (:mod:`.service`), then build :class:`~pyswarm.models.ServiceSpec`
objects. The loader is pure: it reads files and nothing else (no network,
no runtime), so it runs the same on a laptop and on a manager.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyswarm.models import ContainerSpec, Resources, ServiceSpec

from . import build as _build  # noqa: F401  (registers the `build` handler)
from . import container as _container  # noqa: F401  (registers its key handlers)
from .build import BuildSpec
from .checker import _Invalid, suggest
from .deployspec import deploy_consistency
from .errors import (
    InterpolationError,
    Mark,
    Problem,
    StackFileError,
    StackNameError,
    ValidationError,
    raise_if,
)
from .interpolate import build_environment, interpolate
from .keys import SERVICE_KEYS
from .merge import merge_documents
from .objects import StackObject, read_objects, resolve_references
from .service import MAX_NAME, ServiceChecker, check_service
from .source import Document, read_file
from .toplevel import check_top_level

STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
"""Docker's rule for stack (project) names."""

MAX_SERVICES = 10_000
"""Services in one stack: what the manager accepts in one ``stack.deploy``
(manager/api/services.py, ``StackDeploy.services``)."""

TOP_LEVEL_KEYS = ("version", "name", "services", "networks", "volumes", "secrets", "configs")


@dataclass
class Stack:
    """A loaded stack: its services in deploy order, and what was ignored."""

    name: str
    services: list[ServiceSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    """The normalised stack file (what ``stack config`` prints)."""
    secrets: list[StackObject] = field(default_factory=list)
    """Top-level ``secrets`` with their data (never printed), for deploy."""
    configs: list[StackObject] = field(default_factory=list)
    builds: dict[str, BuildSpec] = field(default_factory=dict)
    """Services (full name) whose image is built from ``build:`` before deploy
    (pyswarm/build.py); their spec's image is ``STACK_SERVICE`` until then,
    or the ``image:`` the file gives."""


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
    env_files: Sequence[str | Path] = (),
    strict: bool = False,
) -> Stack:
    """Load, check and convert stack files into a :class:`Stack`.

    ``environ`` (default: the process environment) wins over the ``.env``
    beside the first file and over ``env_files``; together they feed
    ``${VAR}`` substitution and bare ``KEY`` environment entries. Later files
    merge over earlier ones. With ``strict``, every warning (unknown keys,
    keys Swarm ignores, unset variables...) is an error. The data of the
    stack's secrets and configs is read (``file:`` too): this is the deploy
    path; ``render_config`` (``stack config``) does not read them. Raises
    :class:`~pyswarm.compose.ComposeError` (a ``UsageError``) naming file,
    line, column and key path of every problem.
    """
    check_stack_name(stack)
    return _load(files, stack, environ, env_files, strict, read_data=True)


def load_config(
    files: Sequence[str | Path],
    environ: Mapping[str, str] | None = None,
    *,
    env_files: Sequence[str | Path] = (),
    strict: bool = False,
) -> Stack:
    """What ``stack config`` shows: :func:`load_stack` without a stack name
    and without reading the secrets' and configs' data (``Stack.config`` and
    ``Stack.warnings``; render it with ``render_config``)."""
    return _load(files, "", environ, env_files, strict, read_data=False)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a stack is built: the loader
    allocates tens of thousands of small containers and no cycles, and the
    collector's passes over them were 40 % of the time of a 500-service file
    (bench/compose_load.py). The node count is bounded (``MAX_NODES``)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load(
    files: Sequence[str | Path],
    stack: str,
    environ: Mapping[str, str] | None,
    env_files: Sequence[str | Path],
    strict: bool,
    read_data: bool,
) -> Stack:
    if not files:
        raise ValidationError(Problem(None, "", "no stack file given"))
    with _no_gc():
        return _load_files(files, stack, environ, env_files, strict, read_data)


def _load_files(
    files: Sequence[str | Path],
    stack: str,
    environ: Mapping[str, str] | None,
    env_files: Sequence[str | Path],
    strict: bool,
    read_data: bool,
) -> Stack:
    env = build_environment(files[0], env_files, dict(os.environ if environ is None else environ))
    docs: list[Document] = []
    problems: list[Problem] = []
    for f in files:
        try:
            docs.append(read_file(f))
        except StackFileError as exc:
            problems.extend(exc.problems)
    raise_if(problems, StackFileError)
    warnings: list[Problem] = []
    for doc in docs:
        found, warned = interpolate(doc, env)
        problems.extend(found)
        warnings.extend(warned)
    raise_if(problems, InterpolationError)
    doc = merge_documents(docs) if len(docs) > 1 else docs[0]
    checker = ServiceChecker(doc, env, project_dir=Path(files[0]).resolve().parent)
    checker.warnings.extend(warnings)
    config = check_document(checker, doc)
    _raise_problems(checker, strict)
    services = [_to_spec(stack, name, svc) for name, svc in config["services"].items()]
    for spec in services:
        if stack and len(spec.name) > MAX_NAME:
            checker.error(("services", spec.name[len(stack) + 1:]),
                          f"{spec.name!r} is longer than {MAX_NAME} characters", key=True)
    _raise_problems(checker, strict)
    resolve_references(stack, services, config)
    result = Stack(stack, services, [str(w) for w in checker.warnings], config)
    result.builds = {f"{stack}_{name}": BuildSpec.from_config(svc["build"], checker.project_dir)
                     for name, svc in config["services"].items() if "build" in svc}
    if read_data:
        result.secrets = read_objects(stack, config, env, "secrets", doc.mark)
        result.configs = read_objects(stack, config, env, "configs", doc.mark)
    return result


def _raise_problems(c: ServiceChecker, strict: bool) -> None:
    """Raise the problems found; with ``strict`` every warning is one too,
    all listed together under a line saying why warnings failed."""
    problems = list(c.problems)
    if strict and c.warnings:
        count = len(c.warnings)
        problems += [Problem(None, "", f"--strict: {count} warning{'s' * (count > 1)}, "
                             "each an error here:"), *c.warnings]
    raise_if(problems, ValidationError)


def check_document(c: ServiceChecker, doc: Document) -> dict[str, Any]:
    """Check the top level and every service; return the normalised stack."""
    data = doc.data
    if data is None:
        c.error((), "the file is empty: it needs a `services` mapping")
        return {"services": {}}
    if not isinstance(data, dict):
        c.error((), "expected a mapping with `services` at the top level")
        return {"services": {}}
    for key in data:
        if key in TOP_LEVEL_KEYS or key.startswith("x-"):
            continue
        c.warn((key,), f"unknown top-level key, ignored{suggest(key, TOP_LEVEL_KEYS)}")
    out: dict[str, Any] = {"services": {}}
    for kind in TOP_LEVEL_KEYS[3:]:
        if kind in data:
            section = check_top_level(c, kind, data[kind])
            if section:
                out[kind] = section
    services = data.get("services")
    if not services:
        what = "is empty" if "services" in data else "is missing"
        c.error(("services",), f"`services` {what}: a stack needs at least one service",
                key="services" in data)
        return out
    if not isinstance(services, dict):
        c.error(("services",), "expected a mapping of service names to services")
        return out
    if len(services) > MAX_SERVICES:  # refused before checking each (95,000 took 10 s)
        c.error(("services",), f"{len(services)} services: a stack has at most {MAX_SERVICES} "
                "(the manager's limit for one deploy)")
        return out
    checked: dict[str, Any] = {}
    for name, value in services.items():
        result = check_service(c, name, value)
        if not isinstance(result, _Invalid):
            checked[name] = _ordered(result)
            if "deploy" in result:
                deploy_consistency(c, ("services", name, "deploy"), result["deploy"])
    out["services"] = {name: checked[name] for name in _deploy_order(c, checked, services)}
    return out


def _ordered(svc: dict[str, Any]) -> dict[str, Any]:
    """Keys in the canonical order (the order ``stack config`` prints)."""
    rank = {k: i for i, k in enumerate(SERVICE_KEYS)}
    return {k: svc[k] for k in sorted(svc, key=lambda k: rank.get(k, len(rank)))}


def _deploy_order(c: ServiceChecker, checked: dict[str, Any], written: dict[str, Any]) -> list[str]:
    """Services after what they depend on (file order otherwise); cycles are errors."""
    for name, svc in checked.items():
        for dep, opts in list(svc.get("depends_on", {}).items()):
            if dep in written:
                continue
            path = ("services", name, "depends_on", dep)
            if opts.get("required", True):
                c.error(path, f"depends on undefined service {dep!r}{suggest(dep, written)}")
            else:
                c.warn(path, f"optional dependency {dep!r} is not in the stack; ignored")
                del svc["depends_on"][dep]
    order: list[str] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2 or name not in checked:
            return
        if state.get(name) == 1:
            cycle = " -> ".join(trail[trail.index(name):] + [name])
            c.error(("services", name, "depends_on"), f"dependency cycle: {cycle}")
            return
        state[name] = 1
        for dep in checked[name].get("depends_on", {}):
            visit(dep, trail + [name])
        state[name] = 2
        order.append(name)

    for name in checked:
        visit(name, [])
    return order


_CONTAINER_TYPED = ("build", "image", "command", "entrypoint", "environment", "labels", "deploy", "depends_on")


def _to_spec(stack: str, name: str, svc: dict[str, Any]) -> ServiceSpec:
    deploy: dict[str, Any] = svc.get("deploy", {})
    container = ContainerSpec(
        image=svc.get("image") or f"{stack}_{name}",
        command=svc.get("command"),
        entrypoint=svc.get("entrypoint"),
        env=dict(svc.get("environment", {})),
        labels=dict(svc.get("labels", {})),
        options={k: v for k, v in svc.items() if k not in _CONTAINER_TYPED},
        resources=dict(deploy.get("resources", {})),
    )
    placement = deploy.get("placement", {})
    reserve = deploy.get("resources", {}).get("reservations", {})
    mode = deploy.get("mode", "replicated")
    return ServiceSpec(
        name=f"{stack}_{name}",
        container=container,
        stack=stack,
        mode=mode,
        replicas=deploy.get("replicas", 1),
        labels=dict(deploy.get("labels", {})),
        restart_condition=deploy.get("restart_policy", {}).get("condition", "any"),
        constraints=list(placement.get("constraints", [])),
        max_replicas_per_node=placement.get("max_replicas_per_node", 0),
        reservations=Resources(nano_cpus=int(round(reserve.get("cpus", 0) * 1e9)),
                               memory_bytes=reserve.get("memory", 0)),
        deploy=deploy,
        depends_on=dict(svc.get("depends_on", {})),
    )


__all__ = ["Stack", "load_config", "load_stack", "check_stack_name", "Mark"]
