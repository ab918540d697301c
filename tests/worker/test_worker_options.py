"""Stack-file keys to the Engine API create body, from a real stack file
through the real loader, and the task files (secrets, configs, binds)."""

from __future__ import annotations

import base64
import json
import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_worker_agent import CONFIGURE, Session, run, task
from worker_fakes import FakeDocker

from pyswarm.compose import load_stack
from pyswarm.models import ContainerSpec
from pyswarm.worker.files import (
    TaskFilesError,
    make_bind_sources,
    remove_task_files,
    write_task_files,
)
from pyswarm.worker.options import LABEL_STOP_GRACE, stop_grace_seconds
from pyswarm.worker.tasks import Assignment, ExistingContainer, container_config

STACK = """
services:
  web:
    image: busybox
    user: "1000:1000"
    working_dir: /srv
    hostname: web-host
    stop_signal: SIGQUIT
    stop_grace_period: 1m30s
    stdin_open: true
    tty: true
    init: true
    read_only: true
    cap_add: [net_admin]
    cap_drop: [ALL]
    sysctls: {net.core.somaxconn: 1024}
    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 64}
    tmpfs: [/run, "/tmp:size=64m"]
    extra_hosts: ["db.local:10.0.0.5", "cache.local=10.0.0.6"]
    dns: [9.9.9.9]
    dns_search: [corp.example]
    dns_opt: [ndots:2]
    labels: {tier: front}
    logging: {driver: json-file, options: {max-size: 10m}}
    volumes:
      - data:/var/lib/data
      - ./conf:/etc/conf:ro
      - type: tmpfs
        target: /cache
        tmpfs: {size: 1m, mode: 0o1777}
      - type: volume
        source: logs
        target: /logs
        read_only: true
        volume: {nocopy: true}
      - /anon
      - type: bind
        source: /srv/shared
        target: /shared
        bind: {propagation: rshared}
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 64m, pids: 100}
        reservations: {memory: 16m}
volumes:
  data: {driver: local, driver_opts: {type: tmpfs, device: tmpfs}, labels: {keep: "yes"}}
  logs: {external: true, name: shared-logs}
"""


