"""A Jepsen-style soak of a 3-manager cluster: concurrent writers, random faults, then a check of the history.

A lab of its own (3 managers + 3 workers, /var/lib/pyswarm-bench-soak,
subnet 10.250.91.0/24). One writer per manager runs the pyswarm CLI inside
that manager's host, as an operator there would, in a loop: create a
service with 0-2 replicas under a unique name, scale one of its own
services, or create a config under a unique name. Every write is recorded
with what it asked for and how it ended: acknowledged (exit 0), refused
(non-zero exit, with the error line) or indeterminate (the CLI did not
answer within 60 s, said it timed out, or said the write "may still be
applied": it may or may not have been, as Jepsen's ``:info``).

Meanwhile one thread injects ``--faults`` faults drawn at random (seeded by
``--seed``), spread over ``--minutes``, one at a time, each lasting 2-6 s
before it heals:

* ``leader-kill``: SIGKILL of the Raft leader's manager process, then
  ``pyswarm manager start`` on that host;
* ``manager-partition``: a manager's veth down in the root namespace, then up;
* ``worker-link-cut``: the same for a worker;
* ``dockerd-restart``: a worker's dockerd stopped (SIGTERM) and started again;
* ``disk-full``: on a follower, a 256 KiB tmpfs filled to the last byte
  mounted over /var/lib/pyswarm/raft inside its mount namespace, then
  lazily unmounted (the manager's open journal stays on the real disk; new
  files there, such as a compaction's dump, fail with ENOSPC).

And a sampler lists every host's task containers (``docker ps`` with the
pyswarm labels) every ~3 s and counts (service, slot) pairs running twice.

After the last fault: wait for convergence (a leader, every node ready,
every manager at the same set of services, every service's replicas
running), then check the history against each manager's replica (read
through its own socket, ``store.export``):

* every acknowledged create present exactly once by name on every manager;
* no refused create applied;
* every service's replicas equal to its last acknowledged write (or to a
  later indeterminate one); a refused scale never the final value;
* no double-running sample, including those taken while a holder's link
  was cut (counted apart): a cut-off node stops its task containers itself
  before the leader replaces them (worker/fence.py). A pair seen in one
  sample is checked against the engines' own StartedAt/FinishedAt (the
  hosts are listed one after another, so a sample alone can pair a stopped
  container with its later replacement); one they disprove is not counted.
  Pairs are grouped into episodes (the same two tasks), each with its
  longest measured overlap;
* desired state reached (the sampler goes on until then). If it is not,
  the live tasks of the services short of their replicas are summarised
  (state, node, message) from the leader's store.

It prints the counts and writes the raw history to
bench/results/soak-<date>.json, and exits 1 on a violation. Run as root:

    .venv/bin/python bench/soak.py --minutes 2 --faults 5 --seed 1
    .venv/bin/python bench/soak.py --minutes 15 --faults 40 --seed 2

Traffic stays inside the lab's namespaces. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyswarm import rpc
from pyswarm.deploy.lab_core import Lab
from pyswarm.deploy.lab_sys import LabCommandError
from pyswarm.errors import PyswarmError

ROOT = Path(__file__).resolve().parent
IMAGE = "pyswarm-lab/busybox:latest"
SERVE = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 & wait"]
FAULTS = ("leader-kill", "manager-partition", "worker-link-cut", "dockerd-restart", "disk-full")
RAFT_DIR = "/var/lib/pyswarm/raft"
CLI_TIMEOUT = 60.0


@dataclass
class Write:
    writer: str
    op: str  # create | scale | config
    name: str
    replicas: int | None
    start: float
    end: float = 0.0
    outcome: str = ""  # acked | refused | indeterminate
    error: str = ""


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    healed: float = 0.0
    note: str = ""


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    samples: int = 0
    doubles: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, w: Write) -> None:
        with self.lock:
            self.writes.append(w)


class Soak:
    def __init__(self, lab: Lab, seed: int) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.history = History()
        self.stop = threading.Event()
        self.cut: set[str] = set()  # hosts whose link is down right now

    # ---------------------------------------------------------------- API

    def sock(self, host: str) -> Path:
        return Path(self.lab.host(host).private("/run/pyswarm/manager.sock"))

    def call(self, host: str, method: str, params: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        return rpc.call_unix(self.sock(host), method, params or {}, timeout=timeout)

    def leader(self) -> str | None:
        for host in self.lab.managers:
            try:
                if self.call(host, "ping", timeout=3).get("leader"):
                    return str(host)
            except (PyswarmError, OSError):
                continue
        return None

    # ---------------------------------------------------------------- writers

    def writer(self, host: str, deadline: float) -> None:
        rng = random.Random(self.rng.random())
        mine: list[str] = []
        i = 0
        while time.monotonic() < deadline and not self.stop.is_set():
            i += 1
            roll = rng.random()
            if roll < 0.4 or not mine:
                name = f"sk{host[-1]}{host[0]}_{i}"
                reps = rng.randint(0, 2)
                w = Write(host, "create", name, reps, time.time())
                argv = ["service", "create", "-d", "--name", name, "--replicas", str(reps), IMAGE, *SERVE]
            elif roll < 0.8:
                name = rng.choice(mine)
                reps = rng.randint(0, 3)
                w = Write(host, "scale", name, reps, time.time())
                argv = ["service", "scale", "-d", f"{name}={reps}"]
            else:
                name = f"cfg{host[-1]}{host[0]}_{i}"
                w = Write(host, "config", name, None, time.time())
                argv = ["config", "create", name, "-"]
            self.run_cli(host, argv, w)
            if w.op == "create" and w.outcome != "refused":
                mine.append(name)  # indeterminate ones may exist: scaling them is fine either way
            self.history.add(w)
            time.sleep(rng.uniform(0.05, 0.5))

    def run_cli(self, host: str, argv: list[str], w: Write) -> None:
        try:
            res = self.lab.pyswarm(host, *argv, check=False, timeout=CLI_TIMEOUT,
                                   input=f"data {w.name}\n" if w.op == "config" else None)
        except LabCommandError as exc:
            w.end, w.outcome, w.error = time.time(), "indeterminate", str(exc).splitlines()[0][:300]
            return
        w.end = time.time()
        if res.returncode == 0:
            w.outcome = "acked"
            return
        w.error = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1][:300] if (res.stderr or res.stdout).strip() else f"exit {res.returncode}"
        # a timeout or a lost connection leaves the write's fate unknown, and so
        # does a write the store says it could not see commit ("the write may
        # still be applied": it reached a leader's log, as Jepsen's :info)
        unknown = ("timed out", "timeout", "connection reset", "broken pipe", "connection closed", "eof",
                   "may still be applied")
        w.outcome = "indeterminate" if any(u in w.error.lower() for u in unknown) else "refused"

    # ---------------------------------------------------------------- sampler

    def sampler(self) -> None:
        fmt = '{{.Label "pyswarm.service.id"}} {{.Label "pyswarm.task.slot"}} {{.Label "pyswarm.task.id"}}'
        while not self.stop.is_set():
            cut_now = set(self.cut)
            seen: dict[tuple[str, str], list[tuple[str, str]]] = {}
            ok = True
            for host in self.lab.hosts:
                try:
                    out = self.lab.docker(host, "ps", "--filter", "label=pyswarm.task.id", "--format", fmt,
                                          timeout=20, check=False)
                except LabCommandError:
                    ok = False
                    continue
                if out.returncode != 0:
                    ok = False  # dockerd restarting: its containers are gone or coming back
                    continue
                for line in out.stdout.splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[1] != "0":  # slot 0: global services
                        seen.setdefault((parts[0], parts[1]), []).append((host, parts[2]))
            cut_now |= self.cut
            found = []
            for (svc, slot), where in seen.items():
                if len(where) > 1:
                    found.append({
                        "t": time.time(), "service": svc, "slot": slot, "where": where, "complete_sample": ok,
                        "during_cut": sorted(cut_now & {h for h, _ in where}),
                        "overlap_s": self.overlap(where)})
            with self.history.lock:
                self.history.samples += 1
                self.history.doubles.extend(found)
            self.stop.wait(3)

    def overlap(self, where: list[tuple[str, str]]) -> float | None:
        """How long the containers of one slot ran at the same time, by the
        engines' own clocks (StartedAt, FinishedAt or now): the hosts are
        listed one after the other, so a sample alone could pair a container
        that stopped with its replacement that started after. None: unknown
        (an engine did not answer)."""
        spans = []
        fmt = "{{.State.StartedAt}} {{.State.FinishedAt}} {{.State.Running}}"
        for host, task in where:
            try:
                out = self.lab.docker(host, "ps", "-aq", "--filter", f"label=pyswarm.task.id={task}",
                                      timeout=20, check=False).stdout.split()
                if not out:
                    return None
                res = self.lab.docker(host, "inspect", "--format", fmt, out[0], timeout=20, check=False)
            except LabCommandError:
                return None
            parts = res.stdout.split()
            if res.returncode != 0 or len(parts) != 3:
                return None
            started, finished = _rfc3339(parts[0]), _rfc3339(parts[1])
            spans.append((started, time.time() if parts[2] == "true" or finished < started else finished))
        return max(0.0, min(e for _, e in spans) - max(b for b, _ in spans))

    # ---------------------------------------------------------------- faults

    def faults(self, count: int, seconds: float, kinds: tuple[str, ...] = FAULTS) -> None:
        gap = seconds / max(count, 1)
        for n in range(count):
            t0 = time.monotonic()
            kind = self.rng.choice(kinds)
            hold = self.rng.uniform(2, 6)
            try:
                fault = self.inject(kind, hold)
            except Exception as exc:  # noqa: BLE001 - record it and go on: the check decides
                fault = Fault(kind, "?", time.time(), time.time(), f"could not inject: {exc}")
            self.history.faults.append(fault)
            print(f"[fault {n + 1}/{count}] {fault.kind} {fault.target} held {fault.healed - fault.start:.1f}s"
                  + (f" ({fault.note})" if fault.note else ""), flush=True)
            rest = gap - (time.monotonic() - t0)
            if rest > 0 and n + 1 < count:
                time.sleep(rest)

    def inject(self, kind: str, hold: float) -> Fault:
        managers, workers = list(self.lab.managers), list(self.lab.workers)
        if kind == "leader-kill":
            target = self.leader() or self.rng.choice(managers)
            f = Fault(kind, target, time.time())
            self.lab.exec(target, ["sh", "-c", "kill -KILL $(cat /run/pyswarm/manager.pid)"], check=False)
            time.sleep(hold)
            res = self.lab.pyswarm(target, "manager", "start", check=False, timeout=120)
            if res.returncode != 0:
                f.note = f"manager start exited {res.returncode}: {(res.stderr or res.stdout).strip()[-200:]}"
        elif kind in ("manager-partition", "worker-link-cut"):
            target = self.rng.choice(managers if kind == "manager-partition" else workers)
            veth = self.lab.host(target).veth
            f = Fault(kind, target, time.time())
            self.cut.add(target)
            subprocess.run(["ip", "link", "set", veth, "down"], check=True)
            try:
                time.sleep(hold)
            finally:
                subprocess.run(["ip", "link", "set", veth, "up"], check=True)
                self.cut.discard(target)
        elif kind == "dockerd-restart":
            target = self.rng.choice(workers)
            f = Fault(kind, target, time.time())
            self.lab.stop_daemon(target, "dockerd")
            time.sleep(hold)
            self.lab.start_daemons(target, only=("dockerd",))
        elif kind == "disk-full":
            leader = self.leader()
            target = self.rng.choice([m for m in managers if m != leader])
            f = Fault(kind, target, time.time())
            fill = (f"mount -t tmpfs -o size=256k soakfull {RAFT_DIR} && "
                    f"(dd if=/dev/zero of={RAFT_DIR}/.fill bs=4k 2>/dev/null; true)")
            self.lab.exec(target, ["sh", "-c", fill])
            try:
                time.sleep(hold)
            finally:
                self.lab.exec(target, ["umount", "-l", RAFT_DIR])
        else:
            raise ValueError(kind)
        f.healed = time.time()
        return f

    # ---------------------------------------------------------------- convergence and checks

    def short_of_replicas(self, limit: int = 8) -> dict[str, Any]:
        """Why services are below their replicas: their live tasks' states and
        messages, from the leader's store (the soak's record of a failure to converge)."""
        leader = self.leader()
        if leader is None:
            return {"error": "no leader"}
        short = [s["name"] for s in self.call(leader, "service.ls", timeout=20) if s["running"] != s["desired"]]
        exp = self.call(leader, "store.export", timeout=30)["objects"]
        hosts = {n["id"]: n["hostname"] for n in exp["node"].values()}
        names = {sid: s["spec"]["name"] for sid, s in exp["service"].items()}
        states: Counter[str] = Counter()
        detail: list[str] = []
        for t in exp["task"].values():
            if names.get(t["service_id"]) in short and t.get("desired_state") == "running":
                key = f"{t['state']} on {hosts.get(t.get('node_id'), t.get('node_id') or '-')}: {(t.get('error') or t.get('message') or '')[:120]}"
                states[key] += 1
                if len(detail) < limit:
                    detail.append(f"{names[t['service_id']]}.{t.get('slot')} {t['id'][:10]} {key}")
        nodes = {n["hostname"]: {"status": n["status"], "message": n.get("status_message", ""),
                                 "problems": n.get("problems", {})} for n in exp["node"].values()}
        return {"short": len(short), "live_task_states": dict(states.most_common(20)), "examples": detail,
                "nodes": nodes}

    def exports(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Each answering manager's replica, and one violation line per
        manager that does not answer (its history is still checked against
        the others: a run of 40 minutes must not be lost to one of them)."""
        found: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        for h in self.lab.managers:
            try:
                found[h] = self.call(h, "store.export", timeout=30)
            except (PyswarmError, OSError) as exc:
                missing.append(f"{h}: no replica to check: {str(exc).splitlines()[0][:200]}")
        return found, missing

    def converged(self) -> tuple[bool, str]:
        leader = self.leader()
        if leader is None:
            return False, "no leader"
        nodes = self.call(leader, "node.ls", timeout=20)
        notready = [n["hostname"] for n in nodes if n["status"] != "ready"]
        if notready:
            return False, f"nodes not ready: {notready}"
        found, missing = self.exports()
        if missing:
            return False, missing[0]
        names = {h: sorted(s["spec"]["name"] for s in e["objects"]["service"].values()) for h, e in found.items()}
        if len({tuple(v) for v in names.values()}) != 1:
            return False, "managers differ: " + ", ".join(f"{h} {len(v)} services" for h, v in names.items())
        behind = [f"{s['name']} {s['replicas']}" for s in self.call(leader, "service.ls", timeout=20)
                  if s["running"] != s["desired"]]
        if behind:
            return False, f"{len(behind)} services not at their replicas: {behind[:5]}"
        return True, "converged"

    def check(self, exports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The history's verdict: counts and every violation, named."""
        violations: list[str] = []
        writes = self.history.writes
        by_outcome = Counter(w.outcome for w in writes)
        lost = dup = applied_refused = wrong_final = 0
        for host, exp in exports.items():
            svc_count = Counter(s["spec"]["name"] for s in exp["objects"]["service"].values())
            cfg_count = Counter(c["name"] for c in exp["objects"].get("config", {}).values())
            replicas = {s["spec"]["name"]: s["spec"].get("replicas") for s in exp["objects"]["service"].values()}
            for w in writes:
                if w.op == "scale":
                    continue
                n = (svc_count if w.op == "create" else cfg_count)[w.name]
                if w.outcome == "acked" and n == 0:
                    lost += 1
                    violations.append(f"{host}: acknowledged {w.op} {w.name} missing")
                if n > 1:
                    dup += 1
                    violations.append(f"{host}: {w.op} {w.name} present {n} times")
                if w.outcome == "refused" and n > 0:
                    applied_refused += 1
                    violations.append(f"{host}: refused {w.op} {w.name} ({w.error}) was applied")
            # final replicas: the last acknowledged write of each service, or any indeterminate one after it
            per: dict[str, list[Write]] = {}
            for w in writes:
                if w.op in ("create", "scale"):
                    per.setdefault(w.name, []).append(w)
            for name, ws in per.items():
                if name not in replicas:
                    continue
                acked = [i for i, w in enumerate(ws) if w.outcome == "acked"]
                start = acked[-1] + 1 if acked else 0
                allowed = {ws[acked[-1]].replicas} if acked else set()
                allowed |= {w.replicas for w in ws[start:] if w.outcome == "indeterminate"}
                if replicas[name] not in allowed:
                    wrong_final += 1
                    violations.append(f"{host}: {name} has {replicas[name]} replicas; the history allows {sorted(allowed, key=str)}: "
                                      + "; ".join(f"{w.op}={w.replicas} {w.outcome}" for w in ws))
        # strict, as the issue asks: a cut-off node fences itself (worker/fence.py), so a
        # double during a cut counts too; one the engines' clocks disprove does not
        confirmed = [d for d in self.history.doubles if d.get("overlap_s") is None or d["overlap_s"] > 0]
        doubles_bad = [d for d in confirmed if not d["during_cut"]]
        if confirmed:
            violations.append(f"{len(confirmed)} samples with a slot running twice ({len(confirmed) - len(doubles_bad)} "
                              f"while a holder's link was cut), first: {confirmed[0]}")
        episodes = _episodes(confirmed)
        return {
            "writes": dict(by_outcome), "writes_by_op": dict(Counter(f"{w.op}:{w.outcome}" for w in writes)),
            "lost": lost, "duplicated": dup, "refused_applied": applied_refused, "wrong_final_replicas": wrong_final,
            "faults": dict(Counter(f.kind for f in self.history.faults)),
            "faults_not_injected": [asdict(f) for f in self.history.faults if f.note.startswith("could not")],
            "samples": self.history.samples, "double_running_samples": len(doubles_bad),
            "double_running_during_cut": len(confirmed) - len(doubles_bad),
            "double_running_disproved": len(self.history.doubles) - len(confirmed),
            "double_running_episodes": len(episodes),
            "double_running_episode_s": sorted(round(e, 1) for e in episodes),
            "violations": violations,
        }


def _rfc3339(text: str) -> float:
    if text.startswith("0001-"):
        return 0.0
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{frac or 0}")


def _episodes(doubles: list[dict[str, Any]]) -> list[float]:
    """Durations of the distinct episodes of a slot running twice: the
    same pair of tasks seen in consecutive samples is one episode (its
    longest engine-measured overlap)."""
    spans: dict[tuple[str, str, tuple[str, ...]], float] = {}
    for d in doubles:
        key = (d["service"], d["slot"], tuple(sorted(t for _, t in d["where"])))
        spans[key] = max(spans.get(key, 0.0), d.get("overlap_s") or 0.0)
    return list(spans.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2)
    parser.add_argument("--faults", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--converge-timeout", type=float, default=300)
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--kinds", default=",".join(FAULTS),
                        help=f"the faults drawn from, comma-separated (default: all of {','.join(FAULTS)})")
    parser.add_argument("--hog", type=int, default=0, metavar="N",
                        help="N processes spinning on the CPU meanwhile (overload: session 23's doubles came at load 60-80)")
    args = parser.parse_args()
    if args.minutes <= 0 or args.minutes > 60 or not 0 <= args.faults <= 500 or not 0 <= args.hog <= 200:
        parser.error("--minutes in (0, 60], --faults in [0, 500], --hog in [0, 200]")
    args.kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = sorted(set(args.kinds) - set(FAULTS))
    if unknown or not args.kinds:
        parser.error(f"--kinds: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(FAULTS)}")
    lab = Lab("/var/lib/pyswarm-bench-soak", name="psbsoak", subnet="10.250.91.0/24")
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    lab.up(managers=3, workers=3, cluster=True, progress=lambda m: print(f"[lab] {m}", flush=True))
    try:
        return run(Soak(lab, args.seed), args, started, load_before)
    finally:
        if not args.keep:
            lab.down()


def run(soak: Soak, args: argparse.Namespace, started: datetime, load_before: tuple[float, ...]) -> int:
    seconds = args.minutes * 60
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=soak.writer, args=(m, deadline), daemon=True) for m in soak.lab.managers]
    sampler = threading.Thread(target=soak.sampler, daemon=True)
    for t in [*threads, sampler]:
        t.start()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hog)]
    try:
        soak.faults(args.faults, seconds, args.kinds)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    last_healed = time.monotonic()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + CLI_TIMEOUT + 10)
    # convergence after the last fault healed (the sampler goes on meanwhile)
    what = ""
    converge_s: float | None = None
    while time.monotonic() - last_healed < args.converge_timeout:
        try:
            done, what = soak.converged()
        except (PyswarmError, OSError) as exc:
            done, what = False, str(exc)
        if done:
            converge_s = time.monotonic() - last_healed
            break
        time.sleep(1)
    soak.stop.set()
    sampler.join(timeout=60)
    exports, missing = soak.exports()
    result = soak.check(exports)
    result["violations"].extend(missing)
    if converge_s is None:
        result["violations"].append(f"not converged {args.converge_timeout:.0f}s after the last fault: {what}")
        try:
            result["not_converged"] = soak.short_of_replicas()
        except (PyswarmError, OSError) as exc:
            result["not_converged"] = {"error": str(exc)}
        print(json.dumps(result["not_converged"], indent=1), flush=True)
    result.update(converge_s=converge_s, minutes=args.minutes, faults_asked=args.faults, seed=args.seed,
                  kinds=list(args.kinds), hog=args.hog,
                  loadavg_before=load_before, loadavg_after=os.getloadavg(), date=started.isoformat(timespec="seconds"))
    record = {**result, "history": [asdict(w) for w in soak.history.writes],
              "fault_log": [asdict(f) for f in soak.history.faults], "doubles": soak.history.doubles}
    out = ROOT / "results" / f"soak-{started.strftime('%Y-%m-%dT%H%M%SZ')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    w = result["writes"]
    print(f"\nsoak {args.minutes:g} min, seed {args.seed}: writes acked {w.get('acked', 0)}, refused {w.get('refused', 0)}, "
          f"indeterminate {w.get('indeterminate', 0)}; lost {result['lost']}, duplicated {result['duplicated']}, "
          f"refused-but-applied {result['refused_applied']}, wrong final replicas {result['wrong_final_replicas']}")
    print(f"faults: {result['faults']} ({len(result['faults_not_injected'])} not injected)")
    print(f"engine samples {result['samples']}: double-running {result['double_running_samples']} "
          f"(+{result['double_running_during_cut']} while the holder's link was cut; "
          f"{result['double_running_disproved']} more disproved by the engines' start/finish times); "
          f"{result['double_running_episodes']} episodes, overlaps {result['double_running_episode_s'][-10:]} s")
    print(f"converged {converge_s:.1f}s after the last fault" if converge_s is not None else "NOT converged")
    print(f"load average before {load_before[0]:.1f}, after {result['loadavg_after'][0]:.1f}; raw: {out.relative_to(ROOT.parent)}")
    for v in result["violations"][:30]:
        print(f"VIOLATION: {v}")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
