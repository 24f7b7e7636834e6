"""Filesystem faults (disk full, read-only, permission denied) as errors that say where and how much room.

Every command that writes can meet a full disk, a quota, a file-size limit or
a read-only mount. None of that is a bug to show as a traceback: it becomes a
:class:`~jitcache.errors.CacheError` naming the path, the failure and the free
space of the filesystem holding it, so that the user knows what to free or
where else to point the cache. Nothing is half-visible after such a failure:
entries are published by one rename, files by an adjacent temporary file and
``os.replace`` (:mod:`jitcache.store.publish`); what the callers did before the
failure they report themselves (``partial``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from jitcache.errors import CacheError

__all__ = ["FULL", "READ_ONLY", "describe_free_space", "filesystem_error", "free_bytes", "is_fault",
           "require_writable"]

#: errno values meaning "no room": disk full, quota exceeded, file bigger than RLIMIT_FSIZE.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: errno values meaning "not allowed to write here".
READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def _existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path`` (``None``: unknown)."""
    try:
        st = os.statvfs(_existing(Path(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _human(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TiB"


def describe_free_space(path: str | Path) -> str:
    free = free_bytes(path)
    return "free space unknown" if free is None else f"{_human(free)} free there"


def is_fault(exc: BaseException) -> bool:
    """An OSError of the kinds this module describes (full, read-only, denied)."""
    return isinstance(exc, OSError) and exc.errno in FULL | READ_ONLY


def filesystem_error(exc: OSError, path: str | Path | None = None, *, action: str = "write",
                     partial: str | None = None) -> CacheError:
    """A :class:`CacheError` for ``exc``: ``<path>: cannot <action>: <why> (<free> free there)[; <partial>]``."""
    where = Path(path if path is not None else (exc.filename or "."))
    why = exc.strerror or str(exc)
    if exc.errno == errno.EFBIG:
        why += " (the file size limit, RLIMIT_FSIZE / ulimit -f)"
    message = f"{where}: cannot {action}: {why} ({describe_free_space(where)})"
    if partial:
        message += f"; {partial}"
    if exc.errno in FULL:
        hint = "free some space (jitcache prune --max-size ...), or use a --cache-dir on another filesystem"
    elif exc.errno in READ_ONLY:
        hint = "this cache is read-only here: use it through --read-only-root / EP_JIT_CACHE_DIR=A:B, " \
               "or run the command where it is writable"
    else:
        hint = None
    return CacheError(message, path=where, hint=hint)


def require_writable(directory: str | Path, *, action: str) -> None:
    """Refuse up front to change a cache on a read-only mount or in a directory we may not write.

    A check before the work (nothing started, nothing to undo); the work
    itself still handles a failure that comes later.
    """
    directory = _existing(Path(directory))
    read_only = False
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        pass
    if read_only:
        raise filesystem_error(OSError(errno.EROFS, os.strerror(errno.EROFS), str(directory)), directory,
                               action=action)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise filesystem_error(OSError(errno.EACCES, os.strerror(errno.EACCES), str(directory)), directory,
                               action=action)
