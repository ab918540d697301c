"""systemd units for hosts that run systemd (rendered from templates/)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jinja2

from pyswarm.errors import PyswarmError

UNIT_DIR = Path("/etc/systemd/system")


def render(template: str, **context: str) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pyswarm.deploy", "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
    )
    return env.get_template(template).render(**context)


def install_manager_unit(executable: str) -> None:
    """Install and start ``pyswarm-manager.service`` (KillMode=process: a
    restart of the manager never takes containers or agents with it)."""
    (UNIT_DIR / "pyswarm-manager.service").write_text(render("pyswarm-manager.service.j2", executable=executable))
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "pyswarm-manager.service"]):
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise PyswarmError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
