"""Loading a 500-service stack file (issue 4: "well under a second").

Generates a realistic stack file (every service with environment, labels,
ports, volumes, secrets, configs, healthcheck, logging, deploy with
resources/placement/update policy, depends_on on an earlier service, plus
YAML anchors and ``${VAR}`` interpolation), then times, in the same run:

- ``load_stack`` (parse with marks, interpolate, check every key, normalise,
  order by depends_on, build ServiceSpecs, read the secret/config files);
- the peer: ``yaml.safe_load`` of the same file (PyYAML's C loader when
  available, else the pure-Python one; it is said which), i.e. only parsing.

    .venv/bin/python bench/compose_load.py [--services 500] [--rounds 7]

Prints the medians and the ratio load_stack / safe_load. Results are
recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from pyswarm.compose import load_stack

HEAD = """\
x-logging: &logging
  driver: json-file
  options: {max-size: 10m, max-file: "3"}
x-deploy: &deploy
  update_config: {parallelism: 2, delay: 10s, order: start-first, failure_action: rollback}
  restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3}
services:
"""

SERVICE = """\
  svc{i}:
    image: registry.example.com/team/svc{i}:${{TAG:-1.0.{i}}}
    command: ["/bin/app", "--port", "80", "--name", "svc{i}"]
    environment:
      SERVICE_NAME: svc{i}
      LOG_LEVEL: ${{LOG_LEVEL:-info}}
      UPSTREAM: http://svc{prev}:80
    labels: {{team: t{team}, app: svc{i}}}
    ports: ["{port}:80"]
    volumes:
      - data{i}:/var/lib/app
      - ./conf:/etc/app:ro
      - type: tmpfs
        target: /cache
        tmpfs: {{size: 64m}}
    secrets: [api_key, {{source: db_password, target: db, uid: "1000", mode: 0400}}]
    configs: [{{source: app_conf, target: /etc/app/app.conf}}]
    healthcheck: {{test: ["CMD", "/bin/app", "health"], interval: 30s, timeout: 5s, retries: 3}}
    logging: *logging
    user: "1000:1000"
    working_dir: /srv
    stop_grace_period: 30s
    ulimits: {{nofile: {{soft: 1024, hard: 4096}}}}
    networks: [front, back]
    depends_on: [svc{prev}]
    deploy:
      <<: *deploy
      replicas: {replicas}
      placement:
        constraints: ["node.labels.zone==z{zone}"]
        max_replicas_per_node: 2
      resources:
        limits: {{cpus: "0.5", memory: 256m, pids: 200}}
        reservations: {{cpus: "0.1", memory: 64m}}
"""

TAIL = """\
networks: {{front: {{}}, back: {{}}}}
volumes:
{volumes}
secrets:
  api_key: {{file: ./api_key.txt}}
  db_password: {{external: true}}
configs:
  app_conf: {{file: ./app.conf}}
"""


def generate(directory: Path, services: int) -> Path:
    parts = [HEAD]
    for i in range(services):
        parts.append(SERVICE.format(i=i, prev=max(i - 1, 0) if i else 0, team=i % 7, port=10000 + i,
                                    replicas=1 + i % 5, zone=i % 3))
    parts[1] = parts[1].replace("    depends_on: [svc0]\n", "")  # svc0 depends on nothing
    parts.append(TAIL.format(volumes="\n".join(f"  data{i}:" for i in range(services))))
    (directory / "api_key.txt").write_text("key")
    (directory / "app.conf").write_text("a=1\n")
    (directory / "conf").mkdir(exist_ok=True)
    path = directory / "stack.yml"
    path.write_text("".join(parts))
    return path


def timed(fn: Callable[[], object], rounds: int) -> tuple[list[float], list[float]]:
    """CPU seconds and wall seconds per round. CPU time is the figure to read
    on a shared machine (other engineers' labs take the cores; wall time then
    measures them); both are printed."""
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return cpu, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = generate(Path(tmp), args.services)
        text = path.read_text()
        loader = getattr(yaml, "CSafeLoader", None)
        peer_name = "yaml.load(CSafeLoader)" if loader else "yaml.safe_load (pure Python)"

        def peer() -> object:
            return yaml.load(text, Loader=loader) if loader else yaml.safe_load(text)

        env = {"TAG": "2.0"}
        stack = load_stack([path], "bench", env)
        assert len(stack.services) == args.services and not stack.warnings, stack.warnings[:3]
        ours = timed(lambda: load_stack([path], "bench", env), args.rounds)
        theirs = timed(peer, args.rounds)
        # PyYAML's pure-Python safe_load too: load_stack builds on PyYAML's composer
        pure = timed(lambda: yaml.load(text, Loader=yaml.SafeLoader), args.rounds)
    size = len(text.encode())
    print(f"stack file: {args.services} services, {text.count(chr(10))} lines, {size / 1024:.0f} KiB, "
          f"{args.rounds} rounds")
    print(f"{'':30s} {'CPU median':>11s} {'CPU min':>9s} {'wall median':>12s}")
    for name, (cpu, wall) in (("load_stack", ours), (peer_name, theirs), ("yaml.safe_load (pure Python)", pure)):
        print(f"{name:30s} {statistics.median(cpu) * 1000:8.0f} ms {min(cpu) * 1000:6.0f} ms "
              f"{statistics.median(wall) * 1000:9.0f} ms")
    ratio = statistics.median(ours[0]) / statistics.median(theirs[0])
    print(f"ratio load_stack / {peer_name} (CPU): {ratio:.2f}")
    print(f"ratio load_stack / pure-Python safe_load (CPU): "
          f"{statistics.median(ours[0]) / statistics.median(pure[0]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
