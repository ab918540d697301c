"""The package: ``make dist``'s wheel installs into a fresh venv and works
offline, and pyswarm.wheelhouse gives the wheels a host needs.

The install test uses the system's python3 (what a bare host has) and
``pip install --no-index``, so nothing but the wheelhouse feeds it, and runs
from a directory where the checkout is not importable. Two ``machine``
installs at once on one cache, in processes of their own, each ship the
wheels they built, whole.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from pyswarm import wheelhouse
from pyswarm.version import DISTRIBUTION, __version__
from pyswarm.wheelhouse import Target

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def test_platform_tags_follow_the_targets_libc_and_cpu() -> None:
    glibc = Target("3.11", "x86_64", "glibc", "2.36").platforms()
    assert glibc[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in glibc
    assert {"manylinux2014_x86_64", "manylinux1_x86_64"} <= set(glibc)
    assert "manylinux_2_37_x86_64" not in glibc
    arm = Target("3.12", "aarch64", "glibc", "2.31").platforms()
    assert "manylinux2014_aarch64" in arm and not any("manylinux1" in t or "x86_64" in t for t in arm), arm
    assert Target("3.12", "aarch64", "musl", "1.2").platforms() == ["musllinux_1_2_aarch64", "musllinux_1_1_aarch64"]
    assert Target("3.12", "aarch64").abi == "cp312"


def test_target_of_a_preflight_report() -> None:
    from pyswarm import preflight

    host = preflight.gather()._asdict()
    assert Target.of_host(host) == Target.local()
    assert Target.of_host({"python": "3.12.1", "machine": "aarch64", "libc": "musl", "libc_version": "1.2"}).key == "cp312-musl1.2-aarch64"
    with pytest.raises(wheelhouse.WheelhouseError, match="no wheels for a host with Python 2.7"):
        Target.of_host({"python": "2.7.18", "machine": "x86_64", "libc": "glibc", "libc_version": "2.17"})


def test_repack_makes_a_wheel_of_the_installed_files(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pkg = site / "pyswarm"
    info = site / f"{DISTRIBUTION.replace('-', '_')}-9.9.9.dist-info"
    pkg.mkdir(parents=True)
    info.mkdir()
    (pkg / "__init__.py").write_text("x = 1\n")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 9.9.9\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    (info / "INSTALLER").write_text("pip\n")
    records = ["pyswarm/__init__.py,,", "pyswarm/__pycache__/__init__.cpython-311.pyc,,", "../../../bin/pyswarm,,",
               f"{info.name}/METADATA,,", f"{info.name}/WHEEL,,", f"{info.name}/INSTALLER,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(records) + "\n")
    dist = metadata.PathDistribution(info)
    whl = wheelhouse.repack(dist, tmp_path / "out")
    assert whl.name == "pyswarm_orchestrator-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(whl) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(["pyswarm/__init__.py", f"{info.name}/METADATA", f"{info.name}/WHEEL", f"{info.name}/RECORD"]), names
        record = dict(line.split(",", 1) for line in zf.read(f"{info.name}/RECORD").decode().splitlines())
        digest = base64.urlsafe_b64encode(hashlib.sha256(b"x = 1\n").digest()).rstrip(b"=").decode()
        assert record["pyswarm/__init__.py"] == f"sha256={digest},6"


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> wheelhouse.Wheelhouse:
    """The wheelhouse for this machine, built from this (editable) checkout into a fresh cache."""
    os.environ.pop("PYSWARM_WHEELHOUSE", None)
    return wheelhouse.build(Target.local(), cache=tmp_path_factory.mktemp("cache"))


def test_wheelhouse_holds_pyswarm_and_every_dependency_for_this_machine(house: wheelhouse.Wheelhouse) -> None:
    names = {p.name.split("-")[0].lower() for p in house.directory.glob("*.whl")}
    for dep in ("asyncssh", "pysyncobj", "dnslib", "pyyaml", "jinja2", "aiohttp", "rich", "cryptography"):
        assert dep in names, f"{dep} missing from {sorted(names)}"
    assert house.pyswarm_wheel.parent == house.directory and house.version == __version__
    with zipfile.ZipFile(house.pyswarm_wheel) as zf:
        files = set(zf.namelist())
    assert {"pyswarm/cli/__init__.py", "pyswarm/manager/store.py", "pyswarm/deploy/templates/pyswarm-manager.service.j2",
            "pyswarm/deploy/examples/demo.yml"} <= files
    again = wheelhouse.build(Target.local(), cache=house.directory.parents[3])
    assert again == house and sorted(again.directory.glob("*.whl")) == sorted(house.directory.glob("*.whl"))


def test_this_machines_wheels_are_repacked_from_what_is_installed(house: wheelhouse.Wheelhouse) -> None:
    """No index needed for this machine's Python and CPU: the exact versions installed here."""
    shipped = {p.name.split("-")[0]: p.name.split("-")[1] for p in house.directory.glob("*.whl")}
    for dist in wheelhouse.installed_closure():
        name = dist.metadata["Name"].lower().replace("-", "_").replace(".", "_")
        assert shipped.get(name) == dist.version, f"{name}: shipped {shipped.get(name)}, installed {dist.version}"
    crypto = next(house.directory.glob("cryptography-*.whl"))
    assert "x86_64" in crypto.name or "aarch64" in crypto.name, crypto.name
    with zipfile.ZipFile(crypto) as zf:
        assert any(n.endswith(".so") for n in zf.namelist()), "the binary wheel lost its extension module"


