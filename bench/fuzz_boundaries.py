"""Fuzz the manager's boundaries on a live lab: API requests, agent messages
and DNS packets, generated, every one of them invalid by construction (or,
for agent reports, about a task the node does not have), so that any change
of the store is a bug.

Counted, per kind: crashes (the manager process gone, an ``internal error``
answer, the fuzzing node's session ended), hangs (no answer in 5 s to a
request, to a valid probe between DNS packets, or no ping from the
dispatcher for 10 s), store changes (the store's index over the run, against
an idle window of the same length measured first) and requests per second.

* API: one connection to the manager's unix socket (root); requests built
  from every method's name with mutated params (a field of the wrong type,
  a missing or unknown field, huge values, not JSON at all).
* agent messages: the worker's forced command is pointed at a fuzzing agent
  (the lab host's own authorized_keys, restored at the end), which says a
  valid hello, answers every ping, and streams mutated hello / status /
  pong / error / condition lines and raw garbage to the dispatcher.
* DNS: UDP packets from the root namespace to the manager's port 53:
  mutated queries (names in and out of the zone, odd types and classes,
  flipped bits, truncations) and raw bytes, with a valid probe every 500.

Run as root; it brings up its own lab (1 manager + 1 worker) unless
``--reuse`` (the lab in $PYSWARM_LAB_DIR), and takes it down at the end:

    .venv/bin/python bench/fuzz_boundaries.py [--count 100000] [--seed 1]

The count is split evenly over the three kinds. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pyswarm.deploy.lab_core import Lab

from labapi import LabBench

# -- generators ----------------------------------------------------------------

WRONG = [None, True, -1, 2**70, 1.5e308, "", "x" * 5000, [], [1, "a"], {}, {"a": {"b": [None]}}, "lots"]


def junk(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth > 3 or pick < 0.5:
        return rng.choice(WRONG + [rng.randint(-2**40, 2**40), rng.random(), "".join(
            chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 30)))])
    if pick < 0.75:
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {str(junk(rng, 4))[:20]: junk(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def mutate(rng: random.Random, base: dict[str, Any], keep: tuple[str, ...] = (), nested: bool = False) -> dict[str, Any]:
    """``base`` changed so that it is invalid: the first change is a field
    set to a value of another type (never null, which an optional field
    takes), nested at times, or an unknown field; then up to two more of
    any kind (another type, a field dropped, an unknown one added)."""
    msg = dict(base)
    touched: set[str] = set()  # each field changed once: a second change could make it valid again
    for i in range(1 if nested else rng.randint(1, 3)):
        fields = [k for k in msg if k not in keep and k not in touched and not k.startswith("zz")]
        how = 0.0 if nested else rng.random()  # nested (a mapping may be free-form): another type only
        if fields and (how < 0.6 or i == 0 and how < 0.8):
            k = rng.choice(fields)
            touched.add(k)
            old = msg[k]
            inner = old[0] if isinstance(old, list) and old and isinstance(old[0], dict) else old
            if isinstance(inner, dict) and inner and rng.random() < 0.4:
                changed = mutate(rng, inner, nested=True)  # e.g. services[0].replicas
                msg[k] = [changed] if inner is not old else changed
                continue
            new = junk(rng)
            while new is None or type(new) is type(old):  # bool and int differ: the checker tells them apart
                new = junk(rng)
            msg[k] = new
        elif fields and i > 0 and how < 0.8:
            k = rng.choice(fields)
            touched.add(k)
            msg.pop(k)
        else:
            msg[f"zz{rng.randint(0, 99)}"] = junk(rng)
    return msg


def garbage_line(rng: random.Random) -> bytes:
    pick = rng.random()
    if pick < 0.4:
        return bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 300))).replace(b"\n", b" ")
    if pick < 0.7:
        return b"[" * rng.randint(1, 50_000)
    return json.dumps(junk(rng)).encode()


# -- API -----------------------------------------------------------------------

NOWHERE = "fuzz-no-such-object"
API_TEMPLATES: dict[str, dict[str, Any]] = {
    "node.inspect": {"node": NOWHERE}, "node.promote": {"nodes": [NOWHERE]}, "node.demote": {"nodes": [NOWHERE]},
    "node.rm": {"nodes": [NOWHERE]}, "node.update": {"node": NOWHERE, "availability": "drain"},
    "service.ps": {"service": NOWHERE}, "service.inspect": {"service": NOWHERE},
    "service.scale": {"scales": {NOWHERE: 3}}, "service.update": {"service": NOWHERE, "image": "x"},
    "service.rollback": {"service": NOWHERE}, "stack.ps": {"stack": NOWHERE}, "stack.rm": {"stack": NOWHERE},
    "stack.deploy": {"stack": "fuzz", "services": [{"name": "fuzz_web", "container": {"image": "x"}, "replicas": 2,
                                                    "stack": "fuzz"}]},
    "secret.create": {"name": "fuzz", "data": "aGk="}, "config.create": {"name": "fuzz", "data": "aGk="},
    "secret.inspect": {"name": NOWHERE}, "secret.rm": {"names": [NOWHERE]}, "config.inspect": {"name": NOWHERE},
    "config.rm": {"names": [NOWHERE]}, "network.create": {"name": "fuzz"},
    "network.inspect": {"name": NOWHERE}, "network.rm": {"names": [NOWHERE]},
    "join_token": {"role": "worker", "rotate": True}, "cluster.update": {"autolock": True},
    "swarm.unlock_key": {"rotate": True}, "swarm.rotate_ssh_key": {}, "swarm.unlock": {"key": "x"},
    "join": {"hostname": "fuzz", "addr": "10.9.9.9", "ssh_host_key": "ssh-ed25519 AAAA"},
}
READ_ONLY = {"ping", "node.ls", "stack.ls", "service.ls", "secret.ls", "config.ls", "network.ls", "join.info",
             "debug.loops"}
SKIP = {"store.export", "debug.fail_loop"}  # heavy / meant to fail a loop


def api_request(rng: random.Random, methods: list[str]) -> bytes:
    pick = rng.random()
    if pick < 0.1:
        return garbage_line(rng)
    if pick < 0.15:
        return json.dumps({"method": junk(rng), "params": junk(rng)}).encode()
    method = rng.choice(methods)
    base = API_TEMPLATES.get(method, {})
    params = mutate(rng, base) if method not in READ_ONLY or rng.random() < 0.7 else base
    return json.dumps({"method": method, "params": params}).encode()


def peer_api(bench: LabBench, count: int = 3000) -> float:
    """The peer: valid ``ping`` requests per second on one connection, same run."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(bench.socket))
    reader = sock.makefile("rb")
    started = time.monotonic()
    for _ in range(count):
        sock.sendall(b'{"method": "ping", "params": {}}\n')
        reader.readline()
    took = time.monotonic() - started
    sock.close()
    return count / took


