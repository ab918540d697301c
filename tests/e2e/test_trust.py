"""Issue 10 on the session lab (1 manager + 3 workers): what crosses a trust
boundary is checked before it acts.

- A node's agent session that reports on another node's task is refused:
  the task stays running with its address, in the store and in DNS.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from support import cli, cli_json, deployed_stacks, running, wait_for

pytestmark = pytest.mark.e2e

IMAGE = "pyswarm-lab/busybox:latest"
STACK = "e2etrust"
VICTIM_FILE = f"""
services:
  victim:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy: {{placement: {{constraints: ["node.hostname==worker1"]}}}}
"""

# plays the agent for the dispatcher's session to worker2: the real agent as
# a child, with one forged line in its stream right after its hello
FORGER = r'''
import json, os, subprocess, sys, threading
child = subprocess.Popen([os.environ["FORGE_PYSWARM"], "worker", "--stdio"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def down():
    for line in sys.stdin.buffer:
        child.stdin.write(line)
        child.stdin.flush()
    child.stdin.close()
threading.Thread(target=down, daemon=True).start()
out, forged = sys.stdout.buffer, False
for line in child.stdout:
    out.write(line)
    out.flush()
    if not forged and b'"op":"hello"' in line:
        out.write(json.dumps({"op": "status", "task_id": os.environ["FORGE_TASK"], "state": "failed",
                              "ip": os.environ["FORGE_IP"], "container_id": "forged",
                              "error": "forged by worker2"}).encode() + b"\n")
        out.flush()
        forged = True
        open(os.environ["FORGE_MARK"], "w").write("sent\n")
child.wait()
'''


def dns_a(server: str, name: str) -> list[str]:
    answer = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), server, timeout=2)
    return sorted(item.address for rrset in answer.answer for item in rrset)


def host_pids(lab: Any, host: str, *words: str) -> list[int]:
    return list(lab.host_pids(host, *words))


def end_agent_sessions(lab: Any, host: str, *words: str) -> None:
    """Stop ``host``'s agent processes (the dispatcher reconnects at once)."""
    for pid in host_pids(lab, host, *words):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def node_ready(lab: Any, hostname: str) -> bool:
    return any(n["hostname"] == hostname and n["status"] == "ready" for n in cli_json(lab, "node", "ls"))


def test_a_forged_report_from_another_nodes_session_is_refused(lab: Any, tmp_path: Path) -> None:
    manager = lab.managers[0]
    server = lab.hosts[manager]
    forger = lab.workers[1]  # worker2; the victim runs on worker1
    with deployed_stacks(lab, tmp_path) as deploy:
        deploy(STACK, VICTIM_FILE)
        [task] = wait_for(lambda: running(lab, f"{STACK}_victim"), 60, "the victim task running")
        name = f"victim.{STACK}"
        before = wait_for(lambda: dns_a(server, name), 10, f"{name} in DNS")
        assert before == [task["ip"]], (before, task)
        subnet = json.loads(cli(lab, "node", "inspect", forger))[0]["subnet"]
        forged_ip = str(ipaddress.ip_network(subnet)[99])  # inside worker2's own subnet

        keys = lab.host(forger).private("/root/.ssh/authorized_keys")
        original = keys.read_text()
        script = tmp_path / "forger.py"
        script.write_text(FORGER)
        mark = tmp_path / "forged"
        env = {"FORGE_PYSWARM": str(Path(sys.executable).parent / "pyswarm"), "FORGE_TASK": task["id"],
               "FORGE_IP": forged_ip, "FORGE_MARK": str(mark)}
        command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" exec {sys.executable} {script}"
        lines = [line.replace(line[line.index('command="'):line.index('" ') + 1], f'command="{command}"')
                 if "pyswarm-cluster" in line else line for line in original.splitlines()]
        try:
            keys.write_text("\n".join(lines) + "\n")
            end_agent_sessions(lab, forger, "worker", "--stdio")
            wait_for(mark.exists, 30, "the dispatcher's new session to worker2 to run the forger")
            log = lab.host(manager).private("/var/lib/pyswarm/manager.log")
            wait_for(lambda: f"refused a report for task {task['id']}" in log.read_text(errors="replace"), 15,
                     "the manager to log the refusal")
            wait_for(lambda: node_ready(lab, forger), 30, "worker2 ready again (the forger's agent says hello)")
            [after] = [t for t in cli_json(lab, "service", "ps", f"{STACK}_victim") if t["id"] == task["id"]]
            assert after["current_state"] == "running" and after["ip"] == task["ip"], after
            assert "forged" not in json.dumps(after), after
            assert dns_a(server, name) == before, "the forged report moved the task in DNS"
        finally:
            keys.write_text(original)
            end_agent_sessions(lab, forger, str(script))
            end_agent_sessions(lab, forger, "worker", "--stdio")
            wait_for(lambda: not host_pids(lab, forger, str(script)), 30, "the forger gone")
            wait_for(lambda: node_ready(lab, forger), 30, "worker2 ready with its real agent")


