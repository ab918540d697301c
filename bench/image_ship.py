"""Shipping a 100 MB image to 5 nodes: `pyswarm image push` against
`docker save IMAGE | ssh NODE docker load` to each node in turn, same run.

A lab of its own (1 manager + 5 workers) unless ``--lab-dir`` names one up.
The image: pyswarm-lab/busybox plus three COPY layers of random bytes
(40 + 40 + 20 MB, incompressible). Two rounds each way:

1. first ship: no worker has the image (every worker has the busybox base);
2. after a one-layer change: the 20 MB file is rewritten and the image
   rebuilt; the workers all hold the first version.

Before each pyswarm round the workers hold exactly what the peer's round
found, and the other way round (the image is removed between them).
Figures: wall seconds of each whole round, and bytes sent (pyswarm: its
shipment counter, tar bytes into the SSH sessions; the peer: the `docker
save` archive size times the nodes). The ssh for the peer is a key of the
bench's own, added for the run to the lab hosts' authorized_keys (the lab's
private copy of /root/.ssh, never the machine's) and removed after.

    .venv/bin/python bench/image_ship.py [--lab-dir DIR] [--keep] [--repeat N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyswarm.deploy.lab_core import Lab

IMAGE = "bench/ship"
LAYERS = (40, 40, 20)  # MB of random bytes per COPY layer; the last one changes
WORKERS = 5
KEY_MARK = "pyswarm-bench-image-ship"


def sh(lab: Lab, host: str, command: str, timeout: float = 600) -> str:
    return str(lab.exec(host, ["sh", "-c", command], timeout=timeout).stdout)


def build(lab: Lab, ctx: Path, tag: str, change: bool) -> None:
    ctx.mkdir(exist_ok=True)
    for i, mb in enumerate(LAYERS):
        path = ctx / f"layer{i}.bin"
        if not path.exists() or (change and i == len(LAYERS) - 1):
            path.write_bytes(os.urandom(mb << 20))
    (ctx / "Dockerfile").write_text("FROM pyswarm-lab/busybox:latest\n" +
                                    "".join(f"COPY layer{i}.bin /data/layer{i}.bin\n" for i in range(len(LAYERS))))
    sh(lab, lab.managers[0], f"DOCKER_BUILDKIT=0 docker build -q -t {IMAGE}:{tag} {shlex.quote(str(ctx))} >/dev/null")


def drop(lab: Lab, workers: list[str], refs: list[str]) -> None:
    for w in workers:
        sh(lab, w, "docker image rm -f " + " ".join(refs) + " >/dev/null 2>&1 || true")


def give(lab: Lab, workers: list[str], ref: str) -> None:
    """Put ``ref`` on the workers without timing it (the state a round starts from)."""
    out = json.loads(lab.pyswarm(lab.managers[0], "image", "push", ref, *sum((["--node", w] for w in workers), []),
                                 "--format", "json", timeout=900).stdout)
    assert all(r["result"] in ("sent", "present") for r in out), out


def pyswarm_round(lab: Lab, workers: list[str], ref: str) -> tuple[float, int]:
    start = time.monotonic()
    proc = lab.pyswarm(lab.managers[0], "image", "push", ref, *sum((["--node", w] for w in workers), []),
                       "--format", "json", timeout=900)
    seconds = time.monotonic() - start
    rows = json.loads(proc.stdout)
    assert all(r["result"] == "sent" for r in rows), rows
    return seconds, sum(int(r["bytes"]) for r in rows)


def peer_round(lab: Lab, workers: list[str], ref: str, key: Path) -> tuple[float, int]:
    hosts = {w: lab.host(w).address for w in workers}
    ssh = f"ssh -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    size = int(sh(lab, lab.managers[0], f"docker save {ref} | wc -c").strip())
    start = time.monotonic()
    for w in workers:  # each node in turn, as a script around `docker save | ssh` does
        sh(lab, lab.managers[0], f"docker save {ref} | {ssh} root@{hosts[w]} docker load >/dev/null")
    return time.monotonic() - start, size * len(workers)


def floor_round(lab: Lab, workers: list[str], ref: str, archive: Path) -> tuple[float, float]:
    """The machine's own floor, no network and no SSH at all: the workers'
    engines ``docker load -i`` the same archive from the shared disk (it is
    in the page cache: saved just before), one worker alone, then all of
    them at once. Seconds of each (the workers lack ``ref`` before each)."""
    drop(lab, workers, [ref])
    start = time.monotonic()
    sh(lab, workers[0], f"docker load -q -i {archive} >/dev/null")
    alone = time.monotonic() - start
    drop(lab, workers, [ref])
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(lambda w: sh(lab, w, f"docker load -q -i {archive} >/dev/null"), workers))
    return alone, time.monotonic() - start


def add_key(lab: Lab, workers: list[str], scratch: Path) -> Path:
    key = scratch / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", KEY_MARK, "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    for w in workers:
        sh(lab, w, f"echo {shlex.quote(pub)} >> /root/.ssh/authorized_keys")
    return key


def remove_key(lab: Lab, workers: list[str]) -> None:
    for w in workers:
        sh(lab, w, f"sed -i '/{KEY_MARK}/d' /root/.ssh/authorized_keys")


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lab-dir", help="use this running lab (1 manager + at least 5 workers)")
    ap.add_argument("--keep", action="store_true", help="leave the bench's own lab up")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of each, the first ship's order alternating")
    args = ap.parse_args()
    own = args.lab_dir is None
    lab = Lab(args.lab_dir or "/var/lib/pyswarm-lab-bench-ship", name="psbship", subnet="10.250.198.0/24")
    if own:
        lab.up(managers=1, workers=WORKERS, cluster=True, progress=lambda m: print(f"[lab] {m}", file=sys.stderr))
    workers = lab.workers[:WORKERS]
    scratch = Path(tempfile.mkdtemp(prefix="pyswarm-bench-ship-"))
    ctx = scratch / "ctx"
    results: dict[str, Any] = {"load_before": load_average()}
    try:
        key = add_key(lab, workers, scratch)
        build(lab, ctx, "1", change=False)
        build(lab, ctx, "2", change=True)
        v1, v2 = f"{IMAGE}:1", f"{IMAGE}:2"
        changed = LAYERS[-1] << 20
        archive = scratch / "v1.tar"
        start = time.monotonic()
        sh(lab, lab.managers[0], f"docker save -o {archive} {v1}")
        results["save_s"] = time.monotonic() - start
        for i in range(args.repeat):
            # first ship: from nothing but the base; the order alternates
            # between repeats (the machine's load drifts within a run)
            order = ("peer", "pyswarm") if i % 2 == 0 else ("pyswarm", "peer")
            results.setdefault("floor", []).append(floor_round(lab, workers, v1, archive))
            for who in order:
                drop(lab, workers, [v1, v2])
                results.setdefault(f"first_{who}", []).append(
                    peer_round(lab, workers, v1, key) if who == "peer" else pyswarm_round(lab, workers, v1))
            # one changed layer: every worker holds v1
            give(lab, workers, v1)
            results.setdefault("change_pyswarm", []).append(pyswarm_round(lab, workers, v2))
            drop(lab, workers, [v2])
            results.setdefault("change_peer", []).append(peer_round(lab, workers, v2, key))
        results["load_after"] = load_average()
    finally:
        remove_key(lab, workers)
        drop(lab, workers, [f"{IMAGE}:1", f"{IMAGE}:2"])
        if own and not args.keep:
            lab.down()
    mb = 1 << 20
    print(f"image: {sum(LAYERS)} MB in {len(LAYERS)} layers on busybox, to {len(workers)} workers; "
          f"load average {results['load_before']} before, {results['load_after']} after")
    print("| round | repeat | pyswarm s | pyswarm MB sent | peer s | peer MB sent | time ratio | bytes ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("first", "change"):
        ratios = []
        for i, ((ps, pb), (qs, qb)) in enumerate(zip(results[f"{name}_pyswarm"], results[f"{name}_peer"]), 1):
            ratios.append(ps / qs)
            print(f"| {name} | {i} | {ps:.1f} | {pb / mb:.1f} | {qs:.1f} | {qb / mb:.1f} | {ps / qs:.2f} | {pb / qb:.3f} |")
        print(f"| {name} | median | | | | | {statistics.median(ratios):.2f} | |")
    print(f"floor (no network, no SSH): `docker save` to a file on the manager {results['save_s']:.1f} s; "
          "the workers' engines `docker load -i` that file:")
    print("| repeat | one worker alone s | 5 workers at once s | floor/peer | pyswarm/peer | pyswarm/floor |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, ((alone, five), (ps, _), (qs, _)) in enumerate(
            zip(results["floor"], results["first_pyswarm"], results["first_peer"]), 1):
        print(f"| {i} | {alone:.1f} | {five:.1f} | {five / qs:.2f} | {ps / qs:.2f} | {ps / five:.2f} |")
    per_node = results["change_pyswarm"][-1][1] / len(workers)
    print(f"after the change: {per_node / mb:.2f} MB per node for a {changed / mb:.0f} MB layer "
          f"({per_node / changed:.3f}x the changed layer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
