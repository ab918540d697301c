"""Figures and formatting: pure functions over the scenarios' results.

Kept free of the lab and of matplotlib so that tests can check the table
(tests/bench/test_report.py) without root.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Median and spread of one orchestrator's runs of one scenario."""

    median: float | None
    low: float | None
    high: float | None
    n: int  # runs that reached the target
    failed: int  # runs that did not

    def cell(self, unit: str = "s") -> str:
        if self.median is None:
            return f"not reached ({self.failed} of {self.failed} runs)" if self.failed else "—"
        text = f"{_num(self.median)} {unit} ({_num(self.low)}–{_num(self.high)})"
        if self.failed:
            text += f", {self.failed} of {self.n + self.failed} runs not reached"
        return text


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def summarize(values: Sequence[float | None]) -> Summary:
    ok = [v for v in values if v is not None]
    failed = len(values) - len(ok)
    if not ok:
        return Summary(None, None, None, 0, failed)
    return Summary(statistics.median(ok), min(ok), max(ok), len(ok), failed)


def ratio(a: Summary, b: Summary) -> float | None:
    if a.median is None or b.median is None or b.median == 0:
        return None
    return a.median / b.median


def verdict(goal: str, mine: Summary, peer: Summary, unit: str = "s") -> str:
    """Whether pyswarm met the scenario's goal, plainly, and by how much if not.

    Times and latencies: less is better. ``ge_swarm`` (throughput): more is."""
    if goal == "half":
        r = ratio(mine, peer)
        if r is None:
            return "no verdict (a side has no figure)"
        return f"met (ratio {r:.2f} ≤ 0.5)" if r <= 0.5 else f"MISSED: ratio {r:.2f}, goal ≤ 0.5 ({r / 0.5:.1f}× too slow)"
    if goal == "le_swarm":
        r = ratio(mine, peer)
        if r is None:
            return "no verdict (a side has no figure)"
        return f"met (ratio {r:.2f} ≤ 1)" if r <= 1 else f"MISSED: ratio {r:.2f}, goal ≤ 1 ({(r - 1) * 100:.0f}% slower than Swarm)"
    if goal == "ge_swarm":
        r = ratio(mine, peer)
        if r is None:
            return "no verdict (a side has no figure)"
        return f"met (ratio {r:.2f} ≥ 1)" if r >= 1 else f"MISSED: ratio {r:.2f}, goal ≥ 1 ({(1 - r) * 100:.0f}% below Swarm)"
    if goal.startswith("abs:"):
        limit = float(goal[4:])
        if mine.median is None:
            return f"MISSED: never reached (goal ≤ {limit:g} {unit})" if mine.failed else "no verdict (not measured)"
        if mine.median <= limit:
            return f"met ({_num(mine.median)} {unit} ≤ {limit:g} {unit})"
        return f"MISSED: {_num(mine.median)} {unit}, goal ≤ {limit:g} {unit} ({mine.median - limit:.1f} {unit} over)"
    return ""


GOAL_TEXT = {"half": "≤ 0.5 × Swarm", "le_swarm": "≤ Swarm", "ge_swarm": "≥ Swarm", "info": "—"}


def goal_text(goal: str, unit: str = "s") -> str:
    if goal.startswith("abs:"):
        return f"≤ {goal[4:]} {unit}"
    return GOAL_TEXT.get(goal, goal)


