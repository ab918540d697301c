"""Service keys that shape the container: ports, volumes, healthcheck and the rest.

Each handler accepts every syntax the spec allows (short and long) and
returns the long form, so the agent and ``stack config`` deal with one shape.
Importing this module registers the handlers with :mod:`.service`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .checker import INVALID, _Invalid, describe
from .errors import KeyPath
from .service import HANDLERS, ServiceChecker, register
from .units import format_duration_ns, parse_bytes, parse_duration_ns

PROTOCOLS = ("tcp", "udp", "sctp")
MAX_PORTS = 65535
"""Ports of one service once ranges are expanded: "1-65535:1-65535" thirty
times took 590 s and 6 GB to print (each port is an entry of the long syntax)."""
_PROPAGATION = ("shared", "slave", "private", "rshared", "rslave", "rprivate")
_SIGNAL = re.compile(r"^(SIG[A-Z0-9+-]+|[0-9]+)$")


def duration(c: ServiceChecker, path: KeyPath, value: Any) -> str | _Invalid:
    """A duration in its canonical spelling (``1m30s``)."""
    if isinstance(value, (str, int, float)):
        try:
            return format_duration_ns(parse_duration_ns(value))
        except ValueError as exc:
            return c.error(path, str(exc))
    return c.error(path, f"expected a duration like 10s or 1m30s, got {describe(value)}")


def byte_size(c: ServiceChecker, path: KeyPath, value: Any) -> int | _Invalid:
    if isinstance(value, (str, int, float)):
        try:
            return parse_bytes(value)
        except ValueError as exc:
            return c.error(path, str(exc))
    return c.error(path, f"expected a size like 512m or 1g, got {describe(value)}")


# -- ports ------------------------------------------------------------------

def _port_range(c: ServiceChecker, path: KeyPath, text: str) -> list[int] | _Invalid:
    lo, dash, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi) if dash else int(lo)
    except ValueError:
        return c.error(path, f"not a port number or range: {text!r}")
    if not (1 <= first <= last <= 65535):
        return c.error(path, f"ports are 1-65535, got {text!r}")
    return list(range(first, last + 1))


@register(HANDLERS, "ports")
def ports(c: ServiceChecker, path: KeyPath, value: Any) -> list[dict[str, Any]] | _Invalid:
    items = c.sequence(path, value)
    if isinstance(items, _Invalid):
        return items
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        ipath = path + (i,)
        if isinstance(item, dict):
            entry = _port_long(c, ipath, item)
            if not isinstance(entry, _Invalid):
                out.append(entry)
        elif isinstance(item, (str, int)) and not isinstance(item, bool):
            out.extend(_port_short(c, ipath, str(item), MAX_PORTS - len(out)))
        else:
            c.error(ipath, f"expected a port like 8080:80 or a mapping, got {describe(item)}")
        if len(out) >= MAX_PORTS and i + 1 < len(items):
            return c.error(path, f"more than {MAX_PORTS} ports once ranges are expanded")
    return out


def _port_short(c: ServiceChecker, path: KeyPath, text: str, room: int) -> list[dict[str, Any]]:
    """``[HOST_IP:][PUBLISHED:]TARGET[/PROTO]``, ranges expanded (at most ``room`` entries)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in PROTOCOLS:
        c.error(path, f"unknown protocol {proto!r}: use tcp, udp or sctp")
        return []
    host_ip = ""
    if spec.startswith("["):
        host_ip, _, spec = spec[1:].partition("]")
        spec = spec.removeprefix(":")
        parts = spec.split(":")
    else:
        parts = spec.split(":")
        if len(parts) == 3:
            host_ip = parts.pop(0)
        elif len(parts) > 3:
            c.error(path, f"not a port mapping: {text!r}")
            return []
    targets = _port_range(c, path, parts[-1])
    published: list[int] | _Invalid = []
    if len(parts) == 2 and parts[0]:
        published = _port_range(c, path, parts[0])
    if isinstance(targets, _Invalid) or isinstance(published, _Invalid):
        return []
    if published and len(published) != len(targets) and len(targets) != 1:
        c.error(path, f"published and target port ranges differ in length: {text!r}")
        return []
    if len(targets) > room:
        c.error(path, f"{text!r} makes more than {MAX_PORTS} ports in the service")
        return []
    out = []
    for n, target in enumerate(targets):
        entry: dict[str, Any] = {"target": target}
        if published:
            if len(targets) == 1 and len(published) > 1:
                entry["published"] = f"{published[0]}-{published[-1]}"
            else:
                entry["published"] = published[n]
        if host_ip:
            entry["host_ip"] = host_ip
        entry["protocol"] = proto
        entry["mode"] = "ingress"
        out.append(entry)
    return out


