"""``pyswarm --version`` and ``pyswarm.version``: one version, pyproject's."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pyswarm.version import DISTRIBUTION, __version__

ROOT = Path(__file__).resolve().parents[2]


def test_version_comes_from_the_installed_metadata() -> None:
    assert __version__ == metadata.version(DISTRIBUTION)
    assert f'version = "{__version__}"' in (ROOT / "pyproject.toml").read_text()


def test_cli_prints_it() -> None:
    res = subprocess.run([str(Path(sys.executable).parent / "pyswarm"), "--version"], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout) == (0, f"pyswarm {__version__}\n"), res
