"""Fixtures shared by the whole suite, chiefly the end-to-end lab.

``lab`` is one cluster for the whole session: 1 manager and 3 workers,
``pyswarm init``/``join`` done and every node ready. It is shared, so a test
must leave it as it found it (remove its stacks).

Several pytest sessions may run on one machine at once (engineers share
it), so each session claims a *slot* 0-9 — held as an abstract unix socket,
which the kernel frees when the session dies, leaving no file behind — and
its labs take their names, directories and subnets from the slot: the
session lab is ``pswe2e<slot>`` in ``/var/lib/pyswarm-lab-e2e<slot>`` on
``10.250.<20+slot>.0/24``. None of them touches a lab brought up by hand with
``pyswarm lab up``. Set PYSWARM_LAB_KEEP=1 to leave the session lab up
(then ``PYSWARM_LAB_DIR=/var/lib/pyswarm-lab-e2e0 pyswarm lab status``).

``lab_factory`` brings up extra, independent labs and takes them down at the
end of the test module that asked for them; ``new_lab_spec()`` gives a free
(name, subnet) pair for a test that drives ``Lab`` itself.
"""

from __future__ import annotations

import itertools
import shutil
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # tests/ is not a package; see factories.py
    sys.path.insert(0, _TESTS)

from support import wait_for  # noqa: E402,F401  (re-exported for convenience)

from pyswarm.deploy.lab import Lab, LabError  # noqa: E402
from pyswarm.deploy.lab_sys import REQUIRED_TOOLS, which  # noqa: E402

def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse two test modules with one basename anywhere under tests/, even
    when a run collects only one of them: pytest imports test modules by
    basename (tests/ has no packages), so the whole suite would stop at
    collection with "import file mismatch"."""
    seen: dict[str, list[str]] = {}
    for path in sorted(Path(_TESTS).rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(_TESTS)))
    twins = {name: where for name, where in seen.items() if len(where) > 1}
    if twins:
        listed = "; ".join(" and ".join(where) for where in twins.values())
        raise pytest.UsageError(f"test modules share a basename (rename one of each): {listed}")


# The longest modules, longest first (`make test` prints --durations=25). Under
# `make test`'s pytest-xdist (-n 2 --dist loadfile) each worker takes the next
# whole module in collection order, so starting the long ones first keeps one
# worker from being left with a long module at the end while the other idles.
LONGEST_FIRST = (  # seconds in the serial run of 2026-12-01 (load 10-100, 77 min in all)
    "e2e/test_trust.py",  # 823
    "e2e/test_service_cli.py",  # 597
    "e2e/test_update.py",  # 481
    "e2e/test_machine.py",  # 299
    "e2e/test_managers.py",  # 275
    "pyswarm/test_wheelhouse.py",  # 263 (make dist, pip download)
    "e2e/test_readme_real_hosts.py",  # 259
    "e2e/test_day_one.py",  # 182
    "e2e/test_placement_and_healing.py",  # 144
    "e2e/test_remote_cli.py",  # 134
    "e2e/test_image_shipping.py",  # 118
)


def _rel(item: pytest.Item) -> str:
    try:
        return item.path.resolve().relative_to(_TESTS).as_posix()
    except ValueError:
        return str(item.path)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order modules: LONGEST_FIRST, then the other end-to-end modules, then
    the rest; tests keep their order inside a module (module fixtures and
    tests that build on the one before rely on it). The order is the same
    in every xdist worker, which xdist requires. Only under xdist: a run in
    one process keeps pytest's order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    first_seen: dict[Path, int] = {}

    def key(item: pytest.Item) -> tuple[int, int]:
        seen = first_seen.setdefault(item.path, len(first_seen))
        rel = _rel(item)
        if rel in rank:
            return (0, rank[rel])
        return (1 if item.get_closest_marker("e2e") else 2, seen)

    items.sort(key=key)  # stable: a module's tests stay in their order


# The modules that build pyswarm from this checkout's tree: `pip wheel` of the
# checkout (the wheelhouse behind machine init/add) and `make dist` write its
# build/ and *.egg-info, so two at once in one tree trip over each other.
BUILDS_FROM_THE_CHECKOUT = ("e2e/test_machine.py", "pyswarm/test_wheelhouse.py", "e2e/test_readme_real_hosts.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, called in the controller
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with BUILDS_FROM_THE_CHECKOUT as one work unit: a
    module is a unit (its module-scoped labs are made once), and these three
    run one after the other on one worker. (``--dist loadgroup`` and
    xdist_group marks would say the same, but xdist 3.8 marks a group in the
    nodeid's ``_nodeid``, which pytest 9 no longer reads: every test would be
    a unit of its own.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    builders = tuple(f"tests/{m}" for m in BUILDS_FROM_THE_CHECKOUT)

    class ModulesAndBuilders(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = str(super()._split_scope(nodeid))
            return "builds-from-the-checkout" if module.endswith(builders) else module

    return ModulesAndBuilders(config, log)


E2E_LAB_DIR = "/var/lib/pyswarm-lab-e2e{slot}"
SLOTS = 10
EXTRA_LABS = 25  # per session: 10.252.<slot*25 + k>.0/24, k < 25


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
def lab_slot() -> Iterator[int]:
    """This session's slot (0-9), so that concurrent sessions' labs do not collide."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    for slot in range(SLOTS):
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0pyswarm-e2e-lab-slot-{slot}")
        except OSError:
            claim.close()
            continue
        # the wheelhouse cache (pyswarm/wheelhouse.py) of this checkout's venv and
        # this slot: not ~/.cache/pyswarm, which every checkout and session on the
        # machine would share, each rebuilding pyswarm's wheel from its own source
        # under one lock, one after the other (what each ships stays whole:
        # wheelhouse.held) (support.operator_env passes it on to the CLI the tests run)
        os.environ["PYSWARM_CACHE_DIR"] = str(Path(sys.prefix) / "pyswarm-cache" / f"slot{slot}")
        try:
            yield slot
        finally:
            claim.close()
        return
    pytest.skip(f"all {SLOTS} lab slots are taken by other pytest sessions on this machine")


