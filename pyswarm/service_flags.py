"""Docker's ``service create`` / ``service update`` flags, as pyswarm service specs.

Why through compose/: a flag is another spelling of a stack-file key
(``--publish 8080:80`` is ``ports: ["8080:80"]``, ``--restart-delay 5s`` is
``deploy.restart_policy.delay: 5s``), so each flag's value is turned into
that key's syntax and checked by the compose handler of the key. One value
is then parsed one way wherever it comes from, and a service made with flags
looks exactly like one from a stack file (``ContainerSpec.options`` in
compose long syntax, ``ServiceSpec.deploy`` the normalised ``deploy:``).

``create_spec`` builds a new spec from the flags; ``update_spec`` applies
``service update``'s flags to an existing spec (removals first, then
additions, as Docker does). Both are pure: no manager is asked, so every
flag's parse is unit tested. Networks are cluster names in
``ServiceSpec.networks``; the manager checks that they, and the secrets and
configs named, exist.

Docker flags pyswarm does not implement are registered too, and refused by
name (``pyswarm does not support --isolation``): a flag silently ignored
would make people believe their service has what it does not.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pyswarm.compose import container as cc
from pyswarm.compose import deployspec as dc
from pyswarm.compose.loader import _to_spec
from pyswarm.compose.service import HANDLERS, MAX_NAME, SERVICE_NAME, ServiceChecker, command, environment, image
from pyswarm.compose.source import Document
from pyswarm.constraints import ConstraintError, check_spread_key
from pyswarm.errors import UsageError
from pyswarm.models import ServiceSpec

Handler = Callable[[ServiceChecker, Any, Any], Any]

# -- the flags -------------------------------------------------------------------

REFUSED_CREATE: tuple[tuple[str, bool], ...] = (
    ("--credential-spec", True), ("--generic-resource", True), ("--group", True),
    ("--isolation", True), ("--max-concurrent", True), ("--no-resolve-image", False),
    ("--oom-score-adj", True), ("--with-registry-auth", False),
)
"""Docker's ``service create`` flags pyswarm does not implement (name, takes a value)."""

REFUSED_UPDATE: tuple[tuple[str, bool], ...] = (
    ("--credential-spec", True), ("--generic-resource-add", True), ("--generic-resource-rm", True),
    ("--group-add", True), ("--group-rm", True), ("--isolation", True), ("--max-concurrent", True),
    ("--no-resolve-image", False), ("--oom-score-adj", True), ("--with-registry-auth", False),
)
"""Docker's ``service update`` flags pyswarm does not implement."""


