"""Manager footprint: the pyswarm leader's RSS and CPU with many simulated nodes.

For each size NODESxTASKS: a lab of one host (``pswbfp``, its own subnet and
directory), ``pyswarm init`` in it with an address pool big enough for a /24
per node (10.128.0.0/14), then the node simulator (swarmbench/nodesim.py)
inside that host joins NODES fake nodes through the real join API and plays
their agents over real SSH sessions opened by the real dispatcher, without
containers. A stack with TASKS replicas (constraint node.role==worker, so
all on simulated nodes) is deployed, and the leader's process is sampled
(/proc: VmRSS; utime+stime with its children's, the DNS process among
them) while the tasks converge to running (in the manager's own view: there
are no engines to look at here) and for 20 s at rest afterwards. Docker
Swarm is not measured here (the issue does not ask).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyswarm.deploy.lab import IMAGE, Lab, LabCommandError

from .clusters import BenchError, cmdline, netns_pids, wait_until

LAB_DIR = "/var/lib/pyswarm-lab-benchfp"
POOL = "10.128.0.0/14"
PORT = 2222
CLK = os.sysconf("SC_CLK_TCK")

METHOD = (
    "Method: one manager host; NODES simulated nodes (bench/swarmbench/nodesim.py: joined through the real "
    "join API, each a real SSH session from the real dispatcher to a fake agent that speaks pyswarm.protocol "
    "and reports every assigned task running at once, no containers); a stack of TASKS replicas deployed; "
    "the leader process sampled from /proc (RSS its own; CPU with its children's, the DNS process's and a "
    "compaction's dump writer). CPU is % of one core. The simulator runs on the same 2 shared "
    "cores as the manager."
)


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of ``pid`` alone, and of it with its children:
    those it has waited for (a compaction's forked dump writer) and its live
    descendants (the DNS process), each with the children it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    alone = (int(fields[11]) + int(fields[12])) / CLK
    total = alone + (int(fields[13]) + int(fields[14])) / CLK
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                total += _cpu(int(child))[1]
            except OSError:
                pass  # gone meanwhile
    return alone, total


def _proc(pid: int) -> tuple[float, float, float]:
    """(RSS in MB of ``pid``, CPU seconds so far of it and its children (the
    DNS process answers for the manager, and its work is the manager's), of
    it alone)."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    alone, total = _cpu(pid)
    return rss, total, alone


class ProcSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float, float, float]] = []  # (t, rss MB, cpu s, cpu s of the leader alone)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, cpu, alone = _proc(self.pid)
            except OSError:
                return
            self.samples.append((time.monotonic(), rss, cpu, alone))
            self._stop.wait(0.5)

    def cpu_pct(self, t0: float, t1: float, alone: bool = False) -> float:
        """% of a core over [t0, t1], with the children's or (``alone``) without."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return 0.0
        i = 3 if alone else 2
        return 100 * (inside[-1][i] - inside[0][i]) / max(1e-6, inside[-1][0] - inside[0][0])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _profile(pid: int, phase: str, seconds: float) -> subprocess.Popen[bytes] | None:
    """With PYSWARM_FP_PYSPY=DIR, py-spy samples the leader during ``phase``
    into DIR/fp-PHASE-PID.txt (collapsed stacks: `sort -k2 -n` or a flame
    graph tool reads them); the figures are then taken with the sampler on."""
    out = os.environ.get("PYSWARM_FP_PYSPY")
    if not out:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
                             "--format", "raw", "--nonblocking", "-o", f"{out}/fp-{phase}-{pid}.txt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(2)  # py-spy writes what it has on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


def measure(nodes: int, tasks: int, progress: Callable[[str], None], timeout: float = 300) -> dict[str, Any]:
    lab = Lab(LAB_DIR, name="pswbfp", subnet="10.250.11.0/24")
    lab.up(managers=1, workers=0, cluster=False)
    sim: subprocess.Popen[str] | None = None
    out: dict[str, Any] = {"nodes": nodes, "tasks": tasks, "timeout_s": timeout, "converge_s": None, "running": 0}
    try:
        host = lab.managers[0]
        addr = lab.hosts[host]
        lab.pyswarm(host, "init", "--advertise-addr", addr, "--dns-upstream", "none", "--default-addr-pool", POOL, timeout=120)
        token = lab.pyswarm(host, "join-token", "worker", "-q").stdout.strip()
        pid = next((p for p in netns_pids(lab, host) if cmdline(p)[-2:] == ["manager", "run"]), None)
        if pid is None:
            raise BenchError("footprint: no `pyswarm manager run` process in the footprint lab")
        procs = ProcSampler(pid)
        h = lab.host(host)
        env = h.env({"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        t_join = time.monotonic()
        sim = subprocess.Popen(h.nsenter() + [sys.executable, "-m", "swarmbench.nodesim", "--token", token,
                                              "--manager", f"{addr}:2377", "--nodes", str(nodes), "--port", str(PORT)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        assert sim.stdout is not None
        said: list[str] = []
        for line in sim.stdout:
            if line.startswith("serving"):
                break
            said.append(line)
            if line.startswith("joined"):
                progress(f"  {line.strip()}")
        else:
            raise BenchError(f"footprint: the node simulator exited ({sim.wait()}): {''.join(said[-15:]).strip()}")
        out["join_s"] = round(time.monotonic() - t_join, 1)
        threading.Thread(target=lambda: [None for _ in sim.stdout], daemon=True).start()  # type: ignore[union-attr]

        def ready() -> int:
            rows = json.loads(lab.pyswarm(host, "node", "ls", "--format", "json", timeout=60).stdout)
            return sum(1 for r in rows if str(r.get("status")).lower() == "ready" and r.get("hostname") != host)

        t_ready = time.monotonic()
        last = 0
        while time.monotonic() - t_ready < timeout:
            last = ready()
            if last >= nodes:
                break
            time.sleep(2)
        out["nodes_ready"] = last
        out["nodes_ready_s"] = round(time.monotonic() - t_ready, 1)
        progress(f"  {last}/{nodes} simulated nodes ready after {out['nodes_ready_s']} s")
        stack = Path(LAB_DIR) / "fp.yml"
        stack.write_text(f"services:\n  web:\n    image: {IMAGE}\n    deploy:\n      replicas: {tasks}\n"
                         f"      placement:\n        constraints: [\"node.role==worker\"]\n")
        spy = _profile(pid, "converge", timeout)
        load_start = os.getloadavg()[0]
        t0 = time.monotonic()
        lab.pyswarm(host, "stack", "deploy", "-c", str(stack), "fp", timeout=120)

        def running() -> int:
            rows = json.loads(lab.pyswarm(host, "service", "ls", "--format", "json", timeout=60).stdout)
            return sum(int(r.get("running", 0)) for r in rows if r.get("name") == "fp_web")

        while time.monotonic() - t0 < timeout:
            try:
                out["running"] = running()
            except LabCommandError:
                pass
            if out["running"] >= tasks:
                out["converge_s"] = round(time.monotonic() - t0, 1)
                break
            time.sleep(1)
        t1 = time.monotonic()
        _stop_profile(spy)
        spy = _profile(pid, "rest", 20)
        time.sleep(20)
        t2 = time.monotonic()
        _stop_profile(spy)

        def store_index() -> int:
            return int(json.loads(lab.pyswarm(host, "manager", "metrics", timeout=60).stdout)["store_index"])

        # at rest proper: once nothing has been written for 10 s (the 20 s
        # just after convergence still see the last reports, the reaper and
        # the DNS and mesh builds that follow them)
        last, still_since = store_index(), time.monotonic()
        while time.monotonic() - still_since < 10 and time.monotonic() - t2 < 120:
            time.sleep(2)
            now_index = store_index()
            if now_index != last:
                last, still_since = now_index, time.monotonic()
        out["settle_s"] = round(time.monotonic() - t2, 1)
        spy = _profile(pid, "settled", 20)
        t3 = time.monotonic()
        time.sleep(20)
        t4 = time.monotonic()
        _stop_profile(spy)
        procs.stop()
        out["rss_peak_mb"] = max(s[1] for s in procs.samples)
        out["rss_end_mb"] = procs.samples[-1][1]
        out["cpu_converging_pct"] = procs.cpu_pct(t0, t1)
        out["cpu_idle_pct"] = procs.cpu_pct(t1 + 1, t2)  # the 20 s just after convergence
        out["cpu_settled_pct"] = procs.cpu_pct(t3 + 1, t4)  # 20 s once nothing was written for 10 s
        # the leader alone: the first quiet minute may hold a compaction's dump writer (seconds of a forked child)
        out["cpu_settled_alone_pct"] = procs.cpu_pct(t3 + 1, t4, alone=True)
        out["cpu_converging_alone_s"] = round(procs.cpu_pct(t0, t1, alone=True) * (t1 - t0) / 100, 1)
        out["cpu_converging_s"] = round(out["cpu_converging_pct"] * (t1 - t0) / 100, 1)  # leader CPU seconds
        out["load_start"] = load_start
        out["load_end"] = os.getloadavg()[0]
        conv = f"{out['converge_s']} s" if out["converge_s"] is not None else f"not within {timeout:g} s ({out['running']} running)"
        progress(f"  {nodes} nodes x {tasks} tasks: converged {conv}; leader RSS peak {out['rss_peak_mb']:.0f} MB, "
                 f"CPU {out['cpu_converging_pct']:.0f}% converging ({out['cpu_converging_s']} CPU s with its children's, "
                 f"{out['cpu_converging_alone_s']} of them its own), "
                 f"{out['cpu_idle_pct']:.0f}% in the 20 s after, {out['cpu_settled_pct']:.0f}% at rest "
                 f"({out['cpu_settled_alone_pct']:.0f}% its own) "
                 f"(nothing written for 10 s, {out['settle_s']} s later); load average {load_start:.1f} at the deploy, {out['load_end']:.1f} at the end")
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait()
        lab.down()
    return out


def run(sizes: str, progress: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"method": METHOD, "sizes": []}
    for size in sizes.split(","):
        nodes, tasks = (int(x) for x in size.lower().split("x"))
        # PYSWARM_FP_TIMEOUT: seconds to wait for the nodes and for convergence (default 300)
        result["sizes"].append(measure(nodes, tasks, progress, float(os.environ.get("PYSWARM_FP_TIMEOUT", "300"))))
    return result
