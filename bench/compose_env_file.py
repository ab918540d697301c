"""A service's ``env_file`` of 100,000 and 200,000 lines (issue 15: "linear time").

Before the fix, each line copied the environment built so far (quadratic:
100,000 lines took 23 s, 200,000 lines 174 s). This times, in the same run:

- ``load_stack`` of a one-service stack whose ``env_file`` has N lines (each
  line ``VAR_i=value_i_${VAR_j}``, so every line is interpolated against the
  lines before it), for N = 100,000 and 200,000: the ratio of the two says
  linear (~2) or quadratic (~4);
- the peer: ``docker stack config`` on the same files when a docker CLI with
  ``stack config`` is installed (Docker's Go loader), else a plain Python
  ``KEY=VALUE`` split of the same text (a lower bound: no interpolation).

    .venv/bin/python bench/compose_env_file.py [--rounds 3]

Prints the medians and the ratios. Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyswarm.compose import load_stack

SIZES = (100_000, 200_000)


def generate(directory: Path, lines: int) -> Path:
    env = directory / f"big{lines}.env"
    env.write_text("".join(f"VAR_{i}=value_{i}_${{VAR_{i // 2}}}\n" for i in range(lines)))
    path = directory / f"stack{lines}.yml"
    path.write_text(f"services:\n  web:\n    image: busybox\n    env_file: {env.name}\n")
    return path


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    """Wall seconds per round (the docker peer is another process, so CPU
    time of this one would not count it; the machine's load is said beside)."""
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def peer(path: Path) -> tuple[str, Callable[[], object]]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "stack", "config", "--help"], capture_output=True).returncode == 0:
        def run() -> object:
            return subprocess.run([docker, "stack", "config", "-c", path.name], cwd=path.parent, check=True,
                                  capture_output=True, env={"PATH": "/usr/bin:/bin", "HOME": str(path.parent)})
        return "docker stack config", run
    env = path.parent / path.name.replace("stack", "big").replace(".yml", ".env")

    def split() -> object:
        return dict(line.split("=", 1) for line in env.read_text().splitlines())
    return "python split (no interpolation)", split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows: list[tuple[int, float, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for lines in SIZES:
            path = generate(Path(tmp), lines)
            stack = load_stack([path], "bench", {})
            assert len(stack.services[0].container.env) == lines
            ours = statistics.median(timed(lambda: load_stack([path], "bench", {}), args.rounds))
            name, fn = peer(path)
            theirs = statistics.median(timed(fn, args.rounds))
            rows.append((lines, ours, name, theirs))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"env_file lines, {args.rounds} rounds, load average {load}")
    print(f"{'lines':>8s} {'load_stack':>11s} {'peer':>9s} {'ours/peer':>10s}  peer")
    for lines, ours, name, theirs in rows:
        print(f"{lines:8d} {ours:9.2f} s {theirs:7.2f} s {ours / theirs:10.2f}  {name}")
    print(f"ratio 200,000 / 100,000 lines for load_stack: {rows[1][1] / rows[0][1]:.2f} "
          "(2 is linear, 4 quadratic)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
