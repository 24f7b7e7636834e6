"""Real filesystem faults for the trust tests: a small tmpfs that fills up, a read-only mount.

Where this machine lets us mount (root with CAP_SYS_ADMIN, as on the dev
machine and in CI), a disk is a real ``tmpfs`` of a few hundred KiB and a
read-only cache is a real ``mount -o remount,ro``. Elsewhere the fallbacks are
real too: a child process whose ``RLIMIT_FSIZE`` stops writes (``EFBIG``), and
a tree without write permission (for a user other than root).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

_PROBED: bool | None = None


def can_mount() -> bool:
    """Whether ``mount -t tmpfs`` works here (probed once, with a real mount)."""
    global _PROBED
    if _PROBED is None:
        probe = Path(f"/tmp/jitcache-mount-probe-{uuid.uuid4().hex[:8]}")
        probe.mkdir()
        try:
            _PROBED = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                                     capture_output=True).returncode == 0
            if _PROBED:
                subprocess.run(["umount", str(probe)], check=True)
        except OSError:
            _PROBED = False
        finally:
            probe.rmdir()
    return _PROBED


@contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (created), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(path: Path, leave: int) -> None:
    """Write a filler file so that about ``leave`` bytes stay free on ``path``'s filesystem."""
    filler = path / ".filler"
    with open(filler, "ab") as out:
        chunk = b"\0" * 4096
        while free(path) > leave + 4096:
            try:
                out.write(chunk * max(1, min(256, (free(path) - leave) // 4096 - 1)))
                out.flush()
            except OSError:
                break
    os.sync()


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make the tmpfs at ``path`` read-only (remount), or, without mounts, the tree unwritable (chmod)."""
    if os.path.ismount(path):
        remount(path, "ro")
        try:
            yield
        finally:
            remount(path, "rw")
        return
    if os.geteuid() == 0:
        pytest.skip("root without mount(2): a permission bit cannot make a directory read-only for root")
    modes = {}
    for current, dirs, files in os.walk(path):
        for name in [current, *(os.path.join(current, d) for d in dirs)]:
            modes[name] = os.stat(name).st_mode
            os.chmod(name, modes[name] & ~0o222)
    try:
        yield
    finally:
        for name, mode in modes.items():
            os.chmod(name, mode)


@contextmanager
def small_disk(base: Path, size: str = "1m") -> Iterator[Path | None]:
    """A small real disk at ``base`` (a tmpfs), or ``None`` where mounting is not allowed (then limit the
    child process with :func:`fsize_limit` instead)."""
    if can_mount():
        with tmpfs(base, size) as mounted:
            yield mounted
    else:
        base.mkdir(parents=True, exist_ok=True)
        yield None


def fsize_limit(limit: int):
    """A ``preexec_fn`` capping every file the child writes at ``limit`` bytes (``EFBIG`` past it)."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_cli_limited(*args: str, fsize: int | None = None, env: dict | None = None,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console script, optionally under ``RLIMIT_FSIZE`` (the fallback for a full disk)."""
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    full_env.pop("JITCACHE_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "jitcache.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, preexec_fn=fsize_limit(fsize) if fsize else None)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
