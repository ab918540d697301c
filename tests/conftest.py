"""Fixtures shared by the whole suite, chiefly the end-to-end lab.

``lab`` is one cluster for the whole session: 1 manager and 3 workers,
``pyswarm init``/``join`` done and every node ready. It is shared, so a test
must leave it as it found it (remove its stacks). It uses its own lab name,
directory and subnet, so it does not disturb a lab brought up by hand with
``pyswarm lab up``. Set PYSWARM_LAB_KEEP=1 to leave it up after the session
(then look at it with ``PYSWARM_LAB_DIR=/var/lib/pyswarm-lab-e2e pyswarm lab status``).

``lab_factory`` brings up extra, independent labs (own name and subnet) and
takes them down at the end of the test module that asked for them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # tests/ is not a package; see factories.py
    sys.path.insert(0, _TESTS)

from support import wait_for  # noqa: E402,F401  (re-exported for convenience)

from pyswarm.deploy.lab import Lab, LabError  # noqa: E402
from pyswarm.deploy.lab_sys import REQUIRED_TOOLS, which  # noqa: E402

E2E_LAB_DIR = os.environ.get("PYSWARM_E2E_LAB_DIR", "/var/lib/pyswarm-lab-e2e")
E2E_LAB_NAME = "pswe2e"
E2E_LAB_SUBNET = "10.250.2.0/24"


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if sys.platform != "linux":
        return "the lab needs Linux namespaces"
    if os.geteuid() != 0:
        return "the lab needs root (namespaces, mounts, a bridge); run the e2e tests as root"
    missing = [f"{tool} ({pkg})" for tool, pkg in REQUIRED_TOOLS.items() if not which(tool)]
    if missing:
        return "the lab needs: " + ", ".join(missing)
    return None


def _progress(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A lab cluster (1 manager, 3 workers, all ready) for the whole session."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    the_lab = Lab(E2E_LAB_DIR, name=E2E_LAB_NAME, subnet=E2E_LAB_SUBNET)
    try:
        the_lab.up(managers=1, workers=3, cluster=True, progress=_progress)
    except LabError as exc:
        if os.environ.get("PYSWARM_LAB_KEEP") != "1":
            the_lab.down()
        pytest.fail(f"lab up (1 manager, 3 workers) failed: {exc}", pytrace=False)
    yield the_lab
    if os.environ.get("PYSWARM_LAB_KEEP") != "1":
        the_lab.down()


LabFactory = Callable[..., Lab]


@pytest.fixture(scope="module")
def lab_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFactory]:
    """Bring up extra labs: ``lab_factory(name, subnet, managers=1, workers=1, cluster=False)``.

    Each gets its own directory under pytest's temporary directory; all are
    taken down when the module ends (a test may take one down itself).
    """
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    made: list[Lab] = []

    def make(name: str, subnet: str, managers: int = 1, workers: int = 1, cluster: bool = False) -> Lab:
        new = Lab(tmp_path_factory.mktemp(f"lab-{name}"), name=name, subnet=subnet)
        made.append(new)
        new.up(managers=managers, workers=workers, cluster=cluster, progress=_progress)
        return new

    yield make
    errors = []
    for each in made:
        try:
            each.down()
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("lab_factory: tearing down left things behind:\n" + "\n".join(errors), pytrace=False)
