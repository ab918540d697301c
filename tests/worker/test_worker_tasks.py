"""The agent's pure decisions: reconcile plan, container config, observed state."""

from __future__ import annotations

import pytest

from pyswarm import protocol
from pyswarm.models import ContainerSpec, TaskState
from pyswarm.worker.tasks import (
    Assignment,
    ExistingContainer,
    container_config,
    container_ip,
    observe,
    plan_reconcile,
)


def assignment(task_id: str, slot: int = 1, **kw: object) -> Assignment:
    data = {"task_id": task_id, "service_id": "s1", "service_name": "demo_web", "stack": "demo",
            "slot": slot, "node_id": "n1", "spec": {"image": "busybox:latest"},
            "dns_search": ["demo.pyswarm"], **kw}
    return Assignment.parse(data)


def container(cid: str, task_id: str, state: str = "running", created: int = 100) -> ExistingContainer:
    return ExistingContainer(id=cid, task_id=task_id, name=f"x.{task_id}", state=state, created=created)


def test_plan_creates_adopts_and_removes() -> None:
    plan = plan_reconcile(
        [assignment("a"), assignment("b"), assignment("c")],
        [container("1", "b"), container("2", "c", "exited"), container("3", "gone")],
    )
    assert [a.task_id for a in plan.create] == ["a"]
    assert [(a.task_id, c.id) for a, c in plan.adopt] == [("b", "1"), ("c", "2")]
    assert [c.id for c in plan.remove] == ["3"]


def test_plan_empty_assignment_removes_everything() -> None:
    plan = plan_reconcile([], [container("1", "a"), container("2", "b", "exited")])
    assert not plan.create and not plan.adopt
    assert sorted(c.id for c in plan.remove) == ["1", "2"]


def test_plan_keeps_the_best_of_duplicate_containers() -> None:
    # live beats created beats exited; among equals the newest wins
    existing = [container("old", "a", "exited", 1), container("live", "a", "running", 2),
                container("made", "a", "created", 3)]
    plan = plan_reconcile([assignment("a")], existing)
    assert [(a.task_id, c.id) for a, c in plan.adopt] == [("a", "live")]
    assert sorted(c.id for c in plan.remove) == ["made", "old"]
    plan = plan_reconcile([assignment("a")], [container("x", "a", "exited", 1), container("y", "a", "exited", 5)])
    assert plan.adopt[0][1].id == "y"


def test_plan_keeps_the_container_with_the_tasks_own_name_over_a_newer_twin() -> None:
    own = ExistingContainer(id="own", task_id="a", name="demo_web.1.a", state="running", created=1)
    twin = ExistingContainer(id="twin", task_id="a", name="hand_made", state="running", created=9)
    plan = plan_reconcile([assignment("a")], [twin, own])
    assert [c.id for _, c in plan.adopt] == ["own"] and [c.id for c in plan.remove] == ["twin"]
    # a live twin still beats an exited own container
    dead = ExistingContainer(id="own", task_id="a", name="demo_web.1.a", state="exited", created=1)
    assert [c.id for _, c in plan_reconcile([assignment("a")], [dead, twin]).adopt] == ["twin"]


def test_plan_ignores_repeated_assignments_and_unlabelled_containers() -> None:
    plan = plan_reconcile([assignment("a"), assignment("a")], [container("1", "")])
    assert [a.task_id for a in plan.create] == ["a"]
    assert plan.remove == []


def test_existing_container_from_list_entry() -> None:
    c = ExistingContainer.from_api({"Id": "abc", "Names": ["/demo_web.1.t"], "State": "exited",
                                    "Labels": {protocol.LABEL_TASK_ID: "t"}, "Created": 7})
    assert c == ExistingContainer("abc", "t", "demo_web.1.t", "exited", 7)


def test_assignment_parse_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="task_id"):
        Assignment.parse({"spec": {"image": "x"}})
    with pytest.raises(ValueError, match="spec.image"):
        Assignment.parse({"task_id": "t", "spec": {}})
    with pytest.raises(ValueError, match="not an object"):
        Assignment.parse(["t"])


def test_container_name_like_swarm() -> None:
    assert assignment("t1", slot=3).container_name == "demo_web.3.t1"
    assert assignment("t1", slot=0).container_name == "demo_web.n1.t1"  # global service
    assert assignment("t1", service_name="we b/x").container_name == "we_b_x.1.t1"


def test_container_config() -> None:
    a = assignment("t1", spec=ContainerSpec(image="img:1", command=["httpd", "-f"], entrypoint=None,
                                            env={"A": "1"}, labels={"x": "y", protocol.LABEL_TASK_ID: "spoof"}).to_dict())
    cfg = container_config(a, ["10.0.0.1"])
    assert cfg["Image"] == "img:1"
    assert cfg["Cmd"] == ["httpd", "-f"]
    assert "Entrypoint" not in cfg  # the image's own entrypoint
    assert cfg["Env"] == ["A=1"]
    assert cfg["Labels"] == {
        "x": "y", protocol.LABEL_TASK_ID: "t1", protocol.LABEL_SERVICE_ID: "s1",
        protocol.LABEL_SERVICE_NAME: "demo_web", protocol.LABEL_SLOT: "1", protocol.LABEL_NODE_ID: "n1",
        protocol.LABEL_STACK: "demo",
    }
    host = cfg["HostConfig"]
    assert host["NetworkMode"] == protocol.NETWORK_NAME
    assert host["Dns"] == ["10.0.0.1"] and host["DnsSearch"] == ["demo.pyswarm"]
    assert host["RestartPolicy"] == {"Name": "no"}
    assert cfg["NetworkingConfig"] == {"EndpointsConfig": {protocol.NETWORK_NAME: {}}}


def test_container_config_without_stack_and_with_entrypoint() -> None:
    a = assignment("t1", stack="", spec={"image": "i", "entrypoint": ["/bin/sh", "-c"]})
    cfg = container_config(a, [])
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"] and "Cmd" not in cfg
    assert protocol.LABEL_STACK not in cfg["Labels"]


def _inspect(status: str, code: int = 0, oom: bool = False, nets: dict[str, object] | None = None) -> dict[str, object]:
    return {"Id": "cid", "State": {"Status": status, "ExitCode": code, "Error": "", "OOMKilled": oom},
            "NetworkSettings": {"Networks": nets if nets is not None else {"pyswarm": {"IPAddress": "10.240.1.5"}}}}


def test_observe_states() -> None:
    running = observe(_inspect("running"))
    assert running is not None and running.state == TaskState.RUNNING and running.ip == "10.240.1.5"
    done = observe(_inspect("exited", 0))
    assert done is not None and done.state == TaskState.COMPLETE and done.exit_code == 0
    failed = observe(_inspect("exited", 137))
    assert failed is not None and failed.state == TaskState.FAILED and failed.exit_code == 137
    assert failed.error == "task: non-zero exit (137)"
    oom = observe(_inspect("exited", 137, oom=True))
    assert oom is not None and "out of memory" in oom.error
    dead = observe(_inspect("dead", 0))
    assert dead is not None and dead.state == TaskState.FAILED
    assert observe(_inspect("created")) is None
    assert observe(_inspect("removing")) is None


def test_container_ip_falls_back_to_any_network() -> None:
    assert container_ip(_inspect("running", nets={"bridge": {"IPAddress": "172.17.0.2"}})) == "172.17.0.2"
    assert container_ip(_inspect("running", nets={})) == ""
