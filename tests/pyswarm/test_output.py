"""``--format`` templates against Docker's documented output for the same
fields (docs.docker.com, the ``--format`` sections of node ls, service ls,
service ps and stack ls), the table alignment of Docker's formatter, and
the refusals that keep a template from reaching anything but the row."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest

from pyswarm import output
from pyswarm.errors import UsageError


def render(fmt: str, rows: list[Any]) -> str:
    out = io.StringIO()
    output.render(fmt, rows, out)
    return out.getvalue()


NODE_ROWS = [
    {"id": "e216jshn25ckzbvmwlnh5jr3g", "hostname": "swarm-manager1", "status": "ready", "availability": "active",
     "manager_status": "leader", "engine_version": "23.0.3", "self": True, "address": "10.0.0.1", "role": "manager"},
    {"id": "35o6tiywb700jesrt3dmllaza", "hostname": "swarm-worker1", "status": "down", "availability": "drain",
     "manager_status": "", "engine_version": "23.0.3", "self": False, "address": "10.0.0.2", "role": "worker"},
]


def test_node_ls_fields_as_docker_documents_them() -> None:
    rows = [output.docker_node(r) for r in NODE_ROWS]
    # docker node ls --format "{{.ID}}: {{.Hostname}} {{.TLSStatus}}"
    assert render("{{.ID}}: {{.Hostname}} {{.TLSStatus}}", rows) == (
        "e216jshn25ckzbvmwlnh5jr3g: swarm-manager1 Ready\n35o6tiywb700jesrt3dmllaza: swarm-worker1 Ready\n")
    # docker node ls --format json (one object a line, keys sorted, Docker's capitalised values)
    first = render("{{json .}}", rows).splitlines()[0]
    assert first == ('{"Availability":"Active","EngineVersion":"23.0.3","Hostname":"swarm-manager1",'
                     '"ID":"e216jshn25ckzbvmwlnh5jr3g","ManagerStatus":"Leader","Self":true,"Status":"Ready",'
                     '"TLSStatus":"Ready"}')
    assert set(json.loads(first)) == set(output.NODE_FIELDS)
    table = render("table {{.ID}}\t{{.Hostname}}\t{{.Status}}\t{{.Availability}}\t{{.ManagerStatus}}"
                   "\t{{.EngineVersion}}", rows)
    assert table.splitlines() == [
        "ID                          HOSTNAME         STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION",
        "e216jshn25ckzbvmwlnh5jr3g   swarm-manager1   Ready     Active         Leader           23.0.3",
        "35o6tiywb700jesrt3dmllaza   swarm-worker1    Down      Drain                           23.0.3",
    ]


SERVICE_ROWS = [
    {"id": "0zmvwuiu3vuezgcjmp5bgqfx", "name": "redis", "mode": "replicated", "replicas": "10/10",
     "image": "redis:7", "ports": [{"target": 6379, "published": 6379, "protocol": "tcp", "mode": "ingress"}]},
    {"id": "fm6uf97exkul8d5hjkwmu8yq", "name": "top", "mode": "global", "replicas": "5/5", "image": "busybox",
     "ports": []},
]


def test_service_ls_fields_as_docker_documents_them() -> None:
    rows = [output.docker_service(r) for r in SERVICE_ROWS]
    # docker service ls --format "{{.ID}}: {{.Mode}} {{.Replicas}}"
    assert render("{{.ID}}: {{.Mode}} {{.Replicas}}", rows) == "0zmvwuiu3vue: replicated 10/10\nfm6uf97exkul: global 5/5\n"
    assert json.loads(render("{{json .}}", rows).splitlines()[0]) == {
        "ID": "0zmvwuiu3vue", "Name": "redis", "Mode": "replicated", "Replicas": "10/10", "Image": "redis:7",
        "Ports": "*:6379->6379/tcp"}
    assert render("table {{.ID}}\t{{.Name}}\t{{.Ports}}", rows).splitlines() == [
        "ID             NAME      PORTS",
        "0zmvwuiu3vue   redis     *:6379->6379/tcp",
        "fm6uf97exkul   top       ",
    ]
    assert output.docker_service(SERVICE_ROWS[0], trunc=False)["ID"] == SERVICE_ROWS[0]["id"]


def test_task_fields_as_docker_documents_them() -> None:
    now = time.time()
    rows = [{"id": "rutc9rk0gf3ptzl9lnomq2ykd", "name": "top.1", "image": "busybox", "node": "swarm-worker1",
             "desired_state": "running", "current_state": "running", "since": now - 120, "error": "",
             "message": "", "ports": [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "host"}]},
            {"id": "8v2nde1ux05pdz8hwc7lc46xy", "name": "top.2", "image": "busybox", "node": "",
             "desired_state": "running", "current_state": "pending", "since": now,
             "error": "", "message": "no suitable node (scheduling constraints not satisfied on 3 nodes)"}]
    docker = [output.docker_task(r) for r in rows]
    # docker service ps --format "{{.Name}}: {{.Image}}"
    assert render("{{.Name}}: {{.Image}}", docker) == "top.1: busybox\ntop.2: busybox\n"
    assert set(docker[0]) == set(output.TASK_FIELDS)
    assert docker[0]["ID"] == "rutc9rk0gf3p" and docker[0]["DesiredState"] == "Running"
    assert docker[0]["CurrentState"] == "Running 2 minutes ago" and docker[0]["Ports"] == "*:8080->80/tcp"
    assert docker[1]["Error"] == rows[1]["message"][:29] + "…" and len(docker[1]["Error"]) == 30
    untrunc = output.docker_task(rows[1], trunc=False)
    assert untrunc["ID"] == rows[1]["id"] and untrunc["Error"] == rows[1]["message"]


def test_stack_ls_fields_as_docker_documents_them() -> None:
    rows = [output.docker_stack({"name": "myapp", "services": 2}),
            output.docker_stack({"name": "vossibility-stack", "services": 6})]
    # docker stack ls --format "{{.Name}}: {{.Services}}"
    assert render("{{.Name}}: {{.Services}}", rows) == "myapp: 2\nvossibility-stack: 6\n"
    assert render("{{json .}}", rows[:1]) == '{"Name":"myapp","Orchestrator":"Swarm","Services":2}\n'


def test_functions_and_inspect_paths() -> None:
    obj = {"id": "x1", "spec": {"name": "web", "labels": {"com.example": "a"}, "container": {"image": "busybox"}},
           "tags": ["a", "b"], "ok": True}
    assert render("{{.ID}} {{.Spec.Name}} {{.Spec.Container.Image}}", [obj]) == "x1 web busybox\n"
    assert render('{{index .Spec.Labels "com.example"}}|{{join .Tags ","}}|{{.Tags}}|{{.Ok}}', [obj]) == "a|a,b|[a b]|true\n"
    assert render("{{upper .Spec.Name}} {{lower .ID}} {{title .Spec.Name}} {{truncate .Spec.Name 2}}|"
                  "{{pad .ID 1 2}}|", [obj]) == "WEB x1 Web we| x1  |\n"
    assert render("{{json .Spec.Labels}}", [obj]) == '{"com.example":"a"}\n'
    assert render("{{split .Spec.Name \"e\"}}", [obj]) == "[w b]\n"
    assert render("{{println .ID}}", [obj]) == "x1\n\n"
    assert render("{{- .ID -}}  ,  {{- .ID}}", [obj]) == "x1,x1\n"
    assert render("a\\tb\\n{{.ID}}", [obj]) == "a\tb\nx1\n"


@pytest.mark.parametrize("fmt, message", [
    ("{{.Foo}}", "can't evaluate field Foo"),
    ("{{.ID.x}}", "can't evaluate field x in .ID: not a mapping"),
    ("{{if .ID}}x{{end}}", "is not supported"),
    ("{{.ID | upper}}", "is not supported"),
    ("{{ __class__ }}", "is not a field"),
    ("{{.__class__}}", "can't evaluate field __class__"),
    ("{{ range .}}", "is not supported"),
    ("{{printf \"%s\" .ID}}", "function 'printf' not defined"),
    ("{{upper .ID 3}}", "upper takes 1 argument(s)"),
    ("{{truncate .ID x}}", "'x' in {{truncate .ID x}} is not a string or number"),
    ("{{", "unbalanced braces"),
    ("{{}}", "empty action"),
    ("{{ {{.ID}} }}", "is not a field"),
])
def test_templates_outside_the_subset_are_refused(fmt: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        render(fmt, [{"ID": "x"}])
    assert message in str(info.value)


def test_jinja_syntax_in_a_literal_is_printed_not_run() -> None:
    with pytest.raises(UsageError, match="is not a field"):
        render("{{ '{{' }}{{.ID}}", [{"ID": "x"}])
    assert render("{% for x in range(3) %}{# #} {{.ID}}", [{"ID": "x"}]) == "{% for x in range(3) %}{# #} x\n"


def test_print_rows_routes_formats(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": "abc", "name": "web"}]
    cols = [("ID", "id"), ("NAME", "name")]
    output.print_rows(rows, "table", cols)
    assert capsys.readouterr().out == "ID    NAME\nabc   web\n"
    output.print_rows(rows, "json", cols)
    assert json.loads(capsys.readouterr().out) == rows
    output.print_rows(rows, "{{.Name}}", cols, fields=lambda r: {"Name": r["name"]})
    assert capsys.readouterr().out == "web\n"
    output.print_rows(rows, "table", cols, quiet="id")
    assert capsys.readouterr().out == "abc\n"
    with pytest.raises(UsageError, match="table or json only"):
        output.print_rows(rows, "{{.Name}}", cols)


def test_pretty_service_and_node() -> None:
    svc = {"id": "svc1", "spec": {
        "name": "web", "mode": "replicated", "replicas": 2, "labels": {"tier": "front"},
        "constraints": ["node.role == worker"], "networks": [{"target": "front"}],
        "deploy": {"update_config": {"parallelism": 2, "order": "start-first"}},
        "container": {"image": "busybox", "command": ["sleep", "9"], "env": {"A": "1"},
                      "resources": {"limits": {"memory": 64 << 20}},
                      "options": {"ports": [{"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"}],
                                  "user": "nobody"}}}}
    text = output.pretty_service(svc)
    for line in ("ID:                   svc1", "Name:                 web", "Service Mode:         Replicated",
                 " Replicas:            2", " Constraints:         [node.role == worker]",
                 " Parallelism:         2", " Update order:        start-first", " Image:               busybox",
                 " Args:                sleep 9", " User:                nobody", "  Memory:             64MiB",
                 " PublishedPort = 8080", "  TargetPort = 80", "Networks:             front"):
        assert line in text.splitlines(), (line, text)
    node = {"id": "n1", "hostname": "h1", "status": "ready", "availability": "active", "addr": "10.0.0.1",
            "role": "manager", "manager_status": "leader", "platform": {"os": "linux", "arch": "x86_64"},
            "resources": {"nano_cpus": 2_000_000_000, "memory_bytes": 3 << 30}, "engine_version": "24.0"}
    text = output.pretty_node(node, self_id="n1")
    for line in ("ID:                   n1 *", "Hostname:             h1", " State:               Ready",
                 " Raft Status:         Reachable", " Leader:              Yes", " CPUs:                2",
                 " Memory:              3GiB", "Engine Version:       24.0", " Architecture:        x86_64"):
        assert line in text.splitlines(), (line, text)
