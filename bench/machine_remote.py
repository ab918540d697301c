"""From the operator's machine: how long ``machine init`` / ``machine add`` take
on bare hosts, and what the remote CLI costs against the same command on the
manager (issue 12; goals: under 30 s each, under 1.5x).

A bare lab of its own (1 manager + 1 worker: the system's python3, sshd and
dockerd, no pyswarm), reached from the root namespace through the lab's SSH
config, as a laptop reaches VMs:

- ``machine init manager1``: SSH, preflight, wheels shipped and installed,
  ``pyswarm init``, until the manager answers ready (the command waits);
- ``machine add worker1``: the same, ``pyswarm join``, until the node is
  ready in ``node ls``; then each again (nothing to do);
- the round trip of ``pyswarm node ls`` and ``pyswarm service ls`` against
  the same command run on the manager host (its unix socket), interleaved,
  medians, through the context: cold (no kept connection: the invocation
  makes the ssh master and its forward, pyswarm/ssh_keep.py), warm (the
  next invocation, through the kept forward), and with keeping off
  (``PYSWARM_SSH_KEEP=0``: ssh and dial-stdio on every invocation).

The first ``machine init`` of a run also builds the wheelhouse when the
cache (``~/.cache/pyswarm``) has none for this source: run with ``--warm``
to build it first so the figure is the host's, not the build's.

    python bench/machine_remote.py [--rounds 5] [--warm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyswarm import ssh_keep
from pyswarm.deploy.lab_core import Lab

EXE = str(Path(sys.executable).parent / "pyswarm")


def timed(argv: list[str], env: dict[str, str], steps: list[tuple[float, str]] | None = None) -> float:
    """Seconds ``argv`` took; with ``steps``, each line it printed on stderr
    (``machine``'s progress: one line as each step starts) with its offset."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stderr is not None and proc.stdout is not None
    err = []
    for line in proc.stderr:
        err.append(line)
        if steps is not None:
            steps.append((time.monotonic() - start, line.strip()))
    out = proc.stdout.read()
    code = proc.wait(600)
    took = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"bench: {' '.join(argv[1:])} failed: {out}{''.join(err)}")
    return took


def step_table(steps: list[tuple[float, str]], total: float) -> list[str]:
    """Each step's share: from its progress line to the next (the last to the end)."""
    ends = [t for t, _ in steps[1:]] + [total]
    return [f"  {end - t:6.2f} s  {line[:100]}" for (t, line), end in zip(steps, ends)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="round trips per command and side (default 5)")
    ap.add_argument("--warm", action="store_true", help="build the wheelhouse before timing machine init")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pyswarm-bench-machine-"))
    lab = Lab(home / "lab", name="pswbm", subnet="10.250.160.0/24")
    lab.up(managers=1, workers=1, cluster=False, bare=True)
    results: dict[str, object] = {"load_before": os.getloadavg()[0]}
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSWARM_", "XDG_", "SSH_AUTH_SOCK"))}
        env.update(PYSWARM_SSH_CONFIG=str(lab.ssh_config), XDG_CONFIG_HOME=str(home / "xdg"))
        if args.warm:
            from pyswarm import wheelhouse

            wheelhouse.build(wheelhouse.Target.local())
        init_steps: list[tuple[float, str]] = [(0.0, "start, SSH connection (until the next line)")]
        add_steps: list[tuple[float, str]] = [(0.0, "start, SSH connection (until the next line)")]
        results["machine_init_s"] = timed([EXE, "machine", "init", "manager1", "--name", "bm"], env, init_steps)
        results["machine_add_s"] = timed([EXE, "machine", "add", "worker1"], env, add_steps)
        results["machine_init_steps"] = step_table(init_steps, float(results["machine_init_s"]))  # type: ignore[arg-type]
        results["machine_add_steps"] = step_table(add_steps, float(results["machine_add_s"]))  # type: ignore[arg-type]
        results["machine_init_again_s"] = timed([EXE, "machine", "init", "manager1", "--name", "bm"], env)
        results["machine_add_again_s"] = timed([EXE, "machine", "add", "worker1"], env)
        host = lab.host("manager1")
        os.environ.pop("XDG_RUNTIME_DIR", None)  # as in env: where the CLI keeps its connection
        url = json.loads(subprocess.run([EXE, "context", "inspect", "bm"], env=env, capture_output=True,
                                        text=True, check=True).stdout)[0]["hosts"][0]
        kept = ssh_keep.Kept.of(url, [str(lab.ssh_config)])
        assert kept is not None
        off = {**env, "PYSWARM_SSH_KEEP": "0"}
        for command in (["node", "ls"], ["service", "ls"]):
            cold, warm, plain, local = [], [], [], []
            for _ in range(args.rounds):
                kept.stop()
                cold.append(timed([EXE, *command], env))  # the first invocation: it makes the master
                warm.append(timed([EXE, *command], env))  # the next: through the kept forward
                plain.append(timed([EXE, *command], off))  # keeping off: ssh and dial-stdio each time
                local.append(timed([*host.nsenter("/root"), "env", "PATH=/usr/local/bin:/usr/bin:/bin",
                                    "pyswarm", *command], {"PATH": os.environ["PATH"]}))
            key = "_".join(command)
            on_manager = statistics.median(local)
            results[f"{key}_on_manager_median_s"] = on_manager
            for name, times in (("warm", warm), ("cold", cold), ("keep_off", plain)):
                results[f"{key}_{name}_median_s"] = statistics.median(times)
                results[f"{key}_{name}_ratio"] = statistics.median(times) / on_manager
        kept.stop()
        results["load_after"] = os.getloadavg()[0]
    finally:
        lab.down()
    print(json.dumps(results, indent=2))
    for key in ("machine_init_s", "machine_add_s"):
        print(f"{key}: {results[key]:.1f} s (goal < 30 s)")
        print("\n".join(results[key.replace("_s", "_steps")]))  # type: ignore[arg-type]
    for key in ("node_ls", "service_ls"):
        print(f"{key}: on the manager {results[key + '_on_manager_median_s']:.3f} s; through the context: "
              + ", ".join(f"{name} {results[f'{key}_{name}_median_s']:.3f} s = {results[f'{key}_{name}_ratio']:.2f}x"
                          for name in ("warm", "cold", "keep_off"))
              + " (goal < 1.5x)")
    print(f"load: {results['load_before']:.2f} before, {results['load_after']:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
