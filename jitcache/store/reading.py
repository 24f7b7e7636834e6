"""Reading cache files without touching their access time.

DeepEP 2.1 writes no marker: the only "last used" a 2.1 entry has is its
cubin's access time, which DeepEP's load updates (relatime). A maintenance
read (`verify`, `inspect`, `export`, `import` comparing entries) must not look
like a use, or a cache scanned daily would never age and `prune
--older-than` would never find anything. So every read of an entry's files
goes through :func:`read_bytes`: ``O_NOATIME`` where the kernel permits it
(the file's owner, or ``CAP_FOWNER``), else a plain read followed by
``os.utime`` putting the access time back (where we may).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["O_NOATIME", "read_bytes", "read_bytes_and_stat", "read_text"]

#: Linux's flag; 0 elsewhere (then only the restore path runs).
O_NOATIME = getattr(os, "O_NOATIME", 0)


def _open(path: str | Path) -> tuple[int, bool]:
    if O_NOATIME:
        try:
            return os.open(path, os.O_RDONLY | O_NOATIME), True
        except PermissionError:
            pass  # EPERM: not our file; fall back to restoring the time
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
    return os.open(path, os.O_RDONLY), False


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, leaving its atime as it was."""
    return read_bytes_and_stat(path)[0]


def read_bytes_and_stat(path: str | Path, size_hint: int = -1) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its ``fstat`` taken after the read (what a remembered verdict is checked
    against, see :mod:`.verdicts`), leaving its atime as it was.

    ``size_hint`` (the size a ``stat`` just gave): one ``read`` of one byte more, whose short count is
    the end of a regular file, instead of a second ``read`` to find it.
    """
    fd, noatime = _open(path)
    try:
        before = None if noatime else os.fstat(fd)
        chunks = []
        if size_hint >= 0:
            chunks.append(os.read(fd, size_hint + 1))
        if size_hint < 0 or len(chunks[0]) > size_hint:  # no hint, or the file grew: read to the end
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if before is not None:
        try:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        except OSError:
            pass  # not ours to change: nothing more we can do
    return b"".join(chunks), after


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8", errors="replace")
