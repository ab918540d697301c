"""``deploy:`` (how Swarm runs the service), ``depends_on`` and ``env_file``.

``deploy`` is what makes a stack file a *stack* file: mode, replicas,
placement, resources, restart and update policies. ``depends_on`` is
honoured (Swarm ignores it, moby/moby#31333): the loader orders services so
that a service comes after what it depends on. ``env_file`` is read here and
folded into ``environment`` (environment wins), so the normalised service
carries its whole environment and ``stack config`` output stands alone.
Importing this module registers the handlers with :mod:`.service`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyswarm.constraints import ConstraintError, check_spread_key, parse_constraint

from .checker import INT64_MAX, _Invalid
from .container import byte_size, duration
from .errors import ComposeError, KeyPath, StackFileError
from .interpolate import parse_env_file
from .service import DEPLOY_HANDLERS, HANDLERS, ServiceChecker, register



@register(DEPLOY_HANDLERS, "mode")
def mode(c: ServiceChecker, path: KeyPath, value: Any) -> str | _Invalid:
    if value in ("replicated-job", "global-job"):
        # refused, not ignored: a job loaded as a service would restart forever
        return c.error(path, f"mode {value} (a Swarm job: tasks that run once to completion) is not "
                             "supported by pyswarm yet; use replicated or global")
    return c.choice(path, value, ("replicated", "global"))


@register(DEPLOY_HANDLERS, "labels")
def labels(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, str] | _Invalid:
    return c.string_map(path, value)


@register(DEPLOY_HANDLERS, "endpoint_mode")
def endpoint_mode(c: ServiceChecker, path: KeyPath, value: Any) -> str | _Invalid:
    return c.choice(path, value, ("vip", "dnsrr"))


@register(DEPLOY_HANDLERS, "placement")
def placement(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    c.known_keys(path, m, ("constraints", "preferences", "max_replicas_per_node"))
    out: dict[str, Any] = {}
    if "constraints" in m:
        items = c.string_list(path + ("constraints",), m["constraints"])
        if isinstance(items, list):
            # Swarm's grammar, the one the scheduler evaluates (pyswarm/constraints.py)
            out["constraints"] = []
            for i, text in enumerate(items):
                try:
                    parsed = parse_constraint(text)
                except ConstraintError as exc:
                    c.error(path + ("constraints", i), str(exc))
                else:
                    out["constraints"].append(f"{parsed.key} {parsed.operator} {parsed.value}")
    if "preferences" in m:
        prefs = c.sequence(path + ("preferences",), m["preferences"])
        if isinstance(prefs, list):
            out["preferences"] = []
            for i, pref in enumerate(prefs):
                p = c.mapping(path + ("preferences", i), pref)
                if isinstance(p, dict):
                    c.known_keys(path + ("preferences", i), p, ("spread",))
                    spread = c.string(path + ("preferences", i, "spread"), p.get("spread"))
                    if isinstance(spread, str):
                        try:
                            out["preferences"].append({"spread": check_spread_key(spread.strip())})
                        except ConstraintError as exc:
                            c.error(path + ("preferences", i, "spread"), str(exc))
    if "max_replicas_per_node" in m:
        out["max_replicas_per_node"] = c.integer(path + ("max_replicas_per_node",),
                                                 m["max_replicas_per_node"], 0)
    return out


def _resource_set(c: ServiceChecker, path: KeyPath, value: Any, reservations: bool) -> dict[str, Any] | _Invalid:
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    keys = ("cpus", "memory", "pids") + (("generic_resources", "devices") if reservations else ())
    c.known_keys(path, m, keys)
    out: dict[str, Any] = {}
    if "cpus" in m:
        # Docker holds CPUs as int64 nano-CPUs
        cpus = c.number(path + ("cpus",), m["cpus"], minimum=0, maximum=INT64_MAX // 10**9)
        if isinstance(cpus, float):
            out["cpus"] = cpus
    if "memory" in m:
        out["memory"] = byte_size(c, path + ("memory",), m["memory"])
    if "pids" in m:
        out["pids"] = c.integer(path + ("pids",), m["pids"], 0)
    for key in ("generic_resources", "devices"):
        if key in m:
            seq = c.sequence(path + (key,), m[key])
            if isinstance(seq, list):
                out[key] = seq
    return out


@register(DEPLOY_HANDLERS, "resources")
def resources(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    c.known_keys(path, m, ("limits", "reservations"))
    out: dict[str, Any] = {}
    for key in ("limits", "reservations"):
        if m.get(key) is not None:
            out[key] = _resource_set(c, path + (key,), m[key], key == "reservations")
    return out


@register(DEPLOY_HANDLERS, "restart_policy")
def restart_policy(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    c.known_keys(path, m, ("condition", "delay", "max_attempts", "window"))
    out: dict[str, Any] = {}
    if "condition" in m:
        out["condition"] = c.choice(path + ("condition",), m["condition"], ("none", "on-failure", "any"))
    for key in ("delay", "window"):
        if key in m:
            out[key] = duration(c, path + (key,), m[key])
    if "max_attempts" in m:
        out["max_attempts"] = c.integer(path + ("max_attempts",), m["max_attempts"], 0)
    return out


def _update(c: ServiceChecker, path: KeyPath, value: Any, actions: tuple[str, ...]) -> dict[str, Any] | _Invalid:
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    c.known_keys(path, m, ("parallelism", "delay", "failure_action", "monitor",
                           "max_failure_ratio", "order"))
    out: dict[str, Any] = {}
    if "parallelism" in m:
        out["parallelism"] = c.integer(path + ("parallelism",), m["parallelism"], 0)
    for key in ("delay", "monitor"):
        if key in m:
            out[key] = duration(c, path + (key,), m[key])
    if "failure_action" in m:
        out["failure_action"] = c.choice(path + ("failure_action",), m["failure_action"], actions)
    if "max_failure_ratio" in m:
        ratio = c.number(path + ("max_failure_ratio",), m["max_failure_ratio"], minimum=0)
        if isinstance(ratio, float) and ratio > 1:
            c.error(path + ("max_failure_ratio",), f"must be between 0 and 1, got {ratio:g}")
        out["max_failure_ratio"] = ratio
    if "order" in m:
        out["order"] = c.choice(path + ("order",), m["order"], ("stop-first", "start-first"))
    return out


@register(DEPLOY_HANDLERS, "update_config")
def update_config(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    return _update(c, path, value, ("continue", "rollback", "pause"))


@register(DEPLOY_HANDLERS, "rollback_config")
def rollback_config(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    return _update(c, path, value, ("continue", "pause"))


CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")


@register(HANDLERS, "depends_on")
def depends_on(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    """Long form always: ``{name: {condition, required}}``; names checked later."""
    if isinstance(value, list):
        names = c.string_list(path, value, single=False)
        if isinstance(names, _Invalid):
            return names
        return {n: {"condition": "service_started", "required": True} for n in names}
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    out: dict[str, Any] = {}
    for name, opts in m.items():
        o = c.mapping(path + (name,), {} if opts is None else opts)
        if isinstance(o, _Invalid):
            continue
        c.known_keys(path + (name,), o, ("condition", "required", "restart"))
        cond = c.choice(path + (name, "condition"), o.get("condition", "service_started"), CONDITIONS)
        required = c.boolean(path + (name, "required"), o.get("required", True))
        if not isinstance(cond, _Invalid) and not isinstance(required, _Invalid):
            out[name] = {"condition": cond, "required": required}
    return out


@register(HANDLERS, "env_file")
def env_file(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, str] | _Invalid:
    """Read the files now; check_service folds the result under ``environment``."""
    items = value if isinstance(value, list) else [value]
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        ipath = path + (i,) if isinstance(value, list) else path
        required = True
        if isinstance(item, dict):
            c.known_keys(ipath, item, ("path", "required", "format"))
            req = c.boolean(ipath + ("required",), item.get("required", True))
            required = req is not False
            item = item.get("path")
        name = c.string(ipath, item)
        if isinstance(name, _Invalid):
            continue
        file = Path(name) if Path(name).is_absolute() else c.project_dir / name
        if not file.exists():
            if required:
                c.error(ipath, f"env file {str(file)!r} not found")
            continue
        try:
            out.update(parse_env_file(file, c.environ))
        except StackFileError as exc:  # unreadable (a FIFO, too large): said where it is named
            c.error(ipath, f"env file {str(file)!r}: {exc.problems[0].message}")
        except ComposeError as exc:  # its lines: marks in the env file
            c.problems.extend(exc.problems)
    return out


def deploy_consistency(c: ServiceChecker, path: KeyPath, deploy: dict[str, Any]) -> None:
    """Cross-key rules inside ``deploy``."""
    if deploy.get("mode", "replicated").startswith("global") and "replicas" in deploy:
        c.error(path + ("replicas",), "`replicas` cannot be used with mode global")
