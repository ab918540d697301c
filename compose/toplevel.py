"""Top-level ``networks``, ``volumes``, ``secrets`` and ``configs``.

They are checked before the services because services refer to them by name
and Docker refuses a reference to something undeclared; we record the
declared names on the checker for the services' checks to use. Relative
``file:`` paths become absolute (against the first stack file's folder) so
that ``stack config`` output means the same wherever it is read; the files
themselves are read at deploy (:func:`.objects.read_objects`), not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checker import _Invalid
from .errors import KeyPath
from .service import ServiceChecker

_COMMON = ("name", "external", "labels", "x-")
_KEYS = {
    "networks": ("driver", "driver_opts", "attachable", "internal", "ipam", "enable_ipv4",
                 "enable_ipv6") + _COMMON,
    "volumes": ("driver", "driver_opts") + _COMMON,
    "secrets": ("file", "environment", "driver", "driver_opts", "template_driver") + _COMMON,
    "configs": ("file", "environment", "content", "template_driver") + _COMMON,
}


def check_top_level(c: ServiceChecker, kind: str, value: Any) -> dict[str, Any]:
    """Check ``<kind>:`` and note its names in ``c.declared[kind]``."""
    path: KeyPath = (kind,)
    if value is None:
        return {}
    m = c.mapping(path, value)
    if isinstance(m, _Invalid):
        return {}
    out: dict[str, Any] = {}
    for name, item in m.items():
        c.declared[kind].add(name)
        ipath = path + (name,)
        if item is None:
            out[name] = {}
            continue
        d = c.mapping(ipath, item)
        if isinstance(d, _Invalid):
            continue
        c.known_keys(ipath, d, _KEYS[kind])
        entry: dict[str, Any] = {}
        for key, val in d.items():
            kpath = ipath + (key,)
            if key.startswith("x-"):
                continue
            if key in ("external", "attachable", "internal", "enable_ipv4", "enable_ipv6"):
                if isinstance(val, dict) and key == "external":  # old {name: x} form
                    entry["external"] = True
                    if "name" in val:
                        entry["name"] = c.string(kpath + ("name",), val["name"])
                    continue
                b = c.boolean(kpath, val)
                if isinstance(b, bool):
                    entry[key] = b
            elif key in ("labels", "driver_opts"):
                sm = c.string_map(kpath, val)
                if isinstance(sm, dict):
                    entry[key] = sm
            elif key == "file":
                s = c.string(kpath, val)
                if isinstance(s, str):
                    file = Path(s).expanduser()
                    file = file if file.is_absolute() else (c.project_dir / file).resolve()
                    # read (and checked) by deploy only, as Docker does: `stack config`
                    # prints a stack whose files are on another machine
                    entry["file"] = str(file)
            elif key == "ipam":
                im = c.mapping(kpath, val)
                if isinstance(im, dict):
                    entry["ipam"] = im
            else:
                s = c.string(kpath, val)
                if isinstance(s, str):
                    entry[key] = s
        if kind in ("secrets", "configs"):
            sources = [k for k in ("file", "environment", "content") if k in entry]
            if not sources and not entry.get("external"):
                c.error(ipath, f"a {kind[:-1]} needs `file`, `environment`"
                        f"{', `content`' if kind == 'configs' else ''} or `external: true`")
            elif entry.get("environment") and entry["environment"] not in c.environ:
                c.error(ipath + ("environment",),
                        f"variable {entry['environment']} is not set")
        if entry.get("external"):
            extra = [k for k in entry if k not in ("external", "name")]
            if extra:
                c.error(ipath, f"an external {kind[:-1]} takes only `name`, not "
                        f"{', '.join('`' + k + '`' for k in extra)}")
        out[name] = entry
    return out