RPC = "import json, sys; from pyswarm import config, rpc; " \
      "print(json.dumps(rpc.call_unix(config.socket_path(), sys.argv[1], json.loads(sys.argv[2]))))"


def debug_call(lab: Any, method: str, **params: Any) -> Any:
    """A debug.* method on the manager's root-only unix socket (no CLI command)."""
    out = lab.exec(lab.managers[0], [sys.executable, "-c", RPC, method, json.dumps(params)]).stdout
    return json.loads(out)


def starts(lab: Any, loop: str) -> int:
    return next(int(row["starts"]) for row in debug_call(lab, "debug.loops") if row["loop"] == loop)


def test_a_killed_scheduler_loop_comes_back(lab: Any, tmp_path: Path) -> None:
    before = starts(lab, "scheduler")
    debug_call(lab, "debug.fail_loop", loop="scheduler")
    wait_for(lambda: starts(lab, "scheduler") == before + 1, 15, "the scheduler started again")
    log = lab.host(lab.managers[0]).private("/var/lib/pyswarm/manager.log")
    text = log.read_text(errors="replace")
    assert "leader loop scheduler failed (InjectedFault" in text and "Traceback" in text, text[-2000:]
    with deployed_stacks(lab, tmp_path) as deploy:
        deploy(STACK, f"""
services:
  after:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy: {{replicas: 2}}
""")
        wait_for(lambda: len(running(lab, f"{STACK}_after")) == 2, 60, "the restarted scheduler to place 2 replicas")
    assert all(not row["message"] for row in cli_json(lab, "node", "ls")), "one failure is no reason to give up leading"


IPSET_STUB = "#!/bin/sh\necho 'ipset: command not found (hidden by the test)' >&2\nexit 127\n"


def test_a_node_without_ipset_says_so_and_runs_no_isolated_task(lab: Any, tmp_path: Path) -> None:
    host = lab.workers[2]  # worker3
    stub = tmp_path / "ipset"
    stub.write_text(IPSET_STUB)
    stub.chmod(0o755)
    lab.exec(host, ["mount", "--bind", str(stub), "/usr/sbin/ipset"])  # its own mount namespace only

    def message() -> str:
        return next(n["message"] for n in cli_json(lab, "node", "ls") if n["hostname"] == host)

    try:
        end_agent_sessions(lab, host, "worker", "--stdio")  # a new session applies the mesh again
        shown = wait_for(lambda: "ipset" in message() and message(), 30, f"{host}'s message naming ipset")
        assert shown.startswith("firewall: cannot apply the network firewall"), shown
        assert "MESSAGE" in cli(lab, "node", "ls") and "ipset" in cli(lab, "node", "ls")
        with deployed_stacks(lab, tmp_path) as deploy:
            deploy(STACK, f"""
services:
  spread:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy: {{replicas: 6}}
  pinned:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy: {{placement: {{constraints: ["node.hostname=={host}"]}}}}
""")
            rows = wait_for(lambda: len(running(lab, f"{STACK}_spread")) == 6 and running(lab, f"{STACK}_spread"),
                            60, "6 replicas running elsewhere")
            assert host not in {r["node"] for r in rows}, rows

            def pending_why() -> str:
                [t] = [t for t in cli_json(lab, "service", "ps", f"{STACK}_pinned") if t["desired_state"] == "running"]
                return str(t["current_state"] == "pending" and t["message"])

            why = wait_for(lambda: "network isolation not enforceable" in pending_why() and pending_why(), 30,
                           "the pinned task pending with the reason")
            assert why.startswith("no suitable node ("), why
            assert not lab.docker(host, "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={STACK}").stdout.strip()
    finally:
        lab.exec(host, ["umount", "/usr/sbin/ipset"], check=False)
        end_agent_sessions(lab, host, "worker", "--stdio")
        wait_for(lambda: not message() and node_ready(lab, host), 30, f"{host} clear again with ipset back")


def _private_files(lab: Any, host: str) -> list[Path]:
    """Everything pyswarm keeps on ``host`` (its /var/lib/pyswarm and /run/pyswarm)."""
    out = []
    for inside in ("/var/lib/pyswarm", "/run/pyswarm"):
        root = lab.host(host).private(inside)
        if root.exists():
            out.append(root)
            out.extend(root.rglob("*"))
    return out