def _port_long(c: ServiceChecker, path: KeyPath, item: dict[str, Any]) -> dict[str, Any] | _Invalid:
    c.known_keys(path, item, ("target", "published", "protocol", "mode", "host_ip", "name",
                              "app_protocol"))
    if "target" not in item:
        return c.error(path, "a port needs a `target` (the container's port)")
    entry: dict[str, Any] = {}
    target = c.integer(path + ("target",), item["target"], 1, 65535)
    if isinstance(target, _Invalid):
        return target
    entry["target"] = target
    if item.get("published") not in (None, ""):
        pub = item["published"]
        if isinstance(pub, str) and "-" in pub:
            rng = _port_range(c, path + ("published",), pub)
            if isinstance(rng, _Invalid):
                return rng
            entry["published"] = pub if len(rng) > 1 else rng[0]
        else:
            number = c.integer(path + ("published",), pub, 1, 65535)
            if isinstance(number, _Invalid):
                return number
            entry["published"] = number
    for key in ("host_ip", "name", "app_protocol"):
        if key in item:
            s = c.string(path + (key,), item[key])
            if isinstance(s, str):
                entry[key] = s
    proto = c.choice(path + ("protocol",), item.get("protocol", "tcp"), PROTOCOLS)
    mode = c.choice(path + ("mode",), item.get("mode", "ingress"), ("ingress", "host"))
    if isinstance(proto, _Invalid) or isinstance(mode, _Invalid):
        return INVALID
    entry["protocol"], entry["mode"] = proto, mode
    return entry


# -- volumes ----------------------------------------------------------------

def _bind_source(c: ServiceChecker, source: str) -> str:
    """Relative and ``~`` bind sources, made absolute against the stack file's folder."""
    expanded = os.path.expanduser(source)
    return str((c.project_dir / expanded).resolve()) if not os.path.isabs(expanded) else expanded


@register(HANDLERS, "volumes")
def volumes(c: ServiceChecker, path: KeyPath, value: Any) -> list[dict[str, Any]] | _Invalid:
    items = c.sequence(path, value)
    if isinstance(items, _Invalid):
        return items
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        ipath = path + (i,)
        if isinstance(item, str):
            entry = _volume_short(c, ipath, item)
        elif isinstance(item, dict):
            entry = _volume_long(c, ipath, item)
        else:
            entry = c.error(ipath, f"expected SOURCE:TARGET[:MODE] or a mapping, got {describe(item)}")
        if isinstance(entry, _Invalid):
            continue
        if entry["type"] == "volume" and entry.get("source") and \
                entry["source"] not in c.declared["volumes"]:
            c.error(ipath, f"undefined volume {entry['source']!r}: declare it under the "
                    "top-level `volumes`")
        out.append(entry)
    return out


def _volume_short(c: ServiceChecker, path: KeyPath, text: str) -> dict[str, Any] | _Invalid:
    parts = text.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    if len(parts) > 3 or not parts[1]:
        return c.error(path, f"expected SOURCE:TARGET[:MODE], got {text!r}")
    source, target = parts[0], parts[1]
    if not target.startswith("/"):
        return c.error(path, f"the target must be an absolute path in the container, got {target!r}")
    is_bind = source.startswith(("/", ".", "~"))
    entry: dict[str, Any] = {"type": "bind" if is_bind else "volume",
                             "source": _bind_source(c, source) if is_bind else source,
                             "target": target}
    for opt in (parts[2].split(",") if len(parts) == 3 else []):
        if opt == "ro":
            entry["read_only"] = True
        elif opt == "rw":
            pass
        elif opt in ("z", "Z") and is_bind:
            entry.setdefault("bind", {})["selinux"] = opt
        elif opt in _PROPAGATION and is_bind:
            entry.setdefault("bind", {})["propagation"] = opt
        elif opt == "nocopy" and not is_bind:
            entry["volume"] = {"nocopy": True}
        else:
            c.error(path, f"unknown volume option {opt!r}")
    if is_bind:
        entry.setdefault("bind", {}).setdefault("create_host_path", True)
    return entry