def peer_dns(bench: LabBench, count: int = 3000) -> float:
    """The peer: valid queries per second, one at a time, same run."""
    from dnslib import DNSRecord

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    query = DNSRecord.question("pyswarm", "SOA").pack()
    started = time.monotonic()
    for _ in range(count):
        sock.sendto(query, (bench.lab.hosts[bench.manager], 53))
        sock.recv(65535)
    return count / (time.monotonic() - started)


def fuzz_api(bench: LabBench, count: int, rng: random.Random) -> dict[str, Any]:
    methods = sorted(set(API_TEMPLATES) | READ_ONLY)
    stats: dict[str, Any] = {"sent": 0, "crashes": 0, "hangs": 0, "errors": 0, "results": 0}
    examples: list[str] = []
    accepted: list[str] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(bench.socket))
    sock.settimeout(5)
    reader = sock.makefile("rb")
    started = time.monotonic()
    for _ in range(count):
        line = api_request(rng, methods)
        try:
            sock.sendall(line + b"\n")
            answer = reader.readline()
        except (socket.timeout, TimeoutError):
            stats["hangs"] += 1
            sock.close()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(bench.socket))
            sock.settimeout(5)
            reader = sock.makefile("rb")
            continue
        stats["sent"] += 1
        if not answer:
            stats["crashes"] += 1
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(bench.socket))
            sock.settimeout(5)
            reader = sock.makefile("rb")
            continue
        reply = json.loads(answer)
        if "error" in reply:
            stats["errors"] += 1
            if "internal error" in reply["error"].get("message", ""):
                stats["crashes"] += 1
                examples.append(f"{line[:300]!r} -> {reply['error']['message'][:200]}")
        else:
            stats["results"] += 1
            if json.loads(line).get("method") not in READ_ONLY:
                accepted.append(line[:300].decode(errors="replace"))
    stats["seconds"] = time.monotonic() - started
    stats["internal_errors"] = examples[:10]
    stats["accepted_writes"] = accepted[:10]
    sock.close()
    return stats


