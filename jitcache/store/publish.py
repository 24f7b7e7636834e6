"""Atomic publishing: an entry is either absent or whole, for every reader, after any crash.

The protocol is DeepJIT's (``deep_jit/cache/disk.hpp``), which DeepEP 2.5
readers rely on:

1. build the entry in a private temporary directory *on the same filesystem*
   as the cache (``<deep_ep>/tmp/<uuid>/``): a rename across filesystems is a
   copy, and a copy can be seen half-done;
2. write the marker (``.committed``) into it, fsync every file and the
   directory itself, so that after a power cut the rename cannot point at
   empty files;
3. ``rename(tmp, final)``. POSIX ``rename`` of a directory onto a non-empty
   directory fails, so when eight ranks (or two imports) publish the same
   entry, exactly one rename wins and the others throw their copy away;
4. fsync the parent so the new name itself is durable.

The rename, not a lock, decides who wins. On NFS and Lustre ``flock`` may
succeed in two clients at once (DeepEP #683, SGLang #31347), while a
directory rename is still atomic on the server, so this stays correct there.
"""

from __future__ import annotations

import errno
import json
import os
# shutil, tempfile, threading and uuid are imported where used: readers import this module for its
# constants (COMMIT_MARKER), and `jitcache inspect` starts up without them.
from pathlib import Path
from stat import S_ISDIR
from typing import Any, Callable, Sequence

from jitcache.errors import CacheError

from .owners import build_owner, owner_tag

__all__ = [
    "COMMIT_MARKER",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "fsync_tree",
    "make_temp_dir",
    "publish_entries",
    "publish_entry",
    "reclaim_orphans",
    "remove_tree",
    "sync_filesystem",
    "write_json_atomic",
]

#: DeepJIT's marker: an entry exists for DeepEP 2.5 only if this file is in it.
COMMIT_MARKER = ".committed"

#: Prefix of jitcache's own build directories under ``tmp/`` (DeepEP's are bare UUIDs).
TEMP_PREFIX = "jitcache-"

# rename() onto an existing non-empty directory: Linux says ENOTEMPTY, some filesystems EEXIST.
_LOST_RACE = {errno.ENOTEMPTY, errno.EEXIST}


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so that names created or renamed in it survive a crash."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some filesystems (and platforms) do not let a directory be opened
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. EINVAL on filesystems that do not support fsync on directories
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: str | Path) -> None:
    """fsync every regular file under ``directory`` and every directory, deepest first."""
    directory = Path(directory)
    for current, dirnames, filenames in os.walk(directory, topdown=False):
        for name in filenames:
            path = Path(current) / name
            if path.is_file() and not path.is_symlink():
                _fsync_file(path)
        fsync_dir(current)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to an adjacent temporary file, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    import tempfile

    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def make_temp_dir(backend_dir: str | Path, kind: str = "build") -> Path:
    """A fresh private build directory under ``<backend_dir>/tmp/``: the same filesystem as the entries.

    Its name records the owner (host, pid, process start: see
    :mod:`jitcache.store.owners`), so that once this process is gone,
    ``verify`` reports the directory at once and the next run reclaims it.
    """
    import uuid

    tmp_parent = Path(backend_dir) / "tmp"
    try:
        tmp_parent.mkdir(parents=True, exist_ok=True)
        path = tmp_parent / f"{TEMP_PREFIX}{kind}-{owner_tag()}-{uuid.uuid4().hex[:16]}"
        path.mkdir(mode=0o755)
    except OSError as exc:
        from .faults import filesystem_error

        raise filesystem_error(exc, tmp_parent, action="create a build directory") from None
    return path


def remove_tree(path: str | Path) -> None:
    """Remove a directory tree we own, ignoring what vanished meanwhile.

    The tree is renamed aside first, so a reader never sees a half-deleted
    entry under its real name (only entries not committed, or moved out of
    ``cache/``, ever reach this).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    import shutil
    import uuid

    doomed = path.with_name(f".{path.name}.deleting-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def publish_entry(tmp_dir: str | Path, final_dir: str | Path, marker: str | None = COMMIT_MARKER) -> bool:
    """Publish a fully built entry: marker, fsync, one directory rename.

    Returns ``True`` when ``final_dir`` is now our entry, ``False`` when
    another process published ``final_dir`` first: our copy is then removed
    and theirs is kept (both were built from the same key, so either will do).
    ``marker=None`` publishes without a marker (DeepEP 2.1 entries and Triton
    groups have none). Raises :class:`CacheError` for any other failure,
    after removing ``tmp_dir``.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if not tmp_dir.is_dir():
        raise CacheError(f"{tmp_dir}: build directory does not exist", path=tmp_dir)
    try:
        if os.stat(tmp_dir).st_dev != os.stat(_existing_parent(final_dir)).st_dev:
            raise CacheError(f"{tmp_dir} and {final_dir} are on different filesystems: a rename would be a copy",
                             path=tmp_dir, hint="build entries under <backend>/tmp/ (make_temp_dir)")
        if marker is not None:
            marker_path = tmp_dir / marker
            with open(marker_path, "wb") as handle:
                os.fsync(handle.fileno())
        fsync_tree(tmp_dir)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        if final_dir.exists():
            # Fast path; the rename below still decides when two publishers race past this.
            remove_tree(tmp_dir)
            return False
        try:
            os.rename(tmp_dir, final_dir)
        except OSError as exc:
            if exc.errno in _LOST_RACE:
                remove_tree(tmp_dir)
                return False
            raise
    except CacheError:
        remove_tree(tmp_dir)
        raise
    except OSError as exc:
        remove_tree(tmp_dir)
        from .faults import filesystem_error

        raise filesystem_error(exc, final_dir, action="publish the entry") from None
    fsync_dir(final_dir.parent)
    return True


