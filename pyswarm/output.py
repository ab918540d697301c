"""Tables for people, JSON for scripts, Docker's ``--format`` templates: one
printer for every list and inspect.

``--format`` takes what Docker's does: ``table`` (the default columns),
``json`` (pyswarm's rows as one JSON array, what scripts and the tests read),
or a Go-template-style string such as ``{{.Name}}``, ``{{json .}}`` or
``table {{.ID}}\\t{{.Name}}``. Templates see Docker's field names for each
list (:data:`NODE_FIELDS` and the others, made by the ``docker_*``
functions from pyswarm's rows), so a script written against ``docker
service ls --format`` works unchanged.

The template is rendered with jinja2, but never handed to jinja2 as
written: :func:`compile_template` parses the Go subset people use (fields,
``.`` for the whole row, the functions ``json``, ``upper``, ``lower``,
``title``, ``join``, ``split``, ``truncate``, ``pad``, ``index``, ``println``) and
builds a jinja2 template in which every literal is a context value and every
field is a lookup in the row's own mapping. Nothing the user writes can
reach a Python attribute; anything outside the subset is refused with the
action that is not understood.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from pyswarm.errors import UsageError

Row = dict[str, Any]


def print_rows(rows: list[Row], fmt: str, columns: Sequence[tuple[str, str]],
               drop: Iterable[str] = (), out: TextIO | None = None,
               fields: Callable[[Row], Row] | None = None, quiet: str | None = None) -> None:
    """Print ``rows`` as aligned columns (like docker's), as a JSON array
    (``drop`` names display-only keys it leaves out), or through a Docker
    template over ``fields(row)``; with ``quiet``, only that key of each row."""
    out = out or sys.stdout
    if quiet is not None:
        for row in rows:
            out.write(f"{row[quiet]}\n")
        return
    if fmt == "json":
        hidden = set(drop)
        json.dump([{k: v for k, v in row.items() if k not in hidden} for row in rows], out, indent=2)
        out.write("\n")
        return
    if fmt not in ("", "table"):
        if fields is None:
            raise UsageError(f"--format {fmt!r}: this list takes table or json only")
        render(fmt, [fields(r) for r in rows], out)
        return
    cells = [[h for h, _ in columns]] + [["" if row.get(k) is None else str(row.get(k)) for _, k in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        out.write("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def since(ts: float, now: float | None = None) -> str:
    """``5 seconds ago``, as docker prints a task's state age."""
    seconds = max(0, int((now or time.time()) - ts))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "less than a second ago" if seconds < 1 else f"{seconds} second{'s' if seconds != 1 else ''} ago"


# -- Go templates, rendered by jinja2 ------------------------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\S+')
_FIELD = re.compile(r"^\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?$")
_FUNCS: dict[str, int] = {  # name -> number of arguments after the value
    "json": 0, "upper": 0, "lower": 0, "title": 0, "println": 0, "join": 1, "split": 1,
    "truncate": 1, "pad": 2, "index": 1,
}


def _go_json(value: Any) -> str:
    """Go's encoding/json as Docker's formatter uses it: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _text(value: Any) -> str:
    """A value as Go's template prints it (``true``, ``[a b]``, ``map[k:v]``)."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_text(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _call(name: str, value: Any, *args: Any) -> Any:
    if name == "json":
        return _go_json(value)
    if name == "upper":
        return _text(value).upper()
    if name == "lower":
        return _text(value).lower()
    if name == "title":
        return _text(value).title()
    if name == "println":
        return _text(value) + "\n"
    if name == "join":
        return str(args[0]).join(_text(v) for v in (value or []))
    if name == "split":
        return _text(value).split(str(args[0]))
    if name == "truncate":
        return _text(value)[:int(args[0])]
    if name == "index":
        return value.get(str(args[0]), "") if isinstance(value, Mapping) else ""
    if name == "pad":
        return " " * int(args[0]) + _text(value) + " " * int(args[1])
    raise AssertionError(name)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _lookup(row: Any, path: Sequence[str]) -> Any:
    """``.A.B`` in ``row``: mapping keys only, Docker's name first, then its
    snake_case spelling (pyswarm's inspect objects). An unknown field is an
    error naming it, as in Docker."""
    value = row
    for i, name in enumerate(path):
        if not isinstance(value, Mapping):
            raise UsageError(f"template: can't evaluate field {name} in {'.' + '.'.join(path[:i]) or '.'}: "
                             "not a mapping")
        for key in (name, _snake(name)):
            if key in value:
                value = value[key]
                break
        else:
            known = ", ".join(str(k) for k in value)
            raise UsageError(f"template: can't evaluate field {name}: the fields here are {known}")
    return value


@dataclass(frozen=True)
class Template:
    """A parsed ``--format``: whether it is a table, and its jinja2 template."""

    table: bool
    template: jinja2.Template
    literals: tuple[str, ...]
    args: tuple[tuple[Any, ...], ...]
    headers: tuple[str, ...]  # one per action: the header its field gets in a table

    def render(self, row: Any, header: bool = False) -> str:
        return str(self.template.render(L=self.literals, A=self.args, row=row, header=header,
                                        H=self.headers))


_ENV = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
_ENV.globals.update(get=lambda row, path, header, title: title if header else _lookup(row, path),
                    call=lambda name, header, value, *args: value if header else _call(name, value, *args),
                    text=lambda value, header: str(value) if header else _text(value))


def header_name(field: str) -> str:
    """Docker's column header for a field: ``DesiredState`` -> ``DESIRED STATE``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", field).upper()


def compile_template(fmt: str) -> Template:
    """Parse Docker's Go-template subset into a jinja2 template (see the
    module docstring); raises UsageError naming what is not understood."""
    table = fmt.startswith("table")
    text = fmt[len("table"):] if table else fmt
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    parts: list[str] = []
    literals: list[str] = []
    args: list[tuple[Any, ...]] = []
    headers: list[str] = []
    pos = 0
    for match in _ACTION.finditer(text):
        literal = text[pos:match.start()]
        if match.group(1):
            literal = literal.rstrip()
        if literal:
            parts.append(f"{{{{ L[{len(literals)}] }}}}")
            literals.append(literal)
        expr, title = _action(match.group(2), args)
        headers.append(title)
        parts.append(f"{{{{ {expr} }}}}")
        pos = match.end()
        if match.group(3):
            while pos < len(text) and text[pos].isspace():
                pos += 1
    rest = text[pos:]
    if "{{" in rest or "}}" in rest:
        raise UsageError(f"template: unbalanced braces in {fmt!r}")
    if rest:
        parts.append(f"{{{{ L[{len(literals)}] }}}}")
        literals.append(rest)
    return Template(table, _ENV.from_string("".join(parts)), tuple(literals), tuple(args), tuple(headers))


def _action(body: str, args: list[tuple[Any, ...]]) -> tuple[str, str]:
    """One ``{{ ... }}``: a jinja2 expression over the context, and its header."""
    words = _TOKEN.findall(body)
    if not words:
        raise UsageError("template: empty action {{}}")
    if "|" in words or words[0] in ("if", "else", "end", "range", "with", "define", "template", "block"):
        raise UsageError(f"template: {{{{{body}}}}} is not supported: use fields ({{{{.Name}}}}) and the "
                         "functions " + ", ".join(_FUNCS))
    if len(words) == 1:
        path = _field(words[0], body)
        n = len(args)
        args.append(tuple(path))
        title = header_name(path[-1]) if path else ""
        return f"text(get(row, A[{n}], header, H[{n}]), header)", title
    name, rest = words[0], words[1:]
    if name not in _FUNCS:
        raise UsageError(f"template: function {name!r} not defined (use {', '.join(_FUNCS)})")
    if len(rest) != _FUNCS[name] + 1:
        raise UsageError(f"template: {name} takes {_FUNCS[name] + 1} argument(s), got {len(rest)} in {{{{{body}}}}}")
    path = _field(rest[0], body)
    values: list[Any] = [tuple(path)]
    for word in rest[1:]:
        values.append(_literal(word, body))
    n = len(args)
    args.append((name, *values))
    title = header_name(path[-1]) if path else ""
    return f"text(call(A[{n}][0], header, get(row, A[{n}][1], header, H[{n}]), *A[{n}][2:]), header)", title


def _field(word: str, body: str) -> list[str]:
    if not _FIELD.match(word):
        raise UsageError(f"template: {word!r} in {{{{{body}}}}} is not a field (write .Name, or . for the whole row)")
    return [p for p in word.split(".") if p]


def _literal(word: str, body: str) -> Any:
    if word.startswith('"') and word.endswith('"') and len(word) >= 2:
        return str(json.loads(word))
    if word.startswith("`") and word.endswith("`") and len(word) >= 2:
        return word[1:-1]
    try:
        return int(word)
    except ValueError:
        raise UsageError(f"template: {word!r} in {{{{{body}}}}} is not a string or number") from None


def render(fmt: str, rows: Sequence[Any], out: TextIO) -> None:
    """Each row through the template, a line each; ``table`` ones get a
    header and Docker's column alignment (tabwriter: min 10, padding 3)."""
    tpl = compile_template(fmt)
    try:
        lines = [tpl.render(row) for row in rows]
        if tpl.table:
            lines.insert(0, tpl.render({}, header=True))
    except jinja2.TemplateError as exc:  # pragma: no cover - the translation is checked above
        raise UsageError(f"template: {exc}") from None
    if tpl.table:
        lines = _align(lines)
    for line in lines:
        out.write(line + "\n")


