"""Docker's service create/update flags, parsed into pyswarm's service spec:
every flag's parse, the refusals by name, and update's add/rm semantics."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import pytest

from pyswarm import service_flags as sf
from pyswarm.errors import UsageError
from pyswarm.models import ServiceSpec


class _Exit(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _Exit(message)


def create(line: str) -> ServiceSpec:
    p = _Parser()
    sf.add_create_flags(p)
    return sf.create_spec(p.parse_args(shlex.split(line)))


def update(spec: ServiceSpec, line: str) -> ServiceSpec:
    p = _Parser()
    sf.add_update_flags(p)
    return sf.update_spec(spec, p.parse_args(shlex.split(line) + ["svc"]))


EVERYTHING = (
    "--name web --replicas 2 -e A=1 --env B=2 -l tier=front --container-label c=1 "
    "-p 8080:80 -p published=9090,target=90,protocol=udp,mode=host "
    "--mount type=bind,source=/tmp,target=/data,readonly "
    "--mount type=tmpfs,target=/cache,tmpfs-size=64m,tmpfs-mode=1770 "
    "--mount type=volume,source=vol1,target=/v,volume-label=a=b,volume-driver=local,volume-opt=o=p,volume-nocopy "
    "--network front --network name=back,alias=api "
    "--constraint node.role==worker --placement-pref spread=node.labels.zone --replicas-max-per-node 1 "
    "--limit-cpu 0.5 --limit-memory 64M --limit-pids 50 --reserve-cpu 0.1 --reserve-memory 16m "
    "--restart-condition on-failure --restart-delay 5s --restart-max-attempts 3 --restart-window 1m "
    "--update-parallelism 2 --update-delay 10s --update-order start-first --update-failure-action rollback "
    "--update-monitor 3s --update-max-failure-ratio 0.2 "
    "--rollback-parallelism 1 --rollback-delay 1s --rollback-order stop-first --rollback-failure-action pause "
    "--rollback-monitor 2s --rollback-max-failure-ratio 0.5 "
    "--health-cmd 'test -e /tmp' --health-interval 5s --health-retries 2 --health-timeout 2s "
    "--health-start-period 1s --health-start-interval 1s "
    "--secret s1 --secret source=s2,target=t2,uid=1,gid=2,mode=0400 --config source=c1,target=/etc/c1 "
    "--user nobody --workdir /tmp --entrypoint 'sh -c' --hostname hh "
    "--dns 1.1.1.1 --dns-search x.y --dns-option ndots:2 --host h1:1.2.3.4 "
    "--cap-add net_admin --cap-drop mknod --sysctl net.ipv4.ip_forward=1 --ulimit nofile=1024:2048 "
    "--init --read-only -t --stop-grace-period 3s --stop-signal SIGINT --endpoint-mode dnsrr "
    "--log-driver json-file --log-opt max-size=1m "
    "busybox sleep 100"
)


def test_every_create_flag_lands_in_the_spec() -> None:
    spec = create(EVERYTHING)
    c, o, d = spec.container, spec.container.options, spec.deploy
    assert (spec.name, spec.stack, spec.mode, spec.replicas) == ("web", "", "replicated", 2)
    assert c.image == "busybox" and c.command == ["sleep", "100"] and c.entrypoint == ["sh", "-c"]
    assert c.env == {"A": "1", "B": "2"} and c.labels == {"c": "1"} and spec.labels == {"tier": "front"}
    assert o["ports"] == [
        {"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"},
        {"target": 90, "published": 9090, "protocol": "udp", "mode": "host"},
    ]
    assert o["volumes"][0] == {"type": "bind", "source": "/tmp", "target": "/data", "read_only": True}
    assert o["volumes"][1] == {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": 64 << 20, "mode": 0o1770}}
    assert o["volumes"][2] == {"type": "volume", "source": "vol1", "target": "/v", "volume": {
        "nocopy": True, "labels": {"a": "b"}, "driver": "local", "driver_opts": {"o": "p"}}}
    assert spec.networks == [{"target": "front", "aliases": []}, {"target": "back", "aliases": ["api"]}]
    assert spec.constraints == ["node.role == worker"] and spec.max_replicas_per_node == 1
    assert d["placement"]["preferences"] == [{"spread": "node.labels.zone"}]
    assert c.resources == {"limits": {"cpus": 0.5, "memory": 64 << 20, "pids": 50},
                           "reservations": {"cpus": 0.1, "memory": 16 << 20}}
    assert spec.reservations.nano_cpus == 100_000_000 and spec.reservations.memory_bytes == 16 << 20
    assert spec.restart_condition == "on-failure"
    assert d["restart_policy"] == {"condition": "on-failure", "delay": "5s", "window": "1m", "max_attempts": 3}
    assert d["update_config"] == {"parallelism": 2, "delay": "10s", "monitor": "3s", "max_failure_ratio": 0.2,
                                  "order": "start-first", "failure_action": "rollback"}
    assert d["rollback_config"] == {"parallelism": 1, "delay": "1s", "monitor": "2s", "max_failure_ratio": 0.5,
                                    "order": "stop-first", "failure_action": "pause"}
    assert o["healthcheck"] == {"test": ["CMD-SHELL", "test -e /tmp"], "interval": "5s", "timeout": "2s",
                                "start_period": "1s", "start_interval": "1s", "retries": 2}
    assert o["secrets"] == [{"source": "s1", "name": "s1"},
                            {"source": "s2", "target": "t2", "uid": "1", "gid": "2", "mode": 0o400, "name": "s2"}]
    assert o["configs"] == [{"source": "c1", "target": "/etc/c1", "name": "c1"}]
    assert (o["user"], o["working_dir"], o["hostname"]) == ("nobody", "/tmp", "hh")
    assert (o["dns"], o["dns_search"], o["dns_opt"]) == (["1.1.1.1"], ["x.y"], ["ndots:2"])
    assert o["extra_hosts"] == {"h1": "1.2.3.4"}
    assert (o["cap_add"], o["cap_drop"]) == (["NET_ADMIN"], ["MKNOD"])
    assert o["sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert o["ulimits"] == {"nofile": {"soft": 1024, "hard": 2048}}
    assert o["init"] is o["read_only"] is o["tty"] is True
    assert (o["stop_grace_period"], o["stop_signal"]) == ("3s", "SIGINT")
    assert d["endpoint_mode"] == "dnsrr"
    assert o["logging"] == {"driver": "json-file", "options": {"max-size": "1m"}}


def test_spec_round_trips_like_a_stack_service() -> None:
    spec = create(EVERYTHING)
    assert ServiceSpec.from_dict(spec.to_dict()) == spec
    # an update with no flag changes nothing
    assert update(spec, "").to_dict() == spec.to_dict()


def test_defaults_and_global_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = create("busybox")
    assert spec.name.startswith("busybox_") and len(spec.name) == len("busybox_") + 5
    assert spec.replicas == 1 and spec.deploy == {"mode": "replicated"} and spec.container.options == {}
    assert create("--mode global registry.local:5000/team/app:1.2").name.startswith("app_")
    with pytest.raises(UsageError, match="--replicas can only be used with replicated mode"):
        create("--mode global --replicas 2 busybox")
    env = tmp_path / "env"
    env.write_text("X=1\nY=2\n")
    monkeypatch.setenv("FROM_SHELL", "yes")
    spec = create(f"--env-file {env} -e Y=3 -e FROM_SHELL -e UNSET_HERE busybox")
    assert spec.container.env == {"X": "1", "Y": "3", "FROM_SHELL": "yes"}


def test_no_healthcheck() -> None:
    assert create("--no-healthcheck busybox").container.options["healthcheck"] == {"test": ["NONE"]}
    with pytest.raises(UsageError, match="--no-healthcheck conflicts"):
        create("--no-healthcheck --health-cmd true busybox")


@pytest.mark.parametrize("line, message", [
    ("-p 80:abc busybox", "invalid --publish '80:abc': not a port number"),
    ("-p published=1,target=2,color=red busybox", "unknown field 'color'"),
    ("-p 99999 busybox", "ports are 1-65535"),
    ("--mount type=bind,target=/x busybox", "a bind mount needs a `source`"),
    ("--mount source=v busybox", "a mount needs a target"),
    ("--mount type=nfs,target=/x busybox", "expected one of volume, bind"),
    ("--mount type=volume,target=/x,bogus=1 busybox", "unknown field 'bogus'"),
    ("--mount type=tmpfs,source=a,target=/x busybox", "a tmpfs mount has no source"),
    ("--mount type=bind,source=/a,target=/x,volume-nocopy busybox", "volume-* fields need type=volume"),
    ("--restart-delay soon busybox", "invalid --restart-delay 'soon': expected a duration"),
    ("--update-delay=-5s busybox", "a duration cannot be negative"),
    ("--limit-memory lots busybox", "invalid --limit-memory 'lots'"),
    ("--limit-cpu -1 busybox", "invalid --limit-cpu '-1'"),
    ("--update-max-failure-ratio 2 busybox", "between 0 and 1"),
    ("--constraint node.colour==red busybox", "unknown constraint key 'node.colour'"),
    ("--constraint oops busybox", "expected KEY==VALUE"),
    ("--placement-pref pack=node.id busybox", "expected spread=KEY"),
    ("--placement-pref spread=node.colour busybox", "invalid --placement-pref 'spread=node.colour'"),
    ("--ulimit nofile busybox", "expected NAME=SOFT"),
    ("--ulimit nofile=10:5 busybox", "soft limit 10 is above hard limit 5"),
    ("--sysctl nope busybox", "invalid --sysctl 'nope': expected KEY=VALUE"),
    ("--host nohost busybox", "expected HOST=IP or HOST:IP"),
    ("--secret source=s,mode=rw busybox", "mode must be an octal mode"),
    ("--secret target=t busybox", "source is required"),
    ("--stop-signal 'NOT A SIGNAL' busybox", "expected a signal"),
    ("--replicas -1 busybox", "--replicas -1: must be 0 or more"),
    ("--name 'bad name' busybox", "invalid --name 'bad name'"),
    ("--network name=,alias=x busybox", "no network name"),
    ("'bad image'", "not an image reference"),
    ("--entrypoint \"'unclosed\" busybox", "cannot split into words"),
])
def test_bad_values_name_the_flag(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=None) as info:
        create(line)
    assert message in str(info.value)


@pytest.mark.parametrize("flag, value", sf.REFUSED_CREATE)
def test_docker_create_flags_pyswarm_lacks_are_refused_by_name(flag: str, value: bool) -> None:
    with pytest.raises(_Exit, match=f"^pyswarm does not support {flag}$"):
        create(f"{flag} {'x' if value else ''} busybox")


@pytest.mark.parametrize("flag, value", sf.REFUSED_UPDATE)
def test_docker_update_flags_pyswarm_lacks_are_refused_by_name(flag: str, value: bool) -> None:
    with pytest.raises(_Exit, match=f"^pyswarm does not support {flag}$"):
        update(create("busybox"), f"{flag} {'x' if value else ''}")


def test_unknown_flag_is_an_error() -> None:
    with pytest.raises(_Exit, match="unrecognized arguments: --colour"):
        create("--colour red busybox")


def test_flags_after_the_image_belong_to_the_command() -> None:
    spec = create("busybox sh -c 'echo hi' --replicas 3")
    assert spec.container.command == ["sh", "-c", "echo hi", "--replicas", "3"] and spec.replicas == 1


def test_update_removes_then_adds() -> None:
    spec = create(EVERYTHING)
    new = update(spec, (
        "--env-rm A --env-add B=9 --env-add C=3 --label-rm tier --label-add x=y "
        "--container-label-rm c --container-label-add d=4 "
        "--publish-rm 80 --publish-rm 90/udp --publish-add 8081:81 --publish-add published=9091,target=90,protocol=udp,mode=host "
        "--mount-rm /data --mount-add type=volume,source=v2,target=/w "
        "--network-rm front --network-add extra "
        "--constraint-rm node.role==worker --constraint-add node.labels.zone==eu "
        "--placement-pref-rm spread=node.labels.zone --placement-pref-add spread=node.id "
        "--secret-rm s1 --secret-add s3 --config-rm c1 --config-add source=c2,target=/c2 "
        "--dns-rm 1.1.1.1 --dns-add 9.9.9.9 --dns-search-add a.b --dns-option-rm ndots:2 --dns-option-add debug "
        "--host-rm h1 --host-add h2:5.6.7.8 --sysctl-rm net.ipv4.ip_forward --sysctl-add net.core.somaxconn=512 "
        "--ulimit-rm nofile --ulimit-add nproc=10 --cap-add mknod --cap-drop net_admin "
        "--image busybox:2 --args 'sleep 5' --replicas 4 --limit-memory 0 --limit-cpu 1 "
        "--health-retries 5 --restart-condition any --update-parallelism 0 --user root --hostname '' "
        "--stop-grace-period 1s"
    ))
    c, o = new.container, new.container.options
    assert c.env == {"B": "9", "C": "3"} and new.labels == {"x": "y"} and c.labels == {"d": "4"}
    assert [(p["target"], p.get("published")) for p in o["ports"]] == [(81, 8081), (90, 9091)]
    assert [m["target"] for m in o["volumes"]] == ["/cache", "/v", "/w"]
    assert [n["target"] for n in new.networks] == ["back", "extra"]
    assert new.constraints == ["node.labels.zone == eu"]
    assert new.deploy["placement"]["preferences"] == [{"spread": "node.id"}]
    assert [s["name"] for s in o["secrets"]] == ["s2", "s3"] and [x["name"] for x in o["configs"]] == ["c2"]
    assert o["dns"] == ["9.9.9.9"] and o["dns_search"] == ["x.y", "a.b"] and o["dns_opt"] == ["debug"]
    assert o["extra_hosts"] == {"h2": "5.6.7.8"} and o["sysctls"] == {"net.core.somaxconn": "512"}
    assert o["ulimits"] == {"nproc": {"soft": 10, "hard": 10}}
    assert o["cap_add"] == ["MKNOD"] and o["cap_drop"] == ["NET_ADMIN"]
    assert c.image == "busybox:2" and c.command == ["sleep", "5"] and new.replicas == 4
    assert c.resources["limits"] == {"cpus": 1.0, "pids": 50}
    assert o["healthcheck"]["retries"] == 5 and o["healthcheck"]["test"] == ["CMD-SHELL", "test -e /tmp"]
    assert new.restart_condition == "any" and new.deploy["update_config"]["parallelism"] == 0
    assert o["user"] == "root" and "hostname" not in o and o["stop_grace_period"] == "1s"
    assert (new.name, new.stack, new.mode) == (spec.name, spec.stack, spec.mode)


def test_update_keeps_a_stack_service_as_it_is(tmp_path: Path) -> None:
    from pyswarm.compose import load_stack

    stack_file = tmp_path / "stack.yml"
    stack_file.write_text("services:\n  web:\n    image: busybox\n    ports: ['80:80']\n"
                          "    deploy:\n      replicas: 2\n      update_config: {parallelism: 1}\n")
    spec = load_stack([stack_file], "demo").services[0]
    spec.networks = [{"target": "demo_default", "aliases": []}]
    spec.replicas = 5  # scaled since the deploy
    same = update(spec, "")
    assert same.to_dict() == spec.to_dict()
    changed = update(spec, "--env-add A=1")
    assert changed.name == "demo_web" and changed.stack == "demo" and changed.replicas == 5
    assert changed.networks == spec.networks and changed.container.env == {"A": "1"}


def test_update_global_refuses_replicas() -> None:
    with pytest.raises(UsageError, match="--replicas can only be used with replicated mode"):
        update(create("--mode global busybox"), "--replicas 3")


def test_no_healthcheck_then_health_cmd_on_update() -> None:
    spec = update(create("--no-healthcheck busybox"), "--health-cmd true")
    assert spec.container.options["healthcheck"] == {"test": ["CMD-SHELL", "true"]}
