"""The operator's side of the lab: an OpenSSH config that reaches every lab host.

The root namespace plays the operator's laptop, the lab hosts its VMs. ``lab
up`` makes an operator key (its public half goes into each host's root
``authorized_keys``) and, once the hosts' sshd keys exist, a known_hosts file
and a config with one ``Host`` entry per lab host, all in ``LABDIR/ssh/`` —
never the machine's ``~/.ssh``. ``ssh -F $(pyswarm lab ssh-config) manager1``
then works with strict host key checking, as it would against real hosts.

Also here: which of this machine's paths a *bare* host must not see (the
checkout, its venv, the Python that runs this pyswarm).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from pyswarm.deploy.lab_sys import run

KEY_NAME = "id_ed25519"


def ssh_dir(lab_dir: Path) -> Path:
    return lab_dir / "ssh"


def config_path(lab_dir: Path) -> Path:
    return ssh_dir(lab_dir) / "config"


def make_operator_key(lab_dir: Path) -> str:
    """Create the operator's key pair in the lab's ssh dir; returns the public key line."""
    d = ssh_dir(lab_dir)
    d.mkdir(mode=0o700, exist_ok=True)
    key = d / KEY_NAME
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@pyswarm-lab", "-f", str(key)])
    return key.with_suffix(".pub").read_text().strip()


def write_config(lab_dir: Path, hosts: Iterable[tuple[str, str, Path]]) -> Path:
    """Write known_hosts and the config for ``hosts`` (name, address, host public key file)."""
    d = ssh_dir(lab_dir)
    known: list[str] = []
    entries: list[str] = [
        "# OpenSSH config for the pyswarm lab in " + str(lab_dir) + " (written by `pyswarm lab up`)",
        "# use: ssh -F " + str(config_path(lab_dir)) + " HOST",
    ]
    for name, address, pub in hosts:
        keytype, blob = pub.read_text().split()[:2]
        known.append(f"{name},{address} {keytype} {blob}")
        entries += [
            "",
            f"Host {name}",
            f"    HostName {address}",
            "    User root",
            f'    IdentityFile "{d / KEY_NAME}"',
            "    IdentitiesOnly yes",
            f'    UserKnownHostsFile "{d / "known_hosts"}"',
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    ConnectTimeout 10",
        ]
    _write(d / "known_hosts", "\n".join(known) + "\n")
    path = config_path(lab_dir)
    _write(path, "\n".join(entries) + "\n")
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def operator_paths(private: Iterable[str], keep: Iterable[Path]) -> list[str]:
    """This machine's pyswarm, as paths for a bare host to cover: the checkout
    (when installed editable) and every other checkout of its repository
    (git worktrees, each perhaps with a venv), the venv and the Python running it.

    Left out: system directories (/usr, /), paths a bare host already has
    its own copy of (``private``: /root, /opt, /usr/local), and any path
    holding one of ``keep`` (the lab's directory must stay visible).
    """
    found = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent}
    try:
        origin = json.loads(metadata.distribution("pyswarm-orchestrator").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        origin = {}
    url = str(origin.get("url", "")) if isinstance(origin, dict) else ""
    if url.startswith("file://") and (origin.get("dir_info") or {}).get("editable"):
        found.add(Path(url[len("file://") :]))
    here = Path(__file__).resolve().parent.parent  # the checkout root, or site-packages/pyswarm
    found.add(here)
    found.update(checkouts(here))
    private_paths = [Path(p) for p in private]
    keep_paths = [Path(k).resolve() for k in keep]
    out: list[Path] = []
    for p in sorted({f.resolve() for f in found if f.exists()}, key=lambda x: len(x.parts)):
        if p == Path("/") or p.parts[1] in ("usr", "bin", "sbin", "lib", "lib64", "etc", "proc", "sys", "dev"):
            continue
        if any(p == q or p.is_relative_to(q) for q in private_paths):
            continue
        if any(k == p or k.is_relative_to(p) for k in keep_paths):
            continue
        if any(p.is_relative_to(o) for o in out):
            continue  # covered by a parent already
        out.append(p)
    return [str(p) for p in out]


def checkouts(root: Path) -> set[Path]:
    """Every working tree of the git repository ``root`` is in (none when it is not one).

    Read from git's files (``.git`` is a directory, or in a worktree a file
    naming ``…/.git/worktrees/NAME``, whose ``gitdir`` names that worktree's
    ``.git``), so no git binary is needed.
    """
    dotgit = root / ".git"
    try:
        if dotgit.is_file():
            gitdir = Path(dotgit.read_text().split("gitdir:", 1)[1].strip())
            common = gitdir.parent.parent if gitdir.parent.name == "worktrees" else gitdir
        elif dotgit.is_dir():
            common = dotgit
        else:
            return set()
        found = {common.parent}
        for entry in (common / "worktrees").glob("*/gitdir"):
            found.add(Path(entry.read_text().strip()).parent)
    except (OSError, IndexError):
        return set()
    return {p for p in found if p.is_dir()}