# -- agent messages --------------------------------------------------------------

FUZZ_AGENT = r'''
import json, os, random, sys, threading, time
sys.path.insert(0, os.environ["FUZZ_BENCH"])
from fuzz_boundaries import agent_lines
out = sys.stdout.buffer
lock = threading.Lock()
pings = []
def send(line):
    with lock:
        out.write(line + b"\n")
        out.flush()
def read():
    for line in sys.stdin.buffer:
        if b'"ping"' in line:
            msg = json.loads(line)
            pings.append(time.monotonic())
            send(json.dumps({"op": "pong", "seq": msg.get("seq")}).encode())
threading.Thread(target=read, daemon=True).start()
send(json.dumps({"op": "hello", "hostname": os.environ["FUZZ_HOST"], "engine_version": "fuzz",
                 "resources": {"nano_cpus": 1000000000, "memory_bytes": 1 << 30},
                 "platform": {"os": "linux", "arch": "x86_64"}}).encode())
while not os.path.exists(os.environ["FUZZ_GO"]):  # the bench reads the store's index first
    time.sleep(0.05)
started, hangs, gap = time.monotonic(), 0, 0.0
for i, line in enumerate(agent_lines(int(os.environ["FUZZ_SEED"]), int(os.environ["FUZZ_COUNT"]))):
    send(line)
    if i % 1000 == 999 and pings and time.monotonic() - pings[-1] > 10:
        hangs += 1
    if pings:
        gap = max(gap, time.monotonic() - pings[-1])
took = time.monotonic() - started
time.sleep(3)
alive = bool(pings) and time.monotonic() - pings[-1] < 3
open(os.environ["FUZZ_OUT"], "w").write(json.dumps({"sent": int(os.environ["FUZZ_COUNT"]), "seconds": took,
    "hangs": hangs, "pinged_after": alive, "longest_ping_gap": gap}))
while True:
    time.sleep(1)
'''

AGENT_TEMPLATES: list[dict[str, Any]] = [
    {"op": "hello", "hostname": "h", "resources": {"nano_cpus": 1, "memory_bytes": 1}, "platform": {"os": "linux"},
     "engine_version": "1", "engine_labels": {}},
    {"op": "status", "task_id": "t", "state": "running", "container_id": "c", "ip": "10.240.0.9", "exit_code": 0,
     "message": "m", "error": "", "ts": 1.0},
    {"op": "pong", "seq": 1}, {"op": "error", "message": "m"}, {"op": "condition", "problems": {"firewall": "x"}},
]


def agent_lines(seed: int, count: int) -> Any:
    rng = random.Random(seed)
    for _ in range(count):
        pick = rng.random()
        if pick < 0.15:
            yield garbage_line(rng)
        elif pick < 0.3:  # well-formed reports about tasks this node does not have: refused by ownership
            yield json.dumps({"op": "status", "task_id": f"fuzz{rng.randint(0, 10**9)}",
                              "state": rng.choice(["running", "failed", "complete"]),
                              "ip": f"10.240.{rng.randint(0, 255)}.{rng.randint(1, 254)}"}).encode()
        else:
            yield json.dumps(mutate(rng, rng.choice(AGENT_TEMPLATES), keep=("op",))).encode()


