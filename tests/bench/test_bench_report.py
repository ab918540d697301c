"""The benchmark harness's pure part: figures, verdicts and the table (bench/swarmbench/report.py).

The benchmarks themselves are not part of the suite (``make bench``); this
only checks that what they print and write reads right.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from swarmbench import report  # noqa: E402


def _scenario(goal: str, pyswarm: list[float | None], swarm: list[float | None], skipped: dict[str, str] | None = None,
              unit: str = "s") -> dict:
    runs = [{"orchestrator": "pyswarm", "seconds": s, "round": i + 1, "timeline": {}} for i, s in enumerate(pyswarm)]
    runs += [{"orchestrator": "swarm", "seconds": s, "round": i + 1, "timeline": {}} for i, s in enumerate(swarm)]
    return {"key": "k", "title": "stack deploy, 30 replicas → all running", "goal": goal, "runs": runs,
            "skipped": skipped or {}, "plot": True, "notes": [], "unit": unit}


def test_median_spread_ratio_and_missed_goal() -> None:
    [row] = report.rows([_scenario("half", [4.0, 6.0, 5.0], [10.0, 8.0, 12.0])])
    assert row["pyswarm"] == "5.00 s (4.00–6.00)"
    assert row["swarm"] == "10.0 s (8.00–12.0)"
    assert row["ratio"] == "0.50"
    assert row["verdict"].startswith("met")
    [row] = report.rows([_scenario("half", [9.0], [10.0])])
    assert row["verdict"] == "MISSED: ratio 0.90, goal ≤ 0.5 (1.8× too slow)"


def test_absolute_goal_and_runs_that_never_converged() -> None:
    [row] = report.rows([_scenario("abs:5", [3.0, None, 4.0], [18.0])])
    assert row["pyswarm"] == "3.50 s (3.00–4.00), 1 of 3 runs not reached"
    assert row["verdict"] == "met (3.50 s ≤ 5 s)"
    [row] = report.rows([_scenario("abs:2", [None], [9.0])])
    assert row["verdict"].startswith("MISSED: never reached")
    assert row["ratio"] == "—"


def test_skipped_side_and_markdown_escaping() -> None:
    sc = _scenario("le_swarm", [], [80.0], skipped={"pyswarm": "no updater | yet"})
    [row] = report.rows([sc])
    assert row["pyswarm"] == "skipped: no updater | yet" and row["verdict"] == "skipped"
    table = report.markdown_table([row])
    assert table.splitlines()[0].startswith("| scenario | pyswarm median (min–max) | Swarm median (min–max) | ratio")
    assert "no updater \\| yet" in table
    assert len(table.splitlines()) == 3


def test_dns_rows_in_their_own_units() -> None:
    [row] = report.rows([_scenario("abs:2", [0.74, 1.86, 0.9], [8.9, 33.3, 12.0], unit="ms")])
    assert row["pyswarm"] == "0.90 ms (0.74–1.86)" and row["goal"] == "≤ 2 ms"
    assert row["verdict"] == "met (0.90 ms ≤ 2 ms)"
    [row] = report.rows([_scenario("abs:2", [3.5], [8.9], unit="ms")])
    assert row["verdict"] == "MISSED: 3.50 ms, goal ≤ 2 ms (1.5 ms over)"
    # throughput: more is better
    [row] = report.rows([_scenario("ge_swarm", [39221.0], [14239.0], unit="q/s")])
    assert row["pyswarm"] == "39,221 q/s (39,221–39,221)" and row["ratio"] == "2.75"
    assert row["verdict"] == "met (ratio 2.75 ≥ 1)" and row["goal"] == "≥ Swarm"
    [row] = report.rows([_scenario("ge_swarm", [8000.0], [10000.0], unit="q/s")])
    assert row["verdict"] == "MISSED: ratio 0.80, goal ≥ 1 (20% below Swarm)"