def _align(lines: list[str]) -> list[str]:
    """Go's tabwriter as docker's formatter sets it up: a tab-ended cell is
    padded to its column's widest cell plus 3 (at least 10 wide)."""
    split = [line.split("\t") for line in lines]
    width: dict[int, int] = {}
    for cells in split:
        for i, cell in enumerate(cells[:-1]):
            width[i] = max(width.get(i, 0), len(cell))
    return ["".join(c.ljust(max(10, width[i] + 3)) for i, c in enumerate(cells[:-1])) + cells[-1]
            for cells in split]


# -- Docker's fields for each list ---------------------------------------------------

NODE_FIELDS = ("ID", "Self", "Hostname", "Status", "Availability", "ManagerStatus", "EngineVersion", "TLSStatus")
SERVICE_FIELDS = ("ID", "Name", "Mode", "Replicas", "Image", "Ports")
TASK_FIELDS = ("ID", "Name", "Image", "Node", "DesiredState", "CurrentState", "Error", "Ports")
STACK_FIELDS = ("Name", "Services", "Orchestrator")


def _cap(value: Any) -> str:
    return str(value or "").capitalize()


def docker_node(row: Row) -> Row:
    """A ``node.ls`` row as Docker's ``node ls`` template fields."""
    return {"ID": row["id"], "Self": bool(row.get("self")), "Hostname": row["hostname"],
            "Status": _cap(row["status"]), "Availability": _cap(row["availability"]),
            "ManagerStatus": _cap(row.get("manager_status")), "EngineVersion": row.get("engine_version", ""),
            "TLSStatus": "Ready"}