def loose_modes(lab: Any, host: str) -> list[str]:
    """Paths of ``host``'s pyswarm state that group or others may read, write or enter.
    A task's secret and config files keep the mode their reference asks for
    (0444 by default, as in Swarm), inside the task's 0700 directory."""
    tasks = lab.host(host).private("/run/pyswarm/tasks")
    loose = []
    for p in _private_files(lab, host):
        if p.is_symlink() or p.is_socket() or p.parent.parent == tasks:
            continue
        mode = p.stat().st_mode & 0o777
        if mode & 0o077:
            loose.append(f"{p} {mode:o}")
    return loose


def test_state_is_root_only_and_secrets_never_rest_in_plain_text(lab: Any, tmp_path: Path) -> None:
    plain = f"pyswarm-e2e-secret-{os.urandom(8).hex()}"
    (tmp_path / "pw").write_text(plain)
    name = f"{STACK}_pw"
    manager = lab.managers[0]
    cli(lab, "secret", "create", name, str(tmp_path / "pw"))
    try:
        with deployed_stacks(lab, tmp_path) as deploy:
            deploy(STACK, f"""
services:
  reader:
    image: {IMAGE}
    command: ["sleep", "3600"]
    secrets: [{name}]
    deploy: {{replicas: 2}}
secrets:
  {name}: {{external: true}}
""")
            rows = wait_for(lambda: len(running(lab, f"{STACK}_reader")) == 2 and running(lab, f"{STACK}_reader"),
                            60, "2 readers running")
            row = rows[0]
            said = lab.docker(row["node"], "exec", row["container_id"], "cat", f"/run/secrets/{name}").stdout
            assert said == plain, "the task did not get its secret"
            # a restart of the manager: what it writes when it starts again is root-only too
            lab.exec(manager, ["sh", "-c", "kill -KILL $(cat /run/pyswarm/manager.pid)"])
            lab.pyswarm(manager, "manager", "start", timeout=90)
            wait_for(lambda: len(running(lab, f"{STACK}_reader")) == 2, 60, "the readers running after the restart")
            loose = {h: loose_modes(lab, h) for h in lab.hosts}
            assert not any(loose.values()), f"group- or world-accessible state: {loose}"
            import base64
            needles = [plain.encode(), base64.b64encode(plain.encode())]
            found = []
            for h in lab.hosts:
                paths = _private_files(lab, h) + list((lab.host(h).dir / "log").rglob("*"))
                paths += list(lab.host(h).private("/var/log/pyswarm").rglob("*"))
                for p in paths:
                    if p.is_file() and not p.is_symlink() and "/run/pyswarm/tasks/" not in str(p).replace(
                            str(lab.host(h).private("/run/pyswarm")), "/run/pyswarm"):
                        data = p.read_bytes()
                        found += [f"{h}: {p}" for n in needles if n in data]
            assert not found, f"the secret's plain text rests in: {found}"
    finally:
        cli(lab, "secret", "rm", name)


def containers(lab: Any) -> dict[str, set[str]]:
    """The test stack's containers on every host, by id."""
    return {h: set(lab.docker(h, "ps", "-q", "--filter", f"label=com.docker.stack.namespace={STACK}")
                   .stdout.split()) for h in lab.hosts}


def steady_replicas(lab: Any, deploy: Any, replicas: int, avoid: str = "") -> dict[str, set[str]]:
    """Deploy ``replicas`` sleepers (none on node ``avoid``), wait for them,
    and return their containers."""
    placement = f', placement: {{constraints: ["node.hostname!={avoid}"]}}' if avoid else ""
    deploy(STACK, f"""
services:
  steady:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy: {{replicas: {replicas}{placement}}}
""")
    wait_for(lambda: len(running(lab, f"{STACK}_steady")) == replicas, 60, f"{replicas} replicas running")
    return containers(lab)


def test_autolock_keeps_a_restarted_manager_locked_until_unlocked(lab: Any, tmp_path: Path) -> None:
    manager = lab.managers[0]
    key_file = lab.host(manager).private("/var/lib/pyswarm/data_key")

    with deployed_stacks(lab, tmp_path) as deploy:
        before = steady_replicas(lab, deploy, 3)
        out = cli(lab, "swarm", "update", "--autolock=true")
        [key] = [w for w in out.split() if w.startswith("PSWMKEY-1-")]
        try:
            wait_for(lambda: "locked" in json.loads(key_file.read_text()), 15, "the data key file locked")
            assert cli(lab, "swarm", "unlock-key", "-q").strip() == key
            lab.exec(manager, ["sh", "-c", "kill -KILL $(cat /run/pyswarm/manager.pid)"])
            started = lab.pyswarm(manager, "manager", "start", timeout=90).stdout
            assert "locked" in started, started
            refused = lab.pyswarm(manager, "node", "ls", check=False)
            assert refused.returncode != 0 and "pyswarm swarm unlock" in refused.stderr, refused
            wrong = lab.pyswarm(manager, "swarm", "unlock", input="PSWMKEY-1-" + "A" * 43 + "\n", check=False)
            assert wrong.returncode != 0 and "not the key" in wrong.stderr, wrong
            lab.pyswarm(manager, "swarm", "unlock", input=key + "\n", timeout=90)
            wait_for(lambda: len(running(lab, f"{STACK}_steady")) == 3, 60, "3 replicas running after the unlock")
            assert containers(lab) == before, "the unlock (or the restart) touched containers"
            locked_with = json.loads(key_file.read_text())["unlock_id"]
            rotated = cli(lab, "swarm", "unlock-key", "--rotate", "-q").strip()
            assert rotated != key and rotated.startswith("PSWMKEY-1-")
            wait_for(lambda: json.loads(key_file.read_text()).get("unlock_id") not in (None, locked_with), 15,
                     "the data key file locked again with the rotated key")
        finally:
            cli(lab, "swarm", "update", "--autolock=false")
        wait_for(lambda: "key" in json.loads(key_file.read_text()), 15, "the data key file plain again")