class _Refuse(argparse.Action):
    """A Docker flag pyswarm knows and refuses, naming it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.error(f"pyswarm does not support {option_string}")


def _refuse(p: argparse.ArgumentParser, flags: Iterable[tuple[str, bool]]) -> None:
    for flag, takes_value in flags:
        p.add_argument(flag, action=_Refuse, nargs=1 if takes_value else 0, help=argparse.SUPPRESS)


def _many(p: argparse.ArgumentParser, *names: str, metavar: str, help: str) -> None:
    p.add_argument(*names, action="append", default=None, metavar=metavar, help=help)


def _common(p: argparse.ArgumentParser) -> None:
    """Flags ``service create`` and ``service update`` share (a value that replaces)."""
    p.add_argument("--replicas", type=int, metavar="N", help="number of tasks")
    p.add_argument("--replicas-max-per-node", type=int, metavar="N",
                   help="maximum tasks per node (0: no limit)")
    p.add_argument("--entrypoint", metavar="CMD", help="overwrite the image's ENTRYPOINT")
    p.add_argument("--hostname", metavar="NAME", help="container hostname")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="user the command runs as")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory in the container")
    p.add_argument("--init", action="store_const", const=True, default=None,
                   help="run an init inside the container that forwards signals and reaps processes")
    p.add_argument("--read-only", action="store_const", const=True, default=None,
                   help="mount the container's root filesystem read-only")
    p.add_argument("-t", "--tty", action="store_const", const=True, default=None, help="allocate a TTY")
    p.add_argument("--stop-grace-period", metavar="DURATION", help="time to wait before killing (10s)")
    p.add_argument("--stop-signal", metavar="SIGNAL", help="signal that stops the container")
    p.add_argument("--endpoint-mode", choices=["vip", "dnsrr"], help="recorded as deploy.endpoint_mode")
    p.add_argument("--log-driver", metavar="DRIVER", help="logging driver")
    _many(p, "--log-opt", metavar="KEY=VALUE", help="logging driver option (repeatable)")
    for kind, what in (("limit", "limit"), ("reserve", "reserve")):
        p.add_argument(f"--{kind}-cpu", metavar="CPUS", help=f"{what} CPUs (0.5)")
        p.add_argument(f"--{kind}-memory", metavar="BYTES", help=f"{what} memory (64M)")
    p.add_argument("--limit-pids", type=int, metavar="N", help="limit processes (0: no limit)")
    p.add_argument("--restart-condition", choices=["none", "on-failure", "any"],
                   help="restart when: none, on-failure or any (default any)")
    p.add_argument("--restart-delay", metavar="DURATION", help="delay between restarts")
    p.add_argument("--restart-max-attempts", type=int, metavar="N", help="maximum restarts before giving up")
    p.add_argument("--restart-window", metavar="DURATION", help="window in which restarts are counted")
    for kind in ("update", "rollback"):
        p.add_argument(f"--{kind}-parallelism", type=int, metavar="N",
                       help=f"tasks {kind}d at once (0: all)")
        p.add_argument(f"--{kind}-delay", metavar="DURATION", help=f"delay between {kind}s")
        p.add_argument(f"--{kind}-monitor", metavar="DURATION", help=f"time to watch each task after its {kind}")
        p.add_argument(f"--{kind}-max-failure-ratio", metavar="RATIO", help="failure rate tolerated (0-1)")
        p.add_argument(f"--{kind}-order", choices=["stop-first", "start-first"], help=f"{kind} order")
        actions = ["pause", "continue", "rollback"] if kind == "update" else ["pause", "continue"]
        p.add_argument(f"--{kind}-failure-action", choices=actions, help=f"action on {kind} failure")
    p.add_argument("--health-cmd", metavar="CMD", help="command run to check health (a shell command)")
    for key in ("interval", "timeout", "start-period", "start-interval"):
        p.add_argument(f"--health-{key}", metavar="DURATION", help=f"healthcheck {key.replace('-', ' ')}")
    p.add_argument("--health-retries", type=int, metavar="N", help="failures in a row that make it unhealthy")
    p.add_argument("--no-healthcheck", action="store_true", help="disable any healthcheck, the image's too")
    p.add_argument("-d", "--detach", action="store_true", help="return at once, without watching the tasks")
    p.add_argument("-q", "--quiet", action="store_true", help="print the service only, no progress")


def add_create_flags(p: argparse.ArgumentParser) -> None:
    """Every flag of ``service create``, and IMAGE [COMMAND [ARG...]]."""
    p.add_argument("--name", help="service name (default: one made from the image)")
    p.add_argument("--mode", choices=["replicated", "global"], default="replicated",
                   help="replicated (default) or global (one task a node)")
    _common(p)
    _many(p, "-e", "--env", metavar="KEY[=VALUE]", help="environment variable (repeatable)")
    _many(p, "--env-file", metavar="FILE", help="read environment variables from FILE")
    _many(p, "-l", "--label", metavar="KEY=VALUE", help="service label")
    _many(p, "--container-label", metavar="KEY=VALUE", help="container label")
    _many(p, "-p", "--publish", metavar="PORT", help="publish a port: 8080:80[/udp] or published=8080,target=80")
    _many(p, "--mount", metavar="MOUNT", help="type=bind|volume|tmpfs,source=...,target=...[,readonly]")
    _many(p, "--network", metavar="NETWORK", help="attach to a cluster network (name or name=N,alias=A)")
    _many(p, "--constraint", metavar="EXPR", help="placement constraint (node.labels.zone==eu)")
    _many(p, "--placement-pref", metavar="PREF", help="placement preference (spread=node.labels.zone)")
    _many(p, "--secret", metavar="SECRET", help="give the service a secret (name or source=S,target=T,mode=0400)")
    _many(p, "--config", metavar="CONFIG", help="give the service a config (name or source=C,target=/path)")
    _many(p, "--dns", metavar="IP", help="DNS server after the cluster's")
    _many(p, "--dns-search", metavar="DOMAIN", help="DNS search domain after the cluster's")
    _many(p, "--dns-option", metavar="OPT", help="resolver option")
    _many(p, "--host", metavar="HOST:IP", help="add a line to /etc/hosts")
    _many(p, "--cap-add", metavar="CAP", help="add a Linux capability")
    _many(p, "--cap-drop", metavar="CAP", help="drop a Linux capability")
    _many(p, "--sysctl", metavar="KEY=VALUE", help="kernel parameter")
    _many(p, "--ulimit", metavar="NAME=SOFT[:HARD]", help="ulimit (nofile=1024:2048)")
    _refuse(p, REFUSED_CREATE)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


_ADD_RM = (
    ("env", "KEY=VALUE", "KEY"), ("label", "KEY=VALUE", "KEY"), ("container-label", "KEY=VALUE", "KEY"),
    ("publish", "PORT", "TARGET[/PROTO]"), ("mount", "MOUNT", "TARGET"), ("network", "NETWORK", "NETWORK"),
    ("constraint", "EXPR", "EXPR"), ("placement-pref", "PREF", "PREF"), ("secret", "SECRET", "SECRET"),
    ("config", "CONFIG", "CONFIG"), ("dns", "IP", "IP"), ("dns-search", "DOMAIN", "DOMAIN"),
    ("dns-option", "OPT", "OPT"), ("host", "HOST:IP", "HOST[:IP]"), ("sysctl", "KEY=VALUE", "KEY"),
    ("ulimit", "NAME=SOFT[:HARD]", "NAME"),
)


def add_update_flags(p: argparse.ArgumentParser) -> None:
    """Every flag of ``service update``, and SERVICE."""
    _common(p)
    p.add_argument("--image", help="the new image")
    p.add_argument("--args", metavar="COMMAND", help="the new command (a shell-like string)")
    p.add_argument("--force", action="store_true", help="replace every task even if nothing changed")
    p.add_argument("--rollback", action="store_true", help="go back to the previous spec")
    for name, add_meta, rm_meta in _ADD_RM:
        _many(p, f"--{name}-add", metavar=add_meta, help=f"add or change a {name.replace('-', ' ')}")
        _many(p, f"--{name}-rm", metavar=rm_meta, help=f"remove a {name.replace('-', ' ')}")
    _many(p, "--cap-add", metavar="CAP", help="add a Linux capability")
    _many(p, "--cap-drop", metavar="CAP", help="drop a Linux capability")
    _refuse(p, REFUSED_UPDATE)
    p.add_argument("service", metavar="SERVICE")


# -- checking one flag's value with the compose handler of its key --------------------


def _checked(flag: str, shown: str, handler: Handler, value: Any,
             declare: Mapping[str, Iterable[str]] | None = None) -> Any:
    """``handler``'s normalised ``value``, or UsageError naming the flag and what was given."""
    c = ServiceChecker(Document("command line", None), os.environ)
    for kind, names in (declare or {}).items():
        c.declared[kind].update(names)
    out = handler(c, (), value)
    if c.problems:
        raise UsageError(f"invalid {flag} {shown!r}: {c.problems[0].message}")
    return out