def port_text(ports: Iterable[Mapping[str, Any]]) -> str:
    """Docker's PORTS column: ``*:8080->80/tcp, *:9090->90/udp``."""
    out = []
    for p in ports:
        if p.get("published") in (None, ""):
            continue
        out.append(f"*:{p['published']}->{p['target']}/{p.get('protocol', 'tcp')}")
    return ", ".join(out)


def docker_service(row: Row, trunc: bool = True) -> Row:
    """A ``service.ls`` row as Docker's ``service ls`` template fields."""
    return {"ID": row["id"][:12] if trunc else row["id"], "Name": row["name"], "Mode": row["mode"],
            "Replicas": row["replicas"], "Image": row["image"], "Ports": port_text(row.get("ports") or [])}


def docker_task(row: Row, trunc: bool = True) -> Row:
    """A task row (``service.ps``, ``stack.ps``, ``node.ps``) as Docker's fields."""
    state = f"{_cap(row['current_state'])} {since(row['since'])}"
    error = row.get("error") or (row.get("message") if row["current_state"] == "pending" else "") or ""
    if trunc and len(error) > 30:
        error = error[:29] + "…"
    return {"ID": row["id"][:12] if trunc else row["id"], "Name": row["name"], "Image": row["image"],
            "Node": row["node"], "DesiredState": _cap(row["desired_state"]), "CurrentState": state,
            "Error": error, "Ports": port_text(p for p in row.get("ports") or [] if p.get("mode") == "host")}


def docker_stack(row: Row) -> Row:
    return {"Name": row["name"], "Services": row["services"], "Orchestrator": "Swarm"}


def _stamp(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(float(ts))) if ts not in (None, "") else ""


