"""Which service keys Swarm ignores, which it rejects, and what the spec knows.

These tables are data, not logic, so that the answer to "why was my key
ignored?" is one grep away. The lists follow Docker's own
(``docker/cli`` ``cli/compose/loader``'s unsupported properties, and the v3
schema that ``docker stack deploy`` validates against).
"""

from __future__ import annotations

from typing import Final

SWARM_IGNORED: Final[dict[str, str]] = {
    "cgroup_parent": "Swarm ignores it",
    "cgroupns_mode": "Swarm ignores it",
    "container_name": "Swarm names containers STACK_SERVICE.SLOT.TASKID",
    "devices": "Swarm ignores it",
    "domainname": "Swarm ignores it",
    "external_links": "Swarm ignores it; reach other services by name",
    "ipc": "Swarm ignores it",
    "links": "Swarm ignores it; services reach each other by name",
    "mac_address": "Swarm ignores it",
    "network_mode": "Swarm ignores it; use `networks`",
    "pid": "Swarm ignores it",
    "privileged": "Swarm ignores it",
    "restart": "Swarm ignores it; use `deploy.restart_policy`",
    "security_opt": "Swarm ignores it",
    "shm_size": "Swarm ignores it",
    "userns_mode": "Swarm ignores it",
    "expose": "Swarm ignores it; containers of a stack reach each other on every port",
    "profiles": "Swarm deploys every service",
    "pull_policy": "Swarm pulls the image on each node",
    "platform": "Swarm ignores it; use `deploy.placement.constraints` (node.platform.arch==...)",
    "develop": "a `docker compose watch` setting",
    "attach": "a `docker compose up` setting",
    "annotations": "Swarm ignores it",
    "gpus": "Swarm ignores it; use `deploy.resources.reservations.generic_resources`",
    "use_api_socket": "Swarm ignores it",
}
"""Keys ``docker stack deploy`` accepts but does nothing with: a warning, then deploy."""

SWARM_REJECTED: Final[dict[str, str]] = {
    "extends": "use YAML anchors and `<<` merge keys, or several -c files",
    "volumes_from": "share a named volume through `volumes` instead",
    "mem_limit": "write `deploy.resources.limits.memory` instead",
    "memswap_limit": "write `deploy.resources.limits.memory` instead",
    "mem_reservation": "write `deploy.resources.reservations.memory` instead",
    "mem_swappiness": "Swarm has no equivalent; remove it",
    "cpus": "write `deploy.resources.limits.cpus` instead",
    "cpu_shares": "write `deploy.resources.limits.cpus` (or reservations.cpus) instead",
    "cpu_quota": "write `deploy.resources.limits.cpus` instead",
    "cpu_period": "write `deploy.resources.limits.cpus` instead",
    "cpu_count": "write `deploy.resources.limits.cpus` instead",
    "cpu_percent": "write `deploy.resources.limits.cpus` instead",
    "cpu_rt_runtime": "Swarm has no equivalent; remove it",
    "cpu_rt_period": "Swarm has no equivalent; remove it",
    "cpuset": "Swarm has no equivalent; remove it",
    "pids_limit": "write `deploy.resources.limits.pids` instead",
    "oom_kill_disable": "Swarm has no equivalent; remove it",
    "oom_score_adj": "Swarm has no equivalent; remove it",
    "blkio_config": "Swarm has no equivalent; remove it",
    "storage_opt": "Swarm has no equivalent; remove it",
    "scale": "write `deploy.replicas` instead",
    "group_add": "Swarm has no equivalent; remove it",
    "volume_driver": "set the driver on the top-level `volumes` entry instead",
    "label_file": "write `labels` instead",
    "provider": "Swarm has no equivalent; remove it",
    "models": "Swarm has no equivalent; remove it",
    "post_start": "Swarm has no equivalent; remove it",
    "pre_stop": "Swarm has no equivalent; remove it",
    "credential_spec": "pyswarm runs Linux containers only; remove it",
    "isolation": "pyswarm runs Linux containers only; remove it",
    "runtime": "Swarm has no equivalent; remove it",
    "mem_swap_limit": "write `deploy.resources.limits.memory` instead",
}
"""Keys ``docker stack deploy`` refuses: an error saying what to write instead."""

SERVICE_KEYS: Final[tuple[str, ...]] = (
    "build", "image", "command", "entrypoint", "environment", "env_file", "labels", "ports",
    "volumes", "secrets", "configs", "networks", "healthcheck", "deploy", "logging",
    "cap_add", "cap_drop", "sysctls", "ulimits", "init", "user", "working_dir",
    "stop_grace_period", "stop_signal", "tmpfs", "extra_hosts", "hostname", "dns",
    "dns_search", "dns_opt", "read_only", "stdin_open", "tty", "depends_on",
)
"""The service keys pyswarm honours, in the order ``stack config`` prints them."""

DEPLOY_KEYS: Final[tuple[str, ...]] = (
    "mode", "replicas", "labels", "placement", "resources", "restart_policy",
    "update_config", "rollback_config", "endpoint_mode",
)