def test_another_targets_wheels_come_from_the_index(tmp_path: Path) -> None:
    """A host with another Python and CPU: binary wheels for it, pure ones built from sdists (pysyncobj)."""
    other = Target("3.12", "aarch64", "glibc", "2.36")
    house = wheelhouse.build(other, cache=tmp_path)
    names = sorted(p.name for p in house.directory.glob("*.whl"))
    assert any(n.startswith("cryptography-") and n.endswith("aarch64.whl") for n in names), names
    assert any(n.startswith("pyyaml-") and "cp312" in n and "aarch64" in n for n in names), names
    assert any(n.startswith("pysyncobj-") and n.endswith("py3-none-any.whl") for n in names), names
    assert not any("x86_64" in n or "cp311-cp311" in n for n in names), names


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"no {SYSTEM_PYTHON}")
def test_make_dist_wheel_installs_offline_into_a_fresh_venv_and_runs(tmp_path: Path, house: wheelhouse.Wheelhouse) -> None:
    dist = tmp_path / "dist"
    res = subprocess.run(["make", "-s", "-C", str(ROOT), "dist", f"DIST={dist}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheels = sorted(dist.glob("pyswarm_orchestrator-*.whl"))
    sdists = sorted(dist.glob("pyswarm_orchestrator-*.tar.gz"))
    assert [w.name for w in wheels] == [f"pyswarm_orchestrator-{__version__}-py3-none-any.whl"] and len(sdists) == 1, list(dist.iterdir())
    venv = tmp_path / "venv"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(house.directory), str(wheels[0])],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr[-2000:]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)

    ver = run(str(venv / "bin/pyswarm"), "--version")
    assert (ver.returncode, ver.stdout) == (0, f"pyswarm {__version__}\n"), ver
    where = run(str(venv / "bin/python"), "-c", "import pathlib, pyswarm.deploy as d; print(pathlib.Path(d.__file__).parent)")
    deploy_dir = Path(where.stdout.strip())
    assert deploy_dir.is_relative_to(venv), f"pyswarm imported from {deploy_dir}, not the fresh venv"
    assert (deploy_dir / "templates/pyswarm-manager.service.j2").is_file()
    conf = run(str(venv / "bin/pyswarm"), "stack", "config", "-c", str(deploy_dir / "examples/demo.yml"))
    assert conf.returncode == 0 and "services:" in conf.stdout and "web:" in conf.stdout, conf


