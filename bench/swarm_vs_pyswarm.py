"""pyswarm against Docker Swarm on the same lab hosts, in one run (issue 7).

Brings up its own lab (``pswbench``: 3 managers + 5 workers on
10.250.10.0/24, in /var/lib/pyswarm-lab-bench, so it leaves other labs
alone), forms a pyswarm cluster *and* a Docker Swarm on the same hosts'
engines, and runs each scenario for both, one after the other, several
rounds. "Running" is what the hosts' engines run, sampled ten times a
second. Writes bench/results/DATE.json, bench/results/plots/*.png and the
table in BENCHMARKS.md (latest figures of every scenario).

Run as root:

    make bench                         # everything
    make bench ONLY=deploy,scale       # some scenarios
    .venv/bin/python bench/swarm_vs_pyswarm.py --help
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from swarmbench import footprint, plot, report, scenarios
from swarmbench.clusters import BenchError, Pyswarm, Swarm

from pyswarm.deploy.lab import Lab, LabError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LAB_DIR = "/var/lib/pyswarm-lab-bench"
LAB_NAME = "pswbench"
LAB_SUBNET = "10.250.10.0/24"


def progress(msg: str) -> None:
    print(msg, flush=True)


def bring_up(args: argparse.Namespace) -> tuple[Lab, Pyswarm, Swarm]:
    marker = Path(args.lab_dir) / "bench.json"
    if args.reuse and marker.exists():
        lab = Lab.current(args.lab_dir)
        state = json.loads(marker.read_text())
        py = Pyswarm(lab, state["pyswarm_managers"], lab.workers)
        py.note = state.get("note", "")
        sw = Swarm(lab, lab.managers, lab.workers)
        progress(f"reusing the bench lab in {args.lab_dir}")
        return lab, py, sw
    lab = Lab(args.lab_dir, name=LAB_NAME, subnet=LAB_SUBNET)
    t0 = time.monotonic()
    lab.up(managers=args.managers, workers=args.workers, cluster=False, progress=lambda m: None)
    progress(f"lab up: {args.managers} managers + {args.workers} workers ({time.monotonic() - t0:.1f}s)")
    py = Pyswarm(lab, lab.managers[: args.pyswarm_managers], lab.workers)
    py.form(progress)
    sw = Swarm(lab, lab.managers, lab.workers)
    sw.form(progress)
    marker.write_text(json.dumps({"pyswarm_managers": py.managers, "note": py.note}))
    return lab, py, sw


def git_commit() -> str:
    res = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return res.stdout.strip()


def run(args: argparse.Namespace) -> int:
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(scenarios.SCENARIOS)
    unknown = [s for s in only if s not in scenarios.SCENARIOS]
    if unknown:
        print(f"bench: unknown scenario {', '.join(unknown)}; choose from {', '.join(scenarios.SCENARIOS)}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.timezone.utc)
    record: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()},
        "scenarios": [],
    }
    results: list[scenarios.Scenario] = []
    cluster_scenarios = [s for s in only if s not in ("footprint", "dns")]
    lab = None
    try:
        if cluster_scenarios:
            lab, py, sw = bring_up(args)
            record["lab"] = {"managers": lab.managers, "workers": lab.workers,
                             "pyswarm_managers": py.managers, "swarm_managers": sw.managers, "note": py.note}
            b = scenarios.Bench(lab, py, sw, args.rounds, progress)
            b.clean_all()
            pulls_before = sw.pull_attempts()
            for key in cluster_scenarios:
                progress(f"\n== {key}")
                try:
                    new: list[scenarios.Scenario] = {
                        "deploy": lambda: [scenarios.deploy(b, 30), scenarios.deploy(b, 100)],
                        "scale": lambda: scenarios.scale(b, 100),
                        "failure": lambda: [scenarios.worker_failure(b)],
                        "failover": lambda: [scenarios.failover(b)],
                        "update": lambda: [scenarios.rolling_update(b)],
                    }[key]()
                except BenchError as exc:
                    progress(f"  {key}: FAILED: {exc}")
                    record.setdefault("errors", []).append(f"{key}: {exc}")
                    continue
                for sc in new:
                    for name, why in sc.skipped.items():
                        progress(f"  {sc.key}: {name} skipped: {why}")
                results += new
            pulls = sw.pull_attempts() - pulls_before
            record["swarm_pull_attempts"] = pulls
            if pulls:
                progress(f"WARNING: Swarm tried to pull images {pulls} times (see the engines' logs)")
        if "dns" in only:
            progress("\n== dns")
            results += scenarios.dns(args.rounds, progress)
        record["scenarios"] = [sc.to_dict() for sc in results]
        if "footprint" in only:
            progress("\n== footprint")
            record["footprint"] = footprint.run(args.sim_sizes, progress)
    finally:
        record["scenarios"] = [sc.to_dict() for sc in results]
        record["machine"]["loadavg_after"] = os.getloadavg()
        record["seconds"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
        if lab is not None and not args.keep:
            progress("taking the bench lab down")
            lab.down()
        if record["scenarios"] or record.get("footprint"):
            save(record)
    return 0


def save(record: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = record["date"].replace(":", "").replace("+0000", "Z")
    path = RESULTS / f"{stamp}.json"
    why_no_plots = plot.available()
    if why_no_plots is None:
        for sc in record["scenarios"]:
            if sc["plot"]:
                png = plot.plot_scenario(sc, RESULTS / "plots" / f"{sc['key']}.png", sc.get("target"))
                if png is not None:
                    sc["png"] = str(png.relative_to(ROOT))
    else:
        progress(f"plots skipped: {why_no_plots}")
    path.write_text(json.dumps(record, indent=1) + "\n")
    progress(f"\nresults: {path.relative_to(ROOT)}")
    table = report.rows(record["scenarios"])
    if table:
        progress(report.text_table(table))
    (ROOT / "BENCHMARKS.md").write_text(benchmarks_md())
    progress("BENCHMARKS.md updated")


SUPERSEDED = {"dns": ("dns_p99", "dns_qps")}


def benchmarks_md() -> str:
    """BENCHMARKS.md from the latest result of every scenario in bench/results/."""
    latest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    footprint_rec: dict[str, Any] | None = None
    for path in sorted(RESULTS.glob("*.json")):
        rec = json.loads(path.read_text())
        rec["file"] = path.name
        for sc in rec.get("scenarios", []):
            latest[sc["key"]] = (sc, rec)
        if rec.get("footprint"):
            footprint_rec = rec
    # the single "dns" row of older records (figures in its notes) became two real rows
    for old, new in SUPERSEDED.items():
        if old in latest and any(k in latest for k in new):
            del latest[old]
    order = ["deploy30", "deploy100", "scale1to100", "scale100to1", "worker_failure", "leader_failover", "rolling_update", "dns_p99", "dns_qps"]
    keys = sorted(latest, key=lambda k: order.index(k) if k in order else len(order))
    return report.benchmarks_markdown([latest[k] for k in keys], footprint_rec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=os.environ.get("ONLY", ""),
                        help=f"comma-separated scenarios (default all): {', '.join(scenarios.SCENARIOS)}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    parser.add_argument("--managers", type=int, default=3, help="lab manager hosts, all Swarm managers (default 3)")
    parser.add_argument("--workers", type=int, default=5, help="lab worker hosts (default 5)")
    parser.add_argument("--pyswarm-managers", type=int, default=3,
                        help="pyswarm managers (default 3; falls back to 1, and says so, while pyswarm cannot add managers)")
    parser.add_argument("--sim-sizes", default="100x1000,1000x10000",
                        help="footprint sizes NODESxTASKS, comma-separated (default 100x1000,1000x10000)")
    parser.add_argument("--lab-dir", default=LAB_DIR)
    parser.add_argument("--keep", action="store_true", help="leave the bench lab up (for --reuse)")
    parser.add_argument("--reuse", action="store_true", help="use the bench lab left up by --keep")
    parser.add_argument("--markdown-only", action="store_true", help="only rewrite BENCHMARKS.md from bench/results/")
    args = parser.parse_args()
    if args.markdown_only:
        (ROOT / "BENCHMARKS.md").write_text(benchmarks_md())
        return 0
    if os.geteuid() != 0:
        print("bench: run as root (the lab makes namespaces)", file=sys.stderr)
        return 1
    try:
        return run(args)
    except (BenchError, LabError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
