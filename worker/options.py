"""The stack file's container keys, as the Engine API's create body says them.

``ContainerSpec.options`` holds the service's keys in compose long syntax
(normalised by :mod:`pyswarm.compose`); :func:`apply_options` adds their
Engine API form to the body :func:`pyswarm.worker.tasks.container_config`
built. Pure (no I/O), so every key's translation is unit tested; writing
secret files and making bind sources is :mod:`.files`' job.

Not here: ``healthcheck`` (issue 5), ``ports`` and ``networks`` (issue 6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pyswarm.compose.units import parse_duration
from pyswarm.models import ContainerSpec

LABEL_STOP_GRACE = "pyswarm.task.stop-grace-period"
"""Seconds the agent waits between SIGTERM and SIGKILL when it removes the
container; a label so that a later agent session, which knows the container
only from ``GET /containers/json``, still honours it."""


def stop_grace_seconds(spec: ContainerSpec) -> int | None:
    """``stop_grace_period`` in whole seconds (rounded up), None when unset."""
    value = spec.options.get("stop_grace_period")
    if value in (None, ""):
        return None
    return max(0, math.ceil(parse_duration(value)))


def volume_mount(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One normalised ``volumes`` entry as an Engine API ``Mount``."""
    kind = str(entry.get("type", "volume"))
    mount: dict[str, Any] = {"Type": kind, "Target": entry["target"]}
    if entry.get("source"):
        mount["Source"] = entry["source"]
    if entry.get("read_only"):
        mount["ReadOnly"] = True
    if kind == "bind":
        bind = entry.get("bind") or {}
        if bind.get("propagation"):
            mount["BindOptions"] = {"Propagation": bind["propagation"]}
    elif kind == "volume":
        vol = entry.get("volume") or {}
        opts: dict[str, Any] = {}
        if vol.get("nocopy"):
            opts["NoCopy"] = True
        if vol.get("subpath"):
            opts["Subpath"] = vol["subpath"]
        if vol.get("labels"):
            opts["Labels"] = dict(vol["labels"])
        if vol.get("driver") or vol.get("driver_opts"):
            opts["DriverConfig"] = {"Name": vol.get("driver") or "local",
                                    "Options": dict(vol.get("driver_opts") or {})}
        if opts:
            mount["VolumeOptions"] = opts
    elif kind == "tmpfs":
        tmp = entry.get("tmpfs") or {}
        topts: dict[str, Any] = {}
        if tmp.get("size"):
            topts["SizeBytes"] = int(tmp["size"])
        if tmp.get("mode") is not None:
            topts["Mode"] = int(tmp["mode"])
        if topts:
            mount["TmpfsOptions"] = topts
    return mount


def _tmpfs(items: Sequence[str]) -> dict[str, str]:
    """The service-level ``tmpfs: [/run, "/tmp:size=64m"]`` as ``HostConfig.Tmpfs``."""
    out: dict[str, str] = {}
    for item in items:
        path, _, opts = str(item).partition(":")
        out[path] = opts
    return out


def apply_resources(host: dict[str, Any], resources: Mapping[str, Any]) -> None:
    """``deploy.resources``: limits as the engine enforces them; a memory
    reservation as a soft limit, as Swarm does."""
    limits = resources.get("limits") or {}
    if limits.get("cpus"):
        host["NanoCpus"] = int(round(float(limits["cpus"]) * 1e9))
    if limits.get("memory"):
        host["Memory"] = int(limits["memory"])
    if limits.get("pids"):
        host["PidsLimit"] = int(limits["pids"])
    reserve = resources.get("reservations") or {}
    if reserve.get("memory"):
        host["MemoryReservation"] = int(reserve["memory"])


def apply_options(config: dict[str, Any], spec: ContainerSpec,
                  files: Sequence[Mapping[str, Any]] = ()) -> None:
    """Add the spec's options to ``config`` (a create body with ``HostConfig``).

    ``files`` are extra mounts made by :mod:`.files` (secrets, configs). DNS
    servers and search domains of the service come *after* the cluster's,
    which ``config`` already has, so service names still resolve first.
    """
    o = spec.options
    host: dict[str, Any] = config.setdefault("HostConfig", {})
    for key, field in (("user", "User"), ("working_dir", "WorkingDir"), ("hostname", "Hostname"),
                       ("stop_signal", "StopSignal")):
        if o.get(key):
            config[field] = str(o[key])
    for key, field in (("stdin_open", "OpenStdin"), ("tty", "Tty")):
        if o.get(key):
            config[field] = True
    grace = stop_grace_seconds(spec)
    if grace is not None:
        config["StopTimeout"] = grace
        config.setdefault("Labels", {})[LABEL_STOP_GRACE] = str(grace)

    mounts = [volume_mount(v) for v in o.get("volumes") or []]
    mounts += [dict(f) for f in files]
    if mounts:
        host["Mounts"] = mounts
    if o.get("tmpfs"):
        host["Tmpfs"] = _tmpfs(o["tmpfs"])
    if o.get("cap_add"):
        host["CapAdd"] = list(o["cap_add"])
    if o.get("cap_drop"):
        host["CapDrop"] = list(o["cap_drop"])
    if o.get("sysctls"):
        host["Sysctls"] = {str(k): str(v) for k, v in o["sysctls"].items()}
    if o.get("ulimits"):
        host["Ulimits"] = [{"Name": name, "Soft": int(lim["soft"]), "Hard": int(lim["hard"])}
                           for name, lim in o["ulimits"].items()]
    if o.get("init"):
        host["Init"] = True
    if o.get("read_only"):
        host["ReadonlyRootfs"] = True
    if o.get("extra_hosts"):
        host["ExtraHosts"] = [f"{name}:{ip}" for name, ip in o["extra_hosts"].items()]
    for key, field in (("dns", "Dns"), ("dns_search", "DnsSearch")):
        extra = [str(x) for x in o.get(key) or []]
        if extra:
            have = list(host.get(field) or [])
            host[field] = have + [x for x in extra if x not in have]
    if o.get("dns_opt"):
        host["DnsOptions"] = [str(x) for x in o["dns_opt"]]
    log = o.get("logging") or {}
    if log.get("driver") or log.get("options"):
        host["LogConfig"] = {"Type": log.get("driver") or "json-file",
                             "Config": {str(k): str(v) for k, v in (log.get("options") or {}).items()}}
    apply_resources(host, spec.resources)


__all__ = ["LABEL_STOP_GRACE", "apply_options", "apply_resources", "stop_grace_seconds", "volume_mount"]