LabSpec = Callable[[], "tuple[str, str]"]


@pytest.fixture(scope="session")
def new_lab_spec(lab_slot: int) -> LabSpec:
    """A fresh (name, subnet) for an extra lab, unique on this machine for this session."""
    counter = itertools.count(0)

    def spec() -> tuple[str, str]:
        k = next(counter)
        if k >= EXTRA_LABS:
            raise RuntimeError(f"new_lab_spec: at most {EXTRA_LABS} extra labs per session")
        return f"psl{lab_slot}x{k}", f"10.252.{lab_slot * EXTRA_LABS + k}.0/24"

    return spec


@pytest.fixture(scope="session")
def lab(lab_slot: int) -> Iterator[Lab]:
    """A lab cluster (1 manager, 3 workers, all ready) for the whole session."""
    the_lab = Lab(E2E_LAB_DIR.format(slot=lab_slot), name=f"pswe2e{lab_slot}", subnet=f"10.250.{20 + lab_slot}.0/24")
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


def _keep_logs(the_lab: Lab) -> None:
    """With PYSWARM_LAB_LOGS=DIR (local use), copy each host's pyswarm logs
    (and fence records) to DIR/<lab>/<host>/ before the lab goes down."""
    target = os.environ.get("PYSWARM_LAB_LOGS")
    if not target:
        return
    for name in list(the_lab.hosts):
        # the managers' logs, and the agents' record of the containers they
        # fenced (worker/fence.py: an agent's own log went to its session)
        for inside, pattern in (("/var/lib/pyswarm", "*.log*"), ("/var/log/pyswarm", "*.log*"), ("/run/pyswarm", "fenced*")):
            try:
                src = the_lab.host(name).private(inside)
            except KeyError:
                continue
            for log_file in src.rglob(pattern) if src.is_dir() else []:
                dest = Path(target) / the_lab.name / name / log_file.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(log_file, dest)


@pytest.fixture(scope="module")
def lab_factory(tmp_path_factory: pytest.TempPathFactory, new_lab_spec: LabSpec) -> Iterator[LabFactory]:
    """Bring up extra labs: ``lab_factory(managers=1, workers=1, cluster=False, bare=False)``.

    Each gets its own name, subnet and directory (under pytest's temporary
    directory); all are taken down when the module ends (a test may take one
    down itself).
    """
    made: list[Lab] = []

    def make(managers: int = 1, workers: int = 1, cluster: bool = False, bare: bool = False) -> Lab:
        name, subnet = new_lab_spec()
        new = Lab(tmp_path_factory.mktemp(f"lab-{name}"), name=name, subnet=subnet)
        made.append(new)
        new.up(managers=managers, workers=workers, cluster=cluster, progress=_progress, bare=bare)
        return new

    yield make
    errors = []
    for each in made:
        _keep_logs(each)
        try:
            each.down()
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("lab_factory: tearing down left things behind:\n" + "\n".join(errors), pytrace=False)
