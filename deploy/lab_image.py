"""The lab's container image, built from the machine's static busybox.

No registry is reachable from the lab (and none should be needed), so the lab
makes its own image: a root filesystem with ``/bin/busybox``, a symlink per
applet, and the few files programs expect (``/etc/passwd``, ``/tmp``), then
``docker import``s it into every host's engine under one fixed name. busybox
``httpd`` and ``nc`` work in it; its ``wget`` crashes, so tests fetch with
``nc``.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

from pyswarm.deploy.lab_sys import LabError, which

IMAGE = "pyswarm-lab/busybox:latest"
IMAGE_CHANGES = ['CMD ["sh"]', "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnobody:x:65534:\n"
_INDEX = "<h1>pyswarm lab</h1>\n"


def build_rootfs_tar(dest: Path) -> Path:
    """Write the image's root filesystem as a tar to ``dest`` and return it."""
    busybox = which("busybox")
    if busybox is None:
        raise LabError("busybox not found (apt install busybox-static)")
    binary = Path(busybox).resolve()
    applets = subprocess.run([str(binary), "--list-full"], capture_output=True, text=True, check=False).stdout.split()
    if not applets:
        raise LabError(f"{binary} --list-full listed no applets; is it busybox-static?")
    now = time.time()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)

        def add_file(name: str, text: str, mode: int = 0o644) -> None:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "www", "var", "home", "proc", "sys", "dev"):
            add_dir(d, 0o700 if d == "root" else 0o755)
        add_dir("tmp", 0o1777)
        add_dir("var/tmp", 0o1777)
        with open(binary, "rb") as fh:
            info = tar.gettarinfo(fileobj=fh, arcname="bin/busybox")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, fh)
        for applet in applets:
            name = applet.lstrip("/")
            if name == "bin/busybox":
                continue
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, "/bin/busybox", 0o777, now
            tar.addfile(info)
        add_file("etc/passwd", _PASSWD)
        add_file("etc/group", _GROUP)
        add_file("www/index.html", _INDEX)
    return dest


def import_image(docker_sock: Path, rootfs: Path, timeout: float = 60) -> None:
    """``docker import`` the rootfs into the engine behind ``docker_sock``."""
    argv = ["docker", "-H", f"unix://{docker_sock}", "import"]
    for change in IMAGE_CHANGES:
        argv += ["--change", change]
    argv += [str(rootfs), IMAGE]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"docker import into {docker_sock} timed out after {timeout:g}s") from exc
    if res.returncode != 0:
        raise LabError(f"docker import into {docker_sock} failed: {res.stderr.strip()}")
