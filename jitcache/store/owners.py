"""Who owns a build directory under ``<backend>/tmp/``, and whether that process is still alive.

A build directory outlives its process when the process is killed (kill -9,
OOM, a node reboot): its nvcc children may even finish into it afterwards.
So jitcache names its own build directories after their owner::

    jitcache-<kind>-<host>-<pidns>-<pid>-<start>-<random>
    e.g. jitcache-build-node7-4026531836-4242-91234567-3f9a...

(``<pidns>``: the inode of the process's pid namespace, so that two
containers of one host that share the cache, and maybe a host name, never
judge each other's pids; ``<start>``: the process's start time in clock ticks
since boot, from ``/proc/<pid>/stat``, so that a recycled pid is not taken for
the owner). The owner is gone when, on this host and in this pid namespace,
no process has that pid with that start time: the directory is an orphan
*at once*, and the next run reclaims it. DeepJIT names its own ``<pid>-<hex8>-<hex8>-<hex8>`` (pid only): a pid not
running here is reported at once too, but, since another host sharing the
cache may own it, only reclaimed by age. Anything else (DeepEP 2.1's bare
UUIDs, a directory from another host) is judged by age alone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BuildOwner", "build_owner", "orphan_reason", "owner_tag", "pid_namespace", "process_start",
           "this_host"]

_OURS = re.compile(r"^jitcache-(?P<kind>[a-z]+)-(?P<host>[A-Za-z0-9]{0,32})-(?P<ns>\d+)-(?P<pid>\d+)-(?P<start>\d+)"
                   r"-[0-9a-f]{6,32}$")
_DEEPJIT = re.compile(r"^(?P<pid>\d+)-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$")


def this_host() -> str:
    """The host name as build directory names spell it (letters and digits, at most 32)."""
    import socket  # not at import: a scan (inspect's start-up) never asks

    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def pid_namespace() -> int:
    """The inode of this process's pid namespace (0 where there is no ``/proc``)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def process_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, field 22 of ``/proc/<pid>/stat``); ``None``: no such
    process, or no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


_TAG: tuple[int, str] | None = None


def owner_tag() -> str:
    """``<host>-<pidns>-<pid>-<start>`` of this process (recomputed after a fork)."""
    global _TAG
    pid = os.getpid()
    if _TAG is None or _TAG[0] != pid:
        _TAG = (pid, f"{this_host()}-{pid_namespace()}-{pid}-{process_start(pid) or 0}")
    return _TAG[1]


@dataclass(frozen=True)
class BuildOwner:
    """The owner recorded in a build directory's name; ``host``/``start`` are ``None`` when not recorded."""

    pid: int
    host: str | None
    start: int | None
    ours: bool
    namespace: int | None = None

    def state(self) -> str:
        """``alive``, ``dead`` (certainly gone) or ``gone_here`` (no such pid on this host; another host
        sharing the cache might still be it) or ``unknown`` (another host's)."""
        if self.host is not None and self.host != this_host():
            return "unknown"
        if self.namespace and self.namespace != pid_namespace():
            return "unknown"  # another container's pids: not ours to judge
        if self.start:
            running = process_start(self.pid)
            if running is not None:
                return "alive" if running == self.start else "dead"
            if Path("/proc/self/stat").exists():
                return "dead"
        alive = _pid_alive(self.pid)
        if alive:
            return "alive"
        return "dead" if self.host is not None else "gone_here"

    def describe(self) -> str:
        host = f" on {self.host}" if self.host else ""
        return f"pid {self.pid}{host}"


def build_owner(name: str) -> BuildOwner | None:
    """The owner a build directory's name records (ours or DeepJIT's), ``None`` when it records none."""
    if match := _OURS.match(name):
        return BuildOwner(int(match["pid"]), match["host"], int(match["start"]) or None, True,
                          int(match["ns"]) or None)
    if match := _DEEPJIT.match(name):
        return BuildOwner(int(match["pid"]), None, None, False)
    return None


def orphan_reason(path: Path, now: float, min_age: float) -> tuple[str, bool] | None:
    """``(why, reclaimable now)`` when ``path`` is a build directory nobody is writing to, else ``None``."""
    try:
        age = now - path.lstat().st_mtime
    except OSError:
        return None
    owner = build_owner(path.name)
    state = owner.state() if owner is not None else "unknown"
    if state == "alive":
        return None
    if state == "dead" and owner is not None:
        return f"its owner, {owner.describe()}, is gone (killed?)", True
    if state == "gone_here" and owner is not None:
        return (f"DeepJIT build of {owner.describe()}, which is not running on this host "
                "(if another host shares this cache it may still be building)", age >= min_age)
    if age >= min_age:
        return f"build directory untouched for {age / 3600:.1f} h (a compile that died)", True
    return None