def _fields(flag: str, text: str) -> dict[str, str]:
    """Docker's ``key=value,key=value`` (CSV: a value may be quoted); a bare key is ``"true"``."""
    try:
        items = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        raise UsageError(f"invalid {flag} {text!r}: expected key=value pairs separated by commas") from None
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not key:
            raise UsageError(f"invalid {flag} {text!r}: empty field")
        out[key] = value if eq else "true"
    return out


def _bool_field(flag: str, text: str, key: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise UsageError(f"invalid {flag} {text!r}: {key} must be true or false, got {value!r}")


def _octal(flag: str, text: str, key: str, value: str) -> int:
    try:
        return int(value, 8)
    except ValueError:
        raise UsageError(f"invalid {flag} {text!r}: {key} must be an octal mode like 0444, got {value!r}") from None


def _known(flag: str, text: str, fields: Mapping[str, str], known: Iterable[str]) -> None:
    names = list(known)
    for key in fields:
        if key not in names:
            raise UsageError(f"invalid {flag} {text!r}: unknown field {key!r} (known: {', '.join(names)})")


def parse_publish(text: str, flag: str = "--publish") -> list[dict[str, Any]]:
    """``8080:80``, ``8080:80/udp``, ``80`` or ``published=8080,target=80,protocol=udp,mode=host``."""
    value: Any = text
    if "=" in text:
        fields = _fields(flag, text)
        _known(flag, text, fields, ("published", "target", "protocol", "mode"))
        value = dict(fields)
    return list(_checked(flag, text, cc.ports, [value]))


_MOUNT_FIELDS = ("type", "source", "src", "target", "destination", "dst", "readonly", "ro",
                 "consistency", "bind-propagation", "volume-nocopy", "volume-subpath", "volume-label",
                 "volume-driver", "volume-opt", "tmpfs-size", "tmpfs-mode")


def parse_mount(text: str, flag: str = "--mount") -> dict[str, Any]:
    """Docker's ``--mount`` syntax as a compose long-syntax ``volumes`` entry."""
    items = next(csv.reader([text])) if text else []
    entry: dict[str, Any] = {}
    volume: dict[str, Any] = {}
    labels: dict[str, str] = {}
    driver_opts: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key not in _MOUNT_FIELDS:
            raise UsageError(f"invalid {flag} {text!r}: unknown field {key!r}")
        if key in ("volume-label", "volume-opt"):
            k, _, v = value.partition("=")
            (labels if key == "volume-label" else driver_opts)[k] = v
            continue
        value = value if eq else "true"
        if key == "type":
            entry["type"] = value
        elif key in ("source", "src"):
            entry["source"] = value
        elif key in ("target", "destination", "dst"):
            entry["target"] = value
        elif key in ("readonly", "ro"):
            entry["read_only"] = _bool_field(flag, text, key, value)
        elif key == "consistency":
            entry["consistency"] = value
        elif key == "bind-propagation":
            entry.setdefault("bind", {})["propagation"] = value
        elif key == "volume-nocopy":
            volume["nocopy"] = _bool_field(flag, text, key, value)
        elif key == "volume-subpath":
            volume["subpath"] = value
        elif key == "volume-driver":
            entry["_driver"] = value
        elif key == "tmpfs-size":
            entry.setdefault("tmpfs", {})["size"] = value
        elif key == "tmpfs-mode":
            entry.setdefault("tmpfs", {})["mode"] = _octal(flag, text, key, value)
    entry.setdefault("type", "volume")
    if "target" not in entry:
        raise UsageError(f"invalid {flag} {text!r}: a mount needs a target (target=/path)")
    driver = entry.pop("_driver", None)
    if volume:
        entry["volume"] = volume
    kind = entry["type"]
    if kind != "volume" and (volume or labels or driver_opts or driver):
        raise UsageError(f"invalid {flag} {text!r}: volume-* fields need type=volume")
    if kind != "bind" and "bind" in entry:
        raise UsageError(f"invalid {flag} {text!r}: bind-propagation needs type=bind")
    if kind != "tmpfs" and "tmpfs" in entry:
        raise UsageError(f"invalid {flag} {text!r}: tmpfs-* fields need type=tmpfs")
    if kind == "tmpfs" and entry.get("source"):
        raise UsageError(f"invalid {flag} {text!r}: a tmpfs mount has no source")
    declared = {"volumes": [str(entry["source"])]} if entry.get("source") else None
    out = _checked(flag, text, cc.volumes, [entry], declared)[0]
    if labels or driver or driver_opts:
        vol = out.setdefault("volume", {})
        if labels:
            vol["labels"] = labels
        if driver:
            vol["driver"] = driver
        if driver_opts:
            vol["driver_opts"] = driver_opts
    return dict(out)


def parse_file_ref(text: str, kind: str, flag: str) -> dict[str, Any]:
    """``--secret NAME`` or ``source=NAME,target=T,uid=0,gid=0,mode=0400``
    (same for ``--config``) as a compose ``secrets``/``configs`` entry whose
    ``name`` is the cluster object's name."""
    if "=" not in text:
        ref: dict[str, Any] = {"source": text}
    else:
        fields = _fields(flag, text)
        _known(flag, text, fields, ("source", "src", "target", "uid", "gid", "mode"))
        ref = {k: v for k, v in fields.items() if k in ("target", "uid", "gid")}
        source = fields.get("source") or fields.get("src")
        if not source:
            raise UsageError(f"invalid {flag} {text!r}: source is required")
        ref["source"] = source
        if "mode" in fields:
            ref["mode"] = _octal(flag, text, "mode", fields["mode"])
    out = _checked(flag, text, cc.secrets if kind == "secrets" else cc.configs, [ref],
                   {kind: [ref["source"]]})[0]
    out["name"] = out["source"]
    return dict(out)


def parse_network(text: str, flag: str = "--network") -> dict[str, Any]:
    """``NAME`` or ``name=NAME,alias=A,alias=B``, as a ``ServiceSpec.networks`` entry."""
    aliases: list[str] = []
    if "=" not in text:
        name = text
    else:
        try:
            items = next(csv.reader([text]))
        except (csv.Error, StopIteration):
            raise UsageError(f"invalid {flag} {text!r}") from None
        name = ""
        for item in items:
            key, _, value = item.partition("=")
            if key in ("name", "target"):
                name = value
            elif key == "alias":
                aliases.append(value)
            else:
                raise UsageError(f"invalid {flag} {text!r}: unknown field {key!r} (known: name, alias)")
    if not name:
        raise UsageError(f"invalid {flag} {text!r}: no network name")
    return {"target": name, "aliases": aliases}


def parse_constraint(text: str, flag: str = "--constraint") -> str:
    out = _checked(flag, text, dc.placement, {"constraints": [text]})
    return str(out["constraints"][0])


def parse_placement_pref(text: str, flag: str = "--placement-pref") -> dict[str, str]:
    kind, eq, key = text.partition("=")
    if kind != "spread" or not eq or not key:
        raise UsageError(f"invalid {flag} {text!r}: expected spread=KEY (spread=node.labels.zone)")
    try:
        check_spread_key(key)
    except ConstraintError as exc:
        raise UsageError(f"invalid {flag} {text!r}: {exc}") from None
    return {"spread": key}


def parse_ulimit(text: str, flag: str = "--ulimit") -> dict[str, Any]:
    name, eq, limits = text.partition("=")
    soft, colon, hard = limits.partition(":")
    if not name or not eq or not soft:
        raise UsageError(f"invalid {flag} {text!r}: expected NAME=SOFT[:HARD] (nofile=1024:2048)")
    value: dict[str, Any] = {name: {"soft": soft, "hard": hard if colon else soft}}
    return dict(_checked(flag, text, cc.ulimits, value))


def parse_host(text: str, flag: str = "--host") -> dict[str, str]:
    return dict(_checked(flag, text, cc.extra_hosts, [text]))


def parse_key_value(text: str, flag: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not key or not eq:
        raise UsageError(f"invalid {flag} {text!r}: expected KEY=VALUE")
    return key, value


def parse_duration(text: str, flag: str) -> str:
    return str(_checked(flag, text, cc.duration, text))


def parse_bytes(text: str, flag: str) -> int:
    return int(_checked(flag, text, cc.byte_size, text))


def parse_cpus(text: str, flag: str) -> float:
    try:
        cpus = float(text)
    except ValueError:
        cpus = -1.0
    if not cpus >= 0:
        raise UsageError(f"invalid {flag} {text!r}: expected a number of CPUs like 0.5")
    return cpus


def parse_ratio(text: str, flag: str) -> float:
    try:
        ratio = float(text)
    except ValueError:
        ratio = -1.0
    if not 0 <= ratio <= 1:
        raise UsageError(f"invalid {flag} {text!r}: expected a ratio between 0 and 1")
    return ratio


def _caps(values: Sequence[str], flag: str) -> list[str]:
    out = _checked(flag, ",".join(values), HANDLERS["cap_add"], list(values))
    return list(dict.fromkeys(out))


# -- from flags to a spec ---------------------------------------------------------------


def _set_common(svc: dict[str, Any], args: argparse.Namespace) -> None:
    """The flags shared by create and update, onto a compose service mapping
    (a value replaces; an empty or zero value removes, as in Docker)."""
    deploy: dict[str, Any] = svc.setdefault("deploy", {})
    if args.entrypoint is not None:
        _put(svc, "entrypoint", _checked("--entrypoint", args.entrypoint, command, args.entrypoint)
             if args.entrypoint else None)
    for flag, key in (("hostname", "hostname"), ("user", "user"), ("workdir", "working_dir")):
        value = getattr(args, flag)
        if value is not None:
            _put(svc, key, value or None)
    for flag in ("init", "read_only", "tty"):
        if getattr(args, flag):
            svc[flag] = True
    if args.stop_grace_period is not None:
        svc["stop_grace_period"] = parse_duration(args.stop_grace_period, "--stop-grace-period")
    if args.stop_signal is not None:
        svc["stop_signal"] = _checked("--stop-signal", args.stop_signal, cc.stop_signal, args.stop_signal)
    if args.endpoint_mode is not None:
        deploy["endpoint_mode"] = args.endpoint_mode
    if args.log_driver is not None or args.log_opt:
        logging = svc.setdefault("logging", {})
        if args.log_driver is not None:
            logging["driver"] = args.log_driver
        if args.log_opt:
            opts = logging.setdefault("options", {})
            opts.update(parse_key_value(o, "--log-opt") for o in args.log_opt)
    _set_resources(deploy, args)
    restart = _section(deploy, "restart_policy")
    if args.restart_condition is not None:
        restart["condition"] = args.restart_condition
    for flag, key in (("restart_delay", "delay"), ("restart_window", "window")):
        if getattr(args, flag) is not None:
            restart[key] = parse_duration(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.restart_max_attempts is not None:
        _nonneg(args.restart_max_attempts, "--restart-max-attempts")
        restart["max_attempts"] = args.restart_max_attempts
    for kind in ("update", "rollback"):
        section = _section(deploy, f"{kind}_config")
        if getattr(args, f"{kind}_parallelism") is not None:
            section["parallelism"] = _nonneg(getattr(args, f"{kind}_parallelism"), f"--{kind}-parallelism")
        for key in ("delay", "monitor"):
            if getattr(args, f"{kind}_{key}") is not None:
                section[key] = parse_duration(getattr(args, f"{kind}_{key}"), f"--{kind}-{key}")
        if getattr(args, f"{kind}_max_failure_ratio") is not None:
            section["max_failure_ratio"] = parse_ratio(getattr(args, f"{kind}_max_failure_ratio"),
                                                       f"--{kind}-max-failure-ratio")
        for key in ("order", "failure_action"):
            if getattr(args, f"{kind}_{key}") is not None:
                section[key] = getattr(args, f"{kind}_{key}")
    _set_health(svc, args)
    if args.replicas_max_per_node is not None:
        placement = _section(deploy, "placement")
        placement["max_replicas_per_node"] = _nonneg(args.replicas_max_per_node, "--replicas-max-per-node")
    _prune(deploy)


def _set_resources(deploy: dict[str, Any], args: argparse.Namespace) -> None:
    resources = _section(deploy, "resources")
    for kind, section in (("limit", "limits"), ("reserve", "reservations")):
        part = _section(resources, section)
        cpu, memory = getattr(args, f"{kind}_cpu"), getattr(args, f"{kind}_memory")
        if cpu is not None:
            _put(part, "cpus", parse_cpus(cpu, f"--{kind}-cpu") or None)
        if memory is not None:
            _put(part, "memory", parse_bytes(memory, f"--{kind}-memory") or None)
    if args.limit_pids is not None:
        _put(_section(resources, "limits"), "pids", _nonneg(args.limit_pids, "--limit-pids") or None)


def _set_health(svc: dict[str, Any], args: argparse.Namespace) -> None:
    given = {key: getattr(args, f"health_{key}") for key in
             ("cmd", "interval", "timeout", "start_period", "start_interval", "retries")}
    given = {k: v for k, v in given.items() if v is not None}
    if args.no_healthcheck:
        if given:
            raise UsageError("--no-healthcheck conflicts with --health-* options")
        svc["healthcheck"] = {"test": ["NONE"]}
        return
    if not given:
        return
    raw: dict[str, Any] = {k: v for k, v in (svc.get("healthcheck") or {}).items()
                           if not (k == "test" and v == ["NONE"])}
    if "cmd" in given:
        raw["test"] = given.pop("cmd")
    for key, value in given.items():
        raw[key] = value
        flag = "--health-" + key.replace("_", "-")
        if key == "retries":
            _nonneg(value, flag)
        else:
            raw[key] = parse_duration(value, flag)
    svc["healthcheck"] = _checked("--health-cmd", str(raw.get("test", "")), cc.healthcheck, raw)


def _section(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        value = parent[key] = {}
    return value


def _prune(deploy: dict[str, Any]) -> None:
    """Drop the sections left empty (so an unset flag leaves no trace in the spec)."""
    resources = deploy.get("resources")
    if isinstance(resources, dict):
        for key in ("limits", "reservations"):
            if resources.get(key) == {}:
                del resources[key]
    for key in ("resources", "restart_policy", "update_config", "rollback_config", "placement"):
        if deploy.get(key) == {}:
            del deploy[key]


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value


def _nonneg(value: int, flag: str) -> int:
    if value < 0:
        raise UsageError(f"invalid {flag} {value}: must be 0 or more")
    return value


def default_name(image_ref: str) -> str:
    """A name for a service created without ``--name``: the image's, and a
    random suffix (Docker makes up two words)."""
    base = image_ref.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    base = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base).strip("-_.") or "service"
    suffix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(5))
    return f"{base[:MAX_NAME - 6]}_{suffix}"


def create_spec(args: argparse.Namespace) -> ServiceSpec:
    """The service ``service create``'s flags describe (no stack)."""
    name = args.name or default_name(args.image)
    if not SERVICE_NAME.match(name) or len(name) > MAX_NAME:
        raise UsageError(f"invalid --name {name!r}: use letters, digits, and '-', '_' or '.' between "
                         f"them, at most {MAX_NAME} characters")
    svc: dict[str, Any] = {"image": _checked("IMAGE", args.image, image, args.image)}
    if args.command:
        svc["command"] = list(args.command)
    env: dict[str, str] = {}
    for path in args.env_file or []:
        env.update(_checked("--env-file", path, dc.env_file, [path]))
    if args.env:
        env.update(_checked("--env", ",".join(args.env), environment, list(args.env)))
    svc["environment"] = env
    svc["labels"] = dict(parse_key_value(x, "--container-label") for x in args.container_label or [])
    deploy: dict[str, Any] = {"mode": args.mode}
    if args.replicas is not None:
        if args.mode == "global":
            raise UsageError("--replicas can only be used with replicated mode")
        deploy["replicas"] = _nonneg(args.replicas, "--replicas")
    if args.label:
        deploy["labels"] = dict(parse_key_value(x, "--label") for x in args.label)
    svc["deploy"] = deploy
    placement: dict[str, Any] = {}
    if args.constraint:
        placement["constraints"] = [parse_constraint(x) for x in args.constraint]
    if args.placement_pref:
        placement["preferences"] = [parse_placement_pref(x) for x in args.placement_pref]
    if placement:
        deploy["placement"] = placement
    _set_common(svc, args)
    ports = [p for x in args.publish or [] for p in parse_publish(x)]
    if ports:
        svc["ports"] = ports
    if args.mount:
        svc["volumes"] = [parse_mount(x) for x in args.mount]
    for kind in ("secret", "config"):
        refs = [parse_file_ref(x, kind + "s", f"--{kind}") for x in getattr(args, kind) or []]
        if refs:
            svc[kind + "s"] = refs
    for flag, key in (("dns", "dns"), ("dns_search", "dns_search"), ("dns_option", "dns_opt")):
        if getattr(args, flag):
            svc[key] = list(getattr(args, flag))
    if args.host:
        svc["extra_hosts"] = {k: v for x in args.host for k, v in parse_host(x).items()}
    for flag in ("cap_add", "cap_drop"):
        if getattr(args, flag):
            svc[flag] = _caps(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.sysctl:
        svc["sysctls"] = dict(parse_key_value(x, "--sysctl") for x in args.sysctl)
    if args.ulimit:
        svc["ulimits"] = {k: v for x in args.ulimit for k, v in parse_ulimit(x).items()}
    networks = [parse_network(x) for x in args.network or []]
    return _spec(name, "", svc, networks, deploy.get("replicas", 1))


def _spec(name: str, stack: str, svc: dict[str, Any], networks: list[dict[str, Any]],
          replicas: int) -> ServiceSpec:
    """The compose service mapping as a ServiceSpec, by compose's own converter."""
    short = name[len(stack) + 1:] if stack and name.startswith(stack + "_") else name
    spec = _to_spec(stack, short, svc)
    spec.name = name
    spec.networks = networks
    spec.replicas = replicas
    return spec


def service_mapping(spec: ServiceSpec) -> dict[str, Any]:
    """The compose service mapping a spec was made from (the inverse of
    compose's converter), for ``service update`` to change."""
    c = spec.container
    svc: dict[str, Any] = {"image": c.image, **copy.deepcopy(c.options)}
    if c.command is not None:
        svc["command"] = list(c.command)
    if c.entrypoint is not None:
        svc["entrypoint"] = list(c.entrypoint)
    svc["environment"] = dict(c.env)
    svc["labels"] = dict(c.labels)
    svc["deploy"] = copy.deepcopy(spec.deploy)
    if spec.depends_on:
        svc["depends_on"] = copy.deepcopy(spec.depends_on)
    return svc


def update_spec(spec: ServiceSpec, args: argparse.Namespace) -> ServiceSpec:
    """``spec`` with ``service update``'s flags applied: removals, then
    additions, then the values that replace (Docker's order)."""
    svc = service_mapping(spec)
    deploy: dict[str, Any] = svc["deploy"]
    if args.image is not None:
        svc["image"] = _checked("--image", args.image, image, args.image)
    if args.args is not None:
        _put(svc, "command", _checked("--args", args.args, command, args.args) or None)
    env: dict[str, str] = svc["environment"]
    for key in args.env_rm or []:
        env.pop(key.partition("=")[0], None)
    if args.env_add:
        env.update(_checked("--env-add", ",".join(args.env_add), environment, list(args.env_add)))
    _update_map(svc, "labels", args.container_label_rm, args.container_label_add, "--container-label-add")
    _update_map(deploy, "labels", args.label_rm, args.label_add, "--label-add")
    _update_map(svc, "sysctls", args.sysctl_rm, args.sysctl_add, "--sysctl-add")
    ports = [p for p in svc.get("ports") or []
             if not any(_same_port(p, r, "mode=" in x) for x in args.publish_rm or [] for r in _port_targets(x))]
    for x in args.publish_add or []:
        for new in parse_publish(x, "--publish-add"):
            ports = [p for p in ports if not _same_port(p, new)] + [new]
    _put(svc, "ports", ports or None)
    mounts = [m for m in svc.get("volumes") or [] if m.get("target") not in set(args.mount_rm or [])]
    for x in args.mount_add or []:
        new = parse_mount(x, "--mount-add")
        mounts = [m for m in mounts if m.get("target") != new["target"]] + [new]
    _put(svc, "volumes", mounts or None)
    for kind in ("secret", "config"):
        key = kind + "s"
        gone = set(getattr(args, f"{kind}_rm") or [])
        refs = [r for r in svc.get(key) or [] if r.get("name", r.get("source")) not in gone
                and r.get("source") not in gone]
        for x in getattr(args, f"{kind}_add") or []:
            new = parse_file_ref(x, key, f"--{kind}-add")
            refs = [r for r in refs if _file_target(kind, r) != _file_target(kind, new)] + [new]
        _put(svc, key, refs or None)
    placement = _section(deploy, "placement")
    constraints = [c for c in placement.get("constraints") or []
                   if c not in {parse_constraint(x, "--constraint-rm") for x in args.constraint_rm or []}]
    for x in args.constraint_add or []:
        new_c = parse_constraint(x, "--constraint-add")
        if new_c not in constraints:
            constraints.append(new_c)
    _put(placement, "constraints", constraints or None)
    prefs = [p for p in placement.get("preferences") or []
             if p not in [parse_placement_pref(x, "--placement-pref-rm") for x in args.placement_pref_rm or []]]
    prefs += [parse_placement_pref(x, "--placement-pref-add") for x in args.placement_pref_add or []]
    _put(placement, "preferences", prefs or None)
    for flag, key in (("dns", "dns"), ("dns_search", "dns_search"), ("dns_option", "dns_opt")):
        values = [v for v in svc.get(key) or [] if v not in set(getattr(args, f"{flag}_rm") or [])]
        values += [v for v in getattr(args, f"{flag}_add") or [] if v not in values]
        _put(svc, key, values or None)
    hosts: dict[str, str] = dict(svc.get("extra_hosts") or {})
    for x in args.host_rm or []:
        name, _, ip = x.partition(":")
        if not ip or hosts.get(name) == ip:
            hosts.pop(name, None)
    for x in args.host_add or []:
        hosts.update(parse_host(x, "--host-add"))
    _put(svc, "extra_hosts", hosts or None)
    ulimits: dict[str, Any] = dict(svc.get("ulimits") or {})
    for name in args.ulimit_rm or []:
        ulimits.pop(name, None)
    for x in args.ulimit_add or []:
        ulimits.update(parse_ulimit(x, "--ulimit-add"))
    _put(svc, "ulimits", ulimits or None)
    if args.cap_add:
        added = _caps(args.cap_add, "--cap-add")
        svc["cap_add"] = list(dict.fromkeys([*svc.get("cap_add", []), *added]))
        _put(svc, "cap_drop", [c for c in svc.get("cap_drop", []) if c not in added] or None)
    if args.cap_drop:
        dropped = _caps(args.cap_drop, "--cap-drop")
        svc["cap_drop"] = list(dict.fromkeys([*svc.get("cap_drop", []), *dropped]))
        _put(svc, "cap_add", [c for c in svc.get("cap_add", []) if c not in dropped] or None)
    _set_common(svc, args)
    networks = [n for n in spec.networks if n.get("target") not in set(args.network_rm or [])]
    for x in args.network_add or []:
        new_n = parse_network(x, "--network-add")
        networks = [n for n in networks if n.get("target") != new_n["target"]] + [new_n]
    replicas = spec.replicas
    if args.replicas is not None:
        if spec.mode == "global":
            raise UsageError(f"{spec.name}: --replicas can only be used with replicated mode")
        replicas = _nonneg(args.replicas, "--replicas")
    out = _spec(spec.name, spec.stack, svc, networks, replicas)
    out.mode = spec.mode
    return out


def _update_map(parent: dict[str, Any], key: str, remove: Sequence[str] | None,
                add: Sequence[str] | None, flag: str) -> None:
    values: dict[str, str] = dict(parent.get(key) or {})
    for k in remove or []:
        values.pop(k.partition("=")[0], None)
    values.update(parse_key_value(x, flag) for x in add or [])
    if values or key in parent:
        parent[key] = values
    if not values and key in parent and key != "labels":
        del parent[key]


def _port_targets(text: str) -> list[dict[str, Any]]:
    """What ``--publish-rm`` names: a target port, maybe with a protocol
    (``80``, ``80/udp``), or a whole mapping whose target is taken."""
    return parse_publish(text, "--publish-rm")


def _same_port(a: Mapping[str, Any], b: Mapping[str, Any], mode: bool = True) -> bool:
    """One port for add/rm: target and protocol, and the publish mode when
    ``mode`` (``--publish-rm 80`` removes port 80 whatever its mode)."""
    return (a.get("target") == b.get("target") and a.get("protocol", "tcp") == b.get("protocol", "tcp")
            and (not mode or a.get("mode", "ingress") == b.get("mode", "ingress")))


def _file_target(kind: str, ref: Mapping[str, Any]) -> str:
    from pyswarm.manager.objects import file_target

    return file_target(kind, ref)


__all__ = [
    "REFUSED_CREATE", "REFUSED_UPDATE", "add_create_flags", "add_update_flags", "create_spec",
    "default_name", "parse_constraint", "parse_mount", "parse_publish", "service_mapping", "update_spec",
]