def sync_filesystem(path: str | Path) -> None:
    """Make everything written so far on the filesystem holding ``path`` durable: one ``syncfs(2)``.

    One call replaces an fsync per file and per directory when many entries
    are published together (``jitcache import``). Where ``syncfs`` is
    missing (not Linux) or fails, ``sync(2)`` does the same for every
    filesystem.
    """
    try:
        import ctypes

        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def publish_entries(builds: Sequence[tuple[str | Path, str | Path, str | None]], *,
                    on_published: Callable[[int, str], None] | None = None) -> list[bool]:
    """:func:`publish_entry` for many ``(tmp_dir, final_dir, marker)`` builds, with one sync for all.

    The protocol is the same, batched: every marker is written, then one
    :func:`sync_filesystem` makes every file, marker and build directory
    durable, then each build is renamed into place (the rename still decides
    a race; a lost one removes our copy), then each parent directory is
    fsync'ed once. A crash at any point leaves each entry absent or whole:
    no rename happens before the sync. Returns, per build, ``True`` if it is
    now ours and ``False`` if another process published it first.
    ``on_published(index, final_dir)`` runs after each winning rename (``index`` into ``builds``,
    ``final_dir`` as a string). Raises
    :class:`CacheError` (after removing the builds not yet published) for
    any other failure; entries already renamed stay published.
    """
    paths = [(os.fspath(t), os.fspath(f), m) for t, f, m in builds]
    results: list[bool] = []
    parents: dict[str, int] = {}  # final parent -> its st_dev; each fsync'ed once at the end
    in_callback = False  # the caller's exceptions pass through unchanged
    try:
        for tmp_dir, final_dir, marker in paths:
            try:
                st = os.stat(tmp_dir)
            except FileNotFoundError:
                st = None
            if st is None or not S_ISDIR(st.st_mode):
                raise CacheError(f"{tmp_dir}: build directory does not exist", path=Path(tmp_dir))
            parent = os.path.dirname(final_dir)
            if parent not in parents:
                os.makedirs(parent, exist_ok=True)
                parents[parent] = os.stat(parent).st_dev
            if st.st_dev != parents[parent]:
                raise CacheError(f"{tmp_dir} and {final_dir} are on different filesystems: a rename would be a "
                                 "copy", path=Path(tmp_dir), hint="build entries under <backend>/tmp/ (make_temp_dir)")
            if marker is not None:
                os.close(os.open(f"{tmp_dir}/{marker}", _MARKER_FLAGS, 0o644))
        if paths:
            sync_filesystem(paths[0][0])
        for tmp_dir, final_dir, _ in paths:
            won = False
            if not os.path.exists(final_dir):  # fast path; the rename still decides a race
                try:
                    os.rename(tmp_dir, final_dir)
                    won = True
                except OSError as exc:
                    if exc.errno not in _LOST_RACE:
                        raise
            if not won:
                remove_tree(tmp_dir)
            results.append(won)
            if won and on_published is not None:
                in_callback = True
                on_published(len(results) - 1, final_dir)
                in_callback = False
    except BaseException as exc:
        for tmp_dir, _, _ in paths[len(results):]:
            remove_tree(tmp_dir)
        if isinstance(exc, OSError) and not in_callback:
            final = paths[min(len(results), len(paths) - 1)][1]
            from .faults import filesystem_error

            raise filesystem_error(exc, Path(final), action="publish the entry") from None
        raise
    finally:
        for parent in parents:
            fsync_dir(parent)
    return results


#: The empty marker: created, or emptied where a build already has one (what ``open(path, "wb")`` did).
_MARKER_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def _existing_parent(path: Path) -> Path:
    probe = path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to ``path``, fsync, then ``os.replace``: readers never see half a file."""
    import threading

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def reclaim_orphans(tmp_dir: Path) -> list[Path]:
    """Remove jitcache's own build directories under ``tmp_dir`` whose owner is certainly gone.

    Only ours, only dead owners on this host: nothing another process or
    another host might still be writing is touched. Each goes by a rename
    first (see :func:`~jitcache.store.publish.remove_tree`).
    """
    removed: list[Path] = []
    try:
        children = sorted(tmp_dir.iterdir())
    except OSError:
        return removed
    for child in children:
        owner = build_owner(child.name)
        if owner is not None and owner.ours and owner.state() == "dead":
            try:
                remove_tree(child)
            except OSError:
                continue
            removed.append(child)
    return removed