def _volume_long(c: ServiceChecker, path: KeyPath, item: dict[str, Any]) -> dict[str, Any] | _Invalid:
    c.known_keys(path, item, ("type", "source", "target", "read_only", "consistency", "bind",
                              "volume", "tmpfs", "image"))
    kind = c.choice(path + ("type",), item.get("type", "volume"),
                    ("volume", "bind", "tmpfs", "npipe", "cluster", "image"))
    target = c.string(path + ("target",), item.get("target"))
    if isinstance(kind, _Invalid) or isinstance(target, _Invalid):
        return INVALID
    entry: dict[str, Any] = {"type": kind}
    if item.get("source") not in (None, ""):
        source = c.string(path + ("source",), item["source"])
        if isinstance(source, _Invalid):
            return source
        entry["source"] = _bind_source(c, source) if kind == "bind" else source
    elif kind == "bind":
        return c.error(path, "a bind mount needs a `source`")
    entry["target"] = target
    if "read_only" in item:
        ro = c.boolean(path + ("read_only",), item["read_only"])
        if ro is True:
            entry["read_only"] = True
    if "consistency" in item:
        entry["consistency"] = c.string(path + ("consistency",), item["consistency"])
    if "bind" in item:
        bind = c.mapping(path + ("bind",), item["bind"])
        if not isinstance(bind, _Invalid):
            c.known_keys(path + ("bind",), bind, ("propagation", "create_host_path", "selinux"))
            out: dict[str, Any] = {}
            if "propagation" in bind:
                out["propagation"] = c.choice(path + ("bind", "propagation"), bind["propagation"],
                                              _PROPAGATION)
            if "create_host_path" in bind:
                out["create_host_path"] = c.boolean(path + ("bind", "create_host_path"),
                                                    bind["create_host_path"])
            if "selinux" in bind:
                out["selinux"] = c.choice(path + ("bind", "selinux"), bind["selinux"], ("z", "Z"))
            entry["bind"] = out
    if "volume" in item:
        vol = c.mapping(path + ("volume",), item["volume"])
        if not isinstance(vol, _Invalid):
            c.known_keys(path + ("volume",), vol, ("nocopy", "subpath"))
            entry["volume"] = {k: v for k, v in vol.items()}
    if "tmpfs" in item:
        tmp = c.mapping(path + ("tmpfs",), item["tmpfs"])
        if not isinstance(tmp, _Invalid):
            c.known_keys(path + ("tmpfs",), tmp, ("size", "mode"))
            t: dict[str, Any] = {}
            if "size" in tmp:
                t["size"] = byte_size(c, path + ("tmpfs", "size"), tmp["size"])
            if "mode" in tmp:
                t["mode"] = c.integer(path + ("tmpfs", "mode"), tmp["mode"], 0, 0o7777)
            entry["tmpfs"] = t
    return entry


# -- secrets, configs, networks ---------------------------------------------

def _file_refs(c: ServiceChecker, path: KeyPath, value: Any, kind: str) -> list[dict[str, Any]] | _Invalid:
    items = c.sequence(path, value)
    if isinstance(items, _Invalid):
        return items
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        ipath = path + (i,)
        if isinstance(item, str):
            entry: dict[str, Any] = {"source": item}
        elif isinstance(item, dict):
            c.known_keys(ipath, item, ("source", "target", "uid", "gid", "mode"))
            source = c.string(ipath + ("source",), item.get("source"))
            if isinstance(source, _Invalid):
                continue
            entry = {"source": source}
            for key in ("target", "uid", "gid"):
                if key in item:
                    entry[key] = c.string(ipath + (key,), item[key])
            if "mode" in item:
                entry["mode"] = c.integer(ipath + ("mode",), item["mode"], 0, 0o7777)
        else:
            c.error(ipath, f"expected a {kind[:-1]} name or a mapping, got {describe(item)}")
            continue
        if entry["source"] not in c.declared[kind]:
            c.error(ipath, f"undefined {kind[:-1]} {entry['source']!r}: declare it under the "
                    f"top-level `{kind}`")
        out.append(entry)
    return out


@register(HANDLERS, "secrets")
def secrets(c: ServiceChecker, path: KeyPath, value: Any) -> list[dict[str, Any]] | _Invalid:
    return _file_refs(c, path, value, "secrets")


@register(HANDLERS, "configs")
def configs(c: ServiceChecker, path: KeyPath, value: Any) -> list[dict[str, Any]] | _Invalid:
    return _file_refs(c, path, value, "configs")