def test_the_cluster_ssh_key_rotates_on_every_node_without_a_restarted_container(lab: Any, tmp_path: Path) -> None:
    def keys_on(host: str) -> set[str]:
        text = lab.host(host).private("/root/.ssh/authorized_keys").read_text()
        return {" ".join(line.split()[-3:-1]) for line in text.splitlines() if "pyswarm-cluster" in line}

    with deployed_stacks(lab, tmp_path) as deploy:
        worker = lab.workers[0]  # its session is made again below: it runs none of the replicas
        before = steady_replicas(lab, deploy, 3, avoid=worker)
        old = {h: keys_on(h) for h in lab.hosts}
        out = cli(lab, "swarm", "ca", "--rotate")
        new = " ".join(out.strip().splitlines()[-1].split()[:2])
        assert new.startswith("ssh-ed25519 ") and all(new not in k for k in old.values()), (out, old)
        wait_for(lambda: all(keys_on(h) == {new} for h in lab.hosts), 30,
                 "every node's authorized_keys holding the new key only",
                 observe=lambda: {h: keys_on(h) for h in lab.hosts})
        assert containers(lab) == before, "the rotation touched containers"
        end_agent_sessions(lab, worker, "worker", "--stdio")  # a new session must get in with the new key
        wait_for(lambda: host_pids(lab, worker, "worker", "--stdio") and node_ready(lab, worker), 30,
                 f"{worker} back with a session made with the new key")


FAKE_UPSTREAM = r'''
import socket, sys
from dnslib import A, QTYPE, RR, DNSRecord
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    data, addr = sock.recvfrom(4096)
    q = DNSRecord.parse(data)
    r = q.reply()
    r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.53"), ttl=5))
    sock.sendto(r.pack(), addr)
'''


def test_dns_forwards_outside_names_only_for_the_cluster(lab: Any, tmp_path: Path) -> None:
    """The lab's managers forward nowhere (--dns-upstream none); here the
    manager gets a stand-in upstream on its own loopback for the test."""
    import dns.rcode

    manager = lab.managers[0]
    server = lab.hosts[manager]
    script = tmp_path / "upstream.py"
    script.write_text(FAKE_UPSTREAM)
    pid = int(lab.exec(manager, ["sh", "-c", f"{sys.executable} {script} 5354 >/dev/null 2>&1 & echo $!"]).stdout)
    config = lab.host(manager).private("/var/lib/pyswarm/manager.json")
    original = config.read_text()

    def restart() -> None:
        lab.exec(manager, ["sh", "-c", "kill -KILL $(cat /run/pyswarm/manager.pid)"])
        lab.pyswarm(manager, "manager", "start", timeout=90)
        wait_for(lambda: all(n["status"] == "ready" for n in cli_json(lab, "node", "ls")), 60, "every node ready")

    try:
        config.write_text(json.dumps({**json.loads(original), "dns_upstreams": ["127.0.0.1:5354"]}))
        restart()
        with deployed_stacks(lab, tmp_path) as deploy:
            deploy(STACK, f"""
services:
  asker:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy: {{placement: {{constraints: ["node.hostname==worker1"]}}}}
""")
            [task] = wait_for(lambda: running(lab, f"{STACK}_asker"), 60, "the asking container running")
            query = dns.message.make_query("example.com", dns.rdatatype.A)
            outside = dns.query.udp(query, server, timeout=3)  # from the root namespace: not the cluster's
            assert outside.rcode() == dns.rcode.REFUSED, outside
            inside = lab.docker("worker1", "exec", task["container_id"], "nslookup", "example.com", server,
                                check=False)
            assert "192.0.2.53" in inside.stdout, inside.stdout + inside.stderr
            assert dns_a(server, f"asker.{STACK}") == [task["ip"]], "cluster names are answered to anyone"
    finally:
        config.write_text(original)
        restart()
        os.kill(pid, signal.SIGTERM)