def fuzz_agent(bench: LabBench, count: int, seed: int) -> dict[str, Any]:
    lab, host = bench.lab, bench.lab.workers[0]
    keys = lab.host(host).private("/root/.ssh/authorized_keys")
    original = keys.read_text()
    script, out = bench.dir / "fuzz_agent.py", bench.dir / "agent.json"
    script.write_text(FUZZ_AGENT)
    go = bench.dir / "go"
    env = {"FUZZ_BENCH": str(Path(__file__).resolve().parent), "FUZZ_SEED": str(seed), "FUZZ_COUNT": str(count),
           "FUZZ_OUT": str(out), "FUZZ_HOST": host, "FUZZ_GO": str(go)}
    command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" exec {sys.executable} {script}"
    lines = [line.replace(line[line.index('command="'):line.index('" ') + 1], f'command="{command}"')
             if "pyswarm-cluster" in line else line for line in original.splitlines()]
    log = lab.host(bench.manager).private("/var/lib/pyswarm/manager.log")
    try:
        keys.write_text("\n".join(lines) + "\n")
        _end(lab, host, "worker", "--stdio")
        bench.wait(lambda: _running(lab, host, str(script)) and _ready(bench, host), "the fuzzing agent's hello", 60)
        time.sleep(1)
        before, objects = store_index(bench), store_objects(bench)
        log_at = log.stat().st_size  # from here on, only what the fuzzing stream caused
        go.write_text("go\n")
        bench.wait(out.exists, "the fuzzing agent to finish", timeout=1800)
        stats = json.loads(out.read_text())
        tail = log.read_bytes()[log_at:].decode(errors="replace")
        stats["store_changes"] = store_index(bench) - before  # while it streamed
        stats["changed"] = changed(objects, store_objects(bench))[:10]
    finally:
        keys.write_text(original)
        _end(lab, host, str(script))
    stats["session_ended"] = sum(1 for line in tail.splitlines() if f"session to {host}" in line and "ended" in line)
    stats["crashes"] = stats["session_ended"] + (0 if stats["pinged_after"] else 1)
    stats["refusals_logged"] = sum(1 for line in tail.splitlines() if "refused" in line)
    # the real agent's hello has landed (the fuzzer's said engine "fuzz"), and the store is quiet again
    bench.wait(lambda: all(n["status"] == "ready" and n["engine_version"] != "fuzz" for n in bench.api("node.ls")),
               "the worker back with its real agent", 60)
    time.sleep(3)
    return stats


def _ready(bench: LabBench, host: str) -> bool:
    return any(n["hostname"] == host and n["status"] == "ready" for n in bench.api("node.ls"))


def _running(lab: Lab, host: str, *words: str) -> bool:
    return bool(_pids(lab, host, *words))


def _end(lab: Lab, host: str, *words: str) -> None:
    for pid in _pids(lab, host, *words):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _pids(lab: Lab, host: str, *words: str) -> list[int]:
    return lab.host_pids(host, *words)


# -- DNS -----------------------------------------------------------------------

def dns_packet(rng: random.Random) -> bytes:
    from dnslib import DNSRecord

    pick = rng.random()
    if pick < 0.2:
        return bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 600)))
    name = rng.choice(["web.demo.pyswarm", "pyswarm", "tasks.x.pyswarm", "example.com", "2.0.240.10.in-addr.arpa",
                       "".join(rng.choice("abc.-_\\") for _ in range(rng.randint(1, 60))) + ".pyswarm"])
    try:
        packet = bytearray(DNSRecord.question(name, rng.choice(["A", "AAAA", "SRV", "PTR", "ANY", "TXT", "SOA"])).pack())
    except UnicodeError:  # a label dnslib will not encode ("a..b"): raw bytes then
        return name.encode()
    packet[0:2] = rng.randbytes(2)
    for _ in range(rng.randint(0, 4)):  # flip bits (qr, opcode, counts, class, lengths)
        i = rng.randrange(len(packet))
        packet[i] ^= 1 << rng.randrange(8)
    if rng.random() < 0.2:
        packet = packet[:rng.randrange(len(packet) + 1)]
    return bytes(packet)