@register(HANDLERS, "networks")
def networks(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    if isinstance(value, list):
        names = c.string_list(path, value, single=False)
        if isinstance(names, _Invalid):
            return names
        value = {name: None for name in names}
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    out: dict[str, Any] = {}
    for name, opts in m.items():
        npath = path + (name,)
        if name not in c.declared["networks"] and name != "default":
            c.error(npath, f"undefined network {name!r}: declare it under the top-level "
                    "`networks`", key=True)
        entry: dict[str, Any] = {}
        if opts is not None:
            o = c.mapping(npath, opts)
            if isinstance(o, _Invalid):
                continue
            c.known_keys(npath, o, ("aliases", "ipv4_address", "ipv6_address", "priority",
                                    "link_local_ips", "mac_address", "driver_opts", "gw_priority"))
            if "aliases" in o:
                entry["aliases"] = c.string_list(npath + ("aliases",), o["aliases"], single=False)
            for key in ("ipv4_address", "ipv6_address"):
                if key in o:
                    entry[key] = c.string(npath + (key,), o[key])
        out[name] = entry
    return out


# -- healthcheck and small keys ---------------------------------------------

@register(HANDLERS, "healthcheck")
def healthcheck(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    c.known_keys(path, m, ("test", "interval", "timeout", "retries", "start_period",
                           "start_interval", "disable"))
    if m.get("disable") is True or m.get("disable") == "true":
        return {"test": ["NONE"]}
    out: dict[str, Any] = {}
    if "test" in m:
        test = m["test"]
        if isinstance(test, str):
            out["test"] = ["CMD-SHELL", test]
        else:
            words = c.string_list(path + ("test",), test, single=False)
            if isinstance(words, list):
                if not words or words[0] not in ("CMD", "CMD-SHELL", "NONE"):
                    c.error(path + ("test",), "a list test starts with CMD, CMD-SHELL or NONE")
                out["test"] = words
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if key in m:
            out[key] = duration(c, path + (key,), m[key])
    if "retries" in m:
        out["retries"] = c.integer(path + ("retries",), m["retries"], 0)
    return out


@register(HANDLERS, "labels")
def labels(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, str] | _Invalid:
    return c.string_map(path, value)


@register(HANDLERS, "sysctls")
def sysctls(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, str] | _Invalid:
    return c.string_map(path, value)


@register(HANDLERS, "logging")
def logging(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    c.known_keys(path, m, ("driver", "options"))
    out: dict[str, Any] = {}
    if "driver" in m:
        out["driver"] = c.string(path + ("driver",), m["driver"])
    if m.get("options") is not None:
        out["options"] = c.string_map(path + ("options",), m["options"])
    return out


@register(HANDLERS, "ulimits")
def ulimits(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, Any] | _Invalid:
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return m
    out: dict[str, Any] = {}
    for name, limit in m.items():
        lpath = path + (name,)
        if isinstance(limit, dict):
            c.known_keys(lpath, limit, ("soft", "hard"))
            soft = c.integer(lpath + ("soft",), limit.get("soft"))
            hard = c.integer(lpath + ("hard",), limit.get("hard"))
            if isinstance(soft, int) and isinstance(hard, int):
                if soft > hard:
                    c.error(lpath, f"soft limit {soft} is above hard limit {hard}")
                out[name] = {"soft": soft, "hard": hard}
        else:
            n = c.integer(lpath, limit)
            if isinstance(n, int):
                out[name] = {"soft": n, "hard": n}
    return out


@register(HANDLERS, "extra_hosts")
def extra_hosts(c: ServiceChecker, path: KeyPath, value: Any) -> dict[str, str] | _Invalid:
    if isinstance(value, list):
        out: dict[str, str] = {}
        for i, item in enumerate(value):
            s = c.string(path + (i,), item)
            if isinstance(s, _Invalid):
                continue
            sep = "=" if "=" in s else ":"
            host, ok, ip = s.partition(sep)
            if not ok or not host or not ip:
                c.error(path + (i,), f"expected HOST=IP or HOST:IP, got {s!r}")
            else:
                out[host] = ip.strip("[]")
        return out
    return c.string_map(path, value)


def _bool(c: ServiceChecker, path: KeyPath, value: Any) -> bool | _Invalid:
    return c.boolean(path, value)


def _str(c: ServiceChecker, path: KeyPath, value: Any) -> str | _Invalid:
    return c.string(path, value)


def _strings(c: ServiceChecker, path: KeyPath, value: Any) -> list[str] | _Invalid:
    return c.string_list(path, value)


def _caps(c: ServiceChecker, path: KeyPath, value: Any) -> list[str] | _Invalid:
    caps = c.string_list(path, value, single=False)
    return [cap.upper() for cap in caps] if isinstance(caps, list) else caps


@register(HANDLERS, "stop_signal")
def stop_signal(c: ServiceChecker, path: KeyPath, value: Any) -> str | _Invalid:
    s = c.string(path, value)
    if isinstance(s, str) and not _SIGNAL.match(s.upper() if s.upper().startswith("SIG") else s):
        return c.error(path, f"expected a signal like SIGTERM, got {s!r}")
    return s


for _key in ("init", "read_only", "stdin_open", "tty"):
    HANDLERS[_key] = _bool
for _key in ("user", "working_dir", "hostname"):
    HANDLERS[_key] = _str
for _key in ("dns", "dns_search", "dns_opt", "tmpfs"):
    HANDLERS[_key] = _strings
HANDLERS["cap_add"] = HANDLERS["cap_drop"] = _caps
HANDLERS["stop_grace_period"] = duration

__all__ = ["duration", "byte_size", "Path"]