def rows(scenarios: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """One table row per scenario (dicts as in the JSON record)."""
    out = []
    for sc in scenarios:
        if sc.get("kind") == "footprint":
            continue
        skipped = sc.get("skipped", {})
        by = {name: summarize([r["seconds"] for r in sc["runs"] if r["orchestrator"] == name]) for name in ("pyswarm", "swarm")}
        unit = sc.get("unit", "s")
        cells = {name: (f"skipped: {skipped[name]}" if name in skipped else by[name].cell(unit)) for name in by}
        r = ratio(by["pyswarm"], by["swarm"])
        out.append({
            "scenario": sc["title"],
            "pyswarm": cells["pyswarm"],
            "swarm": cells["swarm"],
            "ratio": f"{r:.2f}" if r is not None else "—",
            "goal": goal_text(sc["goal"], unit),
            "verdict": "skipped" if "pyswarm" in skipped else verdict(sc["goal"], by["pyswarm"], by["swarm"], unit),
        })
    return out


def markdown_table(table: Sequence[dict[str, str]]) -> str:
    header = ["scenario", "pyswarm median (min–max)", "Swarm median (min–max)", "ratio pyswarm/Swarm", "goal", "verdict"]
    keys = ["scenario", "pyswarm", "swarm", "ratio", "goal", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table:
        lines.append("| " + " | ".join(row[k].replace("|", "\\|") for k in keys) + " |")
    return "\n".join(lines)


def text_table(table: Sequence[dict[str, str]]) -> str:
    """The same rows for a terminal."""
    keys = ["scenario", "pyswarm", "swarm", "ratio", "verdict"]
    header = {"scenario": "SCENARIO", "pyswarm": "PYSWARM", "swarm": "SWARM", "ratio": "RATIO", "verdict": "GOAL"}
    all_rows = [header] + list(table)
    widths = {k: min(60, max(len(r[k]) for r in all_rows)) for k in keys}
    return "\n".join("  ".join(r[k][: widths[k]].ljust(widths[k]) for k in keys).rstrip() for r in all_rows)


def footprint_markdown(fp: dict[str, Any]) -> str:
    if fp.get("skipped"):
        return f"Skipped: {fp['skipped']}"
    lines = ["| simulated nodes | tasks | running reached | time to all running | leader RSS (peak) | leader CPU while converging | leader CPU the 20 s after | leader CPU at rest (nothing written for 10 s) |",
             "|---|---|---|---|---|---|---|---|"]
    for s in fp.get("sizes", []):
        conv = f"{s['converge_s']:.1f} s" if s.get("converge_s") is not None else f"not within {s['timeout_s']:g} s"
        lines.append(
            f"| {s['nodes']} | {s['tasks']} | {s['running']} | {conv} | {s['rss_peak_mb']:.0f} MB | "
            f"{s['cpu_converging_pct']:.0f} % | {s['cpu_idle_pct']:.0f} % | "
            + (f"{s['cpu_settled_pct']:.0f} % |" if "cpu_settled_pct" in s else "not measured |")
        )
    return "\n".join(lines)


def benchmarks_markdown(latest: Sequence[tuple[dict[str, Any], dict[str, Any]]], footprint_rec: dict[str, Any] | None) -> str:
    """The whole BENCHMARKS.md: the latest figures of every scenario, with where they came from."""
    out = [
        "# Benchmarks: pyswarm against Docker Swarm",
        "",
        "Generated by `make bench` (bench/swarm_vs_pyswarm.py; see the README's *Benchmarks*). Every figure is",
        "measured for both orchestrators in the same run, on the same lab hosts (network namespaces on one",
        "machine, each with its own dockerd 20.10), with the same stack file and image, one orchestrator after",
        "the other, never both with containers at once. *Running* means running in the hosts' engines (their",
        "Engine API, sampled every 0.1 s), not an orchestrator's own view. Times are from the command (or the",
        "fault) to the first sample that shows the target. Median over the rounds, (min–max) beside it.",
        "",
    ]
    table = []
    sources: dict[str, dict[str, Any]] = {}
    for sc, rec in latest:
        row = rows([sc])[0]
        table.append(row)
        sources[rec["file"]] = rec
    if table:
        out += [markdown_table(table), ""]
    missed = [r for r in table if r["verdict"].startswith("MISSED")]
    if missed:
        out.append("**Goals missed:** " + "; ".join(f"{r['scenario']}: {r['verdict'][len('MISSED: '):]}" for r in missed) + ".")
        out.append("")
    skipped = [(sc, name, why) for sc, _ in latest for name, why in sc.get("skipped", {}).items()]
    if skipped:
        out.append("**Not measured:**")
        out += [f"- {sc['title']} — {name}: {why}" for sc, name, why in skipped]
        out.append("")
    plots = [(sc["title"], sc["png"]) for sc, _ in latest if sc.get("png")]
    if plots:
        out.append("## Curves")
        out.append("")
        out += [f"- [{title}]({png})" for title, png in plots]
        out.append("")
    notes = [(sc["title"], n) for sc, _ in latest for n in sc.get("notes", [])]
    if notes:
        out.append("## Notes")
        out.append("")
        out += [f"- {title}: {n}" for title, n in notes]
        out.append("")
    if footprint_rec is not None:
        out += ["## Manager footprint (pyswarm only)", "", footprint_markdown(footprint_rec["footprint"]), ""]
        out += [footprint_rec["footprint"].get("method", ""), ""]
        sources[footprint_rec["file"]] = footprint_rec
    out += ["## Runs these figures come from", ""]
    for name, rec in sorted(sources.items()):
        lab = rec.get("lab", {})
        m = rec.get("machine", {})
        line = (f"- bench/results/{name}: commit {rec.get('commit', '?')}, {rec.get('rounds', '?')} rounds, "
                f"{m.get('cpus', '?')} CPUs, load average {_load(m.get('loadavg_before'))} before, "
                f"{_load(m.get('loadavg_after'))} after")
        if lab:
            line += (f"; lab {len(lab.get('managers', []))} managers + {len(lab.get('workers', []))} workers, "
                     f"pyswarm managers {len(lab.get('pyswarm_managers', []))}, Swarm managers {len(lab.get('swarm_managers', []))}")
            if lab.get("note"):
                line += f" ({lab['note']})"
        if "swarm_pull_attempts" in rec:
            line += f"; Swarm image pull attempts: {rec['swarm_pull_attempts']}"
        out.append(line)
    out.append("")
    return "\n".join(out)


def _load(v: Any) -> str:
    if not v:
        return "?"
    return "/".join(f"{x:.1f}" for x in v)