def fuzz_dns(bench: LabBench, count: int, rng: random.Random) -> dict[str, Any]:
    from dnslib import DNSRecord

    server = (bench.lab.hosts[bench.manager], 53)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    stats = {"sent": 0, "answered": 0, "hangs": 0, "crashes": 0}
    started = time.monotonic()

    def drain() -> None:
        try:
            while True:
                sock.recv(65535)
                stats["answered"] += 1
        except (BlockingIOError, InterruptedError):
            pass

    for i in range(count):
        try:
            sock.sendto(dns_packet(rng), server)
        except BlockingIOError:
            time.sleep(0.001)
        stats["sent"] += 1
        drain()
        if i % 500 == 499:  # a valid query must still be answered
            probe = DNSRecord.question("pyswarm", "SOA")
            sock.sendto(probe.pack(), server)
            deadline = time.monotonic() + 5
            while True:
                try:
                    if DNSRecord.parse(sock.recv(65535)).header.id == probe.header.id:
                        break
                except (BlockingIOError, InterruptedError):
                    if time.monotonic() > deadline:
                        stats["hangs"] += 1
                        break
                    time.sleep(0.001)
                except Exception:  # an answer to a garbage packet that dnslib cannot parse
                    pass
    stats["seconds"] = time.monotonic() - started
    return stats


# -- the run ---------------------------------------------------------------------

def store_index(bench: LabBench) -> int:
    return int(bench.api("store.export")["index"])


def store_objects(bench: LabBench) -> dict[str, Any]:
    return dict(bench.api("store.export")["objects"])


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``kind id: fields`` of what differs between two exports."""
    out = []
    for kind in sorted(set(before) | set(after)):
        a, b = before.get(kind, {}), after.get(kind, {})
        for oid in sorted(set(a) | set(b)):
            if a.get(oid) != b.get(oid):
                old, new = a.get(oid) or {}, b.get(oid) or {}
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                out.append(f"{kind} {oid[:12]}: {', '.join(keys) if old and new else 'added' if new else 'removed'}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="inputs in all, split over the three kinds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="the lab in $PYSWARM_LAB_DIR")
    args = parser.parse_args()
    lab = Lab.current() if args.reuse else Lab("/var/lib/pyswarm-bench-fuzz", name="psbfuzz", subnet="10.250.91.0/24")
    if not args.reuse:
        lab.up(managers=1, workers=1, cluster=True)
    bench = LabBench(lab)
    rng = random.Random(args.seed)
    per = args.count // 3
    try:
        pid = lab.exec(bench.manager, ["cat", "/run/pyswarm/manager.pid"]).stdout.strip()
        idle_from = store_index(bench)
        time.sleep(20)
        idle = store_index(bench) - idle_from
        rows: dict[str, dict[str, Any]] = {}
        for kind, run in (("api", lambda: fuzz_api(bench, per, rng)), ("agent", lambda: fuzz_agent(bench, per, args.seed)),
                          ("dns", lambda: fuzz_dns(bench, args.count - 2 * per, rng))):
            before, objects = store_index(bench), store_objects(bench)
            rows[kind] = run()
            rows[kind].setdefault("store_changes", store_index(bench) - before)
            rows[kind].setdefault("changed", changed(objects, store_objects(bench))[:10])
            alive = lab.exec(bench.manager, ["cat", "/run/pyswarm/manager.pid"], check=False).stdout.strip()
            rows[kind]["manager_restarted"] = alive != pid
            rows[kind]["per_second"] = round(rows[kind]["sent"] / rows[kind]["seconds"], 1)
            print(kind, json.dumps(rows[kind]), flush=True)
        peers = {"api": peer_api(bench), "dns": peer_dns(bench)}
        total = sum(r["sent"] for r in rows.values())
        crashes = sum(r["crashes"] + int(r["manager_restarted"]) for r in rows.values())
        hangs = sum(r["hangs"] for r in rows.values())
        changes = sum(r["store_changes"] for r in rows.values())
        print(f"\n{total} inputs: {crashes} crashes, {hangs} hangs, {changes} store changes "
              f"(idle window of 20 s: {idle} changes)")
        for kind, r in rows.items():
            peer = f"  (valid peer {peers[kind]:.0f}/s, ratio {r['per_second'] / peers[kind]:.2f})" if kind in peers else ""
            print(f"  {kind:6} {r['sent']:>7} sent  {r['per_second']:>8} /s  crashes {r['crashes']}  "
                  f"hangs {r['hangs']}  store changes {r['store_changes']}{peer}")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared)")
    finally:
        if not args.reuse:
            lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