@pytest.fixture
def body(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "compose.yml"
    path.write_text(textwrap.dedent(STACK))
    spec = load_stack([path], "demo", {}).services[0]
    a = Assignment.parse({"task_id": "t1", "service_name": spec.name, "stack": "demo", "slot": 1,
                          "node_id": "n1", "spec": spec.container.to_dict(), "dns_search": ["demo.pyswarm"]})
    files = [{"Type": "bind", "Source": "/run/pyswarm/tasks/t1/secret-0", "Target": "/run/secrets/pw",
              "ReadOnly": True}]
    return container_config(a, ["10.0.0.1"], files)


def test_container_level_keys(body: dict[str, Any]) -> None:
    assert body["User"] == "1000:1000"
    assert body["WorkingDir"] == "/srv"
    assert body["Hostname"] == "web-host"
    assert body["StopSignal"] == "SIGQUIT"
    assert body["StopTimeout"] == 90
    assert body["Labels"][LABEL_STOP_GRACE] == "90"
    assert body["OpenStdin"] is True and body["Tty"] is True
    assert body["Labels"]["tier"] == "front"


def test_host_config_keys(body: dict[str, Any]) -> None:
    host = body["HostConfig"]
    assert host["Init"] is True and host["ReadonlyRootfs"] is True
    assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["ALL"]
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert sorted(host["Ulimits"], key=lambda u: u["Name"]) == [
        {"Name": "nofile", "Soft": 1024, "Hard": 2048}, {"Name": "nproc", "Soft": 64, "Hard": 64}]
    assert host["Tmpfs"] == {"/run": "", "/tmp": "size=64m"}
    assert host["ExtraHosts"] == ["db.local:10.0.0.5", "cache.local:10.0.0.6"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m"}}
    assert host["DnsOptions"] == ["ndots:2"]


def test_dns_is_merged_after_the_clusters(body: dict[str, Any]) -> None:
    assert body["HostConfig"]["Dns"] == ["10.0.0.1", "9.9.9.9"]
    assert body["HostConfig"]["DnsSearch"] == ["demo.pyswarm", "corp.example"]


def test_resource_limits(body: dict[str, Any]) -> None:
    host = body["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["PidsLimit"] == 100
    assert host["MemoryReservation"] == 16 * 1024 * 1024


def test_mounts(body: dict[str, Any], tmp_path: Path) -> None:
    mounts = body["HostConfig"]["Mounts"]
    assert mounts[0] == {"Type": "volume", "Source": "demo_data", "Target": "/var/lib/data",
                         "VolumeOptions": {"Labels": {"keep": "yes", "com.docker.stack.namespace": "demo"},
                                           "DriverConfig": {"Name": "local",
                                                            "Options": {"type": "tmpfs", "device": "tmpfs"}}}}
    assert mounts[1] == {"Type": "bind", "Source": str(tmp_path / "conf"), "Target": "/etc/conf", "ReadOnly": True}
    assert mounts[2] == {"Type": "tmpfs", "Target": "/cache", "TmpfsOptions": {"SizeBytes": 1024 * 1024, "Mode": 0o1777}}
    # an external volume keeps its name and gets no driver/labels of ours
    assert mounts[3] == {"Type": "volume", "Source": "shared-logs", "Target": "/logs", "ReadOnly": True,
                         "VolumeOptions": {"NoCopy": True}}
    assert mounts[4] == {"Type": "volume", "Target": "/anon"}  # anonymous
    assert mounts[5] == {"Type": "bind", "Source": "/srv/shared", "Target": "/shared",
                         "BindOptions": {"Propagation": "rshared"}}
    assert mounts[6]["Target"] == "/run/secrets/pw" and mounts[6]["ReadOnly"] is True


def test_no_options_leave_the_body_as_it_was() -> None:
    a = Assignment.parse({"task_id": "t", "spec": {"image": "busybox"}})
    host = container_config(a, ["10.0.0.1"])["HostConfig"]
    assert set(host) == {"NetworkMode", "Dns", "DnsSearch", "RestartPolicy"}


def test_stop_grace_is_read_back_from_the_label() -> None:
    c = ExistingContainer.from_api({"Id": "c1", "Labels": {"pyswarm.task.id": "t", LABEL_STOP_GRACE: "90"}})
    assert c.stop_grace == 90
    assert ExistingContainer.from_api({"Id": "c2", "Labels": {"pyswarm.task.id": "t"}}).stop_grace is None
    assert stop_grace_seconds(ContainerSpec(image="x", options={"stop_grace_period": "500ms"})) == 1


def _file(name: str, data: bytes, target: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "target": target, "data": base64.b64encode(data).decode(), **kw}


def test_task_files_are_root_only_with_owner_and_mode(tmp_path: Path) -> None:
    root = tmp_path / "tasks"
    mounts = write_task_files(root, "t1", {
        "secrets": [_file("demo_pw", b"s3cret\n", "/run/secrets/pw", uid="1000", gid="1001", mode=0o400)],
        "configs": [_file("demo_conf", b"a=1\n", "/etc/app.conf")],
    })
    assert [(m["Target"], m["ReadOnly"], m["Type"]) for m in mounts] == [
        ("/run/secrets/pw", True, "bind"), ("/etc/app.conf", True, "bind")]
    secret, config = Path(mounts[0]["Source"]), Path(mounts[1]["Source"])
    assert secret.read_bytes() == b"s3cret\n" and config.read_bytes() == b"a=1\n"
    st = secret.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o400) if os.geteuid() == 0 \
        else stat.S_IMODE(st.st_mode) == 0o400
    assert stat.S_IMODE(config.stat().st_mode) == 0o444
    assert stat.S_IMODE((root / "t1").stat().st_mode) == 0o700
    remove_task_files(root, "t1")
    assert not (root / "t1").exists()
    remove_task_files(root, "t1")  # quiet when gone


def test_task_files_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskFilesError, match="uid must be numeric"):
        write_task_files(tmp_path, "t1", {"secrets": [_file("pw", b"x", "/run/secrets/pw", uid="www")]})
    with pytest.raises(TaskFilesError, match="not an absolute path"):
        write_task_files(tmp_path, "t1", {"configs": [_file("c", b"x", "etc/c")]})
    with pytest.raises(TaskFilesError, match="bad task id"):
        write_task_files(tmp_path, "../x", {"configs": [_file("c", b"x", "/c")]})
    assert write_task_files(tmp_path, "t2", {}) == [] and not (tmp_path / "t2").exists()


def test_missing_bind_sources_are_made_when_allowed(tmp_path: Path) -> None:
    made, kept = tmp_path / "made", tmp_path / "kept"
    make_bind_sources(ContainerSpec(image="x", options={"volumes": [
        {"type": "bind", "source": str(made), "target": "/a", "bind": {"create_host_path": True}},
        {"type": "bind", "source": str(kept), "target": "/b"},
    ]}))
    assert made.is_dir() and not kept.exists()


def test_assignment_repr_hides_secret_data() -> None:
    a = Assignment.parse({"task_id": "t", "spec": {"image": "x"},
                          "secrets": [_file("pw", b"hunter2", "/run/secrets/pw")]})
    assert "aHVudGVyMg" not in repr(a) and "hunter2" not in repr(a)
    with pytest.raises(ValueError) as info:
        Assignment.parse({"spec": {"image": "x"}, "secrets": [_file("pw", b"hunter2", "/run/secrets/pw")]})
    assert "aHVudGVyMg" not in str(info.value)


class _GraceDocker(FakeDocker):
    """Records the stop timeout the agent asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.stop_timeouts: list[int] = []

    async def stop_container(self, cid: str, timeout: int = 10) -> None:
        self.stop_timeouts.append(timeout)
        await super().stop_container(cid, timeout)


def test_agent_mounts_secrets_and_honours_stop_grace(tmp_path: Path) -> None:
    """Through the agent: the secret's file is written before create and
    mounted read-only; removing the task uses the service's grace period and
    deletes the file."""
    async def main() -> None:
        docker = _GraceDocker()
        async with Session(docker) as s:
            s.agent.files_root = str(tmp_path)
            t = task("t1")
            t["spec"]["options"] = {"stop_grace_period": "3s"}
            t["secrets"] = [_file("demo_pw", b"hunter2", "/run/secrets/pw", mode=0o400)]
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [t]})
            await s.wait_for("running", lambda: "running" in s.statuses("t1"))
            mounts = docker.by_task("t1")[0]["Config"]["HostConfig"]["Mounts"]
            assert mounts == [{"Type": "bind", "Source": str(tmp_path / "t1" / "secret-0"),
                               "Target": "/run/secrets/pw", "ReadOnly": True}]
            assert (tmp_path / "t1" / "secret-0").read_bytes() == b"hunter2"
            s.send({"op": "assign", "tasks": []})
            await s.wait_for("shutdown", lambda: "shutdown" in s.statuses("t1"))
            assert docker.stop_timeouts == [3]
            assert not (tmp_path / "t1").exists(), "the secret outlived its container"
            assert all("hunter2" not in json.dumps(m) and "aHVudGVyMg" not in json.dumps(m) for m in s.out)
    run(main())


def test_agent_rejects_a_task_whose_files_cannot_be_made(tmp_path: Path) -> None:
    async def main() -> None:
        docker = FakeDocker()
        async with Session(docker) as s:
            s.agent.files_root = str(tmp_path)
            t = task("t1")
            t["secrets"] = [_file("demo_pw", b"x", "/run/secrets/pw", uid="www-data")]
            s.send(CONFIGURE)
            s.send({"op": "assign", "tasks": [t]})
            await s.wait_for("rejected", lambda: "rejected" in s.statuses("t1"))
            msg = [m for m in s.out if m.get("state") == "rejected"][0]
            assert "uid must be numeric" in msg["error"] and "node1" in msg["error"]
            assert not docker.containers
    run(main())