def _label_text(labels: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def docker_object(row: Row) -> Row:
    """A secret or config row as Docker's ``secret ls`` / ``config ls`` fields."""
    return {"ID": row["id"], "Name": row["name"], "Driver": "", "CreatedAt": _stamp(row.get("created_at")),
            "UpdatedAt": _stamp(row.get("updated_at")), "Labels": _label_text(row.get("labels"))}


def docker_network(row: Row) -> Row:
    """A ``network.ls`` row as Docker's ``network ls`` fields."""
    return {"ID": row["id"][:12], "Name": row["name"], "Driver": row["driver"], "Scope": row["scope"],
            "IPv6": False, "Internal": bool(row.get("internal")), "Labels": _label_text(row.get("labels")),
            "CreatedAt": _stamp(row.get("created_at"))}


# -- inspect --pretty -----------------------------------------------------------------


def _kv(lines: list[str], label: str, value: Any = None, indent: int = 0) -> None:
    key = " " * indent + label + ":"
    lines.append(key if value is None else f"{key.ljust(22)}{value}")


def pretty_service(svc: Mapping[str, Any]) -> str:
    """``service inspect --pretty``: Docker's layout, from pyswarm's service object."""
    spec = svc["spec"]
    container = spec["container"]
    deploy = spec.get("deploy") or {}
    lines: list[str] = []
    _kv(lines, "ID", svc["id"])
    _kv(lines, "Name", spec["name"])
    if spec.get("labels"):
        _kv(lines, "Labels")
        for k, v in sorted(spec["labels"].items()):
            lines.append(f" {k}={v}")
    mode = spec.get("mode", "replicated")
    _kv(lines, "Service Mode", mode.capitalize())
    if mode != "global":
        _kv(lines, "Replicas", spec.get("replicas", 1), 1)
    status = svc.get("update_status") or {}
    if status.get("state"):
        _kv(lines, "UpdateStatus")
        _kv(lines, "State", status["state"], 1)
        if status.get("message"):
            _kv(lines, "Message", status["message"], 1)
    placement = deploy.get("placement") or {}
    _kv(lines, "Placement")
    if spec.get("constraints"):
        _kv(lines, "Constraints", "[" + " ".join(spec["constraints"]) + "]", 1)
    if placement.get("preferences"):
        _kv(lines, "Preferences", ", ".join(f"spread={p['spread']}" for p in placement["preferences"]), 1)
    if spec.get("max_replicas_per_node"):
        _kv(lines, "Max Replicas Per Node", spec["max_replicas_per_node"], 1)
    for key, title in (("update_config", "UpdateConfig"), ("rollback_config", "RollbackConfig")):
        cfg = deploy.get(key) or {}
        _kv(lines, title)
        _kv(lines, "Parallelism", cfg.get("parallelism", 1), 1)
        if cfg.get("delay"):
            _kv(lines, "Delay", cfg["delay"], 1)
        _kv(lines, "On failure", cfg.get("failure_action", "pause"), 1)
        _kv(lines, "Monitoring Period", cfg.get("monitor", "5s"), 1)
        _kv(lines, "Max failure ratio", cfg.get("max_failure_ratio", 0), 1)
        _kv(lines, "Update order" if key == "update_config" else "Rollback order",
            cfg.get("order", "stop-first"), 1)
    _kv(lines, "ContainerSpec")
    _kv(lines, "Image", container["image"], 1)
    if container.get("entrypoint"):
        _kv(lines, "Entrypoint", " ".join(container["entrypoint"]), 1)
    if container.get("command"):
        _kv(lines, "Args", " ".join(container["command"]), 1)
    if container.get("env"):
        _kv(lines, "Env", " ".join(f"{k}={v}" for k, v in container["env"].items()), 1)
    options = container.get("options") or {}
    for key, title in (("user", "User"), ("working_dir", "Dir"), ("hostname", "Hostname")):
        if options.get(key):
            _kv(lines, title, options[key], 1)
    _kv(lines, "Init", str(bool(options.get("init"))).lower(), 1)
    if options.get("volumes"):
        _kv(lines, "Mounts")
        for m in options["volumes"]:
            lines.append(f"  Target = {m['target']}")
            lines.append(f"   Source = {m.get('source', '')}")
            lines.append(f"   ReadOnly = {str(bool(m.get('read_only'))).lower()}")
            lines.append(f"   Type = {m.get('type', 'volume')}")
    for kind, title in (("secrets", "Secrets"), ("configs", "Configs")):
        if options.get(kind):
            _kv(lines, title)
            for ref in options[kind]:
                lines.append(f" Target:\t{ref.get('target') or ref['source']}")
                lines.append(f"  Source:\t{ref.get('name') or ref['source']}")
    resources = container.get("resources") or {}
    _kv(lines, "Resources")
    for key, title in (("reservations", "Reservations"), ("limits", "Limits")):
        part = resources.get(key) or {}
        if part:
            _kv(lines, title, None, 1)
            if part.get("cpus"):
                _kv(lines, "CPU", part["cpus"], 2)
            if part.get("memory"):
                _kv(lines, "Memory", _bytes(int(part["memory"])), 2)
            if part.get("pids"):
                _kv(lines, "Pids", part["pids"], 2)
    if spec.get("networks"):
        _kv(lines, "Networks", " ".join(n["target"] for n in spec["networks"]))
    _kv(lines, "Endpoint Mode", deploy.get("endpoint_mode", "vip"))
    ports = options.get("ports") or []
    if ports:
        _kv(lines, "Ports")
        for p in ports:
            lines.append(f" PublishedPort = {p.get('published', '')}")
            lines.append(f"  Protocol = {p.get('protocol', 'tcp')}")
            lines.append(f"  TargetPort = {p['target']}")
            lines.append(f"  PublishMode = {p.get('mode', 'ingress')}")
    hc = options.get("healthcheck")
    if hc:
        _kv(lines, "Healthcheck")
        _kv(lines, "Test", hc.get("test"), 1)
        for key in ("interval", "timeout", "start_period", "retries"):
            if key in hc:
                _kv(lines, key.replace("_", " ").capitalize(), hc[key], 1)
    return "\n".join(lines) + "\n"


def _bytes(n: int) -> str:
    """Docker's human sizes: ``64MiB``, ``1.5GiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:g}{unit}" if value == int(value) else f"{value:.4g}{unit}"
    return f"{n}B"


def pretty_node(node: Mapping[str, Any], self_id: str = "") -> str:
    """``node inspect --pretty``: Docker's layout, from pyswarm's node object."""
    lines: list[str] = []
    _kv(lines, "ID", node["id"] + (" *" if node["id"] == self_id else ""))
    if node.get("labels"):
        _kv(lines, "Labels")
        for k, v in sorted(node["labels"].items()):
            lines.append(f" - {k}={v}")
    _kv(lines, "Hostname", node["hostname"])
    if node.get("created_at"):
        _kv(lines, "Joined at", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(node["created_at"])))
    _kv(lines, "Status")
    _kv(lines, "State", _cap(node.get("status")), 1)
    if node.get("status_message"):
        _kv(lines, "Message", node["status_message"], 1)
    _kv(lines, "Availability", _cap(node.get("availability")), 1)
    _kv(lines, "Address", node.get("addr", ""), 1)
    if node.get("role") == "manager":
        _kv(lines, "Manager Status")
        _kv(lines, "Address", f"{node.get('addr', '')}:{node.get('api_port', 2377)}", 1)
        status = node.get("manager_status", "")
        _kv(lines, "Raft Status", "Reachable" if status in ("leader", "reachable") else _cap(status), 1)
        _kv(lines, "Leader", "Yes" if status == "leader" else "No", 1)
    platform = node.get("platform") or {}
    _kv(lines, "Platform")
    _kv(lines, "Operating System", platform.get("os", ""), 1)
    _kv(lines, "Architecture", platform.get("arch", platform.get("architecture", "")), 1)
    res = node.get("resources") or {}
    _kv(lines, "Resources")
    _kv(lines, "CPUs", int(res.get("nano_cpus", 0) / 1e9), 1)
    _kv(lines, "Memory", _bytes(int(res.get("memory_bytes", 0))), 1)
    _kv(lines, "Engine Version", node.get("engine_version", ""))
    if node.get("engine_labels"):
        _kv(lines, "Engine Labels")
        for k, v in sorted(node["engine_labels"].items()):
            lines.append(f" - {k}={v}")
    return "\n".join(lines) + "\n"


__all__ = [
    "NODE_FIELDS", "SERVICE_FIELDS", "STACK_FIELDS", "TASK_FIELDS", "compile_template", "docker_network",
    "docker_node", "docker_object",
    "docker_service", "docker_stack", "docker_task", "header_name", "port_text", "pretty_node",
    "pretty_service", "print_rows", "render", "since", "spec_diff",
]


# -- stack deploy --dry-run -------------------------------------------------------------


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):  # an empty mapping has no leaves: {} -> {A: 1} is "A: (none) -> 1"
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
    else:
        out[path] = value


def spec_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The changed leaves of two specs, one ``path: old -> new`` line each
    (lists compare whole: a port or mount list is shown as it becomes)."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(old, "", a)
    _flatten(new, "", b)
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, _MISSING) != b.get(key, _MISSING):
            before = "(none)" if key not in a else json.dumps(a[key], sort_keys=True)
            after = "(none)" if key not in b else json.dumps(b[key], sort_keys=True)
            lines.append(f"{key}: {before} -> {after}")
    return lines


_MISSING = object()
