"""Running replicas over time, pyswarm and Swarm on one chart (one PNG a scenario).

matplotlib comes with the optional ``bench`` extra (``pip install -e '.[bench]'``);
without it the harness still writes the JSON and the table and says that
the plots were skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"pyswarm": "#1f77b4", "swarm": "#d62728"}
LABELS = {"pyswarm": "pyswarm", "swarm": "Docker Swarm"}


def available() -> str | None:
    """None when matplotlib can be imported, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    return None


def plot_scenario(sc: dict[str, Any], path: Path, target: int | None = None) -> Path | None:
    runs = [r for r in sc["runs"] if r["timeline"]]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    shown: set[str] = set()
    main = next(iter(runs[0]["timeline"]))
    ymax = 0
    for run in runs:
        name = run["orchestrator"]
        for series, points in run["timeline"].items():
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [max(0, p[1]) for p in points]
            ymax = max(ymax, max(ys))
            primary = series == main
            label = None
            key = f"{name}:{series}"
            if key not in shown:
                shown.add(key)
                label = LABELS[name] + ("" if primary else f" ({series})")
            ax.plot(xs, ys, drawstyle="steps-post", color=COLOURS[name], alpha=0.85 if primary else 0.35,
                    linewidth=1.8 if primary else 1.0, linestyle="-" if primary else ":", label=label)
            if primary and run["seconds"] is not None:
                ax.plot([run["seconds"]], [ys[min(range(len(xs)), key=lambda i: abs(xs[i] - run["seconds"]))]],
                        marker="o", color=COLOURS[name], markersize=4)
    if target:
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    rounds = max(r["round"] for r in runs)
    ax.set_title(sc["title"] + f"\n{rounds} round{'s' if rounds > 1 else ''} each, one line per run; dot = target reached",
                 fontsize=10)
    ax.set_xlabel("seconds since the command (or the fault)")
    ax.set_ylabel(main.replace("running", "replicas running") if main == "running" else main)
    ax.set_ylim(bottom=0, top=max(ymax, target or 0) * 1.08 + 1)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