# One operator command (``machine init/add``: machine.install) in a process of
# its own, with pyswarm's own wheel changed before every round, as when the
# source is edited between two runs (or two checkouts of one version share a
# cache). Only the SSH host is a stand-in: it reads the tar that would go over
# the connection and checks it holds exactly this process's wheels, whole.
_SHIPPER = r'''
import hashlib, io, json, os, sys, tarfile, time, types, zipfile
from pathlib import Path
from pyswarm import machine, preflight, wheelhouse
from pyswarm.remote import Ran
from pyswarm.version import DISTRIBUTION, __version__

me, rounds, scratch = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
name = f"{DISTRIBUTION.replace('-', '_')}-{__version__}-py3-none-any.whl"
ndeps = len(wheelhouse.installed_closure())
want = {"round": -1}
bad, builds, ships = [], [], []  # problems; when this command wrote into the cache; when it was shipping

def own_wheel(dest):
    """What own_wheel does for an edited checkout: the old wheel out of dest, the new one in."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    out = dest / name
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pyswarm/__init__.py", f"# {me} round {want['round']}\n")
        zf.writestr("pyswarm/payload.bin", os.urandom(1 << 20))
    want["sha"] = hashlib.sha256(out.read_bytes()).hexdigest()
    builds.append(time.monotonic())
    return out

wheelhouse.own_wheel = own_wheel
wheelhouse.KEEP = 0  # every build removes every other set it may: only a hold keeps the other command's
listed = wheelhouse.wheels

def wheels(house):
    """The listing of what to ship, late: the time a loaded machine's disk takes, which here is a
    few ms, so that the other command's build (0.05 s) falls into it every round, not 1 in 40."""
    ships.append([time.monotonic()])
    time.sleep(0.3)
    return listed(house)

wheelhouse.wheels = wheels

class Host:
    dest = sudo = "stand-in"
    def root(self, command, input=None, timeout=300):
        if "pyswarm --version" in command:
            return Ran(1, b"", b"not installed")
        if input is not None:
            check(input)
            ships[-1].append(time.monotonic())
        return Ran(0, b"", b"")
    def must(self, command, doing, input=None, timeout=300):
        return self.root(command, input, timeout)

def check(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        own = [n for n in names if n.startswith(DISTRIBUTION.replace("-", "_") + "-")]
        blob = tar.extractfile(name).read() if own == [name] else b""
    if own != [name] or hashlib.sha256(blob).hexdigest() != want["sha"]:
        bad.append(f"round {want['round']}: pyswarm's wheel is not the one this command built ({own})")
    elif zipfile.ZipFile(io.BytesIO(blob)).testzip() is not None:
        bad.append(f"round {want['round']}: pyswarm's wheel is broken")
    if len(names) - len(own) != ndeps:
        bad.append(f"round {want['round']}: {len(names) - len(own)} dependency wheels, not {ndeps}")

report = types.SimpleNamespace(host=preflight.gather()._asdict())
(scratch / f"{me}.ready").touch()
deadline = time.monotonic() + 120
while not all((scratch / f"{w}.ready").exists() for w in ("a", "b")) and time.monotonic() < deadline:
    time.sleep(0.01)
for r in range(rounds):
    want["round"] = r
    try:
        machine.install(Host(), report, lambda line: None)
    except Exception as exc:
        bad.append(f"round {r}: {type(exc).__name__}: {exc}")
print(json.dumps({"bad": bad, "builds": builds, "ships": [s for s in ships if len(s) == 2]}))
'''


ROUNDS = 12


def test_two_commands_shipping_from_one_cache_at_once_each_ship_their_own_wheels(tmp_path: Path) -> None:
    """Two ``machine`` commands on one cache, at once (issue 12's race): what
    each ships is the wheelhouse it built, whole, while the other builds."""
    env = {k: v for k, v in os.environ.items() if k != "PYSWARM_WHEELHOUSE"}
    env["PYSWARM_CACHE_DIR"] = str(tmp_path / "cache")
    procs = {me: subprocess.Popen([sys.executable, "-c", _SHIPPER, me, str(ROUNDS), str(tmp_path)], env=env, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in ("a", "b")}
    seen: dict[str, Any] = {}
    for me, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"shipper {me} exited {proc.returncode}: {err[-2000:]}"
        seen[me] = json.loads(out)
    for me, other in (("a", "b"), ("b", "a")):
        bad = seen[me]["bad"]
        assert bad == [], f"shipper {me}: {len(bad)} problems in what it shipped in {ROUNDS} rounds: {bad[:5]}"
        # at once: the other command built (wrote its own wheel into the cache) while this one shipped
        overlaps = sum(any(t0 < t < t1 for t in seen[other]["builds"]) for t0, t1 in seen[me]["ships"])
        assert overlaps >= ROUNDS // 2, (f"shipper {other} built during only {overlaps} of {me}'s {len(seen[me]['ships'])} ships: "
                                         "the two were not at once")
