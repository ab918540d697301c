"""The wheels to ship to a host: pyswarm's own and every dependency's, for that host.

``machine init/add`` install pyswarm on a host that may have no internet and
no package index, so the operator's machine brings everything: a directory
of wheels ("wheelhouse") from which ``pip install --no-index --find-links``
installs pyswarm into the host's own venv. :func:`build` makes it, whether
this pyswarm was installed from a wheel or as an editable checkout:

- pyswarm's own wheel: from an editable checkout it is built with
  ``pip wheel --no-deps`` (again only when a source file changed); from a
  wheel install, the wheel file it came from when that is still on disk,
  else one repacked from the installed files (pyswarm is pure Python).
- the dependencies: ``pip download --only-binary=:all:`` with the target's
  ``--platform`` (manylinux tags up to its glibc, or musllinux),
  ``--python-version`` and ``--abi``, so binary wheels (cryptography,
  aiohttp, pyyaml) match the *host's* Python and architecture, not ours. A
  dependency published only as an sdist (pysyncobj) is built here with
  ``pip wheel --no-deps`` and kept only if the result is pure
  (``py3-none-any``), which runs anywhere. When the target's Python and
  architecture are ours, the versions are pinned to the ones installed here,
  so a host runs what the operator runs.

Results are cached per target under ``$PYSWARM_CACHE_DIR`` (default
``~/.cache/pyswarm``) and pip's own cache keeps the downloads, so after the
first call no index is needed. ``PYSWARM_WHEELHOUSE=DIR`` names a
directory of wheels prepared by hand instead (an air-gapped operator).

Run ``python -m pyswarm.wheelhouse [--python 3.11] [--machine aarch64]`` to
print the directory.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pyswarm.errors import PyswarmError
from pyswarm.version import DISTRIBUTION, __version__

# the checkout's folders that go into the wheel (pyproject's package-dir), for the rebuild check
_SOURCE_DIRS = ("pyswarm", "manager", "worker", "dns", "compose", "deploy")
_PIP_TIMEOUT = 600.0


class WheelhouseError(PyswarmError):
    """The wheels for a host could not be found or built."""


@dataclass(frozen=True)
class Target:
    """What a host's wheels must fit: its Python (major.minor), CPU and C library."""

    python: str = "3.11"
    machine: str = "x86_64"
    libc: str = "glibc"  # or "musl" (Alpine)
    libc_version: str = "2.36"

    @classmethod
    def local(cls) -> Target:
        """This machine's Python and platform (the lab's bare hosts run this machine's python3)."""
        libc, version = platform.libc_ver()
        return cls(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine(), "musl" if not libc else libc, version or "1.2")

    @classmethod
    def of_host(cls, host: dict[str, object]) -> Target:
        """The target a preflight report's ``host`` facts describe (pyswarm/preflight.py)."""
        python = ".".join(str(host.get("python", "")).split(".")[:2])
        machine, libc, version = str(host.get("machine", "")), str(host.get("libc", "")), str(host.get("libc_version", ""))
        if not re.fullmatch(r"3\.\d+", python) or not machine or libc not in ("glibc", "musl") or not re.fullmatch(r"\d+\.\d+", version):
            raise WheelhouseError(f"no wheels for a host with Python {python or '?'} on {machine or '?'} with {libc or '?'} {version}")
        return cls(python, machine, libc, version)

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def key(self) -> str:
        """A directory name for this target's cache."""
        return f"{self.abi}-{self.libc}{self.libc_version}-{self.machine}"

    def platforms(self) -> list[str]:
        """pip ``--platform`` tags a wheel may carry and still run on this target."""
        m = self.machine
        major, _, minor_s = self.libc_version.partition(".")
        minor = int(re.match(r"\d*", minor_s).group() or 0)  # type: ignore[union-attr]
        if self.libc == "musl":
            return [f"musllinux_{major}_{i}_{m}" for i in range(minor, 0, -1)]
        tags = [f"manylinux_2_{i}_{m}" for i in range(minor, 4, -1)] if major == "2" else []
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{m}" for lo, name in legacy.items() if minor >= lo and (lo == 17 or m in ("x86_64", "i686"))]
        return tags


@dataclass(frozen=True)
class Wheelhouse:
    """A directory of wheels that installs this pyswarm offline."""

    directory: Path
    pyswarm_wheel: Path
    version: str

    @property
    def requirement(self) -> str:
        return f"{DISTRIBUTION}=={self.version}"

    def pip_install_args(self) -> list[str]:
        """Arguments for the host's ``pip install`` once the directory is there (same path)."""
        return ["install", "--no-index", "--find-links", str(self.directory), self.requirement]


def cache_dir() -> Path:
    if os.environ.get("PYSWARM_CACHE_DIR"):
        return Path(os.environ["PYSWARM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyswarm"


def build(target: Target | None = None, cache: Path | None = None) -> Wheelhouse:
    """The wheelhouse for ``target`` (default: this machine), built or taken from the cache.

    Its directory is never changed, but once :data:`KEEP` newer ones are in
    the cache and no :func:`held` block holds it, a later build removes it:
    to ship it, use :func:`held`, which keeps it for the block.
    """
    with held(target, cache) as house:
        return house


@contextmanager
def held(target: Target | None = None, cache: Path | None = None) -> Iterator[Wheelhouse]:
    """:func:`build`'s wheelhouse, kept as it is until the block ends (what ``machine`` ships).

    The cache's working directories (``own``, ``wheels``) change under an
    exclusive lock whenever a build needs it (another checkout, an edited
    source, new pins); what a build hands out is a copy of them in
    ``sets/<digest of the wheels>``, made in a fresh directory and renamed
    into place, so it is whole or absent and never written again. The block
    holds a shared lock on that directory, and a build removes only the
    ones nobody holds, so two commands on one cache at once each ship the
    wheels they built, whole, while the other builds.
    """
    target = target or Target.local()
    given = os.environ.get("PYSWARM_WHEELHOUSE")
    if given:
        yield _given(Path(given))
        return
    root = (cache or cache_dir()) / "wheelhouse" / target.key
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        with _locked(root / ".lock"):
            own = own_wheel(root / "own")
            deps = root / "wheels"
            _ensure_deps(own, target, deps, root / "deps.stamp")
            sets = root / "sets"
            house = _snapshot([own, *(w for w in sorted(deps.glob("*.whl")) if not w.match(_wheel_glob()))], sets)
            stack.enter_context(_locked(house, shared=True))
            _prune(sets, house)
        yield Wheelhouse(house, house / own.name, __version__)


# the sets kept besides the one just built (however old, one held by a command stays too)
KEEP = 3


def _snapshot(files: list[Path], sets: Path) -> Path:
    """``sets/<digest>``, a directory holding a copy of ``files``, made now unless it was already there."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{_file_digest(f)}\n".encode())
    house = sets / h.hexdigest()[:20]
    if house.is_dir():
        os.utime(house)  # used: the newest, for _prune
        return house
    sets.mkdir(exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=sets, prefix=".new-"))
    for f in files:
        shutil.copyfile(f, fresh / f.name)
        (fresh / f.name).chmod(0o444)
    fresh.chmod(0o755)
    os.rename(fresh, house)
    return house


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _prune(sets: Path, current: Path) -> None:
    """Remove the sets beyond the :data:`KEEP` newest that nobody holds, and unfinished ones.

    Called under the cache's exclusive lock, as are :func:`held`'s shared
    locks taken, so a set cannot be taken between the test and the removal.
    """
    old = sorted((d for d in sets.iterdir() if d.is_dir() and d != current), key=lambda d: d.stat().st_mtime, reverse=True)
    for d in [d for d in old if d.name.startswith(".new-")] + [d for d in old if not d.name.startswith(".new-")][KEEP:]:
        try:
            with _locked(d, wait=False):
                shutil.rmtree(d)
        except BlockingIOError:
            continue  # a command is shipping it


def own_wheel(dest: Path) -> Path:
    """pyswarm's own wheel in ``dest``: built from the checkout, found, or repacked."""
    dest.mkdir(parents=True, exist_ok=True)
    dist = metadata.distribution(DISTRIBUTION)
    origin = _direct_url(dist)
    url = str(origin.get("url", ""))
    path = Path(url[len("file://") :]) if url.startswith("file://") else None
    dir_info = origin.get("dir_info")
    if isinstance(dir_info, dict) and dir_info.get("editable") and path is not None:
        return _build_from_checkout(path, dest)
    if path is not None and path.suffix == ".whl" and path.is_file():
        target = dest / path.name
        if not target.exists() or target.stat().st_size != path.stat().st_size:
            shutil.copy2(path, target)
        return target
    return repack(dist, dest)


def _direct_url(dist: metadata.Distribution) -> dict[str, object]:
    text = dist.read_text("direct_url.json")
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _wheel_glob() -> str:
    return DISTRIBUTION.replace("-", "_") + "-*.whl"


def _build_from_checkout(checkout: Path, dest: Path) -> Path:
    stamp = dest / "source.stamp"
    digest = _source_digest(checkout)
    wheels = sorted(dest.glob(_wheel_glob()))
    if wheels and stamp.exists() and stamp.read_text() == digest:
        return wheels[-1]
    for old in wheels:
        old.unlink()
    _pip(["wheel", "--no-deps", "--wheel-dir", str(dest), str(checkout)], f"building pyswarm's wheel from {checkout}")
    built = sorted(dest.glob(_wheel_glob()))
    if not built:
        raise WheelhouseError(f"pip wheel {checkout} made no {_wheel_glob()} in {dest}")
    stamp.write_text(digest)
    return built[-1]


def _source_digest(checkout: Path) -> str:
    """Names, sizes and mtimes of what goes into the wheel: cheap, and changes when a file does."""
    h = hashlib.sha256()
    files = [checkout / "pyproject.toml", checkout / "README.md"]
    for d in _SOURCE_DIRS:
        files += sorted(p for p in (checkout / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{f.relative_to(checkout)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def repack(dist: metadata.Distribution, dest: Path) -> Path:
    """A wheel made from an installed distribution's files, under the tags it was installed with.

    Console scripts are left out (pip writes them again from
    entry_points.txt), as are byte-code, files outside site-packages and the
    installer's own records. Raises WheelhouseError when the distribution
    has no RECORD (installed by something other than pip).
    """
    dest.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    version = dist.version
    info = f"{name}-{version}.dist-info"
    if not dist.files:
        raise WheelhouseError(f"{dist.metadata['Name']} {version}: installed without a RECORD, cannot be repacked")
    infos = {f.parts[0] for f in dist.files if f.parts and f.parts[0].endswith(".dist-info")}
    src_info = next(iter(infos)) if len(infos) == 1 else info
    skip = {f"{src_info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    out = dest / f"{name}-{version}-{_tags(dist)}.whl"
    records: list[str] = []
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in dist.files:
            rel = f.as_posix()
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc") or rel in skip:
                continue
            data = Path(str(f.locate())).read_bytes()
            arc = info + rel[len(src_info):] if rel.startswith(src_info + "/") else rel
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arc},sha256={digest},{len(data)}")
        records.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    os.replace(tmp, out)
    return out


def _tags(dist: metadata.Distribution) -> str:
    """The compressed tag set (``py3-none-any``, ``cp311-cp311-manylinux_2_17_x86_64``) from WHEEL."""
    lines = [ln.split(":", 1)[1].strip() for ln in (dist.read_text("WHEEL") or "").splitlines() if ln.startswith("Tag:")]
    parts = [t.split("-") for t in lines if t.count("-") == 2]
    if not parts:
        return "py3-none-any"
    return "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))


def installed_closure() -> list[metadata.Distribution]:
    """pyswarm's installed dependencies, recursively, as this Python evaluates their markers."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # not installed beside pyswarm: pip's own copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]
    seen: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [(DISTRIBUTION, frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (_norm(name), extras) in done:
            continue
        done.add((_norm(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise WheelhouseError(f"{name} (a dependency of pyswarm) is not installed here") from None
        if _norm(name) != _norm(DISTRIBUTION):
            seen[_norm(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in sorted(extras | {""})]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return [seen[k] for k in sorted(seen)]


def _ensure_deps(own: Path, target: Target, deps: Path, stamp: Path) -> None:
    """Download (or build) every dependency's wheel for ``target`` into ``deps``, once.

    First without pins, to learn which dependencies have no wheel at all
    (pip names them one at a time: "No matching distribution found for X";
    with pins it only says the versions conflict) and build those; then,
    when the target is this machine, again with every version pinned to
    the one installed here, into a fresh directory.
    """
    requires = sorted(metadata.distribution(DISTRIBUTION).requires or [])
    local = target == Target.local()
    pins = _local_pins() if local else []
    want = json.dumps({"requires": requires, "pins": pins, "platforms": target.platforms()}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == want and deps.is_dir():
        return
    if local and _repack_closure(deps):
        stamp.write_text(want)
        return
    built = deps.parent / "built"  # pure wheels made from sdists
    built.mkdir(exist_ok=True)
    base = ["download", "--find-links", str(built), "--only-binary=:all:"]
    base += [a for p in target.platforms() for a in ("--platform", p)]
    base += ["--python-version", target.python, "--implementation", "cp", "--abi", target.abi, "--abi", "abi3", "--abi", "none"]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "wheels"
        tried: set[str] = set()
        while True:
            res = _pip([*base, "--dest", str(Path(tmp) / "discover" if pins else fresh), str(own)],
                       f"downloading pyswarm's dependencies for {target.key}", check=False)
            if res.returncode == 0:
                break
            missing = re.search(r"No matching distribution found for ([A-Za-z0-9_.\-]+)", res.stderr)
            if missing is None or _norm(missing.group(1)) in tried:
                raise WheelhouseError(f"pip download for {target.key} failed: {_last_lines(res.stderr)}")
            tried.add(_norm(missing.group(1)))
            _build_pure(missing.group(1), pins, built, Path(tmp))
        if pins:
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("".join(f"{p}\n" for p in pins))
            _pip([*base, "--dest", str(fresh), "-c", str(constraints), str(own)],
                 f"downloading pyswarm's dependencies for {target.key} at this machine's versions")
        (fresh / own.name).unlink(missing_ok=True)
        if deps.exists():
            shutil.rmtree(deps)
        shutil.copytree(fresh, deps)
    stamp.write_text(want)


def _repack_closure(deps: Path) -> bool:
    """For this machine as the target: wheels repacked from what is installed here
    (no index, no download, exactly the versions the operator runs). False
    when some dependency cannot be repacked; then pip download does it."""
    with tempfile.TemporaryDirectory(dir=deps.parent) as tmp:
        fresh = Path(tmp) / "wheels"
        try:
            for dist in installed_closure():
                repack(dist, fresh)
        except (WheelhouseError, OSError):
            return False
        if deps.exists():
            shutil.rmtree(deps)
        os.replace(fresh, deps)
    return True


def _build_pure(name: str, pins: list[str], deps: Path, tmp: Path) -> None:
    """Build a wheel for a dependency published only as an sdist; it must be pure Python."""
    pin = next((p for p in pins if _norm(p.split("==")[0]) == _norm(name)), name)
    out = tmp / "built"
    _pip(["wheel", "--no-deps", "--wheel-dir", str(out), pin], f"building a wheel of {pin}")
    for whl in out.glob("*.whl"):
        if not whl.name.endswith("-none-any.whl"):
            raise WheelhouseError(f"{name} has no wheel for the target and builds only a binary one ({whl.name}); "
                                  f"put a wheel for the host in PYSWARM_WHEELHOUSE")
        shutil.move(str(whl), deps / whl.name)


def _local_pins() -> list[str]:
    """name==version of every distribution installed here, except pyswarm and editables."""
    pins = []
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if not name or _norm(name) == _norm(DISTRIBUTION) or _direct_url(d).get("dir_info"):
            continue
        pins.append(f"{name}=={d.version}")
    return sorted(set(pins))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _given(directory: Path) -> Wheelhouse:
    wheels = sorted(directory.glob(_wheel_glob()))
    if not wheels:
        raise WheelhouseError(f"PYSWARM_WHEELHOUSE={directory}: no {_wheel_glob()} in it")
    return Wheelhouse(directory, wheels[-1], wheels[-1].name.split("-")[1])


def _pip(argv: list[str], doing: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *argv]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WheelhouseError(f"{doing}: {exc}") from exc
    if check and res.returncode != 0:
        raise WheelhouseError(f"{doing} failed: {_last_lines(res.stderr or res.stdout)}")
    return res


def _last_lines(text: str, n: int = 4) -> str:
    lines = [ln for ln in text.strip().splitlines() if "is ignored: it is neither" not in ln]
    return " | ".join(lines[-n:])


class _locked:
    """A flock on ``path`` (a file, made if missing, or a directory): exclusive,
    or ``shared``; ``wait=False`` raises BlockingIOError when it is taken."""

    def __init__(self, path: Path, shared: bool = False, wait: bool = True) -> None:
        self.path = path
        self.op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDONLY) if self.path.is_dir() else os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, self.op)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *_exc: object) -> None:
        os.close(self.fd)


def wheels(house: Wheelhouse) -> Iterator[Path]:
    """Every wheel in the wheelhouse (what to copy to a host)."""
    return iter(sorted(house.directory.glob("*.whl")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyswarm.wheelhouse", description="print the directory of wheels that installs pyswarm on a host")
    here = Target.local()
    p.add_argument("--python", default=here.python, help=f"the host's Python, major.minor (default {here.python})")
    p.add_argument("--machine", default=here.machine, help=f"the host's architecture (default {here.machine})")
    p.add_argument("--libc", default=here.libc, choices=["glibc", "musl"])
    p.add_argument("--libc-version", default=here.libc_version, help=f"default {here.libc_version}")
    args = p.parse_args(argv)
    try:
        house = build(Target(args.python, args.machine, args.libc, args.libc_version))
    except PyswarmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(house.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
